//! DORMS/CBACC metadata JSON (RFC 7951 encoding) and RESTCONF URLs.
//!
//! Accepted response shapes (any of them, for the requested (S,G)):
//! * narrow: `{"ietf-cbacc:cbacc": {...}}` (what the old platform requested);
//! * draft -01/-02 tree: `{"ietf-dorms:metadata": {"sender": [{"source-address":
//!   S, "group": [{"group-address": G, "ietf-cbacc:cbacc": {...}}]}]}}`;
//! * draft -03+ tree: `{"ietf-dorms:dorms": {"metadata": {"sender": [...]}}}`;
//! * list-level answers: `{"ietf-dorms:sender": [...]}`, `{"ietf-dorms:group": [...]}`.
//!
//! In the cbacc container the rate is `max-bits-per-second` (bit/s: the
//! YANG text of -02 says kbit/s but deployed data is bit/s, see research 3.1)
//! or, from revision 2021-07-08, `max-speed` in kbit/s (x1000). When both are
//! present `max-bits-per-second` wins. Numbers may be JSON numbers or strings
//! (RFC 7951 encodes 64-bit values as strings; sample data uses strings for
//! all). Unknown fields are ignored. Keys are matched as addresses, so any
//! spelling of S and G matches.

use std::fmt::Write;
use std::net::IpAddr;

use serde_json::{Map, Value};

use ingest_types::SourceGroup;

/// What the sender declared for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowMetadata {
    /// Maximum rate in bits per second.
    pub max_bitrate: u64,
    pub rate_field: RateField,
    /// Preference among flows of the same sender; higher = keep (default 256).
    pub priority: u16,
    /// `max-mss` / `max-packet-size` (default 1400).
    pub max_packet_size: u16,
    /// `data-rate-window` in ms (default 2000).
    pub data_rate_window_ms: u32,
}

/// Which leaf carried the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateField {
    /// `max-bits-per-second`, bit/s.
    MaxBitsPerSecond,
    /// `max-speed`, kbit/s.
    MaxSpeedKbps,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("no metadata for {sg} in the response")]
    NoFlow { sg: SourceGroup },
    #[error("no ietf-cbacc:cbacc container for {sg}")]
    NoCbacc { sg: SourceGroup },
    #[error("cbacc container has neither max-bits-per-second nor max-speed")]
    NoRate,
    #[error("bad value for {field}: {value}")]
    BadValue { field: &'static str, value: String },
}

const CBACC_KEYS: &[&str] = &["ietf-cbacc:cbacc", "cbacc"];

/// Extracts the metadata of `sg` from a response body.
pub fn parse_metadata(text: &str, sg: SourceGroup) -> Result<FlowMetadata, MetadataError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| MetadataError::InvalidJson(e.to_string()))?;
    let root = value
        .as_object()
        .ok_or_else(|| MetadataError::InvalidJson("top level is not an object".into()))?;
    if let Some(cbacc) = member(root, CBACC_KEYS) {
        return parse_cbacc(cbacc);
    }
    let group_entry = if let Some(groups) = member(root, &["ietf-dorms:group"]) {
        find_keyed(groups, "group-address", sg.group)
    } else if let Some(senders) = member(root, &["ietf-dorms:sender"]) {
        find_group_in_senders(senders, sg)
    } else {
        let metadata = member(root, &["ietf-dorms:metadata"]).or_else(|| {
            member(root, &["ietf-dorms:dorms"])
                .and_then(Value::as_object)
                .and_then(|dorms| member(dorms, &["metadata", "ietf-dorms:metadata"]))
        });
        metadata
            .and_then(Value::as_object)
            .and_then(|m| member(m, &["sender", "ietf-dorms:sender"]))
            .and_then(|senders| find_group_in_senders(senders, sg))
    };
    let group_entry = group_entry.ok_or(MetadataError::NoFlow { sg })?;
    let cbacc = member(group_entry, CBACC_KEYS).ok_or(MetadataError::NoCbacc { sg })?;
    parse_cbacc(cbacc)
}

fn member<'a>(object: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| object.get(*n))
}

