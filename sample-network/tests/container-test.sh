#!/usr/bin/env bash
# Container test of the frr-ingest deployment (issue 12): the lab topology
# sample-network/clab/frr-ingest.clab.yml deployed as containers, the way
# containerlab deploys it (deploy/clab-docker), from images built without a
# registry (deploy/build-images): the ingest router is an FRR 10 container with
# the sidecar frr-ingestd as a second container in its network namespace
# (capabilities only, never privileged; pimd's vty through the shared
# /run/frr), linked by veth pairs to the downstream routers, receivers,
# relays, DNS and DORMS containers.
#
# It starts its own containerd and dockerd (Debian's docker.io; installed with
# apt when missing) with private state under /var/tmp, and leaves nothing
# behind: no containers, images, volumes or state, no veths, iptables rules,
# ip_forward or bridge-nf-call changes (dockerd runs without iptables, bridge
# and ip_forward handling; the test still compares before and after and
# restores what changed).
#
# What it shows (with kernel multicast routing, CONFIG_IP_MROUTE):
#   - FRR in the container forms PIM neighbours with rtr/rtr2/rtr3; the
#     sidecar is pimd's PIM neighbour on amt0;
#   - DRIAD and DORMS from the sidecar's container (ingestctl driad/dorms);
#   - the demo receiver (rcv) gets the demo sender's traffic over AMT;
#   - a receiver in rcv2 joins (198.51.100.4, 232.1.1.2) through rtr2: the
#     join reaches the sidecar, the tunnel comes up to the relay, the first
#     packet arrives within 2 s of the join;
#   - stopping the sidecar container withdraws its routes, amt0 and the
#     tunnels (the relay's subscription ends); starting it again restores
#     forwarding to the same receiver without a new join;
#   - the sidecar also works with --cap-drop ALL --cap-add NET_ADMIN and the
#     FRR image's group frrvty (effective capabilities: NET_ADMIN only).
# Without kernel multicast routing the test fails at once; with
# LAB_ALLOW_NO_MROUTE=1 it runs every check that needs no forwarding, with
# the joins coming from a joinfile instead of pimd (frr-ingestd
# --join-source file:), and exits 4 ("partial") when they all pass.
#
# Usage (as root): sample-network/tests/container-test.sh
# Environment:
#   LAB_TEST_PREFIX       prefix of container names and the work directory
#   LAB_ALLOW_NO_MROUTE=1 partial run on a kernel without multicast routing
#   CT_KEEP=1             keep the lab after a failure (for debugging; the
#                         work dir, daemons and containers stay: clean up with
#                         CT_CLEANUP_ONLY=1)
#   CT_CLEANUP_ONLY=1     only tear down what a kept run left
#   CARGO_TARGET_DIR      the release binaries (built when missing)
#   CT_WORK               work directory: containerd/dockerd state, images,
#                         the lab directory (default /var/tmp/frr-ingest-ct-
#                         PREFIX; must allow overlayfs, ~1.5 GB; removed)
# Exit codes: 0 all passed, 1 a check failed, 4 partial run passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${LAB_TEST_PREFIX:-}ct
WORK=${CT_WORK:-/var/tmp/frr-ingest-ct-$PREFIX}
TOPO=$REPO/sample-network/clab/frr-ingest.clab.yml
LAB_DIR=$WORK/lab
export DOCKER_HOST=unix://$WORK/docker.sock
export CLAB_DOCKER_PRIVILEGED=caps
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
export LAB_TOPOLOGY_BIN=$TARGET/release/lab-topology
CLAB=("$REPO/deploy/clab-docker" --topo "$TOPO" --lab-dir "$LAB_DIR" --prefix "$PREFIX")
PARTIAL=0
# LAB_TIME_SCALE (whole number, default 1): waits and latency limits
# stretched on a slow (emulated) host, as in the lab tests.
SCALE=${LAB_TIME_SCALE:-1}
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || { echo "container-test: LAB_TIME_SCALE='$SCALE' is not a whole number >= 1" >&2; exit 2; }
T0=$(date +%s.%N)

log() { printf '[%6.1f s] %s\n' "$(awk -v s="$T0" -v e="$(date +%s.%N)" 'BEGIN{print e-s}')" "$*"; }
elapsed_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}'; }
fail() {
	log "FAIL: $*"
	diagnostics || true
	exit 1
}
pass() { log "ok: $*"; }

# --- Host state: recorded before, compared and restored after -------------------

SYSCTLS=(net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv6/conf/default/forwarding
	net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables net/bridge/bridge-nf-call-arptables)
declare -A SYSCTL_BEFORE=()
IPT_BEFORE=""
IP6T_BEFORE=""
LINKS_BEFORE=""
# What dockerd and containerd make outside their --data-root/--root/--state
# even so (the trust key, plugin and shim socket dirs): removed at the end
# when the test made them. Anything else in this list is a leftover.
DOCKER_SIDE_EFFECTS=(/etc/docker/key.json /run/docker /run/containerd)
DOCKER_PATHS=(/etc/docker /var/lib/docker /var/lib/containerd /run/docker.sock /var/run/docker.sock)
declare -A PATH_EXISTED=()

