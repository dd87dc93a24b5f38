#!/bin/bash
# End-to-end check of amtgw + amt-relay + mcsend in two throwaway network
# namespaces (needs root). Run by scripts/test-all (not by `cargo test`); by hand:
#
#   cargo build -p amt-gateway -p sample-network --bins
#   sudo amt-gateway/tests/netns-e2e.sh [target/debug]
#
# Topology: amtdev-src (mcsend, src0 10.99.1.1 / 2001:db8:99::1)
#           --veth-- amtdev-rly (rly0 10.99.1.2; amt-relay on 127.0.0.1 and
#           [::1]; amtgw on the same host).
# Checks, for IPv4 and IPv6 data (IPv4 tunnel) and IPv4 data over an IPv6
# tunnel with discovery: every packet arrives, nothing is lost, the relay
# removes the gateway's channel and stops forwarding within 5 s of amtgw's
# exit; a refusing relay gives exit 3; a silent relay gives exit 2.
set -u
B=${1:-target/debug}
for bin in amtgw amt-relay mcsend; do
    [ -x "$B/$bin" ] || { echo "missing $B/$bin (build first)"; exit 1; }
done
TMP=$(mktemp -d /tmp/amtdev-e2e.XXXXXX)
fail=0
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null
    ip netns del amtdev-src 2>/dev/null
    ip netns del amtdev-rly 2>/dev/null
}
trap cleanup EXIT
S="ip netns exec amtdev-src"
R="ip netns exec amtdev-rly"

setup() {
    cleanup
    ip netns add amtdev-src && ip netns add amtdev-rly || exit 1
    ip link add src0 netns amtdev-src type veth peer name rly0 netns amtdev-rly
    $S ip link set lo up; $R ip link set lo up
    $S ip link set src0 up; $R ip link set rly0 up
    $S ip addr add 10.99.1.1/24 dev src0; $R ip addr add 10.99.1.2/24 dev rly0
    $S ip -6 addr add 2001:db8:99::1/64 dev src0 nodad; $R ip -6 addr add 2001:db8:99::2/64 dev rly0 nodad
}

check() { # description, condition-command...
    local what=$1; shift
    if "$@"; then echo "ok   - $what"; else echo "FAIL - $what"; fail=1; fi
}

last_status() { grep '"kind":"status"' "$TMP/relay.log" | tail -1; }
jq_num() { # json, key -> number (first match)
    sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1" | head -1
}

run_case() { # name, channel, source, group, relay-listen, gw-relay, extra gw opts
    local name=$1 ch=$2 src=$3 grp=$4 listen=$5 gwrelay=$6 gwopts=$7
    setup
    $R "$B/amt-relay" --listen "$listen" --lan-interface rly0 --qqi 3 --status-interval 0.5 >"$TMP/relay.log" 2>&1 &
    local relay=$!
    $S "$B/mcsend" -c "$ch" -i src0 --rate 500 --count 5000 >"$TMP/send.log" 2>&1 &
    sleep 0.5
    $R "$B/amtgw" --relay "$gwrelay" --source "$src" --group "$grp" --duration 5 --json $gwopts >"$TMP/gw.log" 2>"$TMP/gw.err"
    local rc=$?
    local ended; ended=$(date +%s%3N)
    check "$name: amtgw exit 0" test "$rc" = 0
    local summary; summary=$(grep '"kind":"summary"' "$TMP/gw.log")
    local pkts; pkts=$(jq_num "$summary" total_packets)
    local lost; lost=$(jq_num "$summary" total_lost)
    check "$name: packets received ($pkts)" test "${pkts:-0}" -ge 1500
    check "$name: no loss ($lost)" test "${lost:-1}" = 0
    local removed; removed=$(grep '"kind":"channel_removed"' "$TMP/relay.log" | sed -n 's/.*"unix_ms":\([0-9]*\).*/\1/p' | head -1)
    check "$name: relay removed the channel within 5 s of the leave" test -n "$removed" -a $(( ${removed:-0} - ended )) -le 5000
    sleep 1.2
    local f1; f1=$(jq_num "$(last_status)" forwarded)
    sleep 1.2
    local f2; f2=$(jq_num "$(last_status)" forwarded)
    check "$name: forwarding stopped after the leave ($f1 -> $f2)" test "$f1" = "$f2"
    check "$name: no gateway left at the relay" grep -q '"gateways":\[\]' <<<"$(last_status)"
    kill -INT $relay; wait $relay 2>/dev/null
}

run_case "v4 data, v4 tunnel" 10.99.1.1,232.1.1.1 10.99.1.1 232.1.1.1 127.0.0.1:2268 127.0.0.1 ""
run_case "v6 data, v4 tunnel" 2001:db8:99::1,ff3e::8000:1 2001:db8:99::1 ff3e::8000:1 127.0.0.1:2268 127.0.0.1 ""
run_case "v4 data, v6 tunnel, discovery" 10.99.1.1,232.1.1.1 10.99.1.1 232.1.1.1 "[::]:2268" "[::1]" "--discovery"

setup
$R "$B/amt-relay" --listen 127.0.0.1:2268 --lan-interface rly0 --refuse --status-interval 0 >"$TMP/relay.log" 2>&1 &
sleep 0.3
$R "$B/amtgw" --relay 127.0.0.1 --source 10.99.1.1 --group 232.1.1.1 --duration 5 >/dev/null 2>&1
check "refusing relay: amtgw exit 3" test $? = 3

setup
$R "$B/amtgw" --relay 127.0.0.1:2999 --source 10.99.1.1 --group 232.1.1.1 --give-up 2 >/dev/null 2>&1
check "silent relay: amtgw exit 2" test $? = 2

rm -rf "$TMP"
exit $fail
