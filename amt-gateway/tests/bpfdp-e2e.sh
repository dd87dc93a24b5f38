#!/bin/bash
# End-to-end test of the kernel data plane (and of the userspace one, for
# comparison) with real namespaces, veths, TUNs and BPF. Needs root, python3,
# bpftool, and amtgw built with the BPF object (clang + libbpf-dev present
# at build time):
#
#   cargo build -p amt-gateway -p sample-network --bins
#   sudo amt-gateway/tests/bpfdp-e2e.sh [target/debug]
#
# Namespaces (own prefix, removed on exit): bpfdp-rl (relay: amt-relay,
# and tests/bpfdp/inject.py crafting datagrams), bpfdp-gw (amtgw), and for
# variant D bpfdp-frr (where the TUN lives, as FRR's namespace does).
#
# For every data plane (kernel, userspace) x delivery (B: TUN in amtgw's
# namespace; D: TUN in bpfdp-frr, amtgw --tun-netns) x outer family x
# inner family:
#   * amt-relay --synthetic sends N packets (fewer when it falls behind on a
#     busy machine: what it reports as sent counts); tests/bpfdp/recv.py,
#     joined on the TUN (so only packets whose incoming interface is the
#     TUN count), must receive exactly those;
#   * inject.py sends, from the relay's address and port, 100 valid packets
#     with inner TTL/hop limit 1: all arrive with 2 (min_inner_ttl);
#   * forged data (from another address; from the relay's address but
#     another port), data for an (S,G) not subscribed, and malformed data
#     (inner length beyond the datagram, no inner packet, IP version 5),
#     100 each: none arrives, and amtgw's userspace tunnel counts them all
#     (not_from_relay 200, not_subscribed 100, malformed 300), which proves
#     the kernel passed them to the socket;
#   * kernel mode: the kernel delivered N + 100 packets and raised 100 TTLs,
#     and the AMT handshake (control messages) worked through the socket;
#     userspace mode: the kernel data plane was not used;
#   * after amtgw exits: no amt_* BPF program or map, no veth, no TCX link,
#     no tc filter, no clsact qdisc (amtgw added it, so it must go).
# Also with Relay Discovery (the relay address reaches the kernel later).
#
# Attach modes (amtgw --dataplane-attach): the kernel cases run once per
# mode the kernel allows: on Linux >= 6.6 with `auto` (must pick TCX) and
# with `tc` (legacy: clsact qdisc + direct-action bpf filter, forced), on
# older kernels (Debian 12's 6.1) with `auto` (must pick tc), and `tcx` must
# be refused there. ATTACH="auto:tcx tc:tc" (requested:expected pairs)
# overrides the list. Per mode also:
#   * kill -9 of amtgw (variant D, fixed local port): TCX leaves only the
#     veth pair, tc also its filter, its clsact qdisc and the program the
#     filter holds; the next start removes all of it before attaching
#     (stale filter of the old process gone, its program freed), delivers
#     every packet through the kernel again, and leaves nothing when it
#     stops;
# and for tc: a clsact qdisc that was there before (someone else's) stays;
# two amtgw on the same uplink share the clsact qdisc amtgw added: the
# first to stop removes only its own filter, the last removes the qdisc.
# Then: the capabilities (a non-root user with only CAP_BPF + CAP_NET_ADMIN,
# plus CAP_SYS_ADMIN for variant D, runs the kernel data plane, in every
# attach mode; without CAP_BPF, auto falls back to userspace and says why),
# and auto without a TUN falls back with its reason.
#
# ONLY=caps runs the capability part only; ONLY=kill9 the kill -9 and
# sharing cases only.
set -u
B=${1:-target/debug}
HERE=$(cd "$(dirname "$0")" && pwd)
T=$HERE/bpfdp
N=${N:-2000}
die() { echo "bpfdp-e2e: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (namespaces, BPF)"
command -v python3 >/dev/null || die "needs python3"
command -v bpftool >/dev/null || die "needs bpftool"
for bin in amtgw amt-relay; do
    [ -x "$B/$bin" ] || die "missing $B/$bin (build first, see the header)"
done
B=$(cd "$B" && pwd)
command -v tc >/dev/null || die "needs tc (iproute2)"
kver=$(uname -r); kmaj=${kver%%.*}; kmin=${kver#*.}; kmin=${kmin%%[!0-9]*}
if [ "$kmaj" -gt 6 ] || { [ "$kmaj" = 6 ] && [ "$kmin" -ge 6 ]; }; then
    HAS_TCX=1; ATTACH=${ATTACH:-auto:tcx tc:tc}
else
    HAS_TCX=0; ATTACH=${ATTACH:-auto:tc}
fi
echo "bpfdp-e2e: kernel $kver, attach modes (requested:expected): $ATTACH"
TMP=$(mktemp -d /tmp/bpfdp-e2e.XXXXXX)
fail=0
passed=0
failed=0
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
    ip netns del bpfdp-gw 2>/dev/null
    ip netns del bpfdp-rl 2>/dev/null
    ip netns del bpfdp-frr 2>/dev/null
}
trap 'cleanup; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

check() { # description, condition-command...
    local what=$1; shift
    if "$@"; then echo "ok   - $what"; passed=$((passed + 1)); else echo "FAIL - $what"; fail=1; failed=$((failed + 1)); fi
}
wait_for() { # file, pattern, timeout-seconds: until the file holds the pattern
    timeout "$3" bash -c 'until grep -q "$1" "$0" 2>/dev/null; do sleep 0.05; done' "$1" "$2"
}
jget() { # file-with-json-line, jq-ish python expression on `d`
    python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read() or '{}'); print($2)" "$1" 2>/dev/null
}

