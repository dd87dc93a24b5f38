//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Checksums: a mutated packet almost never carries a correct Internet
//! checksum, so a target that only fed raw bytes would stop at the checksum
//! check and never reach the record parsing behind it. Targets therefore
//! take a mode byte and, when its low bit is set, repair the checksums
//! before parsing (the other half of the inputs still exercises the
//! rejection of bad checksums).

use std::net::Ipv6Addr;

use amt_gateway::wire::checksum;
use amt_gateway::wire::ipv6::{HEADER_LEN as IPV6_HEADER_LEN, Ipv6Header, NEXT_ICMPV6};

/// Splits fuzz input into frames: one control byte, a little-endian u16
/// length (cut to what is left), then that many bytes. Lets one input
/// describe a sequence of datagrams or reads.
pub struct Frames<'a> {
    data: &'a [u8],
}

impl<'a> Frames<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&control, rest) = self.data.split_first()?;
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        let (body, rest) = rest.split_at(len);
        self.data = rest;
        Some((control, body))
    }
}

/// Writes a correct Internet checksum into `buf[at..at + 2]` over all of
/// `buf` (the IGMP message, or an IPv4 header).
pub fn fix_internet_checksum(buf: &mut [u8], at: usize) {
    if buf.len() < at + 2 {
        return;
    }
    buf[at..at + 2].fill(0);
    let sum = checksum::internet_checksum(buf);
    buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Writes a correct ICMPv6 checksum into an MLD message `buf` sent from
/// `src` to `dst`.
pub fn fix_icmpv6_checksum(buf: &mut [u8], src: &Ipv6Addr, dst: &Ipv6Addr) {
    if buf.len() < 4 {
        return;
    }
    let Ok(len) = u32::try_from(buf.len()) else {
        return;
    };
    buf[2..4].fill(0);
    let sum = checksum::accumulate(
        checksum::ipv6_pseudo_header_sum(src, dst, len, NEXT_ICMPV6),
        buf,
    );
    buf[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());
}

/// Repairs every checksum of an IPv4/IGMP or IPv6/ICMPv6 datagram as far
/// as its headers can be read; leaves anything unreadable alone.
pub fn fix_datagram_checksums(datagram: &mut [u8]) {
    match datagram.first().map(|b| b >> 4) {
        Some(4) => {
            let header_len = usize::from(datagram[0] & 0x0f) * 4;
            if header_len < 20 || datagram.len() < header_len {
                return;
            }
            fix_internet_checksum(&mut datagram[..header_len], 10);
            let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
            if total >= header_len && total <= datagram.len() {
                fix_internet_checksum(&mut datagram[header_len..total], 2);
            }
        }
        Some(6) => {
            let (offset, total, src, dst) = {
                let Ok(header) = Ipv6Header::parse(datagram) else {
                    return;
                };
                let Ok(upper) = header.upper_layer() else {
                    return;
                };
                if upper.protocol != NEXT_ICMPV6 || upper.offset < IPV6_HEADER_LEN {
                    return;
                }
                (upper.offset, header.total_len(), header.src(), header.dst())
            };
            if offset <= total {
                fix_icmpv6_checksum(&mut datagram[offset..total], &src, &dst);
            }
        }
        _ => {}
    }
}

/// Reads an IPv6 address from the first 16 bytes of `bytes`, padding with
/// zeros when shorter; returns the rest.
pub fn take_ipv6(bytes: &[u8]) -> (Ipv6Addr, &[u8]) {
    let mut octets = [0u8; 16];
    let n = bytes.len().min(16);
    octets[..n].copy_from_slice(&bytes[..n]);
    (Ipv6Addr::from(octets), &bytes[n..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_cut() {
        let data = [7, 2, 0, b'a', b'b', 9, 5, 0, b'c'];
        let frames: Vec<_> = Frames::new(&data).collect();
        assert_eq!(frames, vec![(7, &b"ab"[..]), (9, &b"c"[..])]);
        let frames: Vec<_> = Frames::new(&[1, 2]).collect();
        assert_eq!(frames, vec![(1, &[2u8][..])]);
    }
}
