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
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::Semaphore;

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

/// A typed failure plus the negative TTL from the SOA, when the server sent
/// one.
pub(crate) fn classify(err: &NetError) -> (DnsFailure, Option<Duration>) {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => {
            let ttl = no.negative_ttl.map(|s| Duration::from_secs(u64::from(s)));
            let failure = match no.response_code {
                ResponseCode::NXDomain => DnsFailure::NxDomain,
                ResponseCode::NoError => DnsFailure::NoData,
                ResponseCode::ServFail => DnsFailure::ServFail,
                ResponseCode::Refused => DnsFailure::Refused,
                other => DnsFailure::Other(format!("response code {other}")),
            };
            (failure, ttl)
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            let failure = match *code {
                ResponseCode::ServFail => DnsFailure::ServFail,
                ResponseCode::Refused => DnsFailure::Refused,
                ResponseCode::NXDomain => DnsFailure::NxDomain,
                other => DnsFailure::Other(format!("response code {other}")),
            };
            (failure, None)
        }
        NetError::Timeout => (DnsFailure::Timeout, None),
        other => {
            let text = other.to_string();
            // Some paths wrap the timeout in a message or I/O error.
            if text.contains("timed out") {
                (DnsFailure::Timeout, None)
            } else {
                (DnsFailure::Other(text), None)
            }
        }
    }
}

/// A hickory resolver plus the concurrency limit.
#[derive(Clone)]
pub(crate) struct DnsClient {
    resolver: TokioResolver,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for DnsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsClient").finish_non_exhaustive()
    }
}

/// Records of one successful query: the answers hickory returned (CNAMEs
/// included) for the caller to filter.
pub(crate) struct Answers {
    pub records: Vec<hickory_resolver::proto::rr::Record>,
}

impl DnsClient {
    pub(crate) fn new(config: &DnsConfig) -> Result<Self, DnsConfigError> {
        if config.name_servers.is_empty() {
            return Err(DnsConfigError::NoNameServers);
        }
        let servers = config
            .name_servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.timeout = config.timeout;
        opts.attempts = config.attempts.max(1);
        opts.use_hosts_file = ResolveHosts::Never;
        // Our own caches hold outcomes; hickory's cache would only hide TTL
        // expiry from them.
        opts.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| DnsConfigError::Build(e.to_string()))?;
        Ok(Self {
            resolver,
            permits: Arc::new(Semaphore::new(config.max_concurrent_queries.max(1))),
        })
    }

    /// One query for `name` (fully qualified text) and `record_type`.
    pub(crate) async fn query(
        &self,
        name: &str,
        record_type: RecordType,
    ) -> Result<Answers, (DnsFailure, Option<Duration>)> {
        let name = Name::from_ascii(name).map_err(|e| {
            (
                DnsFailure::Other(format!("bad query name {name:?}: {e}")),
                None,
            )
        })?;
        // The semaphore is never closed, so acquire only fails if it were.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| (DnsFailure::Other("resolver shut down".into()), None))?;
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => Ok(Answers {
                records: lookup.answers().to_vec(),
            }),
            Err(err) => Err(classify(&err)),
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

    #[test]
    fn empty_server_list_is_a_config_error() {
        assert!(matches!(
            DnsClient::new(&DnsConfig::new(vec![])),
            Err(DnsConfigError::NoNameServers)
        ));
    }
}
