//! Version-independent helpers for the IP packets carried inside AMT.

use std::net::IpAddr;

use super::checksum::{ipv4_pseudo_header_sum, ipv6_pseudo_header_sum};
use super::ipv4::{Ipv4Header, Ipv4Repr};
use super::ipv6::{Ipv6Header, Ipv6Repr};
use super::{DecodeError, EncodeError, need};

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
    let (src, dst, len, ttl) = match packet[0] >> 4 {
        4 => {
            let h = Ipv4Header::parse(packet)?;
            (h.src().into(), h.dst().into(), h.total_len(), h.ttl())
        }
        6 => {
            let h = Ipv6Header::parse(packet)?;
            (h.src().into(), h.dst().into(), h.total_len(), h.hop_limit())
        }
        v => return Err(DecodeError::IpVersion(v, 0)),
    };
    Ok(InnerPacket { src, dst, len, ttl })
}

/// An IPv4 or IPv6 header to build, for packets whose family is that of
/// their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRepr {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

impl IpRepr {
    /// A header without options (TOS 0, no Router Alert) for `payload_len`
    /// bytes of `protocol` (the IPv4 protocol or IPv6 next header).
    /// `None` when `src` and `dst` are of different families.
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        ttl: u8,
        payload_len: usize,
    ) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Self::V4(Ipv4Repr {
                src,
                dst,
                protocol,
                ttl,
                tos: 0,
                router_alert: false,
                payload_len,
            })),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(Self::V6(Ipv6Repr {
                src,
                dst,
                next_header: protocol,
                hop_limit: ttl,
                router_alert: false,
                payload_len,
            })),
            _ => None,
        }
    }

    pub fn header_len(&self) -> usize {
        match self {
            Self::V4(r) => r.header_len(),
            Self::V6(r) => r.header_len(),
        }
    }

    pub fn total_len(&self) -> usize {
        match self {
            Self::V4(r) => r.total_len(),
            Self::V6(r) => r.total_len(),
        }
    }

    /// Writes the header into `buf[..header_len()]`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::V4(r) => r.emit(buf),
            Self::V6(r) => r.emit(buf),
        }
    }

    /// The whole packet with the header written and the payload zero;
    /// returns it with the header length (where the payload starts).
    pub fn packet(&self) -> Result<(Vec<u8>, usize), EncodeError> {
        let mut packet = vec![0u8; self.total_len()];
        let header_len = self.emit(&mut packet)?;
        Ok((packet, header_len))
    }

    /// Sum of the pseudo-header (addresses, protocol, payload length) that
    /// UDP and ICMPv6 checksums start with. Fails when the payload is too
    /// long for the pseudo-header's length field.
    pub fn pseudo_header_sum(&self) -> Result<u32, EncodeError> {
        let too_long = EncodeError::Overflow("pseudo-header length");
        Ok(match self {
            Self::V4(r) => {
                let len = u16::try_from(r.payload_len).map_err(|_| too_long)?;
                ipv4_pseudo_header_sum(&r.src, &r.dst, len, r.protocol)
            }
            Self::V6(r) => {
                let len = u32::try_from(r.payload_len).map_err(|_| too_long)?;
                ipv6_pseudo_header_sum(&r.src, &r.dst, len, r.next_header)
            }
        })
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

    #[test]
    fn inspect_v4_and_v6() {
        let packet = |src: &str, dst: &str, ttl, payload_len| {
            let ip = IpRepr::new(
                src.parse().unwrap(),
                dst.parse().unwrap(),
                17,
                ttl,
                payload_len,
            );
            ip.unwrap().packet().unwrap().0
        };
        let b4 = packet("192.0.2.1", "232.1.1.1", 5, 10);
        let i = inspect(&b4).unwrap();
        assert_eq!(i.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(i.dst, "232.1.1.1".parse::<IpAddr>().unwrap());
        assert_eq!((i.len, i.ttl), (30, 5));
        assert_eq!(declared_len(&b4), Ok(30));
        // Bytes after the packet are not part of it.
        let mut padded = b4.clone();
        padded.extend([0; 5]);
        assert_eq!(inspect(&padded).unwrap().len, 30);

        let b6 = packet("2001:db8::1", "ff3e::8000:1", 64, 12);
        let i = inspect(&b6).unwrap();
        assert_eq!(i.dst, "ff3e::8000:1".parse::<IpAddr>().unwrap());
        assert_eq!((i.len, i.ttl), (52, 64));
        assert_eq!(declared_len(&b6[..6]), Ok(52));
    }

    #[test]
    fn ip_repr_by_family() {
        let v4 = IpRepr::new(
            "192.0.2.1".parse().unwrap(),
            "232.1.1.1".parse().unwrap(),
            17,
            1,
            8,
        );
        assert!(matches!(v4, Some(IpRepr::V4(r)) if r.header_len() == 20 && r.tos == 0));
        let v6 = IpRepr::new(
            "2001:db8::1".parse().unwrap(),
            "ff3e::1".parse().unwrap(),
            17,
            1,
            8,
        );
        assert_eq!(v6.map(|r| (r.header_len(), r.total_len())), Some((40, 48)));
        let mixed = IpRepr::new(
            "192.0.2.1".parse().unwrap(),
            "ff3e::1".parse().unwrap(),
            17,
            1,
            8,
        );
        assert_eq!(mixed, None);
        let huge = IpRepr::new(
            "2001:db8::1".parse().unwrap(),
            "ff3e::1".parse().unwrap(),
            17,
            1,
            1 << 33,
        );
        assert!(huge.unwrap().pseudo_header_sum().is_err());
    }

    #[test]
    fn inspect_rejects_garbage() {
        assert!(inspect(&[]).is_err());
        assert_eq!(inspect(&[0x20; 40]), Err(DecodeError::IpVersion(2, 0)));
        assert!(declared_len(&[0x45, 0]).is_err());
    }
}
