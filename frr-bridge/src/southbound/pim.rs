//! The little PIMv2 (RFC 7761) the sidecar speaks on the TUN: it is pimd's
//! PIM neighbour there, so pimd accepts the TUN as the RPF interface toward
//! every ingested source (pimd 8.4 needs a neighbour at the RPF next hop).
//! It sends Hellos and reads pimd's Hellos and Join/Prunes, which it uses
//! only as triggers: the vty join state stays the source of truth (pimd
//! does not re-send Joins after a neighbour restart, research §7.2).

use std::net::{IpAddr, Ipv4Addr};

use ingest_types::SourceGroup;

pub const ALL_PIM_ROUTERS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 13);
const PIM_PROTO: u8 = 103;
const PIM_HELLO: u8 = 0;
const PIM_JOIN_PRUNE: u8 = 3;

/// Options of the Hellos we send.
#[derive(Debug, Clone, Copy)]
pub struct HelloOptions {
    /// Seconds pimd keeps us as neighbour; 0 = Goodbye (we are leaving).
    pub holdtime: u16,
    pub dr_priority: u32,
    pub generation_id: u32,
}

/// Ones' complement sum, as used by IPv4 and PIM checksums.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Build an IPv4 header (no options) for `payload_len` bytes of `proto`.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    tos: u8,
    payload_len: usize,
) -> [u8; 20] {
    let total = (20 + payload_len) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = internet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A complete IPv4 packet carrying a PIM Hello from `src` to 224.0.0.13.
pub fn hello_v4(src: Ipv4Addr, opts: &HelloOptions) -> Vec<u8> {
    let mut pim = vec![0x20, 0, 0, 0];
    let mut opt = |kind: u16, value: &[u8]| {
        pim.extend_from_slice(&kind.to_be_bytes());
        pim.extend_from_slice(&(value.len() as u16).to_be_bytes());
        pim.extend_from_slice(value);
    };
    opt(1, &opts.holdtime.to_be_bytes());
    // LAN Prune Delay: T=0, propagation delay 500 ms, override 2500 ms.
    opt(2, &[0x01, 0xf4, 0x09, 0xc4]);
    opt(19, &opts.dr_priority.to_be_bytes());
    opt(20, &opts.generation_id.to_be_bytes());
    let c = internet_checksum(&pim);
    pim[2..4].copy_from_slice(&c.to_be_bytes());
    let mut pkt = ipv4_header(src, ALL_PIM_ROUTERS_V4, PIM_PROTO, 1, 0xc0, pim.len()).to_vec();
    pkt.extend_from_slice(&pim);
    pkt
}

/// What a packet read from the TUN (sent by the kernel/pimd) means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunPacket {
    Hello {
        from: IpAddr,
        holdtime: Option<u16>,
        generation_id: Option<u32>,
    },
    JoinPrune(JoinPrune),
    /// Anything else: IGMP, IPv6 neighbour discovery, stray traffic.
    Other,
    /// PIM that did not parse (counted, otherwise ignored).
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPrune {
    pub from: IpAddr,
    pub upstream_neighbor: IpAddr,
    pub holdtime: u16,
    pub joins: Vec<SourceGroup>,
    pub prunes: Vec<SourceGroup>,
}

struct Reader<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.off..self.off.checked_add(n)?)?;
        self.off += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn addr(&mut self, family: u8) -> Option<IpAddr> {
        match family {
            1 => self.take(4).map(|s| IpAddr::from([s[0], s[1], s[2], s[3]])),
            2 => {
                let s = self.take(16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(s);
                Some(IpAddr::from(a))
            }
            _ => None,
        }
    }
    /// Encoded-Unicast address (family, encoding type, address).
    fn enc_unicast(&mut self) -> Option<IpAddr> {
        let fam = self.u8()?;
        let _enc = self.u8()?;
        self.addr(fam)
    }
    /// Encoded-Group / Encoded-Source: family, type, flags, mask len, addr.
    fn enc_group_or_source(&mut self) -> Option<(u8, IpAddr)> {
        let fam = self.u8()?;
        let _enc = self.u8()?;
        let flags = self.u8()?;
        let _mask = self.u8()?;
        Some((flags, self.addr(fam)?))
    }
}

/// Classify a packet the kernel sent out of the TUN. Never panics.
pub fn parse_tun_packet(pkt: &[u8]) -> TunPacket {
    let Some(&first) = pkt.first() else {
        return TunPacket::Other;
    };
    let (from, pim) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if pkt.len() < 20 || ihl < 20 || pkt.len() < ihl || pkt[9] != PIM_PROTO {
                return TunPacket::Other;
            }
            (
                IpAddr::from([pkt[12], pkt[13], pkt[14], pkt[15]]),
                &pkt[ihl..],
            )
        }
        6 => {
            // Only PIM directly after the fixed header (pim6d sends no
            // extension headers on PIM messages).
            if pkt.len() < 40 || pkt[6] != PIM_PROTO {
                return TunPacket::Other;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&pkt[8..24]);
            (IpAddr::from(a), &pkt[40..])
        }
        _ => return TunPacket::Other,
    };
    if pim.len() < 4 || pim[0] >> 4 != 2 {
        return TunPacket::Malformed("PIM header");
    }
    let mut r = Reader { b: pim, off: 4 };
    match pim[0] & 0x0f {
        PIM_HELLO => {
            let mut holdtime = None;
            let mut generation_id = None;
            while let (Some(kind), Some(len)) = (r.u16(), r.u16()) {
                let Some(v) = r.take(usize::from(len)) else {
                    return TunPacket::Malformed("Hello option runs past the end");
                };
                match (kind, v.len()) {
                    (1, 2) => holdtime = Some(u16::from_be_bytes([v[0], v[1]])),
                    (20, 4) => generation_id = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
                    _ => {}
                }
            }
            TunPacket::Hello {
                from,
                holdtime,
                generation_id,
            }
        }
        PIM_JOIN_PRUNE => match parse_join_prune(&mut r, from) {
            Some(jp) => TunPacket::JoinPrune(jp),
            None => TunPacket::Malformed("Join/Prune"),
        },
        _ => TunPacket::Other,
    }
}