iptables_state() { { "$1" -S 2>/dev/null; for t in nat mangle raw; do "$1" -t "$t" -S 2>/dev/null; done; } | sort; }
root_links() { ip -o link show | awk -F': ' '{sub("@.*", "", $2); print $2}' | sort; }
# The interface names of the topology's links, and docker's.
lab_link_names() {
	"$LAB_TOPOLOGY_BIN" --file "$TOPO" json | jq -r '.links[] | .a.interface, .b.interface'
	printf '%s\n' docker0 amt0
}

record_host_state() {
	local s p
	for s in "${SYSCTLS[@]}"; do
		[[ -r /proc/sys/$s ]] && SYSCTL_BEFORE[$s]=$(<"/proc/sys/$s")
	done
	IPT_BEFORE=$WORK.iptables-before
	IP6T_BEFORE=$WORK.ip6tables-before
	iptables-save >"$IPT_BEFORE"
	ip6tables-save >"$IP6T_BEFORE"
	iptables_state iptables >"$IPT_BEFORE.rules"
	iptables_state ip6tables >"$IP6T_BEFORE.rules"
	LINKS_BEFORE=$(root_links)
	for p in "${DOCKER_PATHS[@]}" "${DOCKER_SIDE_EFFECTS[@]}"; do
		[[ -e $p || -L $p ]] && PATH_EXISTED[$p]=1
	done
	return 0
}

# remove_docker_side_effects: the paths of DOCKER_SIDE_EFFECTS our daemons
# made, unless another dockerd or containerd runs now (it may use them).
remove_docker_side_effects() {
	local p others
	others=$(pgrep -x dockerd; pgrep -x containerd) || true
	if [[ -n $others ]]; then
		log "another dockerd/containerd runs (pids $(echo $others)): leaving ${DOCKER_SIDE_EFFECTS[*]} alone"
		return 0
	fi
	for p in "${DOCKER_SIDE_EFFECTS[@]}"; do
		if [[ -z ${PATH_EXISTED[$p]:-} ]] && [[ -e $p || -L $p ]]; then
			rm -rf --one-file-system -- "$p"
		fi
	done
}

# check_and_restore_host_state: 0 if nothing was left; restores what it can
# and names everything that differed.
check_and_restore_host_state() {
	local s now p bad=0
	for s in "${!SYSCTL_BEFORE[@]}"; do
		now=$(<"/proc/sys/$s")
		if [[ $now != "${SYSCTL_BEFORE[$s]}" ]]; then
			log "leftover: $s is $now, was ${SYSCTL_BEFORE[$s]}: restored"
			echo "${SYSCTL_BEFORE[$s]}" >"/proc/sys/$s"
			bad=1
		fi
	done
	if ! diff -q <(iptables_state iptables) "$IPT_BEFORE.rules" >/dev/null; then
		log "leftover: iptables rules changed: restored"
		diff <(iptables_state iptables) "$IPT_BEFORE.rules" | head -20 || true
		iptables-restore <"$IPT_BEFORE"
		bad=1
	fi
	if ! diff -q <(iptables_state ip6tables) "$IP6T_BEFORE.rules" >/dev/null; then
		log "leftover: ip6tables rules changed: restored"
		ip6tables-restore <"$IP6T_BEFORE"
		bad=1
	fi
	# Other agents' labs come and go in the root namespace and in
	# /run/netns meanwhile: look for what this lab could have left, the
	# links of the topology (veth ends are created in the containers'
	# namespaces, never here) and docker's own interfaces.
	local leftover_links
	leftover_links=$(comm -13 <(echo "$LINKS_BEFORE") <(root_links) | grep -xF -f <(lab_link_names) || true)
	if [[ -n $leftover_links ]]; then
		log "leftover: links in the root namespace: $(echo $leftover_links)"
		bad=1
	fi
	for p in "${DOCKER_PATHS[@]}" "${DOCKER_SIDE_EFFECTS[@]}"; do
		if [[ -z ${PATH_EXISTED[$p]:-} ]] && [[ -e $p || -L $p ]]; then
			# Made by our daemons (the key file, empty state dirs): remove.
			log "leftover: $p (made by the test's dockerd/containerd): removed"
			rm -rf --one-file-system -- "$p"
			bad=1
		fi
	done
	if [[ -e $WORK ]]; then
		log "leftover: $WORK"
		bad=1
	fi
	rm -f -- "$IPT_BEFORE" "$IP6T_BEFORE" "$IPT_BEFORE.rules" "$IP6T_BEFORE.rules"
	return "$bad"
}

# --- Our own containerd and dockerd ----------------------------------------------

