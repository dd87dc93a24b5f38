//! Orchestration: the desired set from the watcher becomes flows; the
//! policy engine's decision for each flow (relay from the static map or
//! DRIAD, admission under the bandwidth limit) says whether and where it is
//! served; its relay's AMT tunnel subscribes the (S,G), and once the tunnel
//! is up the source is routed into the TUN so pimd forwards it. When the
//! decision moves a flow to another relay (failover) or blocks it, the flow
//! leaves its old tunnel. Tunnel failures go back to the policy engine as
//! [`RelayFailure`]s. One state struct per flow and per tunnel; the whole
//! state is shared read-only with the API.
//!
//! Locking: decisions are taken under the state lock and produce
//! [`TunnelAction`]s, which are carried out (awaited, in order) after the
//! lock is released, so no lock is ever held across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use amt_gateway::driver::{DriverConfig, RelayEvent, TunnelHandle, spawn_tunnel};
use amt_gateway::gateway::{TunnelConfig, TunnelEvent};
use amt_gateway::tun::PacketSink;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, info_span, warn};

use crate::policy_engine::{FlowPolicy, PolicySet, RelayChoice, RelayFailure, RelayVerdict};
use crate::southbound::tun::IngestTun;
use crate::watcher::{DesiredSet, WatchStatus};
use ingest_types::SourceGroup;

/// What the sidecar is doing about one wanted (S,G).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPhase {
    /// Source routed into the TUN; packets for it reach FRR.
    Forwarding,
    /// Subscribed on a tunnel that is not (or no longer) up.
    WaitingTunnel,
    /// Nothing can carry it (no relay known, or blocked by policy).
    NotServed,
    /// Opening the tunnel or installing the route failed; retried.
    Error,
}

impl FlowPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            FlowPhase::Forwarding => "forwarding",
            FlowPhase::WaitingTunnel => "waiting-tunnel",
            FlowPhase::NotServed => "not-served",
            FlowPhase::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FlowState {
    pub sg: SourceGroup,
    /// Downstream interfaces with the (S,G) joined (population = len).
    pub interfaces: Vec<String>,
    pub since: SystemTime,
    pub phase: FlowPhase,
    pub reason: String,
    /// Relay whose tunnel carries (or will carry) the flow.
    pub relay: Option<SocketAddr>,
    /// Where the relay came from ("static map", "DRIAD", ...).
    pub relay_origin: String,
    /// Whether this flow holds a reference on its source's route.
    pub routed: bool,
    /// Kept only through pimd's restart grace period.
    pub held: bool,
    /// The policy engine's latest decision (None before the first one, and
    /// in serve_all_sources mode).
    pub policy: Option<FlowPolicy>,
}

/// A change to one join, for `WatchJoins`.
#[derive(Debug, Clone)]
pub enum JoinChange {
    Added(FlowState),
    Changed(FlowState),
    Removed(FlowState),
}

/// One AMT tunnel (one per relay) as the orchestrator sees it.
#[derive(Debug, Clone)]
pub struct RelayTunnel {
    pub relay: SocketAddr,
    pub skip_discovery: bool,
    pub handle: TunnelHandle,
    pub channels: BTreeSet<SourceGroup>,
    /// A valid Query arrived and the relay is answering.
    pub up: bool,
    pub status: String,
    /// Set when the last channel left: closed when this passes.
    pub linger_until: Option<Instant>,
    pub opened: Instant,
}

#[derive(Debug, Default)]
pub struct DaemonState {
    pub flows: BTreeMap<SourceGroup, FlowState>,
    /// Sources whose route is installed, with the number of flows using it.
    pub routed_sources: BTreeMap<IpAddr, usize>,
    pub route_errors: u64,
    pub tunnels: BTreeMap<SocketAddr, RelayTunnel>,
    /// `policy.bandwidth_limit` in bit/s (None: no admission control).
    pub limit_bps: Option<u64>,
}

