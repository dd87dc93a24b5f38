//! The pipeline: the async shell around the two pure cores.
//!
//! ```text
//!  pimd / pim6d / joinfile          (watcher, joinsource: I/O tasks)
//!        │ watch<WantedSet>          channel 1
//!        ▼
//!  ┌──────────── Pipeline::run (one task) ─────────────┐
//!  │ policy Engine ──decisions──▶ Orchestrator         │
//!  │   ▲  lookups (spawned, results come back)  │      │
//!  │   └──── relay failures ◀───────────────────┤      │
//!  └────────────────────────────────────────────┼──────┘
//!        tunnel commands (channel 2) │  routes   │ ▲ tunnel events
//!                                    ▼  (netlink) │ │
//!                          AMT tunnel tasks ───────┘─┘
//! ```
//!
//! Everything flows one way: the wanted set goes into the policy engine,
//! its decisions into the orchestrator, whose actions reach the tunnels and
//! FRR's routing table. What comes back (lookup results, tunnel events,
//! route results) enters the cores as inputs in this same task, so there is
//! no channel running backwards. The orchestrator lives in the shared
//! state (the API reads it) and is only locked to call one of its pure
//! handlers: no netlink call, socket open or await happens under the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use amt_gateway::dataplane::KernelDataPlane;
use amt_gateway::driver::{DriverConfig, RelayEvent, TunnelHandle, TunnelSnapshot, spawn_tunnel};
use amt_gateway::gateway::TunnelConfig;
use amt_gateway::tun::PacketSink;
use ingest_policy::engine::{
    Engine, FlowPolicy, Lookup, LookupDone, PolicyLookups, PolicySet, RelayVerdict, WantedSet,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::orchestrator::{Action, JoinChange, Orchestrator, RouteError};
use crate::southbound::tun::IngestTun;
use crate::watcher::WatchStatus;

/// How often the orchestrator's timers (linger, retry of flows in error)
/// and the tunnel tasks are checked.
const TICK: Duration = Duration::from_secs(1);
/// Upper bound on closing one tunnel at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the I/O side (the cores count their own).
#[derive(Debug, Default)]
pub struct Counters {
    pub hellos_sent: AtomicU64,
    pub joinprunes_seen: AtomicU64,
    pub pim_malformed: AtomicU64,
    pub mroute_events: AtomicU64,
    pub tun_read_other: AtomicU64,
    pub injected: AtomicU64,
    pub tunnels_opened: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the API reads. Cheap to clone (all shared).
#[derive(Clone)]
pub struct Shared {
    pub orchestrator: Arc<RwLock<Orchestrator>>,
    /// The running tunnels, for snapshots (counters, protocol state).
    pub tunnels: Arc<RwLock<BTreeMap<SocketAddr, Arc<dyn TunnelPort>>>>,
    pub watch_status: Arc<Mutex<WatchStatus>>,
    pub events: broadcast::Sender<(JoinChange, SystemTime)>,
    pub counters: Arc<Counters>,
    /// When the daemon started, on both clocks (the cores keep `Instant`s;
    /// the API shows wall-clock times).
    pub started: Instant,
    pub started_wall: SystemTime,
    /// `policy.bandwidth_limit` in bit/s (None: no admission control).
    pub limit_bps: Option<u64>,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Orchestrator> {
        self.orchestrator.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Orchestrator> {
        self.orchestrator.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The wall-clock time of an `Instant` of the cores.
    pub fn wall(&self, at: Instant) -> SystemTime {
        if at >= self.started {
            self.started_wall + (at - self.started)
        } else {
            self.started_wall - (self.started - at)
        }
    }

    pub fn tunnel_ports(&self) -> Vec<(SocketAddr, Arc<dyn TunnelPort>)> {
        self.tunnels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(relay, port)| (*relay, port.clone()))
            .collect()
    }
}

/// A boxed future that can move between threads.
pub type PortFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Control of one running tunnel (the AMT driver's handle; fakes in tests).
pub trait TunnelPort: Send + Sync + 'static {
    /// Join (S,G); does not wait for the tunnel task.
    fn subscribe(&self, sg: ingest_types::SourceGroup);
    /// Leave (S,G); does not wait for the tunnel task.
    fn unsubscribe(&self, sg: ingest_types::SourceGroup);
    /// Start the relay handshake for `family` without joining anything.
    fn connect(&self, family: amt_gateway::Family);
    /// Leave everything, send Teardown; resolves when the task ended.
    fn close(&self) -> PortFuture<'_, ()>;
    /// Counters and protocol state; None when the task does not answer.
    fn snapshot(&self) -> PortFuture<'_, Option<TunnelSnapshot>>;
    /// The tunnel task has ended.
    fn is_finished(&self) -> bool;
}

impl TunnelPort for TunnelHandle {
    fn subscribe(&self, sg: ingest_types::SourceGroup) {
        if self.subscribe_nowait(sg).is_err() {
            debug!(%sg, relay = %self.configured_relay(), "subscribe: the tunnel task has ended");
        }
    }

    fn unsubscribe(&self, sg: ingest_types::SourceGroup) {
        if self.unsubscribe_nowait(sg).is_err() {
            debug!(%sg, relay = %self.configured_relay(), "unsubscribe: the tunnel task has ended");
        }
    }

    fn connect(&self, family: amt_gateway::Family) {
        if self.connect_nowait(family).is_err() {
            debug!(?family, relay = %self.configured_relay(), "connect: the tunnel task has ended");
        }
    }

    fn close(&self) -> PortFuture<'_, ()> {
        Box::pin(async move {
            let _ = TunnelHandle::close(self).await;
        })
    }

    fn snapshot(&self) -> PortFuture<'_, Option<TunnelSnapshot>> {
        Box::pin(async move { TunnelHandle::snapshot(self).await.ok() })
    }

    fn is_finished(&self) -> bool {
        TunnelHandle::is_finished(self)
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open a UDP socket for relay {relay}: {error}")]
pub struct OpenTunnelError {
    pub relay: SocketAddr,
    pub error: io::Error,
}

/// The world the pipeline acts on: AMT tunnels and FRR's routing table.
pub trait Southbound: Send + Sync + 'static {
    /// Open a tunnel to `relay`; its events go to `events`.
    fn open_tunnel(
        &self,
        relay: SocketAddr,
        skip_discovery: bool,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) -> Result<Arc<dyn TunnelPort>, OpenTunnelError>;
    /// Route `source` into the TUN (RPF toward amt0).
    fn add_route(&self, source: IpAddr) -> io::Result<()>;
    fn remove_route(&self, source: IpAddr) -> io::Result<()>;
}

/// AMT settings of the tunnels the daemon opens.
#[derive(Debug, Clone)]
pub struct AmtSettings {
    pub bind: Option<IpAddr>,
    pub no_data_timeout: Option<Duration>,
    /// The kernel data plane every tunnel registers with (None: userspace).
    /// A tunnel it cannot take (relay behind an unsupported link) runs in
    /// userspace; `show tunnels` says which.
    pub kernel: Option<Arc<KernelDataPlane>>,
}

impl Default for AmtSettings {
    fn default() -> Self {
        Self {
            bind: None,
            no_data_timeout: Some(Duration::from_secs(10)),
            kernel: None,
        }
    }
}

/// The real southbound: the AMT driver's tunnels writing into the ingest
/// TUN, and netlink routes in FRR's namespace.
pub struct DaemonSouthbound {
    pub tun: Arc<IngestTun>,
    pub amt: AmtSettings,
}

impl Southbound for DaemonSouthbound {
    fn open_tunnel(
        &self,
        relay: SocketAddr,
        skip_discovery: bool,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) -> Result<Arc<dyn TunnelPort>, OpenTunnelError> {
        let mut tc = TunnelConfig::new(relay);
        tc.skip_discovery = skip_discovery;
        tc.no_data_timeout = self.amt.no_data_timeout;
        let mut dc = DriverConfig::new(tc);
        dc.bind = self.amt.bind.map(|ip| SocketAddr::new(ip, 0));
        dc.kernel.clone_from(&self.amt.kernel);
        let sink: Arc<dyn PacketSink> = self.tun.clone();
        let (handle, _task) =
            spawn_tunnel(dc, sink, events).map_err(|error| OpenTunnelError { relay, error })?;
        Ok(Arc::new(handle))
    }

    fn add_route(&self, source: IpAddr) -> io::Result<()> {
        self.tun.add_source_route(source)
    }

    fn remove_route(&self, source: IpAddr) -> io::Result<()> {
        self.tun.del_source_route(source)
    }
}

/// Where decisions come from.
pub enum Deciding {
    /// The policy engine, with the lookups it asks for.
    Policy {
        engine: Box<Engine>,
        lookups: Arc<dyn PolicyLookups>,
    },
    /// `serve_all_sources` (lab mode): every wanted flow, no relay, no
    /// policy.
    ServeAll,
}

/// The pipeline task. See the module documentation.
pub struct Pipeline {
    shared: Shared,
    deciding: Deciding,
    southbound: Arc<dyn Southbound>,
    relay_events_tx: mpsc::UnboundedSender<RelayEvent>,
    relay_events: mpsc::UnboundedReceiver<RelayEvent>,
    lookups: JoinSet<LookupDone>,
    running: HashMap<tokio::task::Id, Lookup>,
    wanted: Arc<WantedSet>,
    /// serve_all_sources: the wanted set changed since the last decisions.
    wanted_changed: bool,
    decisions: Arc<PolicySet>,
    /// Every new decision set, for the admitted joinfile (if configured).
    decisions_out: Option<watch::Sender<Arc<PolicySet>>>,
    /// How many decision sets the orchestrator got (tests: nothing is
    /// re-sent while nothing changes).
    pub decision_updates: u64,
}

/// The pipeline's clock: tokio's (pausable in tests) as a std `Instant`.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Pipeline {
    pub fn new(shared: Shared, deciding: Deciding, southbound: Arc<dyn Southbound>) -> Self {
        let (relay_events_tx, relay_events) = mpsc::unbounded_channel();
        Self {
            shared,
            deciding,
            southbound,
            relay_events_tx,
            relay_events,
            lookups: JoinSet::new(),
            running: HashMap::new(),
            wanted: Arc::new(WantedSet::new()),
            wanted_changed: true,
            decisions: Arc::new(PolicySet::new()),
            decisions_out: None,
            decision_updates: 0,
        }
    }

    /// Publish every new decision set on `tx` (the admitted joinfile
    /// writer reads it).
    pub fn publish_decisions(&mut self, tx: watch::Sender<Arc<PolicySet>>) {
        self.decisions_out = Some(tx);
    }

    /// Runs until `stop` (or the wanted set's sender is gone), then removes
    /// every route and closes every tunnel.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Arc<WantedSet>>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.set_wanted(wanted.borrow_and_update().clone());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.decide().await;
            let now = clock();
            let policy_wakeup = match &self.deciding {
                Deciding::Policy { engine, .. } => engine.next_wakeup(now),
                Deciding::ServeAll => now + Duration::from_secs(3600),
            };
            // Relay races need their next attempt on time (250 ms apart by
            // default), not at the next tick.
            let wakeup = self
                .shared
                .read()
                .next_timeout()
                .map_or(policy_wakeup, |t| t.min(policy_wakeup));
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let set = wanted.borrow_and_update().clone();
                    self.set_wanted(set);
                }
                Some(done) = self.lookups.join_next_with_id(), if !self.lookups.is_empty() => {
                    self.lookup_finished(done);
                }
                Some(event) = self.relay_events.recv() => {
                    let actions = self.shared.write().on_tunnel_event(event.relay, &event.event, clock());
                    self.execute(actions).await;
                }
                _ = tick.tick() => self.on_tick().await,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wakeup)) => {
                    let actions = self.shared.write().on_timeout(clock());
                    self.execute(actions).await;
                }
                _ = stop.changed() => break,
            }
            // Take everything else that is ready before deciding once.
            while let Some(done) = self.lookups.try_join_next_with_id() {
                self.lookup_finished(done);
            }
        }
        self.lookups.abort_all();
        self.shutdown().await;
    }

    fn set_wanted(&mut self, wanted: Arc<WantedSet>) {
        if let Deciding::Policy { engine, .. } = &mut self.deciding {
            engine.set_wanted(wanted.clone());
        }
        self.wanted = wanted;
        self.wanted_changed = true;
    }

    /// Start the lookups the engine wants, evaluate, and hand a changed
    /// decision set to the orchestrator. Relay failures the orchestrator
    /// reports go back into the engine, which decides again.
    async fn decide(&mut self) {
        // A failure can move flows, whose new relay can fail at once (no
        // socket): a few rounds settle it; the rest waits for the next turn.
        for _ in 0..4 {
            let now = clock();
            let set = match &mut self.deciding {
                Deciding::Policy { engine, lookups } => {
                    for lookup in engine.poll_lookups(now) {
                        let lookups = lookups.clone();
                        let task = self.lookups.spawn(async move {
                            match lookup {
                                Lookup::Relays(source) => {
                                    LookupDone::Relays(source, lookups.relays(source).await)
                                }
                                Lookup::Bitrate(sg) => {
                                    LookupDone::Bitrate(sg, lookups.bitrate(sg).await)
                                }
                            }
                        });
                        self.running.insert(task.id(), lookup);
                    }
                    if !engine.needs_evaluation(now) {
                        return;
                    }
                    engine.evaluate(now)
                }
                Deciding::ServeAll if self.wanted_changed => {
                    self.wanted_changed = false;
                    serve_all_decisions(&self.wanted)
                }
                Deciding::ServeAll => return,
            };
            if set == *self.decisions {
                return;
            }
            let shrunk = self.decisions.len().saturating_sub(set.len());
            self.decisions = Arc::new(set);
            self.decision_updates += 1;
            if let Some(tx) = &self.decisions_out {
                tx.send_replace(self.decisions.clone());
            }
            let actions = self
                .shared
                .write()
                .on_decisions(self.decisions.clone(), clock());
            let failures = self.execute(actions).await;
            if shrunk >= 1000 {
                // Thousands of flows just went: give their memory back to
                // the system instead of keeping it in the allocator.
                crate::memory::trim_heap();
            }
            if !failures {
                return;
            }
        }
    }

    fn lookup_finished(
        &mut self,
        done: Result<(tokio::task::Id, LookupDone), tokio::task::JoinError>,
    ) {
        let Deciding::Policy { engine, .. } = &mut self.deciding else {
            return;
        };
        match done {
            Ok((id, result)) => {
                self.running.remove(&id);
                engine.on_lookup(result, clock());
            }
            Err(error) => {
                if let Some(lookup) = self.running.remove(&error.id()) {
                    warn!(?lookup, "policy lookup task died: {error}");
                    engine.on_lookup_lost(lookup, clock());
                }
            }
        }
        ingest_types::shrink_when_sparse(&mut self.running);
    }

    async fn on_tick(&mut self) {
        let ended: Vec<SocketAddr> = self
            .shared
            .tunnel_ports()
            .into_iter()
            .filter(|(_, port)| port.is_finished())
            .map(|(relay, _)| relay)
            .collect();
        for relay in ended {
            self.ports().remove(&relay);
            let actions = self.shared.write().on_tunnel_task_ended(relay, clock());
            self.execute(actions).await;
        }
        let actions = self.shared.write().on_timeout(clock());
        self.execute(actions).await;
    }

    fn ports(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<SocketAddr, Arc<dyn TunnelPort>>> {
        self.shared
            .tunnels
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn port(&self, relay: SocketAddr) -> Option<Arc<dyn TunnelPort>> {
        self.shared
            .tunnels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&relay)
            .cloned()
    }

    /// Carries out `actions` in order, feeding outcomes back into the
    /// cores. Returns whether a relay failure went to the engine (so it
    /// should decide again).
    async fn execute(&mut self, actions: Vec<Action>) -> bool {
        let mut queue: VecDeque<Action> = actions.into();
        let mut failures = false;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::OpenTunnel {
                    relay,
                    skip_discovery,
                } => match self.southbound.open_tunnel(
                    relay,
                    skip_discovery,
                    self.relay_events_tx.clone(),
                ) {
                    Ok(port) => {
                        Counters::bump(&self.shared.counters.tunnels_opened);
                        debug!(%relay, skip_discovery, "AMT tunnel opened");
                        if let Some(old) = self.ports().insert(relay, port) {
                            // A tunnel to the same relay still closing.
                            tokio::spawn(async move { old.close().await });
                        }
                    }
                    Err(error) => {
                        let more = self.shared.write().on_tunnel_open_failed(
                            relay,
                            &error.error.to_string(),
                            clock(),
                        );
                        queue.extend(more);
                    }
                },
                Action::CloseTunnel { relay } => {
                    let port = self.ports().remove(&relay);
                    if let Some(port) = port {
                        // Closing repeats leaves for a while: don't block.
                        tokio::spawn(async move { port.close().await });
                    }
                }
                Action::Connect { relay, family } => match self.port(relay) {
                    Some(port) => port.connect(family),
                    None => debug!(%relay, ?family, "connect: no tunnel"),
                },
                Action::Subscribe { relay, sg } => match self.port(relay) {
                    Some(port) => port.subscribe(sg),
                    None => debug!(%relay, %sg, "subscribe: no tunnel"),
                },
                Action::Unsubscribe { relay, sg } => {
                    if let Some(port) = self.port(relay) {
                        port.unsubscribe(sg);
                    }
                }
                Action::AddRoute { source } => {
                    let result = self.southbound.add_route(source).map_err(RouteError::from);
                    let more = self.shared.write().on_route_added(source, result, clock());
                    queue.extend(more);
                }
                Action::RemoveRoute { source } => {
                    let result = self
                        .southbound
                        .remove_route(source)
                        .map_err(RouteError::from);
                    self.shared
                        .write()
                        .on_route_removed(source, result, clock());
                }
                Action::ReportRelayFailure(failure) => {
                    if let Deciding::Policy { engine, .. } = &mut self.deciding {
                        engine.on_relay_failure(failure, clock());
                        failures = true;
                    }
                }
                Action::Announce(change) => {
                    // No subscriber is fine.
                    let _ = self.shared.events.send((*change, SystemTime::now()));
                }
            }
        }
        failures
    }

    /// Every route removed, every tunnel closed (leaves + Teardown, each
    /// bounded by [`CLOSE_TIMEOUT`]).
    async fn shutdown(&mut self) {
        let actions = self.shared.write().shutdown();
        let mut closes = Vec::new();
        for action in actions {
            match action {
                Action::RemoveRoute { source } => {
                    if let Err(e) = self.southbound.remove_route(source) {
                        warn!(%source, "cannot remove route at shutdown: {e}");
                    }
                }
                Action::CloseTunnel { relay } => {
                    if let Some(port) = self.ports().remove(&relay) {
                        closes.push(port);
                    }
                }
                other => debug!(?other, "ignored at shutdown"),
            }
        }
        // Tunnels still closing after their linger.
        closes.extend(std::mem::take(&mut *self.ports()).into_values());
        let closes = closes.iter().map(|port| async move {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, port.close()).await;
        });
        futures::future::join_all(closes).await;
    }
}

/// `serve_all_sources`: every wanted flow admitted, no relay, no lookups.
fn serve_all_decisions(wanted: &WantedSet) -> PolicySet {
    wanted
        .iter()
        .map(|(sg, flow)| {
            (
                *sg,
                Arc::new(FlowPolicy {
                    sg: *sg,
                    interfaces: flow.interfaces.clone(),
                    held: flow.held,
                    population: u32::try_from(flow.interfaces.len())
                        .unwrap_or(u32::MAX)
                        .max(1),
                    bitrate: None,
                    bitrate_origin: "not looked up".into(),
                    admitted: true,
                    admission_reason: "serve_all_sources".into(),
                    relays: RelayVerdict::NoRelay("serve_all_sources: no tunnel".into()),
                    candidates: Vec::new(),
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