setup() { # with-frr (0|1)
    cleanup
    ip netns add bpfdp-rl && ip netns add bpfdp-gw || die "cannot create namespaces"
    ip link add bpfdp-g0 netns bpfdp-gw type veth peer name bpfdp-r0 netns bpfdp-rl || die "veth"
    ip -n bpfdp-gw link set lo up; ip -n bpfdp-rl link set lo up
    ip -n bpfdp-gw addr add 10.98.1.2/24 dev bpfdp-g0; ip -n bpfdp-rl addr add 10.98.1.1/24 dev bpfdp-r0
    ip -n bpfdp-gw addr add 2001:db8:98::2/64 dev bpfdp-g0 nodad
    ip -n bpfdp-rl addr add 2001:db8:98::1/64 dev bpfdp-r0 nodad
    ip -n bpfdp-gw link set bpfdp-g0 up; ip -n bpfdp-rl link set bpfdp-r0 up
    if [ "$1" = 1 ]; then
        ip netns add bpfdp-frr || die "cannot create bpfdp-frr"
        ip -n bpfdp-frr link set lo up
    fi
    local ns
    for ns in bpfdp-gw bpfdp-frr; do
        [ -e "/run/netns/$ns" ] || continue
        # The receiver gets packets from sources it has no route to.
        ip netns exec $ns sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
}

# Filters of amtgw on the uplink's ingress (tc legacy), one line each.
uplink_filters() { tc -n bpfdp-gw filter show dev bpfdp-g0 ingress 2>/dev/null | grep -E 'handle .*amt_decap'; }
uplink_clsact() { tc -n bpfdp-gw qdisc show dev bpfdp-g0 2>/dev/null | grep -E '^qdisc clsact'; }

leftovers() { # -> prints what the kernel data plane left behind
    bpftool prog show 2>/dev/null | grep -E 'name (amt_decap|amt_to_tun) '
    bpftool map show 2>/dev/null | grep -E 'name amt_(tunnels|channels|tunnel_stat)'
    ip -n bpfdp-gw -o link show 2>/dev/null | grep -E 'bpfdp-tun0-dp'
    ip -n bpfdp-frr -o link show 2>/dev/null | grep -E 'bpfdp-tun0-df'
    bpftool link show 2>/dev/null | grep -E -A1 'tcx' | grep -E 'ifindex' | grep -q . &&
        ip netns exec bpfdp-gw bpftool net show dev bpfdp-g0 2>/dev/null | grep -E 'amt_'
    uplink_filters
    # A clsact qdisc someone else added before amtgw came must stay.
    [ "${FOREIGN_CLSACT:-0}" = 1 ] || uplink_clsact
}

