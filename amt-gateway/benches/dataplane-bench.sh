#!/bin/bash
# Whole-path CPU of the kernel vs the userspace data plane (not a test: it
# prints figures). Needs root, jq, python3, ethtool, and release builds of
# amtgw (with the BPF object: clang + libbpf-dev at build time), amt-relay
# and mcrx:
#
#   CARGO_TARGET_DIR=/tmp/target-bench cargo build --release \
#       -p amt-gateway --bin amtgw -p sample-network --bin amt-relay --bin mcrx
#   BIN_DIR=/tmp/target-bench/release amt-gateway/benches/dataplane-bench.sh
#
# Namespaces (own prefix bpfb-, fresh for every run, removed on exit):
#   bpfb-rl   amt-relay --synthetic S,G (the injector) on bpfb-r0 10.97.1.1
#   bpfb-gw   amtgw on bpfb-g0 10.97.1.2 (uplink; threaded NAPI, so its
#             receive processing runs in a napi/ kernel thread of its own
#             instead of the injector's context)
#   bpfb-frr  the TUN bpfb-tun0 (amtgw --tun-netns: variant D, as with FRR)
#             and mcrx joined to (S,G) on it (the receiver).
# VARIANT=B puts the TUN and mcrx in bpfb-gw instead (amtgw --tun without
# --tun-netns).
# The path ends at the receiver's socket queue. This machine's kernel has no
# multicast routing (CONFIG_IP_MROUTE is not set), so ipmr forwarding and a
# downstream interface, which a router adds to both data planes alike, are
# not part of it.
#
# Per run (mode x payload x rate): sent (the injector's summary), delivered
# (packets mcrx received), loss, and CPU from per-task /proc/PID/task/TID/schedstat
# of every task on the machine over the sending window (benches/schedstat.py):
# whole path = amtgw (all threads) + ksoftirqd/* + napi/* threads, in % of
# one core and per 1000 pkt/s delivered; the injector, the receiver and the
# rest of the machine are reported separately, not included.
#
# Environment: BIN_DIR (default <workspace>/target/release), MODES (default
# "kernel userspace"), RATES (default "20000 60000 100000 200000"), SIZES
# (default "100 1316"), DURATION (s of sending, default 5), VARIANT (D or B),
# NAPI_PRIO (SCHED_FIFO priority of the uplink's NAPI thread, default 0:
# SCHED_OTHER; 10 makes ring drops rarer on a busy machine but costs more per packet).
# Output: one table line and one JSON line per run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/../../target/release}
MODES=${MODES:-kernel userspace}
RATES=${RATES:-20000 60000 100000 200000}
SIZES=${SIZES:-100 1316}
DURATION=${DURATION:-5}
VARIANT=${VARIANT:-D}
NAPI_PRIO=${NAPI_PRIO:-0}
RELAY_ADDR=10.97.1.1
SOURCE=10.97.5.1
GROUP=232.97.0.1

die() { echo "dataplane-bench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for tool in jq python3 ethtool; do command -v $tool >/dev/null || die "needs $tool"; done
for bin in amtgw amt-relay mcrx; do
    [ -x "$BIN_DIR/$bin" ] || die "missing $BIN_DIR/$bin (build first, see the header)"
done
case $VARIANT in D) TUN_NS=bpfb-frr ;; B) TUN_NS=bpfb-gw ;; *) die "VARIANT is D or B" ;; esac
TMP=$(mktemp -d /tmp/dataplane-bench.XXXXXX)
PIDS=()

stop_all() {
    local p i
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for i in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
    done
    PIDS=()
}
teardown() {
    stop_all
    local ns
    for ns in bpfb-gw bpfb-rl bpfb-frr; do ip netns del $ns 2>/dev/null; done
}
trap 'teardown; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

