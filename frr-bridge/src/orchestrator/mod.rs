//! The orchestrator: the policy engine's decisions become flows, tunnels
//! and routes.
//!
//! A pure core in the style of holo's `events.rs`: every input is an event
//! handed to a method with the time ([`Orchestrator::on_decisions`],
//! [`Orchestrator::on_tunnel_event`], [`Orchestrator::on_route_added`], ...),
//! and every effect on the world comes back as an [`Action`] for the shell
//! (`crate::pipeline`) to carry out: open or close an AMT tunnel, subscribe
//! or leave an (S,G) on it, add or remove a source route in FRR's
//! namespace, report a relay failure to the policy engine. It never does
//! I/O, never reads a clock and never awaits; the shell feeds the outcome
//! of an action (a failed open, a route result) back as another event.
//!
//! One state struct per thing: [`FlowState`] per wanted (S,G),
//! [`RelayTunnel`] per relay, a reference count per routed source.
//!
//! What happens to one flow:
//! 1. A decision admits it with a relay: the relay's tunnel is opened (or
//!    reused, cancelling its linger) and subscribes the (S,G); the flow
//!    waits for the tunnel.
//! 2. The tunnel is up (a valid Membership Query arrived): the flow's
//!    source is routed via the sidecar's PIM neighbour on amt0, so pimd's
//!    RPF check points at amt0. Once the route is in, the flow forwards.
//! 3. The relay fails (lost, refused, no data): the failure goes to the
//!    policy engine, whose next decision may move the flow to another relay
//!    (leave the old tunnel, join the new one). The route stays while the
//!    flow waits, so pimd's state survives a relay that comes back.
//! 4. The join goes: the (S,G) is left, the route released with the last
//!    flow of its source, and a tunnel without channels lingers, then
//!    closes (leaves, Teardown).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amt_gateway::{Family, LossReason, TunnelEvent};
use ingest_policy::engine::{FlowPolicy, PolicySet, RelayChoice, RelayFailure, RelayVerdict};
use ingest_types::LogBudget;
use ingest_types::SourceGroup;
use tracing::{debug, info, info_span, warn};

/// A line through the log budget: per-flow and per-tunnel lines beyond a
/// few per second and cause go to debug, and a summary says how many.
macro_rules! budgeted {
    ($self:ident, $now:expr, $cause:expr, $level:ident!($($arg:tt)+)) => {
        if $self.log.allow($cause, $now) {
            $level!($($arg)+)
        } else {
            debug!($($arg)+)
        }
    };
}

/// Settings of the orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Lab mode: route every wanted source without a tunnel.
    pub serve_all: bool,
    /// How long a tunnel without channels stays open.
    pub linger: Duration,
    /// Relay racing (RFC 8777 §3.2, Happy Eyeballs): how long a relay
    /// attempt gets before the next candidate is started too.
    pub attempt_delay: Duration,
}

/// What the sidecar is doing about one wanted (S,G). The strings are the
/// ones `ingestctl show joins/flows` and the API show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPhase {
    /// Data arrives from the relay (within the last few seconds) and the
    /// source is routed into the TUN: packets reach FRR.
    Forwarding,
    /// Tunnel up, route in, the membership report sent: waiting for the
    /// relay's data.
    Subscribed,
    /// Subscribed, but the relay's data has not come (no data since the
    /// report) or has stopped.
    NoData,
    /// Subscribed on a tunnel that is not (or no longer) up.
    WaitingTunnel,
    /// Several relays are being tried; the first to answer gets the flow.
    Racing,
    /// Nothing can carry it (no relay known, or blocked by policy).
    NotServed,
    /// Opening the tunnel or installing the route failed; retried.
    Error,
}

impl FlowPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            FlowPhase::Forwarding => "forwarding",
            FlowPhase::Subscribed => "subscribed",
            FlowPhase::NoData => "no-data",
            FlowPhase::WaitingTunnel => "waiting-tunnel",
            FlowPhase::Racing => "racing",
            FlowPhase::NotServed => "not-served",
            FlowPhase::Error => "error",
        }
    }
}

impl fmt::Display for FlowPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One wanted (S,G).
#[derive(Debug, Clone)]
pub struct FlowState {
    pub sg: SourceGroup,
    /// Downstream interfaces with the (S,G) joined (population = len).
    pub interfaces: Vec<String>,
    /// Kept only through the join source's restart grace period.
    pub held: bool,
    pub since: Instant,
    pub phase: FlowPhase,
    pub reason: String,
    /// Relay whose tunnel carries (or will carry) the flow.
    pub relay: Option<SocketAddr>,
    /// Where the relay came from ("static map", "DRIAD", ...).
    pub relay_origin: String,
    /// Whether this flow holds a reference on its source's route.
    pub routed: bool,
    /// The policy engine's latest decision (None in serve_all_sources
    /// mode).
    pub policy: Option<Arc<FlowPolicy>>,
    /// What the tunnel says of the flow's data.
    pub data: DataState,
    /// The relay race in progress, if any.
    pub race: Option<Race>,
    /// How the last race ended.
    pub race_result: Option<RaceResult>,
}

/// Whether the relay's data for a flow arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataState {
    /// Nothing heard yet (just subscribed, or moved to another relay).
    #[default]
    Waiting,
    Flowing,
    /// It came, then stopped.
    Stopped,
    /// None since the report, for the tunnel's no-data timeout.
    NeverCame,
}

/// One relay race (RFC 8777 §3.2): candidates in policy order, started one
/// every `attempt_delay` until one answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Race {
    pub began: Instant,
    pub attempts: Vec<RaceAttempt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaceAttempt {
    pub choice: RelayChoice,
    /// When its handshake started (None: not yet).
    pub started: Option<Instant>,
    /// Why it failed during the race (refused, went down, unreachable).
    pub failure: Option<String>,
    /// Skipped: its relay was waiting out an open backoff (another flow's
    /// failure) when its turn came, so it was never tried in this race.
    pub skipped: bool,
}

impl Race {
    fn started(&self) -> impl Iterator<Item = &RaceAttempt> {
        self.attempts.iter().filter(|a| a.started.is_some())
    }

    /// When the next candidate is due: `delay` after the last start.
    fn next_start(&self, delay: Duration) -> Option<Instant> {
        if !self.attempts.iter().any(|a| a.started.is_none()) {
            return None;
        }
        let last = self.started().filter_map(|a| a.started).max()?;
        Some(last + delay)
    }

