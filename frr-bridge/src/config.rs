//! Configuration: a TOML file (every key optional, defaults shown in
//! `frr-ingestd --print-default-config`) plus command-line overrides.
//! Errors name the key and the problem in one line.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingest_policy::admission::parse_bandwidth;
use ingest_policy::dns::DnsConfig;
use ingest_policy::dorms::DormsConfig;
use ingest_policy::engine::{BITRATE_RETRY, EngineConfig, NetLookupsConfig};
use ingest_types::AMT_PORT;
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

impl From<KeyProblem> for ConfigError {
    fn from(KeyProblem(key, problem): KeyProblem) -> Self {
        ConfigError::Invalid { key, problem }
    }
}

/// A problem with one key: the full TOML key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}: {1}")]
pub struct KeyProblem(pub &'static str, pub String);

/// An address that is neither `ADDRESS` nor `ADDRESS:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not ADDRESS or ADDRESS:PORT")]
pub struct AddressError(pub String);

/// A prefix that is not `ADDRESS/LENGTH`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrefixError {
    #[error("{0:?} is not ADDRESS/LENGTH")]
    Syntax(String),
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("prefix length {text:?} is not 0..{max}")]
    Length { text: String, max: u8 },
}

/// Why no DNS servers could be set up for DRIAD and DORMS.
#[derive(Debug, Error)]
pub enum DnsSetupError {
    #[error("cannot read name servers from {path}: {error}")]
    ResolvConf {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no usable nameserver lines in {0}; set policy.dns_servers")]
    NoServers(PathBuf),
    #[error(transparent)]
    Key(#[from] KeyProblem),
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
    pub policy: PolicyConfig,
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
    /// Give the TUN a link-local IPv6 pair, so pim6d has an address there
    /// and the sidecar is its PIMv6 neighbour (IPv6 channels).
    pub ipv6: bool,
    /// pim6d's link-local address on the TUN.
    pub local6: Ipv6Addr,
    /// The sidecar's link-local address on the TUN: PIMv6 neighbour and
    /// next hop of IPv6 source routes.
    pub neighbor6: Ipv6Addr,
    /// How pimd's RPF for IPv4 sources points at the TUN: "routes" (a /32
    /// route per ingested source via `neighbor`, every FRR) or "mroute"
    /// (no per-source routes: FRR >= 10.3 with `ip mroute 0.0.0.0/0
    /// <neighbor>` in its configuration; see frr-config/README.md). IPv6
    /// sources always get routes (FRR has no `ipv6 mroute`).
    pub ipv4_rpf: String,
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
    /// Relay racing (RFC 8777 §3.2): when a flow has several candidate
    /// relays, the next one is tried too after this many milliseconds
    /// without an answer; the first to answer carries the flow.
    pub connection_attempt_delay_ms: u64,
    /// Where AMT data is decapsulated: "kernel" (a BPF program at TC
    /// ingress of the uplink hands it to amt0 without a copy to userspace;
    /// needs CAP_BPF and CAP_NET_ADMIN, Linux >= 6.1), "userspace" (each
    /// tunnel's socket, one TUN write per packet), or "auto" (kernel when
    /// it loads, else userspace; the reason is logged and shown by
    /// `ingestctl show status`). Control messages always go to userspace.
    pub dataplane: String,
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
            connection_attempt_delay_ms: 250,
            dataplane: "auto".into(),
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
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.to_owned()))?;
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Address(a.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| PrefixError::Length {
                text: l.to_owned(),
                max,
            })?;
        Ok(IpPrefix { addr, len })
    }
}

/// Parse a relay address with or without port (default 2268).
pub fn parse_relay(s: &str) -> Result<SocketAddr, AddressError> {
    parse_address(s, AMT_PORT)
}

