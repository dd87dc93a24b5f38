//! The IP datagram inside an AMT Membership Update (what a relay receives
//! from gateways): IPv4 + IGMPv3 report or IPv6 + MLDv2 report,
//! `amt_gateway::wire::encap::EncapReport::parse`.
//!
//! Input: one mode byte (bit 0: repair the checksums first), then the
//! datagram.
//! Asserts: a parsed report rebuilt with `igmpv3_report_datagram` /
//! `mldv2_report_datagram` parses to the same report (auxiliary data is
//! dropped, records kept in order).
#![no_main]

use amt_gateway::wire::encap::{self, EncapReport};
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
    let Ok(parsed) = EncapReport::parse(&datagram) else {
        return;
    };
    let _ = parsed.src();
    let rebuilt = match &parsed {
        EncapReport::Igmp { src, report } => encap::igmpv3_report_datagram(*src, report),
        EncapReport::Mld { src, report } => encap::mldv2_report_datagram(*src, report),
    };
    if let Ok(bytes) = rebuilt {
        let again = EncapReport::parse(&bytes).expect("a rebuilt report parses");
        assert_eq!(
            again, parsed,
            "parse -> rebuild -> parse changed the report"
        );
    }
});
