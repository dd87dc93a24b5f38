#!/bin/sh
# containerlab only (the netns lab runs amt-relay with its own command line,
# relay_start in sample-network/lab). The container starts before containerlab
# attaches its links and runs the exec lines, so wait until rly-lan has its
# addresses, then run the relay in the foreground: AMT on [::]:2268 (IPv4 and
# IPv6), native joins on the sources' LAN rly-lan.
i=0
while ! ip -6 addr show dev rly-lan 2>/dev/null | grep -q 'inet6 2001:db8:'; do
	i=$((i + 1))
	[ "$i" -le 600 ] || { echo "lab-amt-relay: after 120 s rly-lan has no address; not starting" >&2; exit 1; }
	sleep 0.2
done
exec amt-relay --listen '[::]:2268' --lan-interface rly-lan --qqi 10 \
	--status-file /run/amt-relay.status.json --status-interval 1
