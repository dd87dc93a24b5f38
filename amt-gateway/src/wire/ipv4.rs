//! Minimal IPv4 header: a checked view for parsing, a repr for building the
//! datagrams that carry IGMP inside AMT, and a TTL rewrite for the data path.

use std::net::Ipv4Addr;

use super::checksum;
use super::{DecodeError, EncodeError, be16, need, room, v4_at};

pub const MIN_HEADER_LEN: usize = 20;
pub const PROTO_IGMP: u8 = 2;
pub const PROTO_UDP: u8 = 17;
/// Router Alert option (RFC 2113): type 148, length 4, value 0.
pub const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// A checked view of an IPv4 header at the start of `buf`.
///
/// `parse` guarantees: version 4, IHL ≥ 5, the header fits, and
/// header length ≤ total length ≤ `buf.len()` (bytes past total length are
/// ignored by every accessor).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Header<'a> {
    buf: &'a [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Ipv4Header<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        need(buf, MIN_HEADER_LEN)?;
        let version = buf[0] >> 4;
        if version != 4 {
            return Err(DecodeError::IpVersion(version, 4));
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(DecodeError::IpHeaderLength(header_len));
        }
        need(buf, header_len)?;
        let total_len = usize::from(be16(buf, 2)?);
        if total_len < header_len || total_len > buf.len() {
            return Err(DecodeError::IpTotalLength {
                total: total_len,
                available: buf.len(),
            });
        }
        Ok(Self {
            buf,
            header_len,
            total_len,
        })
    }

    pub fn header_len(&self) -> usize {
        self.header_len
    }
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[12], self.buf[13], self.buf[14], self.buf[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[16], self.buf[17], self.buf[18], self.buf[19])
    }
    /// True when the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        checksum::internet_checksum(&self.buf[..self.header_len]) == 0
    }
    /// True when a fragment (MF set or non-zero offset).
    pub fn is_fragment(&self) -> bool {
        let word = u16::from_be_bytes([self.buf[6], self.buf[7]]);
        word & 0x3fff != 0
    }
    pub fn options(&self) -> &'a [u8] {
        &self.buf[MIN_HEADER_LEN..self.header_len]
    }
    /// True when the options contain a Router Alert (type 148).
    pub fn has_router_alert(&self) -> bool {
        let mut opts = self.options();
        while let Some(&kind) = opts.first() {
            match kind {
                0 => return false, // end of option list
                1 => opts = &opts[1..],
                _ => {
                    let len = usize::from(*opts.get(1).unwrap_or(&0));
                    if kind == ROUTER_ALERT[0] {
                        return true;
                    }
                    if len < 2 || len > opts.len() {
                        return false;
                    }
                    opts = &opts[len..];
                }
            }
        }
        false
    }
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..self.total_len]
    }
}

/// Fields needed to emit an IPv4 header for a locally built datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    /// Whole TOS byte (IGMP uses 0xc0, internetwork control).
    pub tos: u8,
    pub router_alert: bool,
    pub payload_len: usize,
}

impl Ipv4Repr {
    pub fn header_len(&self) -> usize {
        if self.router_alert {
            MIN_HEADER_LEN + ROUTER_ALERT.len()
        } else {
            MIN_HEADER_LEN
        }
    }

    pub fn total_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header (with checksum) into `buf[..header_len()]`.
    /// Identification is 0 and DF is clear: these datagrams are tiny and
    /// never leave the tunnel.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let hl = self.header_len();
        room(buf, hl)?;
        let total = u16::try_from(self.total_len())
            .map_err(|_| EncodeError::Overflow("IPv4 total length"))?;
        let hdr = &mut buf[..hl];
        hdr[0] = 0x40 | (hl / 4) as u8;
        hdr[1] = self.tos;
        hdr[2..4].copy_from_slice(&total.to_be_bytes());
        hdr[4..8].fill(0);
        hdr[8] = self.ttl;
        hdr[9] = self.protocol;
        hdr[10..12].fill(0);
        hdr[12..16].copy_from_slice(&self.src.octets());
        hdr[16..20].copy_from_slice(&self.dst.octets());
        if self.router_alert {
            hdr[20..24].copy_from_slice(&ROUTER_ALERT);
        }
        let sum = checksum::internet_checksum(hdr);
        hdr[10..12].copy_from_slice(&sum.to_be_bytes());
        Ok(hl)
    }
}

/// Rewrites the TTL of the IPv4 packet at the start of `packet` and patches
/// the header checksum incrementally (RFC 1624). Returns the previous TTL.
pub fn set_ttl(packet: &mut [u8], ttl: u8) -> Result<u8, DecodeError> {
    need(packet, MIN_HEADER_LEN)?;
    let old_word = u16::from_be_bytes([packet[8], packet[9]]);
    let old_ttl = packet[8];
    packet[8] = ttl;
    let new_word = u16::from_be_bytes([packet[8], packet[9]]);
    let old_sum = u16::from_be_bytes([packet[10], packet[11]]);
    let new_sum = checksum::incremental_update(old_sum, old_word, new_word);
    packet[10..12].copy_from_slice(&new_sum.to_be_bytes());
    Ok(old_ttl)
}

