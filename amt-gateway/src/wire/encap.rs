//! The complete IP datagrams that AMT carries in Membership Query
//! (IGMPv3/MLDv2 general query) and Membership Update (IGMPv3/MLDv2 report)
//! messages: IPv4 + Router Alert + IGMP, or IPv6 + Hop-by-Hop Router Alert +
//! ICMPv6 MLD.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::ipv4::{Ipv4Header, Ipv4Repr, PROTO_IGMP};
use super::ipv6::{Ipv6Header, Ipv6Repr, NEXT_ICMPV6};
use super::{DecodeError, EncodeError, igmp, mld, need};

/// TOS of IGMP datagrams (internetwork control, as Linux sends them).
const IGMP_TOS: u8 = 0xc0;

/// The membership message of an encapsulated IPv4/IGMP or IPv6/ICMPv6
/// datagram, its IP layer checked (shared by queries and reports).
enum Membership<'a> {
    Igmp {
        src: Ipv4Addr,
        igmp: &'a [u8],
    },
    Mld {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        icmp: &'a [u8],
    },
}

impl<'a> Membership<'a> {
    /// The IPv4 header checksum must verify and the protocol be IGMP; for
    /// IPv6 the upper layer (after extension headers) must be ICMPv6.
    fn unwrap(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        need(datagram, 1)?;
        match datagram[0] >> 4 {
            4 => {
                let ip = Ipv4Header::parse(datagram)?;
                if !ip.checksum_ok() {
                    return Err(DecodeError::Checksum("IPv4 header"));
                }
                if ip.protocol() != PROTO_IGMP {
                    return Err(DecodeError::Protocol(ip.protocol()));
                }
                Ok(Self::Igmp {
                    src: ip.src(),
                    igmp: ip.payload(),
                })
            }
            6 => {
                let ip = Ipv6Header::parse(datagram)?;
                let upper = ip.upper_layer()?;
                if upper.protocol != NEXT_ICMPV6 {
                    return Err(DecodeError::Protocol(upper.protocol));
                }
                Ok(Self::Mld {
                    src: ip.src(),
                    dst: ip.dst(),
                    icmp: &ip.packet()[upper.offset..],
                })
            }
            v => Err(DecodeError::IpVersion(v, 0)),
        }
    }
}

/// A membership query found inside an AMT Membership Query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncapQuery {
    Igmp {
        src: Ipv4Addr,
        query: igmp::QueryRepr,
    },
    Mld {
        src: Ipv6Addr,
        query: mld::QueryRepr,
    },
}

impl EncapQuery {
    /// Parses an IPv4/IGMPv3 or IPv6/MLDv2 query datagram. The IPv4 header
    /// checksum and the IGMP/ICMPv6 checksums must verify; TTL and Router
    /// Alert are not required (relays differ: the reference capture has no
    /// Router Alert on queries).
    pub fn parse(datagram: &[u8]) -> Result<Self, DecodeError> {
        Ok(match Membership::unwrap(datagram)? {
            Membership::Igmp { src, igmp } => Self::Igmp {
                src,
                query: igmp::QueryRepr::parse(igmp)?,
            },
            Membership::Mld { src, dst, icmp } => Self::Mld {
                src,
                query: mld::QueryRepr::parse(icmp, &src, &dst)?,
            },
        })
    }

    pub fn is_ipv6(&self) -> bool {
        matches!(self, Self::Mld { .. })
    }

    pub fn qrv(&self) -> u8 {
        match self {
            Self::Igmp { query, .. } => query.qrv,
            Self::Mld { query, .. } => query.qrv,
        }
    }

    pub fn qqi(&self) -> Duration {
        match self {
            Self::Igmp { query, .. } => query.qqi(),
            Self::Mld { query, .. } => query.qqi(),
        }
    }

    pub fn max_resp_time(&self) -> Duration {
        match self {
            Self::Igmp { query, .. } => query.max_resp_time(),
            Self::Mld { query, .. } => query.max_resp_time(),
        }
    }

    pub fn is_general(&self) -> bool {
        match self {
            Self::Igmp { query, .. } => query.is_general(),
            Self::Mld { query, .. } => query.is_general(),
        }
    }
}

