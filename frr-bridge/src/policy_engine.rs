//! The policy stage between the join watcher and the orchestrator: for every
//! wanted (S,G) it decides which AMT relays may carry it (static map, else
//! DRIAD, RFC 8777) and whether it is admitted under the bandwidth limit
//! (CBACC, bitrates from DORMS).
//!
//! ```text
//! watcher ──DesiredSet──▶ PolicyEngine ──PolicySet──▶ orchestrator
//!                            ▲    │ lookups (spawned, concurrent)
//!          RelayFailure ─────┘    ▼
//!                          DRIAD / DORMS (PolicyLookups)
//! ```
//!
//! The decisions are taken by a sans-IO core ([`Core`]): inputs (desired
//! set, lookup results, relay failures) and the time come in as values, the
//! [`PolicySet`] and the lookups to start come out. [`PolicyEngine::run`]
//! is the thin async shell: it spawns the lookups through a
//! [`PolicyLookups`] (network by default, fakes in tests), feeds the results
//! back, and re-evaluates on every input, at the next hold-down expiry and
//! every `recheck_interval_s` (so DORMS or DNS recovering changes decisions
//! without a restart). A slow lookup for one source never delays another:
//! the flow shows [`RelayVerdict::Pending`] meanwhile.
//!
//! Rules:
//! * the static relay map overrides DRIAD: no DNS lookup for those sources;
//! * DRIAD candidates are ordered by precedence, randomly (seeded per
//!   source, so the order is stable between evaluations) within equal
//!   precedence; a [`RelayFailure`] holds that relay down for every source
//!   for a random `relay_holddown_min_s..=max_s`, and the verdict moves on
//!   to the next candidate;
//! * a working relay is sticky: once a relay is first in a verdict it stays
//!   first while it is usable, even when a better one comes back from its
//!   hold-down or the DNS order changes (no needless tunnel moves);
//! * a failed DNS refresh keeps the last answer (stale) until DNS answers
//!   again; an NXDOMAIN/NODATA answer is believed;
//! * with a bandwidth limit, flows are admitted by
//!   [`ingest_policy::admission::admit`] with population = number of
//!   downstream interfaces. Flows whose bitrate is still being looked up,
//!   and flows that can never be ingested (type 0, no AMTRELAY record), are
//!   not counted against the limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use ingest_policy::admission::{
    AdmissionState, BitrateOrigin, DEFAULT_SENDER_PRIORITY, DecisionReason, FlowDemand, admit,
    parse_bandwidth,
};
use ingest_policy::dns::{DnsConfig, DnsFailure};
use ingest_policy::dorms::{DormsClient, DormsConfig, DormsError, FlowBitrate};
use ingest_policy::driad::{
    DriadAnswer, DriadConfig, DriadOutcome, DriadResolver, HoldDownReason, HoldDownTracker,
    RelayAddress, RelayCandidate, SelectionOutcome, SkipReason, select_relays,
};
use ingest_types::{AMT_PORT, SourceGroup};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn};

use crate::watcher::DesiredSet;

/// Where name servers come from when `dns_servers` is empty.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How often a flow's bitrate is asked again after a success. The DORMS
/// client's cache (HTTP Cache-Control) decides whether that is a request.
const BITRATE_RECHECK: Duration = Duration::from_secs(30);
/// ... and after a failure. The DORMS client's failure cache is kept
/// shorter than this (see [`NetLookups::new`]), so each retry really asks.
const BITRATE_RETRY: Duration = Duration::from_secs(10);
/// Retry delay after a lookup task died (panicked).
const LOOKUP_CRASH_RETRY: Duration = Duration::from_secs(30);
/// When every relay of a source has failed, the cached AMTRELAY answer has
/// nothing left to try, so DNS is asked again before its TTL runs out (the
/// source's owner may have moved it to a new relay): this long after the
/// last answer at the earliest.
const REQUERY_WHEN_ALL_FAILED: Duration = Duration::from_secs(30);

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

/// Parsed, checked values of a [`PolicyConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    limit: Option<u64>,
    default_bitrate: Option<u64>,
    dorms: bool,
    driad: bool,
    holddown_min: Duration,
    holddown_max: Duration,
    recheck: Duration,
}

