//! The probe payload carried in every lab UDP datagram.
//!
//! ```text
//!  0                   8                  16
//! +-------------------+-------------------+---------------
//! | sequence (u64 BE) | send time (u64 BE)| padding (zeros)
//! +-------------------+-------------------+---------------
//! ```
//! The send time is nanoseconds since the Unix epoch; 0 means "not stamped".

use thiserror::Error;

/// Bytes of the fixed header; a probe payload is at least this long.
pub const PAYLOAD_HEADER_LEN: usize = 16;

/// The header of one probe datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub sequence: u64,
    /// Send time in ns since the Unix epoch, `None` when the sender did not stamp it.
    pub sent_unix_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProbeDecodeError {
    #[error("probe payload too short: {len} bytes, need {PAYLOAD_HEADER_LEN}")]
    Truncated { len: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProbeEncodeError {
    #[error("buffer of {len} bytes cannot hold a probe header of {PAYLOAD_HEADER_LEN}")]
    BufferTooSmall { len: usize },
}

impl Probe {
    /// Reads the header at the start of `payload`; padding is ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, ProbeDecodeError> {
        let (Some(seq), Some(time)) = (payload.get(0..8), payload.get(8..16)) else {
            return Err(ProbeDecodeError::Truncated { len: payload.len() });
        };
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(seq);
        let mut time_bytes = [0u8; 8];
        time_bytes.copy_from_slice(time);
        let sent = u64::from_be_bytes(time_bytes);
        Ok(Self {
            sequence: u64::from_be_bytes(seq_bytes),
            sent_unix_ns: (sent != 0).then_some(sent),
        })
    }

    /// Writes the header into the start of `buf` and zeroes the rest (padding).
    /// Returns the number of bytes written, which is `buf.len()`.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ProbeEncodeError> {
        if buf.len() < PAYLOAD_HEADER_LEN {
            return Err(ProbeEncodeError::BufferTooSmall { len: buf.len() });
        }
        let (header, padding) = buf.split_at_mut(PAYLOAD_HEADER_LEN);
        let (seq, time) = header.split_at_mut(8);
        seq.copy_from_slice(&self.sequence.to_be_bytes());
        time.copy_from_slice(&self.sent_unix_ns.unwrap_or(0).to_be_bytes());
        padding.fill(0);
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_sequence_then_time_big_endian() {
        let probe = Probe {
            sequence: 0x0102_0304_0506_0708,
            sent_unix_ns: Some(0x1112_1314_1516_1718),
        };
        let mut buf = [0xffu8; 20];
        assert_eq!(probe.encode(&mut buf), Ok(20));
        assert_eq!(
            buf,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn round_trip_with_and_without_time() {
        for probe in [
            Probe {
                sequence: 0,
                sent_unix_ns: None,
            },
            Probe {
                sequence: u64::MAX,
                sent_unix_ns: Some(1_700_000_000_123_456_789),
            },
        ] {
            let mut buf = vec![0u8; 1200];
            probe.encode(&mut buf).ok();
            assert_eq!(Probe::decode(&buf), Ok(probe));
        }
    }

    #[test]
    fn short_payloads_are_rejected() {
        assert_eq!(
            Probe::decode(&[0u8; 15]),
            Err(ProbeDecodeError::Truncated { len: 15 })
        );
        assert_eq!(
            Probe::decode(&[]),
            Err(ProbeDecodeError::Truncated { len: 0 })
        );
        let mut small = [0u8; 8];
        assert_eq!(
            Probe {
                sequence: 1,
                sent_unix_ns: None
            }
            .encode(&mut small),
            Err(ProbeEncodeError::BufferTooSmall { len: 8 })
        );
    }

    #[test]
    fn zero_time_decodes_as_unstamped() {
        let mut buf = [0u8; 16];
        buf[7] = 9;
        assert_eq!(
            Probe::decode(&buf),
            Ok(Probe {
                sequence: 9,
                sent_unix_ns: None
            })
        );
    }
}
