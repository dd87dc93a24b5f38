use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// A source-specific multicast channel: (source, group).
///
/// Ordered by source, then group, so sorted output is stable (IPv4 sorts
/// before IPv6). The fields are public so the type stays a plain value;
/// anything that comes from outside (pimd's JSON, a joinfile, a command
/// line, the API) goes through [`SourceGroup::new`] or [`FromStr`], which
/// check that the pair is a channel at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceGroup {
    pub source: IpAddr,
    pub group: IpAddr,
}

/// Why a (source, group) pair is not an SSM channel.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SourceGroupError {
    #[error("expected SOURCE,GROUP, got {0:?}")]
    Syntax(String),
    #[error("not an IP address: {0:?}")]
    Address(String),
    #[error("source {0} and group {1} are of different address families")]
    MixedFamilies(IpAddr, IpAddr),
    #[error("group {0} is not a multicast address")]
    NotMulticast(IpAddr),
    #[error("source {0} must be a unicast address")]
    BadSource(IpAddr),
}

impl SourceGroup {
    /// A checked channel: source and group of one family, the group
    /// multicast, the source a specific unicast address.
    pub fn new(source: IpAddr, group: IpAddr) -> Result<Self, SourceGroupError> {
        if source.is_ipv4() != group.is_ipv4() {
            return Err(SourceGroupError::MixedFamilies(source, group));
        }
        if !group.is_multicast() {
            return Err(SourceGroupError::NotMulticast(group));
        }
        if source.is_multicast() || source.is_unspecified() {
            return Err(SourceGroupError::BadSource(source));
        }
        Ok(Self { source, group })
    }

    /// True for an IPv4 channel (IGMPv3), false for IPv6 (MLDv2).
    pub fn is_ipv4(&self) -> bool {
        self.group.is_ipv4()
    }
}

impl FromStr for SourceGroup {
    type Err = SourceGroupError;

    /// `SOURCE,GROUP`, e.g. `198.51.100.4,232.1.1.1` or
    /// `2001:db8::4, ff3e::1` (spaces around either address are ignored).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (source, group) = text
            .split_once(',')
            .ok_or_else(|| SourceGroupError::Syntax(text.to_owned()))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<IpAddr>()
                .map_err(|_| SourceGroupError::Address(part.trim().to_owned()))
        };
        SourceGroup::new(parse(source)?, parse(group)?)
    }
}

impl fmt::Display for SourceGroup {
    /// `(S,G)` in canonical text (IPv6 compressed, lower case).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.source, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_ipv4_and_ipv6() {
        let c: Result<SourceGroup, _> = "198.51.100.4,232.1.1.1".parse();
        assert_eq!(
            c,
            Ok(SourceGroup {
                source: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)),
                group: IpAddr::V4(Ipv4Addr::new(232, 1, 1, 1)),
            })
        );
        let c: Result<SourceGroup, _> = "2001:db8:185::4, ff3e::1:1".parse();
        assert_eq!(
            c.map(|c| c.to_string()),
            Ok("(2001:db8:185::4,ff3e::1:1)".to_owned())
        );
    }

    #[test]
    fn rejects_bad_input() {
        type Check = fn(&SourceGroupError) -> bool;
        let cases: [(&str, Check); 6] = [
            ("198.51.100.4", |e| matches!(e, SourceGroupError::Syntax(_))),
            ("x,232.1.1.1", |e| matches!(e, SourceGroupError::Address(_))),
            ("198.51.100.4,10.0.0.1", |e| {
                matches!(e, SourceGroupError::NotMulticast(_))
            }),
            ("232.1.1.2,232.1.1.1", |e| {
                matches!(e, SourceGroupError::BadSource(_))
            }),
            ("0.0.0.0,232.1.1.1", |e| {
                matches!(e, SourceGroupError::BadSource(_))
            }),
            ("2001:db8::1,232.1.1.1", |e| {
                matches!(e, SourceGroupError::MixedFamilies(..))
            }),
        ];
        for (text, expected) in cases {
            match text.parse::<SourceGroup>() {
                Err(e) => assert!(expected(&e), "{text}: wrong error {e:?}"),
                Ok(sg) => panic!("{text}: accepted as {sg}"),
            }
        }
    }

    #[test]
    fn orders_by_source_then_group_v4_first() {
        let mut v: Vec<SourceGroup> = [
            "2001:db8::1,ff3e::1",
            "10.0.0.2,232.0.0.1",
            "10.0.0.1,232.0.0.2",
        ]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
        v.sort();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "(10.0.0.1,232.0.0.2)",
                "(10.0.0.2,232.0.0.1)",
                "(2001:db8::1,ff3e::1)"
            ]
        );
    }
}
