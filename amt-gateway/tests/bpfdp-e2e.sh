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
#   * after amtgw exits: no amt_* BPF program or map, no veth, no TCX link.
# Also with Relay Discovery (the relay address reaches the kernel later).
# Then: the capabilities (a non-root user with only CAP_BPF + CAP_NET_ADMIN,
# plus CAP_SYS_ADMIN for variant D, runs the kernel data plane; without
# CAP_BPF, auto falls back to userspace and says why), and auto without a
# TUN falls back with its reason.
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
wait_for() { # file, pattern, timeout-seconds
    local i
    for i in $(seq $(( $3 * 20 ))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
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

leftovers() { # -> prints what the kernel data plane left behind
    bpftool prog show 2>/dev/null | grep -E 'name (amt_decap|amt_to_tun) '
    bpftool map show 2>/dev/null | grep -E 'name amt_(tunnels|channels|tunnel_stat)'
    ip -n bpfdp-gw -o link show 2>/dev/null | grep -E 'bpfdp-tun0-dp'
    ip -n bpfdp-frr -o link show 2>/dev/null | grep -E 'bpfdp-tun0-df'
    bpftool link show 2>/dev/null | grep -E -A1 'tcx' | grep -E 'ifindex' | grep -q . &&
        ip netns exec bpfdp-gw bpftool net show dev bpfdp-g0 2>/dev/null | grep -E 'amt_'
}

# run_case MODE VARIANT OUTER INNER [AMTGW-OPTION]
run_case() {
    local mode=$1 variant=$2 outer=$3 inner=$4 extra=${5:-}
    local name="$mode/$variant outer v$outer inner v$inner${extra:+ $extra}"
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
        --tun bpfdp-tun0 $opts $extra --dataplane "$mode" --json \
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
    fi
    sleep 0.2
    local left; left=$(leftovers)
    check "$name: nothing left behind${left:+: $left}" test -z "$left"
    cleanup
}

if [ "${ONLY:-all}" = all ]; then
for variant in D B; do
    for mode in kernel userspace; do
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

# ---- capabilities ---------------------------------------------------------
# A non-root user (nobody) with only the given capabilities. /dev/net/tun is
# root-only here; inside amtgw's private mount namespace (ip netns exec) a
# world-accessible node is bound over it, so only capabilities matter.
mknod "$TMP/tun" c 10 200 && chmod 666 "$TMP/tun" || die "mknod"
chmod 755 "$TMP"
cap_case() { # description, variant, mode, caps, expected-running
    local what=$1 variant=$2 mode=$3 caps=$4 want=$5 opts="" tunns=bpfdp-gw
    if [ "$variant" = D ]; then setup 1; opts="--tun-netns /run/netns/bpfdp-frr"; tunns=bpfdp-frr; else setup 0; fi
    ip netns exec bpfdp-rl "$B/amt-relay" --listen 10.98.1.1:2268 --lan-interface bpfdp-r0 \
        --status-interval 0 --synthetic 10.98.5.1,232.98.0.1 --synthetic-rate 1000 --synthetic-size 100 \
        --synthetic-port 5001 --synthetic-count 500 --synthetic-delay 1 >"$TMP/relay.log" 2>&1 &
    PIDS+=($!)
    sleep 0.3
    ip netns exec bpfdp-gw sh -c "mount --bind $TMP/tun /dev/net/tun && exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all$caps --ambient-caps=-all$caps $B/amtgw --relay 10.98.1.1 --source 10.98.5.1 --group 232.98.0.1 --tun bpfdp-tun0 $opts --dataplane $mode --duration 5 --json" \
        >"$TMP/gw.log" 2>"$TMP/gw.err"
    local rc=$?
    grep '"kind":"dataplane"' "$TMP/gw.log" >"$TMP/dp.json"
    grep '"kind":"summary"' "$TMP/gw.log" >"$TMP/sum.json"
    local running reason kp
    running=$(jget "$TMP/dp.json" "d.get('running')"); reason=$(jget "$TMP/dp.json" "d.get('reason')")
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
    cleanup
}
cap_case "B with CAP_BPF,CAP_NET_ADMIN" B kernel ",+bpf,+net_admin" kernel
cap_case "D with CAP_BPF,CAP_NET_ADMIN,CAP_SYS_ADMIN" D kernel ",+bpf,+net_admin,+sys_admin" kernel
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

echo "$passed passed, $failed failed"
exit $fail
