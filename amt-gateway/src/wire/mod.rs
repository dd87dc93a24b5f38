//! Wire formats, one module per format (smoltcp `wire` style).
//!
//! Every decoder takes untrusted bytes and returns a typed [`DecodeError`]
//! instead of panicking. Encoders write into a caller-provided buffer or a
//! fresh `Vec` (control path only; the data path never encodes).

pub mod amt;
pub mod checksum;
pub mod encap;
pub mod igmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod mld;
pub mod pim;
pub mod udp;

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("AMT version {0} is not 0")]
    AmtVersion(u8),
    #[error("unknown AMT message type {0}")]
    AmtType(u8),
    #[error("wrong length {len} for {what}")]
    Length { what: &'static str, len: usize },
    #[error("IP version {0} where {1} was expected")]
    IpVersion(u8, u8),
    #[error("bad IP header length {0}")]
    IpHeaderLength(usize),
    #[error("IP total length {total} inconsistent with {available} available bytes")]
    IpTotalLength { total: usize, available: usize },
    #[error("bad checksum in {0}")]
    Checksum(&'static str),
    #[error("unexpected IP protocol / next header {0}")]
    Protocol(u8),
    #[error("unexpected {what} message type {value:#04x}")]
    MessageType { what: &'static str, value: u8 },
    #[error("malformed IPv6 extension header chain")]
    ExtensionHeaders,
    #[error("PIM version {0} is not 2")]
    PimVersion(u8),
    #[error("unknown address family {0} in {1}")]
    AddressFamily(u8, &'static str),
}

/// Why encoding failed (the caller's buffer is too small, or a value does
/// not fit its field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("{0} does not fit its field")]
    Overflow(&'static str),
}

pub(crate) fn need(buf: &[u8], needed: usize) -> Result<(), DecodeError> {
    if buf.len() < needed {
        Err(DecodeError::Truncated {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn room(buf: &[u8], needed: usize) -> Result<(), EncodeError> {
    if buf.len() < needed {
        Err(EncodeError::BufferTooSmall {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Checks that `buf` starts with message type `expected` of protocol
/// `what` (IGMP, ICMPv6).
pub(crate) fn expect_type(buf: &[u8], expected: u8, what: &'static str) -> Result<(), DecodeError> {
    need(buf, 1)?;
    if buf[0] == expected {
        Ok(())
    } else {
        Err(DecodeError::MessageType {
            what,
            value: buf[0],
        })
    }
}

/// The first `len` bytes of `buf`, to encode a message into, and `count`
/// as the message's 16-bit count field (`what` names it in the error).
pub(crate) fn message_out<'a>(
    buf: &'a mut [u8],
    len: usize,
    count: usize,
    what: &'static str,
) -> Result<(&'a mut [u8], u16), EncodeError> {
    room(buf, len)?;
    let count = u16::try_from(count).map_err(|_| EncodeError::Overflow(what))?;
    Ok((&mut buf[..len], count))
}

/// Big-endian u16 at `at`; callers have already checked the length.
pub(crate) fn be16(buf: &[u8], at: usize) -> Result<u16, DecodeError> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DecodeError::Truncated {
            needed: at + 2,
            available: buf.len(),
        }),
    }
}

pub(crate) fn be32(buf: &[u8], at: usize) -> Result<u32, DecodeError> {
    match buf.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(DecodeError::Truncated {
            needed: at + 4,
            available: buf.len(),
        }),
    }
}

pub(crate) fn v4_at(buf: &[u8], at: usize) -> Result<Ipv4Addr, DecodeError> {
    be32(buf, at).map(Ipv4Addr::from)
}

pub(crate) fn v6_at(buf: &[u8], at: usize) -> Result<Ipv6Addr, DecodeError> {
    match buf.get(at..at + 16) {
        Some(b) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            Ok(Ipv6Addr::from(octets))
        }
        None => Err(DecodeError::Truncated {
            needed: at + 16,
            available: buf.len(),
        }),
    }
}

/// IGMPv3 / MLDv2 group record types (RFC 3376 §4.2.12, RFC 3810 §5.2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    ModeIsInclude,
    ModeIsExclude,
    ChangeToInclude,
    ChangeToExclude,
    AllowNewSources,
    BlockOldSources,
    /// A value outside 1..=6; kept so a parser can skip it.
    Unknown(u8),
}

impl RecordType {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::ModeIsInclude,
            2 => Self::ModeIsExclude,
            3 => Self::ChangeToInclude,
            4 => Self::ChangeToExclude,
            5 => Self::AllowNewSources,
            6 => Self::BlockOldSources,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::ModeIsInclude => 1,
            Self::ModeIsExclude => 2,
            Self::ChangeToInclude => 3,
            Self::ChangeToExclude => 4,
            Self::AllowNewSources => 5,
            Self::BlockOldSources => 6,
            Self::Unknown(v) => v,
        }
    }
}

/// One group record of an IGMPv3 (`A = Ipv4Addr`) or MLDv2 (`A = Ipv6Addr`)
/// report. Auxiliary data is skipped on decode and never emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord<A> {
    pub record_type: RecordType,
    pub group: A,
    pub sources: Vec<A>,
}

/// The address of a group record: IPv4 for IGMPv3, IPv6 for MLDv2. Both
/// reports lay records out alike (RFC 3376 §4.2.4, RFC 3810 §5.2.4): type,
/// aux data length (in 32-bit words), source count, group, sources, aux data.
pub trait RecordAddress: Copy + Into<std::net::IpAddr> {
    /// Encoded length.
    const LEN: usize;
    fn read(buf: &[u8], at: usize) -> Result<Self, DecodeError>;
    fn write(&self, out: &mut [u8]);
}

impl RecordAddress for Ipv4Addr {
    const LEN: usize = 4;
    fn read(buf: &[u8], at: usize) -> Result<Self, DecodeError> {
        v4_at(buf, at)
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.octets());
    }
}

