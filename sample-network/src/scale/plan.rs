//! The scale lab's addressing and channels, computed from its parameters
//! (pure: no I/O, unit-tested).
//!
//! Sources and relays come from the benchmarking block 198.18.0.0/15
//! (RFC 2544), which nothing else in the lab uses: sources 198.18.0.1,
//! 198.18.0.2, ... on the sources' LAN (one /16; the scale relay's own LAN
//! address is 198.18.255.254), relay addresses 198.19.0.1, 198.19.0.2, ...
//! Every channel has a group of its own, consecutive from 232.18.0.0:
//! source `i` sends to the `groups_per_source` groups after those of
//! source `i - 1`, which is what `mcsend --channel S,G --groups K` sends.
//! Source `i` is served by relay `i mod relays` (one AMTRELAY record or
//! one static map entry per source), so every relay address gets
//! `sources / relays` sources.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ingest_types::SourceGroup;
use serde::Serialize;

/// The sources' subnet (prefix length [`SOURCE_PREFIX_LEN`]).
pub const SOURCE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const SOURCE_PREFIX_LEN: u8 = 16;
/// The scale relay's address on the sources' LAN (last of the subnet).
pub const RELAY_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
/// The relay addresses' block (routed to the scale relay's node).
pub const RELAY_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
pub const RELAY_PREFIX_LEN: u8 = 16;
/// First group; channel `c` uses `GROUP_FIRST + c`.
pub const GROUP_FIRST: Ipv4Addr = Ipv4Addr::new(232, 18, 0, 0);
/// Largest counts the address blocks hold.
pub const MAX_SOURCES: usize = 65_533;
pub const MAX_RELAYS: usize = 65_534;
pub const MAX_CHANNELS: usize = 1_000_000;
/// The reverse zone of [`SOURCE_NET`] (AMTRELAY records of the sources).
pub const SOURCE_REVERSE_ZONE: &str = "18.198.in-addr.arpa.";

/// How the daemon finds each source's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayMapKind {
    /// DRIAD: one AMTRELAY record (type 1, D=0) per source in
    /// 18.198.in-addr.arpa. (SOURCE_REVERSE_ZONE), served by the lab's named.
    Driad,
    /// The daemon's static map (amt.static_relays): one /32 entry per source.
    Static,
}

/// What the scale lab is made of.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleParams {
    /// (S,G) channels in all.
    pub channels: usize,
    /// Relay addresses (one `amt-relay` process answers on all).
    pub relays: usize,
    /// Channels per source (consecutive groups); the last source may have
    /// fewer.
    pub groups_per_source: usize,
    /// Packets per second per channel sent by `mcsend`.
    pub rate_pps: f64,
    pub relay_map: RelayMapKind,
    /// Query interval the relay announces (the gateway refreshes every
    /// tunnel this often): the steady load per tunnel.
    pub relay_qqi_s: u64,
    /// Native joins per raw socket of the relay (its namespace's
    /// `net.ipv4.igmp_max_memberships`): the kernel walks a socket's
    /// membership list on every join, so 10,000 on one socket make joining
    /// slow; a few hundred per socket keep each join cheap.
    pub relay_groups_per_socket: usize,
    /// Nice value of the relay and the sender (negative: ahead of other
    /// work on a shared machine; 0: as started).
    pub lab_nice: i32,
}

impl Default for ScaleParams {
    fn default() -> Self {
        Self {
            channels: 10_000,
            relays: 1_000,
            groups_per_source: 10,
            rate_pps: 1.0,
            relay_map: RelayMapKind::Driad,
            relay_qqi_s: 125,
            relay_groups_per_socket: 10_000,
            lab_nice: 0,
        }
    }
}

/// Parameters that do not fit the address plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("--channels must be 1..={MAX_CHANNELS}, not {0}")]
    Channels(usize),
    #[error("--groups-per-source must be at least 1")]
    GroupsPerSource,
    #[error(
        "{channels} channels at {groups_per_source} per source are {sources} sources; \
         at most {MAX_SOURCES} fit in 198.18.0.0/16"
    )]
    Sources {
        channels: usize,
        groups_per_source: usize,
        sources: usize,
    },
    #[error("--relays must be 1..={MAX_RELAYS}, not {0}")]
    Relays(usize),
    #[error(
        "{relays} relays need at least {relays} sources (one relay per source), \
         but {channels} channels at {groups_per_source} per source are only {sources}"
    )]
    FewerSourcesThanRelays {
        relays: usize,
        channels: usize,
        groups_per_source: usize,
        sources: usize,
    },
    #[error("--rate must be a positive number of packets/s, not {0}")]
    Rate(f64),
    #[error("--relay-qqi must be at least 1 s")]
    Qqi,
    #[error("--relay-groups-per-socket must be at least 1")]
    GroupsPerSocket,
}

