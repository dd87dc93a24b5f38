//! IGMPv3 (RFC 3376): Membership Query (type 0x11, v3 form) and Version 3
//! Membership Report (type 0x22). Buffers are the IGMP message only (the IP
//! payload); the checksum covers exactly that.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{
    DecodeError, EncodeError, GroupRecord, be16, checksum, decode_float_code_u8, expect_type,
    message_out, need, v4_at,
};

pub const TYPE_MEMBERSHIP_QUERY: u8 = 0x11;
pub const TYPE_V3_REPORT: u8 = 0x22;
pub const ALL_SYSTEMS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
pub const ALL_IGMPV3_ROUTERS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 22);
/// An IGMPv3 query is at least 12 bytes; 8-byte queries are IGMPv1/v2.
pub const QUERY_MIN_LEN: usize = 12;
pub const REPORT_HEADER_LEN: usize = 8;
pub const RECORD_HEADER_LEN: usize = 8;

/// IGMPv3 Membership Query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRepr {
    /// Raw Max Resp Code (units of 1/10 s, float-coded above 127).
    pub max_resp_code: u8,
    pub group: Ipv4Addr,
    pub suppress_router_processing: bool,
    /// Querier's Robustness Variable (0 means "use the default").
    pub qrv: u8,
    /// Raw Querier's Query Interval Code (seconds, float-coded above 127).
    pub qqic: u8,
    pub sources: Vec<Ipv4Addr>,
}

impl QueryRepr {
    /// A General Query (no group, no sources, S flag clear): what a relay
    /// sends to learn all of a gateway's state.
    pub fn general(max_resp_code: u8, qrv: u8, qqic: u8) -> Self {
        Self {
            max_resp_code,
            group: Ipv4Addr::UNSPECIFIED,
            suppress_router_processing: false,
            qrv,
            qqic,
            sources: vec![],
        }
    }

    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        expect_type(buf, TYPE_MEMBERSHIP_QUERY, "IGMP")?;
        if buf.len() < QUERY_MIN_LEN {
            // IGMPv1/v2 query: not usable for source-specific state.
            return Err(DecodeError::Length {
                what: "IGMPv3 query",
                len: buf.len(),
            });
        }
        if checksum::internet_checksum(buf) != 0 {
            return Err(DecodeError::Checksum("IGMP"));
        }
        let n = usize::from(be16(buf, 10)?);
        need(buf, QUERY_MIN_LEN + 4 * n)?;
        let mut sources = Vec::with_capacity(n);
        for i in 0..n {
            sources.push(v4_at(buf, QUERY_MIN_LEN + 4 * i)?);
        }
        Ok(Self {
            max_resp_code: buf[1],
            group: v4_at(buf, 4)?,
            suppress_router_processing: buf[8] & 0x08 != 0,
            qrv: buf[8] & 0x07,
            qqic: buf[9],
            sources,
        })
    }

    pub fn buffer_len(&self) -> usize {
        QUERY_MIN_LEN + 4 * self.sources.len()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        let (out, n) = message_out(buf, len, self.sources.len(), "IGMP source count")?;
        out[0] = TYPE_MEMBERSHIP_QUERY;
        out[1] = self.max_resp_code;
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&self.group.octets());
        out[8] = (u8::from(self.suppress_router_processing) << 3) | (self.qrv & 0x07);
        out[9] = self.qqic;
        out[10..12].copy_from_slice(&n.to_be_bytes());
        for (i, s) in self.sources.iter().enumerate() {
            out[12 + 4 * i..16 + 4 * i].copy_from_slice(&s.octets());
        }
        let sum = checksum::internet_checksum(out);
        out[2..4].copy_from_slice(&sum.to_be_bytes());
        Ok(len)
    }

    /// Querier's Query Interval.
    pub fn qqi(&self) -> Duration {
        Duration::from_secs(u64::from(decode_float_code_u8(self.qqic)))
    }

    /// Maximum Response Time (Max Resp Code is in tenths of a second).
    pub fn max_resp_time(&self) -> Duration {
        Duration::from_millis(100 * u64::from(decode_float_code_u8(self.max_resp_code)))
    }

    pub fn is_general(&self) -> bool {
        self.group.is_unspecified() && self.sources.is_empty()
    }
}

/// IGMPv3 Membership Report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRepr {
    pub records: Vec<GroupRecord<Ipv4Addr>>,
}

impl ReportRepr {
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, REPORT_HEADER_LEN)?;
        expect_type(buf, TYPE_V3_REPORT, "IGMP")?;
        if checksum::internet_checksum(buf) != 0 {
            return Err(DecodeError::Checksum("IGMP"));
        }
        let count = usize::from(be16(buf, 6)?);
        let records = GroupRecord::parse_all(buf, REPORT_HEADER_LEN, count)?;
        Ok(Self { records })
    }

    pub fn buffer_len(&self) -> usize {
        REPORT_HEADER_LEN + self.records.iter().map(record_len).sum::<usize>()
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        let (out, count) = message_out(buf, len, self.records.len(), "IGMP record count")?;
        out[0] = TYPE_V3_REPORT;
        out[1..6].fill(0);
        out[6..8].copy_from_slice(&count.to_be_bytes());
        GroupRecord::emit_all(&self.records, out, REPORT_HEADER_LEN, "IGMP source count")?;
        let sum = checksum::internet_checksum(out);
        out[2..4].copy_from_slice(&sum.to_be_bytes());
        Ok(len)
    }
}

