//! IGMPv3 messages alone (the IP payload): Membership Query and Version 3
//! Membership Report, `amt_gateway::wire::igmp::{QueryRepr, ReportRepr}`.
//!
//! Input: one mode byte (bit 0: repair the IGMP checksum first; bit 1:
//! parse as a report, else as a query), then the message.
//! Asserts: parse -> emit -> parse is the identity, `emit` writes exactly
//! `buffer_len` bytes and fails cleanly on a short buffer.
#![no_main]

use amt_gateway::wire::igmp::{QueryRepr, ReportRepr};
use fuzz_support::{check_emit_round_trip, fix_internet_checksum, repaired};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    let message = repaired(mode, message, |m| fix_internet_checksum(m, 2));
    if mode & 2 != 0 {
        let Ok(report) = ReportRepr::parse(&message) else {
            return;
        };
        let emit = |out: &mut [u8]| report.emit(out);
        check_emit_round_trip(&report, report.buffer_len(), emit, ReportRepr::parse);
    } else {
        let Ok(query) = QueryRepr::parse(&message) else {
            return;
        };
        let _ = (query.qqi(), query.max_resp_time(), query.is_general());
        let emit = |out: &mut [u8]| query.emit(out);
        check_emit_round_trip(&query, query.buffer_len(), emit, QueryRepr::parse);
    }
});