# run_case MODE VARIANT OUTER INNER [AMTGW-OPTION]; the attach mode is
# $REQ (requested) / $EXP (expected).
run_case() {
    local mode=$1 variant=$2 outer=$3 inner=$4 extra=${5:-}
    local name="$mode/$variant outer v$outer inner v$inner${extra:+ $extra}"
    [ "$mode" = kernel ] && name="$name [attach $REQ]"
    local relay gw forged_src s g os og tunns opts
    if [ "$outer" = 4 ]; then relay=10.98.1.1; gw=10.98.1.2; forged_src=10.98.1.3
    else relay=2001:db8:98::1; gw=2001:db8:98::2; forged_src=2001:db8:98::3; fi
    if [ "$inner" = 4 ]; then s=10.98.5.1; g=232.98.0.1; os=10.98.5.9; og=232.98.0.9
    else s=2001:db8:98:5::1; g=ff3e::98:1; os=2001:db8:98:5::9; og=ff3e::98:9; fi
    local relay_sa=$relay gw_sa=$gw:40000
    [ "$outer" = 6 ] && relay_sa="[$relay]" && gw_sa="[$gw]:40000"
    if [ "$variant" = D ]; then setup 1; tunns=bpfdp-frr; opts="--tun-netns /run/netns/bpfdp-frr"
    else setup 0; tunns=bpfdp-gw; opts=""; fi

    ip netns exec bpfdp-rl "$B/amt-relay" --listen "$relay_sa:2268" --lan-interface bpfdp-r0 \
        --status-interval 0 --synthetic "$s,$g" --synthetic-rate 1000 --synthetic-size 100 \
        --synthetic-port 5001 --synthetic-count "$N" --synthetic-delay 3 \
        >"$TMP/relay.log" 2>"$TMP/relay.err" &
    PIDS+=($!)
    sleep 0.3
    ip netns exec bpfdp-gw "$B/amtgw" --relay "$relay_sa" --bind "$gw_sa" --source "$s" --group "$g" \
        --tun bpfdp-tun0 $opts $extra --dataplane "$mode" --dataplane-attach "$REQ" --json \
        >"$TMP/gw.log" 2>"$TMP/gw.err" &
    local gwpid=$!
    PIDS+=($gwpid)
    local i
    for i in $(seq 100); do ip -n $tunns link show bpfdp-tun0 >/dev/null 2>&1 && break; sleep 0.05; done
    rm -f "$TMP/recv.ready"
    ip netns exec $tunns python3 "$T/recv.py" --iface bpfdp-tun0 --port 5001 \
        --ready-file "$TMP/recv.ready" "$s,$g" "$os,$og" \
        >"$TMP/recv.log" 2>"$TMP/recv.err" &
    local rpid=$!
    PIDS+=($rpid)
    wait_for "$TMP/relay.log" '"kind":"synthetic_started"' 20 ||
        { cat "$TMP/gw.err" "$TMP/relay.err" "$TMP/recv.err"; }
    check "$name: the receiver was ready before the relay started sending" test -e "$TMP/recv.ready"
    wait_for "$TMP/relay.log" '"kind":"synthetic_summary"' $(( N / 1000 + 15 )) ||
        { cat "$TMP/gw.err" "$TMP/relay.err" "$TMP/recv.err"; }
    # While amtgw runs, the leftover check must see its program (or the
    # check below could not fail).
    local during; during=$(leftovers)
    local during_filters; during_filters=$(uplink_filters)
    local during_remote; during_remote=$(tc -n bpfdp-frr filter show dev bpfdp-tun0-df ingress 2>/dev/null | grep -E 'handle .*amt_to_tun')
    local inj="python3 $T/inject.py --dst $gw --dport 40000 --channel $s,$g --other-channel $os,$og"
    ip netns exec bpfdp-rl $inj --src $relay legit
    ip netns exec bpfdp-rl $inj --src $forged_src forged
    ip netns exec bpfdp-rl $inj --src $relay --sport 2269 forged
    local c
    for c in unsubscribed truncated short badversion; do ip netns exec bpfdp-rl $inj --src $relay $c; done
    sleep 0.5 # the last datagrams reach the socket / the receiver
    kill -INT $gwpid; wait $gwpid; local rc=$?
    kill -TERM $rpid; wait $rpid
    grep '"kind":"dataplane"' "$TMP/gw.log" >"$TMP/dp.json"
    grep '"kind":"summary"' "$TMP/gw.log" >"$TMP/sum.json"
    grep recv_summary "$TMP/recv.log" >"$TMP/rs.json"
    check "$name: amtgw exit 0" test "$rc" = 0
    check "$name: data plane $(jget "$TMP/dp.json" "d.get('running')") ($(jget "$TMP/dp.json" "d.get('reason')"))" \
        test "$(jget "$TMP/dp.json" "d.get('running')")" = "$mode"
    # The relay skips packets it could not send in time (a busy machine):
    # what it sent is what must arrive.
    grep '"kind":"synthetic_summary"' "$TMP/relay.log" | head -1 >"$TMP/syn.json"
    local sent; sent=$(jget "$TMP/syn.json" "d.get('sent', 0)")
    check "$name: the relay sent at least half of its $N packets ($sent)" test "${sent:-0}" -ge $(( N / 2 ))
    local ch="d['channels'].get('$s,$g', {})"
    local syn; syn=$(jget "$TMP/rs.json" "$ch.get('synthetic', {}).get('packets', 0)")
    check "$name: all $sent packets the relay sent arrived through the TUN ($syn)" test "$syn" = "$sent"
    local legit ttls; legit=$(jget "$TMP/rs.json" "$ch.get('legit', {}).get('packets', 0)")
    ttls=$(jget "$TMP/rs.json" "sorted($ch.get('legit', {}).get('ttl', {}).keys())")
    check "$name: 100 TTL-1 packets arrived with TTL 2 ($legit, TTLs $ttls)" \
        test "$legit" = 100 -a "$ttls" = "['2']"
    local forged other; forged=$(jget "$TMP/rs.json" "$ch.get('forged', {}).get('packets', 0)")
    other=$(jget "$TMP/rs.json" "sum(c['packets'] for k, cats in d['channels'].items() if k != '$s,$g' for c in cats.values())")
    check "$name: no forged, malformed or unsubscribed packet arrived ($forged, $other)" \
        test "$forged" = 0 -a "$other" = 0
    local drops; drops=$(jget "$TMP/sum.json" "'%s %s %s' % tuple(d['dropped_by_reason'][k] for k in ('not_from_relay', 'not_subscribed', 'malformed'))")
    check "$name: the socket got them and the tunnel dropped them (not_from_relay not_subscribed malformed: $drops)" \
        test "$drops" = "200 100 300"
    local kp kt; kp=$(jget "$TMP/sum.json" "d.get('kernel_packets')"); kt=$(jget "$TMP/sum.json" "d.get('kernel_ttl_raised')")
    if [ "$mode" = kernel ]; then
        check "$name: the kernel delivered $((sent + 100)) packets ($kp), raised >= 100 TTLs ($kt)" \
            test "$kp" = $((sent + 100)) -a "${kt:-0}" -ge 100
        local up; up=$(jget "$TMP/sum.json" "d.get('kernel_uplink')")
        check "$name: attached to the uplink bpfdp-g0 ($up)" test "$up" = bpfdp-g0
    else
        check "$name: the kernel data plane was not used ($kp)" test "$kp" = None
    fi
    if [ "$mode" = kernel ]; then
        check "$name: while running, the leftover check sees the data plane" \
            test -n "$(grep amt_decap <<<"$during")" -a \( "$variant" = B -o -n "$(grep bpfdp-tun0-df <<<"$during")" \)
        local att katt; att=$(jget "$TMP/dp.json" "d.get('attach')"); katt=$(jget "$TMP/sum.json" "d.get('kernel_attach')")
        check "$name: attach mode $att at start, $katt at the end ($(jget "$TMP/dp.json" "d.get('attach_reason')"), kernel $(jget "$TMP/dp.json" "d.get('kernel_release')"))" \
            test "$att" = "$EXP" -a "$katt" = "$EXP"
        if [ "$EXP" = tc ]; then
            check "$name: tc: one amt_decap filter at pref 65280 on bpfdp-g0, owned by amtgw (pid $gwpid), clsact added" \
                test "$(grep -c . <<<"$during_filters")" = 1 -a -n "$(grep -E "pref 65280 .*amt_decap:pid=$gwpid,start=[0-9]+ direct-action" <<<"$during_filters")" -a -n "$(grep clsact <<<"$during")"
            [ "$variant" = D ] && check "$name: tc: amt_to_tun filter on bpfdp-tun0-df in bpfdp-frr" \
                test -n "$(grep "amt_to_tun:pid=$gwpid," <<<"$during_remote")"
        else
            check "$name: tcx: no tc filter on bpfdp-g0 ($during_filters)" test -z "$during_filters"
        fi
    fi
    sleep 0.2
    local left; left=$(leftovers)
    check "$name: nothing left behind${left:+: $left}" test -z "$left"
    cleanup
}