type ConfigProblem = (&'static str, String);

impl PolicyConfig {
    /// Whether bitrates are looked up (`dorms`, defaulting to "when a limit
    /// is set").
    pub fn dorms_enabled(&self) -> bool {
        self.dorms.unwrap_or(self.bandwidth_limit.is_some())
    }

    /// Checks values that parse but cannot work. The key is the full TOML
    /// key (`policy.<name>`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.settings()?;
        self.name_servers()?;
        if let Some(path) = &self.dorms_ca_bundle
            && !path.is_file()
        {
            return Err((
                "policy.dorms_ca_bundle",
                format!("{} is not a readable file", path.display()),
            ));
        }
        Ok(())
    }

    fn settings(&self) -> Result<Settings, ConfigProblem> {
        let limit = match &self.bandwidth_limit {
            None => None,
            Some(text) => {
                Some(parse_bandwidth(text).map_err(|e| ("policy.bandwidth_limit", e.to_string()))?)
            }
        };
        let default_bitrate = match &self.default_bitrate {
            None => None,
            Some(text) => {
                let rate =
                    parse_bandwidth(text).map_err(|e| ("policy.default_bitrate", e.to_string()))?;
                if rate == 0 {
                    return Err(("policy.default_bitrate", "must be above 0".into()));
                }
                Some(rate)
            }
        };
        let dorms = self.dorms_enabled();
        if limit.is_some() && !dorms && default_bitrate.is_none() {
            return Err((
                "policy.default_bitrate",
                "with a bandwidth_limit and dorms = false every flow needs the default rate; set default_bitrate or dorms = true".into(),
            ));
        }
        if !(100..=60_000).contains(&self.dns_timeout_ms) {
            return Err(("policy.dns_timeout_ms", "must be 100..60000".into()));
        }
        if !(100..=300_000).contains(&self.dorms_timeout_ms) {
            return Err(("policy.dorms_timeout_ms", "must be 100..300000".into()));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.dorms_max_body_bytes) {
            return Err((
                "policy.dorms_max_body_bytes",
                "must be 1024..16777216".into(),
            ));
        }
        if !(1..=86_400).contains(&self.relay_holddown_min_s) {
            return Err((
                "policy.relay_holddown_min_s",
                "must be 1..86400 seconds".into(),
            ));
        }
        if !(self.relay_holddown_min_s..=86_400).contains(&self.relay_holddown_max_s) {
            return Err((
                "policy.relay_holddown_max_s",
                format!(
                    "must be {}..86400 seconds (at least relay_holddown_min_s)",
                    self.relay_holddown_min_s
                ),
            ));
        }
        if !(1..=3600).contains(&self.recheck_interval_s) {
            return Err((
                "policy.recheck_interval_s",
                "must be 1..3600 seconds".into(),
            ));
        }
        Ok(Settings {
            limit,
            default_bitrate,
            dorms,
            driad: self.driad,
            holddown_min: Duration::from_secs(self.relay_holddown_min_s),
            holddown_max: Duration::from_secs(self.relay_holddown_max_s),
            recheck: Duration::from_secs(self.recheck_interval_s),
        })
    }

    /// The configured name servers (port 53 unless given); empty when
    /// resolv.conf is to be used.
    fn name_servers(&self) -> Result<Vec<SocketAddr>, ConfigProblem> {
        self.dns_servers
            .iter()
            .map(|text| parse_server(text).map_err(|e| ("policy.dns_servers", e)))
            .collect()
    }

    /// The DNS configuration for DRIAD and DORMS: `dns_servers`, else the
    /// nameservers of /etc/resolv.conf.
    pub fn dns_config(&self) -> Result<DnsConfig, String> {
        dns_config_from(
            &self
                .name_servers()
                .map_err(|(key, problem)| format!("{key}: {problem}"))?,
            Path::new(RESOLV_CONF),
            Duration::from_millis(self.dns_timeout_ms),
        )
    }
}

/// `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`, `[2001:db8::53]:5353`.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not ADDRESS or ADDRESS:PORT"))
}

/// `servers`, or the nameservers of `resolv_conf` when empty.
pub fn dns_config_from(
    servers: &[SocketAddr],
    resolv_conf: &Path,
    timeout: Duration,
) -> Result<DnsConfig, String> {
    let mut dns = if servers.is_empty() {
        let dns = DnsConfig::from_resolv_conf(resolv_conf).map_err(|e| {
            format!(
                "cannot read name servers from {}: {e}",
                resolv_conf.display()
            )
        })?;
        if dns.name_servers.is_empty() {
            return Err(format!(
                "no usable nameserver lines in {}; set policy.dns_servers",
                resolv_conf.display()
            ));
        }
        dns
    } else {
        DnsConfig::new(servers.to_vec())
    };
    dns.timeout = timeout;
    Ok(dns)
}

/// Where a relay came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelaySource {
    /// `amt.static_relays` of the config.
    StaticMap,
    /// An AMTRELAY record (RFC 8777).
    Driad,
}

impl fmt::Display for RelaySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelaySource::StaticMap => "static map",
            RelaySource::Driad => "DRIAD",
        })
    }
}

/// A relay a flow may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayChoice {
    /// Relay address and port (2268 for DRIAD relays).
    pub relay: SocketAddr,
    /// Send the Request without Relay Discovery first (the record's D bit;
    /// for the static map, `discovery = false`).
    pub skip_discovery: bool,
    /// The record's precedence (0 for the static map).
    pub precedence: u8,
    pub origin: RelaySource,
}

/// One DRIAD candidate as shown to people, in the order tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateView {
    /// Address, with the record's name when it came from a type 3 record,
    /// e.g. "192.0.2.7 (relay.example.)"; "none (type 0)".
    pub relay: String,
    pub precedence: u8,
    /// The D bit.
    pub discovery_optional: bool,
    /// "chosen", "next", "held down until 12:00:00 UTC (no traffic)",
    /// "no relay (type 0)", "unresolved name (A: NXDOMAIN, AAAA: NODATA)", ...
    pub outcome: String,
}

/// Which relays a flow may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// The DRIAD lookup for the source has not answered yet.
    Pending,
    /// Usable relays, best first: use the first now, the others in order
    /// when it fails.
    Relays(Vec<RelayChoice>),
    /// No relay can be used; the reason is for people.
    NoRelay(String),
}

impl RelayVerdict {
    /// The relay to use now.
    pub fn first(&self) -> Option<&RelayChoice> {
        match self {
            RelayVerdict::Relays(relays) => relays.first(),
            _ => None,
        }
    }
}

impl fmt::Display for RelayVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayVerdict::Pending => f.write_str("pending (DRIAD lookup in progress)"),
            RelayVerdict::Relays(relays) => {
                let Some(first) = relays.first() else {
                    return f.write_str("no relay");
                };
                write!(f, "relay {} ({}", first.relay, first.origin)?;
                if first.origin == RelaySource::Driad {
                    write!(f, ", precedence {}", first.precedence)?;
                }
                if first.skip_discovery {
                    f.write_str(", no discovery")?;
                }
                f.write_str(")")?;
                match relays.len() {
                    1 => Ok(()),
                    2 => f.write_str(", 1 fallback"),
                    n => write!(f, ", {} fallbacks", n - 1),
                }
            }
            RelayVerdict::NoRelay(reason) => write!(f, "no relay: {reason}"),
        }
    }
}

