//! AMTRELAY RDATA from a DNS answer (RFC 8777 §4.2, RR type 260):
//! `ingest_policy::driad::AmtRelayRecord::decode`.
//!
//! Asserts: decode -> encode -> decode is the identity and the encoding is
//! a fixed point; the presentation text (`Display`) parses back to the same
//! record.
#![no_main]

use ingest_policy::driad::AmtRelayRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = AmtRelayRecord::decode(data) else {
        return;
    };
    let wire = record.encode();
    let again = AmtRelayRecord::decode(&wire).expect("encoded RDATA decodes");
    assert_eq!(
        again, record,
        "decode -> encode -> decode changed the record"
    );
    assert_eq!(again.encode(), wire, "encoding is not a fixed point");
    let text = record.to_string();
    let parsed = AmtRelayRecord::parse_presentation(&text)
        .unwrap_or_else(|e| panic!("own presentation {text:?} does not parse: {e}"));
    assert_eq!(parsed, record, "presentation round trip via {text:?}");
});
