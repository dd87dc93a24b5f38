//! AMT messages (RFC 7450 §5.1). Offsets are from the start of the UDP
//! payload. Every message starts with one byte: version (high nibble, must
//! be 0) and type (low nibble).
//!
//! Flag positions (research [verify] item): RFC 7450's diagrams, js4ms and
//! Wireshark all place the Request P flag and the Query G flag in the
//! least-significant bit of byte 1 (mask 0x01) and the Query L flag at 0x02.
//! The Linux kernel driver's bitfields put them in the high bits instead; we
//! follow the RFC. To stay interoperable with relays that set G in another
//! place, [`MembershipQuery`] decides whether the Gateway Port/Address
//! trailer is present from the lengths alone (UDP payload = 12 + encapsulated
//! datagram length [+ 18]), and reports the G bit separately.
//!
//! Reserved bits are written as 0 and ignored on receipt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ip::declared_len;
use super::{DecodeError, EncodeError, be16, be32, need, room, v4_at, v6_at};

pub const DISCOVERY_LEN: usize = 8;
pub const ADVERTISEMENT_V4_LEN: usize = 12;
pub const ADVERTISEMENT_V6_LEN: usize = 24;
pub const REQUEST_LEN: usize = 8;
/// Type, flags, MAC, nonce: the part of Query and Update before the datagram.
pub const MAC_HEADER_LEN: usize = 12;
pub const DATA_HEADER_LEN: usize = 2;
pub const TEARDOWN_LEN: usize = 30;
/// Gateway Port (2) + Gateway IP Address (16) at the end of a Query with G.
pub const GATEWAY_TRAILER_LEN: usize = 18;

const FLAG_P: u8 = 0x01;
const FLAG_G: u8 = 0x01;
const FLAG_L: u8 = 0x02;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    RelayDiscovery = 1,
    RelayAdvertisement = 2,
    Request = 3,
    MembershipQuery = 4,
    MembershipUpdate = 5,
    MulticastData = 6,
    Teardown = 7,
}

impl MessageType {
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::RelayDiscovery,
            2 => Self::RelayAdvertisement,
            3 => Self::Request,
            4 => Self::MembershipQuery,
            5 => Self::MembershipUpdate,
            6 => Self::MulticastData,
            7 => Self::Teardown,
            _ => return None,
        })
    }
}

/// Reads version and type from the first byte (the cheap check the data
/// path does before anything else).
pub fn message_type(buf: &[u8]) -> Result<MessageType, DecodeError> {
    need(buf, 1)?;
    let version = buf[0] >> 4;
    if version != 0 {
        return Err(DecodeError::AmtVersion(version));
    }
    MessageType::from_u8(buf[0] & 0x0f).ok_or(DecodeError::AmtType(buf[0] & 0x0f))
}

/// The 48-bit Response MAC. Opaque to the gateway: it is computed by the
/// relay and copied back verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResponseMac(pub [u8; 6]);