impl RecordAddress for Ipv6Addr {
    const LEN: usize = 16;
    fn read(buf: &[u8], at: usize) -> Result<Self, DecodeError> {
        v6_at(buf, at)
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.octets());
    }
}

impl<A: RecordAddress> GroupRecord<A> {
    /// Length of the fixed part (type, aux length, count, group).
    pub(crate) const HEADER_LEN: usize = 4 + A::LEN;

    /// Encoded size (no auxiliary data).
    pub fn encoded_len(&self) -> usize {
        Self::HEADER_LEN + A::LEN * self.sources.len()
    }

    /// The same record with plain IP addresses.
    pub fn to_ip(&self) -> GroupRecord<std::net::IpAddr> {
        GroupRecord {
            record_type: self.record_type,
            group: self.group.into(),
            sources: self.sources.iter().map(|s| (*s).into()).collect(),
        }
    }

    /// Decodes `count` records starting at `buf[at..]`.
    pub(crate) fn parse_all(buf: &[u8], at: usize, count: usize) -> Result<Vec<Self>, DecodeError> {
        let mut records = Vec::with_capacity(count.min(buf.len() / Self::HEADER_LEN));
        let mut at = at;
        for _ in 0..count {
            need(buf, at + Self::HEADER_LEN)?;
            let record_type = RecordType::from_u8(buf[at]);
            let aux_len = usize::from(buf[at + 1]) * 4;
            let n = usize::from(be16(buf, at + 2)?);
            let group = A::read(buf, at + 4)?;
            let end = at + Self::HEADER_LEN + A::LEN * n + aux_len;
            need(buf, end)?;
            let sources = (0..n)
                .map(|i| A::read(buf, at + Self::HEADER_LEN + A::LEN * i))
                .collect::<Result<Vec<_>, _>>()?;
            records.push(GroupRecord {
                record_type,
                group,
                sources,
            });
            at = end;
        }
        Ok(records)
    }

    /// Encodes `records` into `out` from `at` on (the caller checked the
    /// room); returns the end. `source_count` names the field in errors.
    pub(crate) fn emit_all(
        records: &[Self],
        out: &mut [u8],
        at: usize,
        source_count: &'static str,
    ) -> Result<usize, EncodeError> {
        let mut at = at;
        for r in records {
            let n =
                u16::try_from(r.sources.len()).map_err(|_| EncodeError::Overflow(source_count))?;
            out[at] = r.record_type.to_u8();
            out[at + 1] = 0;
            out[at + 2..at + 4].copy_from_slice(&n.to_be_bytes());
            r.group.write(&mut out[at + 4..at + Self::HEADER_LEN]);
            at += Self::HEADER_LEN;
            for s in &r.sources {
                s.write(&mut out[at..at + A::LEN]);
                at += A::LEN;
            }
        }
        Ok(at)
    }
}

/// The "floating point" codes of IGMPv3 and MLDv2 with `mant_bits` of
/// mantissa and 3 of exponent: below `1 << (mant_bits + 3)` the value is
/// literal, otherwise `(mant | 1 << mant_bits) << (exp + 3)`.
fn decode_float_code(code: u32, mant_bits: u32) -> u32 {
    if code < 1 << (mant_bits + 3) {
        code
    } else {
        let mant = code & ((1 << mant_bits) - 1);
        let exp = (code >> mant_bits) & 0x07;
        (mant | 1 << mant_bits) << (exp + 3)
    }
}

