//! A relay name in presentation text (RFC 1035 §5.1 escapes, final dot
//! optional): `ingest_policy::driad::RelayName::from_text`.
//!
//! Asserts: the printed form parses to the same name; the wire form
//! decodes to the same name and stays within 255 bytes.
#![no_main]

use ingest_policy::driad::RelayName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = RelayName::from_text(text) else {
        return;
    };
    let printed = name.to_string();
    assert_eq!(
        RelayName::from_text(&printed).as_ref(),
        Ok(&name),
        "text round trip via {printed:?}"
    );
    let wire = name.to_wire();
    assert!(wire.len() <= 255);
    assert_eq!(RelayName::from_wire(&wire).as_ref(), Ok(&name));
});
