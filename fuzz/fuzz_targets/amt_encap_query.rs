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
use fuzz_support::check_encap_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_encap_round_trip("query", data, EncapQuery::parse, |parsed, mode| {
        let _ = (
            parsed.qrv(),
            parsed.qqi(),
            parsed.max_resp_time(),
            parsed.is_general(),
        );
        // A query too large for a rebuilt datagram (IPv6 payload length)
        // may fail to encode.
        match parsed {
            EncapQuery::Igmp { src, query } => {
                encap::igmpv3_query_datagram(*src, query, mode & 2 != 0)
            }
            EncapQuery::Mld { src, query } => encap::mldv2_query_datagram(*src, query),
        }
    });
});
