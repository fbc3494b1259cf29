#!/usr/bin/env bash
# JMS interoperability suite: the stock Apache ActiveMQ 5.17 OpenWire client (Debian's
# libactivemq-java) against a broker. Compiles src/ with plain javac into a temporary directory and
# runs the harness; the exit status is the harness's (non-zero when a test failed).
#
# Usage:  tests/interop/java/run.sh [TEST_NAME...]      (no names: every test; --list lists them)
#
# Environment (passed through to the harness):
#   BROKER_URL       OpenWire URL             (default tcp://127.0.0.1:61616)
#   STOMP_PORT       STOMP port, same host     (default 61613) for the cross-protocol tests
#   SECURE_BROKER_URL  OpenWire URL of a broker configured as tests/interop/secure.toml
#                    (ActiveMQ: tests/interop/secure-activemq.xml) for the security tests
#   EXPECT_ACTIVEMQ  1: the tests known to fail on ActiveMQ 5.17 count as expected failures
#                    (only for validating the suite against a real ActiveMQ)
#   INTEROP_VERBOSE  1: log details and stack traces
#   INTEROP_TIMEOUT_SCALE  multiplies every per-test timeout (default 1)
#   INTEROP_LOG      nop (default) | simple: SLF4J binding for the ActiveMQ client's own logging
#   JAVA_HOME        used when set; otherwise java/javac from PATH
#   JAVA_JARS        where the jars are (default /usr/share/java)
#
# Needs: apt-get install -y default-jdk-headless libactivemq-java
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
die() { printf 'interop/java: %s\n' "$*" >&2; exit 2; }

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/javac" ]]; then
    javac="$JAVA_HOME/bin/javac"; java="$JAVA_HOME/bin/java"
else
    javac="$(command -v javac || true)"; java="$(command -v java || true)"
fi
[[ -n "$javac" ]] || die "javac not found: install a JDK (apt-get install -y default-jdk-headless)"
[[ -n "$java" ]] || die "java not found: install a JDK (apt-get install -y default-jdk-headless)"

jars_dir="${JAVA_JARS:-/usr/share/java}"
binding="${INTEROP_LOG:-nop}"
case "$binding" in nop|simple) ;; *) die "INTEROP_LOG must be nop or simple, not '$binding'" ;; esac
cp=""
missing=()
# activemq-client needs the JMS 1.1 API, hawtbuf, slf4j and (for its statistics classes) the
# J2EE management API; all are dependencies of Debian's libactivemq-java.
for jar in activemq-client geronimo-jms_1.1_spec hawtbuf slf4j-api "slf4j-$binding" geronimo-j2ee-management-1.1-spec; do
    if [[ -f "$jars_dir/$jar.jar" ]]; then
        cp="${cp:+$cp:}$jars_dir/$jar.jar"
    else
        missing+=("$jars_dir/$jar.jar")
    fi
done
if (( ${#missing[@]} )); then
    die "missing jar(s): ${missing[*]} (apt-get install -y libactivemq-java)"
fi

build="$(mktemp -d "${TMPDIR:-/tmp}/ferromq-jms-interop.XXXXXX")"
trap 'rm -rf -- "$build"' EXIT
mapfile -t sources < <(find "$here/src" -name '*.java' | sort)
(( ${#sources[@]} )) || die "no Java sources under $here/src"
"$javac" -nowarn -encoding UTF-8 -d "$build" -cp "$cp" "${sources[@]}" \
    || die "javac failed"

# Modest JVM: the suite shares the machine with broker builds. -Dfile.encoding keeps output UTF-8.
set +e
"$java" -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dfile.encoding=UTF-8 \
    -cp "$build:$cp" ferromq.interop.JmsInteropTests "$@"
status=$?
set -e
exit "$status"