impl ResponseMac {
    /// Low 48 bits of `value`, big-endian.
    pub fn from_u64(value: u64) -> Self {
        let b = value.to_be_bytes();
        Self([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    pub fn to_u64(self) -> u64 {
        let m = self.0;
        u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
    }
}

fn mac_at(buf: &[u8], at: usize) -> Result<ResponseMac, DecodeError> {
    need(buf, at + 6)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[at..at + 6]);
    Ok(ResponseMac(m))
}

/// Which general query a Request asks for (the P flag). Independent of the
/// tunnel's own address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryKind {
    /// P = 0: IGMPv3, for IPv4 multicast.
    Igmpv3,
    /// P = 1: MLDv2, for IPv6 multicast.
    Mldv2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayDiscovery {
    pub nonce: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAdvertisement {
    pub nonce: u32,
    /// Family given by the message length (12 → IPv4, 24 → IPv6).
    pub relay: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub nonce: u32,
    pub kind: QueryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipQuery<'a> {
    /// L: the relay accepts no new gateways.
    pub limit: bool,
    /// G as received (see the module note; the trailer is found by length).
    pub gateway_flag: bool,
    pub mac: ResponseMac,
    pub nonce: u32,
    /// The encapsulated IGMPv3/MLDv2 general query datagram.
    pub query: &'a [u8],
    /// Gateway address and port as the relay sees them (NAT detection).
    pub gateway: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipUpdate<'a> {
    pub mac: ResponseMac,
    pub nonce: u32,
    /// The encapsulated IGMPv3/MLDv2 report datagram.
    pub report: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastData<'a> {
    /// The complete inner IP multicast packet.
    pub packet: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Teardown {
    pub mac: ResponseMac,
    pub nonce: u32,
    pub gateway: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    RelayDiscovery(RelayDiscovery),
    RelayAdvertisement(RelayAdvertisement),
    Request(Request),
    MembershipQuery(MembershipQuery<'a>),
    MembershipUpdate(MembershipUpdate<'a>),
    MulticastData(MulticastData<'a>),
    Teardown(Teardown),
}

/// Gateway IP Address field: IPv4 is carried as an IPv4-compatible IPv6
/// address (`::a.b.c.d`). On receipt `::a.b.c.d` (other than `::` and
/// `::1`) and IPv4-mapped `::ffff:a.b.c.d` both decode to IPv4.
/// 0.0.0.0 and 0.0.0.1 are sent IPv4-mapped: their compatible form would
/// read back as `::` and `::1`.
pub fn encode_gateway_ip(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            if u32::from(v4) <= 1 {
                out[10..12].copy_from_slice(&[0xff, 0xff]);
            }
            out[12..].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn decode_gateway_ip(octets: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(octets);
    let head = &octets[..10];
    let tail4 = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if head.iter().all(|&b| b == 0) {
        if octets[10] == 0 && octets[11] == 0 && u32::from(tail4) > 1 {
            return IpAddr::V4(tail4);
        }
        if octets[10] == 0xff && octets[11] == 0xff {
            return IpAddr::V4(tail4);
        }
    }
    IpAddr::V6(v6)
}

fn gateway_at(buf: &[u8], at: usize) -> Result<SocketAddr, DecodeError> {
    let port = be16(buf, at)?;
    let ip = v6_at(buf, at + 2)?;
    Ok(SocketAddr::new(decode_gateway_ip(ip.octets()), port))
}

impl<'a> Message<'a> {
    /// Decodes one AMT message from a UDP payload. Lengths are exact for
    /// fixed-size messages; a Query must end exactly after its datagram or
    /// after datagram + 18-byte gateway trailer.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let kind = message_type(buf)?;
        let exact = |len: usize, what: &'static str| {
            if buf.len() == len {
                Ok(())
            } else {
                Err(DecodeError::Length {
                    what,
                    len: buf.len(),
                })
            }
        };
        Ok(match kind {
            MessageType::RelayDiscovery => {
                exact(DISCOVERY_LEN, "Relay Discovery")?;
                Self::RelayDiscovery(RelayDiscovery {
                    nonce: be32(buf, 4)?,
                })
            }
            MessageType::RelayAdvertisement => {
                let relay = match buf.len() {
                    ADVERTISEMENT_V4_LEN => IpAddr::V4(v4_at(buf, 8)?),
                    ADVERTISEMENT_V6_LEN => IpAddr::V6(v6_at(buf, 8)?),
                    len => {
                        return Err(DecodeError::Length {
                            what: "Relay Advertisement",
                            len,
                        });
                    }
                };
                Self::RelayAdvertisement(RelayAdvertisement {
                    nonce: be32(buf, 4)?,
                    relay,
                })
            }
            MessageType::Request => {
                exact(REQUEST_LEN, "Request")?;
                Self::Request(Request {
                    nonce: be32(buf, 4)?,
                    kind: if buf[1] & FLAG_P != 0 {
                        QueryKind::Mldv2
                    } else {
                        QueryKind::Igmpv3
                    },
                })
            }
            MessageType::MembershipQuery => {
                need(buf, MAC_HEADER_LEN + 1)?;
                let datagram_len = declared_len(&buf[MAC_HEADER_LEN..])?;
                let rest = buf.len() - MAC_HEADER_LEN;
                let gateway = if rest == datagram_len {
                    None
                } else if rest == datagram_len + GATEWAY_TRAILER_LEN {
                    Some(gateway_at(buf, MAC_HEADER_LEN + datagram_len)?)
                } else {
                    return Err(DecodeError::Length {
                        what: "Membership Query",
                        len: buf.len(),
                    });
                };
                Self::MembershipQuery(MembershipQuery {
                    limit: buf[1] & FLAG_L != 0,
                    gateway_flag: buf[1] & FLAG_G != 0,
                    mac: mac_at(buf, 2)?,
                    nonce: be32(buf, 8)?,
                    query: &buf[MAC_HEADER_LEN..MAC_HEADER_LEN + datagram_len],
                    gateway,
                })
            }
            MessageType::MembershipUpdate => {
                need(buf, MAC_HEADER_LEN + 1)?;
                Self::MembershipUpdate(MembershipUpdate {
                    mac: mac_at(buf, 2)?,
                    nonce: be32(buf, 8)?,
                    report: &buf[MAC_HEADER_LEN..],
                })
            }
            MessageType::MulticastData => {
                need(buf, DATA_HEADER_LEN + 1)?;
                Self::MulticastData(MulticastData {
                    packet: &buf[DATA_HEADER_LEN..],
                })
            }
            MessageType::Teardown => {
                exact(TEARDOWN_LEN, "Teardown")?;
                Self::Teardown(Teardown {
                    mac: mac_at(buf, 2)?,
                    nonce: be32(buf, 8)?,
                    gateway: gateway_at(buf, 12)?,
                })
            }
        })
    }

    pub fn message_type(&self) -> MessageType {
        match self {
            Self::RelayDiscovery(_) => MessageType::RelayDiscovery,
            Self::RelayAdvertisement(_) => MessageType::RelayAdvertisement,
            Self::Request(_) => MessageType::Request,
            Self::MembershipQuery(_) => MessageType::MembershipQuery,
            Self::MembershipUpdate(_) => MessageType::MembershipUpdate,
            Self::MulticastData(_) => MessageType::MulticastData,
            Self::Teardown(_) => MessageType::Teardown,
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Self::RelayDiscovery(_) => DISCOVERY_LEN,
            Self::RelayAdvertisement(a) => match a.relay {
                IpAddr::V4(_) => ADVERTISEMENT_V4_LEN,
                IpAddr::V6(_) => ADVERTISEMENT_V6_LEN,
            },
            Self::Request(_) => REQUEST_LEN,
            Self::MembershipQuery(q) => {
                MAC_HEADER_LEN
                    + q.query.len()
                    + if q.gateway.is_some() {
                        GATEWAY_TRAILER_LEN
                    } else {
                        0
                    }
            }
            Self::MembershipUpdate(u) => MAC_HEADER_LEN + u.report.len(),
            Self::MulticastData(d) => DATA_HEADER_LEN + d.packet.len(),
            Self::Teardown(_) => TEARDOWN_LEN,
        }
    }

    /// Writes the message into `buf`, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.encoded_len();
        room(buf, len)?;
        let out = &mut buf[..len];
        out.fill(0);
        out[0] = self.message_type() as u8;
        match self {
            Self::RelayDiscovery(d) => out[4..8].copy_from_slice(&d.nonce.to_be_bytes()),
            Self::RelayAdvertisement(a) => {
                out[4..8].copy_from_slice(&a.nonce.to_be_bytes());
                match a.relay {
                    IpAddr::V4(v4) => out[8..12].copy_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => out[8..24].copy_from_slice(&v6.octets()),
                }
            }
            Self::Request(r) => {
                if r.kind == QueryKind::Mldv2 {
                    out[1] = FLAG_P;
                }
                out[4..8].copy_from_slice(&r.nonce.to_be_bytes());
            }
            Self::MembershipQuery(q) => {
                out[1] = if q.limit { FLAG_L } else { 0 } | if q.gateway_flag { FLAG_G } else { 0 };
                out[2..8].copy_from_slice(&q.mac.0);
                out[8..12].copy_from_slice(&q.nonce.to_be_bytes());
                let end = MAC_HEADER_LEN + q.query.len();
                out[MAC_HEADER_LEN..end].copy_from_slice(q.query);
                if let Some(gw) = q.gateway {
                    out[end..end + 2].copy_from_slice(&gw.port().to_be_bytes());
                    out[end + 2..end + 18].copy_from_slice(&encode_gateway_ip(gw.ip()));
                }
            }
            Self::MembershipUpdate(u) => {
                out[2..8].copy_from_slice(&u.mac.0);
                out[8..12].copy_from_slice(&u.nonce.to_be_bytes());
                out[MAC_HEADER_LEN..].copy_from_slice(u.report);
            }
            Self::MulticastData(d) => out[DATA_HEADER_LEN..].copy_from_slice(d.packet),
            Self::Teardown(t) => {
                out[2..8].copy_from_slice(&t.mac.0);
                out[8..12].copy_from_slice(&t.nonce.to_be_bytes());
                out[12..14].copy_from_slice(&t.gateway.port().to_be_bytes());
                out[14..30].copy_from_slice(&encode_gateway_ip(t.gateway.ip()));
            }
        }
        Ok(len)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.encoded_len()];
        // The buffer has exactly encoded_len() bytes, so emit cannot fail.
        let _ = self.emit(&mut buf);
        buf
    }
}

/// The two-byte Multicast Data header, for senders that write the header
/// and the packet with one vectored send.
pub const MULTICAST_DATA_HEADER: [u8; DATA_HEADER_LEN] = [MessageType::MulticastData as u8, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encap;
    use crate::wire::igmp;

    fn round_trip(msg: Message<'_>) -> Vec<u8> {
        let bytes = msg.to_vec();
        assert_eq!(bytes.len(), msg.encoded_len());
        assert_eq!(Message::decode(&bytes).unwrap(), msg);
        bytes
    }

    fn igmp_query_datagram() -> Vec<u8> {
        let q = igmp::QueryRepr::general(100, 2, 125);
        encap::igmpv3_query_datagram(Ipv4Addr::new(10, 0, 0, 1), &q, false).unwrap()
    }

    #[test]
    fn discovery_bytes() {
        let b = round_trip(Message::RelayDiscovery(RelayDiscovery {
            nonce: 0x0102_0304,
        }));
        assert_eq!(b, [0x01, 0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn advertisement_v4_and_v6() {
        let b = round_trip(Message::RelayAdvertisement(RelayAdvertisement {
            nonce: 0xdead_beef,
            relay: "192.0.2.7".parse().unwrap(),
        }));
        assert_eq!(b, [0x02, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 192, 0, 2, 7]);
        let b = round_trip(Message::RelayAdvertisement(RelayAdvertisement {
            nonce: 1,
            relay: "2001:db8::7".parse().unwrap(),
        }));
        assert_eq!(b.len(), 24);
        assert_eq!(&b[8..10], &[0x20, 0x01]);
        assert_eq!(
            Message::decode(&b[..20]),
            Err(DecodeError::Length {
                what: "Relay Advertisement",
                len: 20
            })
        );
    }

    #[test]
    fn request_p_flag_is_lowest_bit_of_byte_1() {
        let b = round_trip(Message::Request(Request {
            nonce: 7,
            kind: QueryKind::Igmpv3,
        }));
        assert_eq!(b, [0x03, 0x00, 0, 0, 0, 0, 0, 7]);
        let b = round_trip(Message::Request(Request {
            nonce: 7,
            kind: QueryKind::Mldv2,
        }));
        assert_eq!(b, [0x03, 0x01, 0, 0, 0, 0, 0, 7]);
        // Reserved bits are ignored: 0xfe alone is still P = 0.
        match Message::decode(&[0x03, 0xfe, 0xff, 0xff, 0, 0, 0, 7]).unwrap() {
            Message::Request(r) => assert_eq!(r.kind, QueryKind::Igmpv3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_44_bytes_like_the_capture() {
        let d = igmp_query_datagram();
        let q = MembershipQuery {
            limit: false,
            gateway_flag: false,
            mac: ResponseMac([1, 2, 3, 4, 5, 6]),
            nonce: 0xa1b2_c3d4,
            query: &d,
            gateway: None,
        };
        let b = round_trip(Message::MembershipQuery(q));
        assert_eq!(b.len(), 44);
        assert_eq!(
            &b[..12],
            &[0x04, 0x00, 1, 2, 3, 4, 5, 6, 0xa1, 0xb2, 0xc3, 0xd4]
        );
    }

    #[test]
    fn query_flags_and_gateway_trailer() {
        let d = igmp_query_datagram();
        let q = MembershipQuery {
            limit: true,
            gateway_flag: true,
            mac: ResponseMac::from_u64(0x0000_1122_3344_5566),
            nonce: 9,
            query: &d,
            gateway: Some("198.51.100.9:40000".parse().unwrap()),
        };
        let b = round_trip(Message::MembershipQuery(q));
        assert_eq!(b.len(), 44 + 18);
        assert_eq!(b[1], 0x03);
        assert_eq!(&b[2..8], &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
        assert_eq!(&b[44..46], &40000u16.to_be_bytes());
        assert_eq!(&b[46..58], &[0u8; 12]);
        assert_eq!(&b[58..62], &[198, 51, 100, 9]);

        let v6gw = MembershipQuery {
            gateway: Some("[2001:db8::99]:5000".parse().unwrap()),
            ..q
        };
        round_trip(Message::MembershipQuery(v6gw));
    }

    #[test]
    fn query_trailer_found_by_length_not_flag() {
        // G clear but trailer present (a relay with the G bit elsewhere).
        let d = igmp_query_datagram();
        let q = MembershipQuery {
            limit: false,
            gateway_flag: false,
            mac: ResponseMac::default(),
            nonce: 1,
            query: &d,
            gateway: Some("203.0.113.5:1234".parse().unwrap()),
        };
        let bytes = Message::MembershipQuery(q).to_vec();
        match Message::decode(&bytes).unwrap() {
            Message::MembershipQuery(p) => {
                assert!(!p.gateway_flag);
                assert_eq!(p.gateway, Some("203.0.113.5:1234".parse().unwrap()));
                assert_eq!(p.query, &d[..]);
            }
            other => panic!("{other:?}"),
        }
        // G set without a trailer: accepted, no gateway.
        let mut flagged = Message::MembershipQuery(MembershipQuery { gateway: None, ..q }).to_vec();
        flagged[1] = 0x80 | FLAG_G;
        match Message::decode(&flagged).unwrap() {
            Message::MembershipQuery(p) => {
                assert!(p.gateway_flag);
                assert_eq!(p.gateway, None);
            }
            other => panic!("{other:?}"),
        }
        // Any other trailing length is rejected.
        let mut odd = bytes.clone();
        odd.push(0);
        assert!(matches!(
            Message::decode(&odd),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            Message::decode(&bytes[..40]),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn update_56_bytes_like_the_capture() {
        let report = igmp::ReportRepr {
            records: vec![crate::wire::GroupRecord {
                record_type: crate::wire::RecordType::AllowNewSources,
                group: Ipv4Addr::new(232, 1, 1, 1),
                sources: vec![Ipv4Addr::new(192, 0, 2, 1)],
            }],
        };
        let d = encap::igmpv3_report_datagram(Ipv4Addr::new(10, 8, 8, 2), &report).unwrap();
        let u = MembershipUpdate {
            mac: ResponseMac([9, 8, 7, 6, 5, 4]),
            nonce: 0x0102_0304,
            report: &d,
        };
        let b = round_trip(Message::MembershipUpdate(u));
        assert_eq!(b.len(), 56);
        assert_eq!(&b[..12], &[0x05, 0, 9, 8, 7, 6, 5, 4, 1, 2, 3, 4]);
        assert_eq!(b[12], 0x46);
    }

    #[test]
    fn data_and_teardown() {
        let inner = [
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 1, 17, 0, 0, 192, 0, 2, 1, 232, 1, 1, 1,
        ];
        let b = round_trip(Message::MulticastData(MulticastData { packet: &inner }));
        assert_eq!(&b[..2], &MULTICAST_DATA_HEADER);
        assert_eq!(b.len(), 22);
        assert!(matches!(
            Message::decode(&[0x06, 0]),
            Err(DecodeError::Truncated { .. })
        ));

        let t = Teardown {
            mac: ResponseMac([1, 1, 1, 1, 1, 1]),
            nonce: 5,
            gateway: "192.0.2.44:2268".parse().unwrap(),
        };
        let b = round_trip(Message::Teardown(t));
        assert_eq!(b.len(), 30);
        assert_eq!(
            b,
            [
                0x07, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 5, 0x08, 0xdc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 192, 0, 2, 44
            ]
        );
        let v6 = Teardown {
            gateway: "[2001:db8::1]:9".parse().unwrap(),
            ..t
        };
        round_trip(Message::Teardown(v6));
    }

    #[test]
    fn version_and_type_checks() {
        assert_eq!(
            Message::decode(&[0x11, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::AmtVersion(1))
        );
        assert_eq!(
            Message::decode(&[0x08, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::AmtType(8))
        );
        assert_eq!(Message::decode(&[0x00]), Err(DecodeError::AmtType(0)));
        assert!(matches!(
            Message::decode(&[]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Message::decode(&[0x01, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            Message::decode(&[0x03; 9]),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            Message::decode(&[0x07; 29]),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn gateway_ip_encoding() {
        assert_eq!(
            decode_gateway_ip(encode_gateway_ip("10.1.2.3".parse().unwrap())),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            decode_gateway_ip(mapped.octets()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            decode_gateway_ip(Ipv6Addr::LOCALHOST.octets()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            decode_gateway_ip([0; 16]),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(decode_gateway_ip(v6.octets()), IpAddr::V6(v6));
    }

    /// Found by the amt_message fuzz target: a Teardown whose gateway is
    /// IPv4-mapped 0.0.0.0 decoded to 0.0.0.0, re-encoded as `::` and then
    /// decoded as IPv6 `::`, so the gateway changed on the way through.
    #[test]
    fn gateway_ip_round_trips_for_mapped_zero_addresses() {
        let bytes = [
            0x07, 0x1e, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00,
            0x00, 0x00,
        ];
        let msg = Message::decode(&bytes).unwrap();
        assert_eq!(Message::decode(&msg.to_vec()).unwrap(), msg);
        for v4 in [Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(0, 0, 0, 1)] {
            let ip = IpAddr::V4(v4);
            assert_eq!(decode_gateway_ip(encode_gateway_ip(ip)), ip);
        }
    }

    #[test]
    fn mac_u64_conversion() {
        let m = ResponseMac::from_u64(0xffff_0102_0304_0506);
        assert_eq!(m.0, [1, 2, 3, 4, 5, 6]);
        assert_eq!(m.to_u64(), 0x0102_0304_0506);
    }
}