# ---- kill -9 ---------------------------------------------------------------
# start_gw VARIANT LOG-STEM [OPTIONS...]: amtgw in kernel mode with a fixed
# local port (so a stale program would match the next run's tunnel), and a
# fresh relay sending 1000 packets after 2 s. Sets GWPID.
start_relay() {
    ip netns exec bpfdp-rl "$B/amt-relay" --listen 10.98.1.1:2268 --lan-interface bpfdp-r0 \
        --status-interval 0 --synthetic 10.98.5.1,232.98.0.1 --synthetic-rate 1000 --synthetic-size 100 \
        --synthetic-port 5001 --synthetic-count 1000 --synthetic-delay 2 >"$TMP/$1.relay.log" 2>&1 &
    RLPID=$!
    PIDS+=($RLPID)
    sleep 0.3
}
start_gw() {
    local variant=$1 stem=$2; shift 2
    local opts=""
    [ "$variant" = D ] && opts="--tun-netns /run/netns/bpfdp-frr"
    ip netns exec bpfdp-gw "$B/amtgw" --relay 10.98.1.1 --bind 10.98.1.2:40000 --source 10.98.5.1 \
        --group 232.98.0.1 --tun bpfdp-tun0 $opts --dataplane kernel --dataplane-attach "$REQ" --json "$@" \
        >"$TMP/$stem.log" 2>"$TMP/$stem.err" &
    GWPID=$!
    PIDS+=($GWPID)
}
progs_amt() { bpftool prog show 2>/dev/null | grep -cE 'name (amt_decap|amt_to_tun) '; }

