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
use fuzz_support::check_encap_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_encap_round_trip("report", data, EncapReport::parse, |parsed, _mode| {
        let _ = parsed.src();
        match parsed {
            EncapReport::Igmp { src, report } => encap::igmpv3_report_datagram(*src, report),
            EncapReport::Mld { src, report } => encap::mldv2_report_datagram(*src, report),
        }
    });
});