setup() {
    teardown
    local ns
    for ns in bpfb-gw bpfb-rl bpfb-frr; do
        ip netns add $ns || die "cannot create $ns"
        ip -n $ns link set lo up
        ip netns exec $ns sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
            net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
    done
    ip link add bpfb-g0 netns bpfb-gw type veth peer name bpfb-r0 netns bpfb-rl || die "veth"
    ip -n bpfb-gw addr add 10.97.1.2/24 dev bpfb-g0; ip -n bpfb-rl addr add $RELAY_ADDR/24 dev bpfb-r0
    ip -n bpfb-gw link set bpfb-g0 up; ip -n bpfb-rl link set bpfb-r0 up
    # Threaded NAPI on the uplink: its receive work gets a task of its own.
    ip netns exec bpfb-gw ethtool -K bpfb-g0 gro on >/dev/null || die "ethtool -K bpfb-g0 gro on"
    ip netns exec bpfb-gw sh -c 'echo 1 > /sys/class/net/bpfb-g0/threaded' || die "threaded NAPI"
    # veth only hands packets to the receiver's NAPI when the sender has no
    # TSO (veth_skb_is_eligible_for_gro); otherwise they would be processed
    # in the injector's context.
    ip netns exec bpfb-rl ethtool -K bpfb-r0 tso off >/dev/null || die "ethtool -K bpfb-r0 tso off"
    # The veth's ring holds 256 packets: a NAPI thread that waits behind
    # other load for a few ms drops packets there, whichever data plane runs.
    # Real-time priority (NAPI_PRIO) keeps it on time.
    local napi
    if [ "$NAPI_PRIO" != 0 ]; then
        for napi in $(ps -eo pid=,comm= | awk '$2 ~ /^napi\/bpfb-g0/ { print $1 }'); do
            chrt -f -p "$NAPI_PRIO" "$napi" || die "chrt napi thread"
        done
    fi
}

wait_for() { # file, pattern, timeout-seconds: until the file holds the pattern
    timeout "$3" bash -c 'until grep -q "$1" "$0" 2>/dev/null; do sleep 0.05; done' "$1" "$2"
}
ring_drops() { # packets the uplink veth dropped (its NAPI ring was full)
    local a b
    a=$(ip netns exec bpfb-rl cat /sys/class/net/bpfb-r0/statistics/tx_dropped)
    b=$(ip netns exec bpfb-gw cat /sys/class/net/bpfb-g0/statistics/rx_dropped)
    echo $(( a + b ))
}
backlog_drops() { # per-CPU input backlog drops (netif_rx), whole machine
    local n=0 processed dropped rest
    while read -r processed dropped rest; do n=$(( n + 0x$dropped )); done </proc/net/softnet_stat
    echo $n
}
udp_counter() { # namespace, name -> value of that Udp counter
    ip netns exec "$1" cat /proc/net/snmp | awk -v k="$2" '
        $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) n[i] = $i; h = 1; next }
        $1 == "Udp:" && h { for (i = 2; i <= NF; i++) if (n[i] == k) print $i }'
}

printf '%-9s %-7s %-5s | %8s %8s | %8s %8s %6s | %7s %7s %7s %7s | %9s | %7s\n' \
    mode rate size sent sent/s delivered loss loss% amtgw ksirq napi path% "path%/kpps" inject%
