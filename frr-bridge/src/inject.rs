//! Test traffic: (S,G) UDP packets built by the daemon and written into the
//! TUN as if they had come through a tunnel. The payload is the lab's:
//! 8-byte big-endian sequence number, 8-byte big-endian send time in ns
//! since the Unix epoch, then zero padding.

use std::net::IpAddr;

use crate::southbound::pim::{internet_checksum, ipv4_header};

pub const MIN_PAYLOAD: usize = 16;

/// Parameters of one injected packet stream.
#[derive(Debug, Clone, Copy)]
pub struct InjectSpec {
    pub source: IpAddr,
    pub group: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    pub payload_size: usize,
}

fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + udp.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => return 0,
    }
    pseudo.extend_from_slice(udp);
    match internet_checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    }
}

/// Build one packet with sequence number `seq` and send time `now_ns`.
/// `None` when source and group are of different families.
pub fn build_packet(spec: &InjectSpec, seq: u64, now_ns: u64) -> Option<Vec<u8>> {
    let payload_len = spec.payload_size.max(MIN_PAYLOAD);
    let mut udp = vec![0u8; 8 + payload_len];
    udp[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp[8..16].copy_from_slice(&seq.to_be_bytes());
    udp[16..24].copy_from_slice(&now_ns.to_be_bytes());
    let c = udp_checksum(spec.source, spec.group, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    match (spec.source, spec.group) {
        (IpAddr::V4(s), IpAddr::V4(g)) => {
            let mut pkt = ipv4_header(s, g, 17, spec.ttl, 0, udp.len()).to_vec();
            pkt.extend_from_slice(&udp);
            Some(pkt)
        }
        (IpAddr::V6(s), IpAddr::V6(g)) => {
            let mut pkt = Vec::with_capacity(40 + udp.len());
            pkt.extend_from_slice(&[0x60, 0, 0, 0]);
            pkt.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            pkt.push(17);
            pkt.push(spec.ttl);
            pkt.extend_from_slice(&s.octets());
            pkt.extend_from_slice(&g.octets());
            pkt.extend_from_slice(&udp);
            Some(pkt)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_packet_checksums() {
        let spec = InjectSpec {
            source: "198.51.100.4".parse().unwrap(),
            group: "232.1.1.1".parse().unwrap(),
            src_port: 5000,
            dst_port: 5001,
            ttl: 16,
            payload_size: 100,
        };
        let p = build_packet(&spec, 42, 7).unwrap();
        assert_eq!(p.len(), 20 + 8 + 100);
        assert_eq!(internet_checksum(&p[..20]), 0);
        assert_eq!(&p[28..36], &42u64.to_be_bytes());
        assert_eq!(&p[36..44], &7u64.to_be_bytes());
        // UDP checksum verifies over the pseudo header.
        let mut pseudo = vec![198, 51, 100, 4, 232, 1, 1, 1, 0, 17, 0, 108];
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(internet_checksum(&pseudo), 0);
    }

    #[test]
    fn ipv6_and_mixed() {
        let mut spec = InjectSpec {
            source: "2001:db8::4".parse().unwrap(),
            group: "ff3e::1:1".parse().unwrap(),
            src_port: 1,
            dst_port: 2,
            ttl: 3,
            payload_size: 0,
        };
        let p = build_packet(&spec, 1, 1).unwrap();
        assert_eq!(p.len(), 40 + 8 + MIN_PAYLOAD);
        assert_eq!(p[0] >> 4, 6);
        spec.group = "232.1.1.1".parse().unwrap();
        assert!(build_packet(&spec, 1, 1).is_none());
    }
}
