//! Generated Multicast Data datagrams: the template (AMT header, IP, UDP,
//! lab probe) stamped per packet, and the batched `sendmmsg` sender.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};

use amt_gateway::wire::amt::MULTICAST_DATA_HEADER;
use amt_gateway::wire::checksum;
use amt_gateway::wire::ip::IpRepr;
use amt_gateway::wire::ipv4::PROTO_UDP;
use ingest_types::SourceGroup;
use socket2::SockAddr;

use crate::PAYLOAD_HEADER_LEN;
use crate::relay::udp::socket_destination;

pub const UDP_HEADER_LEN: usize = 8;
/// TTL / hop limit of generated packets (above the gateway's minimum, so
/// the gateway's TTL patch is not exercised).
const INNER_TTL: u8 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("payload of {0} bytes is shorter than the {PAYLOAD_HEADER_LEN}-byte probe header")]
    PayloadTooShort(usize),
    #[error("payload of {0} bytes does not fit in one IP packet")]
    PayloadTooLong(usize),
    #[error("source {0} and group {1} are of different address families")]
    MixedFamilies(IpAddr, IpAddr),
}

/// One AMT Multicast Data datagram: `[AMT header][IP][UDP][probe]`; the
/// probe payload is the lab's (sequence, send time, zero padding).
#[derive(Debug, Clone)]
pub struct DataTemplate {
    bytes: Vec<u8>,
    probe_offset: usize,
    udp_checksum_offset: usize,
    /// One's-complement sum of everything the UDP checksum covers except
    /// the 16 probe header bytes (pseudo-header, UDP header, zero padding).
    fixed_sum: u32,
}

impl DataTemplate {
    pub fn new(channel: SourceGroup, port: u16, payload_len: usize) -> Result<Self, TemplateError> {
        if payload_len < PAYLOAD_HEADER_LEN {
            return Err(TemplateError::PayloadTooShort(payload_len));
        }
        let udp_len = UDP_HEADER_LEN + payload_len;
        let too_long = TemplateError::PayloadTooLong(payload_len);
        let udp_len16 = u16::try_from(udp_len).map_err(|_| too_long.clone())?;
        let ip = IpRepr::new(channel.source, channel.group, PROTO_UDP, INNER_TTL, udp_len)
            .ok_or(TemplateError::MixedFamilies(channel.source, channel.group))?;
        let mut ip_header = vec![0u8; ip.header_len()];
        ip.emit(&mut ip_header).map_err(|_| too_long.clone())?;
        let pseudo_sum = ip.pseudo_header_sum().map_err(|_| too_long)?;
        let mut udp_header = [0u8; UDP_HEADER_LEN];
        udp_header[0..2].copy_from_slice(&port.to_be_bytes());
        udp_header[2..4].copy_from_slice(&port.to_be_bytes());
        udp_header[4..6].copy_from_slice(&udp_len16.to_be_bytes());
        let mut bytes = Vec::with_capacity(MULTICAST_DATA_HEADER.len() + ip_header.len() + udp_len);
        bytes.extend_from_slice(&MULTICAST_DATA_HEADER);
        bytes.extend_from_slice(&ip_header);
        let udp_offset = bytes.len();
        bytes.extend_from_slice(&udp_header);
        bytes.resize(udp_offset + udp_len, 0);
        Ok(Self {
            bytes,
            probe_offset: udp_offset + UDP_HEADER_LEN,
            udp_checksum_offset: udp_offset + 6,
            fixed_sum: checksum::accumulate(pseudo_sum, &udp_header),
        })
    }

    /// The whole datagram (probe header zero, UDP checksum not yet set).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of the inner IP packet (what a gateway delivers).
    pub fn packet_len(&self) -> usize {
        self.bytes.len() - MULTICAST_DATA_HEADER.len()
    }

    /// Writes the probe header into `datagram` (a copy of [`Self::bytes`])
    /// and sets the UDP checksum; only 18 bytes change per packet.
    pub fn stamp(&self, datagram: &mut [u8], sequence: u64, sent_unix_ns: u64) {
        let mut probe = [0u8; PAYLOAD_HEADER_LEN];
        probe[..8].copy_from_slice(&sequence.to_be_bytes());
        probe[8..].copy_from_slice(&sent_unix_ns.to_be_bytes());
        let sum = match checksum::finish(checksum::accumulate(self.fixed_sum, &probe)) {
            // RFC 768: a computed zero is sent as all ones.
            0 => 0xffff,
            s => s,
        };
        if let Some(p) = datagram.get_mut(self.probe_offset..self.probe_offset + probe.len()) {
            p.copy_from_slice(&probe);
        }
        if let Some(c) = datagram.get_mut(self.udp_checksum_offset..self.udp_checksum_offset + 2) {
            c.copy_from_slice(&sum.to_be_bytes());
        }
    }
}

/// Up to `batch` copies of a template, sent with one `sendmmsg(2)`.
pub struct BatchSender {
    template: DataTemplate,
    slots: Vec<u8>,
    slot_len: usize,
    batch: usize,
}

