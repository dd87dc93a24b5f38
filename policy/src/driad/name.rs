//! Domain names as carried in AMTRELAY type 3 RDATA: uncompressed wire format
//! (RFC 1035 3.1) and presentation text (RFC 1035 5.1 escapes).
//!
//! Names are stored as ASCII-lower-cased labels: DNS compares names
//! case-insensitively, and a single spelling keeps hold-down keys stable.

use std::fmt;
use std::str::FromStr;

/// Maximum wire length of a name, root byte included (RFC 1035 2.3.4).
pub const MAX_NAME_WIRE_LEN: usize = 255;
/// Maximum label length (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A validated, non-root, fully qualified domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayName {
    labels: Vec<Vec<u8>>,
}

/// Errors decoding a wire-format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameWireError {
    #[error("empty relay name")]
    Empty,
    #[error("label at offset {offset} claims {label_len} bytes but only {available} remain")]
    LabelPastEnd {
        offset: usize,
        label_len: usize,
        available: usize,
    },
    #[error("compression pointer at offset {offset} (not allowed in AMTRELAY, RFC 8777)")]
    CompressionPointer { offset: usize },
    #[error("reserved label type 0x{byte:02x} at offset {offset}")]
    ReservedLabelType { offset: usize, byte: u8 },
    #[error("name longer than 255 bytes")]
    TooLong,
    #[error("{count} bytes after the root label")]
    TrailingData { count: usize },
}

/// Errors parsing a presentation-format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameTextError {
    #[error("empty or root name")]
    Empty,
    #[error("empty label in {text:?}")]
    EmptyLabel { text: String },
    #[error("label longer than 63 bytes in {text:?}")]
    LabelTooLong { text: String },
    #[error("name longer than 255 bytes: {text:?}")]
    TooLong { text: String },
    #[error("bad escape in {text:?}")]
    BadEscape { text: String },
}

impl RelayName {
    /// Decodes an uncompressed wire name that fills `data` exactly.
    ///
    /// The terminating root byte may be missing (live Akamai records omit it;
    /// RFC 8777's own example did before Errata 6688): the end of the RDATA
    /// then ends the name. Bytes after the root label are rejected.
    pub fn from_wire(data: &[u8]) -> Result<Self, NameWireError> {
        let mut labels = Vec::new();
        let mut offset = 0;
        let mut wire_len = 1; // the root byte, present or implied
        // Running out of data ends the name: the root byte may be omitted.
        while let Some(&len_byte) = data.get(offset) {
            match len_byte & 0xc0 {
                0x00 => {}
                0xc0 => return Err(NameWireError::CompressionPointer { offset }),
                _ => {
                    return Err(NameWireError::ReservedLabelType {
                        offset,
                        byte: len_byte,
                    });
                }
            }
            let label_len = usize::from(len_byte);
            if label_len == 0 {
                let after = offset + 1;
                if after < data.len() {
                    return Err(NameWireError::TrailingData {
                        count: data.len() - after,
                    });
                }
                break;
            }
            let start = offset + 1;
            let label = data
                .get(start..start + label_len)
                .ok_or(NameWireError::LabelPastEnd {
                    offset,
                    label_len,
                    available: data.len().saturating_sub(start),
                })?;
            wire_len += 1 + label_len;
            if wire_len > MAX_NAME_WIRE_LEN {
                return Err(NameWireError::TooLong);
            }
            labels.push(label.to_ascii_lowercase());
            offset = start + label_len;
        }
        if labels.is_empty() {
            return Err(NameWireError::Empty);
        }
        Ok(Self { labels })
    }

    /// Wire form, always with the terminating root byte.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        for label in &self.labels {
            // Labels are validated to <= 63 bytes at construction.
            out.push(label.len() as u8);
            out.extend_from_slice(label);
        }
        out.push(0);
        out
    }

    pub fn wire_len(&self) -> usize {
        1 + self.labels.iter().map(|l| 1 + l.len()).sum::<usize>()
    }

    /// Parses presentation text, with or without the final dot (both are seen
    /// in the wild); the name is always taken as fully qualified.
    pub fn from_text(text: &str) -> Result<Self, NameTextError> {
        let body = strip_final_dot(text);
        if body.is_empty() {
            return Err(NameTextError::Empty);
        }
        let mut labels = Vec::new();
        let mut label = Vec::new();
        let bytes = body.as_bytes();
        let mut i = 0;
        let bad_escape = || NameTextError::BadEscape {
            text: text.to_owned(),
        };
        while let Some(&b) = bytes.get(i) {
            match b {
                b'.' => {
                    if label.is_empty() {
                        return Err(NameTextError::EmptyLabel {
                            text: text.to_owned(),
                        });
                    }
                    labels.push(std::mem::take(&mut label));
                    i += 1;
                }
                b'\\' => {
                    let next = *bytes.get(i + 1).ok_or_else(bad_escape)?;
                    if next.is_ascii_digit() {
                        let digits = bytes.get(i + 1..i + 4).ok_or_else(bad_escape)?;
                        if !digits.iter().all(u8::is_ascii_digit) {
                            return Err(bad_escape());
                        }
                        let value = digits
                            .iter()
                            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
                        let byte = u8::try_from(value).map_err(|_| bad_escape())?;
                        label.push(byte);
                        i += 4;
                    } else {
                        label.push(next);
                        i += 2;
                    }
                }
                _ => {
                    label.push(b);
                    i += 1;
                }
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameTextError::LabelTooLong {
                    text: text.to_owned(),
                });
            }
        }
        if label.is_empty() {
            return Err(NameTextError::EmptyLabel {
                text: text.to_owned(),
            });
        }
        labels.push(label);
        for label in &mut labels {
            label.make_ascii_lowercase();
        }
        let name = Self { labels };
        if name.wire_len() > MAX_NAME_WIRE_LEN {
            return Err(NameTextError::TooLong {
                text: text.to_owned(),
            });
        }
        Ok(name)
    }

    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        self.labels.iter().map(Vec::as_slice)
    }
}

