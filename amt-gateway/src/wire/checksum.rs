//! Internet checksum (RFC 1071), the IPv4 and IPv6 pseudo-header sums
//! (RFC 768, RFC 8200 §8.1) and incremental update (RFC 1624).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` to a running one's-complement sum. Slices other than the last
/// one must have even length (every caller passes whole header fields).
pub fn accumulate(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        // Fold early so the accumulator can never overflow.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds and complements a running sum into the checksum field value.
pub fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checksum of one contiguous buffer. Verifying a buffer that contains a
/// correct checksum field yields 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// Sum of the IPv4 pseudo-header (source, destination, zero, protocol,
/// upper-layer length) to start a UDP checksum with.
pub fn ipv4_pseudo_header_sum(src: &Ipv4Addr, dst: &Ipv4Addr, upper_len: u16, protocol: u8) -> u32 {
    let mut sum = accumulate(0, &src.octets());
    sum = accumulate(sum, &dst.octets());
    sum = accumulate(sum, &[0, protocol]);
    accumulate(sum, &upper_len.to_be_bytes())
}

/// Sum of the IPv6 pseudo-header (source, destination, upper-layer length,
/// next header) to start an ICMPv6/UDP checksum with.
pub fn ipv6_pseudo_header_sum(
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    upper_len: u32,
    next_header: u8,
) -> u32 {
    let mut sum = accumulate(0, &src.octets());
    sum = accumulate(sum, &dst.octets());
    sum = accumulate(sum, &upper_len.to_be_bytes());
    accumulate(sum, &[0, 0, 0, next_header])
}

/// RFC 1624 eqn. 3: new checksum after one 16-bit word changed from `old`
/// to `new`, without re-summing the header.
pub fn incremental_update(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 -> sum 0xddf2, checksum 0x220d
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), 0x220d);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            internet_checksum(&[0x12, 0x34, 0x56]),
            internet_checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn known_ipv4_header() {
        // Classic example header (Wikipedia "IPv4 header checksum"): checksum b861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr), 0xb861);
        hdr[10] = 0xb8;
        hdr[11] = 0x61;
        assert_eq!(internet_checksum(&hdr), 0);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x01, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        hdr[10] = 0;
        hdr[11] = 0;
        let full_before = internet_checksum(&hdr);
        let old_word = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] = 2;
        let new_word = u16::from_be_bytes([hdr[8], hdr[9]]);
        let full_after = internet_checksum(&hdr);
        assert_eq!(
            incremental_update(full_before, old_word, new_word),
            full_after
        );
    }

    #[test]
    fn large_buffer_does_not_overflow() {
        let data = vec![0xffu8; 70_000];
        // All-ones words sum to 0xffff in one's complement: checksum 0.
        assert_eq!(internet_checksum(&data), 0);
    }
}
