//! The DNS client over the network (hickory-resolver on tokio): behind the
//! `net` feature, so the pure parts of the crate build without it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::Semaphore;

use super::{DnsConfig, DnsConfigError, DnsFailure};

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

/// The addresses of a host name, from its A and AAAA records.
pub(crate) struct HostAddresses {
    /// IPv4 first, then IPv6, each address once.
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL of the records they came from.
    pub min_ttl: Option<u32>,
    /// Why the A query failed, if it did.
    pub v4_failure: Option<DnsFailure>,
    /// Why the AAAA query failed, if it did.
    pub v6_failure: Option<DnsFailure>,
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

    /// A and AAAA of `name` (fully qualified text), queried concurrently.
    pub(crate) async fn query_addresses(&self, name: &str) -> HostAddresses {
        let (v4, v6) = tokio::join!(
            self.query(name, RecordType::A),
            self.query(name, RecordType::AAAA)
        );
        let mut host = HostAddresses {
            addresses: Vec::new(),
            min_ttl: None,
            v4_failure: None,
            v6_failure: None,
        };
        let mut take = |result: Result<Answers, (DnsFailure, Option<Duration>)>| match result {
            Ok(answers) => {
                for record in answers.records {
                    let ip = match record.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => continue,
                    };
                    host.min_ttl = Some(host.min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                    if !host.addresses.contains(&ip) {
                        host.addresses.push(ip);
                    }
                }
                None
            }
            Err((failure, _)) => Some(failure),
        };
        let v4_failure = take(v4);
        let v6_failure = take(v6);
        host.v4_failure = v4_failure;
        host.v6_failure = v6_failure;
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_server_list_is_a_config_error() {
        assert!(matches!(
            DnsClient::new(&DnsConfig::new(vec![])),
            Err(DnsConfigError::NoNameServers)
        ));
    }
}
