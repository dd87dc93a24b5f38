//! DORMS `/.well-known/host-meta` as XRD XML (RFC 6415) from an HTTPS
//! server: `ingest_policy::dorms::parse_host_meta_xml`, a hand-written
//! scanner (comments, CDATA, PIs, doctype, attributes).
//!
//! Asserts: no panic; a found RESTCONF href is non-empty and trimmed (it
//! is entity-decoded, so not necessarily a substring of the input).
#![no_main]

use fuzz_support::check_host_meta;
use ingest_policy::dorms::parse_host_meta_xml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_host_meta(data, parse_host_meta_xml));
