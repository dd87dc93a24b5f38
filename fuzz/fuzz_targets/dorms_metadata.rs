//! DORMS/CBACC flow metadata JSON (RESTCONF responses of several layouts):
//! `ingest_policy::dorms::parse_metadata`.
//!
//! Input: one byte picking the (S,G) asked about (channels of the lab's
//! `lab-data/dorms/flows`, IPv4 and IPv6), then the response body.
//! Asserts: no panic; a rate read from `max-speed` (kbit/s) is a whole
//! number of kbit/s in bit/s.
#![no_main]

use ingest_policy::dorms::{RateField, parse_metadata};
use ingest_types::SourceGroup;
use libfuzzer_sys::fuzz_target;

const CHANNELS: [(&str, &str); 4] = [
    ("198.51.100.4", "232.1.1.1"),
    ("198.51.100.8", "232.10.1.6"),
    ("203.0.113.4", "232.1.1.1"),
    ("2001:db8:5100::4", "ff3e::8000:1"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let (s, g) = CHANNELS[usize::from(pick) % CHANNELS.len()];
    let sg = SourceGroup {
        source: s.parse().unwrap(),
        group: g.parse().unwrap(),
    };
    if let Ok(meta) = parse_metadata(text, sg)
        && meta.rate_field == RateField::MaxSpeedKbps
    {
        assert_eq!(meta.max_bitrate % 1000, 0, "{meta:?}");
    }
});