/// Everything the API reads. Cheap to clone (all shared).
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<RwLock<DaemonState>>,
    pub watch_status: Arc<Mutex<WatchStatus>>,
    pub events: broadcast::Sender<(JoinChange, SystemTime)>,
    pub tun: Arc<IngestTun>,
    pub counters: Arc<Counters>,
    pub started: Instant,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub hellos_sent: std::sync::atomic::AtomicU64,
    pub joinprunes_seen: std::sync::atomic::AtomicU64,
    pub pim_malformed: std::sync::atomic::AtomicU64,
    pub mroute_events: std::sync::atomic::AtomicU64,
    pub tun_read_other: std::sync::atomic::AtomicU64,
    pub injected: std::sync::atomic::AtomicU64,
    pub tunnels_opened: std::sync::atomic::AtomicU64,
    pub tunnels_closed: std::sync::atomic::AtomicU64,
    pub relay_failures_reported: std::sync::atomic::AtomicU64,
    pub flows_moved: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, DaemonState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, DaemonState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
    /// Record the bandwidth limit (for `show flows`).
    pub fn write_limit(&self, limit_bps: Option<u64>) {
        self.write().limit_bps = limit_bps;
    }
}

/// Work on tunnels decided under the lock, done after it is released.
#[derive(Debug)]
pub enum TunnelAction {
    Subscribe(TunnelHandle, SourceGroup),
    Unsubscribe(TunnelHandle, SourceGroup),
    Close(TunnelHandle),
}

/// AMT settings of the orchestrator.
#[derive(Debug, Clone)]
pub struct AmtSettings {
    pub linger: Duration,
    pub bind: Option<IpAddr>,
    pub no_data_timeout: Option<Duration>,
}