CONTAINERD_PID=""
DOCKERD_PID=""

start_daemons() {
	local i
	install -d -m 0711 "$WORK"
	containerd --root "$WORK/containerd" --state "$WORK/containerd-state" \
		--address "$WORK/containerd.sock" >"$WORK/containerd.log" 2>&1 &
	CONTAINERD_PID=$!
	echo "$CONTAINERD_PID" >"$WORK/containerd.pid.test"
	for ((i = 0; i < 100 * SCALE; i++)); do
		[[ -S $WORK/containerd.sock ]] && break
		sleep 0.1
	done
	[[ -S $WORK/containerd.sock ]] || fail "containerd did not start: $(tail -n 5 "$WORK/containerd.log")"
	# No iptables, no bridge, no ip_forward: the lab's containers have
	# --network none or share another's namespace; links are veth pairs.
	dockerd --containerd "$WORK/containerd.sock" --data-root "$WORK/docker" \
		--exec-root "$WORK/docker-exec" --pidfile "$WORK/docker.pid" \
		-H "$DOCKER_HOST" --storage-driver overlay2 --iptables=false --ip6tables=false \
		--ip-forward=false --ip-masq=false --bridge=none --userland-proxy=false \
		>"$WORK/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	echo "$DOCKERD_PID" >"$WORK/dockerd.pid.test"
	for ((i = 0; i < 300 * SCALE; i++)); do
		docker version >/dev/null 2>&1 && return 0
		kill -0 "$DOCKERD_PID" 2>/dev/null || break
		sleep 0.1
	done
	fail "dockerd did not start: $(tail -n 5 "$WORK/dockerd.log")"
}

# stop_pid PID: SIGTERM, wait up to 20 s, then SIGKILL.
stop_pid() {
	local pid=$1 i
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	sleep 0.2
}

teardown() {
	local rc=$? m pid
	trap - EXIT
	set +e
	if [[ -n ${CT_KEEP:-} && $rc -ne 0 && $rc -ne 4 ]]; then
		log "CT_KEEP: lab kept; DOCKER_HOST=$DOCKER_HOST; CT_CLEANUP_ONLY=1 $0 removes it"
		exit "$rc"
	fi
	log "teardown"
	local t
	t=$(date +%s.%N)
	if [[ -z $DOCKERD_PID && -f $WORK/dockerd.pid.test ]]; then DOCKERD_PID=$(<"$WORK/dockerd.pid.test"); fi
	if [[ -z $CONTAINERD_PID && -f $WORK/containerd.pid.test ]]; then CONTAINERD_PID=$(<"$WORK/containerd.pid.test"); fi
	if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
		"${CLAB[@]}" destroy >/dev/null 2>&1
		docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
		docker images -q | xargs -r docker rmi -f >/dev/null 2>&1
		docker volume ls -q | xargs -r docker volume rm -f >/dev/null 2>&1
	fi
	stop_pid "$DOCKERD_PID"
	stop_pid "$CONTAINERD_PID"
	# Shims of our containerd (their command lines name our socket).
	for pid in $(pgrep -f -- "$WORK/containerd.sock" || true); do
		log "leftover: containerd shim $pid: killed"
		stop_pid "$pid"
	done
	# Mounts under the work dir (overlays, shm, netns) if a daemon died hard.
	while read -r m; do
		[[ -n $m ]] && umount -l "$m" 2>/dev/null
	done < <(findmnt -rn -o TARGET | grep -F -- "$WORK" | sort -r)
	rm -rf --one-file-system -- "$WORK"
	[[ -n $IPT_BEFORE ]] && remove_docker_side_effects
	if [[ -n $IPT_BEFORE ]]; then
		if check_and_restore_host_state; then
			log "no leftovers: containers, images, volumes, daemons and their state, lab veths, iptables, ip_forward, bridge-nf-call all as before ($(elapsed_since "$t") s)"
		else
			log "FAIL: the test left something behind (listed above; restored where possible)"
			((rc == 0 || rc == 4)) && rc=1
		fi
	fi
	log "total $(elapsed_since "$T0") s"
	exit "$rc"
}

# --- Helpers -------------------------------------------------------------------

# has GREP_ARGS...: grep -q that reads all its input (grep -q stops at the
# first match, and with pipefail the writer's SIGPIPE would fail the pipe).
has() { grep "$@" >/dev/null; }

c() { echo "$PREFIX-frr-ingest-$1"; }
dx() {
	local node=$1
	shift
	docker exec "$(c "$node")" "$@"
}
vtysh_json() { dx "$1" vtysh -c "$2"; }
ingest_pid() { docker inspect -f '{{.State.Pid}}' "$(c ingest)"; }
in_ingest_ns() { nsenter -t "$(ingest_pid)" -n "$@"; }

