//! Configuration: a TOML file (every key optional, defaults shown in
//! `frr-ingestd --print-default-config`) plus command-line overrides.
//! Errors name the key and the problem in one line.

use ingest_types::AMT_PORT;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub frr: FrrConfig,
    pub tun: TunSection,
    pub watch: WatchConfig,
    pub api: ApiConfig,
    pub ingest: IngestConfig,
    pub amt: AmtConfig,
    pub policy: crate::policy_engine::PolicyConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrrConfig {
    /// Directory of FRR's vty sockets (`pimd.vty` is read from here).
    pub vty_dir: PathBuf,
    /// FRR's network namespace, e.g. `/var/run/netns/ingest`. The TUN and
    /// the source routes go there. Empty: the sidecar's own namespace.
    pub netns: Option<PathBuf>,
    /// Timeout of one vty command, in milliseconds.
    pub command_timeout_ms: u64,
    /// Also read IPv6 joins from `pim6d.vty`: "auto" (when the socket
    /// exists), "yes" or "no".
    pub pim6: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunSection {
    pub name: String,
    /// Address of the TUN in FRR's namespace (pimd needs an IPv4 one).
    pub local: IpAddr,
    /// The sidecar's address as PIM neighbour on the TUN; routes to
    /// ingested sources point at it.
    pub neighbor: IpAddr,
    pub mtu: u32,
    /// Seconds between PIM Hellos (holdtime is 3.5 times this).
    pub hello_interval_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// How often pimd's join state is read (also re-read at once on PIM
    /// Join/Prune or multicast-route events).
    pub poll_interval_ms: u64,
    /// After losing pimd, keep the last join set this long once pimd is
    /// back, so a pimd restart does not tear down every flow while the
    /// downstream routers re-send their periodic Joins (every 60 s).
    pub pimd_restart_grace_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Unix socket of the management API.
    pub socket: PathBuf,
    /// Permission bits of the socket (octal string).
    pub socket_mode: String,
    /// Optional loopback TCP listener, e.g. "127.0.0.1:50051".
    pub tcp: Option<SocketAddr>,
    /// Optional Prometheus metrics listener (plain HTTP, `GET /metrics` and
    /// `GET /healthz`, read-only), e.g. "127.0.0.1:9477" or "[::]:9477" for
    /// a remote scraper.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Lab and troubleshooting mode: route every joined source to the TUN
    /// at once, without a tunnel (traffic then comes from `ingestctl
    /// inject`). Never set this on a production ingest router.
    pub serve_all_sources: bool,
    /// Where the wanted (S,G)s come from: "pimd" (pimd's join state, the
    /// normal case) or "file:PATH" (a joinfile of the old platform,
    /// `source,group[,population]` per line, re-read when it changes).
    pub join_source: String,
    /// Also write the admitted flows to this joinfile
    /// (`source,group,population`), for tools of the old platform.
    pub write_joinfile: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            serve_all_sources: false,
            join_source: "pimd".into(),
            write_joinfile: None,
        }
    }
}

/// Where the desired set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinSource {
    Pimd,
    File(PathBuf),
}

/// AMT gateway settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmtConfig {
    /// Seconds a tunnel stays open after its last channel left, so a quick
    /// re-join does not pay for discovery and handshake again.
    pub linger_s: u64,
    /// Local address the tunnels' UDP sockets bind to (port 0 = any).
    /// Default: any address of the relay's family.
    pub bind: Option<IpAddr>,
    /// Seconds without data on a subscribed channel before the relay is
    /// considered failing for it (RFC 8777 §3.3.3); 0 disables.
    pub no_data_timeout_s: u64,
    /// Static relay map: sources in `prefix` are ingested through `relay`.
    /// It overrides DNS discovery (DRIAD), and is the fallback for
    /// operators who want fixed relays.
    pub static_relays: Vec<StaticRelay>,
}