/// `ADDRESS` (with `default_port`) or `ADDRESS:PORT` (`[v6]:PORT`).
fn parse_address(text: &str, default_port: u16) -> Result<SocketAddr, AddressError> {
    let text = text.trim();
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| AddressError(text.to_owned()))
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
            ipv6: true,
            // fe80::a9fe:4d0x: the IPv4 pair's 169.254.77.x, for people.
            local6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0x4d01),
            neighbor6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0x4d02),
            ipv4_rpf: "routes".into(),
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
        let link_local = |a: &Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        if !link_local(&self.tun.local6) {
            return Err(invalid(
                "tun.local6",
                format!(
                    "{} is not a link-local address (fe80::/10)",
                    self.tun.local6
                ),
            ));
        }
        if !link_local(&self.tun.neighbor6) || self.tun.neighbor6 == self.tun.local6 {
            return Err(invalid(
                "tun.neighbor6",
                format!(
                    "{} must be a link-local address (fe80::/10) other than tun.local6",
                    self.tun.neighbor6
                ),
            ));
        }
        self.ipv4_rpf()?;
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
        self.policy.validate()?;
        if !(10..=60_000).contains(&self.amt.connection_attempt_delay_ms) {
            return Err(invalid(
                "amt.connection_attempt_delay_ms",
                "must be 10..60000 milliseconds",
            ));
        }
        self.dataplane_mode()?;
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

    /// `amt.dataplane` parsed.
    pub fn dataplane_mode(&self) -> Result<amt_gateway::dataplane::DataPlaneMode, ConfigError> {
        self.amt
            .dataplane
            .parse()
            .map_err(|e: amt_gateway::dataplane::ParseModeError| {
                invalid("amt.dataplane", e.to_string())
            })
    }

    /// `tun.ipv4_rpf` parsed.
    pub fn ipv4_rpf(&self) -> Result<crate::southbound::tun::Ipv4Rpf, ConfigError> {
        use crate::southbound::tun::Ipv4Rpf;
        match self.tun.ipv4_rpf.as_str() {
            "routes" => Ok(Ipv4Rpf::SourceRoutes),
            "mroute" => Ok(Ipv4Rpf::Mroute),
            other => Err(invalid(
                "tun.ipv4_rpf",
                format!("{other:?}: expected \"routes\" or \"mroute\""),
            )),
        }
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
                .map_err(|e: PrefixError| invalid("amt.static_relays.prefix", e.to_string()))?;
            let relay = parse_relay(&r.relay)
                .map_err(|e| invalid("amt.static_relays.relay", e.to_string()))?;
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

/// Where name servers come from when `policy.dns_servers` is empty.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// `[policy]` section of the daemon config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// DNS servers for DRIAD and DORMS: "192.0.2.53", "192.0.2.53:5353",
    /// `"[2001:db8::53]:53"`. Empty: the nameserver lines of /etc/resolv.conf.
    pub dns_servers: Vec<String>,
    /// Per-try DNS timeout in milliseconds (2 tries per server).
    pub dns_timeout_ms: u64,
    /// Find relays by DNS (AMTRELAY records, RFC 8777) for sources not in
    /// the static relay map.
    pub driad: bool,
    /// Bandwidth limit for all ingested flows together, e.g. "50M", "1.5G"
    /// (decimal SI, bit/s). Absent: no admission control, every flow is
    /// admitted.
    pub bandwidth_limit: Option<String>,
    /// Look up flow bitrates from the senders' DORMS servers. Absent: on
    /// when `bandwidth_limit` is set.
    pub dorms: Option<bool>,
    /// Rate assumed for flows without DORMS metadata, e.g. "1M". Absent:
    /// such flows are blocked when a limit is set.
    pub default_bitrate: Option<String>,
    /// PEM file of the CA certificates trusted for DORMS servers. Absent:
    /// the system roots.
    pub dorms_ca_bundle: Option<PathBuf>,
    /// Timeout of one DORMS HTTPS request, in milliseconds.
    pub dorms_timeout_ms: u64,
    /// Largest DORMS response body accepted, in bytes.
    pub dorms_max_body_bytes: usize,
    /// A failed relay is not used again for a random time in
    /// min..=max seconds (RFC 8777: 3 to 10 minutes).
    pub relay_holddown_min_s: u64,
    pub relay_holddown_max_s: u64,
    /// Decisions are re-evaluated at least this often (seconds), so DORMS
    /// or DNS coming back is picked up without a restart.
    pub recheck_interval_s: u64,
    /// Seed for the random choices (relay order within a precedence,
    /// hold-down lengths). Absent: random. For tests and labs.
    pub seed: Option<u64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dns_servers: Vec::new(),
            dns_timeout_ms: 3000,
            driad: true,
            bandwidth_limit: None,
            dorms: None,
            default_bitrate: None,
            dorms_ca_bundle: None,
            dorms_timeout_ms: 10_000,
            dorms_max_body_bytes: 256 * 1024,
            relay_holddown_min_s: 180,
            relay_holddown_max_s: 600,
            recheck_interval_s: 5,
            seed: None,
        }
    }
}

impl PolicyConfig {
    /// Whether bitrates are looked up (`dorms`, defaulting to "when a limit
    /// is set").
    pub fn dorms_enabled(&self) -> bool {
        self.dorms.unwrap_or(self.bandwidth_limit.is_some())
    }

