//! The policy engine: for every wanted (S,G), which AMT relays may carry it
//! (static map, else DRIAD, RFC 8777) and whether it is admitted under the
//! bandwidth limit (CBACC, bitrates from DORMS).
//!
//! A sans-IO state machine in the style of the AMT gateway's `Tunnel`:
//! inputs are values ([`Engine::set_wanted`], [`Engine::on_lookup`],
//! [`Engine::on_relay_failure`]) with an explicit `now`; outputs are values
//! ([`Engine::poll_lookups`]: lookups to perform, [`Engine::evaluate`]: a
//! [`FlowPolicy`] per flow, [`Engine::next_wakeup`]: when to evaluate again
//! at the latest). It never performs I/O, never reads a clock and never
//! sleeps; the caller performs the lookups (see [`PolicyLookups`]) and
//! feeds their results back. A slow lookup for one source never delays
//! another: the flow shows [`RelayVerdict::Pending`] meanwhile.
//!
//! Rules:
//! * the static relay map overrides DRIAD: no DNS lookup for those sources;
//! * DRIAD candidates are ordered by precedence, randomly (seeded per
//!   source, so the order is stable between evaluations) within equal
//!   precedence; a [`RelayFailure`] holds that relay down for every source
//!   for a random `holddown_min..=holddown_max`, and the verdict moves on
//!   to the next candidate;
//! * a working relay is sticky: once a relay is first in a verdict it stays
//!   first while it is usable, even when a better one comes back from its
//!   hold-down or the DNS order changes (no needless tunnel moves);
//! * a failed DNS refresh keeps the last answer (stale) until DNS answers
//!   again; an NXDOMAIN/NODATA answer is believed;
//! * when every relay of a source has failed, DNS is asked again (at most
//!   every [`REQUERY_WHEN_ALL_FAILED`] after the last answer) instead of
//!   waiting for the TTL: the source's owner may have moved it;
//! * with a bandwidth limit, flows are admitted by [`crate::admission::admit`]
//!   with population = number of downstream interfaces. Flows whose
//!   bitrate is still being looked up, and flows that can never be
//!   ingested (type 0, no AMTRELAY record), are not counted against the
//!   limit.

mod decision;
mod lookups;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ingest_types::{AMT_PORT, SourceGroup};
use ingest_types::{LogBudget, shrink_when_sparse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, info_span, warn};

use crate::admission::{AdmissionState, BitrateOrigin, DEFAULT_SENDER_PRIORITY, FlowDemand, admit};
use crate::dorms::FlowBitrate;
use crate::driad::{
    DriadAnswer, DriadOutcome, HoldDownReason, HoldDownTracker, RelayAddress, SelectionOutcome,
    SkipReason, select_relays,
};
use crate::text::{admission_reason_text, candidate_text, time_of_day_text};

pub use decision::{
    CandidateView, FlowPolicy, PolicySet, RelayChoice, RelayFailure, RelaySource, RelayVerdict,
    StaticRelayMap, WantedFlow, WantedSet,
};
pub use lookups::{Lookup, LookupDone, LookupFuture, PolicyLookups};
#[cfg(feature = "net")]
pub use lookups::{NetLookups, NetLookupsConfig, NetLookupsError};

/// How often a flow's bitrate is asked again after a success. The DORMS
/// client's cache (HTTP Cache-Control) decides whether that is a request.
const BITRATE_RECHECK: Duration = Duration::from_secs(30);
/// ... and after a failure. Keep the DORMS client's failure cache shorter
/// than this, so each retry really asks.
pub const BITRATE_RETRY: Duration = Duration::from_secs(10);
/// Retry delay after a lookup task died (panicked).
const LOOKUP_CRASH_RETRY: Duration = Duration::from_secs(30);
/// When every relay of a source has failed, the cached AMTRELAY answer has
/// nothing left to try, so DNS is asked again before its TTL runs out (the
/// source's owner may have moved it to a new relay): this long after the
/// last answer at the earliest.
const REQUERY_WHEN_ALL_FAILED: Duration = Duration::from_secs(30);

/// The engine's settings, already checked (the daemon's `[policy]` section
/// is parsed and validated into this by its configuration code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Bandwidth limit in bit/s; `None`: every flow is admitted.
    pub limit: Option<u64>,
    /// Rate assumed for flows without DORMS metadata; `None`: such flows
    /// are blocked when there is a limit.
    pub default_bitrate: Option<u64>,
    /// Look bitrates up from DORMS.
    pub dorms: bool,
    /// Look relays up from DNS (DRIAD) for sources not in the static map.
    pub driad: bool,
    /// A failed relay is held down for a random time in `min..=max`.
    pub holddown_min: Duration,
    pub holddown_max: Duration,
    /// The engine wakes at least this often (decisions are re-evaluated
    /// only when an input changed or a hold-down ended).
    pub recheck: Duration,
    /// Seed of the random choices (order within a precedence, hold-down
    /// lengths, admission tie-breaks).
    pub seed: u64,
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