/// Encoded size of one record (no auxiliary data).
pub fn record_len(r: &GroupRecord<Ipv4Addr>) -> usize {
    r.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RecordType;

    /// The report of the sample capture: ALLOW (232.1.1.1, 192.0.2.1).
    fn allow_one() -> ReportRepr {
        ReportRepr {
            records: vec![GroupRecord {
                record_type: RecordType::AllowNewSources,
                group: Ipv4Addr::new(232, 1, 1, 1),
                sources: vec![Ipv4Addr::new(192, 0, 2, 1)],
            }],
        }
    }

    /// Recomputes the IGMP checksum of an edited message.
    fn set_checksum(message: &mut [u8]) {
        message[2..4].fill(0);
        let sum = checksum::internet_checksum(message);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn general_query_hand_bytes() {
        let q = QueryRepr::general(100, 2, 125);
        let mut buf = [0u8; 12];
        assert_eq!(q.emit(&mut buf), Ok(12));
        // 11 64 csum 00000000 02 7d 0000 ; sum = 1164 + 027d = 13e1 -> ~ = ec1e
        assert_eq!(buf, [0x11, 0x64, 0xec, 0x1e, 0, 0, 0, 0, 0x02, 0x7d, 0, 0]);
        let p = QueryRepr::parse(&buf).unwrap();
        assert_eq!(p, q);
        assert!(p.is_general());
        assert_eq!(p.qqi(), Duration::from_secs(125));
        assert_eq!(p.max_resp_time(), Duration::from_secs(10));
    }

    #[test]
    fn query_float_qqic_and_sources_round_trip() {
        let q = QueryRepr {
            max_resp_code: 0x8f,
            group: Ipv4Addr::new(232, 1, 1, 1),
            suppress_router_processing: true,
            qrv: 7,
            qqic: 0x91,
            sources: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
        };
        let mut buf = vec![0u8; q.buffer_len()];
        q.emit(&mut buf).unwrap();
        assert_eq!(buf.len(), 20);
        assert_eq!(buf[8], 0x0f);
        let p = QueryRepr::parse(&buf).unwrap();
        assert_eq!(p, q);
        assert_eq!(p.qqi(), Duration::from_secs(272));
        assert_eq!(p.max_resp_time(), Duration::from_millis(24_800));
        assert!(!p.is_general());
    }

    #[test]
    fn query_rejects() {
        let q = QueryRepr::general(100, 2, 125);
        let mut buf = [0u8; 12];
        q.emit(&mut buf).unwrap();
        assert!(matches!(
            QueryRepr::parse(&buf[..8]),
            Err(DecodeError::Length { .. })
        ));
        let mut bad = buf;
        bad[9] ^= 1;
        assert_eq!(QueryRepr::parse(&bad), Err(DecodeError::Checksum("IGMP")));
        let mut wrong_type = buf;
        wrong_type[0] = 0x22;
        assert!(matches!(
            QueryRepr::parse(&wrong_type),
            Err(DecodeError::MessageType { .. })
        ));
        // Source count larger than the buffer (checksum fixed up).
        let mut too_many = buf;
        too_many[11] = 3;
        set_checksum(&mut too_many);
        assert!(matches!(
            QueryRepr::parse(&too_many),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn report_hand_bytes_one_allow_record() {
        // The 20-byte report in the sample capture: one record, one source.
        let r = allow_one();
        let mut buf = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut buf), Ok(20));
        // words: 2200 0000 0000 0001 0500 0001 e801 0101 c000 0201
        // sum = 0x2200+1+0x0500+1+0xe801+0x0101+0xc000+0x0201 = 0x1_d205 -> 0xd206 -> ~ 0x2df9
        assert_eq!(
            buf,
            [
                0x22, 0, 0x2d, 0xf9, 0, 0, 0, 1, 5, 0, 0, 1, 232, 1, 1, 1, 192, 0, 2, 1
            ]
        );
        assert_eq!(ReportRepr::parse(&buf).unwrap(), r);
    }

    #[test]
    fn report_round_trip_many_records_and_aux_skip() {
        let r = ReportRepr {
            records: vec![
                GroupRecord {
                    record_type: RecordType::ModeIsInclude,
                    group: Ipv4Addr::new(232, 1, 1, 1),
                    sources: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 9)],
                },
                GroupRecord {
                    record_type: RecordType::BlockOldSources,
                    group: Ipv4Addr::new(232, 1, 1, 2),
                    sources: vec![Ipv4Addr::new(198, 51, 100, 7)],
                },
            ],
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf).unwrap();
        assert_eq!(ReportRepr::parse(&buf).unwrap(), r);

        // A record with 1 word of auxiliary data is skipped correctly.
        let mut with_aux = buf[..8].to_vec();
        with_aux.extend_from_slice(&[1, 1, 0, 0, 232, 9, 9, 9, 0xde, 0xad, 0xbe, 0xef]);
        with_aux.extend_from_slice(&buf[8..]);
        with_aux[7] = 3;
        set_checksum(&mut with_aux);
        let p = ReportRepr::parse(&with_aux).unwrap();
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[0].group, Ipv4Addr::new(232, 9, 9, 9));
        assert!(p.records[0].sources.is_empty());
        assert_eq!(p.records[1..], r.records[..]);
    }

    #[test]
    fn report_truncated_record() {
        let r = allow_one();
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf).unwrap();
        let mut cut = buf[..16].to_vec();
        set_checksum(&mut cut);
        assert!(matches!(
            ReportRepr::parse(&cut),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
