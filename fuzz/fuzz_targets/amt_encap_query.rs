//! The IP datagram inside an AMT Membership Query: IPv4 + IGMPv3 query or
//! IPv6 (+ extension headers) + MLDv2 query,
//! `amt_gateway::wire::encap::EncapQuery::parse`.
//!
//! Input: one mode byte (bit 0: repair the IPv4 header, IGMP and ICMPv6
//! checksums first), then the datagram.
//! Asserts: a parsed query rebuilt with the gateway's own encoder
//! (`igmpv3_query_datagram` / `mldv2_query_datagram`) parses to the same
//! query; the derived timers do not panic.
#![no_main]

use amt_gateway::wire::encap::{self, EncapQuery};
use fuzz_support::fix_datagram_checksums;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, datagram)) = data.split_first() else {
        return;
    };
    let mut datagram = datagram.to_vec();
    if mode & 1 != 0 {
        fix_datagram_checksums(&mut datagram);
    }
    let Ok(parsed) = EncapQuery::parse(&datagram) else {
        return;
    };
    let _ = (
        parsed.qrv(),
        parsed.qqi(),
        parsed.max_resp_time(),
        parsed.is_general(),
    );
    let rebuilt = match &parsed {
        EncapQuery::Igmp { src, query } => encap::igmpv3_query_datagram(*src, query, mode & 2 != 0),
        EncapQuery::Mld { src, query } => encap::mldv2_query_datagram(*src, query),
    };
    // A query too large for a rebuilt datagram (IPv6 payload length) may
    // fail to encode; that is an error value, not a panic.
    if let Ok(bytes) = rebuilt {
        let again = EncapQuery::parse(&bytes).expect("a rebuilt query parses");
        assert_eq!(again, parsed, "parse -> rebuild -> parse changed the query");
    }
});
