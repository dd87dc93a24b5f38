//! `/.well-known/host-meta` (RFC 6415 XRD, or its JSON form): find the
//! RESTCONF root link (`rel="restconf"`, RFC 8040 section 3.1).
//!
//! The XML reader is deliberately minimal: it scans start tags, skipping
//! comments, processing instructions, CDATA and doctype, and reads the
//! attributes of `Link` elements (any namespace prefix). It never needs a
//! full XML parser because only one attribute pair matters.

/// Errors finding the RESTCONF root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostMetaError {
    #[error("host-meta is not XML (no element found)")]
    NotXml,
    #[error("host-meta XML is malformed near byte {offset}")]
    Malformed { offset: usize },
    #[error("host-meta JSON is invalid: {0}")]
    InvalidJson(String),
    #[error("host-meta has no link with rel=\"restconf\"")]
    NoRestconfLink,
    #[error("host-meta restconf link has an empty href")]
    EmptyHref,
}

/// The `href` of the first `Link rel="restconf"` in XRD XML.
pub fn parse_host_meta_xml(text: &str) -> Result<String, HostMetaError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut saw_element = false;
    while let Some(rel) = find_from(bytes, pos, b"<") {
        let start = pos + rel;
        let rest = &bytes[start..];
        let skip_to = |end: &[u8]| {
            find_from(bytes, start, end)
                .map(|i| start + i + end.len())
                .ok_or(HostMetaError::Malformed { offset: start })
        };
        if rest.starts_with(b"<!--") {
            pos = skip_to(b"-->")?;
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            pos = skip_to(b"]]>")?;
            continue;
        }
        if rest.starts_with(b"<?") {
            pos = skip_to(b"?>")?;
            continue;
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"</") {
            pos = skip_to(b">")?;
            continue;
        }
        let tag = parse_start_tag(bytes, start)?;
        saw_element = true;
        pos = tag.end;
        let local_name = tag.name.rsplit(':').next().unwrap_or(tag.name);
        if local_name != "Link" {
            continue;
        }
        let rel = tag.attributes.iter().find(|(k, _)| *k == "rel");
        let href = tag.attributes.iter().find(|(k, _)| *k == "href");
        if let (Some((_, rel)), Some((_, href))) = (rel, href)
            && rel == "restconf"
        {
            if href.trim().is_empty() {
                return Err(HostMetaError::EmptyHref);
            }
            return Ok(href.trim().to_owned());
        }
    }
    if saw_element {
        Err(HostMetaError::NoRestconfLink)
    } else {
        Err(HostMetaError::NotXml)
    }
}

/// The `href` of the first `links[]` entry with `rel == "restconf"` in
/// host-meta.json.
pub fn parse_host_meta_json(text: &str) -> Result<String, HostMetaError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| HostMetaError::InvalidJson(e.to_string()))?;
    let links = value
        .get("links")
        .and_then(|l| l.as_array())
        .ok_or(HostMetaError::NoRestconfLink)?;
    for link in links {
        if link.get("rel").and_then(|r| r.as_str()) == Some("restconf") {
            let href = link.get("href").and_then(|h| h.as_str()).unwrap_or("");
            if href.trim().is_empty() {
                return Err(HostMetaError::EmptyHref);
            }
            return Ok(href.trim().to_owned());
        }
    }
    Err(HostMetaError::NoRestconfLink)
}

struct StartTag<'a> {
    name: &'a str,
    attributes: Vec<(&'a str, String)>,
    /// Byte offset just after the closing `>`.
    end: usize,
}

fn find_from(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.') || b >= 0x80
}

/// The index of the first byte from `i` on that is not `wanted`.
fn skip(bytes: &[u8], mut i: usize, wanted: impl Fn(u8) -> bool) -> usize {
    while bytes.get(i).copied().is_some_and(&wanted) {
        i += 1;
    }
    i
}