/// The policy decision for one wanted (S,G).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPolicy {
    pub sg: SourceGroup,
    /// Downstream interfaces joined (at least 1).
    pub population: u32,
    /// Bits per second used for admission.
    pub bitrate: Option<u64>,
    /// `dorms:<url>`, `default (no DORMS metadata: ...)`, `unknown: <error>`,
    /// `pending (DORMS lookup in progress)`, `not looked up`.
    pub bitrate_origin: String,
    /// Serve it (the bandwidth limit allows it).
    pub admitted: bool,
    pub admission_reason: String,
    pub relays: RelayVerdict,
    /// DRIAD candidates in the order tried, with why each is (not) used.
    pub candidates: Vec<CandidateView>,
}

impl FlowPolicy {
    /// Admitted and a relay is known: the orchestrator should ingest it
    /// through `relays.first()`.
    pub fn serve(&self) -> Option<&RelayChoice> {
        if self.admitted {
            self.relays.first()
        } else {
            None
        }
    }
}

/// The decisions for every wanted (S,G).
pub type PolicySet = BTreeMap<SourceGroup, FlowPolicy>;

/// Reported by the orchestrator when a relay fails for a flow or tunnel (no
/// advertisement, no query, L flag, no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFailure {
    pub relay: SocketAddr,
    pub sg: Option<SourceGroup>,
    pub reason: String,
    /// Hold the relay down so flows move to their next candidate. False
    /// when no flow on it has another relay left: the tunnel keeps
    /// retrying it, and the engine only asks DNS again (the source's owner
    /// may have moved it to another relay).
    pub hold_down: bool,
}

/// The static relay map: source → (relay, send Discovery first).
pub type StaticRelayMap = Box<dyn Fn(IpAddr) -> Option<(SocketAddr, bool)> + Send + Sync>;

/// The network lookups the engine needs, behind a trait so tests inject
/// fakes. Implementations may cache; the engine asks again when a DRIAD
/// answer's TTL runs out and every 10-30 s for bitrates.
pub trait PolicyLookups: Send + Sync + 'static {
    /// AMTRELAY lookup for `source` (type 3 names resolved).
    fn relays(&self, source: IpAddr) -> BoxFuture<'_, DriadOutcome>;
    /// The flow's declared bitrate. Only `metadata`/`bitrate` with origin
    /// `Dorms`, `url` and `error` are used: the engine applies
    /// `default_bitrate` itself.
    fn bitrate(&self, sg: SourceGroup) -> BoxFuture<'_, FlowBitrate>;
}

/// [`PolicyLookups`] over the network: [`DriadResolver`] and
/// [`DormsClient`] (both cache by TTL / Cache-Control).
pub struct NetLookups {
    driad: Option<DriadResolver>,
    dorms: Option<DormsClient>,
}

impl NetLookups {
    /// Builds the resolvers the configuration needs (none when DRIAD and
    /// DORMS are both off).
    pub fn new(cfg: &PolicyConfig) -> Result<Self, String> {
        let dorms_on = cfg.dorms_enabled();
        if !cfg.driad && !dorms_on {
            return Ok(Self {
                driad: None,
                dorms: None,
            });
        }
        let dns = cfg.dns_config()?;
        let driad = if cfg.driad {
            Some(
                DriadResolver::new(DriadConfig::new(dns.clone()))
                    .map_err(|e| format!("DRIAD resolver: {e}"))?,
            )
        } else {
            None
        };
        let dorms = if dorms_on {
            let mut dc = DormsConfig::new(dns);
            dc.ca_bundle = cfg.dorms_ca_bundle.clone();
            dc.request_timeout = Duration::from_millis(cfg.dorms_timeout_ms);
            dc.connect_timeout = dc.request_timeout.min(Duration::from_secs(5));
            dc.max_body_bytes = cfg.dorms_max_body_bytes;
            dc.rng_seed = cfg.seed;
            // The engine paces retries per flow (BITRATE_RETRY); the
            // client's default one-minute failure cache would hide DORMS
            // coming back for up to a minute after that.
            dc.failure_ttl = BITRATE_RETRY / 2;
            Some(DormsClient::new(dc).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Self { driad, dorms })
    }
}

impl PolicyLookups for NetLookups {
    fn relays(&self, source: IpAddr) -> BoxFuture<'_, DriadOutcome> {
        Box::pin(async move {
            match &self.driad {
                // Uncached: the engine keeps outcomes and decides when to
                // ask again (TTL, or early when every relay failed).
                Some(driad) => driad.query_relays(source).await,
                None => DriadOutcome::Failed {
                    source,
                    query_name: ingest_policy::driad::reverse_name(source),
                    failure: DnsFailure::Other("DRIAD is off".into()),
                    retry_after: Duration::from_secs(3600),
                },
            }
        })
    }

    fn bitrate(&self, sg: SourceGroup) -> BoxFuture<'_, FlowBitrate> {
        Box::pin(async move {
            match &self.dorms {
                Some(dorms) => dorms.flow_bitrate(sg).await,
                None => FlowBitrate {
                    bitrate: None,
                    origin: BitrateOrigin::Unknown,
                    metadata: None,
                    url: None,
                    error: Some(DormsError::Config("DORMS lookups are off".into())),
                },
            }
        })
    }
}

/// A lookup the core wants started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    Relays(IpAddr),
    Bitrate(SourceGroup),
}

/// A finished lookup.
#[derive(Debug, Clone)]
pub enum LookupDone {
    Relays(IpAddr, DriadOutcome),
    Bitrate(SourceGroup, FlowBitrate),
}