    /// The race as people read it, at `now`.
    pub fn text(&self, now: Instant) -> String {
        let tried: Vec<String> = self
            .started()
            .map(|a| {
                let at = a.started.map_or(0, |t| (t - self.began).as_millis());
                match &a.failure {
                    Some(why) => format!("{} (+{at} ms, failed: {why})", a.choice.relay),
                    None => format!("{} (+{at} ms)", a.choice.relay),
                }
            })
            .collect();
        format!(
            "racing {} of {} relays for {} ms: {}",
            tried.len(),
            self.attempts.len(),
            (now.saturating_duration_since(self.began)).as_millis(),
            tried.join(", ")
        )
    }
}

/// How a race ended: the winner, its position in the policy's order
/// (1-based), and how long the race took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaceResult {
    pub winner: SocketAddr,
    pub position: usize,
    pub candidates: usize,
    pub took: Duration,
}

impl fmt::Display for RaceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "won by {} ({} of {}) in {} ms",
            self.winner,
            self.position,
            self.candidates,
            self.took.as_millis()
        )
    }
}

/// A change to one flow, for `WatchJoins`.
#[derive(Debug, Clone)]
pub enum JoinChange {
    Added(FlowState),
    Changed(FlowState),
    Removed(FlowState),
}

/// What the tunnel's protocol last said, as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelStatus {
    /// Relay Discovery sent.
    Discovering,
    /// Request sent (to the advertised relay, when discovery named one).
    Requesting { advertised: Option<SocketAddr> },
    /// A valid Query arrived.
    Up,
    /// The relay stopped answering; the tunnel retries with backoff.
    Lost(LossReason),
    /// The relay refused new gateways (L flag).
    Refused { relay: SocketAddr },
}

impl fmt::Display for TunnelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelStatus::Discovering => f.write_str("discovering"),
            TunnelStatus::Requesting { advertised: None } => f.write_str("requesting"),
            TunnelStatus::Requesting {
                advertised: Some(relay),
            } => write!(f, "requesting (relay {relay})"),
            TunnelStatus::Up => f.write_str("up"),
            TunnelStatus::Lost(reason) => write!(f, "relay lost ({reason:?}); retrying"),
            TunnelStatus::Refused { relay } => write!(f, "refused by relay {relay} (L flag)"),
        }
    }
}

/// One AMT tunnel (one per relay) as the orchestrator sees it.
#[derive(Debug, Clone)]
pub struct RelayTunnel {
    pub relay: SocketAddr,
    pub skip_discovery: bool,
    pub channels: BTreeSet<SourceGroup>,
    /// Flows racing on this tunnel (handshake only, nothing subscribed).
    pub racers: BTreeSet<SourceGroup>,
    /// A valid Query arrived and the relay is answering, per data family
    /// (IGMP for IPv4 channels, MLD for IPv6 ones).
    pub up_v4: bool,
    pub up_v6: bool,
    pub status: TunnelStatus,
    /// Set when the last channel left: closed when this passes.
    pub linger_until: Option<Instant>,
    pub opened: Instant,
}

impl RelayTunnel {
    /// The relay answers for `family`'s channels.
    pub fn is_up(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.up_v4,
            Family::V6 => self.up_v6,
        }
    }

    /// Up for any family.
    pub fn up(&self) -> bool {
        self.up_v4 || self.up_v6
    }

    /// Nothing uses it: neither a channel nor a race.
    fn unused(&self) -> bool {
        self.channels.is_empty() && self.racers.is_empty()
    }

    /// The state people see: "lingering" while it waits to close, else
    /// what the protocol last said.
    pub fn state_text(&self) -> String {
        if self.linger_until.is_some() {
            "lingering".into()
        } else {
            self.status.to_string()
        }
    }
}

/// Work for the shell. Carried out in order; outcomes that matter come
/// back as events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a tunnel to `relay`; on failure call
    /// [`Orchestrator::on_tunnel_open_failed`].
    OpenTunnel {
        relay: SocketAddr,
        skip_discovery: bool,
    },
    /// Leave everything, send Teardown, end the tunnel.
    CloseTunnel {
        relay: SocketAddr,
    },
    /// Start the relay handshake for `family` without joining anything
    /// (a relay race attempt).
    Connect {
        relay: SocketAddr,
        family: Family,
    },
    Subscribe {
        relay: SocketAddr,
        sg: SourceGroup,
    },
    Unsubscribe {
        relay: SocketAddr,
        sg: SourceGroup,
    },
    /// Route `source` into the TUN; report with
    /// [`Orchestrator::on_route_added`].
    AddRoute {
        source: IpAddr,
    },
    /// Remove the route of `source`; report with
    /// [`Orchestrator::on_route_removed`].
    RemoveRoute {
        source: IpAddr,
    },
    /// Hand the failure to the policy engine.
    ReportRelayFailure(RelayFailure),
    /// Tell API watchers.
    Announce(Box<JoinChange>),
}

impl Action {
    pub(crate) fn announce(change: JoinChange) -> Action {
        Action::Announce(Box::new(change))
    }
}

// Announce carries a FlowState (Instants, a decision): compare by kind and
// (S,G), which is what tests assert on.
impl PartialEq for JoinChange {
    fn eq(&self, other: &Self) -> bool {
        let key = |c: &JoinChange| match c {
            JoinChange::Added(f) => (0, f.sg, f.phase),
            JoinChange::Changed(f) => (1, f.sg, f.phase),
            JoinChange::Removed(f) => (2, f.sg, f.phase),
        };
        key(self) == key(other)
    }
}
impl Eq for JoinChange {}

/// Why the shell could not add or remove a source route, as the core sees
/// it: the kernel's errno when there was one (17, EEXIST: another route is
/// in the way) and the text that goes into the flow's reason and the log.
/// Plain data, so the core's tests make one without a netlink socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct RouteError {
    pub errno: Option<i32>,
    pub text: String,
}

impl From<std::io::Error> for RouteError {
    fn from(error: std::io::Error) -> Self {
        RouteError {
            errno: error.raw_os_error(),
            text: error.to_string(),
        }
    }
}

/// Counters the orchestrator keeps (the shell keeps the I/O ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrchestratorCounters {
    pub relay_failures_reported: u64,
    /// Relay races run, and how many each candidate position won (index
    /// 0: the first candidate; the last slot counts the rest).
    pub races: u64,
    pub race_winners: [u64; RACE_POSITIONS],
    pub flows_moved: u64,
    pub tunnels_closed: u64,
    pub route_errors: u64,
}

/// Race winners are counted by position up to this many (the last slot
/// counts positions beyond).
pub const RACE_POSITIONS: usize = 8;

