//! UDP (RFC 768) datagrams with their IPv4 or IPv6 header, for traffic the
//! project builds itself (injected test packets, synthetic sources): the
//! checksum covers the pseudo-header of the address family.

use std::net::IpAddr;

use super::EncodeError;
use super::checksum::{accumulate, finish};
use super::ip::IpRepr;
use super::ipv4::PROTO_UDP;

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
        let ip = IpRepr::new(self.src, self.dst, PROTO_UDP, self.ttl, udp_len)
            .ok_or(EncodeError::Overflow("mixed address families"))?;
        let (mut packet, hl) = ip.packet()?;
        let pseudo = ip.pseudo_header_sum()?;
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
    use crate::wire::checksum::ipv6_pseudo_header_sum;
    use crate::wire::ip;
    use crate::wire::ipv6::NEXT_UDP;

    fn repr(src: &str, dst: &str) -> UdpRepr {
        UdpRepr {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 5000,
            dst_port: 5001,
            ttl: 16,
        }
    }

    /// The checksum over pseudo-header and datagram is all ones (the
    /// pseudo-header summed here, independently of `IpRepr`).
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
