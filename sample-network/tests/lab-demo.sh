#!/usr/bin/env bash
# The README's first command, checked: 'sample-network/lab demo' (as root)
# with its own prefix, then its closing JSON line ("event":"demo") read:
#   - IPv4: 198.51.100.4, .5 and .7 (dead first relay) reach the receiver
#     through AMT with at least MIN_PACKETS packets each; .6 (AMTRELAY type
#     0, "do not ingest") gets none;
#   - with LAB_FRR=10 the same for 2001:db8:5100::4-7 on ff3e::8000:1, and
#     with the default FRR (8.4.4, no pim6d) no IPv6 channel at all.
# The lab goes down afterwards, whatever happened; its output is kept in
# $LAB_DEMO_LOG (default a temporary file, printed on failure).
# Usage: sudo [LAB_FRR=10] sample-network/tests/lab-demo.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lab=$here/../lab
export LAB_PREFIX=${LAB_PREFIX:-fdm}
frr=${LAB_FRR:-8}
min=${MIN_PACKETS:-1000}
log=${LAB_DEMO_LOG:-$(mktemp /tmp/frr-ingest-demo.XXXXXX)}

fail() {
	echo "lab-demo (FRR $frr): FAIL: $*" >&2
	echo "--- lab demo output ($log):" >&2
	cat "$log" >&2
	exit 1
}

rc=0
"$lab" demo >"$log" 2>&1 || rc=$?
"$lab" down >>"$log" 2>&1 || echo "lab-demo: 'lab down' failed (see $log)" >&2
((rc == 0)) || fail "'lab demo' exited $rc"

summary=$(grep '"event":"demo"' "$log" | tail -n 1)
[[ -n $summary ]] || fail "no closing JSON summary (\"event\":\"demo\")"
echo "lab-demo (FRR $frr): $summary"

# packets FAMILY "S,G": the count, or -1 when the channel is missing.
packets() { jq -r --arg f "$1" --arg c "$2" '.[$f][$c] // -1' <<<"$summary"; }

check_family() {
	local family=$1 prefix=$2 group=$3 host n
	for host in 4 5 7; do
		n=$(packets "$family" "$prefix$host,$group")
		((n >= min)) || fail "$family $prefix$host,$group: $n packets (want >= $min)"
	done
	n=$(packets "$family" "${prefix}6,$group")
	((n == 0)) || fail "$family ${prefix}6,$group (AMTRELAY type 0): $n packets (want 0)"
}

check_family ipv4 198.51.100. 232.1.1.1
if [[ $frr == 10 ]]; then
	check_family ipv6 2001:db8:5100:: ff3e::8000:1
else
	[[ $(jq -r '.ipv6 | length' <<<"$summary") == 0 ]] ||
		fail "IPv6 channels in a demo on FRR $frr (no pim6d)"
fi
echo "lab-demo (FRR $frr): PASS"
