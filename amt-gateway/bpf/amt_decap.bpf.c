// SPDX-License-Identifier: MIT OR Apache-2.0
//
// Kernel data plane of the AMT gateway (RFC 7450 Multicast Data only).
//
// amt_decap (TC/TCX ingress of the interface the relays' packets arrive on):
//   outer Ethernet + IPv4/IPv6 (no options, no extension headers, not a
//   fragment) + UDP from a tunnel's relay address and port to the tunnel's
//   local port (and local address, when the tunnel has a specific one),
//   AMT type 6, an inner IPv4/IPv6 packet that fits in the datagram, and an
//   inner (S,G) the tunnel subscribed: strip outer IP + UDP + AMT header,
//   raise the inner TTL/hop limit to min_ttl, count, and redirect:
//     redirect_mode 0: bpf_redirect(redirect_ifindex, BPF_F_INGRESS): the
//                      TUN is in this namespace (variant B);
//     redirect_mode 1: bpf_redirect_peer(redirect_ifindex): the host end
//                      of a veth pair whose other end is in FRR's
//                      namespace, where amt_to_tun takes over (variant D).
//   Everything else is passed on untouched (PASS_ON): the tunnel's socket
//   gets it and the userspace tunnel handles (or drops and counts) it.
//
// Attached as a TCX link (Linux >= 6.6) or as a direct-action bpf filter on
// a clsact qdisc (older kernels, e.g. Debian 12's 6.1): the same code, and
// both verifiers accept it.
//
// amt_to_tun (TC/TCX ingress of the veth end in FRR's namespace):
//   packets marked by amt_decap (Ethernet source AMT_MARK_MAC) with a
//   multicast destination go to the TUN's ingress
//   (bpf_redirect(tun_ifindex, BPF_F_INGRESS)), so the (S,G)'s incoming
//   interface is the TUN, exactly as for a write() into it. Anything else
//   arriving there (the veth's own stack traffic) is dropped: nothing but
//   decapsulated data may enter FRR's namespace this way.
//
// Once a packet has been decapsulated it must never be passed on: the inner
// packet would then be processed as if it had been received on the uplink.
// Failures after the decapsulation drop it.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Kernel 6.3+ (the Debian 12 uapi headers predate them).
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define MAX_TUNNELS 1024
#define MAX_CHANNELS 65536
#define AMT_TYPE_MULTICAST_DATA 6
#define AMT_DATA_HEADER_LEN 2
#define ETH_LEN 14

// Must match the Rust side (dataplane/kernel.rs, struct layouts and the
// order of PassReason).
struct tunnel_key {
	__u8 relay_addr[16]; // IPv4 as ::ffff:a.b.c.d
	__be16 relay_port;
	__be16 local_port;
};

#define TUNNEL_HAS_LOCAL_ADDR 1

struct tunnel_info {
	__u32 id;
	__u32 flags;
	__u8 local_addr[16];
};

struct channel_key {
	__u32 tunnel_id;
	__u8 source[16];
	__u8 group[16];
};

struct channel_stats {
	__u64 packets;
	__u64 bytes; // inner IP packet bytes, as the userspace tunnel counts
	__u64 last_seen_ns; // bpf_ktime_get_ns (CLOCK_MONOTONIC)
};

enum pass_reason {
	PASS_CONTROL = 0, // not AMT Multicast Data
	PASS_NOT_SUBSCRIBED,
	PASS_MALFORMED, // truncated or inconsistent lengths, bad inner header
	PASS_GSO, // GRO/GSO aggregate: adjust_room refuses those
	PASS_ADJUST_FAILED,
	PASS_WRONG_LOCAL_ADDR,
	PASS_REASONS,
};

struct tunnel_stats {
	__u64 packets;
	__u64 bytes;
	__u64 passed[PASS_REASONS];
	__u64 ttl_raised;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TUNNELS);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_info);
} amt_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, struct channel_key);
	__type(value, struct channel_stats);
} amt_channels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_TUNNELS);
	__type(key, __u32);
	__type(value, struct tunnel_stats);
} amt_tunnel_stats SEC(".maps");

// Set by the loader before the program is loaded (read-only afterwards, so
// the verifier prunes the branch not taken).
volatile const __u32 redirect_ifindex = 0;
volatile const __u32 redirect_mode = 0; // 0: ingress of a TUN here, 1: veth peer
volatile const __u8 min_ttl = 0; // 0: leave TTL/hop limit alone
volatile const __u32 tun_ifindex = 0; // amt_to_tun's target

// A packet that is not ours: TC_ACT_UNSPEC (= TCX_NEXT) lets the next
// program or filter on the uplink have it, and the stack when there is none.
// TC_ACT_OK would end the chain: a program attached after ours (TCX) or a
// filter at a later priority (clsact) would never see any packet.
#define PASS_ON TC_ACT_UNSPEC

// Locally administered, spells "AMT": marks decapsulated frames for amt_to_tun.
#define AMT_MARK_MAC {0x02, 0x41, 0x4d, 0x54, 0x00, 0x00}