impl BatchSender {
    pub fn new(template: DataTemplate, batch: usize) -> Self {
        let batch = batch.max(1);
        let slot_len = template.bytes().len();
        let mut slots = Vec::with_capacity(slot_len * batch);
        for _ in 0..batch {
            slots.extend_from_slice(template.bytes());
        }
        Self {
            template,
            slots,
            slot_len,
            batch,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn datagram_len(&self) -> usize {
        self.slot_len
    }

    pub fn packet_len(&self) -> usize {
        self.template.packet_len()
    }

    /// Stamps slots `0..count` with sequences `first..first + count`.
    pub fn stamp(&mut self, first: u64, count: usize, sent_unix_ns: u64) {
        for (i, slot) in self
            .slots
            .chunks_exact_mut(self.slot_len)
            .take(count)
            .enumerate()
        {
            self.template.stamp(slot, first + i as u64, sent_unix_ns);
        }
    }

    /// Sends slots `0..count` to `dest`; returns how many the kernel took
    /// (fewer when the socket buffer is full).
    pub fn send(
        &mut self,
        fd: libc::c_int,
        v6_socket: bool,
        dest: SocketAddr,
        count: usize,
    ) -> io::Result<usize> {
        let addr = SockAddr::from(socket_destination(v6_socket, dest));
        let count = count.min(self.batch);
        let base = self.slots.as_mut_ptr();
        let mut iovecs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                // SAFETY: i < batch, so the slot lies inside `slots`.
                iov_base: unsafe { base.add(i * self.slot_len) }.cast(),
                iov_len: self.slot_len,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid mmsghdr.
                let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
                m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = addr.len();
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every mmsghdr points at live buffers (slots, iovecs,
        // addr) for the duration of the call; the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Probe;
    use amt_gateway::wire::ip;
    use amt_gateway::wire::ipv4::Ipv4Header;
    use amt_gateway::wire::ipv6::NEXT_UDP;

    fn udp_checksum_ok(datagram: &[u8], channel: SourceGroup) -> bool {
        let inner = &datagram[MULTICAST_DATA_HEADER.len()..];
        let (udp, pseudo) = match (channel.source, channel.group) {
            (IpAddr::V4(s), IpAddr::V4(g)) => {
                let h = Ipv4Header::parse(inner).unwrap();
                assert!(h.checksum_ok());
                let udp = h.payload();
                let mut sum = checksum::accumulate(0, &s.octets());
                sum = checksum::accumulate(sum, &g.octets());
                sum = checksum::accumulate(sum, &[0, PROTO_UDP]);
                sum = checksum::accumulate(sum, &(udp.len() as u16).to_be_bytes());
                (udp, sum)
            }
            (IpAddr::V6(s), IpAddr::V6(g)) => {
                let udp = &inner[40..];
                let sum = checksum::ipv6_pseudo_header_sum(&s, &g, udp.len() as u32, NEXT_UDP);
                (udp, sum)
            }
            _ => unreachable!(),
        };
        checksum::finish(checksum::accumulate(pseudo, udp)) == 0
    }

    #[test]
    fn ipv4_datagram_is_valid_amt_data_with_probe() {
        let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
        let t = DataTemplate::new(ch, 5000, 1316).unwrap();
        assert_eq!(t.packet_len(), 20 + 8 + 1316);
        assert_eq!(t.bytes().len(), 2 + 20 + 8 + 1316);
        for seq in [0u64, 1, 0xffff, u64::MAX - 3] {
            let mut d = t.bytes().to_vec();
            t.stamp(&mut d, seq, 1_700_000_000_123_456_789);
            assert_eq!(&d[..2], &MULTICAST_DATA_HEADER);
            let info = ip::inspect(&d[2..]).unwrap();
            assert_eq!((info.src, info.dst, info.len), (ch.source, ch.group, 1344));
            assert!(udp_checksum_ok(&d, ch), "seq {seq}");
            let probe = Probe::decode(&d[2 + 28..]).unwrap();
            assert_eq!(probe.sequence, seq);
            assert_eq!(probe.sent_unix_ns, Some(1_700_000_000_123_456_789));
            assert_eq!(u16::from_be_bytes([d[24], d[25]]), 5000);
        }
    }

    #[test]
    fn ipv6_datagram_checksum_and_lengths() {
        let ch: SourceGroup = "2001:db8:99::1,ff3e::8000:1".parse().unwrap();
        let t = DataTemplate::new(ch, 5000, 100).unwrap();
        assert_eq!(t.packet_len(), 40 + 8 + 100);
        let mut d = t.bytes().to_vec();
        t.stamp(&mut d, 42, 7);
        let info = ip::inspect(&d[2..]).unwrap();
        assert_eq!((info.src, info.dst, info.len), (ch.source, ch.group, 148));
        assert!(udp_checksum_ok(&d, ch));
    }

    #[test]
    fn template_rejects_bad_sizes() {
        let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
        assert_eq!(
            DataTemplate::new(ch, 1, 15).unwrap_err(),
            TemplateError::PayloadTooShort(15)
        );
        assert_eq!(
            DataTemplate::new(ch, 1, 70_000).unwrap_err(),
            TemplateError::PayloadTooLong(70_000)
        );
    }

    #[test]
    fn batch_sender_stamps_consecutive_sequences() {
        let ch: SourceGroup = "10.99.0.1,232.9.9.9".parse().unwrap();
        let mut s = BatchSender::new(DataTemplate::new(ch, 5000, 100).unwrap(), 4);
        s.stamp(10, 3, 1);
        let seqs: Vec<u64> = s
            .slots
            .chunks_exact(s.datagram_len())
            .map(|d| Probe::decode(&d[30..]).unwrap().sequence)
            .collect();
        assert_eq!(seqs, vec![10, 11, 12, 0]);
    }
}
