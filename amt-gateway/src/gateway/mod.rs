//! Sans-IO AMT gateway (RFC 7450 §5.2, with the restart guidance of
//! RFC 8777 §3.3): one [`Tunnel`] per relay, driven quinn-proto style.
//!
//! The caller feeds datagrams ([`Tunnel::handle_datagram`]) and timer
//! expiries ([`Tunnel::handle_timeout`]) with an explicit `now`, and drains
//! [`Tunnel::poll_transmit`] and [`Tunnel::poll_event`]. The tunnel never
//! reads a clock, never sleeps and never does I/O. Randomness (nonces,
//! backoff) comes from a seeded RNG so tests are deterministic.
//!
//! Protocol decisions (research items marked [verify]):
//! * Retransmission: Discovery and Request timeouts are uniformly random in
//!   `[initial, min(initial·2^n, max)]` (1 s / 120 s). A retransmission
//!   reuses the outstanding nonce, so a late answer to an earlier copy is
//!   still accepted; every new handshake (refresh, restart) draws a new one.
//! * RFC 7450 gives no retry count before restarting discovery (restart
//!   event 4). We restart after `relay_loss_after` unanswered
//!   retransmissions (default 3, as the Linux driver) and report
//!   [`TunnelEvent::RelayLost`]. The Request backoff is not reset by a
//!   restart (only by a valid Query), so a relay that advertises but never
//!   queries is retried at ever longer intervals, never in a tight loop.
//! * If one data family keeps a healthy query state (its last Query is
//!   younger than QRV × QQI) while the other family's Requests go
//!   unanswered, the relay is not declared lost; the failing family keeps
//!   retrying with capped backoff (a relay may not do MLD).
//! * The next Request (new nonce) is sent QQI after each Query. QQIC 0 is
//!   treated as "not given" (default 125 s) and intervals below 1 s are
//!   raised to 1 s. QRV 0 means the configured default (2).
//! * A Query with L set before the tunnel was ever Up refuses the tunnel
//!   ([`TunnelEvent::RelayRefused`], hold-down, then restart). An L Query on
//!   a tunnel that is already Up is honoured (we are an existing gateway).
//! * Reports answering a Query are sent immediately (no random delay: a
//!   tunnel has exactly one host, so there is nothing to suppress).
//!   State-change reports (ALLOW on join, BLOCK on leave) are sent
//!   immediately when a MAC is known and repeated until each was sent QRV
//!   times, spaced by a random delay in `[URI/2, URI]`.
//! * Teardown needs the gateway address as the relay sees it: the Query G
//!   trailer when present, else the local socket address when it is a
//!   specific address; otherwise no Teardown is sent.
//! * Data stall probe: when every subscription of a family that had data
//!   has been silent for `stall_request_after`, one early Request (new
//!   nonce) goes out. A relay that restarted has forgotten us; its Query
//!   makes us send the full state again, so traffic resumes in seconds
//!   instead of waiting up to QQI (125 s by default) for the next refresh.
//!   One probe per silence: a source that merely paused costs one Request.

mod backoff;
mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use ingest_types::{SourceGroup, SourceGroupError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::wire::amt::{
    self, MembershipQuery, Message, QueryKind, RelayAdvertisement, ResponseMac,
};
use crate::wire::encap::EncapQuery;
use crate::wire::{RecordType, ip};
use backoff::Backoff;
use report::{Record, ReportBuilder};

/// Multicast data family of a subscription. IPv4 groups are managed with
/// IGMPv3 (Request P = 0), IPv6 groups with MLDv2 (P = 1), whatever the
/// family of the tunnel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub fn query_kind(self) -> QueryKind {
        match self {
            Self::V4 => QueryKind::Igmpv3,
            Self::V6 => QueryKind::Mldv2,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::V4 => 0,
            Self::V6 => 1,
        }
    }

    const ALL: [Family; 2] = [Family::V4, Family::V6];
}

/// Tunnel parameters. [`TunnelConfig::new`] gives the RFC defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelConfig {
    /// Relay discovery address (port normally 2268). With `skip_discovery`
    /// this is the relay address itself. The advertised relay is contacted
    /// on this same port.
    pub relay: SocketAddr,
    /// Go straight to Requests (DRIAD D bit set, or a lab relay).
    pub skip_discovery: bool,
    /// First retransmission timeout (RFC 7450: 1 s).
    pub initial_retransmit: Duration,
    /// Retransmission timeout cap (RFC 7450: 120 s).
    pub max_retransmit: Duration,
    /// Unanswered retransmissions after which the relay is reported lost
    /// (and, for Requests, discovery restarts).
    pub relay_loss_after: u32,
    /// Robustness variable when the relay's query gives 0.
    pub qrv_default: u8,
    /// Query interval when the relay's query gives 0.
    pub qqi_default: Duration,
    /// IGMPv3/MLDv2 Unsolicited Report Interval: spacing of repeated
    /// state-change reports.
    pub unsolicited_report_interval: Duration,
    /// How long a refusing relay (L flag) is left alone before retrying.
    pub refused_holddown: Duration,
    /// Report [`TunnelEvent::NoData`] when a reported subscription has seen
    /// no packet this long (RFC 8777 §3.3.3 "absence of traffic"). `None`
    /// disables the check.
    pub no_data_timeout: Option<Duration>,
    /// Send one early Request when a family's data stops this long (see
    /// the module documentation); `None` disables the probe.
    pub stall_request_after: Option<Duration>,
    /// A subscription whose data was flowing is reported stopped
    /// ([`TunnelEvent::DataStopped`]) after this long without a packet.
    pub data_quiet_after: Duration,
    /// Maximum bytes of group records per report (keeps an Update within
    /// the IPv6 minimum MTU with all headers).
    pub max_report_records_len: usize,
    /// Membership changes within this window after a report are sent
    /// together at its end, as few reports as fit (a lone change goes out
    /// at once). Also the pace of a long burst.
    pub report_coalesce: Duration,
    /// At most this many Updates of state changes per window, so a burst of
    /// thousands of joins does not overrun the relay's socket.
    pub max_reports_per_burst: usize,
    /// Source address of encapsulated IGMP reports; default: the local
    /// socket address if it is a specific IPv4 address, else 0.0.0.0
    /// (which IGMPv3 routers accept).
    pub report_source_v4: Option<Ipv4Addr>,
    /// Source address of encapsulated MLD reports; default: the local
    /// socket address if link-local, else fe80::1 (MLDv2 wants a
    /// link-local source; it never leaves the tunnel).
    pub report_source_v6: Option<Ipv6Addr>,
}