/// Removes an unescaped final dot (one preceded by an even number of
/// backslashes).
fn strip_final_dot(text: &str) -> &str {
    let Some(body) = text.strip_suffix('.') else {
        return text;
    };
    let backslashes = body.bytes().rev().take_while(|&b| b == b'\\').count();
    if backslashes % 2 == 0 { body } else { text }
}

impl FromStr for RelayName {
    type Err = NameTextError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s)
    }
}

impl fmt::Display for RelayName {
    /// Presentation text with the final dot, escaping per RFC 1035 5.1.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for label in &self.labels {
            for &b in label {
                match b {
                    b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                        write!(f, "\\{}", char::from(b))?
                    }
                    0x21..=0x7e => write!(f, "{}", char::from(b))?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_with_and_without_root_byte() {
        let with_root = b"\x09amtrelays\x07example\x03com\x00";
        let name = RelayName::from_wire(with_root).unwrap();
        assert_eq!(name.to_string(), "amtrelays.example.com.");
        assert_eq!(name.to_wire(), with_root.to_vec());
        let without_root = &with_root[..with_root.len() - 1];
        assert_eq!(RelayName::from_wire(without_root).unwrap(), name);
    }

    #[test]
    fn wire_errors() {
        assert_eq!(RelayName::from_wire(b""), Err(NameWireError::Empty));
        assert_eq!(RelayName::from_wire(b"\x00"), Err(NameWireError::Empty));
        assert_eq!(
            RelayName::from_wire(b"\x05abc"),
            Err(NameWireError::LabelPastEnd {
                offset: 0,
                label_len: 5,
                available: 3
            })
        );
        assert_eq!(
            RelayName::from_wire(b"\x03abc\xc0\x0c"),
            Err(NameWireError::CompressionPointer { offset: 4 })
        );
        assert_eq!(
            RelayName::from_wire(b"\x41abc"),
            Err(NameWireError::ReservedLabelType {
                offset: 0,
                byte: 0x41
            })
        );
        assert_eq!(
            RelayName::from_wire(b"\x03abc\x00\x01"),
            Err(NameWireError::TrailingData { count: 1 })
        );
        let mut long = Vec::new();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        assert_eq!(RelayName::from_wire(&long), Err(NameWireError::TooLong));
    }

    #[test]
    fn text_forms() {
        let a: RelayName = "AMTrelay.Example.com.".parse().unwrap();
        let b: RelayName = "amtrelay.example.com".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "amtrelay.example.com.");
        let escaped: RelayName = "a\\.b.c\\032d.".parse().unwrap();
        assert_eq!(escaped.to_wire(), b"\x03a.b\x03c d\x00".to_vec());
        assert_eq!(escaped.to_string(), "a\\.b.c\\032d.");
        let trailing_escaped_dot: RelayName = "ab\\.".parse().unwrap();
        assert_eq!(trailing_escaped_dot.to_wire(), b"\x03ab.\x00".to_vec());
        let escaped_backslash: RelayName = "ab\\\\.".parse().unwrap();
        assert_eq!(escaped_backslash.to_wire(), b"\x03ab\\\x00".to_vec());
        assert!(matches!(
            ".".parse::<RelayName>(),
            Err(NameTextError::Empty)
        ));
        assert!(matches!(
            "a..b".parse::<RelayName>(),
            Err(NameTextError::EmptyLabel { .. })
        ));
        assert!(matches!(
            "a\\2".parse::<RelayName>(),
            Err(NameTextError::BadEscape { .. })
        ));
        assert!(matches!(
            "a\\256".parse::<RelayName>(),
            Err(NameTextError::BadEscape { .. })
        ));
        let long_label = "x".repeat(64);
        assert!(matches!(
            long_label.parse::<RelayName>(),
            Err(NameTextError::LabelTooLong { .. })
        ));
    }
}
