//! DORMS client: SRV `_dorms._tcp.<reverse name>` (hickory), then
//! `/.well-known/host-meta` (XRD, falling back to host-meta.json), then the
//! narrow metadata URL (draft -01 layout, then the `dorms` container layout
//! on 404) over HTTPS with reqwest + rustls (ring).
//!
//! * Certificates are validated against the configured CA bundle only
//!   (`tls_certs_only`) when one is given, the system roots otherwise.
//! * HTTP host names are resolved with the same hickory name servers as the
//!   SRV lookup (a custom reqwest resolver), so lab and production agree.
//! * Bodies are streamed and cut at `max_body_bytes`.
//! * Transient failures (timeout, connection errors, 429, 5xx) are retried
//!   with exponential backoff; 4xx, bad JSON, TLS and size errors are not.
//! * Results are cached per (S,G): successes for the response's
//!   `Cache-Control: max-age` (default when absent or no-cache), failures for
//!   `failure_ttl`. A failed refresh keeps serving the stale success.
//! * [`DormsClient::fetch_traced`] reports every step (SRV answer, host-meta
//!   and metadata URLs with their outcome) for troubleshooting tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, RecordType};
use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use tracing::Instrument;

use super::hostmeta::{parse_host_meta_json, parse_host_meta_xml};
use super::metadata::{
    FlowMetadata, KeyEncoding, MetadataLayout, base_url, metadata_url, parse_metadata,
    restconf_root,
};
use super::outcome::{DormsError, DormsStep, FlowBitrate};
use super::srv::{SrvTarget, cache_lifetime, order_srv};
use crate::admission::BitrateOrigin;
use crate::cache::SharedTtlCache;
use crate::dns::{DnsClient, DnsConfig};
use crate::driad::dorms_srv_name;
use ingest_types::SourceGroup;

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DormsConfig {
    pub dns: DnsConfig,
    /// PEM file of CA certificates; when set, only these are trusted.
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Whole request, body included.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Cache lifetime without (or with no-cache) Cache-Control.
    pub default_max_age: Duration,
    /// Upper bound on any cache lifetime.
    pub max_max_age: Duration,
    /// How long a failure is cached before the next fetch.
    pub failure_ttl: Duration,
    /// Extra attempts after a transient failure.
    pub retries: u32,
    /// First retry delay; doubles each retry.
    pub retry_backoff: Duration,
    /// Rate for flows without metadata; `None` blocks them.
    pub default_bitrate: Option<u64>,
    /// Layouts to try, in order (next one on HTTP 404).
    pub layouts: Vec<MetadataLayout>,
    pub key_encoding: KeyEncoding,
    /// Seed for SRV weighted ordering (tests); random when `None`.
    pub rng_seed: Option<u64>,
}

impl DormsConfig {
    pub fn new(dns: DnsConfig) -> Self {
        Self {
            dns,
            ca_bundle: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 256 * 1024,
            default_max_age: Duration::from_secs(30),
            max_max_age: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(60),
            retries: 2,
            retry_backoff: Duration::from_millis(500),
            default_bitrate: None,
            layouts: vec![MetadataLayout::Draft01, MetadataLayout::Dorms],
            key_encoding: KeyEncoding::Rfc8040,
            rng_seed: None,
        }
    }
}

/// A successful fetch: metadata, its URL and its cache lifetime.
type Fetched = (FlowMetadata, String, Duration);

/// A cache entry: metadata and the URL it came from, or the failure.
type CacheEntry = Result<(FlowMetadata, String), DormsError>;