/// A source's route and the flows using it.
#[derive(Debug, Clone, Default)]
struct SourceRoute {
    users: usize,
    /// The shell confirmed the route is in.
    installed: bool,
}

/// Why a flow the policy does not serve is not served, for people.
fn not_served_reason(policy: &FlowPolicy) -> String {
    match (&policy.relays, policy.admitted) {
        (RelayVerdict::NoRelay(reason), _) => reason.clone(),
        (_, false) => policy.admission_reason.clone(),
        (RelayVerdict::Pending, true) => "looking up the source's AMT relay (DRIAD)".into(),
        (RelayVerdict::Relays(_), true) => "no usable relay".into(),
    }
}

/// The orchestrator core. See the module documentation.
#[derive(Debug)]
pub struct Orchestrator {
    cfg: OrchestratorConfig,
    flows: BTreeMap<SourceGroup, FlowState>,
    tunnels: BTreeMap<SocketAddr, RelayTunnel>,
    routes: BTreeMap<IpAddr, SourceRoute>,
    /// The latest decisions (re-applied when a flow must be served again).
    decisions: Arc<PolicySet>,
    counters: OrchestratorCounters,
    /// Keeps per-flow lines to a few per second and cause.
    log: LogBudget,
    /// Relays whose tunnel could not be opened: when their flows are tried
    /// again. Without it, flows in error were retried at every timeout (a
    /// race elsewhere makes that every 250 ms): an unreachable relay was
    /// reopened several times a second.
    open_backoff: BTreeMap<SocketAddr, OpenBackoff>,
}

/// Retry schedule of the flows of a relay whose tunnel cannot be opened.
#[derive(Debug, Clone, Copy)]
struct OpenBackoff {
    /// The last wait (doubles per failure, from [`OPEN_RETRY_MIN`] to
    /// [`OPEN_RETRY_MAX`]).
    delay: Duration,
    /// When the relay's flows are next tried; None once done.
    retry_at: Option<Instant>,
}

/// First wait before a relay whose tunnel could not be opened is tried
/// again, and the longest.
pub const OPEN_RETRY_MIN: Duration = Duration::from_secs(1);
pub const OPEN_RETRY_MAX: Duration = Duration::from_secs(30);

impl Orchestrator {
    pub fn new(cfg: OrchestratorConfig) -> Self {
        Self {
            cfg,
            flows: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            routes: BTreeMap::new(),
            decisions: Arc::new(PolicySet::new()),
            counters: OrchestratorCounters::default(),
            log: LogBudget::daemon_default(),
            open_backoff: BTreeMap::new(),
        }
    }

    pub fn flows(&self) -> &BTreeMap<SourceGroup, FlowState> {
        &self.flows
    }

    pub fn tunnels(&self) -> &BTreeMap<SocketAddr, RelayTunnel> {
        &self.tunnels
    }

    /// Sources whose route is installed or being installed.
    pub fn routed_sources(&self) -> usize {
        self.routes.len()
    }

    pub fn counters(&self) -> &OrchestratorCounters {
        &self.counters
    }

    // ---- events -------------------------------------------------------

    /// New decisions from the policy engine: flows appear, change, move to
    /// another relay or go.
    pub fn on_decisions(&mut self, decisions: Arc<PolicySet>, now: Instant) -> Vec<Action> {
        self.decisions = decisions;
        let decisions = self.decisions.clone();
        let mut out = Vec::new();
        let gone: Vec<SourceGroup> = self
            .flows
            .keys()
            .filter(|sg| !decisions.contains_key(sg))
            .copied()
            .collect();
        for sg in gone {
            if let Some(mut flow) = self.flows.remove(&sg) {
                let _span = info_span!("flow", %sg).entered();
                self.unserve(&mut flow, now, &mut out);
                budgeted!(self, now, "join gone", info!("join gone: flow removed"));
                out.push(Action::announce(JoinChange::Removed(flow)));
            }
        }
        for (sg, decision) in decisions.iter() {
            let _span = info_span!("flow", %sg).entered();
            match self.flows.remove(sg) {
                Some(mut flow) => {
                    let mut changed = false;
                    if flow.interfaces != decision.interfaces {
                        flow.interfaces = decision.interfaces.clone();
                        budgeted!(
                            self,
                            now,
                            "downstream interfaces changed",
                            info!(
                                population = flow.interfaces.len(),
                                "downstream interfaces changed: {:?}", flow.interfaces
                            )
                        );
                        changed = true;
                    }
                    if flow.held != decision.held {
                        flow.held = decision.held;
                        changed = true;
                    }
                    changed |= self.reconcile(&mut flow, now, &mut out);
                    if changed {
                        out.push(Action::announce(JoinChange::Changed(flow.clone())));
                    }
                    self.flows.insert(*sg, flow);
                }
                None => {
                    let mut flow = FlowState {
                        sg: *sg,
                        interfaces: decision.interfaces.clone(),
                        held: decision.held,
                        since: now,
                        phase: FlowPhase::NotServed,
                        reason: String::new(),
                        relay: None,
                        relay_origin: String::new(),
                        routed: false,
                        policy: None,
                        data: DataState::Waiting,
                        race: None,
                        race_result: None,
                    };
                    self.serve(&mut flow, now, &mut out);
                    budgeted!(
                        self,
                        now,
                        "new join",
                        info!(
                            population = flow.interfaces.len(),
                            phase = flow.phase.as_str(),
                            "new join: {}",
                            flow.reason
                        )
                    );
                    out.push(Action::announce(JoinChange::Added(flow.clone())));
                    self.flows.insert(*sg, flow);
                }
            }
        }
        out
    }