static __always_inline void map_v4(__u8 out[16], __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

static __always_inline int addr_eq(const __u8 a[16], const __u8 b[16])
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

static __always_inline void count_pass(struct tunnel_stats *ts, int reason)
{
	if (ts && reason >= 0 && reason < PASS_REASONS)
		ts->passed[reason]++;
}

// Longest header chain looked at before the decapsulation: Ethernet, IPv6,
// UDP, AMT, inner IPv6.
#define PARSE_LEN (ETH_LEN + 40 + 8 + AMT_DATA_HEADER_LEN + 40)

SEC("classifier")
int amt_decap(struct __sk_buff *skb)
{
	__u16 proto = skb->protocol;
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return PASS_ON;

	// Non-linear skbs (real NICs): make the headers readable directly.
	// Only when the packet is longer than its linear part: pulling a short
	// (linear) packet gains nothing, and pulling a cloned skb (TCP
	// segments, taps) would copy its header for every packet on the uplink.
	// A short non-linear packet (rare: drivers copy small frames) fails the
	// bounds checks below and goes to the socket. (Only constant offsets on
	// packet pointers: without CAP_PERFMON the verifier refuses variable
	// ones.)
	if ((long)skb->data + PARSE_LEN > (long)skb->data_end && skb->len >= PARSE_LEN) {
		if (bpf_skb_pull_data(skb, PARSE_LEN) < 0)
			return PASS_ON;
	}
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	struct tunnel_key tk = {};
	__u8 dst_addr[16];
	__u32 outer_len; // outer IP header
	__u32 ip_payload_len; // outer IP payload (UDP header + data)
	struct udphdr *udp;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_LEN;
		if ((void *)(ip + 1) > data_end)
			return PASS_ON;
		// Options, fragments: the socket's business.
		if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return PASS_ON;
		if (ip->frag_off & bpf_htons(0x3fff))
			return PASS_ON;
		__u32 tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip) + sizeof(*udp))
			return PASS_ON;
		outer_len = sizeof(*ip);
		ip_payload_len = tot - sizeof(*ip);
		map_v4(tk.relay_addr, ip->saddr);
		map_v4(dst_addr, ip->daddr);
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + ETH_LEN;
		if ((void *)(ip6 + 1) > data_end)
			return PASS_ON;
		// Extension headers (fragment header included): the socket's business.
		if (ip6->nexthdr != IPPROTO_UDP)
			return PASS_ON;
		outer_len = sizeof(*ip6);
		ip_payload_len = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(tk.relay_addr, &ip6->saddr, 16);
		__builtin_memcpy(dst_addr, &ip6->daddr, 16);
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > data_end)
		return PASS_ON;
	tk.relay_port = udp->source;
	tk.local_port = udp->dest;
	struct tunnel_info *tun = bpf_map_lookup_elem(&amt_tunnels, &tk);
	if (!tun)
		return PASS_ON;
	__u32 tid = tun->id;
	struct tunnel_stats *ts = bpf_map_lookup_elem(&amt_tunnel_stats, &tid);

	if ((tun->flags & TUNNEL_HAS_LOCAL_ADDR) &&
	    !addr_eq(dst_addr, tun->local_addr)) {
		count_pass(ts, PASS_WRONG_LOCAL_ADDR);
		return PASS_ON;
	}

	__u8 *amt = (void *)(udp + 1);
	if ((void *)(amt + AMT_DATA_HEADER_LEN) > data_end) {
		count_pass(ts, PASS_MALFORMED);
		return PASS_ON;
	}
	if (amt[0] != AMT_TYPE_MULTICAST_DATA) {
		count_pass(ts, PASS_CONTROL);
		return PASS_ON;
	}
	__u32 udp_len = bpf_ntohs(udp->len);
	// The UDP length must describe exactly the IP payload, and the frame
	// must hold all of it (Ethernet padding may follow).
	if (udp_len != ip_payload_len ||
	    udp_len < sizeof(*udp) + AMT_DATA_HEADER_LEN ||
	    skb->len < ETH_LEN + outer_len + udp_len) {
		count_pass(ts, PASS_MALFORMED);
		return PASS_ON;
	}
	__u32 room = udp_len - sizeof(*udp) - AMT_DATA_HEADER_LEN; // bytes for the inner packet

	struct channel_key ck = {};
	ck.tunnel_id = tid;
	__u32 inner_len;
	__u64 decap_flags;
	__u8 *inner = amt + AMT_DATA_HEADER_LEN;
	if ((void *)(inner + 1) > data_end) {
		count_pass(ts, PASS_MALFORMED);
		return PASS_ON;
	}
	__u8 version = inner[0] >> 4;
	if (version == 4) {
		struct iphdr *in4 = (void *)inner;
		if ((void *)(in4 + 1) > data_end) {
			count_pass(ts, PASS_MALFORMED);
			return PASS_ON;
		}
		inner_len = bpf_ntohs(in4->tot_len);
		if (in4->ihl < 5 || inner_len < (__u32)in4->ihl * 4 || inner_len > room) {
			count_pass(ts, PASS_MALFORMED);
			return PASS_ON;
		}
		map_v4(ck.source, in4->saddr);
		map_v4(ck.group, in4->daddr);
		decap_flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
	} else if (version == 6) {
		struct ipv6hdr *in6 = (void *)inner;
		if ((void *)(in6 + 1) > data_end) {
			count_pass(ts, PASS_MALFORMED);
			return PASS_ON;
		}
		inner_len = sizeof(*in6) + bpf_ntohs(in6->payload_len);
		if (inner_len > room) {
			count_pass(ts, PASS_MALFORMED);
			return PASS_ON;
		}
		__builtin_memcpy(ck.source, &in6->saddr, 16);
		__builtin_memcpy(ck.group, &in6->daddr, 16);
		decap_flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
	} else {
		count_pass(ts, PASS_MALFORMED);
		return PASS_ON;
	}

	struct channel_stats *cs = bpf_map_lookup_elem(&amt_channels, &ck);
	if (!cs) {
		count_pass(ts, PASS_NOT_SUBSCRIBED);
		return PASS_ON;
	}
	// GRO/GSO aggregates carry several datagrams; adjust_room refuses them.
	if (skb->gso_segs > 1 || skb->gso_size) {
		count_pass(ts, PASS_GSO);
		return PASS_ON;
	}

	__s32 strip = outer_len + sizeof(*udp) + AMT_DATA_HEADER_LEN;
	long adjusted = bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_MAC, decap_flags);
	// Kernels before 6.3 know no DECAP_L3 flags and refuse them (-EINVAL,
	// nothing changed). Where the inner family is the outer one, skb->protocol
	// stays right and the plain shrink does the same; a family change is left
	// to the socket on those kernels (counted as adjust_failed).
	if (adjusted < 0 && (outer_len == sizeof(struct iphdr)) == (version == 4))
		adjusted = bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_MAC, 0);
	if (adjusted < 0) {
		count_pass(ts, PASS_ADJUST_FAILED);
		return PASS_ON;
	}
	// From here on the frame is the inner packet: drop on any failure.

	// The outer Ethernet header stays in front; rewrite it: marker source
	// (for amt_to_tun) and the inner EtherType.
	struct ethhdr eth = {
		.h_dest = {0},
		.h_source = AMT_MARK_MAC,
		.h_proto = version == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6),
	};
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return TC_ACT_SHOT;

	if (min_ttl) {
		if (version == 4) {
			__u8 ttl;
			if (bpf_skb_load_bytes(skb, ETH_LEN + 8, &ttl, 1) < 0)
				return TC_ACT_SHOT;
			if (ttl < min_ttl) {
				// TTL is the high byte of the 16-bit word at offset 8
				// (TTL, protocol): patch the header checksum for that word.
				__u8 new_ttl = min_ttl;
				__be16 old_word = bpf_htons((__u16)ttl << 8);
				__be16 new_word = bpf_htons((__u16)new_ttl << 8);
				if (bpf_l3_csum_replace(skb, ETH_LEN + 10, old_word, new_word, 2) < 0 ||
				    bpf_skb_store_bytes(skb, ETH_LEN + 8, &new_ttl, 1, 0) < 0)
					return TC_ACT_SHOT;
				if (ts)
					ts->ttl_raised++;
			}
		} else {
			__u8 hop;
			if (bpf_skb_load_bytes(skb, ETH_LEN + 7, &hop, 1) < 0)
				return TC_ACT_SHOT;
			if (hop < min_ttl) {
				__u8 new_hop = min_ttl;
				// No header checksum in IPv6; keep a CHECKSUM_COMPLETE sum right.
				if (bpf_skb_store_bytes(skb, ETH_LEN + 7, &new_hop, 1,
							BPF_F_RECOMPUTE_CSUM) < 0)
					return TC_ACT_SHOT;
				if (ts)
					ts->ttl_raised++;
			}
		}
	}

	cs->packets++;
	cs->bytes += inner_len;
	cs->last_seen_ns = bpf_ktime_get_ns();
	if (ts) {
		ts->packets++;
		ts->bytes += inner_len;
	}
	if (redirect_mode == 1)
		return bpf_redirect_peer(redirect_ifindex, 0);
	return bpf_redirect(redirect_ifindex, BPF_F_INGRESS);
}

SEC("classifier")
int amt_to_tun(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	const __u8 *src = eth->h_source;
	if (src[0] != 0x02 || src[1] != 0x41 || src[2] != 0x4d || src[3] != 0x54 ||
	    src[4] != 0x00 || src[5] != 0x00)
		return TC_ACT_SHOT;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_SHOT;
		if ((bpf_ntohl(ip->daddr) & 0xf0000000) != 0xe0000000)
			return TC_ACT_SHOT;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_SHOT;
		if (ip6->daddr.in6_u.u6_addr8[0] != 0xff)
			return TC_ACT_SHOT;
	} else {
		return TC_ACT_SHOT;
	}
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
}

// Only helpers that are not GPL-only are used.
char _license[] SEC("license") = "MIT OR Apache-2.0";
