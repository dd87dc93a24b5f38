//! Joinfile: the old platform's text interface between stages.
//!
//! Format, one (S,G) per line: `source,group[,population]`.
//!
//! Reading is tolerant in layout and exact in what it rejects:
//! * each line and each field is trimmed (tabs, spaces, CRLF);
//! * blank lines and lines whose first non-blank character is `#` are skipped;
//!   there is no inline comment syntax (a `#` later in the line rejects it);
//! * the separator is `,` only;
//! * source and group are IPv4 or IPv6 text; IPv4 with leading zeros is
//!   rejected (std parser), IPv6 zone ids are rejected;
//! * the group must be multicast and not link-scoped (224.0.0.0/24, ff00::/16
//!   through ff02::/16 scopes 0-2): those never leave the link, so ingesting
//!   them makes no sense. Non-SSM multicast groups are accepted (the sample
//!   network uses 233/8);
//! * the source must be unicast: not multicast, unspecified, broadcast or
//!   loopback;
//! * source and group must be the same family;
//! * population (optional third column) is an integer >= 1.
//!
//! Each rejected line yields a [`LineError`] with its 1-based line number; the
//! other lines are still used. The result is a set: duplicate (S,G)s (in any
//! spelling) collapse; when duplicates carry different populations the largest
//! is kept.
//!
//! Writing ([`write_joinfile`]) renders canonical text sorted by (S,G), one
//! line each with a trailing newline, and replaces the file atomically (temp
//! file in the same directory, fsync, rename, fsync of the directory). It
//! writes only when the content differs and reports whether it wrote.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;

use ingest_types::SourceGroup;

/// One line of a joinfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinEntry {
    pub sg: SourceGroup,
    /// Number of downstream receivers/networks behind this (S,G), when the
    /// producer knows it (third column). Absent means "assume 1".
    pub population: Option<NonZeroU32>,
}

/// Why one joinfile line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinLineErrorKind {
    #[error("expected 2 or 3 comma-separated fields, found {found}")]
    FieldCount { found: usize },
    #[error("inline comments are not supported ('#' after data)")]
    InlineComment,
    #[error("source {text:?} is not an IPv4 or IPv6 address")]
    BadSource { text: String },
    #[error("group {text:?} is not an IPv4 or IPv6 address")]
    BadGroup { text: String },
    #[error("group {group} is not a multicast address")]
    GroupNotMulticast { group: IpAddr },
    #[error("group {group} is link-scoped and cannot be ingested")]
    GroupLinkScoped { group: IpAddr },
    #[error("source {source_addr} is not a unicast address")]
    SourceNotUnicast { source_addr: IpAddr },
    #[error("source {source_addr} and group {group} are different address families")]
    FamilyMismatch { source_addr: IpAddr, group: IpAddr },
    #[error("population {text:?} is not an integer >= 1")]
    BadPopulation { text: String },
}

/// A rejected line: 1-based line number plus the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct LineError {
    pub line: usize,
    pub kind: JoinLineErrorKind,
}

/// A set of (S,G)s with optional populations, sorted by (S,G).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joinfile {
    entries: BTreeMap<SourceGroup, Option<NonZeroU32>>,
}

/// Result of parsing a joinfile: the accepted set and every rejected line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedJoinfile {
    pub joinfile: Joinfile,
    pub errors: Vec<LineError>,
}

impl Joinfile {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses joinfile text; never fails as a whole.
    pub fn parse(text: &str) -> ParsedJoinfile {
        let mut parsed = ParsedJoinfile::default();
        for (index, raw) in text.lines().enumerate() {
            match parse_line(raw) {
                Ok(None) => {}
                Ok(Some(entry)) => parsed.joinfile.insert(entry),
                Err(kind) => parsed.errors.push(LineError {
                    line: index + 1,
                    kind,
                }),
            }
        }
        parsed
    }

    /// Adds an entry; a duplicate (S,G) keeps the larger population.
    pub fn insert(&mut self, entry: JoinEntry) {
        let slot = self.entries.entry(entry.sg).or_insert(entry.population);
        *slot = (*slot).max(entry.population);
    }

