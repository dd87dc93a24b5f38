//! The joinfile (`S,G[,population]` lines, written by people and tools):
//! `ingest_policy::joinfile::Joinfile::parse`.
//!
//! Asserts: parsing never fails as a whole and every error names a line
//! that exists; every accepted (S,G) passes `check_sg`; the canonical
//! `render` parses back without errors to the same set, and rendering that
//! gives the same text (a fixed point).
#![no_main]

use ingest_policy::joinfile::{Joinfile, check_sg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Joinfile::parse(text);
    let lines = text.lines().count();
    for error in &parsed.errors {
        assert!(error.line >= 1 && error.line <= lines, "{error:?}");
    }
    for entry in parsed.joinfile.iter() {
        assert_eq!(check_sg(entry.sg.source, entry.sg.group), Ok(()));
    }
    let rendered = parsed.joinfile.render();
    let again = Joinfile::parse(&rendered);
    assert!(
        again.errors.is_empty(),
        "own rendering rejected: {:?}",
        again.errors
    );
    assert_eq!(
        again.joinfile, parsed.joinfile,
        "render -> parse changed the set"
    );
    assert_eq!(again.joinfile.render(), rendered);
});