impl Default for AmtSettings {
    fn default() -> Self {
        Self {
            linger: Duration::from_secs(60),
            bind: None,
            no_data_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl PacketSink for IngestTun {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        crate::southbound::tun::write_packet(&self.fd(), packet)
    }
}

/// Decides, per flow, whether it can be served and how.
pub struct Orchestrator {
    shared: Shared,
    serve_all: bool,
    amt: AmtSettings,
    relay_events_tx: mpsc::UnboundedSender<RelayEvent>,
    relay_events_rx: Option<mpsc::UnboundedReceiver<RelayEvent>>,
    /// The last desired set (re-applied when the policy changes).
    desired: Arc<DesiredSet>,
    /// The policy engine's latest decisions.
    policy: Arc<PolicySet>,
    /// Relay failures for the policy engine (None: no engine).
    failures: Option<mpsc::UnboundedSender<RelayFailure>>,
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

impl Orchestrator {
    /// `failures` goes to the policy engine; `None` when there is none
    /// (serve_all_sources mode).
    pub fn new(
        shared: Shared,
        serve_all: bool,
        amt: AmtSettings,
        failures: Option<mpsc::UnboundedSender<RelayFailure>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            shared,
            serve_all,
            amt,
            relay_events_tx: tx,
            relay_events_rx: Some(rx),
            desired: Arc::new(DesiredSet::default()),
            policy: Arc::new(PolicySet::new()),
            failures,
        }
    }

    /// The relay the policy wants `sg` served through now (None: not served).
    fn wanted_relay(&self, sg: &SourceGroup) -> Option<RelayChoice> {
        self.policy.get(sg).and_then(|p| p.serve()).copied()
    }

    /// Tell the policy engine that `relay` failed (it holds the relay down
    /// and moves flows with other candidates to them). Only when some flow
    /// on it has another candidate: a relay that is a flow's only choice
    /// keeps being retried by its tunnel (with backoff) instead of leaving
    /// the flow with nothing for minutes.
    fn report_failure(&self, relay: SocketAddr, flows: &[SourceGroup], reason: &str) {
        let Some(tx) = &self.failures else { return };
        let with_fallback = flows.iter().find(|sg| {
            self.policy
                .get(sg)
                .is_some_and(|p| matches!(&p.relays, RelayVerdict::Relays(r) if r.len() > 1))
        });
        // Without another relay for any flow on it, holding the relay down
        // would leave them with nothing: the tunnel keeps retrying, and the
        // engine only asks DNS whether the source has moved.
        self.shared
            .counters
            .relay_failures_reported
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = tx.send(RelayFailure {
            relay,
            sg: with_fallback.or(flows.first()).copied(),
            reason: reason.into(),
            hold_down: with_fallback.is_some(),
        });
    }

    /// Route `source` if it is not yet; returns the error text on failure.
    fn ensure_route(&self, st: &mut DaemonState, source: IpAddr) -> Result<(), String> {
        if let Some(n) = st.routed_sources.get_mut(&source) {
            *n += 1;
            return Ok(());
        }
        match self.shared.tun.add_source_route(source) {
            Ok(()) => {
                info!(%source, tun = self.shared.tun.name(), "source routed into the TUN");
                st.routed_sources.insert(source, 1);
                Ok(())
            }
            Err(e) => {
                st.route_errors += 1;
                Err(format!("cannot add route for {source}: {e}"))
            }
        }
    }

    fn release_route(&self, st: &mut DaemonState, source: IpAddr) {
        let Some(n) = st.routed_sources.get_mut(&source) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        st.routed_sources.remove(&source);
        match self.shared.tun.del_source_route(source) {
            Ok(()) => info!(%source, "last flow of source gone: route removed"),
            Err(e) => {
                st.route_errors += 1;
                warn!(%source, "cannot remove route: {e}");
            }
        }
    }

    /// Route the flow's source (the tunnel is up or no tunnel is needed).
    fn make_forwarding(&self, st: &mut DaemonState, flow: &mut FlowState, reason: String) {
        if flow.routed {
            flow.phase = FlowPhase::Forwarding;
            flow.reason = reason;
            return;
        }
        match self.ensure_route(st, flow.sg.source) {
            Ok(()) => {
                flow.routed = true;
                flow.phase = FlowPhase::Forwarding;
                flow.reason = reason;
            }
            Err(e) => {
                flow.phase = FlowPhase::Error;
                flow.reason = e;
            }
        }
    }

    fn open_tunnel(&self, relay: SocketAddr, skip_discovery: bool) -> Result<RelayTunnel, String> {
        let mut tc = TunnelConfig::new(relay);
        tc.skip_discovery = skip_discovery;
        tc.no_data_timeout = self.amt.no_data_timeout;
        let mut dc = DriverConfig::new(tc);
        dc.bind = self.amt.bind.map(|ip| SocketAddr::new(ip, 0));
        let sink: Arc<dyn PacketSink> = self.shared.tun.clone();
        let (handle, _task) = spawn_tunnel(dc, sink, self.relay_events_tx.clone())
            .map_err(|e| format!("cannot open a UDP socket for relay {relay}: {e}"))?;
        self.shared
            .counters
            .tunnels_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(%relay, skip_discovery, "AMT tunnel opened");
        Ok(RelayTunnel {
            relay,
            skip_discovery,
            handle,
            channels: BTreeSet::new(),
            up: false,
            status: if skip_discovery {
                "requesting"
            } else {
                "discovering"
            }
            .into(),
            linger_until: None,
            opened: Instant::now(),
        })
    }

    /// Try to serve one flow (sets its phase and reason).
    fn serve(&self, st: &mut DaemonState, flow: &mut FlowState, actions: &mut Vec<TunnelAction>) {
        if self.serve_all {
            self.make_forwarding(
                st,
                flow,
                "serve_all_sources: routed without a tunnel".into(),
            );
            return;
        }
        flow.policy = self.policy.get(&flow.sg).cloned();
        let Some(policy) = &flow.policy else {
            flow.phase = FlowPhase::NotServed;
            flow.reason = "waiting for the policy decision".into();
            return;
        };
        let Some(choice) = policy.serve().copied() else {
            flow.phase = FlowPhase::NotServed;
            flow.reason = not_served_reason(policy);
            return;
        };
        let relay = choice.relay;
        flow.relay = Some(relay);
        flow.relay_origin = choice.origin.to_string();
        if let std::collections::btree_map::Entry::Vacant(slot) = st.tunnels.entry(relay) {
            match self.open_tunnel(relay, choice.skip_discovery) {
                Ok(t) => {
                    slot.insert(t);
                }
                Err(e) => {
                    flow.phase = FlowPhase::Error;
                    flow.reason = e;
                    return;
                }
            }
        }
        let Some(tunnel) = st.tunnels.get_mut(&relay) else {
            return;
        };
        tunnel.channels.insert(flow.sg);
        if tunnel.linger_until.take().is_some() {
            info!(%relay, "tunnel reused before its linger ran out");
            tunnel.status = if tunnel.up {
                "up".into()
            } else {
                "requesting".into()
            };
        }
        actions.push(TunnelAction::Subscribe(tunnel.handle.clone(), flow.sg));
        if tunnel.up {
            self.make_forwarding(st, flow, format!("tunnel to relay {relay} is up"));
        } else {
            flow.phase = FlowPhase::WaitingTunnel;
            flow.reason = format!("waiting for relay {relay} ({})", tunnel.status);
        }
    }

    /// A flow is gone or no longer served here: release its route and its
    /// subscription.
    fn unserve(&self, st: &mut DaemonState, flow: &mut FlowState, actions: &mut Vec<TunnelAction>) {
        if flow.routed {
            self.release_route(st, flow.sg.source);
            flow.routed = false;
        }
        let Some(relay) = flow.relay.take() else {
            return;
        };
        flow.relay_origin.clear();
        let Some(tunnel) = st.tunnels.get_mut(&relay) else {
            return;
        };
        if tunnel.channels.remove(&flow.sg) {
            actions.push(TunnelAction::Unsubscribe(tunnel.handle.clone(), flow.sg));
        }
        if tunnel.channels.is_empty() {
            tunnel.linger_until = Some(Instant::now() + self.amt.linger);
            tunnel.status = "lingering".into();
            info!(%relay, linger_s = self.amt.linger.as_secs(), "last channel left the tunnel; closing after linger");
        }
    }

    /// Bring an existing flow in line with the current policy decision:
    /// serve it, move it to another relay, or stop serving it. Returns
    /// whether anything people see changed.
    fn reconcile(
        &self,
        st: &mut DaemonState,
        flow: &mut FlowState,
        actions: &mut Vec<TunnelAction>,
    ) -> bool {
        let before = (flow.phase, flow.reason.clone(), flow.relay);
        let policy_changed = flow.policy.as_ref() != self.policy.get(&flow.sg);
        if self.serve_all {
            return false;
        }
        let wanted = self.wanted_relay(&flow.sg).map(|c| c.relay);
        if flow.relay != wanted {
            if let Some(old) = flow.relay {
                match wanted {
                    Some(new) => {
                        info!(from = %old, to = %new, "policy moves the flow to another relay");
                        self.shared
                            .counters
                            .flows_moved
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => info!(relay = %old, "policy stops serving the flow"),
                }
            }
            self.unserve(st, flow, actions);
            self.serve(st, flow, actions);
            if flow.phase == FlowPhase::NotServed {
                info!("not served: {}", flow.reason);
            }
        } else if policy_changed {
            flow.policy = self.policy.get(&flow.sg).cloned();
            if flow.phase == FlowPhase::NotServed
                && let Some(p) = &flow.policy
            {
                flow.reason = not_served_reason(p);
            }
        }
        policy_changed || (flow.phase, flow.reason.clone(), flow.relay) != before
    }

    fn emit(&self, change: JoinChange) {
        // No subscriber is fine.
        let _ = self.shared.events.send((change, SystemTime::now()));
    }

    /// Bring the flows in line with `desired`; returns the tunnel work.
    pub fn apply(&mut self, desired: &DesiredSet) -> Vec<TunnelAction> {
        let shared = self.shared.clone();
        let mut guard = shared.write();
        let st = &mut *guard;
        let mut actions = Vec::new();
        let gone: Vec<SourceGroup> = st
            .flows
            .keys()
            .filter(|sg| !desired.joins.contains_key(sg))
            .copied()
            .collect();
        for sg in gone {
            if let Some(mut flow) = st.flows.remove(&sg) {
                let _span = info_span!("flow", %sg).entered();
                self.unserve(st, &mut flow, &mut actions);
                info!("join gone: flow removed");
                self.emit(JoinChange::Removed(flow));
            }
        }
        for (sg, ifaces) in &desired.joins {
            let _span = info_span!("flow", %sg).entered();
            match st.flows.remove(sg) {
                Some(mut flow) => {
                    let mut changed = false;
                    if &flow.interfaces != ifaces {
                        flow.interfaces = ifaces.clone();
                        info!(
                            population = ifaces.len(),
                            "downstream interfaces changed: {ifaces:?}"
                        );
                        changed = true;
                    }
                    changed |= self.reconcile(st, &mut flow, &mut actions);
                    if changed {
                        self.emit(JoinChange::Changed(flow.clone()));
                    }
                    st.flows.insert(*sg, flow);
                }
                None => {
                    let mut flow = FlowState {
                        sg: *sg,
                        interfaces: ifaces.clone(),
                        since: SystemTime::now(),
                        phase: FlowPhase::NotServed,
                        reason: String::new(),
                        relay: None,
                        relay_origin: String::new(),
                        routed: false,
                        held: false,
                        policy: None,
                    };
                    self.serve(st, &mut flow, &mut actions);
                    info!(
                        population = ifaces.len(),
                        phase = flow.phase.as_str(),
                        "new join: {}",
                        flow.reason
                    );
                    self.emit(JoinChange::Added(flow.clone()));
                    st.flows.insert(*sg, flow);
                }
            }
        }
        actions
    }

    /// React to a tunnel's event.
    pub fn on_relay_event(&mut self, ev: RelayEvent) -> Vec<TunnelAction> {
        let shared = self.shared.clone();
        let mut guard = shared.write();
        let st = &mut *guard;
        let relay = ev.relay;
        let _span = info_span!("relay", %relay).entered();
        let Some(tunnel) = st.tunnels.get_mut(&relay) else {
            debug!("event for a tunnel no longer tracked: {:?}", ev.event);
            return Vec::new();
        };
        let (up, status, flow_reason): (Option<bool>, Option<String>, Option<String>) =
            match &ev.event {
                TunnelEvent::RelayDiscovered { relay: advertised } => {
                    info!(%advertised, "relay discovered");
                    (None, Some(format!("requesting (relay {advertised})")), None)
                }
                TunnelEvent::Up { relay: r, family } => {
                    info!(relay_address = %r, ?family, "tunnel up");
                    (Some(true), Some("up".into()), None)
                }
                TunnelEvent::RelayLost { reason } => {
                    warn!(?reason, "relay lost; the tunnel retries with backoff");
                    let s = format!("relay lost ({reason:?}); retrying");
                    (Some(false), Some(s.clone()), Some(s))
                }
                TunnelEvent::RelayRefused { relay: r } => {
                    warn!(refusing = %r, "relay refused new gateways (L flag); held down");
                    let s = format!("refused by relay {r} (L flag)");
                    (Some(false), Some(s.clone()), Some(s))
                }
                TunnelEvent::GatewayAddressChanged { old, new } => {
                    info!(%old, %new, "relay sees us at a new address (NAT rebinding)");
                    (None, None, None)
                }
                TunnelEvent::NoData { sg } => {
                    let sg = *sg;
                    warn!(%sg, "no data from the relay since subscribing");
                    self.report_failure(relay, &[sg], "no data (RFC 8777 3.3.3)");
                    (None, None, None)
                }
                TunnelEvent::Closed => {
                    if tunnel.channels.is_empty() {
                        st.tunnels.remove(&relay);
                    }
                    return Vec::new();
                }
            };
        if let Some(s) = status
            && tunnel.linger_until.is_none()
        {
            tunnel.status = s;
        }
        let Some(up) = up else { return Vec::new() };
        tunnel.up = up;
        let channels: Vec<SourceGroup> = tunnel.channels.iter().copied().collect();
        if let Some(reason) = &flow_reason {
            self.report_failure(relay, &channels, reason);
        }
        for sg in channels {
            let Some(mut flow) = st.flows.remove(&sg) else {
                continue;
            };
            let before = (flow.phase, flow.reason.clone());
            if up {
                self.make_forwarding(st, &mut flow, format!("tunnel to relay {relay} is up"));
            } else if let Some(r) = &flow_reason {
                // Keep the route: when the relay answers again, pimd's
                // forwarding state is still in place.
                flow.phase = FlowPhase::WaitingTunnel;
                flow.reason = r.clone();
            }
            if (flow.phase, flow.reason.clone()) != before {
                self.emit(JoinChange::Changed(flow.clone()));
            }
            st.flows.insert(sg, flow);
        }
        Vec::new()
    }

    /// Periodic work: retry failed flows, close tunnels whose linger ran
    /// out, reopen tunnels whose task died.
    pub fn tick(&mut self) -> Vec<TunnelAction> {
        let shared = self.shared.clone();
        let mut guard = shared.write();
        let st = &mut *guard;
        let mut actions = Vec::new();
        let now = Instant::now();
        let expired: Vec<SocketAddr> = st
            .tunnels
            .values()
            .filter(|t| t.channels.is_empty() && t.linger_until.is_some_and(|u| u <= now))
            .map(|t| t.relay)
            .collect();
        for relay in expired {
            if let Some(t) = st.tunnels.remove(&relay) {
                info!(%relay, "linger over: closing the tunnel (leave + Teardown)");
                self.shared
                    .counters
                    .tunnels_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                actions.push(TunnelAction::Close(t.handle));
            }
        }
        let dead: Vec<SocketAddr> = st
            .tunnels
            .values()
            .filter(|t| t.handle.is_finished())
            .map(|t| t.relay)
            .collect();
        for relay in dead {
            let Some(old) = st.tunnels.remove(&relay) else {
                continue;
            };
            if old.channels.is_empty() {
                continue;
            }
            warn!(%relay, "tunnel task ended unexpectedly; reopening");
            match self.open_tunnel(relay, old.skip_discovery) {
                Ok(mut t) => {
                    for sg in &old.channels {
                        actions.push(TunnelAction::Subscribe(t.handle.clone(), *sg));
                    }
                    t.channels = old.channels;
                    st.tunnels.insert(relay, t);
                }
                Err(e) => warn!(%relay, "{e}"),
            }
        }
        let failed: Vec<SourceGroup> = st
            .flows
            .values()
            .filter(|f| f.phase == FlowPhase::Error)
            .map(|f| f.sg)
            .collect();
        for sg in failed {
            if let Some(mut flow) = st.flows.remove(&sg) {
                self.serve(st, &mut flow, &mut actions);
                if flow.phase != FlowPhase::Error {
                    self.emit(JoinChange::Changed(flow.clone()));
                }
                st.flows.insert(sg, flow);
            }
        }
        actions
    }

    async fn execute(actions: Vec<TunnelAction>) {
        for a in actions {
            match a {
                TunnelAction::Subscribe(h, sg) => {
                    if let Err(e) = h.subscribe(sg).await {
                        warn!(%sg, relay = %h.configured_relay(), "subscribe failed: {e}");
                    }
                }
                TunnelAction::Unsubscribe(h, sg) => {
                    if let Err(e) = h.unsubscribe(sg).await {
                        debug!(%sg, relay = %h.configured_relay(), "unsubscribe: {e}");
                    }
                }
                TunnelAction::Close(h) => {
                    // Closing repeats leaves for a while: don't block others.
                    tokio::spawn(async move {
                        let _ = h.close().await;
                    });
                }
            }
        }
    }

    /// Close every tunnel (leaves + Teardown) and remove every route.
    pub async fn shutdown(&mut self) {
        let (handles, sources) = {
            let mut st = self.shared.write();
            let handles: Vec<TunnelHandle> =
                st.tunnels.values().map(|t| t.handle.clone()).collect();
            st.tunnels.clear();
            let sources: Vec<IpAddr> = st.routed_sources.keys().copied().collect();
            st.routed_sources.clear();
            (handles, sources)
        };
        for s in sources {
            if let Err(e) = self.shared.tun.del_source_route(s) {
                warn!(source = %s, "cannot remove route at shutdown: {e}");
            }
        }
        let closes = handles.into_iter().map(|h| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), h.close()).await;
        });
        futures::future::join_all(closes).await;
    }