for size in $SIZES; do
for rate in $RATES; do
for mode in $MODES; do
    setup
    tunopts="--tun bpfb-tun0"
    [ "$VARIANT" = D ] && tunopts="$tunopts --tun-netns /run/netns/bpfb-frr"
    ip netns exec bpfb-rl "$BIN_DIR/amt-relay" --listen $RELAY_ADDR:2268 --lan-interface bpfb-r0 \
        --status-interval 0 --synthetic $SOURCE,$GROUP --synthetic-rate "$rate" --synthetic-port 5001 \
        --synthetic-size "$size" --synthetic-duration "$DURATION" --synthetic-delay 3 \
        >"$TMP/relay.log" 2>"$TMP/relay.err" &
    relay_pid=$!; PIDS+=($relay_pid)
    sleep 0.2
    ip netns exec bpfb-gw "$BIN_DIR/amtgw" --relay $RELAY_ADDR --source $SOURCE --group $GROUP \
        $tunopts --dataplane "$mode" --json >"$TMP/gw.log" 2>"$TMP/gw.err" &
    gw_pid=$!; PIDS+=($gw_pid)
    for i in $(seq 100); do ip -n $TUN_NS link show bpfb-tun0 >/dev/null 2>&1 && break; sleep 0.05; done
    ip -n $TUN_NS addr add 10.97.9.1/32 peer 10.97.9.2 dev bpfb-tun0
    ip netns exec $TUN_NS sysctl -qw net.ipv4.conf.bpfb-tun0.rp_filter=0
    ip netns exec $TUN_NS "$BIN_DIR/mcrx" --iface bpfb-tun0 --channel $SOURCE,$GROUP --port 5001 \
        --recv-buffer $(( 64 << 20 )) \
        >"$TMP/rx.log" 2>"$TMP/rx.err" &
    rx_pid=$!; PIDS+=($rx_pid)
    # Baselines and the first CPU snapshot once the gateway has subscribed,
    # before the injector starts (--synthetic-delay): the CPU window must
    # cover the whole sending time even when the machine is slow.
    if ! wait_for "$TMP/relay.log" '"kind":"synthetic_armed"' 20; then
        echo "$mode $rate $size: the gateway never subscribed"; cat "$TMP/gw.err" "$TMP/relay.err"; continue
    fi
    gwrb0=$(udp_counter bpfb-gw RcvbufErrors); rxrb0=$(udp_counter $TUN_NS RcvbufErrors)
    ring0=$(ring_drops); backlog0=$(backlog_drops)
    python3 "$HERE/schedstat.py" snapshot "$TMP/s0.json"
    t0=$(date +%s.%N)
    late=false
    grep -q '"kind":"synthetic_started"' "$TMP/relay.log" && late=true
    dp=$(grep '"kind":"dataplane"' "$TMP/gw.log" | head -1); [ -n "$dp" ] || dp='{}'
    wait_for "$TMP/relay.log" '"kind":"synthetic_summary"' $(( DURATION + 30 )) || { echo "no summary"; continue; }
    sleep 0.3 # let the path drain
    python3 "$HERE/schedstat.py" snapshot "$TMP/s1.json"
    t1=$(date +%s.%N)
    gwrb=$(( $(udp_counter bpfb-gw RcvbufErrors) - gwrb0 )); rxrb=$(( $(udp_counter $TUN_NS RcvbufErrors) - rxrb0 ))
    ring=$(( $(ring_drops) - ring0 )); backlog=$(( $(backlog_drops) - backlog0 ))
    syn=$(grep '"kind":"synthetic_summary"' "$TMP/relay.log" | head -1)
    window=$(python3 -c "print($t1 - $t0)")
    send_s=$(jq -r .elapsed_s <<<"$syn")
    sent=$(jq -r .sent <<<"$syn")
    # mcrx counts until it stops; nothing else is sent to it after the run.
    stop_all
    rx=$(grep '"event":"summary"' "$TMP/rx.log" | tail -1); [ -n "$rx" ] || rx='{}'
    delivered=$(jq -r '.packets // 0' <<<"$rx")
    kpps=$(python3 -c "print($delivered / $send_s / 1000)")
    cpu=$(python3 "$HERE/schedstat.py" diff "$TMP/s0.json" "$TMP/s1.json" "$send_s" "$kpps" \
        --amtgw $gw_pid --injector $relay_pid --exclude $rx_pid)
    rxcpu=$(python3 "$HERE/schedstat.py" diff "$TMP/s0.json" "$TMP/s1.json" "$send_s" "$kpps" \
        --amtgw $rx_pid | jq .amtgw_pct)
    gw=$(grep '"kind":"summary"' "$TMP/gw.log" | tail -1); [ -n "$gw" ] || gw='{}'
    jq -n -c --argjson s "$syn" --argjson c "$cpu" --argjson g "$gw" --argjson dp "$dp" \
        --arg mode "$mode" --arg variant "$VARIANT" --argjson delivered "$delivered" \
        --argjson gwrb "$gwrb" --argjson rxrb "$rxrb" --argjson rxcpu "$rxcpu" --argjson ring "$ring" --argjson backlog "$backlog" --argjson late "$late" \
        --argjson window "$window" '
        {kind: "dataplane_bench", mode: $mode, variant: $variant, running: $dp.running,
         rate_pps: $s.rate_pps, payload_bytes: $s.payload_bytes, packet_bytes: $s.packet_bytes,
         send_s: $s.elapsed_s, sent: $s.sent, sent_pps: $s.achieved_pps,
         delivered: $delivered, uplink_ring_drops: $ring, backlog_drops: $backlog, gw_udp_rcvbuf_errors: $gwrb, receiver_udp_rcvbuf_errors: $rxrb,
         loss: ($s.sent - $delivered),
         loss_pct: (if $s.sent > 0 then 100 * ($s.sent - $delivered) / $s.sent else 0 end),
         cpu_window_s: $window, cpu_window_started_late: $late, cpu: $c, receiver_cpu_pct: $rxcpu,
         injector_would_block_rounds: $s.would_block_rounds,
         amtgw_total_packets: $g.total_packets, amtgw_kernel_packets: $g.kernel_packets,
         amtgw_dropped: $g.dropped}' >"$TMP/run.json"
    jq -r '[.mode, .rate_pps, .payload_bytes, .sent, .sent_pps, .delivered, .loss,
            (.loss_pct * 1000 | round / 1000), .cpu.amtgw_pct, .cpu.ksoftirqd_pct, .cpu.napi_pct,
            .cpu.whole_path_pct, .cpu.whole_path_pct_per_kpps, .cpu.injector_pct] | @tsv' "$TMP/run.json" |
        awk -F'\t' '{ printf "%-9s %-7s %-5s | %8s %8s | %8s %8s %6s | %7s %7s %7s %7s | %9s | %7s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14 }'
    [ "$late" = true ] && echo "  ^ the CPU window started after the sending: CPU figures too low, repeat"
    cat "$TMP/run.json"
done
done
done
