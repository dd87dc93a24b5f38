//! AMTRELAY RDATA (RFC 8777 section 4.2), RR type 260.
//!
//! ```text
//! byte 0        precedence (lower is tried first)
//! byte 1 bit 7  D, discovery optional
//! byte 1 bit 0-6  relay type: 0 none, 1 IPv4, 2 IPv6, 3 wire-format name
//! bytes 2..     relay (0, 4, 16 bytes, or an uncompressed name)
//! ```
//!
//! Presentation: `<precedence> <D> <type> <relay>`, relay `.` for type 0,
//! plus the RFC 3597 generic form `\# <len> <hex>` for any type.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::name::{NameTextError, NameWireError, RelayName};

/// The AMTRELAY RR type code.
pub const AMTRELAY_RR_TYPE: u16 = 260;

const D_BIT: u8 = 0x80;
const TYPE_MASK: u8 = 0x7f;

/// The relay field of an AMTRELAY record, by relay type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Relay {
    /// Type 0: no relay should be used for this source.
    None,
    /// Type 1.
    Ipv4(Ipv4Addr),
    /// Type 2.
    Ipv6(Ipv6Addr),
    /// Type 3.
    Name(RelayName),
    /// Types 4-127 are unassigned; RFC 8777 says such records SHOULD be
    /// ignored, so they decode (to be skipped later) rather than fail.
    Unknown { relay_type: u8, data: Vec<u8> },
}

impl Relay {
    pub fn relay_type(&self) -> u8 {
        match self {
            Relay::None => 0,
            Relay::Ipv4(_) => 1,
            Relay::Ipv6(_) => 2,
            Relay::Name(_) => 3,
            Relay::Unknown { relay_type, .. } => *relay_type,
        }
    }
}

/// One decoded AMTRELAY record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AmtRelayRecord {
    pub precedence: u8,
    /// The D bit: the gateway may send a Request without a Discovery first.
    pub discovery_optional: bool,
    pub relay: Relay,
}

/// Why RDATA did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdataError {
    #[error("RDATA is {len} bytes, need at least 2")]
    TooShort { len: usize },
    #[error("relay type {relay_type} needs {expected} relay bytes, found {found}")]
    RelayLength {
        relay_type: u8,
        expected: usize,
        found: usize,
    },
    #[error("relay name: {0}")]
    Name(#[from] NameWireError),
}