# wait_until SECONDS CMD...: poll CMD every 0.1 s.
# wait_until SECONDS CMD...: CMD until it succeeds, at most SECONDS (times
# LAB_TIME_SCALE).
wait_until() {
	local limit=$1 deadline
	shift
	deadline=$(awk -v n="$(date +%s.%N)" -v l="$limit" -v k="$SCALE" 'BEGIN{printf "%.3f", n+l*k}')
	while :; do
		"$@" >/dev/null 2>&1 && return 0
		awk -v n="$(date +%s.%N)" -v d="$deadline" 'BEGIN{exit !(n>d)}' && return 1
		sleep 0.1
	done
}

diagnostics() {
	docker version >/dev/null 2>&1 || return 0
	log "--- diagnostics"
	docker ps -a --format '{{.Names}} {{.State}} {{.Status}}' 2>/dev/null
	echo "--- sidecar log (last 30 lines)"
	docker logs --tail 30 "$(c frr-ingestd)" 2>&1
	echo "--- ingest: amt0, routes"
	in_ingest_ns ip addr show amt0 2>&1
	in_ingest_ns ip route 2>&1
	echo "--- ingest: PIM neighbours"
	vtysh_json ingest 'show ip pim neighbor' 2>&1
	local node
	for node in ingest rtr; do
		echo "--- $node: FRR's daemons, PIM interfaces, interfaces, container log"
		# (the FRR image has no ps: the daemons' command lines from /proc)
		dx "$node" sh -c 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\0" " " <"$p/cmdline" 2>/dev/null)"; done | grep -E "[w]atchfrr|/usr/lib/frr/[a-z]"' 2>&1
		vtysh_json "$node" 'show ip pim interface' 2>&1
		vtysh_json "$node" 'show interface brief' 2>&1
		docker logs --tail 25 "$(c "$node")" 2>&1
	done
	echo "--- relay status"
	dx relay cat /run/amt-relay.status.json 2>&1 | head -c 1500
	echo
}

pim_neighbour() { vtysh_json "$1" 'show ip pim neighbor json' | has -F "\"$2\""; }
sidecar_api() { dx frr-ingestd ingestctl "$@"; }
join_listed() { sidecar_api show joins --json | jq -e --arg s "$1" --arg g "$2" 'any(.[]; .source == $s and .group == $g)'; }
no_joins() { sidecar_api show joins --json | jq -e 'length == 0'; }
tunnel_to() { sidecar_api show tunnels --json | jq -e --arg r "$1" 'any(.[]; (.relay | startswith($r)) and .channels > 0)'; }
tunnel_packets() { sidecar_api show tunnels --json | jq '[.[].packets] | add // 0'; }
relay_subscribed() {
	dx relay cat /run/amt-relay.status.json |
		jq -e --arg s "$1" --arg g "$2" 'any(.gateways[]; (.gateway | startswith("192.0.2.1:")) and any(.channels[]; .source == $s and .group == $g))'
}
relay_not_subscribed() { ! relay_subscribed "$@"; }
source_route() { in_ingest_ns ip -4 route show "$1/32" | has 'dev amt0'; }
no_source_route() { ! in_ingest_ns ip -4 route show "$1/32" | has .; }
amt0_present() { in_ingest_ns ip link show amt0; }
amt0_absent() { ! in_ingest_ns ip link show amt0; }
# (sysfs under nsenter is still the host's: ask netlink in the namespace)
amt0_rx() { in_ingest_ns ip -j -s link show dev amt0 2>/dev/null | jq '.[0].stats64.rx.packets // 0' 2>/dev/null || echo 0; }
amt0_rx_grows() {
	local a b
	a=$(amt0_rx)
	sleep 0.5
	b=$(amt0_rx)
	((b > a))
}

# mcrx_start NODE IFACE CHANNEL: a receiver in NODE's container, in the
# background, JSON progress lines in /run/ct-mcrx.log, pid in /run/ct-mcrx.pid.
mcrx_start() {
	dx "$1" sh -c "echo \$\$ >/run/ct-mcrx.pid; exec mcrx --iface $2 --channel $3 --progress >/run/ct-mcrx.log 2>&1" &
}
# mcsend_start CHANNEL: the test's sender in the source container.
mcsend_start() {
	dx source sh -c "echo \$\$ >/run/ct-mcsend.pid; exec mcsend --iface src0 --channel $1 --rate 200 --size 500 >/run/ct-mcsend.log 2>&1" &
}
mcsend_stop() { dx source sh -c 'kill -INT "$(cat /run/ct-mcsend.pid)"' 2>/dev/null || true; }
mcrx_packets() { dx "$1" sh -c 'grep "\"progress\"" /run/ct-mcrx.log | tail -1' | jq '.packets // 0'; }
mcrx_stop() { dx "$1" sh -c 'kill -INT "$(cat /run/ct-mcrx.pid)"' 2>/dev/null || true; }
mcrx_summary() { dx "$1" sh -c 'grep "\"summary\"" /run/ct-mcrx.log'; }
demo_receiver_packets() { docker logs --tail 1 "$(c rcv)" 2>/dev/null | jq '.packets // 0'; }

