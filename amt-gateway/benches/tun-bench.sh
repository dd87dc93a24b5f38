#!/bin/bash
# Benchmark of the gateway's data path into a TUN (not a test: it prints
# figures). Needs root, jq, and release builds of amtgw and amt-relay:
#
#   CARGO_TARGET_DIR=/tmp/target-bench cargo build --release \
#       -p amt-gateway --bin amtgw -p sample-network --bin amt-relay
#   BIN_DIR=/tmp/target-bench/release amt-gateway/benches/tun-bench.sh
#
# For every rate x payload size, two fresh namespaces joined by a veth:
#   ab-rl  (ab-rl0 10.99.77.1): amt-relay --synthetic S,G generates AMT
#          Multicast Data (inner IPv4/UDP, probe payload with sequence
#          numbers) at the fixed rate once the gateway has subscribed;
#   ab-gw  (ab-gw0 10.99.77.2): amtgw --tun ab-tun0 (TUN up, 10.99.79.1/24).
# Measured over the sending window:
#   sent       packets the injector sent (its JSON summary) and the rate it achieved;
#   delivered  rx_packets of ab-tun0 (every packet amtgw writes into the
#              TUN fd counts as received on that interface; the TUN is fresh);
#   loss       sent - delivered;
#   rcvbuf     Udp RcvbufErrors / InErrors in the gateway namespace;
#   rss        amtgw's peak resident memory (VmHWM), in the JSON only;
#   cpu        amtgw's utime+stime (/proc/PID/stat, all threads) divided by
#              the sending time -> % of one core, and that per 1000 pkt/s
#              delivered. The injector's CPU (which also carries the
#              kernel's delivery of each datagram into amtgw's socket: veth
#              receive runs in the sender's context) and the machine's busy
#              share over the window (/proc/stat, all cores) are in the JSON:
#              on a shared 2-core machine, loss at 100k pkt/s usually means
#              amtgw or the injector did not get a core for tens of ms.
# amtgw's own JSON summary (packets seen by its sink, sequence gaps, packets
# its tunnel dropped) is printed alongside as a cross-check.
#
# Environment: BIN_DIR (default: <workspace>/target/release), RATES
# (default "20000 60000 100000"), SIZES (UDP payload bytes, default
# "100 1316"), DURATION (seconds of sending per run, default 5), NICE
# (nice level for amtgw and the injector, default 0; e.g. -10 to compete
# with other load on the machine).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=${BIN_DIR:-$HERE/../../target/release}
RATES=${RATES:-20000 60000 100000}
SIZES=${SIZES:-100 1316}
DURATION=${DURATION:-5}
NICE=${NICE:-0}
GW_NS=ab-gw
RL_NS=ab-rl
TUN=ab-tun0
RELAY_ADDR=10.99.77.1
SOURCE=10.99.78.1
GROUP=232.99.0.1

[ "$(id -u)" = 0 ] || { echo "tun-bench: needs root" >&2; exit 1; }
command -v jq >/dev/null || { echo "tun-bench: needs jq" >&2; exit 1; }
for bin in amtgw amt-relay; do
    [ -x "$BIN_DIR/$bin" ] || { echo "tun-bench: missing $BIN_DIR/$bin (build first, see the header)" >&2; exit 1; }
done
CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/tun-bench.XXXXXX)
GW_PID=
RELAY_PID=