impl Default for AmtConfig {
    fn default() -> Self {
        Self {
            linger_s: 60,
            bind: None,
            no_data_timeout_s: 10,
            static_relays: Vec::new(),
        }
    }
}

/// One entry of the static relay map.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRelay {
    /// Source prefix, e.g. "198.51.100.0/24" or "2001:db8::/32".
    pub prefix: String,
    /// Relay address: "192.0.2.10", "192.0.2.10:2268" or "[2001:db8::10]:2268".
    pub relay: String,
    /// Send Relay Discovery first (false: the address is the relay itself,
    /// like an AMTRELAY record with the D bit set).
    #[serde(default = "default_true")]
    pub discovery: bool,
}

fn default_true() -> bool {
    true
}

/// An address prefix (`addr/len`), matched against sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("prefix length {l:?} is not 0..{max}"))?;
        Ok(IpPrefix { addr, len })
    }
}

/// Parse a relay address with or without port (default 2268).
pub fn parse_relay(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, AMT_PORT))
        .map_err(|_| format!("{s:?} is not ADDRESS or ADDRESS:PORT"))
}

/// The validated static relay map.
#[derive(Debug, Clone, Default)]
pub struct RelayMap {
    entries: Vec<(IpPrefix, SocketAddr, bool)>,
}

