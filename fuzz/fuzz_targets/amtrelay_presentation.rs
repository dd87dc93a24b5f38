//! AMTRELAY presentation text (zone files, `dig` output, the joinfile
//! tooling): `ingest_policy::driad::AmtRelayRecord::parse_presentation`,
//! including the RFC 3597 generic `\# len hex` form.
//!
//! Asserts: a parsed record prints (`Display`) to text that parses to the
//! same record, and its wire encoding decodes to the same record.
#![no_main]

use ingest_policy::driad::AmtRelayRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = AmtRelayRecord::parse_presentation(text) else {
        return;
    };
    let printed = record.to_string();
    let again = AmtRelayRecord::parse_presentation(&printed)
        .unwrap_or_else(|e| panic!("own presentation {printed:?} does not parse: {e}"));
    assert_eq!(again, record, "presentation round trip via {printed:?}");
    let decoded = AmtRelayRecord::decode(&record.encode()).expect("encoded RDATA decodes");
    assert_eq!(decoded, record, "wire round trip");
});
