#!/bin/bash
# Captures real AMT traffic between amtgw and the lab's amt-relay for the
# fuzz seed corpora: one throwaway namespace `fz-amt` (own prefix, so it
# never meets other labs), relay and gateway on its loopback, synthetic
# data from the relay (no sender needed; its LAN is a veth pair inside the
# namespace), tcpdump on lo.
#
#   cargo build -p amt-gateway -p sample-network --bins
#   fuzz/seeds/capture-amt.sh [BIN_DIR] [OUT.pcap]     (root)
#
# Cases: IPv4 tunnel with the G trailer and IPv4 data; IPv6 tunnel with
# discovery and IPv6 data (MLDv2 inside); a refusing relay (L flag).
# Then fuzz/seeds/make-seeds.py turns the capture into seed files.
set -eu
B=${1:-${CARGO_TARGET_DIR:-target}/debug}
OUT=${2:-fuzz/seeds/captures/amt-lo.pcap}
NS=fz-amt
for bin in amtgw amt-relay; do
    [ -x "$B/$bin" ] || { echo "missing $B/$bin (build first)" >&2; exit 1; }
done
X="ip netns exec $NS"
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    sleep 0.2
    ip netns del $NS 2>/dev/null || true
}
trap cleanup EXIT
ip netns del $NS 2>/dev/null || true
ip netns add $NS
$X ip link set lo up
$X ip link add fzlan0 type veth peer name fzlan1
$X ip link set fzlan1 up
$X ip link set fzlan0 up
$X ip addr add 10.98.1.2/24 dev fzlan0
$X ip -6 addr add 2001:db8:98::2/64 dev fzlan0 nodad

$X tcpdump -i lo -U -s 0 -w "$OUT" udp port 2268 2>/dev/null &
TCPDUMP=$!
sleep 1

relay() { # extra relay args...
    $X "$B/amt-relay" --lan-interface fzlan0 --qqi 2 --status-interval 0 "$@" >/dev/null 2>&1 &
    RELAY=$!
    sleep 0.4
}

echo "case 1: IPv4 tunnel, G trailer, IPv4 data"
relay --listen 127.0.0.1:2268 --gateway-address --synthetic 10.98.1.1,232.1.1.1 --synthetic-rate 5 --synthetic-size 64
$X "$B/amtgw" --relay 127.0.0.1 --source 10.98.1.1 --group 232.1.1.1 --duration 3 >/dev/null 2>&1 || echo "  amtgw exit $?"
sleep 0.3; kill -INT $RELAY; wait $RELAY 2>/dev/null || true

echo "case 2: IPv6 tunnel with discovery, IPv6 data"
relay --listen "[::1]:2268" --synthetic 2001:db8:98::1,ff3e::8000:1 --synthetic-rate 5 --synthetic-size 64
$X "$B/amtgw" --relay "[::1]" --discovery --source 2001:db8:98::1 --group ff3e::8000:1 --duration 3 >/dev/null 2>&1 || echo "  amtgw exit $?"
sleep 0.3; kill -INT $RELAY; wait $RELAY 2>/dev/null || true

echo "case 3: refusing relay"
relay --listen 127.0.0.1:2268 --refuse
$X "$B/amtgw" --relay 127.0.0.1 --source 10.98.1.1 --group 232.1.1.1 --duration 2 >/dev/null 2>&1 || echo "  amtgw exit $? (3 expected)"
kill -INT $RELAY; wait $RELAY 2>/dev/null || true

sleep 0.5
kill -INT $TCPDUMP; wait $TCPDUMP 2>/dev/null || true
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)"