/// Why presentation text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresentationError {
    #[error("expected 4 fields '<precedence> <D> <type> <relay>', found {found}")]
    FieldCount { found: usize },
    #[error("bad precedence {text:?} (0-255)")]
    Precedence { text: String },
    #[error("bad discovery-optional flag {text:?} (0 or 1)")]
    DiscoveryOptional { text: String },
    #[error("bad relay type {text:?}")]
    RelayType { text: String },
    #[error("relay type {relay_type} has no presentation form; use \\# generic form")]
    UnassignedType { relay_type: u8 },
    #[error("relay of type 0 must be '.', got {text:?}")]
    NoneRelay { text: String },
    #[error("bad IPv4 relay {text:?}")]
    Ipv4 { text: String },
    #[error("bad IPv6 relay {text:?}")]
    Ipv6 { text: String },
    #[error("bad relay name: {0}")]
    Name(#[from] NameTextError),
    #[error("generic form: bad length {text:?}")]
    GenericLength { text: String },
    #[error("generic form: bad hex data")]
    GenericHex,
    #[error("generic form declares {declared} bytes but carries {actual}")]
    GenericLengthMismatch { declared: usize, actual: usize },
    #[error("generic form: {0}")]
    Rdata(#[from] RdataError),
}

impl AmtRelayRecord {
    /// Decodes wire RDATA. Exact: every byte must be accounted for, except
    /// that a type 3 name may lack its root byte (see [`RelayName::from_wire`]).
    pub fn decode(rdata: &[u8]) -> Result<Self, RdataError> {
        let [precedence, flags_type, relay_bytes @ ..] = rdata else {
            return Err(RdataError::TooShort { len: rdata.len() });
        };
        let relay_type = flags_type & TYPE_MASK;
        let wrong_length = |expected: usize| RdataError::RelayLength {
            relay_type,
            expected,
            found: relay_bytes.len(),
        };
        let relay = match relay_type {
            0 if relay_bytes.is_empty() => Relay::None,
            0 => return Err(wrong_length(0)),
            1 => Relay::Ipv4(Ipv4Addr::from(
                <[u8; 4]>::try_from(relay_bytes).map_err(|_| wrong_length(4))?,
            )),
            2 => Relay::Ipv6(Ipv6Addr::from(
                <[u8; 16]>::try_from(relay_bytes).map_err(|_| wrong_length(16))?,
            )),
            3 => Relay::Name(RelayName::from_wire(relay_bytes)?),
            _ => Relay::Unknown {
                relay_type,
                data: relay_bytes.to_vec(),
            },
        };
        Ok(Self {
            precedence: *precedence,
            discovery_optional: flags_type & D_BIT != 0,
            relay,
        })
    }

    /// Encodes wire RDATA (type 3 names always with the root byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            self.precedence,
            (self.relay.relay_type() & TYPE_MASK) | if self.discovery_optional { D_BIT } else { 0 },
        ];
        match &self.relay {
            Relay::None => {}
            Relay::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Relay::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Relay::Name(n) => out.extend_from_slice(&n.to_wire()),
            Relay::Unknown { data, .. } => out.extend_from_slice(data),
        }
        out
    }

    /// Parses presentation text: `10 0 3 amtrelay.example.com.` (name with or
    /// without the final dot) or the generic `\# 6 0a01cb00710f` (hex may be
    /// split by whitespace).
    pub fn parse_presentation(text: &str) -> Result<Self, PresentationError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if let ["\\#", len_text, hex @ ..] = fields.as_slice() {
            return parse_generic(len_text, hex);
        }
        let [prec_text, d_text, type_text, relay_text] = fields.as_slice() else {
            return Err(PresentationError::FieldCount {
                found: fields.len(),
            });
        };
        let precedence = prec_text
            .parse::<u8>()
            .map_err(|_| PresentationError::Precedence {
                text: (*prec_text).to_owned(),
            })?;
        let discovery_optional = match *d_text {
            "0" => false,
            "1" => true,
            other => {
                return Err(PresentationError::DiscoveryOptional {
                    text: other.to_owned(),
                });
            }
        };
        let relay_type = type_text
            .parse::<u8>()
            .ok()
            .filter(|t| *t <= TYPE_MASK)
            .ok_or_else(|| PresentationError::RelayType {
                text: (*type_text).to_owned(),
            })?;
        let relay = match relay_type {
            0 if *relay_text == "." => Relay::None,
            0 => {
                return Err(PresentationError::NoneRelay {
                    text: (*relay_text).to_owned(),
                });
            }
            1 => Relay::Ipv4(relay_text.parse().map_err(|_| PresentationError::Ipv4 {
                text: (*relay_text).to_owned(),
            })?),
            2 => Relay::Ipv6(relay_text.parse().map_err(|_| PresentationError::Ipv6 {
                text: (*relay_text).to_owned(),
            })?),
            3 => Relay::Name(RelayName::from_text(relay_text)?),
            other => return Err(PresentationError::UnassignedType { relay_type: other }),
        };
        Ok(Self {
            precedence,
            discovery_optional,
            relay,
        })
    }
}