impl TunnelConfig {
    pub fn new(relay: SocketAddr) -> Self {
        Self {
            relay,
            skip_discovery: false,
            initial_retransmit: Duration::from_secs(1),
            max_retransmit: Duration::from_secs(120),
            relay_loss_after: 3,
            qrv_default: 2,
            qqi_default: Duration::from_secs(125),
            unsolicited_report_interval: Duration::from_secs(1),
            refused_holddown: Duration::from_secs(600),
            no_data_timeout: Some(Duration::from_secs(10)),
            stall_request_after: Some(Duration::from_secs(3)),
            data_quiet_after: Duration::from_secs(3),
            max_report_records_len: 1100,
            report_coalesce: Duration::from_millis(10),
            max_reports_per_burst: 8,
            report_source_v4: None,
            report_source_v6: None,
        }
    }
}

/// Where the tunnel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelState {
    /// Relay Discovery sent, waiting for an Advertisement.
    Discovering,
    /// Relay known, nothing subscribed yet (no Request needed).
    Idle,
    /// Request sent, no valid Query yet.
    Requesting,
    /// At least one data family has a valid Query (MAC) from the relay.
    Up,
    /// The relay refused us (L flag); waiting out the hold-down.
    Refused,
    /// Leaving: BLOCK reports are being repeated, Teardown follows.
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossReason {
    /// Relay Discovery retransmissions went unanswered.
    NoAdvertisement,
    /// Request retransmissions went unanswered.
    NoQuery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// A valid Advertisement named the relay to use.
    RelayDiscovered { relay: SocketAddr },
    /// First valid Query without L for `family` (since the start or the
    /// last loss): the AMT "connection" of RFC 8777 §3.2 for that family's
    /// channels (IGMP for IPv4, MLD for IPv6).
    Up { relay: SocketAddr, family: Family },
    /// The relay stopped answering (reported once per episode for
    /// discovery, once per exhausted Request cycle).
    RelayLost { reason: LossReason },
    /// Query with L before the tunnel was up: try another relay.
    RelayRefused { relay: SocketAddr },
    /// The relay sees us at a new address (G trailer changed: NAT
    /// rebinding); a Teardown for the old one was sent.
    GatewayAddressChanged { old: SocketAddr, new: SocketAddr },
    /// A reported subscription received nothing for `no_data_timeout`.
    NoData { sg: SourceGroup },
    /// Data for `sg` arrives (the first packet after silence).
    DataFlowing { sg: SourceGroup },
    /// Data for `sg` stopped: nothing for `data_quiet_after`.
    DataStopped { sg: SourceGroup },
    /// [`Tunnel::close`] finished (leaves and Teardown sent).
    Closed,
}

/// Why an incoming datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not from the relay's address and port (or, for Advertisements, the
    /// discovery address).
    NotFromRelay,
    /// Not a well-formed AMT message (version, type, length, inner headers).
    Malformed,
    /// A message a relay never sends, or one not expected in this state.
    UnexpectedMessage,
    /// Advertisement or Query whose nonce matches nothing outstanding.
    NonceMismatch,
    /// Inner packet with a unicast destination.
    NotMulticast,
    /// Inner packet for an (S,G) we did not subscribe.
    NotSubscribed,
    /// The tunnel is closed.
    Closed,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::NotFromRelay,
        DropReason::Malformed,
        DropReason::UnexpectedMessage,
        DropReason::NonceMismatch,
        DropReason::NotMulticast,
        DropReason::NotSubscribed,
        DropReason::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFromRelay => "not_from_relay",
            Self::Malformed => "malformed",
            Self::UnexpectedMessage => "unexpected_message",
            Self::NonceMismatch => "nonce_mismatch",
            Self::NotMulticast => "not_multicast",
            Self::NotSubscribed => "not_subscribed",
            Self::Closed => "closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Drop counters, one per [`DropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; 7],
}

impl DropCounters {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.counts[r.index()]))
    }
    fn bump(&mut self, reason: DropReason) {
        self.counts[reason.index()] += 1;
    }
}

/// What [`Tunnel::handle_datagram`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Multicast Data for a subscribed (S,G): `payload[inner]` is the inner
    /// IP packet (trimmed to its own length), ready to deliver.
    Data {
        inner: Range<usize>,
        sg: SourceGroup,
    },
    /// A control message was consumed (check transmits, events, timeout).
    Control,
    Dropped(DropReason),
}

/// A datagram the caller must send from the tunnel's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// Counters and timer snapshot of a tunnel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelStats {
    pub data_packets: u64,
    /// Bytes of inner IP packets delivered.
    pub data_bytes: u64,
    pub dropped: DropCounters,
    pub discoveries_sent: u64,
    pub advertisements_received: u64,
    pub requests_sent: u64,
    pub queries_received: u64,
    /// Queries received with the L flag.
    pub limited_queries: u64,
    pub updates_sent: u64,
    pub teardowns_sent: u64,
    pub relay_losses: u64,
    /// Request cycles of one family that went unanswered while the other
    /// family stayed healthy.
    pub request_timeouts: u64,
    /// Early Requests sent because data stopped (stall probes).
    pub stall_requests: u64,
    pub relay_address: Option<SocketAddr>,
    /// Our address as the relay reports it (Query G trailer).
    pub gateway_address: Option<SocketAddr>,
    pub last_query_at: Option<Instant>,
    /// Earliest scheduled Request (refresh or retransmission).
    pub next_request_at: Option<Instant>,
    /// QQI and QRV in effect from the last Query.
    pub query_interval: Option<Duration>,
    pub robustness: Option<u8>,
}

