//! Sans-IO AMT relay core (RFC 7450 §5.3) for the lab relay and for
//! conformance tests of the gateway. Not a production relay: one process,
//! in-memory state, a lab-grade MAC.
//!
//! * Discovery → Advertisement naming `advertised` (or the local address
//!   the Discovery arrived on).
//! * Request → Membership Query with a Response MAC = low 48 bits of
//!   SipHash(secret, gateway IP, gateway port, nonce), an IGMPv3 (P = 0) or
//!   MLDv2 (P = 1) general query, L when refusing, the G trailer on request.
//!   The secret rotates every `secret_rotation`; Updates are accepted with
//!   the current or the previous secret.
//! * Update: rejected (counted) when its nonce was never issued to that
//!   gateway address/port or its MAC does not verify. Group records change
//!   per-gateway (S,G) state: IS_IN / ALLOW / TO_IN refresh sources for the
//!   group membership interval QRV × QQI + QRI; BLOCK removes them at once
//!   (a tunnel is point-to-point, so no last-member query is needed);
//!   TO_IN(B) keeps exactly B; EXCLUDE-mode records (ASM) are counted and
//!   ignored.
//! * Teardown: verified like an Update against the gateway address in the
//!   message; drops that gateway's state.
//! * Data path: [`Relay::forward`] returns the gateways subscribed to an
//!   (S,G) (a precomputed index; no allocation).
//! * Scale: every change is incremental: a report costs O(records × log n),
//!   an expiry O(log n), the next timer O(log n), whatever the number n of
//!   (gateway, channel) pairs. Changes are queued as [`ChannelEvent`]s, so
//!   the I/O around the core (native joins, event logs) follows them
//!   without comparing whole channel sets.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ingest_types::SourceGroup;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gateway::Transmit;
use crate::wire::amt::{self, MembershipQuery, Message, QueryKind, ResponseMac};
use crate::wire::encap::{self, EncapReport};
use crate::wire::{
    GroupRecord, RecordType, encode_float_code_u8, encode_float_code_u16, igmp, mld,
};

#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Address put in Advertisements; `None`: the address the Discovery
    /// was received on.
    pub advertised: Option<IpAddr>,
    /// Query interval announced in QQIC (next Request expected after it).
    pub qqi: Duration,
    /// Robustness variable announced in queries.
    pub qrv: u8,
    /// Query response interval (Max Resp Code).
    pub qri: Duration,
    pub secret_rotation: Duration,
    /// Set the L flag: accept no Updates from gateways without state.
    pub refuse: bool,
    /// Append the gateway's address and port (G flag) to queries.
    pub send_gateway_address: bool,
    /// Nonces remembered per gateway address (to tell unknown nonces
    /// from bad MACs).
    pub nonces_per_gateway: usize,
    /// Cap on gateway addresses with issued nonces (oldest evicted).
    pub max_pending_gateways: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            advertised: None,
            qqi: Duration::from_secs(125),
            qrv: 2,
            qri: Duration::from_secs(10),
            secret_rotation: Duration::from_secs(60),
            refuse: false,
            send_gateway_address: false,
            nonces_per_gateway: 8,
            max_pending_gateways: 4096,
        }
    }
}

impl RelayConfig {
    /// Group membership interval: how long a report keeps a source alive.
    pub fn membership_interval(&self) -> Duration {
        self.qqi.saturating_mul(u32::from(self.qrv.max(1))) + self.qri
    }
}

/// What the relay made of a datagram on its AMT port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayInput {
    /// Handled; subscriptions may have changed if `changed`.
    Control {
        changed: bool,
    },
    Rejected(RejectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Malformed,
    /// A message a gateway never sends to a relay.
    Unexpected,
    UnknownNonce,
    BadMac,
    /// L flag set and the gateway has no state here.
    Refused,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub discoveries: u64,
    pub requests: u64,
    pub queries_sent: u64,
    pub updates_accepted: u64,
    pub teardowns_accepted: u64,
    pub malformed: u64,
    pub unexpected: u64,
    pub unknown_nonce: u64,
    pub bad_mac: u64,
    pub refused: u64,
    /// EXCLUDE-mode (ASM) records ignored.
    pub exclude_records: u64,
    pub expired: u64,
    pub secret_rotations: u64,
}

/// Why a gateway stopped receiving a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoveReason {
    /// A report left it (BLOCK, or TO_IN without the source).
    Left,
    /// The gateway tore its tunnel down.
    Teardown,
    /// No report refreshed it within the membership interval.
    Expired,
}

/// A change of subscriptions, in the order it happened. Callers that react
/// to changes drain them with [`Relay::poll_channel_event`] (the queue
/// grows until drained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelEvent {
    /// `gateway` subscribed `channel`.
    Added {
        gateway: SocketAddr,
        channel: SourceGroup,
    },
    /// `gateway` no longer receives `channel`.
    Removed {
        gateway: SocketAddr,
        channel: SourceGroup,
        reason: RemoveReason,
    },
    /// The first gateway subscribed `channel`: join it natively.
    Wanted(SourceGroup),
    /// The last gateway left `channel`: leave it natively.
    Unwanted(SourceGroup),
}

/// Per-(gateway, channel) state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    pub expires: Instant,
    pub since: Instant,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default)]
struct GatewayState {
    channels: BTreeMap<SourceGroup, ChannelState>,
}

