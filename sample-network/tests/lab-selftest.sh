#!/usr/bin/env bash
# Self-test of the frr-ingest lab with FRR alone (no frr-ingestd needed), as root:
#   1. FRR configs parse (vtysh -C) and the integrated frr.conf files are current;
#   2. lab up; PIM neighbours ingest <-> rtr;
#   3. mcrx in rcv joins (198.51.100.4, 232.1.1.1): the ingest's
#      'show ip pim join json' shows it as JOIN on ing-dn within 1 s;
#   4. mcrx stops on SIGTERM and still prints its JSON summary; the join leaves
#      JOIN within 5 s;
#   5. 'lab up' while up fails; lab down leaves nothing behind (no namespaces,
#      no processes naming the run dir, no run dir, no FRR tmp dirs of the lab's
#      daemons, no new links in the root namespace);
#   6. up/down a second time, same checks.
# Exits 0 only if everything passed. Uses its own prefix (LAB_PREFIX, default
# fst) so it does not touch a lab you have up. MCRX=path overrides the binary.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB="$REPO/sample-network/lab"
export LAB_PREFIX=${LAB_PREFIX:-fst}
export LAB_RUN=${LAB_RUN:-/run/frr-ingest-lab/$LAB_PREFIX}
SOURCE=198.51.100.4
GROUP=232.1.1.1
FAILURES=0

say() { printf '%s %s\n' "$(date +%T.%3N)" "$*"; }
fail() {
	say "FAIL: $*"
	FAILURES=$((FAILURES + 1))
}
fatal() {
	say "FATAL: $*"
	exit 1
}
pass() { say "ok: $*"; }

[[ $(id -u) -eq 0 ]] || fatal "must run as root (network namespaces, FRR); try: sudo $0"
ip netns list >/dev/null 2>&1 || fatal "'ip netns' is not available (iproute2 missing or no netns support)"
for d in zebra staticd pimd; do
	[[ -x /usr/lib/frr/$d ]] || fatal "/usr/lib/frr/$d missing: run scripts/install-deps"
done
command -v vtysh >/dev/null || fatal "vtysh missing: run scripts/install-deps"
command -v python3 >/dev/null || fatal "python3 missing (used to read FRR's JSON)"

find_mcrx() {
	local target=${CARGO_TARGET_DIR:-$REPO/target} p
	[[ -n ${MCRX:-} ]] && {
		echo "$MCRX"
		return
	}
	for p in "$target/debug/mcrx" "$target/release/mcrx"; do
		[[ -x $p ]] && {
			echo "$p"
			return
		}
	done
	say "building mcrx" >&2
	(cd "$REPO" && cargo build -q -p sample-network --bin mcrx >&2)
	echo "$target/debug/mcrx"
}
MCRX=$(find_mcrx)
[[ -x $MCRX ]] || fatal "mcrx not found at $MCRX"

lab() { "$LAB" "$@"; }

# join_state NODE: "JOIN", "NOINFO" or "none" for (SOURCE, GROUP) on ing-dn.
join_state() {
	lab vtysh ingest show ip pim join json 2>/dev/null | python3 -c '
import json, sys
try:
    data = json.load(sys.stdin)
except ValueError:
    print("none"); sys.exit()
entry = data.get("ing-dn", {}).get(sys.argv[2], {}).get(sys.argv[1])
print(entry.get("channelJoinName", "none") if isinstance(entry, dict) else "none")
' "$SOURCE" "$GROUP"
}

# has_neighbour NODE IFACE ADDR
has_neighbour() {
	lab vtysh "$1" show ip pim neighbor json 2>/dev/null | python3 -c '
import json, sys
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
sys.exit(0 if sys.argv[2] in data.get(sys.argv[1], {}) else 1)
' "$2" "$3"
}

now_ms() { date +%s%3N; }

root_links() { ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort; }