stop_pid() { # pid: SIGINT, wait up to 15 s, then SIGKILL
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -INT "$pid" 2>/dev/null
    for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
teardown() {
    stop_pid "$GW_PID"; GW_PID=
    stop_pid "$RELAY_PID"; RELAY_PID=
    ip netns del $GW_NS 2>/dev/null
    ip netns del $RL_NS 2>/dev/null
}
cleanup() { teardown; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

setup() {
    teardown
    ip netns add $GW_NS && ip netns add $RL_NS || exit 1
    ip link add ab-gw0 netns $GW_NS type veth peer name ab-rl0 netns $RL_NS || exit 1
    ip -n $GW_NS link set lo up; ip -n $RL_NS link set lo up
    ip -n $GW_NS addr add 10.99.77.2/24 dev ab-gw0; ip -n $RL_NS addr add $RELAY_ADDR/24 dev ab-rl0
    ip -n $GW_NS link set ab-gw0 up; ip -n $RL_NS link set ab-rl0 up
}

udp_counter() { # name -> value of that Udp counter in the gateway namespace
    ip netns exec $GW_NS cat /proc/net/snmp | awk -v k="$1" '
        $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) n[i] = $i; h = 1; next }
        $1 == "Udp:" && h { for (i = 2; i <= NF; i++) if (n[i] == k) print $i }'
}
cpu_ticks() { # pid -> utime + stime in clock ticks (fields 14, 15; comm has no spaces)
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
machine_ticks() { # -> "busy total" jiffies over all cores
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
tun_stat() { ip netns exec $GW_NS cat "/sys/class/net/$TUN/statistics/$1"; }
wait_for() { # file, pattern, timeout-seconds: until the file holds the pattern
    timeout "$3" bash -c 'until grep -q "$1" "$0" 2>/dev/null; do sleep 0.05; done' "$1" "$2"
}

printf '%-7s %-5s | %9s %9s | %9s %9s | %7s %8s | %6s %6s | %7s %9s | %s\n' \
    rate size sent sent/s delivered deliv/s loss loss% rcvbuf inerr cpu% "cpu%/kpps" "amtgw: pkts lost dropped"
for size in $SIZES; do
for rate in $RATES; do
    setup
    rb0=$(udp_counter RcvbufErrors); ie0=$(udp_counter InErrors)
    ip netns exec $RL_NS nice -n "$NICE" "$BIN_DIR/amt-relay" --listen $RELAY_ADDR:2268 --lan-interface ab-rl0 \
        --status-interval 0 --synthetic $SOURCE,$GROUP --synthetic-rate "$rate" \
        --synthetic-size "$size" --synthetic-duration "$DURATION" --synthetic-delay 1 \
        >"$TMP/relay.log" 2>"$TMP/relay.err" &
    RELAY_PID=$!
    sleep 0.2
    ip netns exec $GW_NS nice -n "$NICE" "$BIN_DIR/amtgw" --relay $RELAY_ADDR --source $SOURCE --group $GROUP \
        --tun $TUN --json >"$TMP/gw.log" 2>"$TMP/gw.err" &
    GW_PID=$!
    if ! wait_for "$TMP/relay.log" '"kind":"synthetic_armed"' 15; then
        echo "rate $rate size $size: the gateway never subscribed (see below)"; cat "$TMP/gw.err" "$TMP/relay.err"
        continue
    fi
    ip -n $GW_NS addr add 10.99.79.1/24 dev $TUN 2>/dev/null
    cpu0=$(cpu_ticks "$GW_PID"); rcpu0=$(cpu_ticks "$RELAY_PID")
    read -r busy0 total0 < <(machine_ticks)
    load=$(cut -d' ' -f1 /proc/loadavg)
    if ! wait_for "$TMP/relay.log" '"kind":"synthetic_summary"' $(( DURATION + 30 )); then
        echo "rate $rate size $size: no synthetic summary"; cat "$TMP/relay.err"
        continue
    fi
    sleep 0.3 # let the gateway drain its socket
    cpu1=$(cpu_ticks "$GW_PID"); rcpu1=$(cpu_ticks "$RELAY_PID")
    read -r busy1 total1 < <(machine_ticks)
    delivered=$(tun_stat rx_packets); tun_dropped=$(tun_stat rx_dropped)
    tun_tx=$(tun_stat tx_packets)
    rb=$(( $(udp_counter RcvbufErrors) - rb0 )); ie=$(( $(udp_counter InErrors) - ie0 ))
    # Peak resident memory of amtgw over its run (kB).
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null)
    stop_pid "$GW_PID"; GW_PID=
    stop_pid "$RELAY_PID"; RELAY_PID=
    syn=$(grep '"kind":"synthetic_summary"' "$TMP/relay.log" | head -1)
    gw=$(grep '"kind":"summary"' "$TMP/gw.log" | tail -1)
    [ -n "$gw" ] || gw='{}'
    jq -n -c --argjson s "$syn" --argjson g "$gw" \
        --argjson delivered "$delivered" --argjson tun_dropped "$tun_dropped" \
        --argjson rb "$rb" --argjson ie "$ie" --argjson ticks "$(( cpu1 - cpu0 ))" \
        --argjson rticks "$(( rcpu1 - rcpu0 ))" --argjson tun_tx "$tun_tx" \
        --argjson mbusy "$(( busy1 - busy0 ))" --argjson mtotal "$(( total1 - total0 ))" \
        --argjson load "$load" --argjson nice "$NICE" --argjson hwm "${hwm:-null}" \
        --argjson hz "$CLK_TCK" '
        ($s.elapsed_s) as $t
        | ($ticks / $hz) as $cpu
        | (if $t > 0 then $delivered / $t else 0 end) as $dpps
        | (if $t > 0 then 100 * $cpu / $t else 0 end) as $pct
        | {kind: "tun_bench", rate_pps: $s.rate_pps, payload_bytes: $s.payload_bytes,
           packet_bytes: $s.packet_bytes, send_s: $t,
           sent: $s.sent, sent_pps: $s.achieved_pps, skipped: $s.skipped,
           send_errors: $s.send_errors, injector_would_block_rounds: $s.would_block_rounds,
           delivered: $delivered, delivered_pps: ($dpps | round),
           loss: ($s.sent - $delivered),
           loss_pct: (if $s.sent > 0 then 100 * ($s.sent - $delivered) / $s.sent else 0 end),
           tun_rx_dropped: $tun_dropped, tun_tx_packets: $tun_tx,
           udp_rcvbuf_errors: $rb, udp_in_errors: $ie,
           gw_cpu_s: $cpu, cpu_pct_of_core: $pct,
           cpu_pct_per_kpps: (if $dpps > 0 then $pct / ($dpps / 1000) else null end),
           injector_cpu_pct_of_core: (if $t > 0 then 100 * $rticks / $hz / $t else 0 end),
           machine_busy_pct: (if $mtotal > 0 then 100 * $mbusy / $mtotal else 0 end),
           loadavg_1m_at_start: $load, nice: $nice, gw_peak_rss_kb: $hwm,
           amtgw_packets: $g.total_packets, amtgw_lost: $g.total_lost,
           amtgw_dropped: $g.dropped}' >"$TMP/run.json"
    jq -r '[.rate_pps, .payload_bytes, .sent, .sent_pps, .delivered, .delivered_pps, .loss,
            (.loss_pct * 1000 | round / 1000), .udp_rcvbuf_errors, .udp_in_errors,
            (.cpu_pct_of_core * 10 | round / 10),
            (if .cpu_pct_per_kpps then (.cpu_pct_per_kpps * 1000 | round / 1000) else "-" end),
            "\(.amtgw_packets) \(.amtgw_lost) \(.amtgw_dropped)"]
           | @tsv' "$TMP/run.json" |
        awk -F'\t' '{ printf "%-7s %-5s | %9s %9s | %9s %9s | %7s %8s | %6s %6s | %7s %9s | %s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13 }'
    cat "$TMP/run.json"
done
done
