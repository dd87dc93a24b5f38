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
use fuzz_support::{fix_icmpv6_checksum, take_ipv6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (src, rest) = take_ipv6(rest);
    let (dst, message) = take_ipv6(rest);
    let mut message = message.to_vec();
    if mode & 1 != 0 {
        fix_icmpv6_checksum(&mut message, &src, &dst);
    }
    if mode & 2 != 0 {
        let Ok(report) = ReportRepr::parse(&message, &src, &dst) else {
            return;
        };
        let mut out = vec![0u8; report.buffer_len()];
        let Ok(len) = report.emit(&mut out, &src, &dst) else {
            return;
        };
        assert_eq!(len, out.len());
        assert_eq!(ReportRepr::parse(&out, &src, &dst).as_ref(), Ok(&report));
        assert!(report.emit(&mut out[..len - 1], &src, &dst).is_err());
    } else {
        let Ok(query) = QueryRepr::parse(&message, &src, &dst) else {
            return;
        };
        let _ = (query.qqi(), query.max_resp_time(), query.is_general());
        let mut out = vec![0u8; query.buffer_len()];
        let Ok(len) = query.emit(&mut out, &src, &dst) else {
            return;
        };
        assert_eq!(len, out.len());
        assert_eq!(QueryRepr::parse(&out, &src, &dst).as_ref(), Ok(&query));
        assert!(query.emit(&mut out[..len - 1], &src, &dst).is_err());
    }
});
