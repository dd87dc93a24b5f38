//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Checksums: a mutated packet almost never carries a correct Internet
//! checksum, so a target that only fed raw bytes would stop at the checksum
//! check and never reach the record parsing behind it. Targets therefore
//! take a mode byte and, when its low bit is set, repair the checksums
//! before parsing (the other half of the inputs still exercises the
//! rejection of bad checksums).

use std::fmt::{Debug, Display};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use amt_gateway::Tunnel;
use amt_gateway::relay::Relay;
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
            // One byte left: too short for a length, it is the body.
            _ => (rest.len(), rest),
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

/// A copy of `message` (what follows the mode byte), its checksums
/// repaired by `repair` when the mode's bit 0 asks (see the module docs).
pub fn repaired(mode: u8, message: &[u8], repair: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut message = message.to_vec();
    if mode & 1 != 0 {
        repair(&mut message);
    }
    message
}

/// Checks an encoder against its parser on a parsed message: `emit` into
/// `buffer_len` bytes writes exactly that many, the bytes parse back to
/// `parsed`, and a buffer one byte short is refused. An encode error on
/// the full buffer (more records or sources than the format can count)
/// ends the check: it is an error value, not a panic.
pub fn check_emit_round_trip<T, D, E>(
    parsed: &T,
    buffer_len: usize,
    emit: impl Fn(&mut [u8]) -> Result<usize, E>,
    parse: impl Fn(&[u8]) -> Result<T, D>,
) where
    T: PartialEq + Debug,
    D: PartialEq + Debug,
{
    let mut out = vec![0u8; buffer_len];
    let Ok(len) = emit(&mut out) else {
        return;
    };
    assert_eq!(len, out.len());
    assert_eq!(parse(&out).as_ref(), Ok(parsed));
    assert!(emit(&mut out[..len - 1]).is_err());
}

/// The targets of the IP datagrams inside AMT messages: `data` is a mode
/// byte (bit 0: repair the checksums first; the other bits are for
/// `rebuild`) and the datagram. What `parse` makes of it, `rebuild` encodes
/// again with the gateway's own encoder, and that must parse to the same
/// `what` (query, report). A rebuild that fails to encode (too large for
/// one datagram) is an error value, not a panic, and ends the check.
pub fn check_encap_round_trip<T, D, E>(
    what: &str,
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, D>,
    rebuild: impl FnOnce(&T, u8) -> Result<Vec<u8>, E>,
) where
    T: PartialEq + Debug,
    D: Debug,
{
    let Some((&mode, datagram)) = data.split_first() else {
        return;
    };
    let Ok(parsed) = parse(&repaired(mode, datagram, fix_datagram_checksums)) else {
        return;
    };
    if let Ok(bytes) = rebuild(&parsed, mode) {
        let again =
            parse(&bytes).unwrap_or_else(|e| panic!("a rebuilt {what} does not parse: {e:?}"));
        assert_eq!(
            again, parsed,
            "parse -> rebuild -> parse changed the {what}"
        );
    }
}

/// For the parsers of presentation text: `data` as UTF-8 parsed with
/// `parse`, and what it parses to must print (`Display`) to text that
/// parses to the same value. Returns the value for the target's further
/// checks; `None` when `data` is not UTF-8 or does not parse.
pub fn check_text_round_trip<T, E>(data: &[u8], parse: impl Fn(&str) -> Result<T, E>) -> Option<T>
where
    T: Display + PartialEq + Debug,
    E: Display,
{
    let value = parse(std::str::from_utf8(data).ok()?).ok()?;
    let printed = value.to_string();
    let again =
        parse(&printed).unwrap_or_else(|e| panic!("own text {printed:?} does not parse: {e}"));
    assert_eq!(again, value, "text round trip via {printed:?}");
    Some(value)
}

/// For the host-meta parsers (XML and JSON): no panic on `data`, and a
/// RESTCONF href found in it is non-empty and trimmed.
pub fn check_host_meta<E>(data: &[u8], parse: impl Fn(&str) -> Result<String, E>) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(href) = parse(text) {
        assert!(!href.is_empty());
        assert_eq!(href.trim(), href);
    }
}

/// A sans-IO core driven by timers: the gateway's tunnel, the relay.
pub trait Timers {
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
}

impl Timers for Tunnel {
    fn poll_timeout(&self) -> Option<Instant> {
        Tunnel::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Tunnel::handle_timeout(self, now);
    }
}

impl Timers for Relay {
    fn poll_timeout(&self) -> Option<Instant> {
        Relay::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Relay::handle_timeout(self, now);
    }
}

/// A clock step: moves `now` on by `tick` times the little-endian u16 at
/// the start of `body` (`default_ticks` when shorter), then runs every
/// timer of `core` that is due, as the drivers do (at most 8 rounds a step).
pub fn advance_clock(
    core: &mut impl Timers,
    now: &mut Instant,
    body: &[u8],
    default_ticks: u16,
    tick: Duration,
) {
    let ticks = body
        .get(..2)
        .map_or(default_ticks, |b| u16::from_le_bytes([b[0], b[1]]));
    *now += tick * u32::from(ticks);
    for _ in 0..8 {
        match core.poll_timeout() {
            Some(at) if at <= *now => core.handle_timeout(*now),
            _ => break,
        }
    }
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