/// Source address at bytes 12..16 without the full checks (used by callers
/// that already parsed the header).
pub fn src_of(packet: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    v4_at(packet, 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_repr(router_alert: bool) -> Ipv4Repr {
        Ipv4Repr {
            src: Ipv4Addr::new(10, 8, 8, 2),
            dst: Ipv4Addr::new(224, 0, 0, 22),
            protocol: PROTO_IGMP,
            ttl: 1,
            tos: 0xc0,
            router_alert,
            payload_len: 20,
        }
    }

    #[test]
    fn emit_then_parse_with_router_alert() {
        let repr = sample_repr(true);
        let mut buf = vec![0u8; repr.total_len()];
        assert_eq!(repr.emit(&mut buf), Ok(24));
        assert_eq!(&buf[..4], &[0x46, 0xc0, 0x00, 0x2c]);
        assert_eq!(&buf[20..24], &ROUTER_ALERT);
        let hdr = Ipv4Header::parse(&buf).unwrap();
        assert_eq!(hdr.header_len(), 24);
        assert_eq!(hdr.total_len(), 44);
        assert_eq!(hdr.ttl(), 1);
        assert_eq!(hdr.protocol(), PROTO_IGMP);
        assert_eq!(hdr.src(), Ipv4Addr::new(10, 8, 8, 2));
        assert_eq!(hdr.dst(), Ipv4Addr::new(224, 0, 0, 22));
        assert!(hdr.checksum_ok());
        assert!(hdr.has_router_alert());
        assert_eq!(hdr.payload().len(), 20);
    }

    #[test]
    fn hand_computed_header_bytes() {
        // 46 c0 002c 0000 0000 01 02 csum 0a080802 e0000016 94040000
        let repr = sample_repr(true);
        let mut buf = [0u8; 24];
        repr.emit(&mut buf).unwrap();
        let mut expected: [u8; 24] = [
            0x46, 0xc0, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x0a, 0x08,
            0x08, 0x02, 0xe0, 0x00, 0x00, 0x16, 0x94, 0x04, 0x00, 0x00,
        ];
        // Sum of 16-bit words: 46c0+002c+0102+0a08+0802+e000+0016+9404
        // = 0x1_ce12 -> fold 0xce13 -> complement 0x31ec
        expected[10] = 0x31;
        expected[11] = 0xec;
        assert_eq!(buf, expected);
    }

    #[test]
    fn parse_rejects_bad_inputs() {
        assert!(matches!(
            Ipv4Header::parse(&[0x45; 10]),
            Err(DecodeError::Truncated { .. })
        ));
        let repr = sample_repr(false);
        let mut buf = vec![0u8; repr.total_len()];
        repr.emit(&mut buf).unwrap();
        let mut v6 = buf.clone();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Header::parse(&v6).unwrap_err(),
            DecodeError::IpVersion(6, 4)
        );
        let mut short_ihl = buf.clone();
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Header::parse(&short_ihl).unwrap_err(),
            DecodeError::IpHeaderLength(16)
        );
        let mut long_total = buf.clone();
        long_total[3] = 200;
        assert!(matches!(
            Ipv4Header::parse(&long_total),
            Err(DecodeError::IpTotalLength { .. })
        ));
        assert!(matches!(
            Ipv4Header::parse(&buf[..30]),
            Err(DecodeError::IpTotalLength { .. })
        ));
        let hdr = Ipv4Header::parse(&buf).unwrap();
        assert!(!hdr.has_router_alert());
    }

    #[test]
    fn trailing_bytes_after_total_length_are_ignored() {
        let repr = sample_repr(false);
        let mut buf = vec![0u8; repr.total_len() + 7];
        repr.emit(&mut buf).unwrap();
        let hdr = Ipv4Header::parse(&buf).unwrap();
        assert_eq!(hdr.payload().len(), 20);
    }

    #[test]
    fn set_ttl_keeps_checksum_valid() {
        let repr = Ipv4Repr {
            ttl: 1,
            protocol: PROTO_UDP,
            ..sample_repr(false)
        };
        let mut buf = vec![0u8; repr.total_len()];
        repr.emit(&mut buf).unwrap();
        assert_eq!(set_ttl(&mut buf, 2), Ok(1));
        let hdr = Ipv4Header::parse(&buf).unwrap();
        assert_eq!(hdr.ttl(), 2);
        assert!(hdr.checksum_ok());
        for ttl in 0..=255u8 {
            set_ttl(&mut buf, ttl).unwrap();
            assert!(Ipv4Header::parse(&buf).unwrap().checksum_ok(), "ttl {ttl}");
        }
    }
}
