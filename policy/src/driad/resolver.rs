//! DRIAD lookups over DNS (hickory-resolver).
//!
//! `lookup_relays(source)` queries type 260 at the source's reverse name
//! (hickory follows CNAMEs; the returned chain's CNAME records are skipped),
//! decodes every AMTRELAY RDATA (malformed ones are logged and listed), and
//! resolves each type 3 name to A and AAAA; the addresses inherit the
//! record's precedence and D bit. Outcomes, positive and negative, are cached
//! per source for the answer's TTL within configured bounds, which also
//! bounds the query rate per source.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, RecordType};
use tracing::Instrument;

use super::answer::{DriadAnswer, DriadOutcome, RejectedRecord, UnresolvedName};
use super::rdata::{AMTRELAY_RR_TYPE, AmtRelayRecord};
use super::reverse::reverse_name;
use super::select::{RelayAddress, RelayCandidate, candidates_from_records, push_dedup};
use crate::cache::{SharedTtlCache, TtlBounds};
use crate::dns::{DnsClient, DnsConfig, DnsConfigError, DnsFailure, HostAddresses};

/// Resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriadConfig {
    pub dns: DnsConfig,
    /// Bounds for caching positive answers (record TTLs are clamped).
    pub ttl_bounds: TtlBounds,
    /// Bounds for caching NXDOMAIN/NODATA (SOA negative TTL is clamped;
    /// `min` is used when the server sent no SOA).
    pub negative_ttl_bounds: TtlBounds,
    /// How long SERVFAIL/timeout/other failures are cached before a retry.
    pub failure_retry: Duration,
}

impl DriadConfig {
    pub fn new(dns: DnsConfig) -> Self {
        Self {
            dns,
            ttl_bounds: TtlBounds {
                min: Duration::from_secs(30),
                max: Duration::from_secs(3600),
            },
            negative_ttl_bounds: TtlBounds {
                min: Duration::from_secs(30),
                max: Duration::from_secs(600),
            },
            failure_retry: Duration::from_secs(30),
        }
    }
}

/// Async DRIAD resolver with an outcome cache.
#[derive(Debug)]
pub struct DriadResolver {
    dns: DnsClient,
    config: DriadConfig,
    cache: SharedTtlCache<IpAddr, DriadOutcome>,
}

impl DriadResolver {
    pub fn new(config: DriadConfig) -> Result<Self, DnsConfigError> {
        Ok(Self {
            dns: DnsClient::new(&config.dns)?,
            config,
            cache: SharedTtlCache::default(),
        })
    }

    /// Relay candidates for `source`: cached when the last outcome is still
    /// fresh, otherwise queried.
    pub async fn lookup_relays(&self, source: IpAddr) -> DriadOutcome {
        let now = Instant::now();
        if let Some(hit) = self.cached(source, now) {
            return hit;
        }
        let outcome = self.query_relays(source).await;
        let ttl = match &outcome {
            DriadOutcome::Answer(a) => a.ttl,
            DriadOutcome::Failed { retry_after, .. } => *retry_after,
        };
        if let Some(mut cache) = self.cache.lock() {
            cache.prune(now);
            cache.insert(source, outcome.clone(), ttl, Instant::now());
        }
        outcome
    }

    /// The cached outcome for `source` if still fresh at `now`.
    pub fn cached(&self, source: IpAddr, now: Instant) -> Option<DriadOutcome> {
        self.cache.get(&source, now)
    }

    /// Forgets the cached outcome so the next lookup queries DNS (RFC 8777
    /// restart events, operator refresh).
    pub fn invalidate(&self, source: IpAddr) {
        self.cache.remove(&source);
    }

    /// Uncached lookup.
    pub async fn query_relays(&self, source: IpAddr) -> DriadOutcome {
        let query_name = reverse_name(source);
        let span = tracing::debug_span!("driad", %source, name = %query_name);
        self.query_relays_in_span(source, query_name)
            .instrument(span)
            .await
    }

