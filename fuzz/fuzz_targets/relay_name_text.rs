//! A relay name in presentation text (RFC 1035 §5.1 escapes, final dot
//! optional): `ingest_policy::driad::RelayName::from_text`.
//!
//! Asserts: the printed form parses to the same name; the wire form
//! decodes to the same name and stays within 255 bytes.
#![no_main]

use fuzz_support::check_text_round_trip;
use ingest_policy::driad::RelayName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(name) = check_text_round_trip(data, RelayName::from_text) else {
        return;
    };
    let wire = name.to_wire();
    assert!(wire.len() <= 255);
    assert_eq!(RelayName::from_wire(&wire).as_ref(), Ok(&name));
});
