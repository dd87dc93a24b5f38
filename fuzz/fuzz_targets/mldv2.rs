//! MLDv2 messages alone (the ICMPv6 message): Multicast Listener Query and
//! Version 2 Report, `amt_gateway::wire::mld::{QueryRepr, ReportRepr}`.
//! The checksum covers the IPv6 pseudo-header, so the addresses are part
//! of the input.
//!
//! Input: one mode byte (bit 0: repair the ICMPv6 checksum first; bit 1:
//! parse as a report, else as a query), 16 bytes source, 16 bytes
//! destination, then the message.
//! Asserts: parse -> emit -> parse is the identity, `emit` writes exactly
//! `buffer_len` bytes and fails cleanly on a short buffer.
#![no_main]

use amt_gateway::wire::mld::{QueryRepr, ReportRepr};
use fuzz_support::{check_emit_round_trip, fix_icmpv6_checksum, repaired, take_ipv6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (src, rest) = take_ipv6(rest);
    let (dst, message) = take_ipv6(rest);
    let message = repaired(mode, message, |m| fix_icmpv6_checksum(m, &src, &dst));
    if mode & 2 != 0 {
        let Ok(report) = ReportRepr::parse(&message, &src, &dst) else {
            return;
        };
        let emit = |out: &mut [u8]| report.emit(out, &src, &dst);
        let parse = |out: &[u8]| ReportRepr::parse(out, &src, &dst);
        check_emit_round_trip(&report, report.buffer_len(), emit, parse);
    } else {
        let Ok(query) = QueryRepr::parse(&message, &src, &dst) else {
            return;
        };
        let _ = (query.qqi(), query.max_resp_time(), query.is_general());
        let emit = |out: &mut [u8]| query.emit(out, &src, &dst);
        let parse = |out: &[u8]| QueryRepr::parse(out, &src, &dst);
        check_emit_round_trip(&query, query.buffer_len(), emit, parse);
    }
});