/// Per-(S,G) counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub packets: u64,
    pub bytes: u64,
    pub subscribed_at: Instant,
    /// First time a report carrying this subscription went to the relay.
    pub reported_at: Option<Instant>,
    pub last_data_at: Option<Instant>,
    /// A [`TunnelEvent::NoData`] was emitted for this subscription.
    pub no_data_reported: bool,
    /// Data arrives ([`TunnelEvent::DataFlowing`] was the last edge).
    pub flowing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("not an SSM channel: {0}")]
    NotAChannel(SourceGroupError),
    #[error("tunnel is closing or closed")]
    Closed,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Discovering {
        nonce: u32,
        /// Discovery messages sent in this episode.
        attempts: u32,
        deadline: Instant,
        loss_reported: bool,
    },
    Active,
    Refused {
        until: Instant,
    },
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Allow,
    Block,
}

/// A state change to report: ALLOW or BLOCK, repeated QRV times.
#[derive(Debug, Clone, Copy)]
struct PendingChange {
    kind: ChangeKind,
    /// Transmissions left.
    left: u8,
    /// When the next one is due.
    due: Instant,
}

#[derive(Debug, Clone, Copy)]
struct PendingRequest {
    nonce: u32,
    /// Requests sent with this nonce.
    attempts: u32,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct QueryState {
    mac: ResponseMac,
    nonce: u32,
    qrv: u8,
    qqi: Duration,
    gateway: Option<SocketAddr>,
    received_at: Instant,
}

#[derive(Debug, Clone)]
struct FamilyState {
    /// A subscription of this family was ever made: keep the handshake
    /// refreshed (also a NAT keepalive) until close.
    in_use: bool,
    request: Option<PendingRequest>,
    backoff: Backoff,
    next_request_at: Option<Instant>,
    query: Option<QueryState>,
    /// Pending state-change records, each with its transmissions left and
    /// when its next one is due.
    changes: BTreeMap<SourceGroup, PendingChange>,
    next_change_at: Option<Instant>,
    /// When state-change reports last went out (coalescing window).
    last_report_at: Option<Instant>,
    /// The last-data time a stall probe was sent for (one per silence).
    stall_probed_for: Option<Instant>,
    /// The newest data packet of any subscription of this family.
    last_data_at: Option<Instant>,
}

impl FamilyState {
    fn new(cfg: &TunnelConfig) -> Self {
        Self {
            in_use: false,
            request: None,
            backoff: Backoff::new(cfg.initial_retransmit, cfg.max_retransmit),
            next_request_at: None,
            query: None,
            changes: BTreeMap::new(),
            next_change_at: None,
            last_report_at: None,
            last_data_at: None,
            stall_probed_for: None,
        }
    }

    /// The relay still holds our state for this family (last Query younger
    /// than QRV × QQI).
    fn healthy(&self, now: Instant) -> bool {
        self.query
            .is_some_and(|q| now < q.received_at + q.qqi.saturating_mul(u32::from(q.qrv.max(1))))
    }
}

/// One AMT tunnel to one relay. See the module documentation.
pub struct Tunnel {
    cfg: TunnelConfig,
    local: SocketAddr,
    rng: StdRng,
    phase: Phase,
    discovery_backoff: Backoff,
    /// Where Requests go and Queries/Data must come from.
    relay: Option<SocketAddr>,
    families: [FamilyState; 2],
    subs: BTreeMap<SourceGroup, SubscriptionStats>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TunnelEvent>,
    stats: TunnelStats,
    up: bool,
    next_timeout: Option<Instant>,
    /// `next_timeout` covers a stall deadline; when not, the next data
    /// packet re-computes the timer (one bool test per packet).
    stall_timer_armed: bool,
    /// Earliest per-subscription deadline (no data since the report, data
    /// stopped), kept up to date without scanning every subscription on
    /// every timer update; the scan happens when it passes.
    activity_check_at: Option<Instant>,
    reports: ReportBuilder,
}

const MIN_QUERY_INTERVAL: Duration = Duration::from_secs(1);

impl Tunnel {
    /// Creates a tunnel whose socket is bound to `local`, and starts
    /// discovery (or goes straight to the relay with `skip_discovery`).
    pub fn new(cfg: TunnelConfig, local: SocketAddr, now: Instant, rng_seed: u64) -> Self {
        let src_v4 = cfg.report_source_v4.unwrap_or(match local.ip() {
            IpAddr::V4(a) if !a.is_unspecified() => a,
            _ => Ipv4Addr::UNSPECIFIED,
        });
        let src_v6 = cfg.report_source_v6.unwrap_or(match local.ip() {
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => a,
            _ => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
        });
        let reports = ReportBuilder {
            src_v4,
            src_v6,
            max_records_len: cfg.max_report_records_len,
        };
        let mut tunnel = Self {
            discovery_backoff: Backoff::new(cfg.initial_retransmit, cfg.max_retransmit),
            families: [FamilyState::new(&cfg), FamilyState::new(&cfg)],
            cfg,
            local,
            rng: StdRng::seed_from_u64(rng_seed),
            phase: Phase::Active,
            relay: None,
            subs: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TunnelStats::default(),
            up: false,
            next_timeout: None,
            stall_timer_armed: false,
            activity_check_at: None,
            reports,
        };
        if tunnel.cfg.skip_discovery {
            tunnel.relay = Some(tunnel.cfg.relay);
            tunnel.stats.relay_address = tunnel.relay;
        } else {
            tunnel.start_discovery(now);
        }
        tunnel.refresh_timer();
        tunnel
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.cfg
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The relay in use (after discovery), if known.
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    pub fn state(&self) -> TunnelState {
        match self.phase {
            Phase::Discovering { .. } => TunnelState::Discovering,
            Phase::Refused { .. } => TunnelState::Refused,
            Phase::Closing => TunnelState::Closing,
            Phase::Closed => TunnelState::Closed,
            Phase::Active if self.up => TunnelState::Up,
            Phase::Active if self.families.iter().any(|f| f.request.is_some()) => {
                TunnelState::Requesting
            }
            Phase::Active => TunnelState::Idle,
        }
    }

    pub fn stats(&self) -> &TunnelStats {
        &self.stats
    }

    /// Subscribed channels in order.
    pub fn subscriptions(&self) -> impl Iterator<Item = SourceGroup> + '_ {
        self.subs.keys().copied()
    }