/// A membership report found inside an AMT Membership Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncapReport {
    Igmp {
        src: Ipv4Addr,
        report: igmp::ReportRepr,
    },
    Mld {
        src: Ipv6Addr,
        report: mld::ReportRepr,
    },
}

impl EncapReport {
    pub fn parse(datagram: &[u8]) -> Result<Self, DecodeError> {
        Ok(match Membership::unwrap(datagram)? {
            Membership::Igmp { src, igmp } => Self::Igmp {
                src,
                report: igmp::ReportRepr::parse(igmp)?,
            },
            Membership::Mld { src, dst, icmp } => Self::Mld {
                src,
                report: mld::ReportRepr::parse(icmp, &src, &dst)?,
            },
        })
    }

    pub fn src(&self) -> IpAddr {
        match self {
            Self::Igmp { src, .. } => IpAddr::V4(*src),
            Self::Mld { src, .. } => IpAddr::V6(*src),
        }
    }
}

/// IPv4 (TTL 1, TOS 0xc0, Router Alert, to 224.0.0.22) + IGMPv3 report.
pub fn igmpv3_report_datagram(
    src: Ipv4Addr,
    report: &igmp::ReportRepr,
) -> Result<Vec<u8>, EncodeError> {
    let ip = Ipv4Repr {
        src,
        dst: igmp::ALL_IGMPV3_ROUTERS,
        protocol: PROTO_IGMP,
        ttl: 1,
        tos: IGMP_TOS,
        router_alert: true,
        payload_len: report.buffer_len(),
    };
    let mut buf = vec![0u8; ip.total_len()];
    let hl = ip.emit(&mut buf)?;
    report.emit(&mut buf[hl..])?;
    Ok(buf)
}

/// IPv4 (TTL 1, to 224.0.0.1, optional Router Alert) + IGMPv3 query.
pub fn igmpv3_query_datagram(
    src: Ipv4Addr,
    query: &igmp::QueryRepr,
    router_alert: bool,
) -> Result<Vec<u8>, EncodeError> {
    let ip = Ipv4Repr {
        src,
        dst: igmp::ALL_SYSTEMS,
        protocol: PROTO_IGMP,
        ttl: 1,
        tos: IGMP_TOS,
        router_alert,
        payload_len: query.buffer_len(),
    };
    let mut buf = vec![0u8; ip.total_len()];
    let hl = ip.emit(&mut buf)?;
    query.emit(&mut buf[hl..])?;
    Ok(buf)
}

/// IPv6 (hop limit 1, Hop-by-Hop Router Alert, to ff02::16) + MLDv2 report.
pub fn mldv2_report_datagram(
    src: Ipv6Addr,
    report: &mld::ReportRepr,
) -> Result<Vec<u8>, EncodeError> {
    let ip = Ipv6Repr {
        src,
        dst: mld::ALL_MLDV2_ROUTERS,
        next_header: NEXT_ICMPV6,
        hop_limit: 1,
        router_alert: true,
        payload_len: report.buffer_len(),
    };
    let mut buf = vec![0u8; ip.total_len()];
    let hl = ip.emit(&mut buf)?;
    report.emit(&mut buf[hl..], &ip.src, &ip.dst)?;
    Ok(buf)
}