/// The sans-IO policy engine: feed it inputs and the time, take decisions
/// and lookups to perform.
pub struct Engine {
    settings: EngineConfig,
    static_map: StaticRelayMap,
    wanted: Arc<WantedSet>,
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
    /// An input changed since the last evaluation.
    dirty: bool,
    /// When the decisions change by time alone (a hold-down ends).
    decision_deadline: Option<Instant>,
    /// The earliest lookup due (None: none known; checked at once when
    /// `lookups_changed`).
    lookups_due_at: Option<Instant>,
    lookups_changed: bool,
    /// Keeps per-flow lines to a few per second.
    log: LogBudget,
}

impl Engine {
    /// A new engine at `now`; `wall` is the wall-clock time at `now`, used
    /// only to print times of day in reasons.
    pub fn new(
        settings: EngineConfig,
        static_map: StaticRelayMap,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let seed = settings.seed;
        Self {
            holddowns: HoldDownTracker::new(settings.holddown_min, settings.holddown_max),
            settings,
            static_map,
            wanted: Arc::new(WantedSet::default()),
            sources: HashMap::new(),
            rates: HashMap::new(),
            admission: AdmissionState::new(seed),
            admitted: BTreeSet::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            seed,
            anchor: (now, wall),
            last: PolicySet::new(),
            dirty: true,
            decision_deadline: None,
            lookups_due_at: None,
            lookups_changed: true,
            log: LogBudget::daemon_default(),
        }
    }

    /// A new wanted set: state of sources and flows no longer wanted is
    /// dropped (results of their running lookups are then ignored).
    pub fn set_wanted(&mut self, wanted: Arc<WantedSet>) {
        let sources: BTreeSet<IpAddr> = wanted.keys().map(|sg| sg.source).collect();
        self.sources.retain(|s, _| sources.contains(s));
        for source in sources {
            self.sources.entry(source).or_default();
        }
        self.rates.retain(|sg, _| wanted.contains_key(sg));
        for sg in wanted.keys() {
            self.rates.entry(*sg).or_default();
        }
        shrink_when_sparse(&mut self.sources);
        shrink_when_sparse(&mut self.rates);
        self.wanted = wanted;
        self.dirty = true;
        self.lookups_changed = true;
    }

    /// Lookups due at `now`, marked in flight: the caller performs them
    /// and feeds each result to [`Engine::on_lookup`].
    pub fn poll_lookups(&mut self, now: Instant) -> Vec<Lookup> {
        let mut out = Vec::new();
        if !self.lookups_changed && self.lookups_due_at.is_none_or(|t| t > now) {
            // Nothing became due: no scan of every source and flow.
            return out;
        }
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
        self.lookups_changed = false;
        self.lookups_due_at = self
            .sources
            .values()
            .filter(|e| !e.in_flight)
            .filter_map(|e| e.refresh_at)
            .chain(
                self.rates
                    .values()
                    .filter(|e| !e.in_flight)
                    .filter_map(|e| e.refresh_at),
            )
            .min();
        out
    }

    /// Whether [`Engine::evaluate`] would decide anything new at `now`: an
    /// input changed, or a hold-down ended. With nothing changing, nothing
    /// is re-evaluated (ten thousand idle flows cost no CPU).
    pub fn needs_evaluation(&self, now: Instant) -> bool {
        self.dirty || self.decision_deadline.is_some_and(|t| t <= now)
    }

    /// A lookup finished.
    pub fn on_lookup(&mut self, done: LookupDone, now: Instant) {
        self.dirty = true;
        self.lookups_changed = true;
        match done {
            LookupDone::Relays(source, outcome) => self.on_relays(source, outcome, now),
            LookupDone::Bitrate(sg, rate) => self.on_bitrate(sg, rate, now),
        }
    }

    /// A lookup task died without a result: retry later.
    pub fn on_lookup_lost(&mut self, lookup: Lookup, now: Instant) {
        self.dirty = true;
        self.lookups_changed = true;
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
                    if self.log.allow("AMTRELAY refresh failed", now) {
                        warn!(%source, %failure, "AMTRELAY refresh of {query_name} failed; keeping the last answer");
                    } else {
                        debug!(%source, %failure, "AMTRELAY refresh of {query_name} failed; keeping the last answer");
                    }
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
    pub fn on_relay_failure(&mut self, failure: RelayFailure, now: Instant) {
        self.dirty = true;
        self.lookups_changed = true;
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
            let until = self.wall(until);
            if self.log.allow("relay held down", now) {
                warn!(relay = %failure.relay, sg, reason = %failure.reason, "relay failed: held down until {until}");
            } else {
                debug!(relay = %failure.relay, sg, reason = %failure.reason, "relay failed: held down until {until}");
            }
        } else if self.log.allow("last relay failed", now) {
            warn!(
                relay = %failure.relay,
                sg,
                reason = %failure.reason,
                "relay failed, and it is the last relay left for its flows: its tunnel keeps retrying"
            );
        } else {
            debug!(relay = %failure.relay, sg, reason = %failure.reason, "the last relay of its flows failed");
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
            if self.log.allow("asking DNS again", now) {
                info!(
                    %source,
                    "every relay in the AMTRELAY answer for {query_name} failed: asking DNS again{when}"
                );
            } else {
                debug!(%source, "asking DNS again for {query_name}{when}");
            }
        }
    }

