#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/seeds/TARGET/).

Sources, all real data of this project:
- AMT, IGMPv3, MLDv2 and inner IP packets: the capture made by
  capture-amt.sh (amtgw against amt-relay), read with tshark;
- AMTRELAY records and relay names: the lab's zone files and the BIND test's
  records (policy/tests/driad_bind.rs);
- DORMS host-meta: sample-network/lab-data/dorms; metadata documents in the
  layouts the lab serves (sample-network/lab, from lab-data/dorms/flows);
- pimd join JSON and vty replies: FRR output in the shared research captures
  (/work/shared/research/captures, copied to fuzz/seeds/captures/frr/ so the
  seeds can be rebuilt without it);
- joinfiles, daemon configs, the lab topology: the repository's files and
  unit-test fixtures;
- PIM Hello/Join: built like pimd's packets (RFC 7761 formats) for the lab's
  addresses, since this kernel runs no multicast routing to capture them.

Usage: fuzz/seeds/make-seeds.py [PCAP]   (from the repository root)
Files are named by content hash, so rerunning is idempotent.
"""

import glob
import hashlib
import ipaddress
import os
import re
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
PCAP = sys.argv[1] if len(sys.argv) > 1 else os.path.join(SEEDS, "captures", "amt-lo.pcap")
FRR = os.path.join(SEEDS, "captures", "frr")

# The Internet checksum (RFC 1071) of the kernel data plane test's packet
# crafter: one copy for both scripts (no __pycache__ left in the test's
# directory).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "amt-gateway", "tests", "bpfdp"))
from inject import csum as checksum  # noqa: E402

written = {}


def seed(target, data, name=""):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    h = hashlib.sha1(data).hexdigest()[:16]
    path = os.path.join(d, (name + "-" if name else "") + h)
    with open(path, "wb") as f:
        f.write(data)
    written[target] = written.get(target, 0) + 1


def frame(control, body):
    return bytes([control]) + struct.pack("<H", len(body)) + body


# ---- AMT from the capture -------------------------------------------------


def read_capture():
    out = subprocess.run(
        ["tshark", "-r", PCAP, "-T", "fields", "-E", "separator=|",
         "-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.payload",
         "-e", "ip.src", "-e", "ipv6.src"],
        check=True, capture_output=True, text=True).stdout
    msgs = []
    for line in out.splitlines():
        # Data messages carry an inner UDP packet that tshark dissects too:
        # the first value of each field is the outer one.
        sport, dport, payload, ip4, ip6 = (f.split(",")[0] for f in line.split("|"))
        if not payload:
            continue
        data = bytes.fromhex(payload.replace(":", ""))
        msgs.append((int(sport) == 2268, bool(ip6) and not ip4, data))
    return msgs


def amt_seeds(msgs):
    kinds = {}
    for from_relay, v6, data in msgs:
        key = (data[0], len(data) if data[0] != 6 else v6, data[1] if data[0] == 4 else 0)
        kinds.setdefault(key, data)
    for data in kinds.values():
        seed("amt_message", data, "amt%d" % data[0])

    queries, reports, packets = {}, {}, {}
    for from_relay, v6, data in msgs:
        if data[0] == 4:
            inner_len = (struct.unpack("!H", data[14:16])[0] if data[12] >> 4 == 4
                         else 40 + struct.unpack("!H", data[16:18])[0])
            queries.setdefault(data[12:12 + inner_len], None)
        elif data[0] == 5:
            reports.setdefault(data[12:], None)
        elif data[0] == 6:
            packets.setdefault(data[2] >> 4, data[2:])
    for q in queries:
        seed("amt_encap_query", b"\0" + q, "query-v%d" % (q[0] >> 4))
        seed("inner_ip_packet", q, "query-v%d" % (q[0] >> 4))
        split_igmp_mld(q, query=True)
    for r in list(reports)[:8]:
        seed("amt_encap_report", b"\0" + r, "report-v%d" % (r[0] >> 4))
        split_igmp_mld(r, query=False)
    for p in packets.values():
        seed("inner_ip_packet", p, "data-v%d" % (p[0] >> 4))
    return queries, reports


def split_igmp_mld(datagram, query):
    mode = 0 if query else 2
    if datagram[0] >> 4 == 4:
        ihl = (datagram[0] & 15) * 4
        total = struct.unpack("!H", datagram[2:4])[0]
        seed("igmpv3", bytes([mode]) + datagram[ihl:total], "query" if query else "report")
    else:
        src, dst = datagram[8:24], datagram[24:40]
        nxt, off = datagram[6], 40
        while nxt in (0, 43, 60):
            nxt, off = datagram[off], off + (datagram[off + 1] + 1) * 8
        seed("mldv2", bytes([mode]) + src + dst + datagram[off:], "query" if query else "report")


def session_seeds(msgs):
    """Whole conversations for the stateful targets, split where the
    capture restarts (a Request or Discovery after a Teardown)."""
    sessions, cur = [], []
    for m in msgs:
        if cur and m[2][0] in (1, 3) and any(x[2][0] == 7 for x in cur):
            sessions.append(cur)
            cur = []
        cur.append(m)
    if cur:
        sessions.append(cur)
    for s in sessions:
        tunnel_v6 = s[0][1]
        discovery = any(m[2][0] == 1 for m in s)
        # gateway_tunnel: the relay's side, with the nonces echoed.
        config = (0 if discovery else 1) | (0 if tunnel_v6 else 8) | 16
        # Join the captured data's channels first, as amtgw did: that makes
        # the tunnel send the Requests whose nonces the Queries echo.
        frames = b""
        subscribed = set()
        for from_relay, v6, data in s:
            if data[0] == 6:
                inner = data[2:]
                if inner[0] >> 4 == 4:
                    sg = inner[12:16] + inner[16:20]
                else:
                    sg = inner[8:24] + inner[24:40]
                if sg not in subscribed:
                    frames += frame(2, sg)
                    subscribed.add(sg)
        data_sent = 0
        for from_relay, v6, data in s:
            if data[0] == 6:
                if data_sent >= 3:
                    continue
                data_sent += 1
            if not from_relay:
                frames += frame(1, struct.pack("<H", 10))  # let timers run
                continue
            control = 0
            if data[0] == 2:
                control = 4 | 0x10  # from the discovery address, nonce echoed
            elif data[0] == 4:
                mld = data[12] >> 4 == 6
                control = 0x10 | (0x20 if mld else 0)
            frames += frame(control, data)
        frames += frame(3, b"")
        seed("gateway_tunnel", bytes([config]) + frames, "session")
        # relay_core: the gateway's side, MACs and addresses echoed.
        config = 2 if any(m[2][0] == 4 and len(m[2]) > 12 + 40 for m in s) else 0
        frames = b""
        for from_relay, v6, data in s:
            if from_relay or data[0] == 6:
                continue
            control = 0
            if data[0] in (5, 7):
                control = 0x10 | (0x20 if data[0] == 7 else 0)
            frames += frame(control, data)
            if data[0] == 5:
                frames += frame(2, b"\0")
        frames += frame(1, struct.pack("<H", 3000))
        seed("relay_core", bytes([config]) + frames, "session")


# ---- DNS ------------------------------------------------------------------


def name_wire(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def rdata_wire(prec, d, typ, relay):
    out = bytes([prec, typ | (0x80 if d else 0)])
    if typ == 1:
        out += ipaddress.IPv4Address(relay).packed
    elif typ == 2:
        out += ipaddress.IPv6Address(relay).packed
    elif typ == 3:
        out += name_wire(relay)
    return out


def dns_seeds():
    records = set()
    texts = []
    for path in glob.glob(os.path.join(ROOT, "sample-network/lab-data/dns/*.zone")):
        texts.append(open(path).read())
    texts.append(open(os.path.join(ROOT, "policy/tests/driad_bind.rs")).read())
    for text in texts:
        for m in re.finditer(r"AMTRELAY\s+(\d+)\s+([01])\s+(\d)\s+(\S+)", text):
            records.add((int(m[1]), int(m[2]), int(m[3]), m[4]))
        for m in re.finditer(r"TYPE260\s+\\+#\s+(\d+)\s+([0-9a-fA-F]+)", text):
            seed("amtrelay_presentation", "\\# %s %s" % (m[1], m[2]), "generic")
            seed("amtrelay_rdata", bytes.fromhex(m[2]), "generic")
    for prec, d, typ, relay in sorted(records):
        seed("amtrelay_presentation", "%d %d %d %s" % (prec, d, typ, relay), "type%d" % typ)
        wire = rdata_wire(prec, d, typ, relay)
        seed("amtrelay_rdata", wire, "type%d" % typ)
        if typ == 3:
            seed("relay_name_text", relay, "name")
            seed("relay_name_wire", name_wire(relay), "name")
            # Akamai's live records omit the root byte.
            seed("amtrelay_rdata", wire[:-1], "type3-noroot")
            seed("relay_name_wire", name_wire(relay)[:-1], "noroot")
    seed("amtrelay_presentation", "\\# 6 0a01cb00710f", "generic-rfc")
    seed("relay_name_text", "amt\\.relay.ex\\097mple.com", "escapes")


# ---- DORMS ----------------------------------------------------------------


def dorms_seeds():
    base = os.path.join(ROOT, "sample-network/lab-data/dorms")
    seed("dorms_host_meta_xml", open(os.path.join(base, "host-meta.xml"), "rb").read(), "lab")
    seed("dorms_host_meta_json", open(os.path.join(base, "host-meta.json"), "rb").read(), "lab")
    seed("dorms_host_meta_xml",
         '<?xml version="1.0"?>\n<!-- c --><XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
         '<![CDATA[x]]><Link rel="author" href="x"/>\n'
         "<Link href='/restconf' rel='restconf'/></XRD>", "rfc8040")
    flows = []
    for line in open(os.path.join(base, "flows")):
        f = line.split()
        if f and not f[0].startswith("#"):
            flows.append(f)
    # The picks of fuzz_targets/dorms_metadata.rs (CHANNELS).
    picks = {("198.51.100.4", "232.1.1.1"): 0, ("198.51.100.8", "232.10.1.6"): 1,
             ("203.0.113.4", "232.1.1.1"): 2, ("2001:db8:5100::4", "ff3e::8000:1"): 3}
    senders = {}
    for f in flows:
        layout, source, group, bps = f[:4]
        prio = f[4] if len(f) > 4 else "256"
        if layout == "draft01":
            cbacc = ('{"max-bits-per-second":%s,"max-mss":1400,"data-rate-window":2000,"priority":%s}'
                     % (bps, prio))
        else:
            cbacc = ('{"max-speed":%d,"max-packet-size":1400,"data-rate-window":2000,"priority":%s}'
                     % (int(bps) // 1000, prio))
        entry = '{"group-address":"%s","ietf-cbacc:cbacc":%s}' % (group, cbacc)
        senders.setdefault((layout, source), []).append(entry)
        pick = picks.get((source, group))
        if pick is not None:
            seed("dorms_metadata", bytes([pick]) + ('{"ietf-cbacc:cbacc":%s}' % cbacc).encode(), "leaf")
            seed("dorms_metadata", bytes([pick]) + ('{"ietf-dorms:group":[%s]}' % entry).encode(), "group")
    for (layout, source), entries in senders.items():
        sender = '{"source-address":"%s","group":[%s]}' % (source, ",".join(entries))
        for (s, g), pick in picks.items():
            if s == source:
                seed("dorms_metadata", bytes([pick]) + ('{"ietf-dorms:sender":[%s]}' % sender).encode(), "sender")
                doc = '{"ietf-dorms:metadata":{"sender":[%s]}}' % sender
                if layout == "dorms":
                    doc = '{"ietf-dorms:dorms":{"metadata":{"sender":[%s]}}}' % sender
                seed("dorms_metadata", bytes([pick]) + doc.encode(), "tree-" + layout)


# ---- FRR ------------------------------------------------------------------


def frr_seeds():
    for path in sorted(glob.glob(os.path.join(FRR, "*.json"))):
        data = open(path, "rb").read()
        base = os.path.basename(path)
        if "pim_join" in base or "mld_joins" in base:
            seed("pimd_join_json", data, "frr")
        # vty replies: the JSON as pimd sends it, then \0\0\0 and the status,
        # read in a few pieces.
        reply = data + b"\0\0\0\0"
        cut = len(reply) // 3
        seed("vty_reply_framing",
             frame(0, reply[:cut]) + frame(1, reply[cut:2 * cut]) + frame(0, reply[2 * cut:]), "reply")
    seed("vty_reply_framing", frame(0, b"% Unknown command: show ip pim jon json\n\0\0\0\x02"), "nomatch")
    seed("pimd_join_json",
         '{"ing-dn":{"name":"ing-dn","state":"up","address":"10.77.1.1","index":2,'
         '"232.1.1.1":{"23.212.185.4":{"source":"23.212.185.4","group":"232.1.1.1",'
         '"channelJoinName":"JOIN","protocolPim":1}}}}', "frr84")
    seed("pimd_join_json",
         '{"default":{"ing-lan":{"name":"ing-lan","232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4",'
         '"group":"232.1.1.1","channelJoinName":"NOINFO","protocolIgmp":1},'
         '"198.51.100.4,S,Grpt":{"channelJoinName":"PRUNE"}}}}}', "vrf-igmp")


def pim_seeds():
    def ipv4(src, dst, payload):
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 1, 103, 0,
                        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        h = h[:10] + struct.pack("!H", checksum(h)) + h[12:]
        return h + payload

    def ipv6(src, dst, payload):
        return struct.pack("!IHBB16s16s", 0x60000000, len(payload), 103, 1,
                           ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload

    def pim(typ, body):
        p = bytes([0x20 | typ, 0, 0, 0]) + body
        return p[:2] + struct.pack("!H", checksum(p)) + p[4:]

    hello = pim(0, struct.pack("!HHH", 1, 2, 105) + struct.pack("!HHI", 19, 4, 1)
                + struct.pack("!HHI", 20, 4, 0xDEADBEEF) + struct.pack("!HHHH", 2, 4, 500, 2500))
    seed("pim_message", hello, "hello")
    seed("pim_tun_packet", b"\0" + ipv4("169.254.77.2", "224.0.0.13", hello), "hello-v4")
    seed("pim_tun_packet", b"\0" + ipv6("fe80::2", "ff02::d", hello), "hello-v6")
    # Mode 1: the sidecar's own Hello (holdtime, DR priority, generation
    # id, source) built and parsed back.
    fields = struct.pack("!HII", 105, 1, 0xDEADBEEF)
    seed("pim_tun_packet", b"\1" + fields + ipaddress.IPv4Address("169.254.77.1").packed, "own-hello-v4")
    seed("pim_tun_packet", b"\3" + fields + ipaddress.IPv6Address("fe80::1").packed, "own-hello-v6")

    def enc_ucast(a):
        ip = ipaddress.ip_address(a)
        return bytes([1 if ip.version == 4 else 2, 0]) + ip.packed

    def enc_group(a, flags=0):
        ip = ipaddress.ip_address(a)
        return bytes([1 if ip.version == 4 else 2, 0, flags, 32 if ip.version == 4 else 128]) + ip.packed

    jp = pim(3, enc_ucast("169.254.77.1") + bytes([0, 1]) + struct.pack("!H", 210)
             + enc_group("232.1.1.1") + struct.pack("!HH", 1, 1)
             + enc_group("198.51.100.4", 0x04) + enc_group("198.51.100.5", 0x04))
    seed("pim_message", jp, "join-v4")
    seed("pim_tun_packet", b"\0" + ipv4("169.254.77.2", "224.0.0.13", jp), "join-v4")
    jp6 = pim(3, enc_ucast("fe80::1") + bytes([0, 1]) + struct.pack("!H", 210)
              + enc_group("ff3e::8000:1") + struct.pack("!HH", 1, 0)
              + enc_group("2001:db8:5100::4", 0x04))
    seed("pim_message", jp6, "join-v6")
    seed("pim_tun_packet", b"\0" + ipv6("fe80::2", "ff02::d", jp6), "join-v6")


def text_seeds():
    seed("joinfile", "# lab channels\n198.51.100.4,232.1.1.1\n198.51.100.5, 232.1.1.2, 40\n"
         "2001:db8:5100::4,ff3e::8000:1,3\n\n", "lab")
    seed("joinfile", "198.51.100.4,232.1.1.1 # inline\n10.0.0.1,224.0.0.5\n1.2.3.4,232.1.1.1,0\n", "errors")
    cfg = open(os.path.join(ROOT, "sample-network/clab/configs/frr-ingestd/frr-ingestd.toml"), "rb").read()
    seed("daemon_config", cfg, "clab")
    seed("daemon_config", b"", "defaults")
    seed("daemon_config",
         '[frr]\nvty_dir = "/run/lab/ingest"\nnetns = "/var/run/netns/fi-ingest"\n[tun]\nname = "amt9"\n'
         '[watch]\npoll_interval_ms = 100\n[api]\nsocket = "/tmp/x.sock"\ntcp = "127.0.0.1:50051"\n'
         'metrics = "[::]:9477"\n[ingest]\nserve_all_sources = true\n'
         '[[amt.static_relays]]\nprefix = "198.51.100.0/24"\nrelay = "192.0.2.10"\n'
         '[[amt.static_relays]]\nprefix = "2001:db8::/32"\nrelay = "[2001:db8:ffff::1]:2268"\ndiscovery = false\n',
         "full")
    seed("lab_topology", open(os.path.join(ROOT, "sample-network/clab/frr-ingest.clab.yml"), "rb").read(), "lab")


def main():
    if os.path.exists(PCAP):
        msgs = read_capture()
        amt_seeds(msgs)
        session_seeds(msgs)
    else:
        print("no capture at %s: AMT seeds not rebuilt (run capture-amt.sh)" % PCAP, file=sys.stderr)
    dns_seeds()
    dorms_seeds()
    frr_seeds()
    pim_seeds()
    text_seeds()
    for target, n in sorted(written.items()):
        print("%-24s %d seeds" % (target, n))


if __name__ == "__main__":
    main()