check_config() {
	local f
	for f in "$REPO"/frr-config/{ingest,downstream}/*.conf; do
		if vtysh -C -f "$f" >/dev/null 2>&1; then pass "config parses: ${f#"$REPO"/}"; else fail "vtysh -C rejects ${f#"$REPO"/}"; fi
	done
	if "$REPO/frr-config/mkfrrconf" --check >/dev/null; then pass "frr.conf files match the per-daemon files"; else fail "frr.conf stale: run frr-config/mkfrrconf"; fi
}

# One up / test / down round. $1: round number; $2: "full" runs the join tests.
round() {
	local n=$1 mode=$2 t0 t state mcrx_pid tmpdirs links_before leftovers
	say "== round $n (prefix $LAB_PREFIX, run dir $LAB_RUN)"
	links_before=$(root_links)
	lab up >/dev/null || {
		fail "lab up"
		return
	}
	pass "lab up"
	if lab up >/dev/null 2>&1; then fail "second 'lab up' succeeded"; else pass "'lab up' while up fails"; fi

	t0=$(now_ms)
	while ! { has_neighbour ingest ing-dn 10.77.1.2 && has_neighbour rtr rtr-up 10.77.1.1; }; do
		(($(now_ms) - t0 > 40000)) && break
		sleep 0.2
	done
	if has_neighbour ingest ing-dn 10.77.1.2 && has_neighbour rtr rtr-up 10.77.1.1; then
		pass "PIM neighbours ingest<->rtr after $(($(now_ms) - t0)) ms"
	else
		fail "no PIM neighbours ingest<->rtr after 40 s"
	fi

	if [[ $mode == full ]]; then
		"$LAB" exec rcv "$MCRX" --iface rcv0 --channel "$SOURCE,$GROUP" --duration 60 \
			>"$LAB_RUN/rcv/selftest-mcrx.json" 2>"$LAB_RUN/rcv/selftest-mcrx.err" &
		mcrx_pid=$!
		t0=$(now_ms)
		state=none
		while (($(now_ms) - t0 < 3000)); do
			state=$(join_state)
			[[ $state == JOIN ]] && break
			sleep 0.02
		done
		t=$(($(now_ms) - t0))
		if [[ $state == JOIN ]] && ((t <= 1000)); then
			pass "join seen at ingest after $t ms"
		else
			fail "join at ingest: state $state after $t ms (want JOIN within 1000 ms)"
		fi

		kill -TERM "$mcrx_pid"
		wait "$mcrx_pid" || fail "mcrx exited with status $? on SIGTERM"
		if grep -q '"stop_reason":"SIGTERM"' "$LAB_RUN/rcv/selftest-mcrx.json"; then
			pass "mcrx stopped on SIGTERM and printed its summary"
		else
			fail "mcrx summary after SIGTERM missing: $(cat "$LAB_RUN/rcv/selftest-mcrx.json" "$LAB_RUN/rcv/selftest-mcrx.err")"
		fi
		t0=$(now_ms)
		while (($(now_ms) - t0 < 8000)); do
			state=$(join_state)
			[[ $state != JOIN ]] && break
			sleep 0.05
		done
		t=$(($(now_ms) - t0))
		if [[ $state != JOIN ]] && ((t <= 5000)); then
			pass "leave seen at ingest after $t ms (state $state)"
		else
			fail "leave at ingest: state $state after $t ms (want not JOIN within 5000 ms)"
		fi
	fi

	tmpdirs=$(cat "$LAB_RUN"/*/*.tmpdir 2>/dev/null | tr '\n' ' ')
	[[ -n $tmpdirs ]] || fail "no FRR tmp dirs recorded in $LAB_RUN"
	lab down >/dev/null || fail "lab down"
	if leftovers=$(LAB_CHECK_FRR_TMP="$tmpdirs" lab leftovers); then
		pass "lab down left nothing behind"
	else
		fail "leftovers after down: $leftovers"
	fi
	# Independent of 'lab leftovers': our own look at the system.
	if ip netns list | grep -q "^${LAB_PREFIX}-"; then fail "namespaces ${LAB_PREFIX}-* remain"; fi
	if pgrep -f "$LAB_RUN/" >/dev/null; then fail "processes naming $LAB_RUN remain: $(pgrep -af "$LAB_RUN/")"; fi
	[[ -e $LAB_RUN ]] && fail "run dir $LAB_RUN remains"
	for d in $tmpdirs; do [[ -e $d ]] && fail "FRR tmp dir $d remains"; done
	[[ $(root_links) == "$links_before" ]] || fail "root namespace links changed: $(diff <(echo "$links_before") <(root_links) | tr '\n' ' ')"
}

cleanup() { "$LAB" down >/dev/null 2>&1 || true; }

if ip netns list | grep -q "^${LAB_PREFIX}-" || [[ -e $LAB_RUN ]]; then
	fatal "a lab with prefix $LAB_PREFIX is up; run: LAB_PREFIX=$LAB_PREFIX $LAB down"
fi
trap cleanup EXIT

check_config
round 1 full
round 2 full

if ((FAILURES > 0)); then
	say "lab self-test: $FAILURES check(s) FAILED"
	exit 1
fi
say "lab self-test: all checks passed"
