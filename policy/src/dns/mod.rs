//! Shared DNS plumbing for DRIAD and DORMS: name-server configuration, a
//! hickory resolver built from it, a query-concurrency limit, and mapping of
//! hickory errors to typed outcomes.
//!
//! hickory is built without `system-config`, so name servers are explicit;
//! [`DnsConfig::from_resolv_conf`] reads the `nameserver` lines of a
//! resolv.conf for the common case.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "net")]
mod client;
#[cfg(feature = "net")]
pub(crate) use client::{DnsClient, HostAddresses};

/// Which servers to ask and how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Recursive (or, in labs, authoritative) servers: address and port.
    pub name_servers: Vec<SocketAddr>,
    /// Per-try timeout.
    pub timeout: Duration,
    /// Tries per server.
    pub attempts: usize,
    /// At most this many of our queries are in flight at once; keeps the
    /// query rate sane when many sources join together.
    pub max_concurrent_queries: usize,
}

impl DnsConfig {
    pub fn new(name_servers: Vec<SocketAddr>) -> Self {
        Self {
            name_servers,
            timeout: Duration::from_secs(3),
            attempts: 2,
            max_concurrent_queries: 8,
        }
    }

    /// Name servers from a resolv.conf file (port 53).
    pub fn from_resolv_conf(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let servers = parse_resolv_conf(&text)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Ok(Self::new(servers))
    }
}

/// The `nameserver` addresses of resolv.conf text, in order. Comments (`#`,
/// `;`), other options and unparsable addresses (including IPv6 with a zone
/// id, which hickory cannot use) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            words.next()?.parse().ok()
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DnsConfigError {
    #[error("no DNS name servers configured")]
    NoNameServers,
    #[error("cannot build DNS resolver: {0}")]
    Build(String),
}

/// A typed reason a DNS query produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no records of the asked type.
    NoData,
    ServFail,
    Refused,
    /// No reply within the configured timeout and attempts.
    Timeout,
    /// Any other error (transport, malformed reply), described.
    Other(String),
}

impl DnsFailure {
    /// Negative answers are authoritative facts; the others are transient.
    pub fn is_negative_answer(&self) -> bool {
        matches!(self, DnsFailure::NxDomain | DnsFailure::NoData)
    }
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsFailure::NxDomain => f.write_str("NXDOMAIN"),
            DnsFailure::NoData => f.write_str("no records of that type (NODATA)"),
            DnsFailure::ServFail => f.write_str("SERVFAIL"),
            DnsFailure::Refused => f.write_str("REFUSED"),
            DnsFailure::Timeout => f.write_str("timeout"),
            DnsFailure::Other(text) => write!(f, "DNS error: {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# generated
search example.com
nameserver 192.0.2.53
 nameserver   2001:db8::53  # trailing comment
; nameserver 192.0.2.1
nameserver fe80::1%eth0
nameserver not-an-address
options ndots:2
";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }
}