kill9_case() { # VARIANT
    local variant=$1 name="kill -9/$1 [attach $REQ]"
    setup $([ "$variant" = D ] && echo 1 || echo 0)
    start_relay k1
    start_gw "$variant" k1
    local pid1=$GWPID
    wait_for "$TMP/k1.log" '"kind":"dataplane"' 10
    # Attached once the tunnel has its relay (at once, no discovery).
    local i
    for i in $(seq 100); do [ -n "$(leftovers | grep amt_decap)" ] && break; sleep 0.05; done
    sleep 1
    kill -9 $pid1; wait $pid1 2>/dev/null
    kill $RLPID; wait $RLPID 2>/dev/null
    sleep 0.3
    local left; left=$(leftovers)
    if [ "$EXP" = tc ]; then
        check "$name: after kill -9 the filter, the clsact qdisc and the program stay (the check can fail)" \
            test -n "$(grep "amt_decap:pid=$pid1," <<<"$left")" -a -n "$(grep clsact <<<"$left")" -a -n "$(grep 'name amt_decap' <<<"$left")"
    else
        check "$name: after kill -9 the TCX links and programs are gone with the process" \
            test -z "$(uplink_filters)" -a -z "$(grep 'name amt_' <<<"$left")"
    fi
    [ "$variant" = D ] && check "$name: after kill -9 the veth pair stays (the check can fail)" \
        test -n "$(grep bpfdp-tun0-dp <<<"$left")"
    # The second run: everything stale goes before attaching.
    start_relay k2
    start_gw "$variant" k2 -v
    local pid2=$GWPID
    rm -f "$TMP/recv.ready"
    local tunns=bpfdp-gw; [ "$variant" = D ] && tunns=bpfdp-frr
    for i in $(seq 100); do ip -n $tunns link show bpfdp-tun0 >/dev/null 2>&1 && break; sleep 0.05; done
    ip netns exec $tunns python3 "$T/recv.py" --iface bpfdp-tun0 --port 5001 \
        --ready-file "$TMP/recv.ready" 10.98.5.1,232.98.0.1 >"$TMP/k2.recv.log" 2>&1 &
    local rpid=$!
    PIDS+=($rpid)
    wait_for "$TMP/k2.relay.log" '"kind":"synthetic_summary"' 20
    sleep 0.5
    local during; during=$(leftovers)
    local filters; filters=$(uplink_filters)
    local progs; progs=$(progs_amt)
    kill -INT $pid2; wait $pid2; local rc=$?
    kill -TERM $rpid; wait $rpid
    grep '"kind":"summary"' "$TMP/k2.log" >"$TMP/sum.json"
    grep recv_summary "$TMP/k2.recv.log" >"$TMP/rs.json"
    grep '"kind":"synthetic_summary"' "$TMP/k2.relay.log" | head -1 >"$TMP/syn.json"
    local sent kp got
    sent=$(jget "$TMP/syn.json" "d.get('sent', 0)"); kp=$(jget "$TMP/sum.json" "d.get('kernel_packets')")
    got=$(jget "$TMP/rs.json" "d['channels'].get('10.98.5.1,232.98.0.1', {}).get('synthetic', {}).get('packets', 0)")
    check "$name: the next start: exit $rc, the kernel delivered all $sent packets ($kp), all arrived ($got)" \
        test "$rc" = 0 -a "${sent:-0}" -ge 500 -a "$kp" = "$sent" -a "$got" = "$sent"
    # amtgw loads both programs whatever the variant.
    check "$name: the next start: only its own 2 programs are loaded ($progs)" test "$progs" = 2
    if [ "$EXP" = tc ]; then
        check "$name: the next start removed the stale filter and attached its own (pid $pid2): $(tr -s ' ' <<<"$filters" | cut -c1-120)" \
            test "$(grep -c . <<<"$filters")" = 1 -a -n "$(grep "amt_decap:pid=$pid2," <<<"$filters")"
        check "$name: the next start said so" grep -q 'removed a stale tc filter' "$TMP/k2.err"
    fi
    sleep 0.2
    left=$(leftovers)
    check "$name: after the next start stops, nothing is left${left:+: $left}" test -z "$left"
    cleanup
}