    pub fn subscription_stats(&self, sg: SourceGroup) -> Option<&SubscriptionStats> {
        self.subs.get(&sg)
    }

    /// Whether a subscription made after `since` has not seen data yet.
    pub fn awaits_first_data(&self, since: Instant) -> bool {
        self.subs
            .values()
            .any(|s| s.last_data_at.is_none() && s.subscribed_at >= since)
    }

    pub fn is_subscribed(&self, sg: SourceGroup) -> bool {
        self.subs.contains_key(&sg)
    }

    /// Joins (S,G): sends ALLOW_NEW_SOURCES as soon as a MAC is known and
    /// repeats it QRV times. Returns `Ok(false)` if already subscribed.
    pub fn subscribe(&mut self, sg: SourceGroup, now: Instant) -> Result<bool, SubscribeError> {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return Err(SubscribeError::Closed);
        }
        // The fields of a SourceGroup are public: check what `new` would.
        if let Err(error) = SourceGroup::new(sg.source, sg.group) {
            return Err(SubscribeError::NotAChannel(error));
        }
        if self.subs.contains_key(&sg) {
            return Ok(false);
        }
        self.subs.insert(
            sg,
            SubscriptionStats {
                packets: 0,
                bytes: 0,
                subscribed_at: now,
                reported_at: None,
                last_data_at: None,
                no_data_reported: false,
                flowing: false,
            },
        );
        let family = Family::of(sg.group);
        let f = family.index();
        self.families[f].in_use = true;
        self.queue_change(family, sg, ChangeKind::Allow, now);
        if self.phase == Phase::Active
            && self.families[f].request.is_none()
            && self.families[f].query.is_none()
        {
            self.start_request(family, now);
        }
        self.refresh_timer();
        Ok(true)
    }

