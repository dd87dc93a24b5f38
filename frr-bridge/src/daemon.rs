//! Orchestration: the desired set from the watcher becomes flows, and each
//! served flow gets its source routed into the TUN (and, with AMT, a
//! subscription on its relay's tunnel). One state struct per flow; the
//! whole state is shared read-only with the API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};
use tracing::{info, info_span, warn};

use crate::Sg;
use crate::southbound::tun::IngestTun;
use crate::watcher::{DesiredSet, WatchStatus};

/// What the sidecar is doing about one wanted (S,G).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPhase {
    /// Source routed into the TUN; packets for it reach FRR.
    Forwarding,
    /// Waiting for the relay's tunnel to come up.
    WaitingTunnel,
    /// Nothing can carry it (no relay known, or blocked by policy).
    NotServed,
    /// Installing the route failed; retried.
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
    pub sg: Sg,
    /// Downstream interfaces with the (S,G) joined (population = len).
    pub interfaces: Vec<String>,
    pub since: SystemTime,
    pub phase: FlowPhase,
    pub reason: String,
    pub relay: Option<String>,
    /// Kept only through pimd's restart grace period.
    pub held: bool,
}

/// A change to one join, for `WatchJoins`.
#[derive(Debug, Clone)]
pub enum JoinChange {
    Added(FlowState),
    Changed(FlowState),
    Removed(FlowState),
}

#[derive(Debug, Default)]
pub struct DaemonState {
    pub flows: BTreeMap<Sg, FlowState>,
    /// Sources whose route is installed, with the number of forwarding flows.
    pub routed_sources: BTreeMap<IpAddr, usize>,
    pub route_errors: u64,
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
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, DaemonState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, DaemonState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decides, per flow, whether it can be served and how.
pub struct Orchestrator {
    shared: Shared,
    serve_all: bool,
}

impl Orchestrator {
    pub fn new(shared: Shared, serve_all: bool) -> Self {
        Self { shared, serve_all }
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

    /// Try to serve one flow (sets its phase and reason).
    fn serve(&self, st: &mut DaemonState, flow: &mut FlowState) {
        if !self.serve_all {
            flow.phase = FlowPhase::NotServed;
            flow.reason = "no relay configured for this source".into();
            return;
        }
        match self.ensure_route(st, flow.sg.source) {
            Ok(()) => {
                flow.phase = FlowPhase::Forwarding;
                flow.reason = "serve_all_sources: source routed into the TUN".into();
            }
            Err(e) => {
                flow.phase = FlowPhase::Error;
                flow.reason = e;
            }
        }
    }

    fn emit(&self, change: JoinChange) {
        // No subscriber is fine.
        let _ = self.shared.events.send((change, SystemTime::now()));
    }

    /// Bring the flows in line with `desired`.
    pub fn apply(&mut self, desired: &DesiredSet) {
        let shared = self.shared.clone();
        let mut st = shared.write();
        let st = &mut *st;
        // Removed flows.
        let gone: Vec<Sg> = st
            .flows
            .keys()
            .filter(|sg| !desired.joins.contains_key(sg))
            .copied()
            .collect();
        for sg in gone {
            if let Some(flow) = st.flows.remove(&sg) {
                let _span = info_span!("flow", %sg).entered();
                if flow.phase == FlowPhase::Forwarding {
                    self.release_route(st, sg.source);
                }
                info!("join gone: flow removed");
                self.emit(JoinChange::Removed(flow));
            }
        }
        // New and changed flows.
        for (sg, ifaces) in &desired.joins {
            let _span = info_span!("flow", %sg).entered();
            match st.flows.get_mut(sg) {
                Some(flow) => {
                    if &flow.interfaces != ifaces {
                        flow.interfaces = ifaces.clone();
                        info!(
                            population = ifaces.len(),
                            "downstream interfaces changed: {ifaces:?}"
                        );
                        self.emit(JoinChange::Changed(flow.clone()));
                    }
                }
                None => {
                    let mut flow = FlowState {
                        sg: *sg,
                        interfaces: ifaces.clone(),
                        since: SystemTime::now(),
                        phase: FlowPhase::NotServed,
                        reason: String::new(),
                        relay: None,
                        held: false,
                    };
                    self.serve(st, &mut flow);
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
    }

    /// Retry flows whose route failed.
    pub fn retry_failed(&mut self) {
        let shared = self.shared.clone();
        let mut st = shared.write();
        let st = &mut *st;
        let failed: Vec<Sg> = st
            .flows
            .values()
            .filter(|f| f.phase == FlowPhase::Error)
            .map(|f| f.sg)
            .collect();
        for sg in failed {
            if let Some(mut flow) = st.flows.remove(&sg) {
                self.serve(st, &mut flow);
                if flow.phase != FlowPhase::Error {
                    self.emit(JoinChange::Changed(flow.clone()));
                }
                st.flows.insert(sg, flow);
            }
        }
    }

    /// Remove every route we installed (clean shutdown).
    pub fn shutdown(&mut self) {
        let shared = self.shared.clone();
        let mut st = shared.write();
        let sources: Vec<IpAddr> = st.routed_sources.keys().copied().collect();
        for s in sources {
            if let Err(e) = self.shared.tun.del_source_route(s) {
                warn!(source = %s, "cannot remove route at shutdown: {e}");
            }
        }
        st.routed_sources.clear();
    }

    pub async fn run(
        mut self,
        mut rx: watch::Receiver<Arc<DesiredSet>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() { break; }
                    let set = rx.borrow_and_update().clone();
                    self.apply(&set);
                }
                _ = retry.tick() => self.retry_failed(),
                _ = stop.changed() => break,
            }
        }
        self.shutdown();
    }
}