    /// Take a new policy decision set and apply it to the current flows.
    pub fn set_policy(&mut self, policy: Arc<PolicySet>) -> Vec<TunnelAction> {
        self.policy = policy;
        let desired = self.desired.clone();
        self.apply(&desired)
    }

    /// Runs until `stop` (or the desired set's sender is gone). `policy`
    /// is the policy engine's output; None in serve_all_sources mode.
    pub async fn run(
        mut self,
        mut rx: watch::Receiver<Arc<DesiredSet>>,
        mut policy: Option<watch::Receiver<Arc<PolicySet>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(mut relay_events) = self.relay_events_rx.take() else {
            return;
        };
        loop {
            let policy_changed = async {
                match policy.as_mut() {
                    Some(p) => p.changed().await.map(|()| p.borrow_and_update().clone()),
                    None => std::future::pending().await,
                }
            };
            let actions = tokio::select! {
                r = rx.changed() => {
                    if r.is_err() { break; }
                    let set = rx.borrow_and_update().clone();
                    self.desired = set.clone();
                    self.apply(&set)
                }
                p = policy_changed => match p {
                    Ok(set) => self.set_policy(set),
                    Err(_) => {
                        warn!("the policy engine stopped; keeping its last decisions");
                        policy = None;
                        Vec::new()
                    }
                },
                Some(ev) = relay_events.recv() => self.on_relay_event(ev),
                _ = tick.tick() => self.tick(),
                _ = stop.changed() => break,
            };
            Self::execute(actions).await;
        }
        self.shutdown().await;
    }
}
