//! Northbound: the gRPC management service (`frringest.v1.Ingest`), served
//! on a unix socket (and optionally loopback TCP).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use amt_gateway::dataplane::{
    AttachedInterface, AttachmentRole, DataPlaneStatus, KernelDataPlane, PassReason,
};
use futures::Stream;
use ingest_proto::v1::ingest_server::{Ingest, IngestServer};
use ingest_proto::v1::*;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, UnixListenerStream};
use tonic::{Request, Response, Status as GrpcStatus};
use tracing::{info, warn};

use crate::inject::{InjectSpec, MIN_PAYLOAD, build_packet};
use crate::orchestrator::{FlowState, JoinChange};
use crate::pipeline::Shared;
use crate::southbound::tun::IngestTun;
use crate::unix_ms;

pub struct ApiService {
    shared: Shared,
    tun: Arc<IngestTun>,
    info: ApiInfo,
}

/// Static facts shown by `show status`.
#[derive(Clone, Default)]
pub struct ApiInfo {
    pub frr_vty_dir: String,
    pub frr_netns: String,
    pub tun_local: String,
    pub tun_neighbor: String,
    pub tun_local6: String,
    pub tun_neighbor6: String,
    pub ipv4_rpf: String,
    pub join_source: String,
    /// Which data plane runs and why (None: not chosen, e.g. in tests).
    pub dataplane: Option<DataPlaneStatus>,
    /// The kernel data plane, when it runs (its attachments are live).
    pub kernel: Option<Arc<KernelDataPlane>>,
}

impl ApiService {
    pub fn new(shared: Shared, tun: Arc<IngestTun>, info: ApiInfo) -> Self {
        Self { shared, tun, info }
    }
}

/// One attachment of the kernel data plane, for people: "eth0 (uplink,
/// 2 tunnels)".
fn attachment_text(a: &AttachedInterface) -> String {
    match &a.role {
        AttachmentRole::Uplink { tunnels } => format!("{} (uplink, {tunnels} tunnels)", a.name),
        AttachmentRole::VethLocal => format!("{} (veth, this side)", a.name),
        AttachmentRole::VethRemote { netns } => {
            format!("{} (veth into {})", a.name, netns.display())
        }
    }
}