    async fn query_relays_in_span(&self, source: IpAddr, query_name: String) -> DriadOutcome {
        let answers = match self
            .dns
            .query(&query_name, RecordType::from(AMTRELAY_RR_TYPE))
            .await
        {
            Ok(answers) => answers,
            Err((failure, negative_ttl)) => {
                return self.failed(source, query_name, failure, negative_ttl);
            }
        };
        let mut records = Vec::new();
        let mut rejected = Vec::new();
        let mut min_ttl: Option<u32> = None;
        for record in &answers.records {
            // CNAME/DNAME links of the chain also count toward the TTL.
            min_ttl = Some(min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
            let RData::Unknown { code, rdata } = &record.data else {
                continue;
            };
            if u16::from(*code) != AMTRELAY_RR_TYPE {
                continue;
            }
            match AmtRelayRecord::decode(&rdata.anything) {
                Ok(rec) => records.push(rec),
                Err(error) => {
                    tracing::warn!(%error, owner = %record.name, "malformed AMTRELAY RDATA");
                    rejected.push(RejectedRecord {
                        rdata: rdata.anything.clone(),
                        error,
                    });
                }
            }
        }
        if records.is_empty() && rejected.is_empty() {
            // No AMTRELAY record among the answers: as good as NODATA.
            return self.failed(source, query_name, DnsFailure::NoData, None);
        }

        let mut candidates = Vec::new();
        let mut unresolved = Vec::new();
        for candidate in candidates_from_records(&records) {
            let RelayAddress::Name(name) = &candidate.relay else {
                push_dedup(&mut candidates, candidate);
                continue;
            };
            let HostAddresses {
                addresses,
                min_ttl: ttl,
                v4_failure,
                v6_failure,
            } = self.dns.query_addresses(&name.to_string()).await;
            if let Some(ttl) = ttl {
                min_ttl = Some(min_ttl.map_or(ttl, |t| t.min(ttl)));
            }
            if addresses.is_empty() {
                tracing::info!(relay = %name, "AMTRELAY name did not resolve");
                unresolved.push(UnresolvedName {
                    name: name.clone(),
                    precedence: candidate.precedence,
                    ipv4: v4_failure.unwrap_or(DnsFailure::NoData),
                    ipv6: v6_failure.unwrap_or(DnsFailure::NoData),
                });
                continue;
            }
            for address in addresses {
                push_dedup(
                    &mut candidates,
                    RelayCandidate {
                        precedence: candidate.precedence,
                        discovery_optional: candidate.discovery_optional,
                        relay: RelayAddress::Ip(address),
                        via_name: Some(name.clone()),
                    },
                );
            }
        }
        let ttl = self
            .config
            .ttl_bounds
            .clamp(Duration::from_secs(u64::from(min_ttl.unwrap_or(0))));
        tracing::debug!(
            records = records.len(),
            candidates = candidates.len(),
            ?ttl,
            "AMTRELAY answer"
        );
        DriadOutcome::Answer(DriadAnswer {
            source,
            query_name,
            records,
            rejected,
            candidates,
            unresolved,
            ttl,
        })
    }

    /// The outcome of a lookup that found no AMTRELAY records, retried
    /// after the failure's TTL.
    fn failed(
        &self,
        source: IpAddr,
        query_name: String,
        failure: DnsFailure,
        negative_ttl: Option<Duration>,
    ) -> DriadOutcome {
        let retry_after = self.failure_ttl(&failure, negative_ttl);
        tracing::info!(%source, %query_name, %failure, ?retry_after, "AMTRELAY lookup failed");
        DriadOutcome::Failed {
            source,
            query_name,
            failure,
            retry_after,
        }
    }

    fn failure_ttl(&self, failure: &DnsFailure, negative_ttl: Option<Duration>) -> Duration {
        if failure.is_negative_answer() {
            let bounds = self.config.negative_ttl_bounds;
            bounds.clamp(negative_ttl.unwrap_or(bounds.min))
        } else {
            self.config.failure_retry
        }
    }
}
