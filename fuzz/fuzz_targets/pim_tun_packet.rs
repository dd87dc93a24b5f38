//! PIM Hello and Join/Prune packets that pimd sends out of the TUN:
//! `frr_bridge::southbound::pim::parse_tun_packet` (IPv4 and IPv6).
//!
//! Asserts: no panic; a Join/Prune lists no more (S,G)s than its encoded
//! sources (8 bytes each at least) can hold.
#![no_main]

use frr_bridge::southbound::pim::{TunPacket, parse_tun_packet};
use ingest_types::SourceGroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_tun_packet(data) {
        TunPacket::JoinPrune(jp) => {
            assert!((jp.joins.len() + jp.prunes.len()) * 8 <= data.len());
            let _: Vec<SourceGroup> = jp.joins;
        }
        TunPacket::Hello { .. } | TunPacket::Other | TunPacket::Malformed(_) => {}
    }
});