    /// Starts the Request/Query handshake for `family` without joining
    /// anything: relay racing (RFC 8777 §3.2) gives a flow to the first
    /// relay whose Query arrives, and only that one gets its membership
    /// report. [`TunnelEvent::Up`] follows when the relay answers (at once
    /// if it already has for this family).
    pub fn connect(&mut self, family: Family, now: Instant) -> Result<(), SubscribeError> {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return Err(SubscribeError::Closed);
        }
        let f = family.index();
        self.families[f].in_use = true;
        if self.phase == Phase::Active
            && self.families[f].request.is_none()
            && self.families[f].query.is_none()
        {
            self.start_request(family, now);
        }
        self.refresh_timer();
        Ok(())
    }

    /// Leaves (S,G): data for it is dropped from now on, and
    /// BLOCK_OLD_SOURCES is sent (QRV times). Returns false if it was not
    /// subscribed.
    pub fn unsubscribe(&mut self, sg: SourceGroup, now: Instant) -> bool {
        if self.subs.remove(&sg).is_none() {
            return false;
        }
        let family = Family::of(sg.group);
        if !self.subs.keys().any(|s| Family::of(s.group) == family) {
            // Nothing of this family left: no silence to probe for.
            self.families[family.index()].last_data_at = None;
        }
        self.queue_change(family, sg, ChangeKind::Block, now);
        self.refresh_timer();
        true
    }

    /// Leaves everything (BLOCK, repeated QRV times) and then sends a
    /// Teardown per family; [`TunnelEvent::Closed`] marks the end. Without
    /// a relay handshake there is nothing to tell the relay: closes at once.
    pub fn close(&mut self, now: Instant) {
        match self.phase {
            Phase::Closing | Phase::Closed => return,
            Phase::Discovering { .. } | Phase::Refused { .. } => {
                self.subs.clear();
                self.finish_close();
            }
            Phase::Active => {
                let subs: Vec<SourceGroup> = self.subs.keys().copied().collect();
                self.subs.clear();
                self.phase = Phase::Closing;
                for family in Family::ALL {
                    let fs = &mut self.families[family.index()];
                    fs.request = None;
                    fs.next_request_at = None;
                    if fs.query.is_none() {
                        fs.changes.clear();
                        fs.next_change_at = None;
                        continue;
                    }
                    let qrv = fs.query.map_or(self.cfg.qrv_default, |q| q.qrv).max(1);
                    for sg in subs.iter().filter(|sg| Family::of(sg.group) == family) {
                        fs.changes.insert(
                            *sg,
                            PendingChange {
                                kind: ChangeKind::Block,
                                left: qrv,
                                due: now,
                            },
                        );
                    }
                    self.flush_changes(family, now);
                }
                self.maybe_finish_close();
            }
        }
        self.refresh_timer();
    }

    /// Processes one UDP datagram received on the tunnel's socket.
    ///
    /// Multicast Data is accepted only from the relay's address and port
    /// and only for subscribed (S,G); the fast path does no allocation.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) -> Received {
        if payload.first() == Some(&(amt::MessageType::MulticastData as u8))
            && self.relay == Some(from)
        {
            return self.on_data(now, payload);
        }
        let received = self.on_control(now, from, payload);
        self.refresh_timer();
        received
    }

    /// Records Multicast Data that a kernel data plane delivered on this
    /// tunnel's behalf (it never reached [`Tunnel::handle_datagram`]):
    /// `packets` and `bytes` (inner IP packets) since the last call, the
    /// newest at `last_seen`. Counts like delivered data, so the stall
    /// probe, NoData and the DataFlowing/DataStopped edges keep working.
    /// Data for an (S,G) no longer subscribed only counts in the tunnel's
    /// totals.
    pub fn record_offloaded_data(
        &mut self,
        sg: SourceGroup,
        packets: u64,
        bytes: u64,
        last_seen: Instant,
    ) {
        if packets == 0 {
            return;
        }
        self.stats.data_packets += packets;
        self.stats.data_bytes += bytes;
        if self.subs.contains_key(&sg) {
            self.count_data(sg, packets, bytes, last_seen);
            self.refresh_timer();
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Discovering { deadline, .. } if deadline <= now => {
                self.on_discovery_timeout(now)
            }
            Phase::Refused { until } if until <= now => self.restart(now),
            _ => {}
        }
        if self.phase == Phase::Active {
            for family in Family::ALL {
                let f = family.index();
                if self.families[f].request.is_some_and(|r| r.deadline <= now) {
                    self.on_request_timeout(family, now);
                }
                if self.phase == Phase::Active
                    && self.families[f].next_request_at.is_some_and(|t| t <= now)
                {
                    self.start_request(family, now);
                }
            }
        }
        if self.phase == Phase::Active {
            for family in Family::ALL {
                if let Some(at) = self.stall_deadline(family)
                    && at <= now
                {
                    let f = family.index();
                    self.families[f].stall_probed_for = self.last_data(family);
                    self.stats.stall_requests += 1;
                    self.start_request(family, now);
                }
            }
        }
        if matches!(self.phase, Phase::Active | Phase::Closing) {
            for family in Family::ALL {
                if self.families[family.index()]
                    .next_change_at
                    .is_some_and(|t| t <= now)
                {
                    self.flush_changes(family, now);
                }
            }
            self.maybe_finish_close();
        }
        if self.activity_check_at.is_some_and(|t| t <= now) {
            self.check_activity(now);
        }
        self.refresh_timer();
    }

    /// Per-subscription deadlines: NoData for a reported subscription that
    /// never got data, DataStopped for one whose data stopped. One scan when
    /// the earliest deadline passes; it sets the next one.
    fn check_activity(&mut self, now: Instant) {
        let quiet = self.cfg.data_quiet_after;
        let no_data = self
            .cfg
            .no_data_timeout
            .filter(|_| self.phase == Phase::Active);
        let mut next: Option<Instant> = None;
        for (&sg, sub) in self.subs.iter_mut() {
            if sub.flowing
                && let Some(last) = sub.last_data_at
            {
                if last + quiet <= now {
                    sub.flowing = false;
                    self.events.push_back(TunnelEvent::DataStopped { sg });
                } else {
                    next = Some(next.map_or(last + quiet, |n| n.min(last + quiet)));
                }
            }
            if let (Some(timeout), Some(reported)) = (no_data, sub.reported_at)
                && sub.last_data_at.is_none()
                && !sub.no_data_reported
            {
                if reported + timeout <= now {
                    sub.no_data_reported = true;
                    self.events.push_back(TunnelEvent::NoData { sg });
                } else {
                    next = Some(next.map_or(reported + timeout, |n| n.min(reported + timeout)));
                }
            }
        }
        self.activity_check_at = next;
    }

    /// A new per-subscription deadline at `at`: the activity check runs no
    /// later than that.
    fn arm_activity_check(&mut self, at: Instant) {
        if self.activity_check_at.is_none_or(|t| t > at) {
            self.activity_check_at = Some(at);
        }
    }

    /// When [`Tunnel::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TunnelEvent> {
        self.events.pop_front()
    }

    /// The newest data packet of any subscription of `family`.
    fn last_data(&self, family: Family) -> Option<Instant> {
        self.families[family.index()].last_data_at
    }

    /// When a stall probe is due for `family`: its data stopped, no probe
    /// was sent for this silence and no handshake is in progress.
    fn stall_deadline(&self, family: Family) -> Option<Instant> {
        let after = self.cfg.stall_request_after?;
        let fs = &self.families[family.index()];
        if !fs.in_use || fs.request.is_some() {
            return None;
        }
        let last = self.last_data(family)?;
        (fs.stall_probed_for != Some(last)).then(|| last + after)
    }

    // ---- data path -------------------------------------------------------

    fn on_data(&mut self, now: Instant, payload: &[u8]) -> Received {
        if self.phase == Phase::Closed {
            return self.drop_with(DropReason::Closed);
        }
        let Some(inner_bytes) = payload.get(amt::DATA_HEADER_LEN..) else {
            return self.drop_with(DropReason::Malformed);
        };
        let Ok(inner) = ip::inspect(inner_bytes) else {
            return self.drop_with(DropReason::Malformed);
        };
        if !inner.dst.is_multicast() {
            return self.drop_with(DropReason::NotMulticast);
        }
        let sg = SourceGroup {
            source: inner.src,
            group: inner.dst,
        };
        if !self.subs.contains_key(&sg) {
            return self.drop_with(DropReason::NotSubscribed);
        }
        self.stats.data_packets += 1;
        self.stats.data_bytes += inner.len as u64;
        let started = self.count_data(sg, 1, inner.len as u64, now);
        if started || (!self.stall_timer_armed && self.cfg.stall_request_after.is_some()) {
            self.refresh_timer();
        }
        Received::Data {
            inner: amt::DATA_HEADER_LEN..amt::DATA_HEADER_LEN + inner.len,
            sg,
        }
    }

    /// Counts data of the subscribed `sg` (from the socket or the kernel
    /// data plane), the newest packet at `at`. Returns true on the edge
    /// where its data starts flowing (DataFlowing queued; once per
    /// silence, not a per-packet cost).
    fn count_data(&mut self, sg: SourceGroup, packets: u64, bytes: u64, at: Instant) -> bool {
        let Some(sub) = self.subs.get_mut(&sg) else {
            return false;
        };
        sub.packets += packets;
        sub.bytes += bytes;
        // Kernel counters are read late: never move last-seen backwards.
        let last = sub.last_data_at.map_or(at, |t| t.max(at));
        sub.last_data_at = Some(last);
        let started = !sub.flowing;
        sub.flowing = true;
        let family = &mut self.families[Family::of(sg.group).index()];
        family.last_data_at = Some(family.last_data_at.map_or(last, |t| t.max(last)));
        if started {
            self.events.push_back(TunnelEvent::DataFlowing { sg });
            self.arm_activity_check(last + self.cfg.data_quiet_after);
        }
        started
    }

    fn drop_with(&mut self, reason: DropReason) -> Received {
        self.stats.dropped.bump(reason);
        Received::Dropped(reason)
    }

    // ---- control path ----------------------------------------------------

    fn on_control(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) -> Received {
        if self.phase == Phase::Closed {
            return self.drop_with(DropReason::Closed);
        }
        let msg = match Message::decode(payload) {
            Ok(m) => m,
            Err(_) => return self.drop_with(DropReason::Malformed),
        };
        match msg {
            Message::RelayAdvertisement(adv) => {
                if from != self.cfg.relay {
                    return self.drop_with(DropReason::NotFromRelay);
                }
                self.on_advertisement(now, adv)
            }
            Message::MembershipQuery(q) => {
                if self.relay != Some(from) {
                    return self.drop_with(DropReason::NotFromRelay);
                }
                self.on_query(now, q)
            }
            // Data reaching here did not come from the relay.
            Message::MulticastData(_) => self.drop_with(DropReason::NotFromRelay),
            _ => self.drop_with(DropReason::UnexpectedMessage),
        }
    }

    fn on_advertisement(&mut self, now: Instant, adv: RelayAdvertisement) -> Received {
        let Phase::Discovering { nonce, .. } = self.phase else {
            return self.drop_with(DropReason::UnexpectedMessage);
        };
        if adv.nonce != nonce {
            return self.drop_with(DropReason::NonceMismatch);
        }
        let relay = SocketAddr::new(adv.relay, self.cfg.relay.port());
        self.stats.advertisements_received += 1;
        self.stats.relay_address = Some(relay);
        self.relay = Some(relay);
        self.phase = Phase::Active;
        self.discovery_backoff.reset();
        self.events
            .push_back(TunnelEvent::RelayDiscovered { relay });
        self.start_in_use_requests(now);
        Received::Control
    }

    fn on_query(&mut self, now: Instant, q: MembershipQuery<'_>) -> Received {
        match self.phase {
            Phase::Active => {}
            Phase::Closing => return self.drop_with(DropReason::Closed),
            _ => return self.drop_with(DropReason::UnexpectedMessage),
        }
        let Some(family) = Family::ALL.into_iter().find(|f| {
            self.families[f.index()]
                .request
                .is_some_and(|r| r.nonce == q.nonce)
        }) else {
            return self.drop_with(DropReason::NonceMismatch);
        };
        let Ok(general) = EncapQuery::parse(q.query) else {
            return self.drop_with(DropReason::Malformed);
        };
        let Some(relay) = self.relay else {
            return self.drop_with(DropReason::UnexpectedMessage);
        };
        self.stats.queries_received += 1;
        self.stats.last_query_at = Some(now);
        if q.limit {
            self.stats.limited_queries += 1;
            if !self.up {
                let until = now + self.cfg.refused_holddown;
                for fs in &mut self.families {
                    fs.request = None;
                    fs.next_request_at = None;
                    fs.next_change_at = None;
                }
                self.phase = Phase::Refused { until };
                self.events.push_back(TunnelEvent::RelayRefused { relay });
                return Received::Control;
            }
        }
        let f = family.index();
        // NAT rebinding: tell the relay to drop the tunnel at the old address.
        if let (Some(prev), Some(new)) = (self.families[f].query, q.gateway)
            && let Some(old) = prev.gateway
            && old != new
        {
            self.send_teardown(relay, prev.mac, prev.nonce, old);
            self.events
                .push_back(TunnelEvent::GatewayAddressChanged { old, new });
        }
        let qrv = match general.qrv() {
            0 => self.cfg.qrv_default.max(1),
            v => v,
        };
        let qqi = match general.qqi() {
            d if d.is_zero() => self.cfg.qqi_default,
            d => d,
        }
        .max(MIN_QUERY_INTERVAL);
        let fs = &mut self.families[f];
        // The first Query of this family (since the start or a loss):
        // the relay answers for this family's channels now.
        let family_up = fs.query.is_none();
        fs.query = Some(QueryState {
            mac: q.mac,
            nonce: q.nonce,
            qrv,
            qqi,
            gateway: q.gateway,
            received_at: now,
        });
        fs.request = None;
        fs.backoff.reset();
        fs.next_request_at = Some(now + qqi);
        self.stats.query_interval = Some(qqi);
        self.stats.robustness = Some(qrv);
        if q.gateway.is_some() {
            self.stats.gateway_address = q.gateway;
        }
        self.up = true;
        if family_up {
            self.events.push_back(TunnelEvent::Up { relay, family });
        }
        self.send_current_state(family, now);
        if !self.families[f].changes.is_empty() && self.families[f].next_change_at.is_none() {
            self.schedule_changes(family, now);
        }
        Received::Control
    }

    // ---- handshakes ------------------------------------------------------

    fn start_discovery(&mut self, now: Instant) {
        let nonce: u32 = self.rng.random();
        let deadline = now + self.discovery_backoff.next(&mut self.rng);
        self.relay = None;
        for fs in &mut self.families {
            fs.request = None;
            fs.next_request_at = None;
            fs.query = None;
            fs.next_change_at = None;
        }
        self.phase = Phase::Discovering {
            nonce,
            attempts: 1,
            deadline,
            loss_reported: false,
        };
        self.send_discovery(nonce);
    }

    fn on_discovery_timeout(&mut self, now: Instant) {
        let Phase::Discovering {
            nonce,
            attempts,
            loss_reported,
            ..
        } = self.phase
        else {
            return;
        };
        let mut loss_reported = loss_reported;
        if attempts > self.cfg.relay_loss_after && !loss_reported {
            loss_reported = true;
            self.stats.relay_losses += 1;
            self.events.push_back(TunnelEvent::RelayLost {
                reason: LossReason::NoAdvertisement,
            });
        }
        let deadline = now + self.discovery_backoff.next(&mut self.rng);
        self.phase = Phase::Discovering {
            nonce,
            attempts: attempts.saturating_add(1),
            deadline,
            loss_reported,
        };
        self.send_discovery(nonce);
    }

    fn send_discovery(&mut self, nonce: u32) {
        self.stats.discoveries_sent += 1;
        let msg = Message::RelayDiscovery(amt::RelayDiscovery { nonce });
        self.transmits.push_back(Transmit {
            destination: self.cfg.relay,
            payload: msg.to_vec(),
        });
    }

    fn start_in_use_requests(&mut self, now: Instant) {
        for family in Family::ALL {
            if self.families[family.index()].in_use {
                self.start_request(family, now);
            }
        }
    }

    /// New handshake for `family` with a fresh nonce.
    fn start_request(&mut self, family: Family, now: Instant) {
        let f = family.index();
        let nonce: u32 = self.rng.random();
        let deadline = now + self.families[f].backoff.next(&mut self.rng);
        self.families[f].request = Some(PendingRequest {
            nonce,
            attempts: 1,
            deadline,
        });
        self.families[f].next_request_at = None;
        self.send_request(family, nonce);
    }

    fn send_request(&mut self, family: Family, nonce: u32) {
        let Some(relay) = self.relay else { return };
        self.stats.requests_sent += 1;
        let msg = Message::Request(amt::Request {
            nonce,
            kind: family.query_kind(),
        });
        self.transmits.push_back(Transmit {
            destination: relay,
            payload: msg.to_vec(),
        });
    }

    fn on_request_timeout(&mut self, family: Family, now: Instant) {
        let f = family.index();
        let Some(req) = self.families[f].request else {
            return;
        };
        if req.attempts <= self.cfg.relay_loss_after {
            let deadline = now + self.families[f].backoff.next(&mut self.rng);
            self.families[f].request = Some(PendingRequest {
                attempts: req.attempts + 1,
                deadline,
                ..req
            });
            self.send_request(family, req.nonce);
            return;
        }
        self.families[f].request = None;
        let other = &self.families[1 - f];
        if other.healthy(now) {
            self.stats.request_timeouts += 1;
            self.start_request(family, now);
        } else {
            self.relay_lost(now);
        }
    }

    fn relay_lost(&mut self, now: Instant) {
        self.stats.relay_losses += 1;
        self.events.push_back(TunnelEvent::RelayLost {
            reason: LossReason::NoQuery,
        });
        self.up = false;
        for fs in &mut self.families {
            fs.request = None;
            fs.next_request_at = None;
            fs.query = None;
            fs.next_change_at = None;
        }
        self.restart(now);
    }

    /// Starts over: discovery, or straight Requests when discovery is skipped.
    fn restart(&mut self, now: Instant) {
        if self.cfg.skip_discovery {
            self.phase = Phase::Active;
            self.relay = Some(self.cfg.relay);
            self.start_in_use_requests(now);
        } else {
            self.start_discovery(now);
        }
    }

    // ---- membership reports ----------------------------------------------

    fn queue_change(&mut self, family: Family, sg: SourceGroup, kind: ChangeKind, now: Instant) {
        let fs = &mut self.families[family.index()];
        let qrv = fs.query.map_or(self.cfg.qrv_default, |q| q.qrv).max(1);
        fs.changes.insert(
            sg,
            PendingChange {
                kind,
                left: qrv,
                due: now,
            },
        );
        if self.phase == Phase::Active && fs.query.is_some() {
            self.schedule_changes(family, now);
        }
    }

    /// Sends the due changes now if no report went out within the
    /// coalescing window (a lone join is reported at once), else at the
    /// window's end, together with whatever else changes meanwhile.
    fn schedule_changes(&mut self, family: Family, now: Instant) {
        let window = self.cfg.report_coalesce;
        let fs = &mut self.families[family.index()];
        let at = fs.last_report_at.map_or(now, |t| (t + window).max(now));
        if at <= now {
            self.flush_changes(family, now);
        } else if fs.next_change_at.is_none_or(|t| t > at) {
            fs.next_change_at = Some(at);
        }
    }

    /// Sends the due state changes of `family` (at most
    /// `max_reports_per_burst` Updates; the rest one coalescing window
    /// later), then schedules the next repetition of what went out
    /// `[URI/2, URI]` later (one draw for what went out together), so
    /// repeats are spaced and not sent in the same burst as the first copy.
    fn flush_changes(&mut self, family: Family, now: Instant) {
        let f = family.index();
        let Some(query) = self.families[f].query else {
            self.families[f].next_change_at = None;
            return;
        };
        let Some(relay) = self.relay else { return };
        let mut allow: BTreeMap<IpAddr, Vec<IpAddr>> = BTreeMap::new();
        let mut block: BTreeMap<IpAddr, Vec<IpAddr>> = BTreeMap::new();
        for (sg, change) in &self.families[f].changes {
            if change.due > now {
                continue;
            }
            match change.kind {
                ChangeKind::Allow => allow.entry(sg.group).or_default().push(sg.source),
                ChangeKind::Block => block.entry(sg.group).or_default().push(sg.source),
            }
        }
        let records: Vec<Record> = allow
            .into_iter()
            .map(|(group, sources)| Record {
                record_type: RecordType::AllowNewSources,
                group,
                sources,
            })
            .chain(block.into_iter().map(|(group, sources)| Record {
                record_type: RecordType::BlockOldSources,
                group,
                sources,
            }))
            .collect();
        let due: usize = records.iter().map(|r| r.sources.len()).sum();
        let Ok(built) =
            self.reports
                .build_limited(family, &records, self.cfg.max_reports_per_burst.max(1))
        else {
            // Only reachable with absurd sizes (over 64 KiB per report).
            return;
        };
        let more_due = built.sent.len() < due;
        for (group, source) in &built.sent {
            if let Some(sub) = self.subs.get_mut(&SourceGroup {
                source: *source,
                group: *group,
            }) && sub.reported_at.is_none()
            {
                sub.reported_at = Some(now);
                if let Some(timeout) = self.cfg.no_data_timeout {
                    self.activity_check_at = Some(
                        self.activity_check_at
                            .map_or(now + timeout, |t| t.min(now + timeout)),
                    );
                }
            }
        }
        self.push_updates(relay, query, built.datagrams);
        let uri = self
            .cfg
            .unsolicited_report_interval
            .max(Duration::from_millis(2));
        let (lo, hi) = ((uri / 2).as_millis() as u64, uri.as_millis() as u64);
        // One draw per flush: what went out together is repeated together.
        let again = now + Duration::from_millis(self.rng.random_range(lo..=hi));
        let fs = &mut self.families[f];
        if !built.sent.is_empty() {
            fs.last_report_at = Some(now);
        }
        for (group, source) in built.sent {
            let sg = SourceGroup { source, group };
            if let Some(change) = fs.changes.get_mut(&sg) {
                change.left = change.left.saturating_sub(1);
                if change.left == 0 {
                    fs.changes.remove(&sg);
                } else {
                    change.due = again;
                }
            }
        }
        fs.next_change_at = if more_due {
            Some(now + self.cfg.report_coalesce)
        } else {
            fs.changes.values().map(|c| c.due).min()
        };
    }

    /// Answers a Query: MODE_IS_INCLUDE for every subscribed group.
    fn send_current_state(&mut self, family: Family, now: Instant) {
        let Some(query) = self.families[family.index()].query else {
            return;
        };
        let mut by_group: BTreeMap<IpAddr, Vec<IpAddr>> = BTreeMap::new();
        let mut first_report = false;
        for (sg, sub) in self.subs.iter_mut() {
            if Family::of(sg.group) == family {
                by_group.entry(sg.group).or_default().push(sg.source);
                first_report |= sub.reported_at.is_none();
                sub.reported_at.get_or_insert(now);
            }
        }
        if first_report && let Some(timeout) = self.cfg.no_data_timeout {
            self.arm_activity_check(now + timeout);
        }
        if by_group.is_empty() {
            return;
        }
        let records: Vec<Record> = by_group
            .into_iter()
            .map(|(group, sources)| Record {
                record_type: RecordType::ModeIsInclude,
                group,
                sources,
            })
            .collect();
        self.send_updates(family, query, &records);
    }

    fn send_updates(&mut self, family: Family, query: QueryState, records: &[Record]) {
        let Some(relay) = self.relay else { return };
        if records.is_empty() {
            return;
        }
        let Ok(datagrams) = self.reports.build(family, records) else {
            // Only reachable with absurd sizes (over 64 KiB per report).
            return;
        };
        self.push_updates(relay, query, datagrams);
    }

    /// Queues one Membership Update per report datagram.
    fn push_updates(&mut self, relay: SocketAddr, query: QueryState, datagrams: Vec<Vec<u8>>) {
        for report in datagrams {
            let msg = Message::MembershipUpdate(amt::MembershipUpdate {
                mac: query.mac,
                nonce: query.nonce,
                report: &report,
            });
            self.stats.updates_sent += 1;
            self.transmits.push_back(Transmit {
                destination: relay,
                payload: msg.to_vec(),
            });
        }
    }

    fn send_teardown(
        &mut self,
        relay: SocketAddr,
        mac: ResponseMac,
        nonce: u32,
        gateway: SocketAddr,
    ) {
        self.stats.teardowns_sent += 1;
        let msg = Message::Teardown(amt::Teardown {
            mac,
            nonce,
            gateway,
        });
        self.transmits.push_back(Transmit {
            destination: relay,
            payload: msg.to_vec(),
        });
    }

    fn maybe_finish_close(&mut self) {
        if self.phase != Phase::Closing || self.families.iter().any(|f| !f.changes.is_empty()) {
            return;
        }
        if let Some(relay) = self.relay {
            for family in Family::ALL {
                let Some(q) = self.families[family.index()].query else {
                    continue;
                };
                let local = (!self.local.ip().is_unspecified()).then_some(self.local);
                if let Some(gateway) = q.gateway.or(local) {
                    self.send_teardown(relay, q.mac, q.nonce, gateway);
                }
            }
        }
        self.finish_close();
    }

    fn finish_close(&mut self) {
        self.phase = Phase::Closed;
        self.up = false;
        for fs in &mut self.families {
            fs.request = None;
            fs.next_request_at = None;
            fs.next_change_at = None;
            fs.changes.clear();
        }
        self.events.push_back(TunnelEvent::Closed);
    }

    fn refresh_timer(&mut self) {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        match self.phase {
            Phase::Discovering { deadline, .. } => consider(Some(deadline)),
            Phase::Refused { until } => consider(Some(until)),
            Phase::Closed => {}
            Phase::Active | Phase::Closing => {
                for fs in &self.families {
                    consider(fs.request.map(|r| r.deadline));
                    consider(fs.next_request_at);
                    consider(fs.next_change_at);
                }
            }
        }
        let mut stall_armed = false;
        if self.phase == Phase::Active {
            for family in Family::ALL {
                let at = self.stall_deadline(family);
                stall_armed |= at.is_some();
                consider(at);
            }
        }
        self.stall_timer_armed = stall_armed;
        if matches!(self.phase, Phase::Active | Phase::Closing) {
            consider(self.activity_check_at);
        }
        self.next_timeout = next;
        self.stats.next_request_at = self
            .families
            .iter()
            .flat_map(|fs| [fs.request.map(|r| r.deadline), fs.next_request_at])
            .flatten()
            .min();
    }
}
