//! Version-independent helpers for the IP packets carried inside AMT.

use std::net::IpAddr;

use super::ipv4::Ipv4Header;
use super::ipv6::Ipv6Header;
use super::{DecodeError, need};

/// What the data path needs to know about an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Length from the IP header (total length, or 40 + payload length);
    /// bytes beyond it are not part of the packet.
    pub len: usize,
    /// TTL or hop limit.
    pub ttl: u8,
}

/// Reads source, destination, length and TTL of the IPv4 or IPv6 packet at
/// the start of `packet`, with the length checks of the header views.
pub fn inspect(packet: &[u8]) -> Result<InnerPacket, DecodeError> {
    need(packet, 1)?;
    match packet[0] >> 4 {
        4 => {
            let h = Ipv4Header::parse(packet)?;
            Ok(InnerPacket {
                src: IpAddr::V4(h.src()),
                dst: IpAddr::V4(h.dst()),
                len: h.total_len(),
                ttl: h.ttl(),
            })
        }
        6 => {
            let h = Ipv6Header::parse(packet)?;
            Ok(InnerPacket {
                src: IpAddr::V6(h.src()),
                dst: IpAddr::V6(h.dst()),
                len: h.total_len(),
                ttl: h.hop_limit(),
            })
        }
        v => Err(DecodeError::IpVersion(v, 0)),
    }
}

/// Length of the IP datagram at the start of `buf` according to its own
/// header (used to find the optional trailer of an AMT Membership Query).
/// Does not require the whole datagram to be present.
pub fn declared_len(buf: &[u8]) -> Result<usize, DecodeError> {
    need(buf, 1)?;
    match buf[0] >> 4 {
        4 => {
            need(buf, 4)?;
            Ok(usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        6 => {
            need(buf, 6)?;
            Ok(40 + usize::from(u16::from_be_bytes([buf[4], buf[5]])))
        }
        v => Err(DecodeError::IpVersion(v, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{Ipv4Repr, PROTO_UDP};
    use crate::wire::ipv6::{Ipv6Repr, NEXT_UDP};

    #[test]
    fn inspect_v4_and_v6() {
        let r4 = Ipv4Repr {
            src: "192.0.2.1".parse().unwrap(),
            dst: "232.1.1.1".parse().unwrap(),
            protocol: PROTO_UDP,
            ttl: 5,
            tos: 0,
            router_alert: false,
            payload_len: 10,
        };
        let mut b4 = vec![0u8; 35];
        r4.emit(&mut b4).unwrap();
        let i = inspect(&b4).unwrap();
        assert_eq!(i.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(i.dst, "232.1.1.1".parse::<IpAddr>().unwrap());
        assert_eq!((i.len, i.ttl), (30, 5));
        assert_eq!(declared_len(&b4), Ok(30));

        let r6 = Ipv6Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "ff3e::8000:1".parse().unwrap(),
            next_header: NEXT_UDP,
            hop_limit: 64,
            router_alert: false,
            payload_len: 12,
        };
        let mut b6 = vec![0u8; 52];
        r6.emit(&mut b6).unwrap();
        let i = inspect(&b6).unwrap();
        assert_eq!(i.dst, "ff3e::8000:1".parse::<IpAddr>().unwrap());
        assert_eq!((i.len, i.ttl), (52, 64));
        assert_eq!(declared_len(&b6[..6]), Ok(52));
    }

    #[test]
    fn inspect_rejects_garbage() {
        assert!(inspect(&[]).is_err());
        assert_eq!(inspect(&[0x20; 40]), Err(DecodeError::IpVersion(2, 0)));
        assert!(declared_len(&[0x45, 0]).is_err());
    }
}