#[derive(Debug, Default)]
struct SourceEntry {
    /// The answer in use (a stale one is kept through transient failures)
    /// or the failure when there is no answer.
    outcome: Option<DriadOutcome>,
    in_flight: bool,
    refresh_at: Option<Instant>,
    /// When the last lookup finished.
    answered_at: Option<Instant>,
    /// The relay first in the last verdict (kept first while usable).
    sticky: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct RateEntry {
    result: Option<FlowBitrate>,
    in_flight: bool,
    refresh_at: Option<Instant>,
}

/// The relay part of a decision, per source.
struct SourceVerdict {
    verdict: RelayVerdict,
    candidates: Vec<CandidateView>,
    /// The source can never be ingested as things are (type 0, no record):
    /// its flows do not count against the bandwidth limit.
    never: bool,
}

/// The bitrate part of a decision, per flow.
struct RateView {
    bitrate: Option<u64>,
    origin: BitrateOrigin,
    text: String,
    /// Why there is no DORMS rate, for the blocked reason.
    error: Option<String>,
    pending: bool,
    /// The sender's DORMS `priority` among its own flows.
    priority: u16,
}

/// The sans-IO policy core: feed it inputs and the time, take decisions
/// and lookups to start.
pub struct Core {
    settings: Settings,
    static_map: StaticRelayMap,
    desired: Arc<DesiredSet>,
    sources: HashMap<IpAddr, SourceEntry>,
    rates: HashMap<SourceGroup, RateEntry>,
    holddowns: HoldDownTracker,
    admission: AdmissionState,
    admitted: BTreeSet<SourceGroup>,
    rng: StdRng,
    seed: u64,
    /// Maps `Instant`s to wall-clock text, fixed so text is stable.
    anchor: (Instant, SystemTime),
    last: PolicySet,
}

impl Core {
    pub fn new(
        cfg: &PolicyConfig,
        static_map: StaticRelayMap,
        now: Instant,
    ) -> Result<Self, String> {
        let settings = cfg
            .settings()
            .map_err(|(key, problem)| format!("{key}: {problem}"))?;
        let seed = cfg.seed.unwrap_or_else(rand::random);
        Ok(Self {
            holddowns: HoldDownTracker::new(settings.holddown_min, settings.holddown_max),
            settings,
            static_map,
            desired: Arc::new(DesiredSet::default()),
            sources: HashMap::new(),
            rates: HashMap::new(),
            admission: AdmissionState::new(seed),
            admitted: BTreeSet::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            seed,
            anchor: (now, SystemTime::now()),
            last: PolicySet::new(),
        })
    }

    /// A new desired set: state of sources and flows no longer wanted is
    /// dropped (results of their running lookups are then ignored).
    pub fn set_desired(&mut self, desired: Arc<DesiredSet>) {
        let sources: BTreeSet<IpAddr> = desired.joins.keys().map(|sg| sg.source).collect();
        self.sources.retain(|s, _| sources.contains(s));
        for source in sources {
            self.sources.entry(source).or_default();
        }
        self.rates.retain(|sg, _| desired.joins.contains_key(sg));
        for sg in desired.joins.keys() {
            self.rates.entry(*sg).or_default();
        }
        self.desired = desired;
    }

    /// Lookups due at `now`, marked in flight.
    pub fn take_lookups(&mut self, now: Instant) -> Vec<Lookup> {
        let mut out = Vec::new();
        if self.settings.driad {
            for (source, entry) in &mut self.sources {
                if entry.in_flight || !due(entry.outcome.is_none(), entry.refresh_at, now) {
                    continue;
                }
                if (self.static_map)(*source).is_some() {
                    continue;
                }
                entry.in_flight = true;
                out.push(Lookup::Relays(*source));
            }
        }
        if self.settings.dorms {
            for (sg, entry) in &mut self.rates {
                if entry.in_flight || !due(entry.result.is_none(), entry.refresh_at, now) {
                    continue;
                }
                entry.in_flight = true;
                out.push(Lookup::Bitrate(*sg));
            }
        }
        out.sort_by_key(|l| match l {
            Lookup::Relays(s) => (0, *s, *s),
            Lookup::Bitrate(sg) => (1, sg.source, sg.group),
        });
        out
    }

    /// A lookup finished.
    pub fn on_lookup(&mut self, done: LookupDone, now: Instant) {
        match done {
            LookupDone::Relays(source, outcome) => self.on_relays(source, outcome, now),
            LookupDone::Bitrate(sg, rate) => self.on_bitrate(sg, rate, now),
        }
    }

    /// A lookup task died without a result: retry later.
    pub fn on_lookup_lost(&mut self, lookup: Lookup, now: Instant) {
        match lookup {
            Lookup::Relays(source) => {
                if let Some(entry) = self.sources.get_mut(&source) {
                    entry.in_flight = false;
                    entry.refresh_at = Some(now + LOOKUP_CRASH_RETRY);
                }
            }
            Lookup::Bitrate(sg) => {
                if let Some(entry) = self.rates.get_mut(&sg) {
                    entry.in_flight = false;
                    entry.refresh_at = Some(now + LOOKUP_CRASH_RETRY);
                }
            }
        }
    }

    fn on_relays(&mut self, source: IpAddr, outcome: DriadOutcome, now: Instant) {
        let Some(entry) = self.sources.get_mut(&source) else {
            return;
        };
        entry.in_flight = false;
        entry.answered_at = Some(now);
        match &outcome {
            DriadOutcome::Answer(answer) => {
                entry.refresh_at = Some(now + answer.ttl.max(Duration::from_secs(1)));
                entry.outcome = Some(outcome);
            }
            DriadOutcome::Failed {
                failure,
                retry_after,
                query_name,
                ..
            } => {
                entry.refresh_at = Some(now + (*retry_after).max(Duration::from_secs(1)));
                let keep_stale = !failure.is_negative_answer()
                    && matches!(entry.outcome, Some(DriadOutcome::Answer(_)));
                if keep_stale {
                    warn!(%source, %failure, "AMTRELAY refresh of {query_name} failed; keeping the last answer");
                } else {
                    entry.outcome = Some(outcome);
                }
            }
        }
    }

