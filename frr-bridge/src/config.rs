//! Configuration: a TOML file (every key optional, defaults shown in
//! `frr-ingestd --print-default-config`) plus command-line overrides.
//! Errors name the key and the problem in one line.

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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Lab and troubleshooting mode: route every joined source to the TUN
    /// at once, without a tunnel (traffic then comes from `ingestctl
    /// inject`). Never set this on a production ingest router.
    pub serve_all_sources: bool,
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
            [ingest]
            serve_all_sources = true
            "#,
        )
        .unwrap();
        assert_eq!(c.pimd_socket(), PathBuf::from("/run/lab/ingest/pimd.vty"));
        assert!(c.ingest.serve_all_sources);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
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