fn parse_join_prune(r: &mut Reader<'_>, from: IpAddr) -> Option<JoinPrune> {
    let upstream_neighbor = r.enc_unicast()?;
    let _reserved = r.u8()?;
    let ngroups = r.u8()?;
    let holdtime = r.u16()?;
    let mut jp = JoinPrune {
        from,
        upstream_neighbor,
        holdtime,
        joins: Vec::new(),
        prunes: Vec::new(),
    };
    for _ in 0..ngroups {
        let (_, group) = r.enc_group_or_source()?;
        let njoin = r.u16()?;
        let nprune = r.u16()?;
        for i in 0..u32::from(njoin) + u32::from(nprune) {
            let (flags, source) = r.enc_group_or_source()?;
            // Only plain (S,G): S bit set, neither WC nor RPT.
            if flags & 0x07 != 0x04 {
                continue;
            }
            let sg = SourceGroup { source, group };
            if i < u32::from(njoin) {
                jp.joins.push(sg);
            } else {
                jp.prunes.push(sg);
            }
        }
    }
    Some(jp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_well_formed() {
        let src = Ipv4Addr::new(169, 254, 77, 2);
        let p = hello_v4(
            src,
            &HelloOptions {
                holdtime: 105,
                dr_priority: 1,
                generation_id: 0xdeadbeef,
            },
        );
        assert_eq!(p.len(), 20 + 4 + 6 + 8 + 8 + 8);
        assert_eq!(internet_checksum(&p[..20]), 0, "IPv4 header checksum");
        assert_eq!(internet_checksum(&p[20..]), 0, "PIM checksum");
        assert_eq!(p[8], 1, "TTL 1");
        assert_eq!(p[9], 103);
        assert_eq!(&p[16..20], &[224, 0, 0, 13]);
        // It parses back as what we sent.
        assert_eq!(
            parse_tun_packet(&p),
            TunPacket::Hello {
                from: IpAddr::V4(src),
                holdtime: Some(105),
                generation_id: Some(0xdeadbeef)
            }
        );
    }

    fn join_prune_packet() -> Vec<u8> {
        // pimd 8.4.4 style: one group, one joined source (S bit), one
        // pruned (S,G,rpt) entry that must be ignored.
        let mut pim = vec![0x23, 0, 0, 0];
        pim.extend_from_slice(&[1, 0, 169, 254, 77, 2]); // upstream neighbour
        pim.extend_from_slice(&[0, 1, 0, 210]); // reserved, 1 group, holdtime 210
        pim.extend_from_slice(&[1, 0, 0, 32, 232, 1, 1, 1]); // group
        pim.extend_from_slice(&[0, 1, 0, 1]); // 1 join, 1 prune
        pim.extend_from_slice(&[1, 0, 4, 32, 198, 51, 100, 4]); // join S
        pim.extend_from_slice(&[1, 0, 5, 32, 198, 51, 100, 5]); // prune rpt
        let c = internet_checksum(&pim);
        pim[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = ipv4_header(
            Ipv4Addr::new(169, 254, 77, 1),
            ALL_PIM_ROUTERS_V4,
            103,
            1,
            0xc0,
            pim.len(),
        )
        .to_vec();
        p.extend_from_slice(&pim);
        p
    }

    #[test]
    fn join_prune_parsed() {
        let TunPacket::JoinPrune(jp) = parse_tun_packet(&join_prune_packet()) else {
            panic!("not a J/P");
        };
        assert_eq!(
            jp.upstream_neighbor,
            "169.254.77.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(jp.holdtime, 210);
        assert_eq!(
            jp.joins,
            vec![SourceGroup {
                source: "198.51.100.4".parse().unwrap(),
                group: "232.1.1.1".parse().unwrap()
            }]
        );
        assert!(jp.prunes.is_empty());
    }

    #[test]
    fn truncations_never_panic() {
        let p = join_prune_packet();
        for n in 0..p.len() {
            let r = parse_tun_packet(&p[..n]);
            if n > 24 {
                assert!(matches!(r, TunPacket::Malformed(_)), "len {n}: {r:?}");
            }
        }
        // Random-ish garbage after a valid IPv4 header with proto 103.
        for seed in 0u32..2000 {
            let mut v = p.clone();
            let i = 20 + (seed as usize * 7) % (v.len() - 20);
            v[i] = (seed.wrapping_mul(2654435761) >> 24) as u8;
            let _ = parse_tun_packet(&v);
        }
    }

    #[test]
    fn non_pim_is_other() {
        assert_eq!(parse_tun_packet(&[]), TunPacket::Other);
        let udp = ipv4_header(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(232, 1, 1, 1),
            17,
            5,
            0,
            0,
        );
        assert_eq!(parse_tun_packet(&udp), TunPacket::Other);
        assert_eq!(parse_tun_packet(&[0x60; 30]), TunPacket::Other);
    }
}