    fn on_bitrate(&mut self, sg: SourceGroup, rate: FlowBitrate, now: Instant) {
        let Some(entry) = self.rates.get_mut(&sg) else {
            return;
        };
        entry.in_flight = false;
        let ok = rate.origin == BitrateOrigin::Dorms && rate.bitrate.is_some();
        entry.refresh_at = Some(now + if ok { BITRATE_RECHECK } else { BITRATE_RETRY });
        entry.result = Some(rate);
    }

    /// The orchestrator saw `failure.relay` fail: hold it down (for every
    /// source) so verdicts move to the next candidate, unless it is the
    /// last relay left; either way, sources with no working relay left get
    /// a fresh AMTRELAY query.
    pub fn on_failure(&mut self, failure: RelayFailure, now: Instant) {
        let sg = failure.sg.map(|sg| sg.to_string()).unwrap_or_default();
        if failure.hold_down {
            let duration = self
                .rng
                .random_range(self.settings.holddown_min..=self.settings.holddown_max);
            let until = self.holddowns.hold_down_for(
                RelayAddress::Ip(failure.relay.ip()),
                HoldDownReason::Other(failure.reason.clone()),
                now,
                duration,
            );
            warn!(
                relay = %failure.relay,
                sg,
                reason = %failure.reason,
                "relay failed: held down until {}",
                self.wall(until)
            );
        } else {
            warn!(
                relay = %failure.relay,
                sg,
                reason = %failure.reason,
                "relay failed, and it is the last relay left for its flows: its tunnel keeps retrying"
            );
        }
        self.requery_sources_whose_relays_all_failed(failure.relay.ip(), now);
    }

    /// Sources whose every relay has now failed (`failed`, and the others
    /// held down) get a fresh AMTRELAY query, at most every
    /// [`REQUERY_WHEN_ALL_FAILED`] after the last answer.
    fn requery_sources_whose_relays_all_failed(&mut self, failed: IpAddr, now: Instant) {
        let mut requeried = Vec::new();
        for (source, entry) in &mut self.sources {
            let Some(DriadOutcome::Answer(answer)) = &entry.outcome else {
                continue;
            };
            let mut relays = answer.candidates.iter().filter_map(|c| match &c.relay {
                RelayAddress::Ip(ip) => Some(RelayAddress::Ip(*ip)),
                _ => None,
            });
            let mut involved = false;
            let all_held = relays.all(|relay| {
                let this = relay == RelayAddress::Ip(failed);
                involved |= this;
                this || self.holddowns.get(&relay, now).is_some()
            });
            if !involved || !all_held || entry.in_flight {
                continue;
            }
            let earliest = entry
                .answered_at
                .map_or(now, |t| t + REQUERY_WHEN_ALL_FAILED)
                .max(now);
            if entry.refresh_at.is_none_or(|t| t > earliest) {
                entry.refresh_at = Some(earliest);
                requeried.push((*source, answer.query_name.clone(), earliest));
            }
        }
        for (source, query_name, at) in requeried {
            let when = if at > now {
                format!(" at {}", self.wall(at))
            } else {
                String::new()
            };
            info!(
                %source,
                "every relay in the AMTRELAY answer for {query_name} failed: asking DNS again{when}"
            );
        }
    }

    /// When to evaluate again at the latest (next hold-down expiry, refresh
    /// or the periodic recheck).
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = now + self.settings.recheck;
        let mut consider = |t: Instant| {
            if t > now && t < next {
                next = t;
            }
        };
        if let Some(t) = self.admission.next_expiry(now) {
            consider(t);
        }
        for (_, hold) in self.holddowns.active(now) {
            consider(hold.until);
        }
        for entry in self.sources.values().filter(|e| !e.in_flight) {
            if let Some(t) = entry.refresh_at {
                consider(t);
            }
        }
        for entry in self.rates.values().filter(|e| !e.in_flight) {
            if let Some(t) = entry.refresh_at {
                consider(t);
            }
        }
        next
    }

    /// Decides every wanted flow at `now`; logs what changed since the last
    /// evaluation.
    pub fn evaluate(&mut self, now: Instant) -> PolicySet {
        self.holddowns.prune(now);
        let desired = self.desired.clone();
        let sources: BTreeSet<IpAddr> = desired.joins.keys().map(|sg| sg.source).collect();
        let mut verdicts: HashMap<IpAddr, SourceVerdict> = HashMap::new();
        for source in sources {
            let verdict = self.relay_verdict(source, now);
            if let (Some(first), Some(entry)) =
                (verdict.verdict.first(), self.sources.get_mut(&source))
            {
                entry.sticky = Some(first.relay);
            }
            verdicts.insert(source, verdict);
        }

        let mut set = PolicySet::new();
        let mut demands = Vec::new();
        for (sg, interfaces) in &desired.joins {
            let population = u32::try_from(interfaces.len()).unwrap_or(u32::MAX).max(1);
            let rate = self.rate_view(*sg);
            let (relays, candidates, never) = match verdicts.get(&sg.source) {
                Some(v) => (v.verdict.clone(), v.candidates.clone(), v.never),
                None => (RelayVerdict::Pending, Vec::new(), false),
            };
            let (admitted, admission_reason) = match self.settings.limit {
                None => (true, "no bandwidth limit".to_owned()),
                Some(_) if never => (
                    false,
                    "not counted against the bandwidth limit: no relay for this source".to_owned(),
                ),
                Some(_) if rate.pending => (
                    false,
                    "waiting for the bitrate (DORMS lookup in progress)".to_owned(),
                ),
                Some(_) => {
                    demands.push(FlowDemand {
                        sg: *sg,
                        population,
                        bitrate: rate.bitrate,
                        bitrate_origin: rate.origin,
                        admitted_now: self.admitted.contains(sg),
                        priority: rate.priority,
                    });
                    (false, String::new())
                }
            };
            set.insert(
                *sg,
                FlowPolicy {
                    sg: *sg,
                    population,
                    bitrate: rate.bitrate,
                    bitrate_origin: rate.text,
                    admitted,
                    admission_reason,
                    relays,
                    candidates,
                },
            );
        }

        if let Some(limit) = self.settings.limit {
            let decisions = admit(&demands, limit, now, &mut self.admission);
            for decision in decisions {
                let sg = decision.sg;
                let error = self.rate_view(sg).error;
                if let Some(flow) = set.get_mut(&sg) {
                    flow.admitted = decision.admitted;
                    flow.admission_reason = self.reason_text(
                        &decision.reason,
                        decision.bitrate,
                        decision.offload,
                        decision.held_until,
                        limit,
                        error.as_deref(),
                    );
                }
            }
        }
        self.admitted = set.values().filter(|f| f.admitted).map(|f| f.sg).collect();
        self.log_changes(&set);
        self.last = set.clone();
        set
    }

