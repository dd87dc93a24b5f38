//! Ranges of SSM channels for the lab tools: `--groups N` turns one
//! (S,G) into N channels with consecutive groups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ingest_types::SourceGroup;
use serde::Serialize;
use thiserror::Error;

/// How each channel's entry of mcsend's and mcrx's JSON summaries begins:
/// the channel and its packet and byte counts.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelCounts {
    pub source: String,
    pub group: String,
    pub packets: u64,
    pub bytes: u64,
}

impl ChannelCounts {
    pub fn new(channel: &SourceGroup, packets: u64, bytes: u64) -> Self {
        Self {
            source: channel.source.to_string(),
            group: channel.group.to_string(),
            packets,
            bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{count} consecutive groups from {group} leave the multicast range")]
pub struct GroupRangeError {
    pub group: IpAddr,
    pub count: u32,
}

/// `first` and the next `count - 1` channels with the same source and the
/// group address counting up (232.1.1.1, 232.1.1.2, ...).
pub fn consecutive_groups(
    first: SourceGroup,
    count: u32,
) -> Result<Vec<SourceGroup>, GroupRangeError> {
    let overflow = GroupRangeError {
        group: first.group,
        count,
    };
    (0..count)
        .map(|offset| {
            let group = match first.group {
                IpAddr::V4(g) => u32::from(g)
                    .checked_add(offset)
                    .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
                IpAddr::V6(g) => u128::from(g)
                    .checked_add(u128::from(offset))
                    .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
            };
            match group {
                Some(group) if group.is_multicast() => Ok(SourceGroup { group, ..first }),
                _ => Err(overflow.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_groups_count_up_and_stop_at_the_range_end() {
        let c: SourceGroup = match "198.51.100.4,232.1.1.254".parse() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let groups: Vec<String> = consecutive_groups(c, 3)
            .unwrap_or_default()
            .iter()
            .map(|c| c.group.to_string())
            .collect();
        assert_eq!(groups, ["232.1.1.254", "232.1.1.255", "232.1.2.0"]);
        let top: SourceGroup = match "198.51.100.4,239.255.255.255".parse() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(consecutive_groups(top, 2).is_err());
    }
}
