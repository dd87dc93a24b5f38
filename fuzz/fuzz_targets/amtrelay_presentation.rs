//! AMTRELAY presentation text (zone files, `dig` output, the joinfile
//! tooling): `ingest_policy::driad::AmtRelayRecord::parse_presentation`,
//! including the RFC 3597 generic `\# len hex` form.
//!
//! Asserts: a parsed record prints (`Display`) to text that parses to the
//! same record, and its wire encoding decodes to the same record.
#![no_main]

use fuzz_support::check_text_round_trip;
use ingest_policy::driad::AmtRelayRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(record) = check_text_round_trip(data, AmtRelayRecord::parse_presentation) else {
        return;
    };
    let decoded = AmtRelayRecord::decode(&record.encode()).expect("encoded RDATA decodes");
    assert_eq!(decoded, record, "wire round trip");
});