    fn log_changes(&self, set: &PolicySet) {
        for (sg, flow) in set {
            let span = info_span!("flow", %sg);
            let _enter = span.enter();
            match self.last.get(sg) {
                None => info!(
                    population = flow.population,
                    bitrate = %flow.bitrate_origin,
                    admitted = flow.admitted,
                    "policy: {}; {}",
                    flow.relays,
                    flow.admission_reason
                ),
                Some(old) => {
                    if old.relays != flow.relays {
                        info!("relays: {} (was {})", flow.relays, old.relays);
                    }
                    if old.admitted != flow.admitted {
                        info!(
                            admitted = flow.admitted,
                            "admission: {}", flow.admission_reason
                        );
                    } else if old.admission_reason != flow.admission_reason {
                        debug!("admission: {}", flow.admission_reason);
                    }
                    if old.bitrate_origin != flow.bitrate_origin {
                        debug!("bitrate: {:?} from {}", flow.bitrate, flow.bitrate_origin);
                    }
                }
            }
        }
        for sg in self.last.keys().filter(|sg| !set.contains_key(sg)) {
            debug!(%sg, "flow no longer wanted: policy dropped");
        }
    }

    fn rate_view(&self, sg: SourceGroup) -> RateView {
        let default = self.settings.default_bitrate;
        let (default_origin, default_text) = match default {
            Some(_) => (BitrateOrigin::Default, "default"),
            None => (BitrateOrigin::Unknown, "unknown"),
        };
        if !self.settings.dorms {
            return RateView {
                bitrate: default,
                origin: default_origin,
                text: if default.is_some() {
                    "default (DORMS lookups are off)".into()
                } else {
                    "not looked up".into()
                },
                error: Some("DORMS lookups are off".into()),
                pending: false,
                priority: DEFAULT_SENDER_PRIORITY,
            };
        }
        let Some(result) = self.rates.get(&sg).and_then(|e| e.result.as_ref()) else {
            return RateView {
                bitrate: None,
                origin: BitrateOrigin::Unknown,
                text: "pending (DORMS lookup in progress)".into(),
                error: None,
                pending: true,
                priority: DEFAULT_SENDER_PRIORITY,
            };
        };
        match (result.origin, result.bitrate) {
            (BitrateOrigin::Dorms, Some(bitrate)) => RateView {
                bitrate: Some(bitrate),
                origin: BitrateOrigin::Dorms,
                text: format!("dorms:{}", result.url.as_deref().unwrap_or("?")),
                error: None,
                pending: false,
                priority: result
                    .metadata
                    .map_or(DEFAULT_SENDER_PRIORITY, |m| m.priority),
            },
            _ => {
                let error = result
                    .error
                    .as_ref()
                    .map_or_else(|| "no metadata".to_owned(), ToString::to_string);
                RateView {
                    bitrate: default,
                    origin: default_origin,
                    text: if default.is_some() {
                        format!("{default_text} (no DORMS metadata: {error})")
                    } else {
                        format!("{default_text}: {error}")
                    },
                    error: Some(error),
                    pending: false,
                    priority: DEFAULT_SENDER_PRIORITY,
                }
            }
        }
    }

    fn reason_text(
        &self,
        reason: &DecisionReason,
        bitrate: Option<u64>,
        offload: u128,
        held_until: Option<Instant>,
        limit: u64,
        error: Option<&str>,
    ) -> String {
        let held = held_until
            .map(|t| format!("; held down until {}", self.wall(t)))
            .unwrap_or_default();
        match reason {
            DecisionReason::Fits => format!(
                "admitted: {} within the {} limit (offload {})",
                rate_text(bitrate.unwrap_or(0)),
                limit_text(limit),
                offload_text(offload)
            ),
            DecisionReason::OverLimit { needed, available }
            | DecisionReason::HeldDown {
                needed, available, ..
            } => format!(
                "blocked: needs {}, {} left of {} (offload {}){held}",
                rate_text(*needed),
                rate_text(*available),
                limit_text(limit),
                offload_text(offload)
            ),
            DecisionReason::NoBitrate => format!(
                "blocked: no bitrate (DORMS: {}) and no default_bitrate",
                error.unwrap_or("no metadata")
            ),
            DecisionReason::SenderPriority {
                blocked,
                blocked_priority,
                priority,
            } => format!(
                "blocked: its sender ranks {blocked} higher (DORMS priority \
                 {blocked_priority} > {priority}) and that flow does not fit{held}"
            ),
        }
    }