# Someone else's clsact qdisc (empty) was there first: it stays.
foreign_clsact_case() {
    local name="tc: a clsact qdisc added by someone else [attach $REQ]"
    setup 0
    tc -n bpfdp-gw qdisc add dev bpfdp-g0 clsact || die "tc qdisc add"
    start_relay f1
    start_gw B f1 --duration 3
    wait $GWPID; local rc=$?
    local att; att=$(grep '"kind":"summary"' "$TMP/f1.log" | python3 -c "import json,sys; print(json.loads(sys.stdin.read() or '{}').get('kernel_attach'))")
    local left; left=$(FOREIGN_CLSACT=1 leftovers)
    check "$name: exit $rc, attached with $att, no filter left, the qdisc is still there${left:+ (left: $left)}" \
        test "$rc" = 0 -a "$att" = tc -a -z "$left" -a -n "$(uplink_clsact)"
    cleanup
}

# Two amtgw on one uplink share the clsact qdisc the first one added.
shared_uplink_case() {
    local name="tc: two amtgw on one uplink [attach $REQ]"
    setup 0
    start_relay s1
    ip netns exec bpfdp-gw "$B/amtgw" --relay 10.98.1.1 --bind 10.98.1.2:40001 --source 10.98.5.1 \
        --group 232.98.0.1 --tun bpfdp-tun1 --dataplane kernel --dataplane-attach "$REQ" --json \
        >"$TMP/s1.log" 2>"$TMP/s1.err" &
    local a=$!
    PIDS+=($a)
    local i
    for i in $(seq 100); do [ -n "$(uplink_filters)" ] && break; sleep 0.05; done
    start_gw B s2
    local b=$GWPID
    for i in $(seq 100); do [ "$(uplink_filters | grep -c .)" = 2 ] && break; sleep 0.05; done
    local both; both=$(uplink_filters | grep -c .)
    kill -INT $b; wait $b; local rcb=$?
    local after_b; after_b=$(uplink_filters)
    local clsact_b; clsact_b=$(uplink_clsact)
    kill -INT $a; wait $a; local rca=$?
    sleep 0.2
    local left; left=$(leftovers)
    check "$name: both attached ($both filters)" test "$both" = 2
    check "$name: the second one's stop (exit $rcb) left the first one's filter and the qdisc" \
        test "$rcb" = 0 -a "$(grep -c . <<<"$after_b")" = 1 -a -n "$(grep "amt_decap:pid=$a," <<<"$after_b")" -a -n "$clsact_b"
    check "$name: the first one's stop (exit $rca) left nothing${left:+: $left}" test "$rca" = 0 -a -z "$left"
    cleanup
}

