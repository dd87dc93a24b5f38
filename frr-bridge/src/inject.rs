//! Test traffic: (S,G) UDP packets built by the daemon and written into the
//! TUN as if they had come through a tunnel. The payload is the lab's:
//! 8-byte big-endian sequence number, 8-byte big-endian send time in ns
//! since the Unix epoch, then zero padding.

use std::net::IpAddr;

use amt_gateway::wire::udp::UdpRepr;

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

/// Build one packet with sequence number `seq` and send time `now_ns`.
/// `None` when source and group are of different families (or the payload
/// does not fit a datagram).
pub fn build_packet(spec: &InjectSpec, seq: u64, now_ns: u64) -> Option<Vec<u8>> {
    let mut payload = vec![0u8; spec.payload_size.max(MIN_PAYLOAD)];
    payload[0..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..16].copy_from_slice(&now_ns.to_be_bytes());
    UdpRepr {
        src: spec.source,
        dst: spec.group,
        src_port: spec.src_port,
        dst_port: spec.dst_port,
        ttl: spec.ttl,
    }
    .packet(&payload)
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amt_gateway::wire::checksum::internet_checksum;

    /// Ports 5000 to 5001, TTL 16.
    fn spec(source: &str, group: &str, payload_size: usize) -> InjectSpec {
        InjectSpec {
            source: source.parse().unwrap(),
            group: group.parse().unwrap(),
            src_port: 5000,
            dst_port: 5001,
            ttl: 16,
            payload_size,
        }
    }

    #[test]
    fn ipv4_packet_checksums() {
        let p = build_packet(&spec("198.51.100.4", "232.1.1.1", 100), 42, 7).unwrap();
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
        let mut spec = spec("2001:db8::4", "ff3e::1:1", 0);
        let p = build_packet(&spec, 1, 1).unwrap();
        assert_eq!(p.len(), 40 + 8 + MIN_PAYLOAD);
        assert_eq!(p[0] >> 4, 6);
        spec.group = "232.1.1.1".parse().unwrap();
        assert!(build_packet(&spec, 1, 1).is_none());
    }
}