# --- The test ------------------------------------------------------------------

main() {
	[[ $(id -u) -eq 0 ]] || {
		echo "container-test: run as root" >&2
		exit 1
	}
	case ${1:-} in
	-h | --help)
		sed -n '2,48p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	"") ;;
	*)
		echo "container-test: unknown argument $1 (see --help)" >&2
		exit 1
		;;
	esac
	if [[ -n ${CT_CLEANUP_ONLY:-} ]]; then
		IPT_BEFORE=""
		trap teardown EXIT
		exit 0
	fi
	if [[ ! -e /proc/net/ip_mr_vif ]]; then
		if [[ -n ${LAB_ALLOW_NO_MROUTE:-} ]]; then
			PARTIAL=1
			log "PARTIAL RUN: this kernel has no multicast routing (CONFIG_IP_MROUTE): nothing can be"
			log "forwarded through FRR here, so joins come from a joinfile and the receiver checks do not run"
		else
			echo "container-test: FAIL: this kernel has no multicast routing (CONFIG_IP_MROUTE, no /proc/net/ip_mr_vif);" >&2
			echo "  FRR cannot forward here. Run it on a kernel with multicast routing (e.g. inside scripts/labvm)," >&2
			echo "  or with LAB_ALLOW_NO_MROUTE=1 for the checks that need no forwarding." >&2
			exit 1
		fi
	fi
	[[ -e $WORK ]] && {
		echo "container-test: $WORK exists (a kept or crashed run?): CT_CLEANUP_ONLY=1 $0" >&2
		exit 1
	}
	local t pkg
	for pkg in docker.io jq ethtool iptables; do
		if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) != "install ok installed" ]]; then
			log "installing $pkg (apt-get)"
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null ||
				fail "apt-get install $pkg failed"
		fi
	done
	[[ -x $TARGET/release/lab-topology && -x $TARGET/release/frr-ingestd && -x $TARGET/release/amt-relay ]] || {
		log "building the release binaries"
		(cd "$REPO" && cargo build --release -p frr-bridge -p sample-network --bins) || fail "cargo build failed"
	}
	install -d -m 0711 "$WORK"
	record_host_state
	trap teardown EXIT

	t=$(date +%s.%N)
	start_daemons
	log "containerd + dockerd up ($(elapsed_since "$t") s): $(docker version -f '{{.Server.Version}}')"

	t=$(date +%s.%N)
	"$REPO/deploy/build-images" || fail "deploy/build-images failed"
	log "images built ($(elapsed_since "$t") s)"

	t=$(date +%s.%N)
	"${CLAB[@]}" deploy || fail "clab-docker deploy failed"
	log "lab deployed from $TOPO ($(elapsed_since "$t") s)"

	check_containers
	check_frr_and_sidecar
	check_services
	if ((PARTIAL)); then
		partial_checks
		log "PARTIAL RUN PASSED: every check this kernel allows passed; NOT tested here: receivers"
		log "joining through rtr2 (pimd -> sidecar), first packet <= 2 s, forwarding restored after"
		log "a sidecar restart (needs CONFIG_IP_MROUTE)"
		exit 4
	fi
	full_checks
	log "PASSED"
}

check_containers() {
	local name state
	while read -r name state; do
		[[ $state == running ]] || fail "container $name is $state: $(docker logs --tail 5 "$name" 2>&1)"
	done < <(docker ps -a --format '{{.Names}} {{.State}}')
	pass "all $(docker ps -q | wc -l) containers running"
	local sc
	sc=$(docker inspect "$(c frr-ingestd)")
	jq -e '.[0].HostConfig.Privileged == false' <<<"$sc" >/dev/null || fail "the sidecar runs privileged"
	# [NET_ADMIN, BPF] as the topology asks; a docker that knows no CAP_BPF
	# (Debian 12's 20.10) gets [NET_ADMIN] from clab-docker, said loudly, and
	# the sidecar must then say it runs the userspace data plane.
	local caps
	caps=$(jq -c '.[0].HostConfig.CapAdd | map(ltrimstr("CAP_")) | sort' <<<"$sc")
	case $caps in
	'["BPF","NET_ADMIN"]') ;;
	'["NET_ADMIN"]')
		log "NOTE: docker $(docker version -f '{{.Server.Version}}') knows no CAP_BPF: the sidecar has NET_ADMIN only"
		wait_until 30 eval 'sidecar_api show status --json | jq -e ".dataplane == \"userspace\""' ||
			fail "without CAP_BPF the sidecar does not report the userspace data plane: $(sidecar_api show status --json | jq -c '{dataplane, dataplane_reason}')"
		pass "without CAP_BPF the sidecar runs the userspace data plane: $(sidecar_api show status --json | jq -c '{dataplane, dataplane_reason}')"
		;;
	*) fail "the sidecar's added capabilities are $caps, not [NET_ADMIN, BPF]" ;;
	esac
	jq -e '.[0].HostConfig.Devices | any(.PathOnHost == "/dev/net/tun")' <<<"$sc" >/dev/null || fail "the sidecar has no /dev/net/tun"
	jq -e --arg id "$(docker inspect -f '{{.Id}}' "$(c ingest)")" '.[0].HostConfig.NetworkMode == "container:" + $id' <<<"$sc" >/dev/null ||
		fail "the sidecar is not in the ingest container's network namespace: $(jq -r '.[0].HostConfig.NetworkMode' <<<"$sc")"
	# The effective capability set of the daemon inside the container.
	local capeff
	capeff=$(dx frr-ingestd sh -c 'grep CapEff /proc/1/status' | awk '{print $2}')
	pass "sidecar: not privileged, CapAdd $caps, /dev/net/tun, network-mode container:ingest (CapEff $capeff)"
}