    /// When to evaluate again at the latest (next hold-down expiry, refresh
    /// or the periodic recheck).
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let mut next = now + self.settings.recheck;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t
                && t > now
                && t < next
            {
                next = t;
            }
        };
        consider(self.decision_deadline);
        consider(self.lookups_due_at);
        consider(self.log.next_summary());
        next
    }

    /// Decides every wanted flow at `now`; logs what changed since the last
    /// evaluation.
    pub fn evaluate(&mut self, now: Instant) -> PolicySet {
        self.dirty = false;
        for (cause, n) in self.log.take_summary(now) {
            info!(
                "{n} more \"{cause}\" lines in the last {} s (each at debug level)",
                self.log.window().as_secs()
            );
        }
        self.holddowns.prune(now);
        let wanted = self.wanted.clone();
        let sources: BTreeSet<IpAddr> = wanted.keys().map(|sg| sg.source).collect();
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

        // Built as plain values (admission below still edits them), then
        // shared: see the end.
        let mut set: BTreeMap<SourceGroup, FlowPolicy> = BTreeMap::new();
        let mut demands = Vec::new();
        for (sg, flow) in wanted.iter() {
            let population = u32::try_from(flow.interfaces.len())
                .unwrap_or(u32::MAX)
                .max(1);
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
                    interfaces: flow.interfaces.clone(),
                    held: flow.held,
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
        // A decision equal to the last one keeps its allocation: the engine,
        // the orchestrator's flows and the API all hold the same one, so
        // 10,000 flows cost one copy, and after a re-evaluation that
        // changes little only the changed decisions are new memory.
        let set: PolicySet = set
            .into_iter()
            .map(|(sg, flow)| match self.last.get(&sg) {
                Some(old) if **old == flow => (sg, Arc::clone(old)),
                _ => (sg, Arc::new(flow)),
            })
            .collect();
        self.log_changes(&set, now);
        self.last = set.clone();
        self.decision_deadline = self
            .admission
            .next_expiry(now)
            .into_iter()
            .chain(self.holddowns.active(now).map(|(_, hold)| hold.until))
            .min();
        set
    }

    fn log_changes(&mut self, set: &PolicySet, now: Instant) {
        for (sg, flow) in set {
            let span = info_span!("flow", %sg);
            let _enter = span.enter();
            match self.last.get(sg) {
                None => {
                    if self.log.allow("policy for a new flow", now) {
                        info!(
                            population = flow.population,
                            bitrate = %flow.bitrate_origin,
                            admitted = flow.admitted,
                            "policy: {}; {}",
                            flow.relays,
                            flow.admission_reason
                        )
                    } else {
                        debug!(
                            admitted = flow.admitted,
                            "policy: {}; {}", flow.relays, flow.admission_reason
                        )
                    }
                }
                Some(old) => {
                    if old.relays != flow.relays {
                        if self.log.allow("relays changed", now) {
                            info!("relays: {} (was {})", flow.relays, old.relays);
                        } else {
                            debug!("relays: {} (was {})", flow.relays, old.relays);
                        }
                    }
                    if old.admitted != flow.admitted {
                        if self.log.allow("admission changed", now) {
                            info!(
                                admitted = flow.admitted,
                                "admission: {}", flow.admission_reason
                            );
                        } else {
                            debug!(
                                admitted = flow.admitted,
                                "admission: {}", flow.admission_reason
                            );
                        }
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
        reason: &crate::admission::DecisionReason,
        bitrate: Option<u64>,
        offload: u128,
        held_until: Option<Instant>,
        limit: u64,
        error: Option<&str>,
    ) -> String {
        admission_reason_text(
            reason,
            bitrate,
            offload,
            held_until.map(|t| self.wall_time(t)),
            limit,
            error,
        )
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

    /// The wall-clock time of an `Instant` (fixed anchor, so text is stable).
    fn wall_time(&self, at: Instant) -> SystemTime {
        let (anchor, anchor_wall) = self.anchor;
        if at >= anchor {
            anchor_wall + (at - anchor)
        } else {
            anchor_wall - (anchor - at)
        }
    }

    /// Wall-clock text (UTC time of day) for an `Instant`.
    fn wall(&self, at: Instant) -> String {
        time_of_day_text(self.wall_time(at))
    }
}

fn due(never_answered: bool, refresh_at: Option<Instant>, now: Instant) -> bool {
    never_answered || refresh_at.is_none_or(|t| t <= now)
}