    /// An event of the tunnel to `relay`.
    pub fn on_tunnel_event(
        &mut self,
        relay: SocketAddr,
        event: &TunnelEvent,
        now: Instant,
    ) -> Vec<Action> {
        let _span = info_span!("relay", %relay).entered();
        let mut out = Vec::new();
        let Some(tunnel) = self.tunnels.get_mut(&relay) else {
            debug!("event for a tunnel no longer tracked: {event:?}");
            return out;
        };
        // (the family now up, the flows' reason when it went down)
        let (up, down_reason) = match event {
            TunnelEvent::RelayDiscovered { relay: advertised } => {
                budgeted!(
                    self,
                    now,
                    "relay discovered",
                    info!(%advertised, "relay discovered")
                );
                tunnel.status = TunnelStatus::Requesting {
                    advertised: Some(*advertised),
                };
                return out;
            }
            TunnelEvent::Up { relay: r, family } => {
                self.open_backoff.remove(&relay);
                budgeted!(
                    self,
                    now,
                    "tunnel up",
                    info!(relay_address = %r, ?family, "tunnel up")
                );
                tunnel.status = TunnelStatus::Up;
                match family {
                    Family::V4 => tunnel.up_v4 = true,
                    Family::V6 => tunnel.up_v6 = true,
                }
                (Some(*family), None)
            }
            TunnelEvent::RelayLost { reason } => {
                budgeted!(
                    self,
                    now,
                    "relay lost",
                    warn!(?reason, "relay lost; the tunnel retries with backoff")
                );
                tunnel.status = TunnelStatus::Lost(*reason);
                (None, Some(tunnel.status.to_string()))
            }
            TunnelEvent::RelayRefused { relay: r } => {
                budgeted!(
                    self,
                    now,
                    "relay refused",
                    warn!(refusing = %r, "relay refused new gateways (L flag); held down")
                );
                tunnel.status = TunnelStatus::Refused { relay: *r };
                (None, Some(tunnel.status.to_string()))
            }
            TunnelEvent::GatewayAddressChanged { old, new } => {
                budgeted!(
                    self,
                    now,
                    "gateway address changed",
                    info!(%old, %new, "relay sees us at a new address (NAT rebinding)")
                );
                return out;
            }
            TunnelEvent::NoData { sg } => {
                let sg = *sg;
                budgeted!(
                    self,
                    now,
                    "no data since subscribing",
                    warn!(%sg, "no data from the relay since subscribing")
                );
                self.set_data(relay, sg, DataState::NeverCame, &mut out);
                self.report_failure(relay, &[sg], "no data (RFC 8777 3.3.3)", &mut out);
                return out;
            }
            TunnelEvent::DataFlowing { sg } => {
                self.set_data(relay, *sg, DataState::Flowing, &mut out);
                return out;
            }
            TunnelEvent::DataStopped { sg } => {
                budgeted!(
                    self,
                    now,
                    "data stopped",
                    info!(sg = %sg, "the relay's data stopped")
                );
                self.set_data(relay, *sg, DataState::Stopped, &mut out);
                return out;
            }
            TunnelEvent::Closed => {
                if tunnel.unused() {
                    self.tunnels.remove(&relay);
                }
                return out;
            }
        };
        if down_reason.is_some() {
            tunnel.up_v4 = false;
            tunnel.up_v6 = false;
        }
        let channels: Vec<SourceGroup> = tunnel.channels.iter().copied().collect();
        let racers: Vec<SourceGroup> = tunnel.racers.iter().copied().collect();
        if let Some(reason) = &down_reason {
            let involved: Vec<SourceGroup> = channels.iter().chain(&racers).copied().collect();
            self.report_failure(relay, &involved, reason, &mut out);
        }
        for sg in channels {
            let Some(mut flow) = self.flows.remove(&sg) else {
                continue;
            };
            let before = (flow.phase, flow.reason.clone());
            if up == Some(Family::of(sg.group)) {
                self.make_forwarding(&mut flow, &mut out);
            } else if let Some(reason) = &down_reason {
                // Keep the route: when the relay answers again, pimd's
                // forwarding state is still in place.
                flow.phase = FlowPhase::WaitingTunnel;
                flow.reason.clone_from(reason);
            }
            if (flow.phase, flow.reason.clone()) != before {
                out.push(Action::announce(JoinChange::Changed(flow.clone())));
            }
            self.flows.insert(sg, flow);
        }
        for sg in racers {
            let Some(mut flow) = self.flows.remove(&sg) else {
                continue;
            };
            if up == Some(Family::of(sg.group)) {
                self.win_race(&mut flow, relay, now, &mut out);
            } else if let Some(reason) = &down_reason {
                // This attempt failed: the next candidate starts at once.
                mark_attempt_failed(&mut flow, relay, reason);
                self.advance_race(&mut flow, now, true, &mut out);
            }
            out.push(Action::announce(JoinChange::Changed(flow.clone())));
            self.flows.insert(sg, flow);
        }
        out
    }

    /// The tunnel to `relay` could not be opened (no socket): its flows
    /// are in error and retried by [`Orchestrator::on_timeout`].
    pub fn on_tunnel_open_failed(
        &mut self,
        relay: SocketAddr,
        error: &str,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(tunnel) = self.tunnels.remove(&relay) else {
            return out;
        };
        let delay = self
            .open_backoff
            .get(&relay)
            .map_or(OPEN_RETRY_MIN, |b| (b.delay * 2).min(OPEN_RETRY_MAX));
        self.open_backoff.insert(
            relay,
            OpenBackoff {
                delay,
                retry_at: Some(now + delay),
            },
        );
        budgeted!(
            self,
            now,
            "cannot open a tunnel",
            warn!(%relay, retry_in = ?delay, "{error}")
        );
        let reason = format!("cannot open a tunnel to relay {relay}: {error}");
        // The policy holds the relay down where a flow has another
        // candidate (an IPv6 relay from a host without IPv6 routes is
        // never going to work; the next relay might).
        let involved: Vec<SourceGroup> = tunnel
            .channels
            .iter()
            .chain(&tunnel.racers)
            .copied()
            .collect();
        self.report_failure(relay, &involved, &reason, &mut out);
        for sg in tunnel.channels {
            let Some(flow) = self.flows.get_mut(&sg) else {
                continue;
            };
            flow.phase = FlowPhase::Error;
            flow.reason.clone_from(&reason);
            out.push(Action::announce(JoinChange::Changed(flow.clone())));
        }
        // A race attempt that cannot even open a socket has failed: the
        // next candidate starts at once.
        for sg in tunnel.racers {
            let Some(mut flow) = self.flows.remove(&sg) else {
                continue;
            };
            mark_attempt_failed(&mut flow, relay, error);
            self.advance_race(&mut flow, now, true, &mut out);
            out.push(Action::announce(JoinChange::Changed(flow.clone())));
            self.flows.insert(sg, flow);
        }
        out
    }