check_frr_and_sidecar() {
	local t n
	t=$(date +%s.%N)
	for n in 10.77.1.2 10.77.1.6 10.77.1.10; do
		wait_until 60 pim_neighbour ingest "$n" || fail "no PIM neighbour $n on the ingest router"
	done
	pass "FRR 10 in containers: ingest has PIM neighbours rtr, rtr2, rtr3 ($(elapsed_since "$t") s after deploy)"
	wait_until 60 pim_neighbour ingest 169.254.77.2 || fail "the sidecar is not pimd's PIM neighbour on amt0"
	in_ingest_ns ip -4 addr show dev amt0 | has '169.254.77.1 peer 169.254.77.2' || fail "amt0 lacks 169.254.77.1 peer 169.254.77.2"
	pass "sidecar: amt0 in the FRR container's namespace, pimd's PIM neighbour 169.254.77.2 on it ($(elapsed_since "$t") s)"
	sidecar_api show status --json | jq -e '.frr_state != ""' >/dev/null || fail "ingestctl show status failed"
	pass "ingestctl in the sidecar container: status $(sidecar_api show status --json | jq -c '{frr_state, join_source, tun_name}')"
}

check_services() {
	wait_until 30 sidecar_api driad 198.51.100.4 --server 192.0.2.53 || fail "ingestctl driad 198.51.100.4 failed"
	sidecar_api driad 198.51.100.4 --server 192.0.2.53 --json | has '"192.0.2.10' || fail "DRIAD from the sidecar does not name relay 192.0.2.10"
	pass "DNS container: AMTRELAY of 198.51.100.4 -> 192.0.2.10 (ingestctl driad in the sidecar)"
	sidecar_api dorms 198.51.100.4 232.1.1.1 --server 192.0.2.53 --ca /run/dorms-ca/ca.pem --json | jq -e '.ok and .bitrate_bps == 1000000' >/dev/null ||
		fail "DORMS from the sidecar does not give 1 Mbit/s for (198.51.100.4, 232.1.1.1)"
	pass "DORMS container (its CA shared through the lab dir): (198.51.100.4, 232.1.1.1) is 1 Mbit/s"
	dx relay cat /run/amt-relay.status.json | jq -e '.kind == "status"' >/dev/null || fail "relay container has no status"
	pass "relay containers: amt-relay serving"
}

# The sidecar is stopped, and started again: routes, amt0 and the tunnel go
# and come back. CHANNEL_S CHANNEL_G: the channel that must come back.
stop_start_sidecar() {
	local s=$1 g=$2 t
	t=$(date +%s.%N)
	docker stop -t 15 "$(c frr-ingestd)" >/dev/null || fail "docker stop of the sidecar failed"
	[[ $(docker inspect -f '{{.State.ExitCode}}' "$(c frr-ingestd)") == 0 ]] ||
		fail "the sidecar exited with $(docker inspect -f '{{.State.ExitCode}}' "$(c frr-ingestd)") on SIGTERM"
	wait_until 5 no_source_route "$s" || fail "route to $s still there after the sidecar stopped"
	wait_until 5 amt0_absent || fail "amt0 still there after the sidecar stopped"
	wait_until 40 relay_not_subscribed "$s" "$g" || fail "the relay still has the sidecar's subscription to ($s, $g)"
	pass "sidecar stopped (exit 0, $(elapsed_since "$t") s): route to $s, amt0 and the relay's subscription are gone"
	t=$(date +%s.%N)
	docker start "$(c frr-ingestd)" >/dev/null || fail "docker start of the sidecar failed"
	wait_until 30 source_route "$s" || fail "no route to $s after the sidecar restarted"
	wait_until 30 tunnel_to 192.0.2.10 || fail "no tunnel after the sidecar restarted"
	wait_until 30 relay_subscribed "$s" "$g" || fail "the relay has no subscription after the sidecar restarted"
	wait_until 10 amt0_rx_grows || fail "no packets into amt0 after the sidecar restarted"
	RESTART_SECONDS=$(elapsed_since "$t")
	pass "sidecar started again: join, tunnel, route and traffic into amt0 back in $RESTART_SECONDS s"
	wait_until 60 pim_neighbour ingest 169.254.77.2 || fail "the restarted sidecar is not pimd's neighbour on amt0"
}