fn find_group_in_senders(senders: &Value, sg: SourceGroup) -> Option<&Map<String, Value>> {
    let sender = find_keyed(senders, "source-address", sg.source)?;
    let groups = member(sender, &["group", "ietf-dorms:group"])?;
    find_keyed(groups, "group-address", sg.group)
}

/// The list entry whose `key` parses to `want`. An entry without the key is
/// accepted only when it is the only entry (narrow responses may omit it).
fn find_keyed<'a>(list: &'a Value, key: &str, want: IpAddr) -> Option<&'a Map<String, Value>> {
    let entries: Vec<&Map<String, Value>> = match list {
        Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
        Value::Object(one) => vec![one],
        _ => return None,
    };
    let matching = entries.iter().copied().find(|e| {
        e.get(key)
            .and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            == Some(want)
    });
    matching.or_else(|| match entries.as_slice() {
        [only] if !only.contains_key(key) => Some(*only),
        _ => None,
    })
}

fn parse_cbacc(value: &Value) -> Result<FlowMetadata, MetadataError> {
    let object = value.as_object().ok_or(MetadataError::BadValue {
        field: "ietf-cbacc:cbacc",
        value: value.to_string(),
    })?;
    let (max_bitrate, rate_field) = if let Some(v) = object.get("max-bits-per-second") {
        (uint(v, "max-bits-per-second")?, RateField::MaxBitsPerSecond)
    } else if let Some(v) = object.get("max-speed") {
        let kbps = uint(v, "max-speed")?;
        let bps = kbps.checked_mul(1000).ok_or(MetadataError::BadValue {
            field: "max-speed",
            value: v.to_string(),
        })?;
        (bps, RateField::MaxSpeedKbps)
    } else {
        return Err(MetadataError::NoRate);
    };
    let small = |field: &'static str, default: u16| -> Result<u16, MetadataError> {
        match object.get(field) {
            None => Ok(default),
            Some(v) => u16::try_from(uint(v, field)?).map_err(|_| MetadataError::BadValue {
                field,
                value: v.to_string(),
            }),
        }
    };
    let priority = small("priority", 256)?;
    let max_packet_size = match object.get("max-packet-size") {
        Some(_) => small("max-packet-size", 1400)?,
        None => small("max-mss", 1400)?,
    };
    let data_rate_window_ms = match object.get("data-rate-window") {
        None => 2000,
        Some(v) => {
            u32::try_from(uint(v, "data-rate-window")?).map_err(|_| MetadataError::BadValue {
                field: "data-rate-window",
                value: v.to_string(),
            })?
        }
    };
    Ok(FlowMetadata {
        max_bitrate,
        rate_field,
        priority,
        max_packet_size,
        data_rate_window_ms,
    })
}

/// A non-negative integer given as a JSON number or a decimal string.
fn uint(value: &Value, field: &'static str) -> Result<u64, MetadataError> {
    let bad = || MetadataError::BadValue {
        field,
        value: value.to_string(),
    };
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Metadata tree layout on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataLayout {
    /// draft -01/-02: `data/ietf-dorms:metadata/sender=S/group=G/...`.
    Draft01,
    /// draft -03+: `data/ietf-dorms:dorms/metadata/sender=S/group=G/...`.
    Dorms,
}

/// How address keys go into the URL path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// RFC 8040 3.5.3: canonical text with reserved characters
    /// percent-encoded (IPv6 `:` becomes `%3A`).
    Rfc8040,
    /// Canonical text unencoded, as the drafts' examples write it.
    Raw,
}

