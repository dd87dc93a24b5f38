//! Minimal IPv6 header: checked view with an extension-header walk (enough to
//! reach ICMPv6 behind a Hop-by-Hop Router Alert), a repr to build MLD
//! datagrams, and a hop-limit rewrite for the data path.

use std::net::Ipv6Addr;

use super::{DecodeError, EncodeError, be16, need, room, v6_at};

pub const HEADER_LEN: usize = 40;
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_ICMPV6: u8 = 58;
pub const NEXT_DEST_OPTS: u8 = 60;
pub const NEXT_UDP: u8 = 17;
/// Hop-by-Hop option type of Router Alert (RFC 2711).
pub const OPT_ROUTER_ALERT: u8 = 5;
/// Length of the Hop-by-Hop header we emit: Router Alert (value 0 = MLD)
/// followed by a 2-byte PadN.
pub const HOP_BY_HOP_RA_LEN: usize = 8;

/// A checked view of an IPv6 header at the start of `buf`.
///
/// `parse` guarantees: version 6, 40 bytes present, and
/// 40 + payload length ≤ `buf.len()`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Header<'a> {
    buf: &'a [u8],
    total_len: usize,
}

/// Where the upper-layer header starts, found by walking extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    pub protocol: u8,
    /// Offset from the start of the IPv6 header.
    pub offset: usize,
    pub router_alert: bool,
}

impl<'a> Ipv6Header<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        need(buf, HEADER_LEN)?;
        let version = buf[0] >> 4;
        if version != 6 {
            return Err(DecodeError::IpVersion(version, 6));
        }
        let total_len = HEADER_LEN + usize::from(be16(buf, 4)?);
        if total_len > buf.len() {
            return Err(DecodeError::IpTotalLength {
                total: total_len,
                available: buf.len(),
            });
        }
        Ok(Self { buf, total_len })
    }

    pub fn total_len(&self) -> usize {
        self.total_len
    }
    pub fn payload_len(&self) -> usize {
        self.total_len - HEADER_LEN
    }
    pub fn next_header(&self) -> u8 {
        self.buf[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buf[7]
    }
    pub fn src(&self) -> Ipv6Addr {
        // parse() checked the length.
        v6_at(self.buf, 8).unwrap_or(Ipv6Addr::UNSPECIFIED)
    }
    pub fn dst(&self) -> Ipv6Addr {
        v6_at(self.buf, 24).unwrap_or(Ipv6Addr::UNSPECIFIED)
    }
    /// The whole packet (header and payload, trimmed to the payload length).
    pub fn packet(&self) -> &'a [u8] {
        &self.buf[..self.total_len]
    }

    /// Walks Hop-by-Hop, Routing, Destination Options and Fragment headers
    /// to the first other header.
    pub fn upper_layer(&self) -> Result<UpperLayer, DecodeError> {
        let packet = self.packet();
        let mut next = self.next_header();
        let mut offset = HEADER_LEN;
        let mut router_alert = false;
        // Bounded: each step advances at least 8 bytes.
        loop {
            match next {
                NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                    let hdr = packet
                        .get(offset..offset + 2)
                        .ok_or(DecodeError::ExtensionHeaders)?;
                    let len = (usize::from(hdr[1]) + 1) * 8;
                    let ext = packet
                        .get(offset..offset + len)
                        .ok_or(DecodeError::ExtensionHeaders)?;
                    if next == NEXT_HOP_BY_HOP {
                        if offset != HEADER_LEN {
                            // Hop-by-Hop is only valid right after the fixed header.
                            return Err(DecodeError::ExtensionHeaders);
                        }
                        router_alert = options_have_router_alert(&ext[2..]);
                    }
                    next = hdr[0];
                    offset += len;
                }
                NEXT_FRAGMENT => {
                    let hdr = packet
                        .get(offset..offset + 8)
                        .ok_or(DecodeError::ExtensionHeaders)?;
                    next = hdr[0];
                    offset += 8;
                }
                protocol => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        router_alert,
                    });
                }
            }
        }
    }
}

fn options_have_router_alert(mut opts: &[u8]) -> bool {
    while let Some(&kind) = opts.first() {
        if kind == 0 {
            // Pad1
            opts = &opts[1..];
            continue;
        }
        let Some(&len) = opts.get(1) else {
            return false;
        };
        if kind == OPT_ROUTER_ALERT {
            return true;
        }
        let skip = 2 + usize::from(len);
        if skip > opts.len() {
            return false;
        }
        opts = &opts[skip..];
    }
    false
}

/// Fields needed to emit an IPv6 header (plus an optional Hop-by-Hop
/// Router Alert header) for a locally built datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Upper-layer protocol (after the optional Hop-by-Hop header).
    pub next_header: u8,
    pub hop_limit: u8,
    pub router_alert: bool,
    /// Upper-layer payload length (excluding the Hop-by-Hop header).
    pub payload_len: usize,
}