partial_checks() {
	local joinfile=$LAB_DIR/joins.txt t s=198.51.100.4 g=232.1.1.1
	# The same container, with the joins from a joinfile (frr-ingestd
	# --join-source file:), because pimd has no join state on this kernel.
	echo "$s,$g" >"$joinfile"
	"${CLAB[@]}" redeploy frr-ingestd -v "$joinfile:/run/ct-joins.txt:ro" -- --join-source file:/run/ct-joins.txt >/dev/null ||
		fail "redeploy of the sidecar with a joinfile failed"
	check_containers
	t=$(date +%s.%N)
	wait_until 30 join_listed "$s" "$g" || fail "the joinfile's ($s, $g) is not in ingestctl show joins"
	pass "join ($s, $g) reached the sidecar ($(elapsed_since "$t") s; joinfile, as pimd cannot here)"
	wait_until 20 tunnel_to 192.0.2.10 || fail "no AMT tunnel to 192.0.2.10"
	wait_until 20 relay_subscribed "$s" "$g" || fail "the relay does not list the sidecar's subscription"
	pass "AMT tunnel up to relay 192.0.2.10, which lists gateway 192.0.2.1 subscribed to ($s, $g) ($(elapsed_since "$t") s)"
	wait_until 10 source_route "$s" || fail "no route $s/32 via amt0 in the FRR container"
	pass "route $s/32 via 169.254.77.2 dev amt0 installed in the FRR container's namespace"
	wait_until 10 amt0_rx_grows || fail "no decapsulated packets written into amt0"
	pass "the demo sender's packets arrive over AMT and are written into amt0 ($(amt0_rx) so far; tunnel packets $(tunnel_packets))"
	stop_start_sidecar "$s" "$g"
	wait_until 20 pim_neighbour ingest 169.254.77.2 || fail "no PIM neighbour on amt0 after the restart"
	# The receiver side of the full run, where this kernel can carry it: the
	# test's sender in the source container, mcrx in relay2's container on
	# the sources' LAN (a native SSM join on a bridge, no routing).
	local summary first
	mcsend_start "$s,232.1.1.2"
	sleep 1
	mcrx_start relay2 rly-lan "$s,232.1.1.2"
	wait_until 10 eval '(( $(mcrx_packets relay2) > 0 ))' || fail "mcrx in relay2 receives nothing from the test's sender"
	mcrx_stop relay2
	mcsend_stop
	wait_until 5 mcrx_summary relay2 || fail "mcrx in relay2 wrote no summary"
	summary=$(mcrx_summary relay2)
	first=$(jq '.first_packet_ms // -1 | floor' <<<"$summary")
	((first >= 0 && first <= 2000 * SCALE)) || fail "relay2's LAN: first packet ${first} ms after the join (limit $((2000 * SCALE)) ms): $summary"
	pass "receiver tooling: mcrx in relay2's container gets the test sender's ($s, 232.1.1.2) natively, first packet $first ms, $(jq -c '{packets, missing}' <<<"$summary")"
	# Leaving: the joinfile empties, the flow goes.
	: >"$joinfile"
	wait_until 20 no_joins || fail "the emptied joinfile still has joins in the sidecar"
	wait_until 10 no_source_route "$s" || fail "route $s/32 still there after the join left"
	pass "leave: the joinfile emptied, the join and the route are gone"
	hardened_sidecar frr-ingest/frr-ingestd:dev /usr/local/bin/lab-frr-ingestd
	wait_until 30 vty_connected || fail "the hardened sidecar does not reach pimd's vty socket (group frrvty)"
	pass "sidecar with only NET_ADMIN (cap-drop ALL, CapEff 0x1000) and group frrvty: reads pimd's vty, pimd's neighbour on amt0"
	echo "$s,$g" >"$joinfile"
	hardened_sidecar -v "$joinfile:/run/ct-joins.txt:ro" frr-ingest/frr-ingestd:dev /usr/local/bin/lab-frr-ingestd --join-source file:/run/ct-joins.txt
	wait_until 20 tunnel_to 192.0.2.10 || fail "the hardened sidecar has no tunnel"
	wait_until 10 source_route "$s" || fail "the hardened sidecar installs no route to $s"
	wait_until 10 amt0_rx_grows || fail "the hardened sidecar writes no packets into amt0"
	pass "the same with the joinfile: tunnel up, route installed, packets into amt0"
}

