#!/usr/bin/env python3
"""Crafted AMT Multicast Data for the kernel data plane test
(tests/bpfdp-e2e.sh): raw IPv4/IPv6 + UDP + AMT datagrams with any source
address and port, so the test can send valid data "from the relay" as well
as forged and malformed data.

Cases (COUNT datagrams each; sequence numbers as recv.py expects):
  legit         valid data for --channel, inner TTL/hop limit --ttl, seq 500000+i
  forged        the same with seq 1000000+i (send it from a wrong --src/--sport)
  unsubscribed  valid data for --other-channel, seq 1000000+i
  truncated     inner header claims 10 bytes more than the datagram carries
  short         AMT Multicast Data header without an inner packet
  badversion    inner IP version 5

usage: inject.py --src A --sport P --dst A --dport P --channel S,G
                 [--other-channel S,G] [--ttl N] [--count N] CASE
"""
import argparse
import socket
import struct
import sys
import time


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def udp(src, dst, sport, dport, payload, v6):
    length = 8 + len(payload)
    a, b = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, src), socket.inet_pton(
        socket.AF_INET6 if v6 else socket.AF_INET, dst)
    if v6:
        pseudo = a + b + struct.pack("!I3xB", length, 17)
    else:
        pseudo = a + b + struct.pack("!xBH", 17, length)
    head = struct.pack("!HHHH", sport, dport, length, 0)
    c = csum(pseudo + head + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, c) + payload


def ip_packet(src, dst, proto_payload, ttl, v6):
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(proto_payload), 17, ttl) + \
            socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + proto_payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(proto_payload), 0, 0, ttl, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + proto_payload


def inner_packet(channel, seq, ttl):
    source, group = channel.split(",")
    v6 = ":" in group
    payload = struct.pack(">QQ", seq, 0) + b"\0" * 48
    return ip_packet(source, group, udp(source, group, 5001, 5001, payload, v6), ttl, v6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--sport", type=int, default=2268)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--channel", required=True)
    ap.add_argument("--other-channel")
    ap.add_argument("--ttl", type=int, default=1)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("case")
    args = ap.parse_args()
    v6 = ":" in args.dst
    family = socket.AF_INET6 if v6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(args.count):
        if args.case == "legit":
            amt = b"\x06\x00" + inner_packet(args.channel, 500_000 + i, args.ttl)
        elif args.case == "forged":
            amt = b"\x06\x00" + inner_packet(args.channel, 1_000_000 + i, args.ttl)
        elif args.case == "unsubscribed":
            amt = b"\x06\x00" + inner_packet(args.other_channel, 1_000_000 + i, args.ttl)
        elif args.case == "truncated":
            amt = b"\x06\x00" + inner_packet(args.channel, 1_000_000 + i, args.ttl)[:-10]
        elif args.case == "short":
            amt = b"\x06\x00"
        elif args.case == "badversion":
            inner = bytearray(inner_packet(args.channel, 1_000_000 + i, args.ttl))
            inner[0] = (5 << 4) | (inner[0] & 0x0F)
            amt = b"\x06\x00" + bytes(inner)
        else:
            sys.exit("unknown case " + args.case)
        outer = ip_packet(args.src, args.dst, udp(args.src, args.dst, args.sport, args.dport, amt, v6), 64, v6)
        s.sendto(outer, (args.dst, 0))
        if i % 20 == 19:
            time.sleep(0.002)


if __name__ == "__main__":
    main()