    fn relay_verdict(&self, source: IpAddr, now: Instant) -> SourceVerdict {
        if let Some((relay, discovery)) = (self.static_map)(source) {
            return SourceVerdict {
                verdict: RelayVerdict::Relays(vec![RelayChoice {
                    relay,
                    skip_discovery: !discovery,
                    precedence: 0,
                    origin: RelaySource::StaticMap,
                }]),
                candidates: vec![CandidateView {
                    relay: relay.to_string(),
                    precedence: 0,
                    discovery_optional: !discovery,
                    outcome: "chosen (static map)".into(),
                }],
                never: false,
            };
        }
        if !self.settings.driad {
            return SourceVerdict {
                verdict: RelayVerdict::NoRelay(format!(
                    "no static relay for {source} and DRIAD discovery is off"
                )),
                candidates: Vec::new(),
                never: true,
            };
        }
        let entry = self.sources.get(&source);
        match entry.and_then(|e| e.outcome.as_ref()) {
            None => SourceVerdict {
                verdict: RelayVerdict::Pending,
                candidates: Vec::new(),
                never: false,
            },
            Some(DriadOutcome::Failed {
                query_name,
                failure,
                ..
            }) => {
                let negative = failure.is_negative_answer();
                let reason = if negative {
                    format!("no AMTRELAY record for {query_name} ({failure})")
                } else {
                    format!("AMTRELAY lookup for {query_name} failed: {failure}; retrying")
                };
                SourceVerdict {
                    verdict: RelayVerdict::NoRelay(reason),
                    candidates: Vec::new(),
                    never: negative,
                }
            }
            Some(DriadOutcome::Answer(answer)) => {
                self.select(source, answer, entry.and_then(|e| e.sticky), now)
            }
        }
    }

    fn select(
        &self,
        source: IpAddr,
        answer: &DriadAnswer,
        sticky: Option<SocketAddr>,
        now: Instant,
    ) -> SourceVerdict {
        // A canonical input order and a per-source seed make the random
        // order within a precedence the same at every evaluation.
        let mut candidates = answer.candidates.clone();
        candidates.sort_by(|a, b| (a.precedence, &a.relay).cmp(&(b.precedence, &b.relay)));
        let mut hasher = DefaultHasher::new();
        source.hash(&mut hasher);
        let mut rng = StdRng::seed_from_u64(self.seed ^ hasher.finish());
        let selection = select_relays(&candidates, &self.holddowns, now, &mut rng);

        let mut usable: Vec<RelayChoice> = selection
            .usable()
            .filter_map(|c| match c.relay {
                RelayAddress::Ip(ip) => Some(RelayChoice {
                    relay: SocketAddr::new(ip, AMT_PORT),
                    skip_discovery: c.discovery_optional,
                    precedence: c.precedence,
                    origin: RelaySource::Driad,
                }),
                _ => None,
            })
            .collect();
        if let Some(sticky) = sticky
            && let Some(pos) = usable.iter().position(|r| r.relay == sticky)
            && pos > 0
        {
            let keep = usable.remove(pos);
            usable.insert(0, keep);
        }

        let mut views: Vec<CandidateView> = selection
            .entries
            .iter()
            .map(|entry| CandidateView {
                relay: candidate_text(&entry.candidate),
                precedence: entry.candidate.precedence,
                discovery_optional: entry.candidate.discovery_optional,
                outcome: match &entry.skip {
                    Some(SkipReason::HeldDown { until, reason }) => {
                        format!("held down until {} ({reason})", self.wall(*until))
                    }
                    Some(SkipReason::UnresolvedName) => "unresolved name".into(),
                    Some(SkipReason::AfterNoRelay) => "not used (after a type 0 record)".into(),
                    None if entry.candidate.is_no_relay() => {
                        if usable.is_empty() {
                            "no relay (type 0)".into()
                        } else {
                            "end of the list (type 0)".into()
                        }
                    }
                    None => {
                        let position = match entry.candidate.relay {
                            RelayAddress::Ip(ip) => usable
                                .iter()
                                .position(|r| r.relay == SocketAddr::new(ip, AMT_PORT)),
                            _ => None,
                        };
                        match position {
                            Some(0) => "chosen".into(),
                            Some(_) => "next".into(),
                            None => "not usable".into(),
                        }
                    }
                },
            })
            .collect();
        for name in &answer.unresolved {
            views.push(CandidateView {
                relay: name.name.to_string(),
                precedence: name.precedence,
                discovery_optional: false,
                outcome: format!("unresolved name (A: {}, AAAA: {})", name.ipv4, name.ipv6),
            });
        }

        let any_held = selection
            .entries
            .iter()
            .any(|e| matches!(e.skip, Some(SkipReason::HeldDown { .. })));
        let (verdict, never) = if !usable.is_empty() {
            (RelayVerdict::Relays(usable), false)
        } else {
            match selection.outcome {
                SelectionOutcome::NoRelay { .. } => (
                    RelayVerdict::NoRelay(
                        "AMTRELAY type 0: the source's owner says do not ingest".into(),
                    ),
                    !any_held,
                ),
                SelectionOutcome::AllSkipped { retry_at } if any_held => {
                    let held = selection
                        .entries
                        .iter()
                        .filter(|e| matches!(e.skip, Some(SkipReason::HeldDown { .. })))
                        .count();
                    let retry = retry_at
                        .map(|t| format!(" (first back at {})", self.wall(t)))
                        .unwrap_or_default();
                    (
                        RelayVerdict::NoRelay(format!(
                            "all {held} relays of {} are held down after failures{retry}",
                            answer.query_name
                        )),
                        false,
                    )
                }
                _ if !answer.unresolved.is_empty() => {
                    let names: Vec<String> = answer
                        .unresolved
                        .iter()
                        .map(|u| u.name.to_string())
                        .collect();
                    (
                        RelayVerdict::NoRelay(format!(
                            "AMTRELAY relay names did not resolve: {}",
                            names.join(", ")
                        )),
                        false,
                    )
                }
                _ => (
                    RelayVerdict::NoRelay(format!(
                        "the AMTRELAY records of {} have no usable relay ({} malformed; unassigned relay types are ignored)",
                        answer.query_name,
                        answer.rejected.len()
                    )),
                    true,
                ),
            }
        };
        SourceVerdict {
            verdict,
            candidates: views,
            never,
        }
    }

