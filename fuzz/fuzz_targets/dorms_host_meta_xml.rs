//! DORMS `/.well-known/host-meta` as XRD XML (RFC 6415) from an HTTPS
//! server: `ingest_policy::dorms::parse_host_meta_xml`, a hand-written
//! scanner (comments, CDATA, PIs, doctype, attributes).
//!
//! Asserts: no panic; a found RESTCONF href is non-empty and trimmed (it
//! is entity-decoded, so not necessarily a substring of the input).
#![no_main]

use ingest_policy::dorms::parse_host_meta_xml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(href) = parse_host_meta_xml(text) {
        assert!(!href.is_empty());
        assert_eq!(href.trim(), href);
    }
});