    /// Checks values that parse but cannot work. The key is the full TOML
    /// key (`policy.<name>`).
    pub fn validate(&self) -> Result<(), KeyProblem> {
        self.engine_config(0)?;
        self.name_servers()?;
        if let Some(path) = &self.dorms_ca_bundle
            && !path.is_file()
        {
            return Err(KeyProblem(
                "policy.dorms_ca_bundle",
                format!("{} is not a readable file", path.display()),
            ));
        }
        Ok(())
    }

    /// The policy engine's settings; `seed` is used unless `policy.seed`
    /// fixes one.
    pub fn engine_config(&self, seed: u64) -> Result<EngineConfig, KeyProblem> {
        let limit = match &self.bandwidth_limit {
            None => None,
            Some(text) => Some(
                parse_bandwidth(text)
                    .map_err(|e| KeyProblem("policy.bandwidth_limit", e.to_string()))?,
            ),
        };
        let default_bitrate = match &self.default_bitrate {
            None => None,
            Some(text) => {
                let rate = parse_bandwidth(text)
                    .map_err(|e| KeyProblem("policy.default_bitrate", e.to_string()))?;
                if rate == 0 {
                    return Err(KeyProblem(
                        "policy.default_bitrate",
                        "must be above 0".into(),
                    ));
                }
                Some(rate)
            }
        };
        let dorms = self.dorms_enabled();
        if limit.is_some() && !dorms && default_bitrate.is_none() {
            return Err(KeyProblem(
                "policy.default_bitrate",
                "with a bandwidth_limit and dorms = false every flow needs the default rate; set default_bitrate or dorms = true".into(),
            ));
        }
        let range =
            |key: &'static str, value: u64, range: std::ops::RangeInclusive<u64>, text: String| {
                if range.contains(&value) {
                    Ok(())
                } else {
                    Err(KeyProblem(key, text))
                }
            };
        range(
            "policy.dns_timeout_ms",
            self.dns_timeout_ms,
            100..=60_000,
            "must be 100..60000".into(),
        )?;
        range(
            "policy.dorms_timeout_ms",
            self.dorms_timeout_ms,
            100..=300_000,
            "must be 100..300000".into(),
        )?;
        range(
            "policy.dorms_max_body_bytes",
            self.dorms_max_body_bytes as u64,
            1024..=16 * 1024 * 1024,
            "must be 1024..16777216".into(),
        )?;
        range(
            "policy.relay_holddown_min_s",
            self.relay_holddown_min_s,
            1..=86_400,
            "must be 1..86400 seconds".into(),
        )?;
        range(
            "policy.relay_holddown_max_s",
            self.relay_holddown_max_s,
            self.relay_holddown_min_s..=86_400,
            format!(
                "must be {}..86400 seconds (at least relay_holddown_min_s)",
                self.relay_holddown_min_s
            ),
        )?;
        range(
            "policy.recheck_interval_s",
            self.recheck_interval_s,
            1..=3600,
            "must be 1..3600 seconds".into(),
        )?;
        Ok(EngineConfig {
            limit,
            default_bitrate,
            dorms,
            driad: self.driad,
            holddown_min: Duration::from_secs(self.relay_holddown_min_s),
            holddown_max: Duration::from_secs(self.relay_holddown_max_s),
            recheck: Duration::from_secs(self.recheck_interval_s),
            seed: self.seed.unwrap_or(seed),
        })
    }

    /// The configured name servers (port 53 unless given); empty when
    /// resolv.conf is to be used.
    fn name_servers(&self) -> Result<Vec<SocketAddr>, KeyProblem> {
        self.dns_servers
            .iter()
            .map(|text| {
                parse_server(text).map_err(|e| KeyProblem("policy.dns_servers", e.to_string()))
            })
            .collect()
    }

    /// The DNS configuration for DRIAD and DORMS: `dns_servers`, else the
    /// nameservers of /etc/resolv.conf.
    pub fn dns_config(&self) -> Result<DnsConfig, DnsSetupError> {
        dns_config_from(
            &self.name_servers()?,
            Path::new(RESOLV_CONF),
            Duration::from_millis(self.dns_timeout_ms),
        )
    }

    /// What the network lookups need: the DNS servers for DRIAD and the
    /// DORMS client's settings, for the parts that are on.
    pub fn net_lookups_config(&self) -> Result<NetLookupsConfig, DnsSetupError> {
        let dorms_on = self.dorms_enabled();
        if !self.driad && !dorms_on {
            return Ok(NetLookupsConfig {
                driad: None,
                dorms: None,
            });
        }
        let dns = self.dns_config()?;
        let dorms = dorms_on.then(|| {
            let mut dc = DormsConfig::new(dns.clone());
            dc.ca_bundle.clone_from(&self.dorms_ca_bundle);
            dc.request_timeout = Duration::from_millis(self.dorms_timeout_ms);
            dc.connect_timeout = dc.request_timeout.min(Duration::from_secs(5));
            dc.max_body_bytes = self.dorms_max_body_bytes;
            dc.rng_seed = self.seed;
            // The engine paces retries per flow (BITRATE_RETRY); the
            // client's default one-minute failure cache would hide DORMS
            // coming back for up to a minute after that.
            dc.failure_ttl = BITRATE_RETRY / 2;
            dc
        });
        Ok(NetLookupsConfig {
            driad: self.driad.then_some(dns),
            dorms,
        })
    }
}

