//! MLDv2 (RFC 3810): Multicast Listener Query (ICMPv6 130, v2 form) and
//! Version 2 Multicast Listener Report (ICMPv6 143). Buffers are the ICMPv6
//! message only; the checksum includes the IPv6 pseudo-header, so parse and
//! emit take the IPv6 source and destination.

use std::net::Ipv6Addr;
use std::time::Duration;

use super::ipv6::NEXT_ICMPV6;
use super::{
    DecodeError, EncodeError, GroupRecord, be16, checksum, decode_float_code_u8,
    decode_float_code_u16, expect_type, message_out, need, v6_at,
};

pub const TYPE_QUERY: u8 = 130;
pub const TYPE_V2_REPORT: u8 = 143;
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
/// An MLDv2 query is at least 28 bytes; 24-byte queries are MLDv1.
pub const QUERY_MIN_LEN: usize = 28;
pub const REPORT_HEADER_LEN: usize = 8;
pub const RECORD_HEADER_LEN: usize = 20;

fn verify(buf: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) -> Result<(), DecodeError> {
    let len = u32::try_from(buf.len()).map_err(|_| DecodeError::Length {
        what: "ICMPv6",
        len: buf.len(),
    })?;
    let sum = checksum::accumulate(
        checksum::ipv6_pseudo_header_sum(src, dst, len, NEXT_ICMPV6),
        buf,
    );
    if checksum::finish(sum) != 0 {
        return Err(DecodeError::Checksum("ICMPv6"));
    }
    Ok(())
}

fn fill_checksum(out: &mut [u8], src: &Ipv6Addr, dst: &Ipv6Addr) {
    out[2..4].fill(0);
    let len = out.len() as u32;
    let sum = checksum::accumulate(
        checksum::ipv6_pseudo_header_sum(src, dst, len, NEXT_ICMPV6),
        out,
    );
    out[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
}

/// MLDv2 Multicast Listener Query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRepr {
    /// Raw Maximum Response Code (milliseconds, float-coded from 32768).
    pub max_resp_code: u16,
    pub group: Ipv6Addr,
    pub suppress_router_processing: bool,
    pub qrv: u8,
    /// Raw QQIC (seconds, float-coded above 127).
    pub qqic: u8,
    pub sources: Vec<Ipv6Addr>,
}

impl QueryRepr {
    /// A General Query (no group, no sources, S flag clear): what a relay
    /// sends to learn all of a gateway's state.
    pub fn general(max_resp_code: u16, qrv: u8, qqic: u8) -> Self {
        Self {
            max_resp_code,
            group: Ipv6Addr::UNSPECIFIED,
            suppress_router_processing: false,
            qrv,
            qqic,
            sources: vec![],
        }
    }

    pub fn parse(buf: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) -> Result<Self, DecodeError> {
        expect_type(buf, TYPE_QUERY, "ICMPv6")?;
        if buf.len() < QUERY_MIN_LEN {
            return Err(DecodeError::Length {
                what: "MLDv2 query",
                len: buf.len(),
            });
        }
        verify(buf, src, dst)?;
        let n = usize::from(be16(buf, 26)?);
        need(buf, QUERY_MIN_LEN + 16 * n)?;
        let sources = (0..n)
            .map(|i| v6_at(buf, QUERY_MIN_LEN + 16 * i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            max_resp_code: be16(buf, 4)?,
            group: v6_at(buf, 8)?,
            suppress_router_processing: buf[24] & 0x08 != 0,
            qrv: buf[24] & 0x07,
            qqic: buf[25],
            sources,
        })
    }

    pub fn buffer_len(&self) -> usize {
        QUERY_MIN_LEN + 16 * self.sources.len()
    }

    pub fn emit(
        &self,
        buf: &mut [u8],
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        let (out, n) = message_out(buf, len, self.sources.len(), "MLD source count")?;
        out[0] = TYPE_QUERY;
        out[1] = 0;
        out[4..6].copy_from_slice(&self.max_resp_code.to_be_bytes());
        out[6..8].fill(0);
        out[8..24].copy_from_slice(&self.group.octets());
        out[24] = (u8::from(self.suppress_router_processing) << 3) | (self.qrv & 0x07);
        out[25] = self.qqic;
        out[26..28].copy_from_slice(&n.to_be_bytes());
        for (i, s) in self.sources.iter().enumerate() {
            out[28 + 16 * i..44 + 16 * i].copy_from_slice(&s.octets());
        }
        fill_checksum(out, src, dst);
        Ok(len)
    }

    pub fn qqi(&self) -> Duration {
        Duration::from_secs(u64::from(decode_float_code_u8(self.qqic)))
    }