/// One wanted channel and the relay address that must carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedChannel {
    pub channel: SourceGroup,
    pub relay: Ipv4Addr,
}

/// The scale lab's addresses and channels.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub params: ScaleParams,
    pub sources: Vec<Ipv4Addr>,
    pub relays: Vec<Ipv4Addr>,
    pub channels: Vec<PlannedChannel>,
}

/// `base + n` as an IPv4 address (callers keep it inside its block).
fn nth(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n as u32))
}

impl ScalePlan {
    pub fn new(params: ScaleParams) -> Result<Self, PlanError> {
        let ScaleParams {
            channels,
            relays,
            groups_per_source,
            rate_pps,
            relay_qqi_s,
            ..
        } = params;
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(PlanError::Channels(channels));
        }
        if groups_per_source == 0 {
            return Err(PlanError::GroupsPerSource);
        }
        let source_count = channels.div_ceil(groups_per_source);
        if source_count > MAX_SOURCES {
            return Err(PlanError::Sources {
                channels,
                groups_per_source,
                sources: source_count,
            });
        }
        if relays == 0 || relays > MAX_RELAYS {
            return Err(PlanError::Relays(relays));
        }
        if relays > source_count {
            return Err(PlanError::FewerSourcesThanRelays {
                relays,
                channels,
                groups_per_source,
                sources: source_count,
            });
        }
        if !(rate_pps.is_finite() && rate_pps > 0.0) {
            return Err(PlanError::Rate(rate_pps));
        }
        if relay_qqi_s == 0 {
            return Err(PlanError::Qqi);
        }
        if params.relay_groups_per_socket == 0 {
            return Err(PlanError::GroupsPerSocket);
        }
        let sources: Vec<Ipv4Addr> = (0..source_count).map(|i| nth(SOURCE_NET, i + 1)).collect();
        let relay_addrs: Vec<Ipv4Addr> = (0..relays).map(|j| nth(RELAY_NET, j + 1)).collect();
        let planned = (0..channels)
            .map(|c| {
                let source = c / groups_per_source;
                PlannedChannel {
                    channel: SourceGroup {
                        source: IpAddr::V4(sources[source]),
                        group: IpAddr::V4(nth(GROUP_FIRST, c)),
                    },
                    relay: relay_addrs[source % relays],
                }
            })
            .collect();
        Ok(Self {
            params,
            sources,
            relays: relay_addrs,
            channels: planned,
        })
    }

    /// The relay serving source number `index`.
    pub fn relay_of_source(&self, index: usize) -> Ipv4Addr {
        self.relays[index % self.relays.len()]
    }

    /// `FIRST-LAST` of the relay addresses (`amt-relay --listen-range`).
    pub fn relay_range(&self) -> String {
        format!("{}-{}", self.relays[0], self.relays[self.relays.len() - 1])
    }

    /// The reverse zone of the sources: one AMTRELAY record per source
    /// (precedence 10, D=0: the gateway sends Relay Discovery first; type
    /// 1: an IPv4 relay), as in the lab's own zones.
    pub fn reverse_zone(&self) -> String {
        let mut z = format!(
            "; {SOURCE_REVERSE_ZONE} -- generated by lab-scale: the scale lab's {} sources,\n\
             ; each with the AMTRELAY record of its relay (RFC 8777: precedence D-bit type relay).\n\
             $TTL 300\n$ORIGIN {SOURCE_REVERSE_ZONE}\n\
             @ SOA ns.lab. hostmaster.lab. 1 300 60 600 10\n@ NS ns.lab.\n",
            self.sources.len()
        );
        for (i, source) in self.sources.iter().enumerate() {
            let [_, _, c, d] = source.octets();
            let _ = writeln!(z, "{d}.{c} AMTRELAY 10 0 1 {}", self.relay_of_source(i));
        }
        z
    }

    /// The static relay map for the daemon's TOML (`[[amt.static_relays]]`,
    /// one /32 per source).
    pub fn static_relays_toml(&self) -> String {
        let mut t = String::new();
        for (i, source) in self.sources.iter().enumerate() {
            let _ = writeln!(
                t,
                "[[amt.static_relays]]\nprefix = \"{source}/32\"\nrelay = \"{}\"",
                self.relay_of_source(i)
            );
        }
        t
    }

    /// The wanted set as a joinfile (`source,group` per line).
    pub fn joinfile(&self) -> String {
        let mut t = String::with_capacity(self.channels.len() * 28);
        for c in &self.channels {
            let _ = writeln!(t, "{},{}", c.channel.source, c.channel.group);
        }
        t
    }

    /// The `--channel`/`--groups` arguments of `mcsend` or `mcrx` for every
    /// channel: one `--channel` per source with `--groups K` when every
    /// source has K channels, else one `--channel` per channel.
    pub fn channel_args(&self) -> Vec<String> {
        let k = self.params.groups_per_source;
        let mut args = Vec::new();
        if self.channels.len().is_multiple_of(k) {
            for c in self.channels.iter().step_by(k) {
                args.push(format!(
                    "--channel={},{}",
                    c.channel.source, c.channel.group
                ));
            }
            args.push(format!("--groups={k}"));
        } else {
            for c in &self.channels {
                args.push(format!(
                    "--channel={},{}",
                    c.channel.source, c.channel.group
                ));
            }
        }
        args
    }

    /// `ip -batch` lines adding every source address to `dev`.
    pub fn source_address_batch(&self, dev: &str) -> String {
        let mut t = String::new();
        for s in &self.sources {
            let _ = writeln!(t, "address add {s}/{SOURCE_PREFIX_LEN} dev {dev}");
        }
        t
    }

    /// `ip -batch` lines adding every relay address (/32) to `dev`.
    pub fn relay_address_batch(&self, dev: &str) -> String {
        let mut t = String::new();
        for r in &self.relays {
            let _ = writeln!(t, "address add {r}/32 dev {dev}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(channels: usize, relays: usize, k: usize) -> ScaleParams {
        ScaleParams {
            channels,
            relays,
            groups_per_source: k,
            ..ScaleParams::default()
        }
    }

    #[test]
    fn default_plan_is_a_thousand_sources_over_a_thousand_relays() {
        let p = ScalePlan::new(ScaleParams::default()).unwrap();
        assert_eq!(p.sources.len(), 1000);
        assert_eq!(p.relays.len(), 1000);
        assert_eq!(p.channels.len(), 10_000);
        assert_eq!(p.sources[0], Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.sources[999], Ipv4Addr::new(198, 18, 3, 232));
        assert_eq!(p.relay_range(), "198.19.0.1-198.19.3.232");
        let last = p.channels[9999];
        assert_eq!(
            last.channel.group,
            IpAddr::V4(Ipv4Addr::new(232, 18, 39, 15))
        );
        assert_eq!(last.relay, Ipv4Addr::new(198, 19, 3, 232));
        // Every group once.
        let groups: std::collections::HashSet<_> =
            p.channels.iter().map(|c| c.channel.group).collect();
        assert_eq!(groups.len(), 10_000);
    }

    #[test]
    fn sources_spread_round_robin_over_relays() {
        let p = ScalePlan::new(params(1000, 100, 10)).unwrap();
        assert_eq!(p.sources.len(), 100);
        assert_eq!(p.channels[0].relay, p.relays[0]);
        assert_eq!(p.channels[10].relay, p.relays[1]);
        let p = ScalePlan::new(params(40, 2, 10)).unwrap();
        assert_eq!(p.relay_of_source(3), p.relays[1]);
        assert_eq!(p.channels[39].relay, p.relays[1]);
    }

    #[test]
    fn zone_joinfile_and_static_map_name_every_source() {
        let p = ScalePlan::new(params(25, 2, 10)).unwrap();
        let z = p.reverse_zone();
        assert!(z.contains("\n1.0 AMTRELAY 10 0 1 198.19.0.1\n"), "{z}");
        assert!(z.contains("\n3.0 AMTRELAY 10 0 1 198.19.0.1\n"), "{z}");
        assert!(z.contains("\n2.0 AMTRELAY 10 0 1 198.19.0.2\n"), "{z}");
        assert_eq!(p.joinfile().lines().count(), 25);
        assert!(p.joinfile().starts_with("198.18.0.1,232.18.0.0\n"));
        let t = p.static_relays_toml();
        assert!(
            t.contains("prefix = \"198.18.0.3/32\"\nrelay = \"198.19.0.1\""),
            "{t}"
        );
        // 25 channels, 10 per source: not all sources are full, so every
        // channel is listed on its own.
        assert_eq!(p.channel_args().len(), 25);
        let p = ScalePlan::new(params(30, 2, 10)).unwrap();
        assert_eq!(
            p.channel_args(),
            [
                "--channel=198.18.0.1,232.18.0.0",
                "--channel=198.18.0.2,232.18.0.10",
                "--channel=198.18.0.3,232.18.0.20",
                "--groups=10"
            ]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            ScalePlan::new(params(0, 1, 10)).unwrap_err(),
            PlanError::Channels(0)
        );
        assert!(matches!(
            ScalePlan::new(params(100, 20, 10)).unwrap_err(),
            PlanError::FewerSourcesThanRelays { sources: 10, .. }
        ));
        assert!(matches!(
            ScalePlan::new(params(700_000, 1, 10)).unwrap_err(),
            PlanError::Sources { .. }
        ));
        let mut p = params(10, 1, 10);
        p.rate_pps = 0.0;
        assert_eq!(ScalePlan::new(p).unwrap_err(), PlanError::Rate(0.0));
    }
}