first=1
for pair in $ATTACH; do
    REQ=${pair%%:*}; EXP=${pair#*:}
    if [ "${ONLY:-all}" = all ]; then
        for variant in D B; do
            for mode in kernel userspace; do
                # The userspace data plane attaches nothing: once is enough.
                [ $mode = userspace ] && [ $first = 0 ] && continue
                for outer in 4 6; do
                    for inner in 4 6; do
                        run_case $mode $variant $outer $inner
                    done
                done
            done
        done

        # Relay Discovery first: the kernel learns the relay address only from the
        # Advertisement (the driver follows the tunnel's relay into the maps).
        run_case kernel D 4 4 --discovery
        run_case kernel D 6 6 --discovery
    fi
    if [ "${ONLY:-all}" = all ] || [ "${ONLY:-all}" = kill9 ]; then
        kill9_case D
        kill9_case B
        if [ "$EXP" = tc ]; then
            foreign_clsact_case
            shared_uplink_case
        fi
    fi
    first=0
done

if [ "$HAS_TCX" = 0 ] && [ "${ONLY:-all}" != caps ]; then
    setup 0
    REQ=tcx
    start_relay t1
    start_gw B t1 --give-up 2
    wait $GWPID; rc=$?
    check "tcx requested on kernel $kver (no TCX): refused with exit 1 ($(head -c 160 "$TMP/t1.err"))" \
        test "$rc" = 1 -a -n "$(grep -i 'amt_decap' "$TMP/t1.err")"
    left=$(leftovers)
    check "tcx requested on kernel $kver: nothing left${left:+: $left}" test -z "$left"
    cleanup
fi

# ---- capabilities ---------------------------------------------------------
# A non-root user (nobody) with only the given capabilities. /dev/net/tun is
# root-only here; inside amtgw's private mount namespace (ip netns exec) a
# world-accessible node is bound over it, so only capabilities matter.
mknod "$TMP/tun" c 10 200 && chmod 666 "$TMP/tun" || die "mknod"
chmod 755 "$TMP"
cap_case() { # description, variant, mode, caps, expected-running [attach]
    local what=$1 variant=$2 mode=$3 caps=$4 want=$5 attach=${6:-auto} opts="" tunns=bpfdp-gw
    if [ "$variant" = D ]; then setup 1; opts="--tun-netns /run/netns/bpfdp-frr"; tunns=bpfdp-frr; else setup 0; fi
    ip netns exec bpfdp-rl "$B/amt-relay" --listen 10.98.1.1:2268 --lan-interface bpfdp-r0 \
        --status-interval 0 --synthetic 10.98.5.1,232.98.0.1 --synthetic-rate 1000 --synthetic-size 100 \
        --synthetic-port 5001 --synthetic-count 500 --synthetic-delay 1 >"$TMP/relay.log" 2>&1 &
    PIDS+=($!)
    sleep 0.3
    ip netns exec bpfdp-gw sh -c "mount --bind $TMP/tun /dev/net/tun && exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all$caps --ambient-caps=-all$caps $B/amtgw --relay 10.98.1.1 --source 10.98.5.1 --group 232.98.0.1 --tun bpfdp-tun0 $opts --dataplane $mode --dataplane-attach $attach --duration 5 --json" \
        >"$TMP/gw.log" 2>"$TMP/gw.err"
    local rc=$?
    grep '"kind":"dataplane"' "$TMP/gw.log" >"$TMP/dp.json"
    grep '"kind":"summary"' "$TMP/gw.log" >"$TMP/sum.json"
    local running reason kp att
    running=$(jget "$TMP/dp.json" "d.get('running')"); reason=$(jget "$TMP/dp.json" "d.get('reason')")
    att=$(jget "$TMP/sum.json" "d.get('kernel_attach')")
    [ "$running" = kernel ] && reason="$reason, attach $att"
    kp=$(jget "$TMP/sum.json" "d.get('kernel_packets')")
    grep '"kind":"synthetic_summary"' "$TMP/relay.log" | head -1 >"$TMP/syn.json"
    local sent; sent=$(jget "$TMP/syn.json" "d.get('sent', 0)")
    if [ "$want" = kernel ]; then
        check "capabilities: $what: exit $rc, $running ($reason), kernel delivered $kp of the $sent sent" \
            test "$rc" = 0 -a "$running" = kernel -a "$kp" = "$sent" -a "${sent:-0}" -ge 250
    else
        check "capabilities: $what: exit $rc, $running ($reason)" \
            test "$rc" = 0 -a "$running" = userspace -a -n "$(grep -i 'not permitted' "$TMP/dp.json")"
    fi
    [ "$rc" = 0 ] || sed 's/^/    amtgw: /' "$TMP/gw.err"
    local left; left=$(leftovers)
    [ "$running" = kernel ] && check "capabilities: $what: nothing left${left:+: $left}" test -z "$left"
    cleanup
}
if [ "${ONLY:-all}" != kill9 ]; then
for pair in $ATTACH; do
    REQ=${pair%%:*}
    cap_case "B with CAP_BPF,CAP_NET_ADMIN, attach $REQ" B kernel ",+bpf,+net_admin" kernel "$REQ"
    cap_case "D with CAP_BPF,CAP_NET_ADMIN,CAP_SYS_ADMIN, attach $REQ" D kernel ",+bpf,+net_admin,+sys_admin" kernel "$REQ"
done
cap_case "B without CAP_BPF, auto" B auto ",+net_admin" userspace
# CAP_SYS_ADMIN implies BPF permission (the kernel's bpf_capable()).
cap_case "D with CAP_NET_ADMIN,CAP_SYS_ADMIN (no CAP_BPF)" D auto ",+net_admin,+sys_admin" kernel

# ---- auto without a TUN ---------------------------------------------------
setup 0
ip netns exec bpfdp-gw "$B/amtgw" --relay 10.98.1.1:2999 --source 10.98.5.1 --group 232.98.0.1 \
    --dataplane auto --give-up 1 --json >"$TMP/gw.log" 2>/dev/null
grep '"kind":"dataplane"' "$TMP/gw.log" >"$TMP/dp.json"
check "auto without --tun: userspace, because $(jget "$TMP/dp.json" "d.get('reason')")" \
    test "$(jget "$TMP/dp.json" "d.get('running')")" = userspace -a -n "$(grep 'no TUN' "$TMP/dp.json")"
ip netns exec bpfdp-gw "$B/amtgw" --relay 10.98.1.1:2999 --source 10.98.5.1 --group 232.98.0.1 \
    --dataplane kernel --give-up 1 --json >/dev/null 2>"$TMP/gw.err"
rc=$?
check "kernel without --tun: refused with exit 1 ($(head -c 100 "$TMP/gw.err"))" test $rc = 1
cleanup
fi

echo "$passed passed, $failed failed"
exit $fail