/// `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`, `[2001:db8::53]:5353`.
pub fn parse_server(text: &str) -> Result<SocketAddr, AddressError> {
    parse_address(text, 53)
}

/// `servers`, or the nameservers of `resolv_conf` when empty.
pub fn dns_config_from(
    servers: &[SocketAddr],
    resolv_conf: &Path,
    timeout: Duration,
) -> Result<DnsConfig, DnsSetupError> {
    let mut dns = if servers.is_empty() {
        let dns = DnsConfig::from_resolv_conf(resolv_conf).map_err(|error| {
            DnsSetupError::ResolvConf {
                path: resolv_conf.to_path_buf(),
                error,
            }
        })?;
        if dns.name_servers.is_empty() {
            return Err(DnsSetupError::NoServers(resolv_conf.to_path_buf()));
        }
        dns
    } else {
        DnsConfig::new(servers.to_vec())
    };
    dns.timeout = timeout;
    Ok(dns)
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

    /// The `[policy]` defaults with `limit` and a fixed seed.
    fn config(limit: Option<&str>) -> PolicyConfig {
        PolicyConfig {
            bandwidth_limit: limit.map(str::to_owned),
            seed: Some(7),
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn config_defaults_validation_and_keys() {
        let cfg = PolicyConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert!(cfg.driad);
        assert!(!cfg.dorms_enabled(), "no limit: DORMS off unless asked");
        assert!(config(Some("10M")).dorms_enabled());
        let text = toml::to_string(&config(Some("50M"))).unwrap();
        let back: PolicyConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config(Some("50M")));
        assert!(toml::from_str::<PolicyConfig>("bandwith_limit = \"5M\"").is_err());

        let problem = |cfg: PolicyConfig| cfg.validate().unwrap_err();
        assert_eq!(problem(config(Some("10 M"))).0, "policy.bandwidth_limit");
        assert_eq!(
            problem(PolicyConfig {
                default_bitrate: Some("0".into()),
                ..config(Some("10M"))
            })
            .0,
            "policy.default_bitrate"
        );
        // A limit, no DORMS and no default rate would block everything.
        assert_eq!(
            problem(PolicyConfig {
                dorms: Some(false),
                ..config(Some("10M"))
            })
            .0,
            "policy.default_bitrate"
        );
        assert_eq!(
            problem(PolicyConfig {
                dns_servers: vec!["dns.example".into()],
                ..config(None)
            })
            .0,
            "policy.dns_servers"
        );
        assert_eq!(
            problem(PolicyConfig {
                relay_holddown_min_s: 600,
                relay_holddown_max_s: 180,
                ..config(None)
            })
            .0,
            "policy.relay_holddown_max_s"
        );
        assert_eq!(
            problem(PolicyConfig {
                dorms_ca_bundle: Some("/nonexistent/ca.pem".into()),
                ..config(None)
            })
            .0,
            "policy.dorms_ca_bundle"
        );
        assert_eq!(
            parse_server("192.0.2.53"),
            Ok("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("[2001:db8::53]:5353"),
            Ok("[2001:db8::53]:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("2001:db8::53"),
            Ok("[2001:db8::53]:53".parse().unwrap())
        );
    }

    #[test]
    fn resolv_conf_fallback() {
        let dir = std::env::temp_dir().join(format!("policy-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "search lab\nnameserver 192.0.2.53\n").unwrap();
        let dns = dns_config_from(&[], &path, Duration::from_millis(500)).unwrap();
        assert_eq!(dns.name_servers, vec!["192.0.2.53:53".parse().unwrap()]);
        assert_eq!(dns.timeout, Duration::from_millis(500));
        std::fs::write(&path, "# nothing\n").unwrap();
        let e = dns_config_from(&[], &path, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("policy.dns_servers"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
