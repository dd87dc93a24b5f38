//! The inner IP packet of AMT Multicast Data and the IP header views:
//! `amt_gateway::wire::ip::{inspect, declared_len}`,
//! `ipv4::Ipv4Header` (options, Router Alert, payload),
//! `ipv6::Ipv6Header::upper_layer` (extension header walk), and the TTL /
//! hop-limit rewrite of the data path.
//!
//! Asserts: `inspect` agrees with the version-specific views; the reported
//! length lies within the buffer; payload and upper-layer offsets stay in
//! bounds; rewriting TTL keeps a valid IPv4 header checksum valid.
#![no_main]

use amt_gateway::wire::ip;
use amt_gateway::wire::ipv4::{self, Ipv4Header};
use amt_gateway::wire::ipv6::{self, Ipv6Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let inspected = ip::inspect(data);
    let _ = ip::declared_len(data);
    if let Ok(inner) = inspected {
        assert!(inner.len <= data.len());
    }
    if let Ok(h) = Ipv4Header::parse(data) {
        let inner = inspected.expect("inspect accepts what Ipv4Header accepts");
        assert_eq!(inner.len, h.total_len());
        assert!(h.header_len() <= h.total_len());
        assert_eq!(h.payload().len(), h.total_len() - h.header_len());
        assert_eq!(h.options().len(), h.header_len() - ipv4::MIN_HEADER_LEN);
        let _ = (h.has_router_alert(), h.is_fragment(), h.protocol());
        let valid = h.checksum_ok();
        let mut copy = data.to_vec();
        let old = ipv4::set_ttl(&mut copy, inner.ttl.wrapping_sub(1)).expect("header present");
        assert_eq!(old, inner.ttl);
        if valid {
            let again = Ipv4Header::parse(&copy).expect("still parses");
            assert!(again.checksum_ok(), "TTL rewrite broke the header checksum");
        }
    }
    if let Ok(h) = Ipv6Header::parse(data) {
        let inner = inspected.expect("inspect accepts what Ipv6Header accepts");
        assert_eq!(inner.len, h.total_len());
        assert_eq!(h.packet().len(), h.total_len());
        if let Ok(upper) = h.upper_layer() {
            assert!(upper.offset >= ipv6::HEADER_LEN);
            assert!(upper.offset <= h.total_len());
        }
        let mut copy = data.to_vec();
        assert_eq!(ipv6::set_hop_limit(&mut copy, 1), Ok(h.hop_limit()));
    }
});
