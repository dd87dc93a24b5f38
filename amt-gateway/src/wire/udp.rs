//! UDP (RFC 768) datagrams with their IPv4 or IPv6 header, for traffic the
//! project builds itself (injected test packets, synthetic sources): the
//! checksum covers the pseudo-header of the address family.

use std::net::IpAddr;

use super::EncodeError;
use super::checksum::{accumulate, finish, ipv6_pseudo_header_sum};
use super::ipv4::{Ipv4Repr, PROTO_UDP};
use super::ipv6::{Ipv6Repr, NEXT_UDP};

pub const HEADER_LEN: usize = 8;

/// One UDP datagram to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

impl UdpRepr {
    /// The whole IP packet carrying `payload`. Fails when the addresses are
    /// of different families or the datagram is too long for its header.
    pub fn packet(&self, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let udp_len = HEADER_LEN + payload.len();
        let udp_len16 = u16::try_from(udp_len).map_err(|_| EncodeError::Overflow("UDP length"))?;
        let (mut packet, hl, pseudo) = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ip = Ipv4Repr {
                    src,
                    dst,
                    protocol: PROTO_UDP,
                    ttl: self.ttl,
                    tos: 0,
                    router_alert: false,
                    payload_len: udp_len,
                };
                let mut packet = vec![0u8; ip.total_len()];
                let hl = ip.emit(&mut packet)?;
                let mut sum = accumulate(0, &src.octets());
                sum = accumulate(sum, &dst.octets());
                sum = accumulate(sum, &[0, PROTO_UDP]);
                sum = accumulate(sum, &udp_len16.to_be_bytes());
                (packet, hl, sum)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Repr {
                    src,
                    dst,
                    next_header: NEXT_UDP,
                    hop_limit: self.ttl,
                    router_alert: false,
                    payload_len: udp_len,
                };
                let mut packet = vec![0u8; ip.total_len()];
                let hl = ip.emit(&mut packet)?;
                let sum = ipv6_pseudo_header_sum(&src, &dst, udp_len as u32, NEXT_UDP);
                (packet, hl, sum)
            }
            _ => return Err(EncodeError::Overflow("mixed address families")),
        };
        let udp = &mut packet[hl..];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
        udp[HEADER_LEN..].copy_from_slice(payload);
        // 0 means "no checksum" in UDP: a computed 0 is sent as 0xffff.
        let sum = match finish(accumulate(pseudo, udp)) {
            0 => 0xffff,
            sum => sum,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip;

    fn repr(src: &str, dst: &str) -> UdpRepr {
        UdpRepr {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 5000,
            dst_port: 5001,
            ttl: 16,
        }
    }

    /// The checksum over pseudo-header and datagram is all ones.
    fn verifies(packet: &[u8], r: &UdpRepr) -> bool {
        let info = ip::inspect(packet).unwrap();
        let udp = &packet[packet.len() - (HEADER_LEN + 20)..];
        let pseudo = match (r.src, r.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut sum = accumulate(0, &s.octets());
                sum = accumulate(sum, &d.octets());
                sum = accumulate(sum, &[0, PROTO_UDP]);
                accumulate(sum, &(udp.len() as u16).to_be_bytes())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ipv6_pseudo_header_sum(&s, &d, udp.len() as u32, NEXT_UDP)
            }
            _ => unreachable!(),
        };
        info.len == packet.len() && finish(accumulate(pseudo, udp)) == 0
    }

    #[test]
    fn ipv4_and_ipv6_datagrams_verify() {
        for r in [
            repr("198.51.100.4", "232.1.1.1"),
            repr("2001:db8::4", "ff3e::8000:1"),
        ] {
            let p = r.packet(&[7u8; 20]).unwrap();
            assert!(verifies(&p, &r), "{r:?}");
        }
        assert!(repr("198.51.100.4", "ff3e::1").packet(&[]).is_err());
        assert!(
            repr("198.51.100.4", "232.1.1.1")
                .packet(&vec![0; 70_000])
                .is_err()
        );
    }
}