    pub fn remove(&mut self, sg: &SourceGroup) -> bool {
        self.entries.remove(sg).is_some()
    }

    pub fn contains(&self, sg: &SourceGroup) -> bool {
        self.entries.contains_key(sg)
    }

    /// Population of an (S,G): `None` when the (S,G) is absent,
    /// `Some(None)` when present without a population column.
    pub fn population(&self, sg: &SourceGroup) -> Option<Option<NonZeroU32>> {
        self.entries.get(sg).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in (S,G) order.
    pub fn iter(&self) -> impl Iterator<Item = JoinEntry> + '_ {
        self.entries.iter().map(|(sg, population)| JoinEntry {
            sg: *sg,
            population: *population,
        })
    }

    /// Canonical text: sorted, `S,G` or `S,G,population`, one per line, each
    /// terminated by `\n`. The empty set renders as the empty string.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for entry in self.iter() {
            out.push_str(&entry.sg.source.to_string());
            out.push(',');
            out.push_str(&entry.sg.group.to_string());
            if let Some(population) = entry.population {
                out.push(',');
                out.push_str(&population.to_string());
            }
            out.push('\n');
        }
        out
    }
}

impl FromIterator<JoinEntry> for Joinfile {
    fn from_iter<T: IntoIterator<Item = JoinEntry>>(iter: T) -> Self {
        let mut joinfile = Joinfile::new();
        for entry in iter {
            joinfile.insert(entry);
        }
        joinfile
    }
}

/// Parses one line: `Ok(None)` for blank and comment lines.
fn parse_line(raw: &str) -> Result<Option<JoinEntry>, JoinLineErrorKind> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.contains('#') {
        return Err(JoinLineErrorKind::InlineComment);
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let (source_text, group_text, population_text) = match fields.as_slice() {
        [s, g] => (*s, *g, None),
        [s, g, p] => (*s, *g, Some(*p)),
        other => return Err(JoinLineErrorKind::FieldCount { found: other.len() }),
    };
    let source: IpAddr = source_text
        .parse()
        .map_err(|_| JoinLineErrorKind::BadSource {
            text: source_text.to_owned(),
        })?;
    let group: IpAddr = group_text
        .parse()
        .map_err(|_| JoinLineErrorKind::BadGroup {
            text: group_text.to_owned(),
        })?;
    check_sg(source, group)?;
    let population = match population_text {
        None => None,
        Some(text) => {
            Some(
                text.parse::<NonZeroU32>()
                    .map_err(|_| JoinLineErrorKind::BadPopulation {
                        text: text.to_owned(),
                    })?,
            )
        }
    };
    Ok(Some(JoinEntry {
        sg: SourceGroup { source, group },
        population,
    }))
}

/// The semantic checks applied to every (S,G), exposed for other producers.
pub fn check_sg(source: IpAddr, group: IpAddr) -> Result<(), JoinLineErrorKind> {
    if !group.is_multicast() {
        return Err(JoinLineErrorKind::GroupNotMulticast { group });
    }
    if is_link_scoped_group(group) {
        return Err(JoinLineErrorKind::GroupLinkScoped { group });
    }
    if !is_unicast_source(source) {
        return Err(JoinLineErrorKind::SourceNotUnicast {
            source_addr: source,
        });
    }
    if source.is_ipv4() != group.is_ipv4() {
        return Err(JoinLineErrorKind::FamilyMismatch {
            source_addr: source,
            group,
        });
    }
    Ok(())
}

fn is_link_scoped_group(group: IpAddr) -> bool {
    match group {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            a == 224 && b == 0 && c == 0
        }
        // Scope nibble 0 (reserved), 1 (interface-local), 2 (link-local).
        IpAddr::V6(v6) => (v6.octets()[1] & 0x0f) <= 2,
    }
}