    /// The task of the tunnel to `relay` ended without being closed: open
    /// it again with its channels.
    pub fn on_tunnel_task_ended(&mut self, relay: SocketAddr, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(old) = self.tunnels.remove(&relay) else {
            return out;
        };
        if old.unused() {
            return out;
        }
        budgeted!(
            self,
            now,
            "tunnel task ended",
            warn!(%relay, "tunnel task ended unexpectedly; reopening")
        );
        let mut tunnel = Self::new_tunnel(relay, old.skip_discovery, now);
        out.push(Action::OpenTunnel {
            relay,
            skip_discovery: old.skip_discovery,
        });
        for sg in &old.channels {
            out.push(Action::Subscribe { relay, sg: *sg });
        }
        let families: BTreeSet<Family> = old.racers.iter().map(|sg| Family::of(sg.group)).collect();
        for family in families {
            out.push(Action::Connect { relay, family });
        }
        tunnel.channels = old.channels;
        tunnel.racers = old.racers;
        self.tunnels.insert(relay, tunnel);
        out
    }

    /// The shell added (or failed to add) the route of `source`.
    pub fn on_route_added(
        &mut self,
        source: IpAddr,
        result: Result<(), RouteError>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(route) = self.routes.get_mut(&source) else {
            // Every flow of the source went while the route was being
            // added: take it away again.
            if result.is_ok() {
                out.push(Action::RemoveRoute { source });
            }
            return out;
        };
        let users: Vec<SourceGroup> = self
            .flows
            .values()
            .filter(|f| f.routed && f.sg.source == source)
            .map(|f| f.sg)
            .collect();
        match result {
            Ok(()) => {
                route.installed = true;
                budgeted!(
                    self,
                    now,
                    "source routed",
                    info!(%source, "source routed into the TUN")
                );
                for sg in users {
                    let Some(mut flow) = self.flows.remove(&sg) else {
                        continue;
                    };
                    if self.carrying(&flow) {
                        (flow.phase, flow.reason) = self.routed_phase(&flow);
                        out.push(Action::announce(JoinChange::Changed(flow.clone())));
                    }
                    self.flows.insert(sg, flow);
                }
            }
            Err(error) => {
                self.routes.remove(&source);
                self.counters.route_errors += 1;
                for sg in users {
                    let Some(flow) = self.flows.get_mut(&sg) else {
                        continue;
                    };
                    flow.routed = false;
                    flow.phase = FlowPhase::Error;
                    flow.reason = format!("cannot add route for {source}: {error}");
                    out.push(Action::announce(JoinChange::Changed(flow.clone())));
                }
            }
        }
        out
    }

    /// The shell removed (or failed to remove) the route of `source`.
    pub fn on_route_removed(
        &mut self,
        source: IpAddr,
        result: Result<(), RouteError>,
        now: Instant,
    ) {
        match result {
            Ok(()) => budgeted!(
                self,
                now,
                "route removed",
                info!(%source, "last flow of source gone: route removed")
            ),
            Err(error) => {
                self.counters.route_errors += 1;
                budgeted!(
                    self,
                    now,
                    "cannot remove a route",
                    warn!(%source, "cannot remove route: {error}")
                );
            }
        }
    }