    pub fn max_resp_time(&self) -> Duration {
        Duration::from_millis(u64::from(decode_float_code_u16(self.max_resp_code)))
    }

    pub fn is_general(&self) -> bool {
        self.group.is_unspecified() && self.sources.is_empty()
    }
}

/// MLDv2 Multicast Listener Report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRepr {
    pub records: Vec<GroupRecord<Ipv6Addr>>,
}

impl ReportRepr {
    pub fn parse(buf: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) -> Result<Self, DecodeError> {
        need(buf, REPORT_HEADER_LEN)?;
        expect_type(buf, TYPE_V2_REPORT, "ICMPv6")?;
        verify(buf, src, dst)?;
        let count = usize::from(be16(buf, 6)?);
        let records = GroupRecord::parse_all(buf, REPORT_HEADER_LEN, count)?;
        Ok(Self { records })
    }

    pub fn buffer_len(&self) -> usize {
        REPORT_HEADER_LEN + self.records.iter().map(record_len).sum::<usize>()
    }

    pub fn emit(
        &self,
        buf: &mut [u8],
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        let (out, count) = message_out(buf, len, self.records.len(), "MLD record count")?;
        out[0] = TYPE_V2_REPORT;
        out[1] = 0;
        out[4..6].fill(0);
        out[6..8].copy_from_slice(&count.to_be_bytes());
        GroupRecord::emit_all(&self.records, out, REPORT_HEADER_LEN, "MLD source count")?;
        fill_checksum(out, src, dst);
        Ok(len)
    }
}

pub fn record_len(r: &GroupRecord<Ipv6Addr>) -> usize {
    r.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RecordType;

    fn addrs() -> (Ipv6Addr, Ipv6Addr) {
        ("fe80::1".parse().unwrap(), ALL_MLDV2_ROUTERS)
    }

    #[test]
    fn query_round_trip_and_times() {
        let (src, _) = addrs();
        let q = QueryRepr::general(10_000, 2, 125);
        let mut buf = vec![0u8; q.buffer_len()];
        assert_eq!(q.emit(&mut buf, &src, &ALL_NODES), Ok(28));
        assert_eq!(buf[0], 130);
        assert_eq!(&buf[4..6], &[0x27, 0x10]);
        assert_eq!(buf[24], 2);
        assert_eq!(buf[25], 125);
        let p = QueryRepr::parse(&buf, &src, &ALL_NODES).unwrap();
        assert_eq!(p, q);
        assert!(p.is_general());
        assert_eq!(p.qqi(), Duration::from_secs(125));
        assert_eq!(p.max_resp_time(), Duration::from_secs(10));
        // The pseudo-header matters: another destination fails the checksum.
        assert_eq!(
            QueryRepr::parse(&buf, &src, &ALL_MLDV2_ROUTERS),
            Err(DecodeError::Checksum("ICMPv6"))
        );
        assert!(matches!(
            QueryRepr::parse(&buf[..24], &src, &ALL_NODES),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn query_checksum_hand_computed() {
        // General query, MRC 0, QRV 0, QQIC 0, from :: to ff02::1.
        // Pseudo-header sum: ff02 + 0001 + len 001c + nh 003a = 0xff59
        // ICMPv6 words: 8200 -> total 0x1_8159 -> 0x815a -> ~ 0x7ea5
        let q = QueryRepr::general(0, 0, 0);
        let mut buf = [0u8; 28];
        q.emit(&mut buf, &Ipv6Addr::UNSPECIFIED, &ALL_NODES)
            .unwrap();
        assert_eq!(&buf[..4], &[0x82, 0x00, 0x7e, 0xa5]);
    }

    #[test]
    fn report_round_trip() {
        let (src, dst) = addrs();
        let r = ReportRepr {
            records: vec![
                GroupRecord {
                    record_type: RecordType::AllowNewSources,
                    group: "ff3e::8000:1".parse().unwrap(),
                    sources: vec!["2001:db8::1".parse().unwrap()],
                },
                GroupRecord {
                    record_type: RecordType::BlockOldSources,
                    group: "ff3e::8000:2".parse().unwrap(),
                    sources: vec![
                        "2001:db8::2".parse().unwrap(),
                        "2001:db8::3".parse().unwrap(),
                    ],
                },
            ],
        };
        let mut buf = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut buf, &src, &dst), Ok(8 + 36 + 52));
        assert_eq!(buf[0], 143);
        assert_eq!(&buf[6..8], &[0, 2]);
        assert_eq!(buf[8], 5);
        assert_eq!(ReportRepr::parse(&buf, &src, &dst).unwrap(), r);
        let mut cut = buf.clone();
        cut.truncate(60);
        assert!(ReportRepr::parse(&cut, &src, &dst).is_err());
    }
}
