//! PIMv2 (RFC 7761), the part a PIM neighbour on a point-to-point link
//! needs: Hellos (encode and decode) and Join/Prune (decode). The frr-ingest
//! sidecar is pimd's (and pim6d's) neighbour on the ingest TUN, so that
//! pimd accepts the TUN as the RPF interface toward ingested sources.
//!
//! [`decode`] takes the PIM message (after the IP header) and never panics;
//! [`hello_packet`] builds a whole IPv4 or IPv6 packet to ALL-PIM-ROUTERS
//! with the PIM checksum (over the IPv6 pseudo-header for PIMv6, RFC 7761
//! §4.9).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ingest_types::SourceGroup;

use super::checksum::{accumulate, finish};
use super::ip::IpRepr;
use super::{DecodeError, EncodeError, need, room};

/// IP protocol / next header of PIM.
pub const PROTO_PIM: u8 = 103;
/// ALL-PIM-ROUTERS.
pub const ALL_PIM_ROUTERS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 13);
pub const ALL_PIM_ROUTERS_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xd);

pub const TYPE_HELLO: u8 = 0;
pub const TYPE_JOIN_PRUNE: u8 = 3;

const HEADER_LEN: usize = 4;
const OPT_HOLDTIME: u16 = 1;
const OPT_LAN_PRUNE_DELAY: u16 = 2;
const OPT_DR_PRIORITY: u16 = 19;
const OPT_GENERATION_ID: u16 = 20;

/// The Hello options the sidecar sends (and reads back from pimd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Seconds the neighbour is kept; 0 = Goodbye.
    pub holdtime: Option<u16>,
    pub dr_priority: Option<u32>,
    /// Changes when the sender restarts.
    pub generation_id: Option<u32>,
}

/// The plain (S,G) entries of a Join/Prune; (*,G) and (S,G,rpt) entries are
/// left out (an SSM ingest has no use for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPrune {
    pub upstream_neighbor: IpAddr,
    pub holdtime: u16,
    pub joins: Vec<SourceGroup>,
    pub prunes: Vec<SourceGroup>,
}

/// A decoded PIM message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PimMessage {
    Hello(Hello),
    JoinPrune(JoinPrune),
    /// Another PIM type (Assert, Register, ...), by number.
    Other(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.saturating_add(n);
        need(self.buf, end)?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn done(&self) -> bool {
        self.at >= self.buf.len()
    }
    /// An address of PIM address family `family` (1 IPv4, 2 IPv6).
    fn addr(&mut self, family: u8, what: &'static str) -> Result<IpAddr, DecodeError> {
        match family {
            1 => {
                let s = self.take(4)?;
                Ok(IpAddr::from([s[0], s[1], s[2], s[3]]))
            }
            2 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Ok(IpAddr::from(a))
            }
            other => Err(DecodeError::AddressFamily(other, what)),
        }
    }
    /// Encoded-Unicast address: family, encoding type, address.
    fn unicast(&mut self) -> Result<IpAddr, DecodeError> {
        let family = self.u8()?;
        let _encoding = self.u8()?;
        self.addr(family, "Encoded-Unicast address")
    }
    /// Encoded-Group or Encoded-Source address: family, encoding type,
    /// flags, mask length, address. Returns (flags, address).
    fn group_or_source(&mut self, what: &'static str) -> Result<(u8, IpAddr), DecodeError> {
        let family = self.u8()?;
        let _encoding = self.u8()?;
        let flags = self.u8()?;
        let _mask_len = self.u8()?;
        Ok((flags, self.addr(family, what)?))
    }
}

