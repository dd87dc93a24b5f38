//! Whole packets that the kernel hands the sidecar from the TUN (pimd's
//! PIM Hello and Join/Prune over IPv4 or IPv6, and anything else):
//! `frr_bridge::southbound::pim::parse_tun_packet`, and the Hello the
//! sidecar sends (`amt_gateway::wire::pim::hello_packet`).
//!
//! Input: one mode byte, then the packet. Mode bit 0 set: the rest is read
//! as Hello fields and source address instead; the sidecar's own Hello is
//! built and parsed back.
//! Asserts: no panic; PIM is reported as coming from the IP source; a
//! Join/Prune lists no more (S,G)s than the packet can hold; our own Hello
//! parses back to its fields and source.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use amt_gateway::wire::pim::{HelloRepr, hello_packet};
use frr_bridge::southbound::pim::{TunPacket, parse_tun_packet};
use libfuzzer_sys::fuzz_target;

fn ip_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?)),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 != 0 {
        let mut f = [0u8; 26];
        let n = rest.len().min(f.len());
        f[..n].copy_from_slice(&rest[..n]);
        let repr = HelloRepr {
            holdtime: u16::from_be_bytes([f[0], f[1]]),
            dr_priority: u32::from_be_bytes([f[2], f[3], f[4], f[5]]),
            generation_id: u32::from_be_bytes([f[6], f[7], f[8], f[9]]),
        };
        let src = if mode & 2 == 0 {
            IpAddr::V4(Ipv4Addr::new(f[10], f[11], f[12], f[13]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&f[10..26]);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        let packet = hello_packet(src, &repr).expect("a Hello always fits");
        match parse_tun_packet(&packet) {
            TunPacket::Hello { from, hello } => {
                assert_eq!(from, src);
                assert_eq!(hello.holdtime, Some(repr.holdtime));
                assert_eq!(hello.dr_priority, Some(repr.dr_priority));
                assert_eq!(hello.generation_id, Some(repr.generation_id));
            }
            other => panic!("own Hello read as {other:?}"),
        }
        return;
    }
    match parse_tun_packet(rest) {
        TunPacket::Hello { from, .. } => assert_eq!(Some(from), ip_source(rest)),
        TunPacket::JoinPrune { from, join_prune } => {
            assert_eq!(Some(from), ip_source(rest));
            assert!((join_prune.joins.len() + join_prune.prunes.len()) * 8 <= rest.len());
        }
        TunPacket::Other | TunPacket::Malformed(_) => {}
    }
});