/// A flow as the API shows it; `since` is when it appeared (wall clock).
pub fn join_message(f: &FlowState, since: SystemTime) -> Join {
    Join {
        source: f.sg.source.to_string(),
        group: f.sg.group.to_string(),
        interfaces: f.interfaces.clone(),
        state: if f.held {
            format!("{} (held)", f.phase.as_str())
        } else {
            f.phase.as_str().to_string()
        },
        reason: f.reason.clone(),
        since_unix_ms: unix_ms(since),
        relay: f.relay.map(|r| r.to_string()).unwrap_or_default(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JoinEvent, GrpcStatus>> + Send>>;

fn parse_addr(field: &str, v: &str) -> Result<IpAddr, GrpcStatus> {
    v.parse()
        .map_err(|_| GrpcStatus::invalid_argument(format!("{field}: {v:?} is not an IP address")))
}

#[tonic::async_trait]
impl Ingest for ApiService {
    async fn get_status(&self, _: Request<StatusRequest>) -> Result<Response<Status>, GrpcStatus> {
        let ws = self
            .shared
            .watch_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let st = self.shared.read();
        let core = st.counters();
        let c = &self.shared.counters;
        let mut counters = std::collections::HashMap::new();
        for (name, counter) in [
            ("pim_malformed", &c.pim_malformed),
            ("mroute_events", &c.mroute_events),
            ("tun_read_other", &c.tun_read_other),
            ("injected_packets", &c.injected),
            ("tunnels_opened", &c.tunnels_opened),
        ] {
            counters.insert(name.into(), counter.load(Ordering::Relaxed));
        }
        for (name, value) in [
            ("relay_races", core.races),
            ("tunnels_closed", core.tunnels_closed),
            ("relay_failures_reported", core.relay_failures_reported),
            ("flows_moved_to_another_relay", core.flows_moved),
            ("route_errors", core.route_errors),
        ] {
            counters.insert(name.into(), value);
        }
        counters.insert("skipped_join_entries".into(), ws.skipped_entries);
        counters.insert("pimd_reconnects".into(), ws.reconnects);
        Ok(Response::new(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.shared.started.elapsed().as_millis() as u64,
            frr_state: if ws.frr_state.is_empty() {
                "connecting".into()
            } else {
                ws.frr_state.clone()
            },
            frr_vty_dir: self.info.frr_vty_dir.clone(),
            frr_netns: self.info.frr_netns.clone(),
            tun_name: self.tun.name().into(),
            tun_local: self.info.tun_local.clone(),
            tun_neighbor: self.info.tun_neighbor.clone(),
            joins: st.flows().len() as u32,
            served_sources: st.routed_sources() as u32,
            polls: ws.polls,
            poll_errors: ws.poll_errors,
            last_poll_error: ws.last_error.clone(),
            last_poll_age_ms: ws
                .last_ok
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or(0),
            pim_hellos_sent: c.hellos_sent.load(Ordering::Relaxed),
            pim_joinprunes_seen: c.joinprunes_seen.load(Ordering::Relaxed),
            tunnels: st.tunnels().len() as u32,
            join_source: self.info.join_source.clone(),
            counters,
            pim6d_state: ws.pim6d_state.clone(),
            tun_local6: self.info.tun_local6.clone(),
            tun_neighbor6: self.info.tun_neighbor6.clone(),
            ipv4_rpf: self.info.ipv4_rpf.clone(),
            race_winners: core.race_winners.to_vec(),
            dataplane: self
                .info
                .dataplane
                .as_ref()
                .map(|d| d.running.as_str().to_string())
                .unwrap_or_default(),
            dataplane_requested: self
                .info
                .dataplane
                .as_ref()
                .map(|d| d.requested.to_string())
                .unwrap_or_default(),
            dataplane_reason: self
                .info
                .dataplane
                .as_ref()
                .map(DataPlaneStatus::reason_text)
                .unwrap_or_default(),
            dataplane_interfaces: self
                .info
                .kernel
                .as_ref()
                .map(|k| {
                    k.attached_interfaces()
                        .iter()
                        .map(attachment_text)
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    async fn list_joins(
        &self,
        _: Request<ListJoinsRequest>,
    ) -> Result<Response<JoinList>, GrpcStatus> {
        let st = self.shared.read();
        Ok(Response::new(JoinList {
            joins: st
                .flows()
                .values()
                .map(|f| join_message(f, self.shared.wall(f.since)))
                .collect(),
        }))
    }

    type WatchJoinsStream = EventStream;

    async fn watch_joins(
        &self,
        _: Request<WatchJoinsRequest>,
    ) -> Result<Response<EventStream>, GrpcStatus> {
        use futures::StreamExt;
        // Subscribe before the snapshot so no change falls in between.
        let rx = self.shared.events.subscribe();
        let snapshot: Vec<Join> = self
            .shared
            .read()
            .flows()
            .values()
            .map(|f| join_message(f, self.shared.wall(f.since)))
            .collect();
        let now = unix_ms(SystemTime::now());
        let first = futures::stream::iter(snapshot.into_iter().map(move |j| {
            Ok(JoinEvent {
                kind: join_event::Kind::Added as i32,
                join: Some(j),
                at_unix_ms: now,
            })
        }));
        let shared = self.shared.clone();
        let live = BroadcastStream::new(rx).filter_map(move |ev| {
            let shared = shared.clone();
            async move {
                match ev {
                    Ok((change, at)) => {
                        let (kind, flow) = match change {
                            JoinChange::Added(f) => (join_event::Kind::Added, f),
                            JoinChange::Changed(f) => (join_event::Kind::Changed, f),
                            JoinChange::Removed(f) => (join_event::Kind::Removed, f),
                        };
                        Some(Ok(JoinEvent {
                            kind: kind as i32,
                            join: Some(join_message(&flow, shared.wall(flow.since))),
                            at_unix_ms: unix_ms(at),
                        }))
                    }
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        warn!("a WatchJoins client lagged; {n} events dropped");
                        Some(Err(GrpcStatus::data_loss(format!(
                            "{n} join events dropped (client too slow); re-watch to resync"
                        ))))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(first.chain(live))))
    }

    async fn list_tunnels(
        &self,
        _: Request<ListTunnelsRequest>,
    ) -> Result<Response<TunnelList>, GrpcStatus> {
        // Copy what we need, then ask each tunnel task without the lock.
        let tunnels: Vec<_> = self.shared.read().tunnels().values().cloned().collect();
        let ports: std::collections::BTreeMap<_, _> =
            self.shared.tunnel_ports().into_iter().collect();
        let mut out = Vec::with_capacity(tunnels.len());
        for t in tunnels {
            let snap = match ports.get(&t.relay) {
                Some(port) => tokio::time::timeout(Duration::from_secs(1), port.snapshot())
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let now = std::time::Instant::now();
            let mut msg = Tunnel {
                relay: t.relay.to_string(),
                state: t.state_text(),
                channels: t.channels.iter().map(|sg| sg.to_string()).collect(),
                linger_remaining_ms: t
                    .linger_until
                    .map(|u| u.saturating_duration_since(now).as_millis() as u64)
                    .unwrap_or(0),
                ..Default::default()
            };
            if let Some(s) = snap {
                msg.packets = s.stats.data_packets;
                msg.bytes = s.stats.data_bytes;
                msg.drops = s.stats.dropped.total();
                msg.drop_reasons = s
                    .stats
                    .dropped
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str().to_string(), n))
                    .collect();
                msg.last_query_age_ms = s
                    .stats
                    .last_query_at
                    .map(|q| now.saturating_duration_since(q).as_millis() as u64)
                    .unwrap_or(0);
                msg.next_request_in_ms = s
                    .stats
                    .next_request_at
                    .map(|q| q.saturating_duration_since(now).as_millis() as u64)
                    .unwrap_or(0);
                msg.local = s.local.to_string();
                msg.discoveries_sent = s.stats.discoveries_sent;
                msg.requests_sent = s.stats.requests_sent;
                msg.queries_received = s.stats.queries_received;
                msg.updates_sent = s.stats.updates_sent;
                msg.teardowns_sent = s.stats.teardowns_sent;
                msg.relay_losses = s.stats.relay_losses;
                msg.stall_requests = s.stats.stall_requests;
                msg.protocol_state = format!("{:?}", s.state).to_lowercase();
                match &s.driver.kernel {
                    Some(k) => {
                        msg.dataplane = match &k.uplink {
                            Some(uplink) => format!("kernel via {uplink}"),
                            None => {
                                "userspace (the kernel data plane does not reach this relay)".into()
                            }
                        };
                        msg.kernel_packets = k.counters.packets;
                        msg.kernel_bytes = k.counters.bytes;
                        msg.kernel_passed = PassReason::ALL
                            .iter()
                            .map(|r| (r.as_str().to_string(), k.counters.passed(*r)))
                            .filter(|(_, n)| *n > 0)
                            .collect();
                    }
                    None => msg.dataplane = "userspace".into(),
                }
                if let Some(r) = s.stats.relay_address {
                    msg.relay_address = r.to_string();
                }
            } else {
                msg.protocol_state = "unknown (tunnel task not answering)".into();
            }
            out.push(msg);
        }
        Ok(Response::new(TunnelList { tunnels: out }))
    }

    async fn list_flows(
        &self,
        req: Request<ListFlowsRequest>,
    ) -> Result<Response<FlowList>, GrpcStatus> {
        let filter = FlowFilter::new(req.get_ref())?;
        let st = self.shared.read();
        let flows: Vec<Flow> = st
            .flows()
            .values()
            .filter(|f| filter.matches(f))
            .map(|f| {
                let policy = f.policy.as_ref();
                Flow {
                    source: f.sg.source.to_string(),
                    group: f.sg.group.to_string(),
                    population: f.interfaces.len() as u32,
                    bitrate: policy.and_then(|p| p.bitrate).unwrap_or(0),
                    bitrate_origin: policy.map(|p| p.bitrate_origin.clone()).unwrap_or_default(),
                    // serve_all_sources has no policy: everything is admitted.
                    admitted: policy.is_none_or(|p| p.admitted),
                    // What people need: why it is (not) forwarding.
                    admission_reason: f.reason.clone(),
                    state: f.phase.as_str().into(),
                    race: match (&f.race, &f.race_result) {
                        (Some(race), _) => race.text(std::time::Instant::now()),
                        (None, Some(result)) => result.to_string(),
                        (None, None) => String::new(),
                    },
                    relay: f.relay.map(|r| r.to_string()).unwrap_or_default(),
                    relay_origin: f.relay_origin.clone(),
                    candidates: policy
                        .map(|p| {
                            p.candidates
                                .iter()
                                .map(|c| RelayAttempt {
                                    relay: c.relay.clone(),
                                    precedence: c.precedence.into(),
                                    discovery_optional: c.discovery_optional,
                                    outcome: c.outcome.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        let admitted_bps = st
            .flows()
            .values()
            .filter_map(|f| f.policy.as_ref())
            .filter(|p| p.admitted)
            .filter_map(|p| p.bitrate)
            .sum();
        Ok(Response::new(FlowList {
            flows,
            limit_bps: self.shared.limit_bps.unwrap_or(0),
            admitted_bps,
        }))
    }

    async fn inject(
        &self,
        req: Request<InjectRequest>,
    ) -> Result<Response<InjectReply>, GrpcStatus> {
        let r = req.into_inner();
        let source = parse_addr("source", &r.source)?;
        let group = parse_addr("group", &r.group)?;
        if !group.is_multicast() {
            return Err(GrpcStatus::invalid_argument(format!(
                "group {group} is not multicast"
            )));
        }
        if source.is_ipv4() != group.is_ipv4() {
            return Err(GrpcStatus::invalid_argument(
                "source and group are of different address families",
            ));
        }
        if r.count == 0 || r.count > 10_000_000 {
            return Err(GrpcStatus::invalid_argument("count must be 1..10000000"));
        }
        let port = |v: u32, d: u16, field: &str| -> Result<u16, GrpcStatus> {
            match v {
                0 => Ok(d),
                1..=65535 => Ok(v as u16),
                _ => Err(GrpcStatus::invalid_argument(format!(
                    "{field} {v} is not a port"
                ))),
            }
        };
        let spec = InjectSpec {
            source,
            group,
            src_port: port(r.src_port, 5000, "src_port")?,
            dst_port: port(r.dst_port, 5001, "dst_port")?,
            ttl: if r.ttl == 0 { 16 } else { r.ttl.min(255) as u8 },
            payload_size: (r.payload_size as usize).clamp(MIN_PAYLOAD, 8900),
        };
        let tun = self.tun.clone();
        let counters = self.shared.counters.clone();
        let started = tokio::time::Instant::now();
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut first_error = None;
        for i in 0..u64::from(r.count) {
            if r.rate > 0 {
                // Pace against the schedule, not per-packet sleeps.
                let due = started + Duration::from_secs_f64(i as f64 / f64::from(r.rate));
                if due > tokio::time::Instant::now() + Duration::from_millis(1) {
                    tokio::time::sleep_until(due).await;
                }
            }
            let now_ns = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let Some(pkt) = build_packet(&spec, r.first_sequence + i, now_ns) else {
                return Err(GrpcStatus::invalid_argument("mixed address families"));
            };
            match tun.write_packet(&pkt) {
                Ok(()) => sent += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        counters.injected.fetch_add(sent, Ordering::Relaxed);
        if let Some(e) = first_error {
            warn!(
                "inject: {failed} of {} writes to the TUN failed, first: {e}",
                r.count
            );
        }
        Ok(Response::new(InjectReply {
            sent,
            failed,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }))
    }
}

/// The optional filters of `ListFlows`, parsed.
struct FlowFilter {
    source: Option<IpAddr>,
    group: Option<IpAddr>,
    relay: Option<std::net::SocketAddr>,
    state: Option<String>,
}

impl FlowFilter {
    fn new(req: &ListFlowsRequest) -> Result<Self, GrpcStatus> {
        let addr = |field: &str, v: &str| -> Result<Option<IpAddr>, GrpcStatus> {
            if v.is_empty() {
                Ok(None)
            } else {
                parse_addr(field, v).map(Some)
            }
        };
        let relay = if req.relay.is_empty() {
            None
        } else {
            Some(
                crate::config::parse_relay(&req.relay)
                    .map_err(|e| GrpcStatus::invalid_argument(format!("relay: {e}")))?,
            )
        };
        Ok(Self {
            source: addr("source", &req.source)?,
            group: addr("group", &req.group)?,
            relay,
            state: (!req.state.is_empty()).then(|| req.state.clone()),
        })
    }

    fn matches(&self, f: &FlowState) -> bool {
        let racing_on = |relay: std::net::SocketAddr| {
            f.race.as_ref().is_some_and(|race| {
                race.attempts
                    .iter()
                    .any(|a| a.started.is_some() && a.choice.relay == relay)
            })
        };
        self.source.is_none_or(|s| f.sg.source == s)
            && self.group.is_none_or(|g| f.sg.group == g)
            && self
                .relay
                .is_none_or(|r| f.relay == Some(r) || racing_on(r))
            && self.state.as_deref().is_none_or(|s| f.phase.as_str() == s)
    }
}

/// Bind the API's unix socket: replace a stale socket file, set its mode.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // Refuse to steal a live daemon's socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Serve the API until `stop` flips.
pub async fn serve(
    service: ApiService,
    unix: tokio::net::UnixListener,
    unix_path: PathBuf,
    tcp: Option<std::net::SocketAddr>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let svc = IngestServer::new(service);
    let mut stop2 = stop.clone();
    let unix_srv = tonic::transport::Server::builder()
        .add_service(svc.clone())
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), async move {
            let _ = stop.changed().await;
        });
    info!("management API on unix:{}", unix_path.display());
    match tcp {
        Some(addr) => {
            info!("management API on tcp:{addr}");
            let tcp_srv = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_shutdown(addr, async move {
                    let _ = stop2.changed().await;
                });
            let (a, b) = tokio::join!(unix_srv, tcp_srv);
            a?;
            b?;
        }
        None => unix_srv.await?,
    }
    let _ = std::fs::remove_file(&unix_path);
    Ok(())
}