/// Base URL for an SRV target: `https://host` for port 443, else
/// `https://host:port`; the target's final dot is removed.
pub fn base_url(target: &str, port: u16) -> String {
    let host = target.trim_end_matches('.');
    if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// The RESTCONF API root (ending in `/`) from a base URL and a host-meta
/// href. Absolute `https://` hrefs are used as they are; `http://` is refused
/// (None) so metadata never travels unauthenticated.
pub fn restconf_root(base: &str, href: &str) -> Option<String> {
    let href = href.trim();
    let mut root = if href.starts_with("https://") {
        href.to_owned()
    } else if href.starts_with("http://") || href.contains("://") {
        return None;
    } else if href.starts_with('/') {
        format!("{base}{href}")
    } else {
        format!("{base}/{href}")
    };
    if !root.ends_with('/') {
        root.push('/');
    }
    Some(root)
}

/// The narrow metadata URL for `sg` under `root` (which ends in `/`).
pub fn metadata_url(
    root: &str,
    layout: MetadataLayout,
    sg: SourceGroup,
    encoding: KeyEncoding,
) -> String {
    let tree = match layout {
        MetadataLayout::Draft01 => "data/ietf-dorms:metadata",
        MetadataLayout::Dorms => "data/ietf-dorms:dorms/metadata",
    };
    format!(
        "{root}{tree}/sender={}/group={}/ietf-cbacc:cbacc",
        key(sg.source, encoding),
        key(sg.group, encoding)
    )
}

fn key(addr: IpAddr, encoding: KeyEncoding) -> String {
    let text = addr.to_string();
    match encoding {
        KeyEncoding::Raw => text,
        KeyEncoding::Rfc8040 => {
            let mut out = String::with_capacity(text.len() + 8);
            for c in text.chars() {
                if c == ':' {
                    out.push_str("%3A");
                } else {
                    let _ = write!(out, "{c}");
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sg(s: &str, g: &str) -> SourceGroup {
        SourceGroup::new(s.parse().unwrap(), g.parse().unwrap()).unwrap()
    }

    fn akamai() -> SourceGroup {
        sg("23.212.185.4", "232.1.1.1")
    }

    #[test]
    fn narrow_response() {
        let m = parse_metadata(
            r#"{ "ietf-cbacc:cbacc": { "max-bits-per-second": 2000 } }"#,
            akamai(),
        )
        .unwrap();
        assert_eq!(
            m,
            FlowMetadata {
                max_bitrate: 2000,
                rate_field: RateField::MaxBitsPerSecond,
                priority: 256,
                max_packet_size: 1400,
                data_rate_window_ms: 2000
            }
        );
    }

    #[test]
    fn draft01_full_tree_with_strings_and_unknown_fields() {
        let text = r#"{
  "ietf-dorms:metadata": {
    "sender": [
      { "source-address": "10.9.9.9", "group": [ { "group-address": "232.1.1.1",
            "ietf-cbacc:cbacc": { "max-bits-per-second": "1" } } ] },
      { "source-address": "23.212.185.4",
        "group": [
          { "group-address": "232.1.1.2", "ietf-cbacc:cbacc": { "max-bits-per-second": 5 } },
          { "group-address": "232.1.1.1",
            "ietf-cbacc:cbacc": {
              "max-bits-per-second": "3000000",
              "max-mss": "1316",
              "data-rate-window": 1000,
              "priority": "300",
              "vendor-x:extra": true },
            "udp-stream": [ { "port": "5001" } ] } ] } ] }
}"#;
        let m = parse_metadata(text, akamai()).unwrap();
        assert_eq!(m.max_bitrate, 3_000_000);
        assert_eq!(m.priority, 300);
        assert_eq!(m.max_packet_size, 1316);
        assert_eq!(m.data_rate_window_ms, 1000);
        assert_eq!(
            parse_metadata(text, sg("23.212.185.4", "232.1.1.9")),
            Err(MetadataError::NoFlow {
                sg: sg("23.212.185.4", "232.1.1.9")
            })
        );
    }

    #[test]
    fn dorms_layout_with_max_speed_kbps_and_ipv6_spelling() {
        let text = r#"{"ietf-dorms:dorms":{"metadata":{"sender":[{"source-address":"2001:DB8::A",
            "group":[{"group-address":"ff3e::8000:1","ietf-cbacc:cbacc":{"max-speed":"2500","max-packet-size":1200}}]}]}}}"#;
        let m = parse_metadata(text, sg("2001:db8::a", "ff3e:0::8000:1")).unwrap();
        assert_eq!(m.max_bitrate, 2_500_000);
        assert_eq!(m.rate_field, RateField::MaxSpeedKbps);
        assert_eq!(m.max_packet_size, 1200);
    }

    #[test]
    fn list_level_answers() {
        let g = r#"{"ietf-dorms:group":[{"group-address":"232.1.1.1","ietf-cbacc:cbacc":{"max-bits-per-second":7}}]}"#;
        assert_eq!(parse_metadata(g, akamai()).unwrap().max_bitrate, 7);
        let s = r#"{"ietf-dorms:sender":[{"source-address":"23.212.185.4","group":[{"group-address":"232.1.1.1","ietf-cbacc:cbacc":{"max-bits-per-second":8}}]}]}"#;
        assert_eq!(parse_metadata(s, akamai()).unwrap().max_bitrate, 8);
        // Draft example group answer without cbacc.
        let no_cbacc = r#"{"ietf-dorms:group":[{"group-address":"232.1.1.1","udp-stream":[{"port":"5001"}]}]}"#;
        assert_eq!(
            parse_metadata(no_cbacc, akamai()),
            Err(MetadataError::NoCbacc { sg: akamai() })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_metadata("not json", akamai()),
            Err(MetadataError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_metadata("[1]", akamai()),
            Err(MetadataError::InvalidJson(_))
        ));
        assert_eq!(
            parse_metadata(r#"{"ietf-cbacc:cbacc":{"priority":1}}"#, akamai()),
            Err(MetadataError::NoRate)
        );
        for bad in [
            r#""-5""#,
            "-5",
            "1.5",
            r#""12x""#,
            r#""""#,
            "true",
            "18446744073709551616",
        ] {
            let text = format!(r#"{{"ietf-cbacc:cbacc":{{"max-bits-per-second":{bad}}}}}"#);
            assert!(
                matches!(
                    parse_metadata(&text, akamai()),
                    Err(MetadataError::BadValue {
                        field: "max-bits-per-second",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_metadata(
                r#"{"ietf-cbacc:cbacc":{"max-bits-per-second":1,"priority":70000}}"#,
                akamai()
            ),
            Err(MetadataError::BadValue {
                field: "priority",
                ..
            })
        ));
        assert_eq!(
            parse_metadata(r#"{"other":1}"#, akamai()),
            Err(MetadataError::NoFlow { sg: akamai() })
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            base_url("dorms.example.com.", 443),
            "https://dorms.example.com"
        );
        assert_eq!(
            base_url("dorms.example.com", 8443),
            "https://dorms.example.com:8443"
        );
        let base = base_url("dorms-restconf.example.com.", 443);
        assert_eq!(
            restconf_root(&base, "/restconf").as_deref(),
            Some("https://dorms-restconf.example.com/restconf/")
        );
        assert_eq!(
            restconf_root(&base, "top/restconf/").as_deref(),
            Some("https://dorms-restconf.example.com/top/restconf/")
        );
        assert_eq!(
            restconf_root(&base, "https://other.example/rc").as_deref(),
            Some("https://other.example/rc/")
        );
        assert_eq!(restconf_root(&base, "http://other.example/rc"), None);
        let root = "https://disrupt-dorms.edgesuite.net/restconf/";
        assert_eq!(
            metadata_url(
                root,
                MetadataLayout::Draft01,
                akamai(),
                KeyEncoding::Rfc8040
            ),
            "https://disrupt-dorms.edgesuite.net/restconf/data/ietf-dorms:metadata/sender=23.212.185.4/group=232.1.1.1/ietf-cbacc:cbacc"
        );
        let v6 = sg("2001:db8::a", "ff3e::8000:1");
        assert_eq!(
            metadata_url(root, MetadataLayout::Dorms, v6, KeyEncoding::Rfc8040),
            "https://disrupt-dorms.edgesuite.net/restconf/data/ietf-dorms:dorms/metadata/sender=2001%3Adb8%3A%3Aa/group=ff3e%3A%3A8000%3A1/ietf-cbacc:cbacc"
        );
        assert_eq!(
            metadata_url(root, MetadataLayout::Dorms, v6, KeyEncoding::Raw),
            "https://disrupt-dorms.edgesuite.net/restconf/data/ietf-dorms:dorms/metadata/sender=2001:db8::a/group=ff3e::8000:1/ietf-cbacc:cbacc"
        );
    }
}
