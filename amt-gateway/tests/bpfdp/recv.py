#!/usr/bin/env python3
"""Receiver for the kernel data plane test (tests/bpfdp-e2e.sh).

Joins source-specific channels on one interface (by index, so the interface
needs no address) and counts what arrives there, by sequence range (the
first 8 payload bytes, big-endian) and TTL/hop limit:
  seq <  500000            "synthetic"  (amt-relay --synthetic)
  500000 <= seq < 1000000  "legit"      (inject.py, valid data from the relay)
  seq >= 1000000           "forged"     (inject.py, must never arrive)
Stops on SIGTERM/SIGINT (or after --duration seconds, a safety cap), then
prints one JSON line: per channel, per range, packets and the TTLs seen.

usage: recv.py --iface NAME --port P --duration S S,G [S,G ...]
"""
import argparse
import json
import select
import signal
import socket
import struct
import sys
import time

MCAST_JOIN_SOURCE_GROUP = 46
IP_RECVTTL = 12
IP_TTL = 2
IP_MULTICAST_ALL = 49
IPV6_RECVHOPLIMIT = 51
IPV6_HOPLIMIT = 52
IPV6_MULTICAST_ALL = 29


def sockaddr(family, addr):
    """A struct sockaddr_storage (128 bytes) holding addr."""
    if family == socket.AF_INET:
        raw = struct.pack("=H", socket.AF_INET) + b"\0\0" + socket.inet_pton(family, addr)
    else:
        raw = struct.pack("=H", socket.AF_INET6) + b"\0\0" + b"\0" * 4 + socket.inet_pton(family, addr)
    return raw.ljust(128, b"\0")


def group_source_req(ifindex, family, source, group):
    # struct group_source_req: u32 interface, 4 bytes padding, group, source.
    return struct.pack("=I4x", ifindex) + sockaddr(family, group) + sockaddr(family, source)


def category(seq):
    if seq >= 1_000_000:
        return "forged"
    if seq >= 500_000:
        return "legit"
    return "synthetic"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--ready-file")
    ap.add_argument("channels", nargs="+")
    args = ap.parse_args()
    ifindex = socket.if_nametoindex(args.iface)
    socks = {}
    counts = {}
    for ch in args.channels:
        source, group = ch.split(",")
        family = socket.AF_INET6 if ":" in group else socket.AF_INET
        if family not in socks:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # SO_RCVBUFFORCE (root): a receiver that gets little CPU for a
            # while must not lose packets in its socket.
            s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                s.bind(("0.0.0.0", args.port))
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                s.bind(("::", args.port))
            s.setblocking(False)
            socks[family] = s
        level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
        socks[family].setsockopt(level, MCAST_JOIN_SOURCE_GROUP,
                                 group_source_req(ifindex, family, source, group))
        counts[ch] = {}
    if args.ready_file:
        open(args.ready_file, "w").close()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    start = time.monotonic()
    while not stop and time.monotonic() - start < args.duration:
        try:
            ready, _, _ = select.select(list(socks.values()), [], [], 0.2)
        except InterruptedError:
            continue
        for s in ready:
            while True:
                try:
                    data, anc, _flags, addr = s.recvmsg(65536, 256)
                except BlockingIOError:
                    break
                ttl = None
                for level, kind, value in anc:
                    if (level, kind) in ((socket.IPPROTO_IP, IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
                        ttl = struct.unpack("=i", value[:4])[0]
                # The sender is the channel's source; the group is not in
                # recvmsg's answer, so match on the source of the channels.
                src = addr[0]
                ch = next((c for c in counts if c.split(",")[0] == src), None)
                if ch is None:
                    ch = "unknown:" + src
                    counts.setdefault(ch, {})
                seq = struct.unpack(">Q", data[:8])[0] if len(data) >= 8 else 0
                c = counts[ch].setdefault(category(seq), {"packets": 0, "ttl": {}})
                c["packets"] += 1
                c["ttl"][str(ttl)] = c["ttl"].get(str(ttl), 0) + 1
    print(json.dumps({"kind": "recv_summary", "channels": counts}))


if __name__ == "__main__":
    sys.exit(main())