    /// Periodic work: close tunnels whose linger ran out, retry flows in
    /// error.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for (cause, n) in self.log.take_summary(now) {
            info!(
                "{n} more \"{cause}\" lines in the last {} s (each at debug level)",
                self.log.window().as_secs()
            );
        }
        let expired: Vec<SocketAddr> = self
            .tunnels
            .values()
            .filter(|t| t.unused() && t.linger_until.is_some_and(|u| u <= now))
            .map(|t| t.relay)
            .collect();
        for relay in expired {
            self.tunnels.remove(&relay);
            budgeted!(
                self,
                now,
                "tunnel closed",
                info!(%relay, "linger over: closing the tunnel (leave + Teardown)")
            );
            self.counters.tunnels_closed += 1;
            out.push(Action::CloseTunnel { relay });
        }
        let delay = self.cfg.attempt_delay;
        let due: Vec<SourceGroup> = self
            .flows
            .values()
            .filter(|f| {
                f.race
                    .as_ref()
                    .and_then(|r| r.next_start(delay))
                    .is_some_and(|t| t <= now)
            })
            .map(|f| f.sg)
            .collect();
        for sg in due {
            if let Some(mut flow) = self.flows.remove(&sg) {
                self.advance_race(&mut flow, now, false, &mut out);
                out.push(Action::announce(JoinChange::Changed(flow.clone())));
                self.flows.insert(sg, flow);
            }
        }
        let backoff = &self.open_backoff;
        let failed: Vec<SourceGroup> = self
            .flows
            .values()
            .filter(|f| f.phase == FlowPhase::Error)
            .filter(|f| {
                f.relay
                    .and_then(|r| backoff.get(&r))
                    .and_then(|b| b.retry_at)
                    .is_none_or(|at| at <= now)
            })
            .map(|f| f.sg)
            .collect();
        if !self.open_backoff.is_empty() {
            for b in self.open_backoff.values_mut() {
                if b.retry_at.is_some_and(|at| at <= now) {
                    b.retry_at = None;
                }
            }
            // Forget relays no flow uses any more (a relay used again
            // keeps its doubled wait until its tunnel comes up).
            let used: BTreeSet<SocketAddr> = self.flows.values().filter_map(|f| f.relay).collect();
            self.open_backoff
                .retain(|relay, b| b.retry_at.is_some() || used.contains(relay));
        }
        for sg in failed {
            if let Some(mut flow) = self.flows.remove(&sg) {
                self.serve(&mut flow, now, &mut out);
                if flow.phase != FlowPhase::Error {
                    out.push(Action::announce(JoinChange::Changed(flow.clone())));
                }
                self.flows.insert(sg, flow);
            }
        }
        out
    }

    /// How long `relay` still waits before its tunnel is opened again,
    /// when an open failed and no tunnel to it exists.
    fn open_blocked(&self, relay: SocketAddr, now: Instant) -> Option<Duration> {
        if self.tunnels.contains_key(&relay) {
            return None;
        }
        let at = self.open_backoff.get(&relay)?.retry_at?;
        (at > now).then(|| at - now)
    }

    /// When [`Orchestrator::on_timeout`] has work next: a race's next
    /// attempt, a linger's end, the retry of a relay that could not be
    /// opened (other flows in error are retried on the shell's regular
    /// tick).
    pub fn next_timeout(&self) -> Option<Instant> {
        let delay = self.cfg.attempt_delay;
        let races = self
            .flows
            .values()
            .filter_map(|f| f.race.as_ref().and_then(|r| r.next_start(delay)));
        let lingers = self.tunnels.values().filter_map(|t| t.linger_until);
        let retries = self.open_backoff.values().filter_map(|b| b.retry_at);
        races.chain(lingers).chain(retries).min()
    }

    /// Stop: every route removed and every tunnel closed. The state is
    /// empty afterwards.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut out: Vec<Action> = self
            .routes
            .iter()
            .filter(|(_, r)| r.installed)
            .map(|(source, _)| Action::RemoveRoute { source: *source })
            .collect();
        out.extend(
            self.tunnels
                .keys()
                .map(|relay| Action::CloseTunnel { relay: *relay }),
        );
        self.routes.clear();
        self.tunnels.clear();
        for flow in self.flows.values_mut() {
            flow.routed = false;
        }
        out
    }

    // ---- the flow state machine ---------------------------------------

    fn new_tunnel(relay: SocketAddr, skip_discovery: bool, now: Instant) -> RelayTunnel {
        RelayTunnel {
            relay,
            skip_discovery,
            channels: BTreeSet::new(),
            racers: BTreeSet::new(),
            up_v4: false,
            up_v6: false,
            status: if skip_discovery {
                TunnelStatus::Requesting { advertised: None }
            } else {
                TunnelStatus::Discovering
            },
            linger_until: None,
            opened: now,
        }
    }

    /// The tunnel to `choice`'s relay, opened when there is none; a
    /// lingering one is kept.
    fn tunnel_for(
        &mut self,
        choice: &RelayChoice,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> &mut RelayTunnel {
        let relay = choice.relay;
        if !self.tunnels.contains_key(&relay) {
            budgeted!(
                self,
                now,
                "tunnel opened",
                info!(%relay, skip_discovery = choice.skip_discovery, "opening an AMT tunnel")
            );
        }
        let tunnel = self.tunnels.entry(relay).or_insert_with(|| {
            out.push(Action::OpenTunnel {
                relay,
                skip_discovery: choice.skip_discovery,
            });
            Self::new_tunnel(relay, choice.skip_discovery, now)
        });
        if tunnel.linger_until.take().is_some() {
            budgeted!(
                self,
                now,
                "tunnel reused",
                info!(%relay, "tunnel reused before its linger ran out")
            );
        }
        tunnel
    }

    /// Linger a tunnel nothing uses any more.
    fn linger_if_unused(&mut self, relay: SocketAddr, now: Instant) {
        let linger = self.cfg.linger;
        if let Some(tunnel) = self.tunnels.get_mut(&relay)
            && tunnel.unused()
            && tunnel.linger_until.is_none()
        {
            tunnel.linger_until = Some(now + linger);
            budgeted!(
                self,
                now,
                "tunnel lingering",
                info!(%relay, linger_s = linger.as_secs(), "nothing uses the tunnel any more; closing after linger")
            );
        }
    }

    /// Whether the flow's carrier is ready for it to forward: its tunnel is
    /// up for its family, or no tunnel is needed.
    fn carrying(&self, flow: &FlowState) -> bool {
        if self.cfg.serve_all {
            return true;
        }
        flow.relay
            .and_then(|r| self.tunnels.get(&r))
            .is_some_and(|t| t.is_up(Family::of(flow.sg.group)) && t.channels.contains(&flow.sg))
    }

    /// Phase and reason of a flow whose route is in: by what its tunnel
    /// says of the data.
    fn routed_phase(&self, flow: &FlowState) -> (FlowPhase, String) {
        let relay = flow.relay.map_or_else(String::new, |r| r.to_string());
        match (self.cfg.serve_all, flow.data) {
            (true, _) | (false, DataState::Flowing) => {
                (FlowPhase::Forwarding, self.forwarding_reason(flow))
            }
            (false, DataState::Waiting) => (
                FlowPhase::Subscribed,
                format!("subscribed at relay {relay}; waiting for its data"),
            ),
            (false, DataState::Stopped) => (
                FlowPhase::NoData,
                format!("the data from relay {relay} stopped"),
            ),
            (false, DataState::NeverCame) => (
                FlowPhase::NoData,
                format!("relay {relay} has sent no data since the subscription"),
            ),
        }
    }

    fn forwarding_reason(&self, flow: &FlowState) -> String {
        match flow.relay {
            Some(relay) if !self.cfg.serve_all => format!("data from relay {relay}"),
            _ => "serve_all_sources: routed without a tunnel".into(),
        }
    }

    /// The tunnel to `relay` says `state` of `sg`'s data.
    fn set_data(
        &mut self,
        relay: SocketAddr,
        sg: SourceGroup,
        state: DataState,
        out: &mut Vec<Action>,
    ) {
        let Some(mut flow) = self.flows.remove(&sg) else {
            return;
        };
        if flow.relay == Some(relay) && flow.data != state {
            flow.data = state;
            if flow.routed && self.carrying(&flow) {
                let before = flow.phase;
                self.make_forwarding(&mut flow, out);
                if flow.phase != before {
                    out.push(Action::announce(JoinChange::Changed(flow.clone())));
                }
            }
        }
        self.flows.insert(sg, flow);
    }

    /// Take a reference on the flow's source route (added when it is the
    /// first) and forward once the route is in.
    fn make_forwarding(&mut self, flow: &mut FlowState, out: &mut Vec<Action>) {
        if !flow.routed {
            flow.routed = true;
            let route = self.routes.entry(flow.sg.source).or_default();
            route.users += 1;
            if route.users == 1 && !route.installed {
                out.push(Action::AddRoute {
                    source: flow.sg.source,
                });
            }
        }
        if self
            .routes
            .get(&flow.sg.source)
            .is_some_and(|r| r.installed)
        {
            (flow.phase, flow.reason) = self.routed_phase(flow);
        } else if let Some(relay) = flow.relay {
            flow.phase = FlowPhase::WaitingTunnel;
            flow.reason = format!("tunnel to relay {relay} is up; adding the source route");
        } else {
            flow.phase = FlowPhase::WaitingTunnel;
            flow.reason = "adding the source route".into();
        }
    }

    fn release_route(&mut self, flow: &mut FlowState, out: &mut Vec<Action>) {
        if !flow.routed {
            return;
        }
        flow.routed = false;
        let source = flow.sg.source;
        let Some(route) = self.routes.get_mut(&source) else {
            return;
        };
        route.users = route.users.saturating_sub(1);
        if route.users > 0 {
            return;
        }
        let installed = route.installed;
        self.routes.remove(&source);
        if installed {
            out.push(Action::RemoveRoute { source });
        }
    }

    /// The relays the decision lets the flow use, best first (empty: not
    /// served).
    fn candidates(policy: &FlowPolicy) -> &[RelayChoice] {
        match (&policy.relays, policy.admitted) {
            (RelayVerdict::Relays(relays), true) => relays,
            _ => &[],
        }
    }

    /// Try to serve one flow (sets its phase and reason): through a tunnel
    /// already up to one of its relays, through its only relay, or by
    /// racing its relays.
    fn serve(&mut self, flow: &mut FlowState, now: Instant, out: &mut Vec<Action>) {
        if self.cfg.serve_all {
            self.make_forwarding(flow, out);
            return;
        }
        flow.policy = self.decisions.get(&flow.sg).cloned();
        let Some(policy) = flow.policy.clone() else {
            flow.phase = FlowPhase::NotServed;
            flow.reason = "waiting for the policy decision".into();
            return;
        };
        let candidates = Self::candidates(&policy);
        if candidates.is_empty() {
            flow.phase = FlowPhase::NotServed;
            flow.reason = not_served_reason(&policy);
            return;
        }
        let family = Family::of(flow.sg.group);
        // A tunnel already up to a candidate is used without a race.
        let up = candidates
            .iter()
            .find(|c| self.tunnels.get(&c.relay).is_some_and(|t| t.is_up(family)));
        if let Some(choice) = up {
            self.attach(flow, *choice, now, out);
            return;
        }
        // A relay whose tunnel could not be opened waits out its backoff
        // for every flow, not only for those that were on it (a flow
        // starting or racing meanwhile would reopen it at once).
        let (candidates, blocked): (Vec<RelayChoice>, Vec<RelayChoice>) = candidates
            .iter()
            .partition(|c| self.open_blocked(c.relay, now).is_none());
        if candidates.is_empty() {
            let waits = blocked
                .iter()
                .filter_map(|c| Some((c.relay, self.open_blocked(c.relay, now)?)));
            if let Some((relay, wait)) = waits.min_by_key(|(_, wait)| *wait) {
                flow.relay = Some(relay);
                flow.phase = FlowPhase::Error;
                flow.reason = blocked_reason(relay, wait);
            }
            return;
        }
        if candidates.len() == 1 {
            self.attach(flow, candidates[0], now, out);
            return;
        }
        self.counters.races += 1;
        flow.race = Some(Race {
            began: now,
            attempts: candidates
                .iter()
                .map(|choice| RaceAttempt {
                    choice: *choice,
                    started: None,
                    failure: None,
                    skipped: false,
                })
                .collect(),
        });
        budgeted!(
            self,
            now,
            "relay race started",
            info!(
                sg = %flow.sg,
                candidates = candidates.len(),
                "racing the relays (first to answer gets the flow)"
            )
        );
        self.advance_race(flow, now, true, out);
    }

    /// Subscribe the flow on `choice`'s tunnel.
    fn attach(
        &mut self,
        flow: &mut FlowState,
        choice: RelayChoice,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let relay = choice.relay;
        flow.relay = Some(relay);
        flow.relay_origin = choice.origin.to_string();
        flow.data = DataState::Waiting;
        let tunnel = self.tunnel_for(&choice, now, out);
        tunnel.channels.insert(flow.sg);
        let up = tunnel.is_up(Family::of(flow.sg.group));
        let status = tunnel.status.to_string();
        out.push(Action::Subscribe { relay, sg: flow.sg });
        if up {
            self.make_forwarding(flow, out);
        } else {
            flow.phase = FlowPhase::WaitingTunnel;
            flow.reason = format!("waiting for relay {relay} ({status})");
        }
    }

    /// Start the next candidate of the flow's race (`now_or_due`: start it
    /// now even if its delay has not passed, after a failure). A candidate
    /// whose tunnel is already up wins at once.
    fn advance_race(
        &mut self,
        flow: &mut FlowState,
        now: Instant,
        now_or_due: bool,
        out: &mut Vec<Action>,
    ) {
        let delay = self.cfg.attempt_delay;
        let Some(race) = &mut flow.race else {
            return;
        };
        let mut due = race.next_start(delay).is_none_or(|t| t <= now) || now_or_due;
        let next = loop {
            let next = race.attempts.iter().position(|a| a.started.is_none());
            // A candidate in its open backoff fails at once; the next one
            // starts now.
            let Some(index) = next.filter(|_| due) else {
                break next;
            };
            let Some(wait) = self.open_blocked(race.attempts[index].choice.relay, now) else {
                break next;
            };
            let attempt = &mut race.attempts[index];
            attempt.started = Some(now);
            attempt.failure = Some(blocked_reason(attempt.choice.relay, wait));
            attempt.skipped = true;
            due = true;
        };
        if let (true, Some(index)) = (due, next) {
            race.attempts[index].started = Some(now);
            let choice = race.attempts[index].choice;
            let family = Family::of(flow.sg.group);
            let tunnel = self.tunnel_for(&choice, now, out);
            tunnel.racers.insert(flow.sg);
            if tunnel.is_up(family) {
                self.win_race(flow, choice.relay, now, out);
                return;
            }
            out.push(Action::Connect {
                relay: choice.relay,
                family,
            });
        }
        let Some(race) = &flow.race else {
            return;
        };
        // Every attempt failed and some were only skipped (their relay
        // waits out an open backoff another flow caused): the flow is in
        // error on such a relay and retried with it (the policy was never
        // told of a failure of this flow it could move on from).
        let all_failed = race.attempts.iter().all(|a| a.failure.is_some());
        let earliest_blocked = race
            .attempts
            .iter()
            .filter(|a| a.skipped)
            .map(|a| {
                let wait = self.open_blocked(a.choice.relay, now);
                (a.choice.relay, wait.unwrap_or_default())
            })
            .min_by_key(|(_, wait)| *wait);
        if let (true, Some((relay, wait))) = (all_failed, earliest_blocked) {
            self.unserve(flow, now, out);
            flow.relay = Some(relay);
            flow.phase = FlowPhase::Error;
            flow.reason = blocked_reason(relay, wait);
            return;
        }
        flow.phase = FlowPhase::Racing;
        flow.reason = if all_failed {
            let why: Vec<String> = race
                .attempts
                .iter()
                .filter_map(|a| Some(format!("{}: {}", a.choice.relay, a.failure.as_ref()?)))
                .collect();
            format!(
                "every relay failed ({}); waiting for the policy to move on",
                why.join("; ")
            )
        } else {
            race.text(now)
        };
    }

    /// `relay` answered first: the flow is subscribed there, the other
    /// attempts are given up (their tunnels linger if nothing else uses
    /// them), and those that had the connection-attempt delay to answer
    /// and did not are reported as failed (an attempt started just before
    /// the win had no fair chance: it is abandoned, not blamed).
    fn win_race(
        &mut self,
        flow: &mut FlowState,
        relay: SocketAddr,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(race) = flow.race.take() else {
            return;
        };
        let Some(position) = race.attempts.iter().position(|a| a.choice.relay == relay) else {
            return;
        };
        let result = RaceResult {
            winner: relay,
            position: position + 1,
            candidates: race.attempts.len(),
            took: now.saturating_duration_since(race.began),
        };
        self.counters.race_winners[position.min(RACE_POSITIONS - 1)] += 1;
        budgeted!(
            self,
            now,
            "relay race won",
            info!(sg = %flow.sg, "relay race {result}")
        );
        let family = Family::of(flow.sg.group);
        for attempt in race.started() {
            let other = attempt.choice.relay;
            if let Some(tunnel) = self.tunnels.get_mut(&other) {
                tunnel.racers.remove(&flow.sg);
            }
            if other == relay {
                continue;
            }
            let answered = self.tunnels.get(&other).is_some_and(|t| t.is_up(family));
            let had_its_chance = attempt
                .started
                .is_some_and(|t| t + self.cfg.attempt_delay <= now);
            if attempt.failure.is_none() && !answered && had_its_chance {
                let after = attempt.started.map_or(0, |t| (now - t).as_millis());
                self.report_failure(
                    other,
                    &[flow.sg],
                    &format!("lost the relay race: no Query {after} ms after the Request"),
                    out,
                );
            }
            self.linger_if_unused(other, now);
        }
        flow.race_result = Some(result);
        self.attach(flow, race.attempts[position].choice, now, out);
    }

    /// A flow is gone or no longer served here: release its route, its
    /// subscription and its race.
    fn unserve(&mut self, flow: &mut FlowState, now: Instant, out: &mut Vec<Action>) {
        self.release_route(flow, out);
        if let Some(race) = flow.race.take() {
            for attempt in race.started() {
                let relay = attempt.choice.relay;
                if let Some(tunnel) = self.tunnels.get_mut(&relay) {
                    tunnel.racers.remove(&flow.sg);
                }
                self.linger_if_unused(relay, now);
            }
        }
        let Some(relay) = flow.relay.take() else {
            return;
        };
        flow.relay_origin.clear();
        if let Some(tunnel) = self.tunnels.get_mut(&relay)
            && tunnel.channels.remove(&flow.sg)
        {
            out.push(Action::Unsubscribe { relay, sg: flow.sg });
        }
        self.linger_if_unused(relay, now);
    }

    /// Whether the flow is where the decision lets it be: on a relay that
    /// is still a candidate (a working relay is kept, even if another one
    /// is now preferred), racing the same candidates, or not served when
    /// there is none.
    fn in_line(flow: &FlowState, decision: Option<&FlowPolicy>) -> bool {
        let candidates = decision.map(Self::candidates).unwrap_or_default();
        match (&flow.relay, &flow.race) {
            (Some(relay), _) => candidates.iter().any(|c| c.relay == *relay),
            (None, Some(race)) => {
                race.attempts.len() == candidates.len()
                    && race
                        .attempts
                        .iter()
                        .zip(candidates)
                        .all(|(a, c)| a.choice.relay == c.relay)
            }
            (None, None) => candidates.is_empty(),
        }
    }

    /// Bring an existing flow in line with the current decision: serve it,
    /// move it to another relay, or stop serving it. Returns whether
    /// anything people see changed.
    fn reconcile(&mut self, flow: &mut FlowState, now: Instant, out: &mut Vec<Action>) -> bool {
        if self.cfg.serve_all {
            return false;
        }
        let before = (flow.phase, flow.reason.clone(), flow.relay);
        let decision = self.decisions.get(&flow.sg).cloned();
        let policy_changed = flow.policy != decision;
        if !Self::in_line(flow, decision.as_deref()) {
            let candidates = decision
                .as_deref()
                .map(Self::candidates)
                .unwrap_or_default();
            if let Some(old) = flow.relay {
                if candidates.is_empty() {
                    budgeted!(
                        self,
                        now,
                        "flow no longer served",
                        info!(relay = %old, "policy stops serving the flow")
                    );
                } else {
                    budgeted!(
                        self,
                        now,
                        "flow moved",
                        info!(from = %old, "policy moves the flow off its relay")
                    );
                    self.counters.flows_moved += 1;
                }
            }
            self.unserve(flow, now, out);
            self.serve(flow, now, out);
            if flow.phase == FlowPhase::NotServed {
                budgeted!(
                    self,
                    now,
                    "flow not served",
                    info!("not served: {}", flow.reason)
                );
            }
        } else if policy_changed {
            flow.policy = decision;
            if flow.phase == FlowPhase::NotServed
                && let Some(p) = &flow.policy
            {
                flow.reason = not_served_reason(p);
            }
        }
        policy_changed || (flow.phase, flow.reason.clone(), flow.relay) != before
    }

    /// Tell the policy engine that `relay` failed for `flows`. The relay is
    /// held down (so flows move on) only when some flow on it has another
    /// candidate: a relay that is a flow's only choice keeps being retried
    /// by its tunnel (with backoff) instead of leaving the flow with
    /// nothing for minutes, and the engine only asks DNS again.
    fn report_failure(
        &mut self,
        relay: SocketAddr,
        flows: &[SourceGroup],
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        if self.cfg.serve_all {
            return;
        }
        let with_fallback = flows.iter().find(|sg| {
            self.decisions
                .get(sg)
                .is_some_and(|p| matches!(&p.relays, RelayVerdict::Relays(r) if r.len() > 1))
        });
        self.counters.relay_failures_reported += 1;
        out.push(Action::ReportRelayFailure(RelayFailure {
            relay,
            sg: with_fallback.or(flows.first()).copied(),
            reason: reason.into(),
            hold_down: with_fallback.is_some(),
        }));
    }
}

/// Why a flow is not tried on `relay` now: its tunnel could not be opened
/// and is tried again after `wait`.
fn blocked_reason(relay: SocketAddr, wait: Duration) -> String {
    format!(
        "the tunnel to relay {relay} could not be opened; next try in {:.1} s",
        wait.as_secs_f64()
    )
}

/// Record that `flow`'s race attempt at `relay` failed, and why.
fn mark_attempt_failed(flow: &mut FlowState, relay: SocketAddr, why: &str) {
    if let Some(race) = &mut flow.race {
        for attempt in &mut race.attempts {
            if attempt.choice.relay == relay {
                attempt.failure = Some(why.to_string());
            }
        }
    }
}