/// Async DORMS client with a per-(S,G) cache.
pub struct DormsClient {
    dns: DnsClient,
    http: reqwest::Client,
    config: DormsConfig,
    cache: SharedTtlCache<SourceGroup, CacheEntry>,
    roots: SharedTtlCache<String, String>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for DormsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DormsClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// reqwest name resolution through our hickory name servers.
struct HttpResolver {
    dns: DnsClient,
}

impl reqwest::dns::Resolve for HttpResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.dns.clone();
        let mut host = name.as_str().to_owned();
        Box::pin(async move {
            if !host.ends_with('.') {
                host.push('.');
            }
            let found = dns.query_addresses(&host).await;
            let addrs: Vec<SocketAddr> = found
                .addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            let failure = found.v6_failure.or(found.v4_failure);
            if addrs.is_empty() {
                let detail = failure.map_or_else(|| "no addresses".to_owned(), |f| f.to_string());
                return Err(format!("cannot resolve {host}: {detail}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Idle HTTPS connections kept per DORMS server, and for how long.
const DORMS_IDLE_CONNECTIONS: usize = 4;
const DORMS_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

impl DormsClient {
    pub fn new(config: DormsConfig) -> Result<Self, DormsError> {
        let dns = DnsClient::new(&config.dns).map_err(|e| DormsError::Config(e.to_string()))?;
        // reqwest with rustls-no-provider panics at build without a process
        // default provider; another component may have installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A DORMS server is asked in bursts (new flows, refreshes) and
            // then not for minutes. reqwest keeps every idle connection for
            // 90 s by default: after a slow server made a burst open ten
            // connections, the fault soak counted them as leaked sockets.
            // A few, briefly, is what a burst can reuse.
            .pool_max_idle_per_host(DORMS_IDLE_CONNECTIONS)
            .pool_idle_timeout(DORMS_IDLE_TIMEOUT)
            .https_only(true)
            .no_proxy()
            .user_agent(concat!("frr-ingest/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(HttpResolver { dns: dns.clone() }));
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| DormsError::Config(format!("CA bundle {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| DormsError::Config(format!("CA bundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(DormsError::Config(format!(
                    "CA bundle {} has no certificates",
                    path.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| DormsError::Config(error_chain(&e)))?;
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Self {
            dns,
            http,
            config,
            cache: SharedTtlCache::default(),
            roots: SharedTtlCache::default(),
            rng: Mutex::new(rng),
        })
    }

    /// Metadata for `sg`, cached.
    pub async fn flow_metadata(&self, sg: SourceGroup) -> Result<FlowMetadata, DormsError> {
        self.metadata_with_url(sg).await.map(|(m, _)| m)
    }

    /// Metadata for `sg` and the URL it came from, cached.
    async fn metadata_with_url(
        &self,
        sg: SourceGroup,
    ) -> Result<(FlowMetadata, String), DormsError> {
        let now = Instant::now();
        if let Some(hit) = self.cached_entry(sg, now) {
            return hit;
        }
        let span = tracing::debug_span!("dorms", source = %sg.source, group = %sg.group);
        let fetched = self.fetch_steps(sg, &mut Vec::new()).instrument(span).await;
        let now = Instant::now();
        let Some(mut cache) = self.cache.lock() else {
            return fetched.map(|(m, url, _)| (m, url));
        };
        match fetched {
            Ok((metadata, url, max_age)) => {
                cache.insert(sg, Ok((metadata, url.clone())), max_age, now);
                Ok((metadata, url))
            }
            Err(error) => {
                let stale = match cache.get_stale(&sg) {
                    Some((Ok(entry), _)) => Some(entry.clone()),
                    _ => None,
                };
                if let Some(entry) = stale {
                    tracing::warn!(%sg, %error, "DORMS refresh failed; keeping stale metadata");
                    cache.insert(sg, Ok(entry.clone()), self.config.failure_ttl, now);
                    return Ok(entry);
                }
                tracing::info!(%sg, %error, "no DORMS metadata");
                cache.insert(sg, Err(error.clone()), self.config.failure_ttl, now);
                Err(error)
            }
        }
    }

    /// The rate to admit `sg` with: declared, else the configured default,
    /// else none (blocked).
    pub async fn flow_bitrate(&self, sg: SourceGroup) -> FlowBitrate {
        match self.metadata_with_url(sg).await {
            Ok((metadata, url)) => FlowBitrate {
                bitrate: Some(metadata.max_bitrate),
                origin: BitrateOrigin::Dorms,
                metadata: Some(metadata),
                url: Some(url),
                error: None,
            },
            Err(error) => FlowBitrate {
                bitrate: self.config.default_bitrate,
                origin: if self.config.default_bitrate.is_some() {
                    BitrateOrigin::Default
                } else {
                    BitrateOrigin::Unknown
                },
                metadata: None,
                url: None,
                error: Some(error),
            },
        }
    }

    /// The cached result for `sg` if fresh at `now`.
    pub fn cached(
        &self,
        sg: SourceGroup,
        now: Instant,
    ) -> Option<Result<FlowMetadata, DormsError>> {
        self.cached_entry(sg, now)
            .map(|entry| entry.map(|(metadata, _)| metadata))
    }

    fn cached_entry(&self, sg: SourceGroup, now: Instant) -> Option<CacheEntry> {
        self.cache.get(&sg, now)
    }

    /// Forgets the cached result for `sg`.
    pub fn invalidate(&self, sg: SourceGroup) {
        self.cache.remove(&sg);
    }

    /// Uncached fetch: metadata and its cache lifetime.
    pub async fn fetch(&self, sg: SourceGroup) -> Result<(FlowMetadata, Duration), DormsError> {
        self.fetch_steps(sg, &mut Vec::new())
            .await
            .map(|(metadata, _, max_age)| (metadata, max_age))
    }

    /// Uncached fetch that also returns every step taken (SRV answer,
    /// host-meta and metadata URLs with their outcomes), for
    /// troubleshooting. Cached RESTCONF roots are reused and marked so.
    pub async fn fetch_traced(
        &self,
        sg: SourceGroup,
    ) -> (Result<(FlowMetadata, Duration), DormsError>, Vec<DormsStep>) {
        let mut steps = Vec::new();
        let result = self
            .fetch_steps(sg, &mut steps)
            .await
            .map(|(metadata, _, max_age)| (metadata, max_age));
        (result, steps)
    }

    async fn fetch_steps(
        &self,
        sg: SourceGroup,
        steps: &mut Vec<DormsStep>,
    ) -> Result<Fetched, DormsError> {
        let name = dorms_srv_name(sg.source);
        let answers = match self.dns.query(&name, RecordType::SRV).await {
            Ok(answers) => answers,
            Err((failure, _)) => {
                steps.push(DormsStep::Srv {
                    name: name.clone(),
                    result: Err(failure.clone()),
                });
                return Err(DormsError::Srv { name, failure });
            }
        };
        let records: Vec<SrvTarget> = answers
            .records
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(SrvTarget {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                }),
                _ => None,
            })
            .collect();
        let ordered = match self.rng.lock() {
            Ok(mut rng) => order_srv(records, &mut *rng),
            Err(_) => records,
        };
        steps.push(DormsStep::Srv {
            name: name.clone(),
            result: Ok(ordered.clone()),
        });
        let mut last_error = None;
        for target in &ordered {
            match self.fetch_from(target, sg, steps).await {
                Ok(found) => return Ok(found),
                Err(error) => {
                    tracing::info!(%sg, target = %target.target, port = target.port, %error, "DORMS server failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or(DormsError::NoServers { name }))
    }

    async fn fetch_from(
        &self,
        target: &SrvTarget,
        sg: SourceGroup,
        steps: &mut Vec<DormsStep>,
    ) -> Result<Fetched, DormsError> {
        let base = base_url(&target.target, target.port);
        let root = self.restconf_root(&base, steps).await?;
        let mut last_error = None;
        for layout in &self.config.layouts {
            let url = metadata_url(&root, *layout, sg, self.config.key_encoding);
            tracing::debug!(%url, "fetching DORMS metadata");
            let fetched = self.get(&url, "application/yang-data+json").await.and_then(
                |(body, cache_control)| {
                    parse_metadata(&body, sg)
                        .map(|metadata| (metadata, cache_control))
                        .map_err(|error| DormsError::Metadata {
                            url: url.clone(),
                            error,
                        })
                },
            );
            steps.push(DormsStep::Metadata {
                url: url.clone(),
                layout: *layout,
                result: fetched.as_ref().map(|(m, _)| *m).map_err(Clone::clone),
            });
            match fetched {
                Ok((metadata, cache_control)) => {
                    let max_age = cache_lifetime(
                        cache_control.as_deref(),
                        self.config.default_max_age,
                        self.config.max_max_age,
                    );
                    return Ok((metadata, url, max_age));
                }
                Err(error @ DormsError::HttpStatus { status: 404, .. }) => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(DormsError::Config("no metadata layouts configured".into())))
    }

    /// RESTCONF root for a server base URL, cached per base. Records one
    /// `HostMeta` step per document requested (or one for a cache hit).
    async fn restconf_root(
        &self,
        base: &str,
        steps: &mut Vec<DormsStep>,
    ) -> Result<String, DormsError> {
        let now = Instant::now();
        let xml_url = format!("{base}/.well-known/host-meta");
        if let Some(root) = self.roots.get(&base.to_owned(), now) {
            steps.push(DormsStep::HostMeta {
                url: xml_url,
                result: Ok(root.clone()),
                cached: true,
            });
            return Ok(root);
        }
        let xml = self
            .get(&xml_url, "application/xrd+xml")
            .await
            .and_then(|(body, cc)| {
                parse_host_meta_xml(&body)
                    .map(|href| (href, cc))
                    .map_err(|error| DormsError::HostMeta {
                        url: xml_url.clone(),
                        error,
                    })
            });
        let (url, href, cache_control) = match xml {
            Ok((href, cc)) => (xml_url, href, cc),
            // Not there, too big or unparsable: try host-meta.json. Its own
            // failure is not reported; the XML one is.
            Err(
                xml_error @ (DormsError::HttpStatus { .. }
                | DormsError::BodyTooLarge { .. }
                | DormsError::HostMeta { .. }),
            ) => {
                steps.push(DormsStep::HostMeta {
                    url: xml_url,
                    result: Err(xml_error.clone()),
                    cached: false,
                });
                let json_url = format!("{base}/.well-known/host-meta.json");
                match self.host_meta_json(&json_url).await {
                    Ok((href, cc)) => (json_url, href, cc),
                    Err(json_error) => {
                        steps.push(DormsStep::HostMeta {
                            url: json_url,
                            result: Err(json_error),
                            cached: false,
                        });
                        return Err(xml_error);
                    }
                }
            }
            Err(other) => {
                steps.push(DormsStep::HostMeta {
                    url: xml_url,
                    result: Err(other.clone()),
                    cached: false,
                });
                return Err(other);
            }
        };
        let Some(root) = restconf_root(base, &href) else {
            let error = DormsError::BadHref { href };
            steps.push(DormsStep::HostMeta {
                url,
                result: Err(error.clone()),
                cached: false,
            });
            return Err(error);
        };
        steps.push(DormsStep::HostMeta {
            url,
            result: Ok(root.clone()),
            cached: false,
        });
        let lifetime = cache_lifetime(
            cache_control.as_deref(),
            self.config.default_max_age,
            self.config.max_max_age,
        );
        if let Some(mut roots) = self.roots.lock() {
            roots.insert(base.to_owned(), root.clone(), lifetime, Instant::now());
        }
        Ok(root)
    }

    async fn host_meta_json(&self, url: &str) -> Result<(String, Option<String>), DormsError> {
        let (body, cc) = self.get(url, "application/json").await?;
        let href = parse_host_meta_json(&body).map_err(|error| DormsError::HostMeta {
            url: url.to_owned(),
            error,
        })?;
        Ok((href, cc))
    }

    /// GET with retries on transient errors. Returns body and Cache-Control.
    async fn get(&self, url: &str, accept: &str) -> Result<(String, Option<String>), DormsError> {
        let mut delay = self.config.retry_backoff;
        let mut attempt = 0;
        loop {
            match self.get_once(url, accept).await {
                Err(error) if error.is_transient() && attempt < self.config.retries => {
                    tracing::debug!(%error, attempt, ?delay, "retrying DORMS request");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_once(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<(String, Option<String>), DormsError> {
        let mut response = self
            .http
            .get(url)
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(|e| classify_reqwest(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DormsError::HttpStatus {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let limit = self.config.max_body_bytes;
        let too_large = || DormsError::BodyTooLarge {
            url: url.to_owned(),
            limit,
        };
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large());
        }
        let cache_control = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify_reqwest(url, &e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((String::from_utf8_lossy(&body).into_owned(), cache_control))
    }
}

/// Maps a reqwest error to timeout / TLS / transport.
fn classify_reqwest(url: &str, error: &reqwest::Error) -> DormsError {
    let url = url.to_owned();
    if error.is_timeout() {
        return DormsError::Timeout { url };
    }
    let detail = error_chain(error);
    // The rustls error is not always reachable through `source()` (wrappers
    // in hyper-util box it), so the message is checked too.
    let lower = detail.to_ascii_lowercase();
    let tls_text = ["certificate", "tls", "handshake", "unknownissuer"]
        .iter()
        .any(|w| lower.contains(w));
    if has_tls_cause(error) || tls_text {
        return DormsError::Tls { url, detail };
    }
    DormsError::Transport { url, detail }
}

fn has_tls_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        // io::Error::source skips its payload; look at the payload directly.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        current = err.source();
    }
    false
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(err) = current {
        text.push_str(": ");
        text.push_str(&err.to_string());
        current = err.source();
    }
    text
}
