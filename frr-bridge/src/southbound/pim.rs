//! The little PIMv2 (RFC 7761) the sidecar speaks on the TUN: it is pimd's
//! PIM neighbour there, so pimd accepts the TUN as the RPF interface toward
//! every ingested source (pimd 8.4 needs a neighbour at the RPF next hop).
//! It sends Hellos and reads pimd's Hellos and Join/Prunes, which it uses
//! only as triggers: the vty join state stays the source of truth (pimd
//! does not re-send Joins after a neighbour restart, research §7.2).
//!
//! The codec is `amt_gateway::wire::pim`; this module only says what a
//! packet read from the TUN means to the sidecar.

use std::net::IpAddr;

use amt_gateway::wire::pim::{self, Hello, JoinPrune, PimMessage};
use amt_gateway::wire::{DecodeError, ipv4, ipv6};

/// What a packet read from the TUN (sent by the kernel/pimd) means to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunPacket {
    Hello {
        from: IpAddr,
        hello: Hello,
    },
    JoinPrune {
        from: IpAddr,
        join_prune: JoinPrune,
    },
    /// Anything else: IGMP, IPv6 neighbour discovery, stray traffic, other
    /// PIM messages.
    Other,
    /// PIM that did not decode (counted, otherwise ignored).
    Malformed(DecodeError),
}

/// Classifies a packet the kernel sent out of the TUN. Never panics.
pub fn parse_tun_packet(packet: &[u8]) -> TunPacket {
    let (from, message) = match packet.first().map(|b| b >> 4) {
        Some(4) => match ipv4::Ipv4Header::parse(packet) {
            Ok(ip) if ip.protocol() == pim::PROTO_PIM && !ip.is_fragment() => {
                (IpAddr::V4(ip.src()), ip.payload())
            }
            Ok(_) => return TunPacket::Other,
            Err(e) => return TunPacket::Malformed(e),
        },
        Some(6) => match ipv6::Ipv6Header::parse(packet) {
            // Only PIM directly after the fixed header (pim6d sends no
            // extension headers on PIM messages).
            Ok(ip) if ip.next_header() == pim::PROTO_PIM => (
                IpAddr::V6(ip.src()),
                packet
                    .get(ipv6::HEADER_LEN..ip.total_len())
                    .unwrap_or_default(),
            ),
            Ok(_) => return TunPacket::Other,
            Err(e) => return TunPacket::Malformed(e),
        },
        _ => return TunPacket::Other,
    };
    match pim::decode(message) {
        Ok(PimMessage::Hello(hello)) => TunPacket::Hello { from, hello },
        Ok(PimMessage::JoinPrune(join_prune)) => TunPacket::JoinPrune { from, join_prune },
        Ok(PimMessage::Other(_)) => TunPacket::Other,
        Err(e) => TunPacket::Malformed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amt_gateway::wire::checksum::internet_checksum;
    use amt_gateway::wire::ipv4::{Ipv4Repr, PROTO_UDP};
    use amt_gateway::wire::pim::{ALL_PIM_ROUTERS_V4, HelloRepr, PROTO_PIM, hello_packet};
    use std::net::Ipv4Addr;

    fn ipv4_packet(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let ip = Ipv4Repr {
            src: Ipv4Addr::new(169, 254, 77, 1),
            dst: ALL_PIM_ROUTERS_V4,
            protocol,
            ttl: 1,
            tos: 0xc0,
            router_alert: false,
            payload_len: payload.len(),
        };
        let mut p = vec![0u8; ip.total_len()];
        let hl = ip.emit(&mut p).unwrap();
        p[hl..].copy_from_slice(payload);
        p
    }

    /// pimd 8.4.4 style: one group, one joined source (S bit), one pruned
    /// (S,G,rpt) entry that must be ignored.
    fn join_prune_packet() -> Vec<u8> {
        let mut pim = vec![0x23, 0, 0, 0];
        pim.extend_from_slice(&[1, 0, 169, 254, 77, 2]);
        pim.extend_from_slice(&[0, 1, 0, 210]);
        pim.extend_from_slice(&[1, 0, 0, 32, 232, 1, 1, 1]);
        pim.extend_from_slice(&[0, 1, 0, 1]);
        pim.extend_from_slice(&[1, 0, 4, 32, 198, 51, 100, 4]);
        pim.extend_from_slice(&[1, 0, 5, 32, 198, 51, 100, 5]);
        let c = internet_checksum(&pim);
        pim[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4_packet(PROTO_PIM, &pim)
    }

    #[test]
    fn hello_is_well_formed() {
        let src = Ipv4Addr::new(169, 254, 77, 2);
        let p = hello_packet(
            IpAddr::V4(src),
            &HelloRepr {
                holdtime: 105,
                dr_priority: 1,
                generation_id: 0xdeadbeef,
            },
        )
        .unwrap();
        assert_eq!(
            parse_tun_packet(&p),
            TunPacket::Hello {
                from: IpAddr::V4(src),
                hello: Hello {
                    holdtime: Some(105),
                    dr_priority: Some(1),
                    generation_id: Some(0xdeadbeef)
                }
            }
        );
    }

    #[test]
    fn join_prune_parsed() {
        let TunPacket::JoinPrune { from, join_prune } = parse_tun_packet(&join_prune_packet())
        else {
            panic!("not a J/P");
        };
        assert_eq!(from, "169.254.77.1".parse::<IpAddr>().unwrap());
        assert_eq!(join_prune.holdtime, 210);
        assert_eq!(join_prune.joins.len(), 1);
        assert!(join_prune.prunes.is_empty());
    }

    #[test]
    fn truncations_never_panic() {
        let p = join_prune_packet();
        for n in 0..p.len() {
            let r = parse_tun_packet(&p[..n]);
            if n > 0 {
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
        assert_eq!(
            parse_tun_packet(&ipv4_packet(PROTO_UDP, &[])),
            TunPacket::Other
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 58;
        assert_eq!(parse_tun_packet(&v6), TunPacket::Other);
    }
}
