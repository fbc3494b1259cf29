#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests, then the
# interoperability suites (stomp.py, stompit, stompjs over WebSocket, the JMS
# client) against the release broker.
# Installs what the tests need when it is missing, and fails loudly when it
# cannot: no test is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n== %s ==\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

log "dependencies"
command -v cargo >/dev/null || die "cargo is required (the Rust toolchain)"
command -v python3 >/dev/null || apt_install python3 python3-pip
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
if ! python3 -c 'import stomp, pytest, websocket' >/dev/null 2>&1; then
    python3 -m pip install -q -r tests/interop/python/requirements.txt \
        || python3 -m pip install -q --break-system-packages -r tests/interop/python/requirements.txt \
        || die "cannot install the Python test clients (stomp-py, pytest, websocket-client)"
fi
python3 -c 'import stomp, pytest, websocket' || die "stomp.py / pytest / websocket-client still missing"
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# The stock ActiveMQ JMS client (OpenWire) and a JDK to compile the JMS tests.
command -v javac >/dev/null || apt_install default-jdk-headless
[ -f /usr/share/java/activemq-client.jar ] || apt_install libactivemq-java
command -v javac >/dev/null || die "javac still missing"
[ -f /usr/share/java/activemq-client.jar ] || die "the ActiveMQ client jars are still missing"
(cd tests/interop/node && npm ci --no-audit --no-fund --silent) || die "npm ci failed in tests/interop/node"

log "cargo test (release)"
cargo build --release --locked
cargo test --release --locked 2>&1 | tee /tmp/ferromq-cargo-test.log
rust_passed=$(grep -Eo 'test result: [a-z]+\. [0-9]+ passed' /tmp/ferromq-cargo-test.log | awk '{s+=$4} END {print s+0}')

log "interoperability suites against the release broker"
data=$(mktemp -d)
read -r stomp_port auto_port ws_port secure_stomp_port secure_auto_port < <(python3 - <<'PY'
import socket
ports = []
socks = []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s); ports.append(s.getsockname()[1])
print(*ports)
PY
)
./target/release/ferromq --config tests/interop/interop.toml --data-dir "$data" \
    --stomp-addr "127.0.0.1:$stomp_port" --auto-addr "127.0.0.1:$auto_port" \
    --ws-addr "127.0.0.1:$ws_port" >"$data/broker.log" 2>&1 &
broker=$!
# The security tests' broker: users and authorization of tests/interop/secure.toml.
mkdir "$data/secure"
./target/release/ferromq --config tests/interop/secure.toml --data-dir "$data/secure" \
    --stomp-addr "127.0.0.1:$secure_stomp_port" --auto-addr "127.0.0.1:$secure_auto_port" \
    --ws-addr "" >"$data/secure-broker.log" 2>&1 &
secure_broker=$!
cleanup() {
    kill "$broker" "$secure_broker" 2>/dev/null || true
    wait "$broker" "$secure_broker" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
for port in "$stomp_port" "$ws_port" "$secure_stomp_port"; do
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
        sleep 0.1
    done
done
export SECURE_STOMP_PORT=$secure_stomp_port SECURE_BROKER_URL=tcp://127.0.0.1:$secure_auto_port WS_PORT=$ws_port

failed=0
STOMP_PORT=$stomp_port timeout 600 python3 -m pytest -q -p no:cacheprovider tests/interop/python \
    2>&1 | tee "$data/pytest.log" || failed=1
py_passed=$(grep -Eo '[0-9]+ passed' "$data/pytest.log" | tail -1 | awk '{print $1+0}')
(cd tests/interop/node && STOMP_PORT=$stomp_port timeout 600 node --test 2>&1) | tee "$data/node.log" || failed=1
node_passed=$(grep -Eo '^# pass [0-9]+' "$data/node.log" | awk '{print $3+0}')
BROKER_URL=tcp://127.0.0.1:$auto_port STOMP_PORT=$stomp_port timeout 900 tests/interop/java/run.sh \
    2>&1 | tee "$data/java.log" || failed=1
java_passed=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed' "$data/java.log" | tail -1 | awk '{print $1+0}')
# The same suites through the auto-detecting port.
STOMP_PORT=$auto_port timeout 600 python3 -m pytest -q -p no:cacheprovider tests/interop/python -k "queue or topic" \
    2>&1 | tee "$data/pytest-auto.log" || failed=1
auto_passed=$(grep -Eo '[0-9]+ passed' "$data/pytest-auto.log" | tail -1 | awk '{print $1+0}')

log "graceful shutdown"
kill -TERM "$broker"
if wait "$broker"; then echo "broker exited 0 on SIGTERM"; else echo "broker exit status $? on SIGTERM"; failed=1; fi
grep -q "stopped" "$data/broker.log" || { echo "no 'stopped' line in the broker log"; failed=1; }
if [ "$failed" != 0 ]; then
    echo "--- broker log (tail) ---"; tail -50 "$data/broker.log"
fi

total=$((rust_passed + ${py_passed:-0} + ${node_passed:-0} + ${auto_passed:-0} + ${java_passed:-0}))
log "summary"
echo "rust: $rust_passed, stomp.py: ${py_passed:-0}, node (stompit, stompjs): ${node_passed:-0}, stomp.py via auto port: ${auto_passed:-0}, JMS (OpenWire): ${java_passed:-0}"
if [ "$failed" != 0 ]; then
    echo "$total passed, 1 failed"
    exit 1
fi
echo "$total passed, 0 failed"