# hardened_sidecar [ARG...]: the sidecar container replaced by one with no
# capability but NET_ADMIN (--cap-drop ALL; docker's default set has more,
# e.g. DAC_OVERRIDE) and the FRR image's group frrvty for pimd's vty socket,
# the way docs/deploy.md runs it; ARGs go to frr-ingestd.
hardened_sidecar() {
	local gid cfg=$REPO/sample-network/clab/configs/frr-ingestd capeff
	gid=$(dx ingest getent group frrvty | cut -d: -f3)
	[[ $gid =~ ^[0-9]+$ ]] || fail "no group frrvty in the FRR image"
	docker rm -f "$(c frr-ingestd)" >/dev/null
	docker run -d -t --name "$(c frr-ingestd)" --label "containerlab=frr-ingest" \
		--network "container:$(c ingest)" --cap-drop ALL --cap-add NET_ADMIN --group-add "$gid" \
		--device /dev/net/tun -v "$LAB_DIR/ingest-run-frr:/run/frr" -v "$LAB_DIR/dorms-ca:/run/dorms-ca:ro" \
		-v "$cfg/frr-ingestd.toml:/etc/frr-ingest/frr-ingestd.toml:ro" -v "$cfg/start:/usr/local/bin/lab-frr-ingestd:ro" \
		"$@" >/dev/null || fail "docker run of the hardened sidecar failed"
	capeff=$(dx frr-ingestd sh -c 'grep CapEff /proc/1/status' | awk '{print $2}')
	[[ $capeff == 0000000000001000 ]] || fail "the hardened sidecar has capabilities $capeff, not only NET_ADMIN (0000000000001000)"
	wait_until 60 pim_neighbour ingest 169.254.77.2 || fail "the hardened sidecar is not pimd's neighbour on amt0"
}
# vty_connected: the sidecar reads pimd's join state over the vty socket.
vty_connected() { sidecar_api show status --json | jq -e '.frr_state == "connected"'; }

full_checks() {
	local t s=198.51.100.4 g=232.1.1.2 first p1 p2 summary
	# The demo receiver (rcv) gets the demo sender's (198.51.100.4, 232.1.1.1).
	wait_until 30 eval '(( $(demo_receiver_packets) > 0 ))' ||
		fail "the demo receiver in rcv gets nothing"
	pass "demo receiver (rcv container) gets the demo sender's (198.51.100.4, 232.1.1.1) over AMT"
	# A channel nobody has joined yet: the sender first, then the receiver in
	# rcv2 joins; mcrx measures join -> first packet itself.
	mcsend_start "$s,$g"
	sleep 1
	t=$(date +%s.%N)
	mcrx_start rcv2 rcv0 "$s,$g"
	wait_until 10 join_listed "$s" "$g" || fail "the join of rcv2 did not reach the sidecar"
	pass "rcv2's join ($s, $g) reached the sidecar through rtr2 and the ingest's pimd ($(elapsed_since "$t") s)"
	wait_until 10 relay_subscribed "$s" "$g" || fail "no subscription at the relay for ($s, $g)"
	pass "AMT tunnel up: relay 192.0.2.10 lists gateway 192.0.2.1 subscribed to ($s, $g)"
	wait_until 10 eval '(( $(mcrx_packets rcv2) > 0 ))' || fail "rcv2 receives nothing"
	pass "rcv2 receives ($s, $g) through ingest and rtr2 ($(elapsed_since "$t") s after the join)"
	stop_start_sidecar "$s" "$g"
	p1=$(mcrx_packets rcv2)
	sleep 2
	p2=$(mcrx_packets rcv2)
	((p2 > p1)) || fail "rcv2 gets nothing after the sidecar restarted (same receiver, no new join)"
	pass "rcv2 receives again after the sidecar restart without joining again ($p1 -> $p2 packets)"
	mcrx_stop rcv2
	wait_until 5 mcrx_summary rcv2 || fail "mcrx in rcv2 wrote no summary"
	summary=$(mcrx_summary rcv2)
	first=$(jq '.first_packet_ms // -1 | floor' <<<"$summary")
	((first >= 0 && first <= 2000 * SCALE)) || fail "first packet ${first} ms after the join (limit $((2000 * SCALE)) ms): $summary"
	pass "rcv2: first packet $first ms after the join (<= $((2000 * SCALE)) ms); $(jq -c '{packets, missing, duplicates}' <<<"$summary")"
	hardened_sidecar frr-ingest/frr-ingestd:dev /usr/local/bin/lab-frr-ingestd
	wait_until 30 vty_connected || fail "the hardened sidecar does not reach pimd's vty socket (group frrvty)"
	p1=$(demo_receiver_packets)
	wait_until 15 eval '(( $(demo_receiver_packets) > p1 + 100 ))' || fail "the demo receiver gets nothing through the hardened sidecar"
	pass "sidecar with only NET_ADMIN (cap-drop ALL, CapEff 0x1000) and group frrvty: pimd's neighbour, the demo receiver gets traffic"
	mcsend_stop
}

main "$@"
