//! An SSM channel (S,G) as given on the command line: `S,G`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Channel {
    pub source: IpAddr,
    pub group: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelParseError {
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
    #[error("{count} consecutive groups from {group} leave the multicast range")]
    RangeOverflow { group: IpAddr, count: u32 },
}

impl Channel {
    pub fn new(source: IpAddr, group: IpAddr) -> Result<Self, ChannelParseError> {
        if source.is_ipv4() != group.is_ipv4() {
            return Err(ChannelParseError::MixedFamilies(source, group));
        }
        if !group.is_multicast() {
            return Err(ChannelParseError::NotMulticast(group));
        }
        if source.is_multicast() || source.is_unspecified() {
            return Err(ChannelParseError::BadSource(source));
        }
        Ok(Self { source, group })
    }

    /// This channel and the next `count - 1` with the same source and the group
    /// address counting up (232.1.1.1, 232.1.1.2, ...).
    pub fn with_consecutive_groups(self, count: u32) -> Result<Vec<Channel>, ChannelParseError> {
        let overflow = ChannelParseError::RangeOverflow {
            group: self.group,
            count,
        };
        (0..count)
            .map(|offset| {
                let group = match self.group {
                    IpAddr::V4(g) => u32::from(g)
                        .checked_add(offset)
                        .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
                    IpAddr::V6(g) => u128::from(g)
                        .checked_add(u128::from(offset))
                        .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
                };
                match group {
                    Some(group) if group.is_multicast() => Ok(Channel { group, ..self }),
                    _ => Err(overflow.clone()),
                }
            })
            .collect()
    }

    pub fn is_ipv4(&self) -> bool {
        self.group.is_ipv4()
    }
}

impl FromStr for Channel {
    type Err = ChannelParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (source, group) = text
            .split_once(',')
            .ok_or_else(|| ChannelParseError::Syntax(text.to_owned()))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<IpAddr>()
                .map_err(|_| ChannelParseError::Address(part.trim().to_owned()))
        };
        Channel::new(parse(source)?, parse(group)?)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.source, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6() {
        let c: Result<Channel, _> = "198.51.100.4,232.1.1.1".parse();
        assert_eq!(
            c,
            Ok(Channel {
                source: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)),
                group: IpAddr::V4(Ipv4Addr::new(232, 1, 1, 1)),
            })
        );
        let c: Result<Channel, _> = "2001:db8:185::4, ff3e::1:1".parse();
        assert_eq!(
            c.map(|c| c.to_string()),
            Ok("(2001:db8:185::4,ff3e::1:1)".to_owned())
        );
    }

    #[test]
    fn rejects_bad_input() {
        let err = |s: &str| s.parse::<Channel>().err();
        assert!(matches!(
            err("198.51.100.4"),
            Some(ChannelParseError::Syntax(_))
        ));
        assert!(matches!(
            err("x,232.1.1.1"),
            Some(ChannelParseError::Address(_))
        ));
        assert!(matches!(
            err("198.51.100.4,10.0.0.1"),
            Some(ChannelParseError::NotMulticast(_))
        ));
        assert!(matches!(
            err("232.1.1.2,232.1.1.1"),
            Some(ChannelParseError::BadSource(_))
        ));
        assert!(matches!(
            err("0.0.0.0,232.1.1.1"),
            Some(ChannelParseError::BadSource(_))
        ));
        assert!(matches!(
            err("2001:db8::1,232.1.1.1"),
            Some(ChannelParseError::MixedFamilies(..))
        ));
    }

    #[test]
    fn consecutive_groups_count_up_and_stop_at_the_range_end() {
        let c: Channel = match "198.51.100.4,232.1.1.254".parse() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let groups: Vec<String> = c
            .with_consecutive_groups(3)
            .unwrap_or_default()
            .iter()
            .map(|c| c.group.to_string())
            .collect();
        assert_eq!(groups, ["232.1.1.254", "232.1.1.255", "232.1.2.0"]);
        let top: Channel = match "198.51.100.4,239.255.255.255".parse() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(matches!(
            top.with_consecutive_groups(2),
            Err(ChannelParseError::RangeOverflow { .. })
        ));
    }
}
