//! DORMS host-meta in its JSON form (`host-meta.json`):
//! `ingest_policy::dorms::parse_host_meta_json`.
//!
//! Asserts: no panic; a found RESTCONF href is non-empty and trimmed.
#![no_main]

use ingest_policy::dorms::parse_host_meta_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(href) = parse_host_meta_json(text) {
        assert!(!href.is_empty());
        assert_eq!(href.trim(), href);
    }
});