/// Status of one gateway for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub gateway: SocketAddr,
    pub channels: Vec<(SourceGroup, ChannelState)>,
}

pub struct Relay {
    cfg: RelayConfig,
    rng: StdRng,
    secret: u64,
    previous_secret: u64,
    next_rotation: Instant,
    issued: HashMap<SocketAddr, VecDeque<u32>>,
    issued_order: VecDeque<SocketAddr>,
    gateways: HashMap<SocketAddr, GatewayState>,
    /// (S,G) → subscribed gateways (sorted): the data path's lookup.
    index: HashMap<SourceGroup, Vec<SocketAddr>>,
    /// Every (gateway, channel) by expiry time: the next timer and the
    /// expired pairs without a scan.
    expiries: BTreeSet<(Instant, SocketAddr, SourceGroup)>,
    channel_events: VecDeque<ChannelEvent>,
    transmits: VecDeque<Transmit>,
    stats: RelayStats,
}

impl Relay {
    pub fn new(cfg: RelayConfig, now: Instant, rng_seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let secret = rng.random();
        let previous_secret = rng.random();
        Self {
            next_rotation: now + cfg.secret_rotation.max(Duration::from_secs(1)),
            cfg,
            rng,
            secret,
            previous_secret,
            issued: HashMap::new(),
            issued_order: VecDeque::new(),
            gateways: HashMap::new(),
            index: HashMap::new(),
            expiries: BTreeSet::new(),
            channel_events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    pub fn set_refuse(&mut self, refuse: bool) {
        self.cfg.refuse = refuse;
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    fn mac(secret: u64, gateway: SocketAddr, nonce: u32) -> ResponseMac {
        let mut h = DefaultHasher::new();
        secret.hash(&mut h);
        gateway.ip().hash(&mut h);
        gateway.port().hash(&mut h);
        nonce.hash(&mut h);
        ResponseMac::from_u64(h.finish())
    }

    fn verify(
        &mut self,
        gateway: SocketAddr,
        mac: ResponseMac,
        nonce: u32,
    ) -> Result<(), RejectReason> {
        if !self
            .issued
            .get(&gateway)
            .is_some_and(|n| n.contains(&nonce))
        {
            self.stats.unknown_nonce += 1;
            return Err(RejectReason::UnknownNonce);
        }
        if mac != Self::mac(self.secret, gateway, nonce)
            && mac != Self::mac(self.previous_secret, gateway, nonce)
        {
            self.stats.bad_mac += 1;
            return Err(RejectReason::BadMac);
        }
        Ok(())
    }

    fn remember_nonce(&mut self, gateway: SocketAddr, nonce: u32) {
        if !self.issued.contains_key(&gateway) {
            if self.issued.len() >= self.cfg.max_pending_gateways
                && let Some(old) = self.issued_order.pop_front()
            {
                self.issued.remove(&old);
            }
            self.issued_order.push_back(gateway);
        }
        let list = self.issued.entry(gateway).or_default();
        if list.len() >= self.cfg.nonces_per_gateway.max(1) {
            list.pop_front();
        }
        list.push_back(nonce);
    }

    /// Handles one datagram received on the AMT port from `from`;
    /// `local_ip` is the address it was sent to (used in Advertisements
    /// when no address is configured).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local_ip: IpAddr,
        payload: &[u8],
    ) -> RelayInput {
        let Ok(msg) = Message::decode(payload) else {
            self.stats.malformed += 1;
            return RelayInput::Rejected(RejectReason::Malformed);
        };
        match msg {
            Message::RelayDiscovery(d) => {
                self.stats.discoveries += 1;
                let relay = self.cfg.advertised.unwrap_or(local_ip);
                self.push(
                    from,
                    Message::RelayAdvertisement(amt::RelayAdvertisement {
                        nonce: d.nonce,
                        relay,
                    }),
                );
                RelayInput::Control { changed: false }
            }
            Message::Request(r) => {
                self.stats.requests += 1;
                self.remember_nonce(from, r.nonce);
                let mac = Self::mac(self.secret, from, r.nonce);
                let datagram = self.general_query(r.kind);
                let q = Message::MembershipQuery(MembershipQuery {
                    limit: self.cfg.refuse,
                    gateway_flag: self.cfg.send_gateway_address,
                    mac,
                    nonce: r.nonce,
                    query: &datagram,
                    gateway: self.cfg.send_gateway_address.then_some(from),
                });
                let bytes = q.to_vec();
                self.stats.queries_sent += 1;
                self.transmits.push_back(Transmit {
                    destination: from,
                    payload: bytes,
                });
                RelayInput::Control { changed: false }
            }
            Message::MembershipUpdate(u) => {
                if let Err(reason) = self.verify(from, u.mac, u.nonce) {
                    return RelayInput::Rejected(reason);
                }
                if self.cfg.refuse && !self.gateways.contains_key(&from) {
                    self.stats.refused += 1;
                    return RelayInput::Rejected(RejectReason::Refused);
                }
                let Ok(report) = EncapReport::parse(u.report) else {
                    self.stats.malformed += 1;
                    return RelayInput::Rejected(RejectReason::Malformed);
                };
                self.stats.updates_accepted += 1;
                let changed = self.apply_report(now, from, &report);
                RelayInput::Control { changed }
            }
            Message::Teardown(t) => {
                if let Err(reason) = self.verify(t.gateway, t.mac, t.nonce) {
                    return RelayInput::Rejected(reason);
                }
                self.stats.teardowns_accepted += 1;
                let changed = self.remove_gateway(t.gateway, RemoveReason::Teardown);
                self.issued.remove(&t.gateway);
                RelayInput::Control { changed }
            }
            Message::RelayAdvertisement(_)
            | Message::MembershipQuery(_)
            | Message::MulticastData(_) => {
                self.stats.unexpected += 1;
                RelayInput::Rejected(RejectReason::Unexpected)
            }
        }
    }

    fn general_query(&self, kind: QueryKind) -> Vec<u8> {
        let qqic = encode_float_code_u8(self.cfg.qqi.as_secs().min(u64::from(u32::MAX)) as u32);
        let qrv = self.cfg.qrv.min(7);
        match kind {
            QueryKind::Igmpv3 => {
                let mrc = encode_float_code_u8(
                    (self.cfg.qri.as_millis() / 100).min(u128::from(u32::MAX)) as u32,
                );
                encap::igmpv3_query_datagram(
                    Ipv4Addr::UNSPECIFIED,
                    &igmp::QueryRepr::general(mrc, qrv, qqic),
                    true,
                )
            }
            QueryKind::Mldv2 => {
                let mrc = encode_float_code_u16(
                    self.cfg.qri.as_millis().min(u128::from(u32::MAX)) as u32
                );
                encap::mldv2_query_datagram(
                    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x2268),
                    &mld::QueryRepr::general(mrc, qrv, qqic),
                )
            }
        }
        // Both builders only fail for absurd sizes; an empty query would be
        // rejected by the gateway, which is the honest outcome.
        .unwrap_or_default()
    }

    fn apply_report(&mut self, now: Instant, gateway: SocketAddr, report: &EncapReport) -> bool {
        let records: Vec<GroupRecord<IpAddr>> = match report {
            EncapReport::Igmp { report, .. } => {
                report.records.iter().map(GroupRecord::to_ip).collect()
            }
            EncapReport::Mld { report, .. } => {
                report.records.iter().map(GroupRecord::to_ip).collect()
            }
        };
        let expires = now + self.cfg.membership_interval();
        let mut changed = false;
        for GroupRecord {
            record_type: kind,
            group,
            sources,
        } in records
        {
            if !group.is_multicast() {
                continue;
            }
            match kind {
                RecordType::ModeIsInclude
                | RecordType::AllowNewSources
                | RecordType::ChangeToInclude => {
                    if kind == RecordType::ChangeToInclude {
                        changed |= self.keep_only_sources(gateway, group, &sources);
                    }
                    for source in sources {
                        changed |=
                            self.refresh(now, expires, gateway, SourceGroup { source, group });
                    }
                }
                RecordType::BlockOldSources => {
                    for source in sources {
                        let channel = SourceGroup { source, group };
                        changed |= self.remove_channel(gateway, channel, RemoveReason::Left);
                    }
                }
                RecordType::ModeIsExclude
                | RecordType::ChangeToExclude
                | RecordType::Unknown(_) => {
                    self.stats.exclude_records += 1;
                }
            }
        }
        changed
    }

    /// Adds or refreshes (gateway, channel); true when it is new.
    fn refresh(
        &mut self,
        now: Instant,
        expires: Instant,
        gateway: SocketAddr,
        channel: SourceGroup,
    ) -> bool {
        let channels = &mut self.gateways.entry(gateway).or_default().channels;
        if let Some(state) = channels.get_mut(&channel) {
            self.expiries.remove(&(state.expires, gateway, channel));
            state.expires = expires;
            self.expiries.insert((expires, gateway, channel));
            return false;
        }
        channels.insert(
            channel,
            ChannelState {
                expires,
                since: now,
                packets: 0,
                bytes: 0,
            },
        );
        self.expiries.insert((expires, gateway, channel));
        self.channel_events
            .push_back(ChannelEvent::Added { gateway, channel });
        let subscribers = self.index.entry(channel).or_default();
        if subscribers.is_empty() {
            self.channel_events.push_back(ChannelEvent::Wanted(channel));
        }
        if let Err(at) = subscribers.binary_search(&gateway) {
            subscribers.insert(at, gateway);
        }
        true
    }

    /// Removes (gateway, channel); true when it was there.
    fn remove_channel(
        &mut self,
        gateway: SocketAddr,
        channel: SourceGroup,
        reason: RemoveReason,
    ) -> bool {
        let Some(gw) = self.gateways.get_mut(&gateway) else {
            return false;
        };
        let Some(state) = gw.channels.remove(&channel) else {
            return false;
        };
        if gw.channels.is_empty() {
            self.gateways.remove(&gateway);
        }
        self.expiries.remove(&(state.expires, gateway, channel));
        self.channel_events.push_back(ChannelEvent::Removed {
            gateway,
            channel,
            reason,
        });
        if let Some(subscribers) = self.index.get_mut(&channel) {
            subscribers.retain(|g| *g != gateway);
            if subscribers.is_empty() {
                self.index.remove(&channel);
                self.channel_events
                    .push_back(ChannelEvent::Unwanted(channel));
            }
        }
        true
    }

    /// TO_IN(B) for `group`: drops the gateway's sources of `group` not in
    /// `keep`; true when any was dropped.
    fn keep_only_sources(&mut self, gateway: SocketAddr, group: IpAddr, keep: &[IpAddr]) -> bool {
        let Some(gw) = self.gateways.get(&gateway) else {
            return false;
        };
        let dropped: Vec<SourceGroup> = gw
            .channels
            .keys()
            .filter(|sg| sg.group == group && !keep.contains(&sg.source))
            .copied()
            .collect();
        let mut changed = false;
        for channel in dropped {
            changed |= self.remove_channel(gateway, channel, RemoveReason::Left);
        }
        changed
    }

    /// Drops all of a gateway's channels; true when it had any.
    fn remove_gateway(&mut self, gateway: SocketAddr, reason: RemoveReason) -> bool {
        let channels: Vec<SourceGroup> = self
            .gateways
            .get(&gateway)
            .map(|g| g.channels.keys().copied().collect())
            .unwrap_or_default();
        let mut changed = false;
        for channel in channels {
            changed |= self.remove_channel(gateway, channel, reason);
        }
        changed
    }

    /// Expires memberships and rotates the secret. Returns true when the
    /// set of channels changed.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if now >= self.next_rotation {
            self.previous_secret = self.secret;
            self.secret = self.rng.random();
            self.stats.secret_rotations += 1;
            self.next_rotation = now + self.cfg.secret_rotation.max(Duration::from_secs(1));
        }
        let mut expired = 0;
        while let Some(&(expires, gateway, channel)) = self.expiries.first()
            && expires <= now
        {
            self.remove_channel(gateway, channel, RemoveReason::Expired);
            expired += 1;
        }
        self.stats.expired += expired;
        expired > 0
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let earliest = self.expiries.first().map(|(expires, _, _)| *expires);
        Some(earliest.map_or(self.next_rotation, |e| e.min(self.next_rotation)))
    }

    /// The next subscription change since the last call, oldest first.
    pub fn poll_channel_event(&mut self) -> Option<ChannelEvent> {
        self.channel_events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn push(&mut self, destination: SocketAddr, msg: Message<'_>) {
        self.transmits.push_back(Transmit {
            destination,
            payload: msg.to_vec(),
        });
    }

    /// Channels some gateway wants: the native (S,G) joins to hold.
    pub fn channels(&self) -> BTreeSet<SourceGroup> {
        self.index.keys().copied().collect()
    }

    /// Does some gateway want `channel`?
    pub fn wants(&self, channel: SourceGroup) -> bool {
        self.index.contains_key(&channel)
    }

    /// Number of (gateway, channel) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.expiries.len()
    }

    /// Gateways to send a native packet of (S,G) to, counting it for each.
    pub fn forward(&mut self, sg: SourceGroup, len: usize) -> &[SocketAddr] {
        let Some(list) = self.index.get(&sg) else {
            return &[];
        };
        for gw in list {
            if let Some(c) = self
                .gateways
                .get_mut(gw)
                .and_then(|g| g.channels.get_mut(&sg))
            {
                c.packets += 1;
                c.bytes += len as u64;
            }
        }
        list
    }

    pub fn gateways(&self) -> Vec<GatewayStatus> {
        let mut out: Vec<GatewayStatus> = self
            .gateways
            .iter()
            .map(|(gw, st)| GatewayStatus {
                gateway: *gw,
                channels: st.channels.iter().map(|(sg, c)| (*sg, c.clone())).collect(),
            })
            .collect();
        out.sort_by_key(|g| g.gateway);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{Received, Tunnel, TunnelConfig, TunnelEvent, TunnelState};
    use crate::wire::amt::MembershipUpdate;

    fn sg(source: IpAddr, group: IpAddr) -> SourceGroup {
        SourceGroup { source, group }
    }
    fn relay_ip() -> IpAddr {
        "203.0.113.20".parse().unwrap()
    }
    fn relay_addr() -> SocketAddr {
        SocketAddr::new(relay_ip(), 2268)
    }
    fn gw_addr() -> SocketAddr {
        "198.51.100.2:40000".parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Moves every pending datagram between tunnel and relay until quiet.
    fn pump(now: Instant, t: &mut Tunnel, r: &mut Relay) {
        loop {
            let mut moved = false;
            while let Some(tx) = t.poll_transmit() {
                moved = true;
                assert!(tx.destination.ip() == relay_ip());
                r.handle_datagram(now, gw_addr(), relay_ip(), &tx.payload);
            }
            while let Some(tx) = r.poll_transmit() {
                moved = true;
                assert_eq!(tx.destination, gw_addr());
                t.handle_datagram(now, relay_addr(), &tx.payload);
            }
            if !moved {
                break;
            }
        }
    }

    fn data(s: &str, g: &str) -> Vec<u8> {
        let ip = crate::wire::ip::IpRepr::new(ip(s), ip(g), 17, 3, 8).unwrap();
        let mut b = amt::MULTICAST_DATA_HEADER.to_vec();
        b.extend(ip.packet().unwrap().0);
        b
    }

    /// What `r`'s Query answering an IGMPv3 Request with `nonce` says:
    /// the L flag, the MAC and the G trailer.
    struct QueryAnswer {
        limit: bool,
        mac: ResponseMac,
        gateway: Option<SocketAddr>,
    }

    fn query_for_request(r: &mut Relay, now: Instant, nonce: u32) -> QueryAnswer {
        let request = Message::Request(amt::Request {
            nonce,
            kind: QueryKind::Igmpv3,
        });
        r.handle_datagram(now, gw_addr(), relay_ip(), &request.to_vec());
        let q = r.poll_transmit().unwrap();
        let Ok(Message::MembershipQuery(mq)) = Message::decode(&q.payload) else {
            panic!("no Query for Request {nonce}: {:?}", q.payload)
        };
        QueryAnswer {
            limit: mq.limit,
            mac: mq.mac,
            gateway: mq.gateway,
        }
    }

    #[test]
    fn gateway_and_relay_interoperate_through_join_data_refresh_and_leave() {
        let t0 = Instant::now();
        let mut r = Relay::new(
            RelayConfig {
                qqi: Duration::from_secs(20),
                send_gateway_address: true,
                ..RelayConfig::default()
            },
            t0,
            9,
        );
        let mut t = Tunnel::new(TunnelConfig::new(relay_addr()), gw_addr(), t0, 3);
        pump(t0, &mut t, &mut r);
        t.subscribe(sg(ip("192.0.2.1"), ip("232.1.1.1")), t0)
            .unwrap();
        pump(t0, &mut t, &mut r);
        assert_eq!(t.state(), TunnelState::Up);
        assert_eq!(t.stats().query_interval, Some(Duration::from_secs(20)));
        assert_eq!(t.stats().gateway_address, Some(gw_addr()));
        assert_eq!(
            r.channels().into_iter().collect::<Vec<_>>(),
            vec![sg(ip("192.0.2.1"), ip("232.1.1.1"))]
        );
        assert_eq!(
            r.forward(sg(ip("192.0.2.1"), ip("232.1.1.1")), 100),
            &[gw_addr()]
        );
        assert!(
            r.forward(sg(ip("192.0.2.9"), ip("232.1.1.1")), 100)
                .is_empty()
        );
        assert!(matches!(
            t.handle_datagram(t0, relay_addr(), &data("192.0.2.1", "232.1.1.1")),
            Received::Data { .. }
        ));

        // Ten minutes of refreshes (relay secret rotates every minute) keep
        // the membership alive.
        let mut now = t0;
        let end = t0 + Duration::from_secs(600);
        while now < end {
            let next = [t.poll_timeout(), r.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            now = next.min(end);
            t.handle_timeout(now);
            r.handle_timeout(now);
            pump(now, &mut t, &mut r);
            assert_eq!(r.channels().len(), 1, "membership lapsed at {:?}", now - t0);
        }
        assert!(r.stats().secret_rotations >= 9);
        assert_eq!(r.stats().bad_mac, 0);
        assert_eq!(r.stats().unknown_nonce, 0);

        // Leave: the relay stops forwarding at once.
        t.unsubscribe(sg(ip("192.0.2.1"), ip("232.1.1.1")), now);
        pump(now, &mut t, &mut r);
        assert!(r.channels().is_empty());
        assert!(
            r.forward(sg(ip("192.0.2.1"), ip("232.1.1.1")), 100)
                .is_empty()
        );
        t.close(now);
        pump(now, &mut t, &mut r);
        while let Some(d) = t.poll_timeout() {
            t.handle_timeout(d);
            pump(d, &mut t, &mut r);
        }
        assert!(events(&mut t).contains(&TunnelEvent::Closed));
        assert_eq!(r.stats().teardowns_accepted, 1);
    }

    fn events(t: &mut Tunnel) -> Vec<TunnelEvent> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    #[test]
    fn ipv6_channels_through_mld() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig::default(), t0, 1);
        let mut c = TunnelConfig::new(relay_addr());
        c.skip_discovery = true;
        let mut t = Tunnel::new(c, gw_addr(), t0, 2);
        t.subscribe(sg(ip("2001:db8::1"), ip("ff3e::8000:1")), t0)
            .unwrap();
        pump(t0, &mut t, &mut r);
        assert_eq!(t.state(), TunnelState::Up);
        assert_eq!(
            r.forward(sg(ip("2001:db8::1"), ip("ff3e::8000:1")), 10),
            &[gw_addr()]
        );
    }

    #[test]
    fn memberships_expire_without_refresh() {
        let t0 = Instant::now();
        let mut r = Relay::new(
            RelayConfig {
                qqi: Duration::from_secs(10),
                qri: Duration::from_secs(1),
                ..RelayConfig::default()
            },
            t0,
            1,
        );
        let mut c = TunnelConfig::new(relay_addr());
        c.skip_discovery = true;
        let mut t = Tunnel::new(c, gw_addr(), t0, 2);
        t.subscribe(sg(ip("192.0.2.1"), ip("232.1.1.1")), t0)
            .unwrap();
        pump(t0, &mut t, &mut r);
        assert_eq!(r.channels().len(), 1);
        // Gateway vanishes: state lasts QRV*QQI+QRI = 21 s after the last report.
        let last_report = t0 + Duration::from_secs(1); // last ALLOW repetition at most 1 s later
        t.handle_timeout(last_report);
        pump(last_report, &mut t, &mut r);
        assert_eq!(
            r.poll_timeout()
                .map(|d| d <= last_report + Duration::from_secs(21)),
            Some(true)
        );
        assert!(!r.handle_timeout(t0 + Duration::from_secs(20)));
        assert!(r.handle_timeout(last_report + Duration::from_secs(21)));
        assert!(r.channels().is_empty());
        assert_eq!(r.stats().expired, 1);
    }

    #[test]
    fn bad_mac_unknown_nonce_and_refusal_are_rejected() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig::default(), t0, 5);
        let report = encap::igmpv3_report_datagram(
            Ipv4Addr::UNSPECIFIED,
            &igmp::ReportRepr {
                records: vec![GroupRecord {
                    record_type: RecordType::AllowNewSources,
                    group: "232.1.1.1".parse().unwrap(),
                    sources: vec!["192.0.2.1".parse().unwrap()],
                }],
            },
        )
        .unwrap();
        let update = |mac, nonce| {
            Message::MembershipUpdate(MembershipUpdate {
                mac,
                nonce,
                report: &report,
            })
            .to_vec()
        };
        assert_eq!(
            r.handle_datagram(t0, gw_addr(), relay_ip(), &update(ResponseMac([0; 6]), 77)),
            RelayInput::Rejected(RejectReason::UnknownNonce)
        );
        let mq = query_for_request(&mut r, t0, 77);
        assert!(!mq.limit);
        assert_eq!(mq.gateway, None);
        assert_eq!(
            r.handle_datagram(t0, gw_addr(), relay_ip(), &update(ResponseMac([0; 6]), 77)),
            RelayInput::Rejected(RejectReason::BadMac)
        );
        // Same nonce and MAC from another port: the MAC binds the address.
        let other: SocketAddr = "198.51.100.2:40001".parse().unwrap();
        assert_eq!(
            r.handle_datagram(t0, other, relay_ip(), &update(mq.mac, 77)),
            RelayInput::Rejected(RejectReason::UnknownNonce)
        );
        // Still valid after one rotation, not after two.
        r.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(
            r.handle_datagram(t0, gw_addr(), relay_ip(), &update(mq.mac, 77)),
            RelayInput::Control { changed: true }
        );
        r.handle_timeout(t0 + Duration::from_secs(120));
        assert_eq!(
            r.handle_datagram(t0, gw_addr(), relay_ip(), &update(mq.mac, 77)),
            RelayInput::Rejected(RejectReason::BadMac)
        );
        assert_eq!((r.stats().bad_mac, r.stats().unknown_nonce), (2, 2));

        // Refusing relay: L flag set, Updates from new gateways ignored.
        let mut refusing = Relay::new(
            RelayConfig {
                refuse: true,
                ..RelayConfig::default()
            },
            t0,
            5,
        );
        let mq = query_for_request(&mut refusing, t0, 1);
        assert!(mq.limit);
        assert_eq!(
            refusing.handle_datagram(t0, gw_addr(), relay_ip(), &update(mq.mac, 1)),
            RelayInput::Rejected(RejectReason::Refused)
        );
    }

    #[test]
    fn refusing_relay_makes_the_tunnel_report_refusal() {
        let t0 = Instant::now();
        let mut r = Relay::new(
            RelayConfig {
                refuse: true,
                ..RelayConfig::default()
            },
            t0,
            1,
        );
        let mut t = Tunnel::new(TunnelConfig::new(relay_addr()), gw_addr(), t0, 2);
        t.subscribe(sg(ip("192.0.2.1"), ip("232.1.1.1")), t0)
            .unwrap();
        pump(t0, &mut t, &mut r);
        assert_eq!(t.state(), TunnelState::Refused);
        assert!(events(&mut t).contains(&TunnelEvent::RelayRefused {
            relay: relay_addr()
        }));
        assert!(r.channels().is_empty());
    }

    #[test]
    fn advertisement_uses_configured_or_local_address() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig::default(), t0, 1);
        let disc = Message::RelayDiscovery(amt::RelayDiscovery { nonce: 5 }).to_vec();
        r.handle_datagram(t0, gw_addr(), ip("10.9.9.9"), &disc);
        let Ok(Message::RelayAdvertisement(a)) =
            Message::decode(&r.poll_transmit().unwrap().payload)
        else {
            panic!()
        };
        assert_eq!((a.nonce, a.relay), (5, ip("10.9.9.9")));
        r.set_refuse(false);
        let mut r2 = Relay::new(
            RelayConfig {
                advertised: Some(ip("2001:db8::20")),
                ..RelayConfig::default()
            },
            t0,
            1,
        );
        r2.handle_datagram(t0, gw_addr(), ip("10.9.9.9"), &disc);
        let Ok(Message::RelayAdvertisement(a)) =
            Message::decode(&r2.poll_transmit().unwrap().payload)
        else {
            panic!()
        };
        assert_eq!(a.relay, ip("2001:db8::20"));
        assert_eq!(
            r2.handle_datagram(
                t0,
                gw_addr(),
                ip("10.9.9.9"),
                &[0x02, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
            ),
            RelayInput::Rejected(RejectReason::Unexpected)
        );
    }

    #[test]
    fn to_in_keeps_exactly_the_listed_sources_and_exclude_is_ignored() {
        let t0 = Instant::now();
        let mut r = Relay::new(RelayConfig::default(), t0, 1);
        let report = EncapReport::Igmp {
            src: Ipv4Addr::UNSPECIFIED,
            report: igmp::ReportRepr {
                records: vec![GroupRecord {
                    record_type: RecordType::AllowNewSources,
                    group: "232.1.1.1".parse().unwrap(),
                    sources: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
                }],
            },
        };
        assert!(r.apply_report(t0, gw_addr(), &report));
        assert_eq!(r.channels().len(), 2);
        let to_in = EncapReport::Igmp {
            src: Ipv4Addr::UNSPECIFIED,
            report: igmp::ReportRepr {
                records: vec![
                    GroupRecord {
                        record_type: RecordType::ChangeToInclude,
                        group: "232.1.1.1".parse().unwrap(),
                        sources: vec!["192.0.2.2".parse().unwrap()],
                    },
                    GroupRecord {
                        record_type: RecordType::ModeIsExclude,
                        group: "239.1.1.1".parse().unwrap(),
                        sources: vec![],
                    },
                ],
            },
        };
        assert!(r.apply_report(t0, gw_addr(), &to_in));
        assert_eq!(
            r.channels().into_iter().collect::<Vec<_>>(),
            vec![sg(ip("192.0.2.2"), ip("232.1.1.1"))]
        );
        assert_eq!(r.stats().exclude_records, 1);
        let status = r.gateways();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].gateway, gw_addr());
    }

    fn igmp_report(record_type: RecordType, group: &str, sources: &[String]) -> EncapReport {
        EncapReport::Igmp {
            src: Ipv4Addr::UNSPECIFIED,
            report: igmp::ReportRepr {
                records: vec![GroupRecord {
                    record_type,
                    group: group.parse().unwrap(),
                    sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
                }],
            },
        }
    }

    /// A config whose secret rotation never comes first (timers are expiries).
    fn no_rotation() -> RelayConfig {
        RelayConfig {
            secret_rotation: Duration::from_secs(100_000),
            ..RelayConfig::default()
        }
    }

    fn channel_events(r: &mut Relay) -> Vec<ChannelEvent> {
        std::iter::from_fn(|| r.poll_channel_event()).collect()
    }

    /// The index as a full rebuild would make it (what the relay did
    /// after every change before it became incremental).
    fn rebuilt_index(r: &Relay) -> HashMap<SourceGroup, Vec<SocketAddr>> {
        let mut index: HashMap<SourceGroup, Vec<SocketAddr>> = HashMap::new();
        for (gw, state) in &r.gateways {
            for key in state.channels.keys() {
                index.entry(*key).or_default().push(*gw);
            }
        }
        for list in index.values_mut() {
            list.sort();
        }
        index
    }

    #[test]
    fn channel_events_follow_joins_leaves_teardown_and_expiry() {
        let t0 = Instant::now();
        let mut r = Relay::new(no_rotation(), t0, 1);
        let gw2: SocketAddr = "198.51.100.3:40000".parse().unwrap();
        let ch = sg(ip("192.0.2.1"), ip("232.1.1.1"));
        let ch2 = sg(ip("192.0.2.2"), ip("232.1.1.1"));
        let allow = igmp_report(
            RecordType::AllowNewSources,
            "232.1.1.1",
            &["192.0.2.1".into()],
        );
        assert!(r.apply_report(t0, gw_addr(), &allow));
        assert!(r.apply_report(t0, gw2, &allow));
        // A refresh changes nothing.
        assert!(!r.apply_report(t0, gw2, &allow));
        assert_eq!(
            channel_events(&mut r),
            vec![
                ChannelEvent::Added {
                    gateway: gw_addr(),
                    channel: ch
                },
                ChannelEvent::Wanted(ch),
                ChannelEvent::Added {
                    gateway: gw2,
                    channel: ch
                },
            ]
        );
        assert_eq!(r.forward(ch, 1), &[gw_addr(), gw2]);
        let block = igmp_report(
            RecordType::BlockOldSources,
            "232.1.1.1",
            &["192.0.2.1".into()],
        );
        assert!(r.apply_report(t0, gw_addr(), &block));
        assert!(!r.apply_report(t0, gw_addr(), &block));
        assert_eq!(
            channel_events(&mut r),
            vec![ChannelEvent::Removed {
                gateway: gw_addr(),
                channel: ch,
                reason: RemoveReason::Left
            }]
        );
        assert_eq!(r.forward(ch, 1), &[gw2]);

        // gw2 adds a second source, then expires: both leave, each
        // unwanted once its last gateway is gone.
        let later = t0 + Duration::from_secs(10);
        let allow2 = igmp_report(
            RecordType::AllowNewSources,
            "232.1.1.1",
            &["192.0.2.2".into()],
        );
        assert!(r.apply_report(later, gw2, &allow2));
        channel_events(&mut r);
        let interval = r.config().membership_interval();
        assert_eq!(r.poll_timeout(), Some(t0 + interval));
        assert!(!r.handle_timeout(t0 + interval - Duration::from_millis(1)));
        assert!(r.handle_timeout(t0 + interval));
        assert_eq!(
            channel_events(&mut r),
            vec![
                ChannelEvent::Removed {
                    gateway: gw2,
                    channel: ch,
                    reason: RemoveReason::Expired
                },
                ChannelEvent::Unwanted(ch),
            ]
        );
        assert_eq!(r.channels().into_iter().collect::<Vec<_>>(), vec![ch2]);
        assert_eq!(r.poll_timeout(), Some(later + interval));

        // A teardown drops the rest at once.
        assert!(r.remove_gateway(gw2, RemoveReason::Teardown));
        assert_eq!(
            channel_events(&mut r),
            vec![
                ChannelEvent::Removed {
                    gateway: gw2,
                    channel: ch2,
                    reason: RemoveReason::Teardown
                },
                ChannelEvent::Unwanted(ch2),
            ]
        );
        assert!(r.gateways.is_empty() && r.index.is_empty() && r.expiries.is_empty());
        assert_eq!(r.stats().expired, 1);
    }

    /// Issue 10: 20,000 channels of one gateway, one Update each, then a
    /// refresh of all and their expiry. With the index rebuilt after every
    /// Update this was quadratic (about 2 x 10^8 index insertions); now each
    /// Update costs O(log n). The bound is loose on purpose (debug build on
    /// a shared machine); the quadratic version needed minutes.
    #[test]
    fn twenty_thousand_channels_update_incrementally() {
        const N: u32 = 20_000;
        let t0 = Instant::now();
        let mut r = Relay::new(no_rotation(), t0, 1);
        let group = |i: u32| format!("232.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let source = vec!["192.0.2.1".to_string()];
        let started = Instant::now();
        for i in 0..N {
            let report = igmp_report(RecordType::AllowNewSources, &group(i), &source);
            assert!(r.apply_report(t0, gw_addr(), &report));
            assert!(matches!(
                r.poll_channel_event(),
                Some(ChannelEvent::Added { .. })
            ));
            assert!(matches!(
                r.poll_channel_event(),
                Some(ChannelEvent::Wanted(_))
            ));
        }
        let refreshed = t0 + Duration::from_secs(30);
        for i in 0..N {
            let report = igmp_report(RecordType::ModeIsInclude, &group(i), &source);
            assert!(!r.apply_report(refreshed, gw_addr(), &report));
        }
        assert_eq!(r.subscription_count(), N as usize);
        assert_eq!(r.index, rebuilt_index(&r));
        let expiry = refreshed + r.config().membership_interval();
        assert_eq!(r.poll_timeout(), Some(expiry));
        assert!(r.handle_timeout(expiry));
        assert_eq!(r.stats().expired, u64::from(N));
        assert!(r.index.is_empty() && r.expiries.is_empty() && r.gateways.is_empty());
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(20),
            "{N} updates, refreshes and expiries took {elapsed:?}"
        );
    }

    proptest::proptest! {
        /// Any sequence of reports, teardowns and timeouts leaves the
        /// incremental index, expiry set and event stream equal to what a
        /// full recomputation gives.
        #[test]
        fn incremental_index_matches_a_rebuild(
            ops in proptest::collection::vec((0u8..6, 0usize..3, 0u8..3, proptest::collection::vec(0u8..4, 0..4), 0u64..400), 1..60)
        ) {
            let t0 = Instant::now();
            let mut r = Relay::new(RelayConfig::default(), t0, 1);
            let gateways: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::new(ip("198.51.100.2"), 40000 + i)).collect();
            let mut wanted: BTreeSet<SourceGroup> = BTreeSet::new();
            let mut pairs: BTreeSet<(SocketAddr, SourceGroup)> = BTreeSet::new();
            for (op, gw, group, sources, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                let gateway = gateways[gw];
                let group = format!("232.1.1.{group}");
                let sources: Vec<String> = sources.iter().map(|s| format!("192.0.2.{s}")).collect();
                match op {
                    0 => { r.apply_report(now, gateway, &igmp_report(RecordType::AllowNewSources, &group, &sources)); }
                    1 => { r.apply_report(now, gateway, &igmp_report(RecordType::ModeIsInclude, &group, &sources)); }
                    2 => { r.apply_report(now, gateway, &igmp_report(RecordType::ChangeToInclude, &group, &sources)); }
                    3 => { r.apply_report(now, gateway, &igmp_report(RecordType::BlockOldSources, &group, &sources)); }
                    4 => { r.remove_gateway(gateway, RemoveReason::Teardown); }
                    _ => { r.handle_timeout(now); }
                }
                for e in channel_events(&mut r) {
                    match e {
                        ChannelEvent::Added { gateway, channel } => proptest::prop_assert!(pairs.insert((gateway, channel))),
                        ChannelEvent::Removed { gateway, channel, .. } => proptest::prop_assert!(pairs.remove(&(gateway, channel))),
                        ChannelEvent::Wanted(c) => proptest::prop_assert!(wanted.insert(c)),
                        ChannelEvent::Unwanted(c) => proptest::prop_assert!(wanted.remove(&c)),
                    }
                }
                proptest::prop_assert_eq!(&r.index, &rebuilt_index(&r));
                proptest::prop_assert_eq!(&wanted, &r.channels());
                let held: BTreeSet<(SocketAddr, SourceGroup)> = r.gateways().iter()
                    .flat_map(|g| g.channels.iter().map(move |(c, _)| (g.gateway, *c))).collect();
                proptest::prop_assert_eq!(&pairs, &held);
                let expiries: BTreeSet<(Instant, SocketAddr, SourceGroup)> = r.gateways.iter()
                    .flat_map(|(g, st)| st.channels.iter().map(move |(c, cs)| (cs.expires, *g, *c))).collect();
                proptest::prop_assert_eq!(&expiries, &r.expiries);
            }
        }
    }
}