fn parse_generic(len_text: &str, hex: &[&str]) -> Result<AmtRelayRecord, PresentationError> {
    let declared = len_text
        .parse::<usize>()
        .map_err(|_| PresentationError::GenericLength {
            text: len_text.to_owned(),
        })?;
    let mut bytes = Vec::with_capacity(declared.min(1024));
    for chunk in hex {
        let digits = chunk.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(PresentationError::GenericHex);
        }
        for pair in digits.chunks_exact(2) {
            let hi = hex_value(pair[0]).ok_or(PresentationError::GenericHex)?;
            let lo = hex_value(pair[1]).ok_or(PresentationError::GenericHex)?;
            bytes.push(hi << 4 | lo);
        }
    }
    if bytes.len() != declared {
        return Err(PresentationError::GenericLengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    Ok(AmtRelayRecord::decode(&bytes)?)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

impl FromStr for AmtRelayRecord {
    type Err = PresentationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_presentation(s)
    }
}

impl fmt::Display for AmtRelayRecord {
    /// Presentation form; unassigned types use the RFC 3597 generic form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = u8::from(self.discovery_optional);
        let p = self.precedence;
        match &self.relay {
            Relay::None => write!(f, "{p} {d} 0 ."),
            Relay::Ipv4(a) => write!(f, "{p} {d} 1 {a}"),
            Relay::Ipv6(a) => write!(f, "{p} {d} 2 {a}"),
            Relay::Name(n) => write!(f, "{p} {d} 3 {n}"),
            Relay::Unknown { .. } => {
                let wire = self.encode();
                write!(f, "\\# {} ", wire.len())?;
                for b in wire {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: String = s.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Research 6.3: (presentation, hex RDATA).
    const EXAMPLES: &[(&str, &str)] = &[
        ("10 0 1 203.0.113.15", "0a 01 cb00710f"),
        (
            "10 0 2 2001:db8::15",
            "0a 02 20010db8000000000000000000000015",
        ),
        (
            "128 1 3 amtrelays.example.com.",
            "80 83 09616d7472656c617973 076578616d706c65 03636f6d 00",
        ),
        (
            "16 0 3 amt-relay.m2icast.net.",
            "10 03 09616d742d72656c6179 076d326963617374 036e6574 00",
        ),
        ("10 0 0 .", "0a 00"),
        ("16 1 1 13.56.226.127", "10 81 0d38e27f"),
    ];

    #[test]
    fn research_examples_round_trip() {
        for (text, wire_hex) in EXAMPLES {
            let wire = hex(wire_hex);
            let from_wire = AmtRelayRecord::decode(&wire).unwrap();
            let from_text: AmtRelayRecord = text.parse().unwrap();
            assert_eq!(from_wire, from_text, "{text}");
            assert_eq!(from_wire.encode(), wire, "{text}");
            assert_eq!(from_wire.to_string(), *text);
        }
        assert_eq!(hex(EXAMPLES[2].1).len(), 25);
    }

    #[test]
    fn decoded_fields() {
        let rec = AmtRelayRecord::decode(&hex(
            "80 83 09616d7472656c617973 076578616d706c65 03636f6d 00",
        ))
        .unwrap();
        assert_eq!(rec.precedence, 128);
        assert!(rec.discovery_optional);
        assert_eq!(
            rec.relay,
            Relay::Name("amtrelays.example.com".parse().unwrap())
        );
        let rec = AmtRelayRecord::decode(&hex("10 81 0d38e27f")).unwrap();
        assert_eq!(rec.precedence, 16);
        assert!(rec.discovery_optional);
        assert_eq!(rec.relay, Relay::Ipv4(Ipv4Addr::new(13, 56, 226, 127)));
    }

    #[test]
    fn name_without_root_byte_akamai_and_rfc_original() {
        // Akamai: `\# 22 1003 04 72357634 03 616d74 06 616b61646e73 03 6e6574`.
        let rec: AmtRelayRecord = "\\# 22 1003 04 72357634 03 616d74 06 616b61646e73 03 6e6574"
            .parse()
            .unwrap();
        assert_eq!(rec.to_string(), "16 0 3 r5v4.amt.akadns.net.");
        // RFC 8777's original generic example: length 24, no root byte.
        let wire = hex("80 83 09616d7472656c617973 076578616d706c65 03636f6d");
        assert_eq!(wire.len(), 24);
        let rec = AmtRelayRecord::decode(&wire).unwrap();
        assert_eq!(rec.to_string(), "128 1 3 amtrelays.example.com.");
    }

    #[test]
    fn name_without_final_dot_in_presentation() {
        let a: AmtRelayRecord = "10 0 3 amtrelay.example.com.".parse().unwrap();
        let b: AmtRelayRecord = "10 0 3 amtrelay.example.com".parse().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn typed_decode_errors() {
        assert_eq!(
            AmtRelayRecord::decode(&[]),
            Err(RdataError::TooShort { len: 0 })
        );
        assert_eq!(
            AmtRelayRecord::decode(&[10]),
            Err(RdataError::TooShort { len: 1 })
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 01 cb00710f 01")),
            Err(RdataError::RelayLength {
                relay_type: 1,
                expected: 4,
                found: 5
            })
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 01 cb0071")),
            Err(RdataError::RelayLength {
                relay_type: 1,
                expected: 4,
                found: 3
            })
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 02 20010db80000000000000000000000")),
            Err(RdataError::RelayLength {
                relay_type: 2,
                expected: 16,
                found: 15
            })
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 00 00")),
            Err(RdataError::RelayLength {
                relay_type: 0,
                expected: 0,
                found: 1
            })
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 03 05 616263")),
            Err(RdataError::Name(NameWireError::LabelPastEnd {
                offset: 0,
                label_len: 5,
                available: 3
            }))
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 03 03 616263 c00c")),
            Err(RdataError::Name(NameWireError::CompressionPointer {
                offset: 4
            }))
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 03")),
            Err(RdataError::Name(NameWireError::Empty))
        );
        assert_eq!(
            AmtRelayRecord::decode(&hex("0a 03 03 616263 00 ff")),
            Err(RdataError::Name(NameWireError::TrailingData { count: 1 }))
        );
    }

    #[test]
    fn unknown_type_decodes_for_skipping_and_round_trips_generically() {
        let wire = hex("0a 85 0102");
        let rec = AmtRelayRecord::decode(&wire).unwrap();
        assert_eq!(
            rec.relay,
            Relay::Unknown {
                relay_type: 5,
                data: vec![1, 2]
            }
        );
        assert!(rec.discovery_optional);
        assert_eq!(rec.to_string(), "\\# 4 0a850102");
        assert_eq!(rec.to_string().parse::<AmtRelayRecord>().unwrap(), rec);
        assert_eq!(rec.encode(), wire);
    }

    #[test]
    fn presentation_errors() {
        use PresentationError as E;
        let err = |s: &str| s.parse::<AmtRelayRecord>().unwrap_err();
        assert_eq!(err("10 0 1"), E::FieldCount { found: 3 });
        assert_eq!(err("256 0 1 1.2.3.4"), E::Precedence { text: "256".into() });
        assert_eq!(
            err("10 2 1 1.2.3.4"),
            E::DiscoveryOptional { text: "2".into() }
        );
        assert_eq!(err("10 0 200 1.2.3.4"), E::RelayType { text: "200".into() });
        assert_eq!(err("10 0 5 x"), E::UnassignedType { relay_type: 5 });
        assert_eq!(err("10 0 0 x."), E::NoneRelay { text: "x.".into() });
        assert_eq!(
            err("10 0 1 2001:db8::1"),
            E::Ipv4 {
                text: "2001:db8::1".into()
            }
        );
        assert_eq!(
            err("10 0 2 1.2.3.4"),
            E::Ipv6 {
                text: "1.2.3.4".into()
            }
        );
        assert_eq!(
            err("\\# 7 0a01cb00710f"),
            E::GenericLengthMismatch {
                declared: 7,
                actual: 6
            }
        );
        assert_eq!(err("\\# 6 0a01cb00710g"), E::GenericHex);
        assert_eq!(
            err("\\# 3 0a01cb"),
            E::Rdata(RdataError::RelayLength {
                relay_type: 1,
                expected: 4,
                found: 1
            })
        );
        // Generic form with split hex and the RFC 3597 type-0 example.
        let rec: AmtRelayRecord = "\\# 6 0a 01 cb00 710f".parse().unwrap();
        assert_eq!(rec.to_string(), "10 0 1 203.0.113.15");
        // BIND's system-test record: precedence 0, unassigned relay type 4.
        let rec: AmtRelayRecord = "\\# 2 0004".parse().unwrap();
        assert_eq!(
            rec.relay,
            Relay::Unknown {
                relay_type: 4,
                data: vec![]
            }
        );
        assert_eq!(rec.precedence, 0);
    }
}