impl RelayMap {
    /// Longest matching prefix wins.
    pub fn lookup(&self, source: IpAddr) -> Option<(SocketAddr, bool)> {
        self.entries
            .iter()
            .filter(|(p, _, _)| p.contains(source))
            .max_by_key(|(p, _, _)| p.len)
            .map(|(_, r, d)| (*r, *d))
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for FrrConfig {
    fn default() -> Self {
        Self {
            vty_dir: PathBuf::from("/var/run/frr"),
            netns: None,
            command_timeout_ms: 2000,
            pim6: "auto".into(),
        }
    }
}

impl Default for TunSection {
    fn default() -> Self {
        Self {
            name: "amt0".into(),
            local: IpAddr::from([169, 254, 77, 1]),
            neighbor: IpAddr::from([169, 254, 77, 2]),
            mtu: 1500,
            hello_interval_s: 30,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 250,
            pimd_restart_grace_s: 75,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/frr-ingest/api.sock"),
            socket_mode: "0660".into(),
            tcp: None,
            metrics: None,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message names the key and line; keep it on one line.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Check values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tun.name.is_empty() || self.tun.name.len() > 15 || self.tun.name.contains('/') {
            return Err(invalid(
                "tun.name",
                format!(
                    "{:?} is not a valid interface name (1-15 bytes, no '/')",
                    self.tun.name
                ),
            ));
        }
        if !self.tun.local.is_ipv4() {
            return Err(invalid(
                "tun.local",
                "must be an IPv4 address: pimd makes an interface a VIF only when it has one",
            ));
        }
        if self.tun.local == self.tun.neighbor {
            return Err(invalid("tun.neighbor", "must differ from tun.local"));
        }
        if self.tun.local.is_multicast() || self.tun.neighbor.is_multicast() {
            return Err(invalid("tun.local", "TUN addresses must be unicast"));
        }
        if !(576..=65535).contains(&self.tun.mtu) {
            return Err(invalid(
                "tun.mtu",
                format!("{} is outside 576..65535", self.tun.mtu),
            ));
        }
        if !(1..=18000).contains(&self.tun.hello_interval_s) {
            return Err(invalid("tun.hello_interval_s", "must be 1..18000 seconds"));
        }
        if !(10..=60_000).contains(&self.watch.poll_interval_ms) {
            return Err(invalid(
                "watch.poll_interval_ms",
                format!("{} is outside 10..60000", self.watch.poll_interval_ms),
            ));
        }
        if !(50..=60_000).contains(&self.frr.command_timeout_ms) {
            return Err(invalid("frr.command_timeout_ms", "must be 50..60000"));
        }
        if !["auto", "yes", "no"].contains(&self.frr.pim6.as_str()) {
            return Err(invalid(
                "frr.pim6",
                format!("{:?}: expected \"auto\", \"yes\" or \"no\"", self.frr.pim6),
            ));
        }
        if let Some(ns) = &self.frr.netns
            && ns.as_os_str().is_empty()
        {
            return Err(invalid(
                "frr.netns",
                "empty path (omit the key to use the sidecar's namespace)",
            ));
        }
        self.socket_mode()?;
        self.relay_map()?;
        self.join_source()?;
        if let Some(p) = &self.ingest.write_joinfile
            && (p.as_os_str().is_empty() || p.is_dir())
        {
            return Err(invalid(
                "ingest.write_joinfile",
                format!("{:?} is not a file path", p.display().to_string()),
            ));
        }
        self.policy
            .validate()
            .map_err(|(key, problem)| invalid(key, problem))?;
        if self.amt.linger_s > 86_400 {
            return Err(invalid("amt.linger_s", "must be at most 86400 seconds"));
        }
        if let Some(tcp) = self.api.tcp
            && !tcp.ip().is_loopback()
        {
            return Err(invalid(
                "api.tcp",
                format!("{tcp} is not a loopback address; the API has no authentication"),
            ));
        }
        Ok(())
    }

    /// `ingest.join_source` parsed.
    pub fn join_source(&self) -> Result<JoinSource, ConfigError> {
        let text = self.ingest.join_source.trim();
        if text == "pimd" {
            return Ok(JoinSource::Pimd);
        }
        match text.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(JoinSource::File(PathBuf::from(path))),
            _ => Err(invalid(
                "ingest.join_source",
                format!("{text:?}: expected \"pimd\" or \"file:PATH\""),
            )),
        }
    }

    pub fn relay_map(&self) -> Result<RelayMap, ConfigError> {
        let mut entries = Vec::new();
        for r in &self.amt.static_relays {
            let p: IpPrefix = r
                .prefix
                .parse()
                .map_err(|e| invalid("amt.static_relays.prefix", e))?;
            let relay = parse_relay(&r.relay).map_err(|e| invalid("amt.static_relays.relay", e))?;
            if relay.ip().is_multicast() || relay.ip().is_unspecified() {
                return Err(invalid(
                    "amt.static_relays.relay",
                    format!("{relay} is not a unicast address"),
                ));
            }
            entries.push((p, relay, r.discovery));
        }
        Ok(RelayMap { entries })
    }

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.api.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "api.socket_mode",
                    format!(
                        "{:?} is not an octal mode like \"0660\"",
                        self.api.socket_mode
                    ),
                )
            })
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.watch.poll_interval_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.frr.command_timeout_ms)
    }

    pub fn pimd_socket(&self) -> PathBuf {
        self.frr.vty_dir.join("pimd.vty")
    }

    pub fn pim6d_socket(&self) -> PathBuf {
        self.frr.vty_dir.join("pim6d.vty")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(t, Path::new("test.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = parse("").unwrap();
        assert_eq!(c.tun.name, "amt0");
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
            [frr]
            vty_dir = "/run/lab/ingest"
            netns = "/var/run/netns/fi-ingest"
            [tun]
            name = "amt9"
            [watch]
            poll_interval_ms = 100
            [api]
            socket = "/tmp/x.sock"
            tcp = "127.0.0.1:50051"
            metrics = "[::]:9477"
            [ingest]
            serve_all_sources = true
            "#,
        )
        .unwrap();
        assert_eq!(c.pimd_socket(), PathBuf::from("/run/lab/ingest/pimd.vty"));
        assert!(c.ingest.serve_all_sources);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.api.metrics, Some("[::]:9477".parse().unwrap()));
    }

    #[test]
    fn static_relay_map() {
        let c = parse(
            r#"
            [[amt.static_relays]]
            prefix = "198.51.100.0/24"
            relay = "192.0.2.10"
            [[amt.static_relays]]
            prefix = "198.51.100.128/25"
            relay = "192.0.2.11:4000"
            discovery = false
            [[amt.static_relays]]
            prefix = "2001:db8::/32"
            relay = "[2001:db8:ffff::1]:2268"
            "#,
        )
        .unwrap();
        let m = c.relay_map().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            m.lookup(ip("198.51.100.4")),
            Some(("192.0.2.10:2268".parse().unwrap(), true))
        );
        assert_eq!(
            m.lookup(ip("198.51.100.200")),
            Some(("192.0.2.11:4000".parse().unwrap(), false))
        );
        assert_eq!(m.lookup(ip("2001:db8:1::4")).unwrap().0.port(), 2268);
        assert_eq!(m.lookup(ip("203.0.113.4")), None);
        let e =
            parse("[[amt.static_relays]]\nprefix = \"198.51.100.0/33\"\nrelay = \"192.0.2.1\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("amt.static_relays.prefix"), "{e}");
        let e = parse(
            "[[amt.static_relays]]\nprefix = \"198.51.100.0/24\"\nrelay = \"relay.example\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("amt.static_relays.relay"), "{e}");
    }

    #[test]
    fn policy_and_join_source() {
        let c = parse(
            r#"
            [ingest]
            join_source = "file:/run/joins.txt"
            write_joinfile = "/run/admitted.txt"
            [policy]
            dns_servers = ["192.0.2.53", "[2001:db8::53]:5353"]
            bandwidth_limit = "1.5G"
            default_bitrate = "2M"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.join_source().unwrap(),
            JoinSource::File(PathBuf::from("/run/joins.txt"))
        );
        assert_eq!(c.policy.bandwidth_limit.as_deref(), Some("1.5G"));
        assert!(c.policy.dorms_enabled(), "a limit turns DORMS on");
        assert_eq!(parse("").unwrap().join_source().unwrap(), JoinSource::Pimd);
        for (text, key) in [
            ("[ingest]\njoin_source = \"file:\"\n", "ingest.join_source"),
            ("[ingest]\njoin_source = \"pim\"\n", "ingest.join_source"),
            (
                "[policy]\nbandwidth_limit = \"10Q\"\n",
                "policy.bandwidth_limit",
            ),
            (
                "[policy]\ndns_servers = [\"dns.example\"]\n",
                "policy.dns_servers",
            ),
            (
                "[policy]\nbandwidth_limit = \"10M\"\ndorms = false\n",
                "policy.default_bitrate",
            ),
            (
                "[policy]\nrelay_holddown_min_s = 100\nrelay_holddown_max_s = 10\n",
                "policy.relay_holddown_max_s",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config key {key}:")), "{text}: {e}");
        }
        let e = parse("[policy]\nbandwidth = \"10M\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bandwidth"), "unknown keys are rejected: {e}");
    }

    #[test]
    fn prefixes() {
        let p: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(p.contains("1.2.3.4".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let p: IpPrefix = "198.51.100.4/32".parse().unwrap();
        assert!(p.contains("198.51.100.4".parse().unwrap()));
        assert!(!p.contains("198.51.100.5".parse().unwrap()));
        assert!("1.2.3.4".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[tun]\nlocal = \"fe80::1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config key tun.local:"), "{e}");
        let e = parse("[watch]\npoll_interval_ms = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch.poll_interval_ms"), "{e}");
        let e = parse("[api]\ntcp = \"192.0.2.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.tcp") && e.contains("loopback"), "{e}");
        let e = parse("[api]\nsocket_mode = \"rw\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.socket_mode"), "{e}");
        // Typos are caught, not silently ignored.
        let e = parse("[tun]\nnmae = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("nmae"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse("[tun]\nlocal = \"not-an-ip\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("local") || e.contains("invalid"), "{e}");
    }
}
