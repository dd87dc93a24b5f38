//! DORMS host-meta in its JSON form (`host-meta.json`):
//! `ingest_policy::dorms::parse_host_meta_json`.
//!
//! Asserts: no panic; a found RESTCONF href is non-empty and trimmed.
#![no_main]

use fuzz_support::check_host_meta;
use ingest_policy::dorms::parse_host_meta_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_host_meta(data, parse_host_meta_json));