/// Decodes the PIM message `pim` (the IP payload). The checksum is not
/// verified: the messages come from the local pimd through the kernel.
pub fn decode(pim: &[u8]) -> Result<PimMessage, DecodeError> {
    need(pim, HEADER_LEN)?;
    if pim[0] >> 4 != 2 {
        return Err(DecodeError::PimVersion(pim[0] >> 4));
    }
    let mut r = Reader {
        buf: pim,
        at: HEADER_LEN,
    };
    match pim[0] & 0x0f {
        TYPE_HELLO => decode_hello(&mut r).map(PimMessage::Hello),
        TYPE_JOIN_PRUNE => decode_join_prune(&mut r).map(PimMessage::JoinPrune),
        other => Ok(PimMessage::Other(other)),
    }
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Hello, DecodeError> {
    let mut hello = Hello {
        holdtime: None,
        dr_priority: None,
        generation_id: None,
    };
    while !r.done() {
        let kind = r.u16()?;
        let len = r.u16()?;
        let value = r.take(usize::from(len))?;
        match (kind, value) {
            (OPT_HOLDTIME, [a, b]) => hello.holdtime = Some(u16::from_be_bytes([*a, *b])),
            (OPT_DR_PRIORITY, [a, b, c, d]) => {
                hello.dr_priority = Some(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            (OPT_GENERATION_ID, [a, b, c, d]) => {
                hello.generation_id = Some(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn decode_join_prune(r: &mut Reader<'_>) -> Result<JoinPrune, DecodeError> {
    let upstream_neighbor = r.unicast()?;
    let _reserved = r.u8()?;
    let groups = r.u8()?;
    let holdtime = r.u16()?;
    let mut jp = JoinPrune {
        upstream_neighbor,
        holdtime,
        joins: Vec::new(),
        prunes: Vec::new(),
    };
    for _ in 0..groups {
        let (_, group) = r.group_or_source("Encoded-Group address")?;
        let joins = r.u16()?;
        let prunes = r.u16()?;
        for i in 0..u32::from(joins) + u32::from(prunes) {
            let (flags, source) = r.group_or_source("Encoded-Source address")?;
            // Only plain (S,G): S bit set, neither WC nor RPT.
            if flags & 0x07 != 0x04 {
                continue;
            }
            let sg = SourceGroup { source, group };
            if i < u32::from(joins) {
                jp.joins.push(sg);
            } else {
                jp.prunes.push(sg);
            }
        }
    }
    Ok(jp)
}

/// A Hello to send: holdtime, DR priority, generation id, and a LAN Prune
/// Delay option (T=0, propagation delay 500 ms, override interval 2500 ms:
/// RFC 7761's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloRepr {
    pub holdtime: u16,
    pub dr_priority: u32,
    pub generation_id: u32,
}

impl HelloRepr {
    /// Bytes of the PIM message.
    pub const LEN: usize = HEADER_LEN + 6 + 8 + 8 + 8;

    /// Writes the PIM message with a zero checksum; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        room(buf, Self::LEN)?;
        let out = &mut buf[..Self::LEN];
        out[..HEADER_LEN].copy_from_slice(&[0x20 | TYPE_HELLO, 0, 0, 0]);
        let mut at = HEADER_LEN;
        let mut option = |kind: u16, value: &[u8]| {
            out[at..at + 2].copy_from_slice(&kind.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_be_bytes());
            out[at + 4..at + 4 + value.len()].copy_from_slice(value);
            at += 4 + value.len();
        };
        option(OPT_HOLDTIME, &self.holdtime.to_be_bytes());
        option(OPT_LAN_PRUNE_DELAY, &[0x01, 0xf4, 0x09, 0xc4]);
        option(OPT_DR_PRIORITY, &self.dr_priority.to_be_bytes());
        option(OPT_GENERATION_ID, &self.generation_id.to_be_bytes());
        Ok(Self::LEN)
    }
}

/// A whole packet carrying `hello` from `src` to ALL-PIM-ROUTERS, TTL /
/// hop limit 1, with the PIM checksum set. `src` is an IPv4 address, or
/// for PIMv6 a link-local IPv6 address.
pub fn hello_packet(src: IpAddr, hello: &HelloRepr) -> Result<Vec<u8>, EncodeError> {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(ALL_PIM_ROUTERS_V4),
        IpAddr::V6(_) => IpAddr::V6(ALL_PIM_ROUTERS_V6),
    };
    let mut ip = IpRepr::new(src, dst, PROTO_PIM, 1, HelloRepr::LEN)
        .ok_or(EncodeError::Overflow("mixed address families"))?;
    if let IpRepr::V4(v4) = &mut ip {
        // Internetwork control, as pimd sends its own Hellos.
        v4.tos = 0xc0;
    }
    let (mut packet, hl) = ip.packet()?;
    let pim = &mut packet[hl..];
    hello.emit(pim)?;
    // The PIM checksum covers the message alone over IPv4, and the
    // pseudo-header too over IPv6 (RFC 7761 §4.9).
    let pseudo = match ip {
        IpRepr::V4(_) => 0,
        IpRepr::V6(_) => ip.pseudo_header_sum()?,
    };
    let sum = finish(accumulate(pseudo, pim));
    pim[2..4].copy_from_slice(&sum.to_be_bytes());
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::{internet_checksum, ipv6_pseudo_header_sum};
    use crate::wire::ipv4::Ipv4Header;
    use crate::wire::ipv6::Ipv6Header;

    fn hello() -> HelloRepr {
        HelloRepr {
            holdtime: 105,
            dr_priority: 1,
            generation_id: 0xdeadbeef,
        }
    }

    #[test]
    fn hello_is_well_formed() {
        let src = Ipv4Addr::new(169, 254, 77, 2);
        let p = hello_packet(IpAddr::V4(src), &hello()).unwrap();
        assert_eq!(p.len(), 20 + 4 + 6 + 8 + 8 + 8);
        assert_eq!(internet_checksum(&p[..20]), 0, "IPv4 header checksum");
        assert_eq!(p[1], 0xc0, "TOS: internetwork control");
        assert_eq!(internet_checksum(&p[20..]), 0, "PIM checksum");
        let ip = Ipv4Header::parse(&p).unwrap();
        assert_eq!((ip.ttl(), ip.protocol()), (1, PROTO_PIM));
        assert_eq!(ip.dst(), ALL_PIM_ROUTERS_V4);
        // It decodes back as what we sent.
        assert_eq!(
            decode(ip.payload()),
            Ok(PimMessage::Hello(Hello {
                holdtime: Some(105),
                dr_priority: Some(1),
                generation_id: Some(0xdeadbeef)
            }))
        );
    }

    #[test]
    fn pimv6_hello_checksum_covers_the_pseudo_header() {
        let src: Ipv6Addr = "fe80::77:2".parse().unwrap();
        let p = hello_packet(IpAddr::V6(src), &hello()).unwrap();
        let ip = Ipv6Header::parse(&p).unwrap();
        assert_eq!((ip.hop_limit(), ip.next_header()), (1, PROTO_PIM));
        assert_eq!(ip.dst(), ALL_PIM_ROUTERS_V6);
        let pim = &p[40..];
        let pseudo = ipv6_pseudo_header_sum(&src, &ALL_PIM_ROUTERS_V6, pim.len() as u32, PROTO_PIM);
        assert_eq!(finish(accumulate(pseudo, pim)), 0);
        assert!(
            matches!(decode(pim), Ok(PimMessage::Hello(h)) if h.generation_id == Some(0xdeadbeef))
        );
    }

    /// pimd 8.4.4 style: one group, one joined source (S bit), one pruned
    /// (S,G,rpt) entry that must be ignored.
    pub(crate) fn join_prune_message() -> Vec<u8> {
        let mut pim = vec![0x23, 0, 0, 0];
        pim.extend_from_slice(&[1, 0, 169, 254, 77, 2]); // upstream neighbour
        pim.extend_from_slice(&[0, 1, 0, 210]); // reserved, 1 group, holdtime 210
        pim.extend_from_slice(&[1, 0, 0, 32, 232, 1, 1, 1]); // group
        pim.extend_from_slice(&[0, 1, 0, 1]); // 1 join, 1 prune
        pim.extend_from_slice(&[1, 0, 4, 32, 198, 51, 100, 4]); // join S
        pim.extend_from_slice(&[1, 0, 5, 32, 198, 51, 100, 5]); // prune rpt
        let c = internet_checksum(&pim);
        pim[2..4].copy_from_slice(&c.to_be_bytes());
        pim
    }

    #[test]
    fn join_prune_parsed() {
        let Ok(PimMessage::JoinPrune(jp)) = decode(&join_prune_message()) else {
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
    fn truncations_and_bad_fields_are_typed_errors() {
        let m = join_prune_message();
        for n in 0..m.len() {
            assert!(decode(&m[..n]).is_err(), "len {n}");
        }
        let mut v3 = m.clone();
        v3[0] = 0x33;
        assert_eq!(decode(&v3), Err(DecodeError::PimVersion(3)));
        let mut family = m.clone();
        family[4] = 9;
        assert_eq!(
            decode(&family),
            Err(DecodeError::AddressFamily(9, "Encoded-Unicast address"))
        );
        assert_eq!(decode(&[0x22, 0, 0, 0]), Ok(PimMessage::Other(2)));
        // A Hello option that runs past the end.
        assert!(decode(&[0x20, 0, 0, 0, 0, 1, 0, 9, 0]).is_err());
        // Random-ish garbage never panics.
        for seed in 0u32..2000 {
            let mut v = m.clone();
            let i = (seed as usize * 7) % v.len();
            v[i] = (seed.wrapping_mul(2654435761) >> 24) as u8;
            let _ = decode(&v);
        }
    }
}