fn is_unicast_source(source: IpAddr) -> bool {
    match source {
        IpAddr::V4(v4) => {
            !(v4.is_multicast() || v4.is_unspecified() || v4.is_broadcast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified() || v6.is_loopback()),
    }
}

/// Reads and parses a joinfile. A missing file is an I/O error (the caller
/// decides whether that means "empty" or "no change").
pub fn read_joinfile(path: &Path) -> io::Result<ParsedJoinfile> {
    let text = fs::read_to_string(path)?;
    Ok(Joinfile::parse(&text))
}

/// Writes `joinfile` to `path` atomically when its rendered content differs
/// from the current file. Returns `Ok(true)` when it wrote.
pub fn write_joinfile(path: &Path, joinfile: &Joinfile) -> io::Result<bool> {
    write_if_changed(path, joinfile.render().as_bytes())
}

/// Atomic replace-if-changed: temp file in the same directory, fsync, rename.
pub fn write_if_changed(path: &Path, content: &[u8]) -> io::Result<bool> {
    match fs::read(path) {
        Ok(existing) if existing == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // The temp name ends in ".tmp" so watchers matching the target name by
    // suffix (the old platform did) do not react to it.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp_path = dir.join(temp_name);
    let result = (|| {
        let mut file = fs::File::create(&temp_path)?;
        file.write_all(content)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp_path, path)?;
        // Persist the rename itself; failure to open a directory is not
        // worth failing the write for.
        if let Ok(dir_handle) = fs::File::open(dir) {
            let _ = dir_handle.sync_all();
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn sg(s: &str, g: &str) -> SourceGroup {
        SourceGroup::new(s.parse().unwrap(), g.parse().unwrap()).unwrap()
    }

    #[test]
    fn empty_blank_and_comment_only_files_are_empty() {
        for text in [
            "",
            "\n",
            "\n\n  \t\n",
            "# a comment\n  # indented\n",
            "\r\n",
        ] {
            let parsed = Joinfile::parse(text);
            assert!(parsed.joinfile.is_empty(), "{text:?}");
            assert!(parsed.errors.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn tolerant_layout() {
        let text = "23.212.185.4,232.1.1.1\n \t10.0.0.1 , 232.1.1.2\t\r\n10.0.0.2,232.1.1.3\r\n";
        let parsed = Joinfile::parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let got: Vec<SourceGroup> = parsed.joinfile.iter().map(|e| e.sg).collect();
        assert_eq!(
            got,
            vec![
                sg("10.0.0.1", "232.1.1.2"),
                sg("10.0.0.2", "232.1.1.3"),
                sg("23.212.185.4", "232.1.1.1"),
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_line_numbers_and_others_kept() {
        let text = "\
10.0.0.1,232.1.1.1
10.0.0.1 232.1.1.2
10.0.0.1;232.1.1.2
10.0.0.1,232.1.1.3 # note
10.0.0.1
10.0.0.1,232.1.1.1,1,2
10.0.0.1,10.0.0.2
10.0.0.1,224.0.0.13
232.1.1.1,232.1.1.5
10.0.0.1,ff3e::1
010.0.0.1,232.1.1.1
10.0.0.256,232.1.1.1
10.0.0.1.,232.1.1.1
10.0.0.1,232.1.1.1,0
10.0.0.1,232.1.1.1,-1
10.0.0.1,232.1.1.1,many
0.0.0.0,232.1.1.1
127.0.0.1,232.1.1.1
255.255.255.255,232.1.1.1
2001:db8::1,ff02::1
10.0.0.9,232.9.9.9
";
        let parsed = Joinfile::parse(text);
        use JoinLineErrorKind::*;
        let expected = vec![
            (2, FieldCount { found: 1 }),
            (3, FieldCount { found: 1 }),
            (4, InlineComment),
            (5, FieldCount { found: 1 }),
            (6, FieldCount { found: 4 }),
            (
                7,
                GroupNotMulticast {
                    group: "10.0.0.2".parse().unwrap(),
                },
            ),
            (
                8,
                GroupLinkScoped {
                    group: "224.0.0.13".parse().unwrap(),
                },
            ),
            (
                9,
                SourceNotUnicast {
                    source_addr: "232.1.1.1".parse().unwrap(),
                },
            ),
            (
                10,
                FamilyMismatch {
                    source_addr: "10.0.0.1".parse().unwrap(),
                    group: "ff3e::1".parse().unwrap(),
                },
            ),
            (
                11,
                BadSource {
                    text: "010.0.0.1".into(),
                },
            ),
            (
                12,
                BadSource {
                    text: "10.0.0.256".into(),
                },
            ),
            (
                13,
                BadSource {
                    text: "10.0.0.1.".into(),
                },
            ),
            (14, BadPopulation { text: "0".into() }),
            (15, BadPopulation { text: "-1".into() }),
            (
                16,
                BadPopulation {
                    text: "many".into(),
                },
            ),
            (
                17,
                SourceNotUnicast {
                    source_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                },
            ),
            (
                18,
                SourceNotUnicast {
                    source_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                },
            ),
            (
                19,
                SourceNotUnicast {
                    source_addr: IpAddr::V4(Ipv4Addr::BROADCAST),
                },
            ),
            (
                20,
                GroupLinkScoped {
                    group: "ff02::1".parse().unwrap(),
                },
            ),
        ];
        let got: Vec<(usize, JoinLineErrorKind)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.kind.clone()))
            .collect();
        assert_eq!(got, expected);
        let kept: Vec<SourceGroup> = parsed.joinfile.iter().map(|e| e.sg).collect();
        assert_eq!(
            kept,
            vec![sg("10.0.0.1", "232.1.1.1"), sg("10.0.0.9", "232.9.9.9")]
        );
        assert_eq!(
            parsed.errors[0].to_string(),
            "line 2: expected 2 or 3 comma-separated fields, found 1"
        );
    }

    #[test]
    fn non_ssm_groups_are_accepted() {
        let parsed =
            Joinfile::parse("10.0.0.1,233.44.15.9\n10.0.0.1,239.1.1.1\n2001:db8::1,ff05::1\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.joinfile.len(), 3);
    }

    #[test]
    fn ipv6_spellings_collapse_and_population_max_is_kept() {
        let text = "\
2001:DB8::1,FF3E::8000:1
2001:0db8:0000:0000:0000:0000:0000:0001,ff3e:0:0:0:0:0:8000:1,3
2001:db8::1,ff3e::8000:1,2
2001:db8::1,ff3e::8000:1
";
        let parsed = Joinfile::parse(text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.joinfile.len(), 1);
        let entry = parsed.joinfile.iter().next().unwrap();
        assert_eq!(
            entry.sg.source,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        );
        assert_eq!(entry.population, NonZeroU32::new(3));
        assert_eq!(parsed.joinfile.render(), "2001:db8::1,ff3e::8000:1,3\n");
    }

    #[test]
    fn render_is_sorted_canonical_with_trailing_newline() {
        let parsed = Joinfile::parse(
            "2001:db8::2,ff3e::1\n10.0.0.2,232.1.1.1,4\n10.0.0.1,232.1.1.2\n10.0.0.1,232.1.1.1\n",
        );
        assert_eq!(
            parsed.joinfile.render(),
            "10.0.0.1,232.1.1.1\n10.0.0.1,232.1.1.2\n10.0.0.2,232.1.1.1,4\n2001:db8::2,ff3e::1\n"
        );
        assert_eq!(Joinfile::new().render(), "");
        // Round trip.
        let again = Joinfile::parse(&parsed.joinfile.render());
        assert_eq!(again.joinfile, parsed.joinfile);
    }

    #[test]
    fn write_is_atomic_and_only_when_changed() {
        let dir = std::env::temp_dir().join(format!(
            "joinfile-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cbacc.sgs");

        let mut set = Joinfile::new();
        set.insert(JoinEntry {
            sg: sg("10.0.0.1", "232.1.1.1"),
            population: None,
        });
        assert!(write_joinfile(&path, &set).unwrap(), "first write");
        assert_eq!(fs::read_to_string(&path).unwrap(), "10.0.0.1,232.1.1.1\n");
        assert!(!write_joinfile(&path, &set).unwrap(), "unchanged");

        set.insert(JoinEntry {
            sg: sg("10.0.0.0", "232.1.1.1"),
            population: NonZeroU32::new(2),
        });
        assert!(write_joinfile(&path, &set).unwrap(), "changed");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "10.0.0.0,232.1.1.1,2\n10.0.0.1,232.1.1.1\n"
        );
        let parsed = read_joinfile(&path).unwrap();
        assert_eq!(parsed.joinfile, set);

        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("cbacc.sgs")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
