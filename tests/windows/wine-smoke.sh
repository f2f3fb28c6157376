#!/usr/bin/env bash
# Smoke test of the Windows listener agent under Wine, against the Linux broker on loopback:
#   1. cross-build relay-listener.exe (x86_64-pc-windows-gnu, mingw) and install it as a
#      service with a config that enrolls by a single-use token on first start;
#   2. start the service: it registers (its key made inside the service and kept as a DPAPI
#      blob) and connects to the broker with mTLS;
#   3. a Linux sender relays bytes through it to an echo service;
#   4. stop the service, and uninstall it.
# Wine 8.0 lacks bcryptprimitives.dll (Rust's std imports ProcessPrng from it), so a
# test-only shim is built into the prefix; `wineserver -p` keeps services alive between
# commands. Wine proves the SCM protocol and the APIs are wired; ACLs, virtual accounts and
# DPAPI's real protection still need a Windows machine before a release.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$root/target/wine-smoke
rm -rf "$work" && mkdir -p "$work"
export WINEPREFIX=$root/target/wine WINEDEBUG=-all WINEARCH=win64

cargo build -q --locked --target x86_64-pc-windows-gnu -p relay-listener
cargo build -q --locked -p relay-broker -p relay-listener -p relay-sender
exe=$root/target/x86_64-pc-windows-gnu/debug/relay-listener.exe
bin=$root/target/debug

mkdir -p "$WINEPREFIX"
# Every Wine call is bounded: a wedged prefix fails the run instead of hanging it.
w() { timeout 120 wine "$@"; }
[ -f "$WINEPREFIX/system.reg" ] || timeout 300 wineboot --init
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
    tests/windows/bcryptprimitives.c tests/windows/bcryptprimitives.def
wineserver -k 2>/dev/null || true
wineserver -p

pids=()
cleanup() {
    w sc stop relay-agent >/dev/null 2>&1 || true
    w "$exe" service uninstall >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wineserver -k 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # description, seconds, command...
    local what=$1 secs=$2; shift 2
    for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    echo "timed out waiting for $what" >&2
    [ -f "$work/relay-agent.log" ] && tail -30 "$work/relay-agent.log" >&2
    return 1
}

# The broker on Linux: TLS, durable store, CA, a person who may register `win*`.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$work/server.key" -out "$work/server.pem" 2>/dev/null
cat > "$work/broker.toml" <<EOF
[server]
bind = "127.0.0.1:0"
tls_cert = "$work/server.pem"
tls_key = "$work/server.key"
[store]
path = "$work/relay.db"
[ca]
dir = "$work/ca"
[[hybrid_connections]]
name = "win"
[[authorization_rules]]
name = "root"
key = "wine-smoke-key"
rights = ["Manage"]
EOF
"$bin/relay-broker" --config "$work/broker.toml" > "$work/broker.out" 2> "$work/broker.err" &
pids+=($!)
wait_for "the broker" 20 grep -q "listening on" "$work/broker.out"
addr=$(sed -n 's/^listening on //p' "$work/broker.out")
export RELAY_ENDPOINT=https://$addr RELAY_SAS_KEY_NAME=root RELAY_SAS_KEY=wine-smoke-key
export ALICE_PASSWORD="correct horse battery"
admin() { "$bin/relay-broker" "$@" --ca-cert "$work/server.pem"; }
admin person add alice --password-env ALICE_PASSWORD >/dev/null
admin person grant alice listener.register 'win*' >/dev/null
admin enrollment-token create --person alice --hc win > "$work/enroll.token"

# The target service: an echo server on Linux.
echo_port=$(free_port)
python3 - "$echo_port" <<'EOF' &
import socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
EOF
pids+=($!)

# The agent's configuration, read by the Windows service through Wine's Z: drive.
status_port=$(free_port)
cat > "$work/agent.toml" <<EOF
[broker]
endpoint = "wss://$addr"
identity = "identity"
enrollment_token_file = "enroll.token"
ca_cert = "server.pem"
[agent]
status_bind = "127.0.0.1:$status_port"
[[endpoints]]
hc = "win"
tcp = "127.0.0.1:$echo_port"
EOF

echo "== install and start the service"
w "$exe" service install --config "Z:$work/agent.toml"
w sc start relay-agent >/dev/null
wait_for "the agent to connect" 90 sh -c "'$bin/relay-listener' status --status-addr 127.0.0.1:$status_port | grep -q CONNECTED"
"$bin/relay-listener" status --status-addr "127.0.0.1:$status_port"

echo "== the service enrolled itself and keeps its key under DPAPI"
test -s "$work/identity/key.pem"
if grep -q "PRIVATE KEY" "$work/identity/key.pem"; then
    echo "the key is stored in clear, not as a DPAPI blob" >&2; exit 1
fi
test ! -e "$work/enroll.token"
grep -c "BEGIN CERTIFICATE" "$work/identity/cert.pem" | grep -qx 3

echo "== a sender relays bytes through the Windows agent"
local_port=$(free_port)
"$bin/relay-sender" forward --endpoint "wss://$addr" --hc win --sas-key-name root \
    --local "127.0.0.1:$local_port" --ca-cert "$work/server.pem" > /dev/null 2>&1 &
pids+=($!)
python3 - "$local_port" <<'EOF'
import socket, sys, time
deadline = time.time() + 30
while True:
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
        s.sendall(b"hello from the relay")
        got = b""
        while len(got) < 20:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        if got == b"hello from the relay":
            print("echoed through the Windows agent")
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("no echo through the Windows agent")
    time.sleep(0.5)
EOF

echo "== stop and uninstall"
w sc stop relay-agent >/dev/null
wait_for "the service to stop" 60 sh -c "timeout 30 wine sc query relay-agent | grep -q STOPPED"
w "$exe" service uninstall
if w sc query relay-agent >/dev/null 2>&1; then
    echo "the service is still installed" >&2; exit 1
fi
grep -q "service stopped" "$work/relay-agent.log"
echo "wine smoke test passed"