    /// Wall-clock text (UTC time of day) for an `Instant`.
    fn wall(&self, at: Instant) -> String {
        let (anchor, anchor_wall) = self.anchor;
        let wall = if at >= anchor {
            anchor_wall + (at - anchor)
        } else {
            anchor_wall - (anchor - at)
        };
        let secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let day = secs % 86_400;
        format!(
            "{:02}:{:02}:{:02} UTC",
            day / 3600,
            (day / 60) % 60,
            day % 60
        )
    }
}

fn due(never_answered: bool, refresh_at: Option<Instant>, now: Instant) -> bool {
    never_answered || refresh_at.is_none_or(|t| t <= now)
}

fn candidate_text(candidate: &RelayCandidate) -> String {
    match &candidate.via_name {
        Some(name) => format!("{} ({name})", candidate.relay),
        None => candidate.relay.to_string(),
    }
}

/// "6.0 Mbit/s", "2.5 kbit/s", "800 bit/s".
pub fn rate_text(bits: u64) -> String {
    let b = bits as f64;
    if bits >= 1_000_000_000 {
        format!("{:.1} Gbit/s", b / 1e9)
    } else if bits >= 1_000_000 {
        format!("{:.1} Mbit/s", b / 1e6)
    } else if bits >= 1_000 {
        format!("{:.1} kbit/s", b / 1e3)
    } else {
        format!("{bits} bit/s")
    }
}

/// Like [`rate_text`] without a needless ".0": "10 Mbit/s", "1.5 Gbit/s".
fn limit_text(bits: u64) -> String {
    rate_text(bits).replace(".0 ", " ")
}

fn offload_text(offload: u128) -> String {
    if offload == 0 {
        "0".into()
    } else {
        rate_text(u64::try_from(offload).unwrap_or(u64::MAX))
    }
}

/// The async shell around [`Core`].
pub struct PolicyEngine {
    core: Core,
    lookups: Arc<dyn PolicyLookups>,
}

impl PolicyEngine {
    /// An engine doing real DNS/DORMS lookups.
    pub fn new(cfg: &PolicyConfig, static_map: StaticRelayMap) -> Result<Self, String> {
        cfg.validate()
            .map_err(|(key, problem)| format!("{key}: {problem}"))?;
        let lookups = NetLookups::new(cfg)?;
        Self::with_lookups(cfg, static_map, Arc::new(lookups))
    }

    /// An engine with injected lookups (tests, labs).
    pub fn with_lookups(
        cfg: &PolicyConfig,
        static_map: StaticRelayMap,
        lookups: Arc<dyn PolicyLookups>,
    ) -> Result<Self, String> {
        Ok(Self {
            core: Core::new(cfg, static_map, clock())?,
            lookups,
        })
    }

    /// Runs until `desired` closes: re-evaluates on every desired-set
    /// change, finished lookup and relay failure, at the next hold-down
    /// expiry or refresh, and every `recheck_interval_s`. Publishes only
    /// when the set changed.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<DesiredSet>>,
        mut failures: mpsc::UnboundedReceiver<RelayFailure>,
        out: watch::Sender<Arc<PolicySet>>,
    ) {
        let mut tasks: JoinSet<LookupDone> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Lookup> = HashMap::new();
        let mut failures_open = true;
        self.core.set_desired(desired.borrow_and_update().clone());
        loop {
            let now = clock();
            for lookup in self.core.take_lookups(now) {
                let lookups = self.lookups.clone();
                let handle = tasks.spawn(async move {
                    match lookup {
                        Lookup::Relays(source) => {
                            LookupDone::Relays(source, lookups.relays(source).await)
                        }
                        Lookup::Bitrate(sg) => LookupDone::Bitrate(sg, lookups.bitrate(sg).await),
                    }
                });
                running.insert(handle.id(), lookup);
            }
            let set = self.core.evaluate(now);
            out.send_if_modified(|current| {
                if **current == set {
                    false
                } else {
                    *current = Arc::new(set);
                    true
                }
            });
            let deadline = self.core.next_deadline(now);
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let set = desired.borrow_and_update().clone();
                    self.core.set_desired(set);
                }
                failure = failures.recv(), if failures_open => match failure {
                    Some(failure) => self.core.on_failure(failure, clock()),
                    None => failures_open = false,
                },
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    self.finished(done, &mut running);
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
            // Take everything else that is ready before evaluating once.
            while let Some(done) = tasks.try_join_next_with_id() {
                self.finished(done, &mut running);
            }
            while failures_open && let Ok(failure) = failures.try_recv() {
                self.core.on_failure(failure, clock());
            }
        }
        tasks.abort_all();
    }

    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, LookupDone), tokio::task::JoinError>,
        running: &mut HashMap<tokio::task::Id, Lookup>,
    ) {
        match done {
            Ok((id, result)) => {
                running.remove(&id);
                self.core.on_lookup(result, clock());
            }
            Err(error) => {
                if let Some(lookup) = running.remove(&error.id()) {
                    warn!(?lookup, "policy lookup task died: {error}");
                    self.core.on_lookup_lost(lookup, clock());
                }
            }
        }
    }
}

/// The engine's clock: tokio's (pausable in tests) as a std `Instant`.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests;