/// Parses `<name attr="v" attr='v' ... [/]>` starting at `start` (`<`).
fn parse_start_tag(bytes: &[u8], start: usize) -> Result<StartTag<'_>, HostMetaError> {
    let malformed = |offset: usize| HostMetaError::Malformed { offset };
    let text = |from: usize, to: usize| {
        bytes
            .get(from..to)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or(malformed(from))
    };
    let name_start = start + 1;
    let mut i = skip(bytes, name_start, is_name_byte);
    if i == name_start {
        return Err(malformed(start));
    }
    let name = text(name_start, i)?;
    let mut attributes = Vec::new();
    loop {
        i = skip(bytes, i, |b| b.is_ascii_whitespace());
        match bytes.get(i) {
            None => return Err(malformed(start)),
            Some(b'>') => {
                return Ok(StartTag {
                    name,
                    attributes,
                    end: i + 1,
                });
            }
            Some(b'/') if bytes.get(i + 1) == Some(&b'>') => {
                return Ok(StartTag {
                    name,
                    attributes,
                    end: i + 2,
                });
            }
            Some(_) => {}
        }
        let attr_start = i;
        i = skip(bytes, i, is_name_byte);
        if i == attr_start {
            return Err(malformed(i));
        }
        let attr_name = text(attr_start, i)?;
        i = skip(bytes, i, |b| b.is_ascii_whitespace());
        if bytes.get(i) != Some(&b'=') {
            return Err(malformed(i));
        }
        i = skip(bytes, i + 1, |b| b.is_ascii_whitespace());
        let quote = match bytes.get(i) {
            Some(q @ (b'"' | b'\'')) => *q,
            _ => return Err(malformed(i)),
        };
        let value_start = i + 1;
        let value_len = find_from(bytes, value_start, &[quote]).ok_or(malformed(i))?;
        let raw = text(value_start, value_start + value_len)?;
        attributes.push((attr_name, decode_entities(raw)));
        i = value_start + value_len + 1;
    }
}

/// Decodes the five predefined entities and numeric references; unknown
/// entities are kept literally.
fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xrd_with_restconf_link() {
        let xml = r#"<?xml version='1.0' encoding='UTF-8'?>
<!-- DORMS -->
<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>
  <Link rel='author' href='/me'/>
  <Link rel="restconf" href="/restconf"/>
  <Link rel='restconf' href='/second'/>
</XRD>"#;
        assert_eq!(parse_host_meta_xml(xml), Ok("/restconf".into()));
    }

    #[test]
    fn prefixed_link_entities_and_attribute_order() {
        let xml = "<x:XRD xmlns:x='urn:x'><x:Link href = \"/top/rest&amp;conf\" rel = 'restconf'></x:Link></x:XRD>";
        assert_eq!(parse_host_meta_xml(xml), Ok("/top/rest&conf".into()));
        assert_eq!(decode_entities("a&#x41;&#66;&bogus;&"), "aAB&bogus;&");
    }

    #[test]
    fn xml_errors() {
        assert_eq!(parse_host_meta_xml(""), Err(HostMetaError::NotXml));
        assert_eq!(
            parse_host_meta_xml("{\"links\":[]}"),
            Err(HostMetaError::NotXml)
        );
        assert_eq!(
            parse_host_meta_xml("<XRD><Link rel='x' href='/y'/></XRD>"),
            Err(HostMetaError::NoRestconfLink)
        );
        assert_eq!(
            parse_host_meta_xml("<XRD><Link rel='restconf' href=''/></XRD>"),
            Err(HostMetaError::EmptyHref)
        );
        assert!(matches!(
            parse_host_meta_xml("<XRD><Link rel='restconf href='/y'/></XRD>"),
            Err(HostMetaError::Malformed { .. })
        ));
        assert!(matches!(
            parse_host_meta_xml("<!-- unterminated"),
            Err(HostMetaError::Malformed { offset: 0 })
        ));
        assert!(matches!(
            parse_host_meta_xml("<html><body>404 Not Found</body></html>"),
            Err(HostMetaError::NoRestconfLink)
        ));
    }

    #[test]
    fn json_form() {
        assert_eq!(
            parse_host_meta_json(
                r#"{"links":[{"rel":"x","href":"/a"},{"rel":"restconf","href":"/top/restconf"}]}"#
            ),
            Ok("/top/restconf".into())
        );
        assert_eq!(
            parse_host_meta_json(r#"{"links":[]}"#),
            Err(HostMetaError::NoRestconfLink)
        );
        assert_eq!(
            parse_host_meta_json(r#"{"links":[{"rel":"restconf"}]}"#),
            Err(HostMetaError::EmptyHref)
        );
        assert!(matches!(
            parse_host_meta_json("<XRD/>"),
            Err(HostMetaError::InvalidJson(_))
        ));
    }
}