impl Ipv6Repr {
    pub fn header_len(&self) -> usize {
        if self.router_alert {
            HEADER_LEN + HOP_BY_HOP_RA_LEN
        } else {
            HEADER_LEN
        }
    }

    pub fn total_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes fixed header (+ Hop-by-Hop) into `buf[..header_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let hl = self.header_len();
        room(buf, hl)?;
        let payload_len = u16::try_from(self.total_len() - HEADER_LEN)
            .map_err(|_| EncodeError::Overflow("IPv6 payload length"))?;
        let hdr = &mut buf[..hl];
        hdr[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
        hdr[4..6].copy_from_slice(&payload_len.to_be_bytes());
        hdr[6] = if self.router_alert {
            NEXT_HOP_BY_HOP
        } else {
            self.next_header
        };
        hdr[7] = self.hop_limit;
        hdr[8..24].copy_from_slice(&self.src.octets());
        hdr[24..40].copy_from_slice(&self.dst.octets());
        if self.router_alert {
            hdr[40..48].copy_from_slice(&[self.next_header, 0, OPT_ROUTER_ALERT, 2, 0, 0, 1, 0]);
        }
        Ok(hl)
    }
}

/// Rewrites the hop limit (no header checksum in IPv6). Returns the old one.
pub fn set_hop_limit(packet: &mut [u8], hop_limit: u8) -> Result<u8, DecodeError> {
    need(packet, HEADER_LEN)?;
    let old = packet[7];
    packet[7] = hop_limit;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src: "fe80::1".parse().unwrap(),
            dst: "ff02::16".parse().unwrap(),
            next_header: NEXT_ICMPV6,
            hop_limit: 1,
            router_alert: true,
            payload_len: 28,
        }
    }

    #[test]
    fn emit_parse_round_trip_with_router_alert() {
        let r = repr();
        let mut buf = vec![0u8; r.total_len()];
        assert_eq!(r.emit(&mut buf), Ok(48));
        assert_eq!(&buf[..8], &[0x60, 0, 0, 0, 0, 36, 0, 1]);
        assert_eq!(&buf[40..48], &[58, 0, 5, 2, 0, 0, 1, 0]);
        let hdr = Ipv6Header::parse(&buf).unwrap();
        assert_eq!(hdr.src(), r.src);
        assert_eq!(hdr.dst(), r.dst);
        assert_eq!(hdr.hop_limit(), 1);
        assert_eq!(hdr.payload_len(), 36);
        assert_eq!(
            hdr.upper_layer(),
            Ok(UpperLayer {
                protocol: NEXT_ICMPV6,
                offset: 48,
                router_alert: true
            })
        );
    }

    #[test]
    fn no_extension_headers() {
        let r = Ipv6Repr {
            router_alert: false,
            next_header: NEXT_UDP,
            ..repr()
        };
        let mut buf = vec![0u8; r.total_len()];
        r.emit(&mut buf).unwrap();
        let hdr = Ipv6Header::parse(&buf).unwrap();
        assert_eq!(
            hdr.upper_layer(),
            Ok(UpperLayer {
                protocol: NEXT_UDP,
                offset: 40,
                router_alert: false
            })
        );
    }

    #[test]
    fn rejects_bad_inputs() {
        let r = repr();
        let mut buf = vec![0u8; r.total_len()];
        r.emit(&mut buf).unwrap();
        assert!(matches!(
            Ipv6Header::parse(&buf[..39]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Ipv6Header::parse(&buf[..60]),
            Err(DecodeError::IpTotalLength { .. })
        ));
        let mut v4 = buf.clone();
        v4[0] = 0x45;
        assert_eq!(
            Ipv6Header::parse(&v4).unwrap_err(),
            DecodeError::IpVersion(4, 6)
        );
        // Hop-by-Hop length running past the packet.
        let mut long_ext = buf.clone();
        long_ext[41] = 10;
        assert_eq!(
            Ipv6Header::parse(&long_ext).unwrap().upper_layer(),
            Err(DecodeError::ExtensionHeaders)
        );
        // Hop-by-Hop pointing at another Hop-by-Hop.
        let mut twice = buf.clone();
        twice[40] = 0;
        assert_eq!(
            Ipv6Header::parse(&twice).unwrap().upper_layer(),
            Err(DecodeError::ExtensionHeaders)
        );
    }

    #[test]
    fn hop_limit_rewrite() {
        let r = repr();
        let mut buf = vec![0u8; r.total_len()];
        r.emit(&mut buf).unwrap();
        assert_eq!(set_hop_limit(&mut buf, 2), Ok(1));
        assert_eq!(Ipv6Header::parse(&buf).unwrap().hop_limit(), 2);
    }
}