/// Inverse of [`decode_float_code`], rounding down to the nearest
/// representable value; saturates at the largest code (all ones).
fn encode_float_code(value: u32, mant_bits: u32) -> u32 {
    let literal_below = 1 << (mant_bits + 3);
    if value < literal_below {
        return value;
    }
    for exp in 0u32..8 {
        let mant = value >> (exp + 3);
        if mant < 1 << (mant_bits + 1) {
            return literal_below | (exp << mant_bits) | (mant & ((1 << mant_bits) - 1));
        }
    }
    (literal_below << 1) - 1
}

/// The 8-bit code of IGMPv3 Max Resp Code and QQIC (RFC 3376 §4.1.1,
/// §4.1.7) and MLDv2 QQIC (RFC 3810 §5.1.9): below 128 literal, otherwise
/// `(mant | 0x10) << (exp + 3)` with `exp = bits 4..6`, `mant = bits 0..3`.
pub fn decode_float_code_u8(code: u8) -> u32 {
    decode_float_code(u32::from(code), 4)
}

/// Inverse of [`decode_float_code_u8`], rounding down to the nearest
/// representable value; saturates at the largest one (31744).
pub fn encode_float_code_u8(value: u32) -> u8 {
    encode_float_code(value, 4) as u8
}

/// MLDv2 16-bit Maximum Response Code (RFC 3810 §5.1.3), in milliseconds:
/// below 32768 literal, otherwise `(mant | 0x1000) << (exp + 3)`.
pub fn decode_float_code_u16(code: u16) -> u32 {
    decode_float_code(u32::from(code), 12)
}

/// Inverse of [`decode_float_code_u16`], rounding down; saturates.
pub fn encode_float_code_u16(value: u32) -> u16 {
    encode_float_code(value, 12) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_code_literal_below_128() {
        assert_eq!(decode_float_code_u8(0), 0);
        assert_eq!(decode_float_code_u8(125), 125);
        assert_eq!(decode_float_code_u8(127), 127);
    }

    #[test]
    fn float_code_exponent_form() {
        // 0x80: mant 0, exp 0 -> 0x10 << 3 = 128
        assert_eq!(decode_float_code_u8(0x80), 128);
        // 0x8f: mant 15 exp 0 -> 31 << 3 = 248
        assert_eq!(decode_float_code_u8(0x8f), 248);
        // 0x91: mant 1 exp 1 -> 17 << 4 = 272
        assert_eq!(decode_float_code_u8(0x91), 272);
        // 0xff: mant 15 exp 7 -> 31 << 10 = 31744
        assert_eq!(decode_float_code_u8(0xff), 31744);
    }

    #[test]
    fn float_code_encode_round_trips_every_code() {
        for code in 0u8..=255 {
            let value = decode_float_code_u8(code);
            assert_eq!(decode_float_code_u8(encode_float_code_u8(value)), value);
        }
        // 300 is not representable: rounds down to 296 (0x92: 18<<4=288? check)
        let enc = encode_float_code_u8(300);
        assert!(decode_float_code_u8(enc) <= 300);
        assert_eq!(encode_float_code_u8(1_000_000), 0xff);
    }

    #[test]
    fn float_code_u16() {
        assert_eq!(decode_float_code_u16(10_000), 10_000);
        assert_eq!(decode_float_code_u16(0x8000), 0x1000 << 3);
        assert_eq!(decode_float_code_u16(0xffff), 0x1fff << 10);
        for value in [0u32, 1, 32767, 32768, 40_000, 1 << 20, 0x1fff << 10] {
            let enc = encode_float_code_u16(value);
            assert!(decode_float_code_u16(enc) <= value);
        }
        assert_eq!(
            decode_float_code_u16(encode_float_code_u16(0x1fff << 10)),
            0x1fff << 10
        );
        for code in 0u16..=u16::MAX {
            let value = decode_float_code_u16(code);
            assert_eq!(decode_float_code_u16(encode_float_code_u16(value)), value);
        }
        assert_eq!(encode_float_code_u16(u32::MAX), 0xffff);
    }

    #[test]
    fn record_type_values() {
        assert_eq!(RecordType::from_u8(1), RecordType::ModeIsInclude);
        assert_eq!(RecordType::from_u8(5), RecordType::AllowNewSources);
        assert_eq!(RecordType::from_u8(6), RecordType::BlockOldSources);
        assert_eq!(RecordType::from_u8(9), RecordType::Unknown(9));
        for v in 0u8..=255 {
            assert_eq!(RecordType::from_u8(v).to_u8(), v);
        }
    }
}
