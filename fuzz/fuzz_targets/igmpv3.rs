//! IGMPv3 messages alone (the IP payload): Membership Query and Version 3
//! Membership Report, `amt_gateway::wire::igmp::{QueryRepr, ReportRepr}`.
//!
//! Input: one mode byte (bit 0: repair the IGMP checksum first; bit 1:
//! parse as a report, else as a query), then the message.
//! Asserts: parse -> emit -> parse is the identity, `emit` writes exactly
//! `buffer_len` bytes and fails cleanly on a short buffer.
#![no_main]

use amt_gateway::wire::igmp::{QueryRepr, ReportRepr};
use fuzz_support::fix_internet_checksum;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    let mut message = message.to_vec();
    if mode & 1 != 0 {
        fix_internet_checksum(&mut message, 2);
    }
    if mode & 2 != 0 {
        let Ok(report) = ReportRepr::parse(&message) else {
            return;
        };
        let mut out = vec![0u8; report.buffer_len()];
        let Ok(len) = report.emit(&mut out) else {
            return; // more than 65535 records or sources: an error, not a panic
        };
        assert_eq!(len, out.len());
        assert_eq!(ReportRepr::parse(&out).as_ref(), Ok(&report));
        assert!(report.emit(&mut out[..len - 1]).is_err());
    } else {
        let Ok(query) = QueryRepr::parse(&message) else {
            return;
        };
        let _ = (query.qqi(), query.max_resp_time(), query.is_general());
        let mut out = vec![0u8; query.buffer_len()];
        let Ok(len) = query.emit(&mut out) else {
            return;
        };
        assert_eq!(len, out.len());
        assert_eq!(QueryRepr::parse(&out).as_ref(), Ok(&query));
        assert!(query.emit(&mut out[..len - 1]).is_err());
    }
});
