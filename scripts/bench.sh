#!/usr/bin/env bash
# Side-by-side benchmark: ferromq (release build) against Apache ActiveMQ 5.17
# (Debian package, KahaDB, its own ports), same machine, same clients, same
# run, alternating A B A B. Writes docs/bench/results.{md,json} and
# docs/bench/chart.svg. Installs what it needs (Java, activemq,
# libactivemq-java) when missing. Loopback only; every run ends by itself.
#
#   scripts/bench.sh                 # the full benchmark (5 repetitions, ~15 minutes)
#   BENCH_REPS=1 BENCH_SCALE=0.3 BENCH_OUT=/tmp/b scripts/bench.sh   # a quick one, elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v javac >/dev/null || apt_install default-jdk-headless
[ -f /usr/share/java/activemq-client.jar ] || apt_install libactivemq-java
[ -d /usr/share/activemq ] || apt_install activemq
command -v python3 >/dev/null || apt_install python3

cargo build --release --locked
exec python3 scripts/bench.py "$@"
