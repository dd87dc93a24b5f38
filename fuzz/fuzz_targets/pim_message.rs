//! PIMv2 messages (RFC 7761) as pimd / pim6d send them on the TUN, after
//! the IP header: `amt_gateway::wire::pim::decode` (Hello options,
//! Join/Prune with Encoded-Unicast/Group/Source addresses, typed errors).
//!
//! Asserts: no panic; a Join/Prune lists no more (S,G)s than its encoded
//! sources (at least 8 bytes each) can hold.
#![no_main]

use amt_gateway::wire::pim::{self, PimMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match pim::decode(data) {
        Ok(PimMessage::JoinPrune(jp)) => {
            assert!((jp.joins.len() + jp.prunes.len()) * 8 <= data.len());
            let _ = jp.upstream_neighbor;
        }
        Ok(PimMessage::Hello(_) | PimMessage::Other(_)) | Err(_) => {}
    }
});
