//! A relay name in wire format (AMTRELAY type 3, uncompressed, root byte
//! optional): `ingest_policy::driad::RelayName::from_wire`.
//!
//! Asserts: from_wire -> to_wire -> from_wire is the identity, `wire_len`
//! matches, names stay within 255 bytes and 63-byte labels, and the
//! presentation text parses back to the same name.
#![no_main]

use ingest_policy::driad::RelayName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = RelayName::from_wire(data) else {
        return;
    };
    let wire = name.to_wire();
    assert_eq!(wire.len(), name.wire_len());
    assert!(wire.len() <= 255);
    assert!(name.labels().all(|l| !l.is_empty() && l.len() <= 63));
    assert_eq!(RelayName::from_wire(&wire).as_ref(), Ok(&name));
    let text = name.to_string();
    assert_eq!(
        RelayName::from_text(&text).as_ref(),
        Ok(&name),
        "text round trip via {text:?}"
    );
});
