//! pimd's / pim6d's `show ip pim join json` reply (FRR 8.4 to 10.x, any
//! nesting): `frr_bridge::frr::joins::parse_join_json`.
//!
//! Asserts: no panic, bounded work (the walk has a depth limit); every
//! joined (S,G) is a valid channel (`SourceGroup::new` accepts it); each
//! has at least one interface, sorted and without duplicates.
#![no_main]

use frr_bridge::frr::joins::parse_join_json;
use ingest_types::SourceGroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_join_json(text) else {
        return;
    };
    for (sg, interfaces) in &parsed.joins {
        assert_eq!(SourceGroup::new(sg.source, sg.group).as_ref(), Ok(sg));
        assert!(!interfaces.is_empty());
        assert!(interfaces.windows(2).all(|w| w[0] < w[1]), "{interfaces:?}");
    }
});