/// IPv6 (hop limit 1, Hop-by-Hop Router Alert, to ff02::1) + MLDv2 query.
pub fn mldv2_query_datagram(src: Ipv6Addr, query: &mld::QueryRepr) -> Result<Vec<u8>, EncodeError> {
    let ip = Ipv6Repr {
        src,
        dst: mld::ALL_NODES,
        next_header: NEXT_ICMPV6,
        hop_limit: 1,
        router_alert: true,
        payload_len: query.buffer_len(),
    };
    let mut buf = vec![0u8; ip.total_len()];
    let hl = ip.emit(&mut buf)?;
    query.emit(&mut buf[hl..], &ip.src, &ip.dst)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{GroupRecord, RecordType};

    #[test]
    fn igmp_report_datagram_is_44_bytes_with_router_alert() {
        let report = igmp::ReportRepr {
            records: vec![GroupRecord {
                record_type: RecordType::AllowNewSources,
                group: Ipv4Addr::new(232, 1, 1, 1),
                sources: vec![Ipv4Addr::new(192, 0, 2, 1)],
            }],
        };
        let d = igmpv3_report_datagram(Ipv4Addr::new(10, 8, 8, 2), &report).unwrap();
        // 24-byte IPv4 header with Router Alert + 20-byte report; plus the
        // 12-byte AMT header this is the 56-byte Update of the capture.
        assert_eq!(d.len(), 44);
        let ip = Ipv4Header::parse(&d).unwrap();
        assert!(ip.has_router_alert());
        assert_eq!(ip.ttl(), 1);
        assert_eq!(ip.dst(), igmp::ALL_IGMPV3_ROUTERS);
        match EncapReport::parse(&d).unwrap() {
            EncapReport::Igmp { src, report: r } => {
                assert_eq!(src, Ipv4Addr::new(10, 8, 8, 2));
                assert_eq!(r, report);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn igmp_query_datagram_without_router_alert_is_32_bytes() {
        let q = igmp::QueryRepr::general(100, 2, 125);
        let d = igmpv3_query_datagram(Ipv4Addr::new(10, 0, 0, 1), &q, false).unwrap();
        // 12 AMT + 32 = the 44-byte Query of the capture.
        assert_eq!(d.len(), 32);
        let parsed = EncapQuery::parse(&d).unwrap();
        assert!(!parsed.is_ipv6());
        assert_eq!(parsed.qrv(), 2);
        assert_eq!(parsed.qqi(), Duration::from_secs(125));
        assert!(parsed.is_general());
        let with_ra = igmpv3_query_datagram(Ipv4Addr::new(10, 0, 0, 1), &q, true).unwrap();
        assert_eq!(with_ra.len(), 36);
        assert_eq!(EncapQuery::parse(&with_ra).unwrap(), parsed);
    }

    #[test]
    fn mld_datagrams_round_trip() {
        let q = mld::QueryRepr::general(10_000, 3, 60);
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let d = mldv2_query_datagram(src, &q).unwrap();
        assert_eq!(d.len(), 40 + 8 + 28);
        let parsed = EncapQuery::parse(&d).unwrap();
        assert!(parsed.is_ipv6());
        assert_eq!(parsed.qrv(), 3);
        assert_eq!(parsed.qqi(), Duration::from_secs(60));

        let report = mld::ReportRepr {
            records: vec![GroupRecord {
                record_type: RecordType::ModeIsInclude,
                group: "ff3e::1".parse().unwrap(),
                sources: vec!["2001:db8::5".parse().unwrap()],
            }],
        };
        let d = mldv2_report_datagram(src, &report).unwrap();
        assert_eq!(d.len(), 40 + 8 + 8 + 36);
        match EncapReport::parse(&d).unwrap() {
            EncapReport::Mld { src: s, report: r } => {
                assert_eq!(s, src);
                assert_eq!(r, report);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn corrupted_datagrams_are_rejected() {
        let q = igmp::QueryRepr::general(100, 2, 125);
        let d = igmpv3_query_datagram(Ipv4Addr::new(10, 0, 0, 1), &q, false).unwrap();
        let mut bad_ip = d.clone();
        bad_ip[15] ^= 1;
        assert_eq!(
            EncapQuery::parse(&bad_ip),
            Err(DecodeError::Checksum("IPv4 header"))
        );
        let mut bad_igmp = d.clone();
        bad_igmp[25] ^= 1;
        assert_eq!(
            EncapQuery::parse(&bad_igmp),
            Err(DecodeError::Checksum("IGMP"))
        );
        // A report where a query is expected.
        let report = igmp::ReportRepr { records: vec![] };
        let r = igmpv3_report_datagram(Ipv4Addr::new(10, 0, 0, 1), &report).unwrap();
        assert!(matches!(
            EncapQuery::parse(&r),
            Err(DecodeError::MessageType { .. })
        ));
    }
}
