//! Conformance tests of the sans-IO tunnel against a scripted relay, with a
//! fake clock (a base `Instant` plus offsets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::wire::amt::{MULTICAST_DATA_HEADER, MembershipQuery, Message, QueryKind, ResponseMac};
use crate::wire::encap::{self, EncapReport};
use crate::wire::ip::IpRepr;
use crate::wire::ipv4::PROTO_UDP;
use crate::wire::{GroupRecord, RecordType, igmp, mld};

const S1: &str = "192.0.2.1";
const G1: &str = "232.1.1.1";
const G2: &str = "232.1.1.2";
const S6: &str = "2001:db8::1";
const G6: &str = "ff3e::8000:1";

/// A channel from its parts (unchecked, so tests can also build bad ones).
fn sg(source: IpAddr, group: IpAddr) -> SourceGroup {
    SourceGroup { source, group }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn discovery_addr() -> SocketAddr {
    "203.0.113.1:2268".parse().unwrap()
}

fn relay_addr() -> SocketAddr {
    "203.0.113.20:2268".parse().unwrap()
}

fn local() -> SocketAddr {
    "198.51.100.2:40000".parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn cfg() -> TunnelConfig {
    TunnelConfig::new(discovery_addr())
}

/// A transmit decoded for assertions.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Discovery {
        nonce: u32,
    },
    Request {
        nonce: u32,
        kind: QueryKind,
    },
    Update {
        mac: ResponseMac,
        nonce: u32,
        report: EncapReport,
    },
    Teardown {
        mac: ResponseMac,
        nonce: u32,
        gateway: SocketAddr,
    },
}

fn sent(t: &mut Tunnel) -> Vec<(SocketAddr, Sent)> {
    let mut out = Vec::new();
    while let Some(tx) = t.poll_transmit() {
        let s = match Message::decode(&tx.payload).unwrap() {
            Message::RelayDiscovery(d) => Sent::Discovery { nonce: d.nonce },
            Message::Request(r) => Sent::Request {
                nonce: r.nonce,
                kind: r.kind,
            },
            Message::MembershipUpdate(u) => Sent::Update {
                mac: u.mac,
                nonce: u.nonce,
                report: EncapReport::parse(u.report).unwrap(),
            },
            Message::Teardown(td) => Sent::Teardown {
                mac: td.mac,
                nonce: td.nonce,
                gateway: td.gateway,
            },
            other => panic!("gateway sent {other:?}"),
        };
        out.push((tx.destination, s));
    }
    out
}

fn events(t: &mut Tunnel) -> Vec<TunnelEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn advertisement(nonce: u32, relay: IpAddr) -> Vec<u8> {
    Message::RelayAdvertisement(amt::RelayAdvertisement { nonce, relay }).to_vec()
}

struct QueryOpts {
    nonce: u32,
    mac: ResponseMac,
    qrv: u8,
    qqic: u8,
    limit: bool,
    gateway: Option<SocketAddr>,
    v6: bool,
}

impl QueryOpts {
    fn new(nonce: u32) -> Self {
        Self {
            nonce,
            mac: ResponseMac([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01]),
            qrv: 2,
            qqic: 125,
            limit: false,
            gateway: None,
            v6: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let datagram = if self.v6 {
            encap::mldv2_query_datagram(
                "fe80::99".parse().unwrap(),
                &mld::QueryRepr::general(10_000, self.qrv, self.qqic),
            )
            .unwrap()
        } else {
            encap::igmpv3_query_datagram(
                Ipv4Addr::new(10, 0, 0, 1),
                &igmp::QueryRepr::general(100, self.qrv, self.qqic),
                false,
            )
            .unwrap()
        };
        Message::MembershipQuery(MembershipQuery {
            limit: self.limit,
            gateway_flag: self.gateway.is_some(),
            mac: self.mac,
            nonce: self.nonce,
            query: &datagram,
            gateway: self.gateway,
        })
        .to_vec()
    }
}

/// AMT Multicast Data carrying a UDP packet from `src` to `dst`.
fn data(src: IpAddr, dst: IpAddr, payload_len: usize) -> Vec<u8> {
    let ip = IpRepr::new(src, dst, PROTO_UDP, 1, 8 + payload_len).expect("one family");
    let (packet, _) = ip.packet().unwrap();
    let mut out = MULTICAST_DATA_HEADER.to_vec();
    out.extend(packet);
    out
}

fn only_request(s: &[(SocketAddr, Sent)]) -> (u32, QueryKind) {
    assert_eq!(s.len(), 1, "{s:?}");
    match &s[0] {
        (dst, Sent::Request { nonce, kind }) => {
            assert_eq!(*dst, relay_addr());
            (*nonce, *kind)
        }
        other => panic!("expected Request, got {other:?}"),
    }
}

/// The nonce of the single Request among `s` (other transmits ignored).
fn find_request(s: &[(SocketAddr, Sent)]) -> u32 {
    let reqs: Vec<u32> = s
        .iter()
        .filter_map(|(_, x)| match x {
            Sent::Request { nonce, .. } => Some(*nonce),
            _ => None,
        })
        .collect();
    assert_eq!(reqs.len(), 1, "{s:?}");
    reqs[0]
}

fn discovery_nonce(s: &[(SocketAddr, Sent)]) -> u32 {
    assert_eq!(s.len(), 1, "{s:?}");
    match &s[0] {
        (dst, Sent::Discovery { nonce }) => {
            assert_eq!(*dst, discovery_addr());
            *nonce
        }
        other => panic!("expected Discovery, got {other:?}"),
    }
}

fn igmp_records(s: &Sent) -> (ResponseMac, u32, Vec<GroupRecord<Ipv4Addr>>) {
    match s {
        Sent::Update {
            mac,
            nonce,
            report: EncapReport::Igmp { report, .. },
        } => (*mac, *nonce, report.records.clone()),
        other => panic!("expected IGMP Update, got {other:?}"),
    }
}

fn rec4(t: RecordType, g: &str, s: &[&str]) -> GroupRecord<Ipv4Addr> {
    GroupRecord {
        record_type: t,
        group: g.parse().unwrap(),
        sources: s.iter().map(|x| x.parse().unwrap()).collect(),
    }
}

/// Tunnel (RNG seed `seed`) taken through discovery and one (S1,G1)
/// subscription to its first Request; transmits and events drained.
/// Returns (tunnel, base time, request nonce).
fn requesting(cfg: TunnelConfig, seed: u64) -> (Tunnel, Instant, u32) {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg, local(), t0, seed);
    let dn = discovery_nonce(&sent(&mut t));
    assert_eq!(
        t.handle_datagram(t0, discovery_addr(), &advertisement(dn, relay_addr().ip())),
        Received::Control
    );
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    events(&mut t);
    let (rn, kind) = only_request(&sent(&mut t));
    assert_eq!(kind, QueryKind::Igmpv3);
    (t, t0, rn)
}

/// [`requesting`] and a first Query: the tunnel is up. Returns (tunnel,
/// base, now, query nonce).
fn up_tunnel(cfg: TunnelConfig) -> (Tunnel, Instant, Instant, u32) {
    let (mut t, t0, rn) = requesting(cfg, 42);
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &QueryOpts::new(rn).bytes()),
        Received::Control
    );
    sent(&mut t);
    events(&mut t);
    (t, t0, t0, rn)
}

// ---- discovery -------------------------------------------------------------

#[test]
fn discovery_advertisement_request_query_gives_up() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 1);
    assert_eq!(t.state(), TunnelState::Discovering);
    let dn = discovery_nonce(&sent(&mut t));
    // First window is [1 s, 1 s].
    assert_eq!(t.poll_timeout(), Some(t0 + secs(1)));

    // Wrong nonce and wrong sender are dropped and change nothing.
    assert_eq!(
        t.handle_datagram(
            t0,
            discovery_addr(),
            &advertisement(dn ^ 1, relay_addr().ip())
        ),
        Received::Dropped(DropReason::NonceMismatch)
    );
    assert_eq!(
        t.handle_datagram(
            t0,
            "203.0.113.1:2269".parse().unwrap(),
            &advertisement(dn, relay_addr().ip())
        ),
        Received::Dropped(DropReason::NotFromRelay)
    );
    assert_eq!(t.state(), TunnelState::Discovering);

    assert_eq!(
        t.handle_datagram(t0, discovery_addr(), &advertisement(dn, relay_addr().ip())),
        Received::Control
    );
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::RelayDiscovered {
            relay: relay_addr()
        }]
    );
    assert_eq!(t.relay(), Some(relay_addr()));
    // Nothing subscribed yet: no Request, no timer.
    assert_eq!(t.state(), TunnelState::Idle);
    assert!(sent(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), None);

    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, kind) = only_request(&sent(&mut t));
    assert_eq!(kind, QueryKind::Igmpv3);
    assert_eq!(t.state(), TunnelState::Requesting);
    assert_eq!(t.stats().next_request_at, Some(t0 + secs(1)));

    let q = QueryOpts::new(rn);
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &q.bytes()),
        Received::Control
    );
    assert_eq!(t.state(), TunnelState::Up);
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::Up {
            relay: relay_addr(),
            family: Family::V4
        }]
    );
    // Answer to the Query (current state), then the pending ALLOW.
    let out = sent(&mut t);
    assert_eq!(out.len(), 2, "{out:?}");
    let (mac, nonce, recs) = igmp_records(&out[0].1);
    assert_eq!((mac, nonce), (q.mac, rn));
    assert_eq!(recs, vec![rec4(RecordType::ModeIsInclude, G1, &[S1])]);
    let (mac, nonce, recs) = igmp_records(&out[1].1);
    assert_eq!((mac, nonce), (q.mac, rn));
    assert_eq!(recs, vec![rec4(RecordType::AllowNewSources, G1, &[S1])]);
    assert!(out.iter().all(|(d, _)| *d == relay_addr()));
    assert_eq!(t.stats().last_query_at, Some(t0));
    assert_eq!(t.stats().query_interval, Some(secs(125)));
    assert_eq!(t.stats().robustness, Some(2));
}

#[test]
fn discovery_retransmits_with_random_exponential_backoff_and_reports_loss_once() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 7);
    let first = discovery_nonce(&sent(&mut t));
    let mut now = t0;
    let mut losses = 0;
    let mut prev_deadline = t0;
    for n in 1..=12u32 {
        let deadline = t.poll_timeout().unwrap();
        let waited = deadline - prev_deadline;
        let upper = secs(1u64 << (n - 1).min(7)).min(secs(120));
        assert!(
            waited >= secs(1) && waited <= upper,
            "retry {n}: waited {waited:?}, upper {upper:?}"
        );
        // Nothing happens before the deadline.
        t.handle_timeout(deadline - Duration::from_millis(1));
        assert!(sent(&mut t).is_empty());
        now = deadline;
        t.handle_timeout(now);
        // Same nonce on every retransmission of one discovery episode.
        assert_eq!(discovery_nonce(&sent(&mut t)), first);
        for e in events(&mut t) {
            assert_eq!(
                e,
                TunnelEvent::RelayLost {
                    reason: LossReason::NoAdvertisement
                }
            );
            losses += 1;
            // Loss is reported after 1 + relay_loss_after unanswered messages.
            assert_eq!(n, 4);
        }
        prev_deadline = now;
    }
    assert_eq!(losses, 1);
    assert_eq!(t.stats().discoveries_sent, 13);
    assert!(t.poll_timeout().unwrap() - now <= secs(120));
    // A late Advertisement for the same episode is still accepted.
    assert_eq!(
        t.handle_datagram(
            now,
            discovery_addr(),
            &advertisement(first, relay_addr().ip())
        ),
        Received::Control
    );
}

#[test]
fn discovery_backoff_bounds_hold_for_many_seeds() {
    for seed in 0..50 {
        let t0 = Instant::now();
        let mut t = Tunnel::new(cfg(), local(), t0, seed);
        sent(&mut t);
        let mut prev = t0;
        for n in 0..10u32 {
            let d = t.poll_timeout().unwrap();
            let upper = secs(1u64 << n.min(7)).min(secs(120));
            assert!(
                d - prev >= secs(1) && d - prev <= upper,
                "seed {seed} retry {n}"
            );
            t.handle_timeout(d);
            sent(&mut t);
            prev = d;
        }
    }
}

#[test]
fn ipv6_advertised_relay_is_used() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 3);
    let dn = discovery_nonce(&sent(&mut t));
    let v6relay = ip("2001:db8::20");
    t.handle_datagram(t0, discovery_addr(), &advertisement(dn, v6relay));
    assert_eq!(t.relay(), Some(SocketAddr::new(v6relay, 2268)));
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let out = sent(&mut t);
    assert_eq!(out[0].0, SocketAddr::new(v6relay, 2268));
}

// ---- requests and queries --------------------------------------------------

#[test]
fn request_retransmission_then_relay_lost_and_rediscovery() {
    let (mut t, t0, rn) = requesting(cfg(), 11);
    let mut prev = t0;
    // relay_loss_after = 3 retransmissions with the same nonce.
    for n in 1..=3u32 {
        let d = t.poll_timeout().unwrap();
        assert!(
            d - prev >= secs(1) && d - prev <= secs(1 << (n - 1)),
            "retry {n}"
        );
        t.handle_timeout(d);
        assert_eq!(only_request(&sent(&mut t)).0, rn);
        assert!(events(&mut t).is_empty());
        prev = d;
    }
    assert_eq!(t.stats().requests_sent, 4);
    let d = t.poll_timeout().unwrap();
    assert!(d - prev <= secs(8));
    t.handle_timeout(d);
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::RelayLost {
            reason: LossReason::NoQuery
        }]
    );
    assert_eq!(t.state(), TunnelState::Discovering);
    let dn2 = discovery_nonce(&sent(&mut t));
    assert_eq!(t.stats().relay_losses, 1);
    // The subscription survives; after rediscovery a Request goes out at once.
    assert!(t.is_subscribed(sg(ip(S1), ip(G1))));
    t.handle_datagram(d, discovery_addr(), &advertisement(dn2, relay_addr().ip()));
    let (rn2, _) = only_request(&sent(&mut t));
    assert_ne!(rn2, rn);
    // The Request backoff was not reset by the restart: window is now 16 s.
    let next = t.poll_timeout().unwrap();
    assert!(next - d >= secs(1) && next - d <= secs(16));
    // The old nonce is no longer accepted.
    assert_eq!(
        t.handle_datagram(d, relay_addr(), &QueryOpts::new(rn).bytes()),
        Received::Dropped(DropReason::NonceMismatch)
    );
    assert_eq!(
        t.handle_datagram(d, relay_addr(), &QueryOpts::new(rn2).bytes()),
        Received::Control
    );
    assert_eq!(t.state(), TunnelState::Up);
}

#[test]
fn skip_discovery_restarts_requests_without_discovery() {
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    let t0 = Instant::now();
    let mut t = Tunnel::new(c, local(), t0, 5);
    assert!(sent(&mut t).is_empty());
    assert_eq!(t.state(), TunnelState::Idle);
    assert_eq!(t.poll_timeout(), None);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let mut now = t0;
    for _ in 0..4 {
        now = t.poll_timeout().unwrap();
        t.handle_timeout(now);
    }
    // 3 retransmissions, then the 4th timeout: loss and a new Request.
    let out = sent(&mut t);
    assert_eq!(out.len(), 4);
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::RelayLost {
            reason: LossReason::NoQuery
        }]
    );
    let (rn2, _) = only_request(&out[3..]);
    assert_ne!(rn2, rn);
    assert_eq!(t.stats().discoveries_sent, 0);
    assert_eq!(t.state(), TunnelState::Requesting);
    // Backoff keeps growing across cycles, capped at 120 s: over two hours
    // of silence there are few wakeups and never a busy loop.
    let end = now + secs(7200);
    let mut wakeups = 0;
    while now < end {
        let next = t.poll_timeout().unwrap();
        assert!(next - now >= secs(1), "retransmissions at least 1 s apart");
        now = next;
        t.handle_timeout(now);
        sent(&mut t);
        wakeups += 1;
    }
    // Uniform in [1 s, 120 s] once capped: about one wakeup per minute.
    assert!((60..=200).contains(&wakeups), "{wakeups} wakeups");
}

#[test]
fn query_schedules_refresh_request_after_qqi_with_new_nonce() {
    let (mut t, _t0, now, rn) = up_tunnel(cfg());
    assert_eq!(t.stats().next_request_at, Some(now + secs(125)));
    // ALLOW repeat is also pending (QRV 2): within [0.5 s, 1 s].
    let first = t.poll_timeout().unwrap();
    assert!(first - now >= Duration::from_millis(500) && first - now <= secs(1));
    t.handle_timeout(first);
    let out = sent(&mut t);
    assert_eq!(out.len(), 1);
    assert_eq!(
        igmp_records(&out[0].1).2,
        vec![rec4(RecordType::AllowNewSources, G1, &[S1])]
    );
    assert_eq!(t.poll_timeout(), Some(now + secs(125).min(secs(10))));
    // No-data check at +10 s (nothing received): event, then refresh at 125 s.
    t.handle_timeout(now + secs(10));
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::NoData {
            sg: sg(ip(S1), ip(G1))
        }]
    );
    assert_eq!(t.poll_timeout(), Some(now + secs(125)));
    let refresh = now + secs(125);
    t.handle_timeout(refresh);
    let (rn2, _) = only_request(&sent(&mut t));
    assert_ne!(rn2, rn);
    assert_eq!(t.state(), TunnelState::Up);
    // The refresh Query's MAC is used from then on.
    let mut q = QueryOpts::new(rn2);
    q.mac = ResponseMac([1, 2, 3, 4, 5, 6]);
    t.handle_datagram(refresh, relay_addr(), &q.bytes());
    let out = sent(&mut t);
    assert_eq!(out.len(), 1);
    let (mac, nonce, recs) = igmp_records(&out[0].1);
    assert_eq!((mac, nonce), (q.mac, rn2));
    assert_eq!(recs, vec![rec4(RecordType::ModeIsInclude, G1, &[S1])]);
    assert!(events(&mut t).is_empty(), "Up is not repeated on refresh");
    t.subscribe(sg(ip(S1), ip(G2)), refresh).unwrap();
    let (mac, nonce, recs) = igmp_records(&sent(&mut t)[0].1);
    assert_eq!((mac, nonce), (q.mac, rn2));
    assert_eq!(recs, vec![rec4(RecordType::AllowNewSources, G2, &[S1])]);
}

#[test]
fn qqic_float_form_and_zero() {
    let t0 = Instant::now();
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    c.no_data_timeout = None;
    let mut t = Tunnel::new(c.clone(), local(), t0, 9);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let mut q = QueryOpts::new(rn);
    q.qqic = 0x91; // 272 s
    t.handle_datagram(t0, relay_addr(), &q.bytes());
    assert_eq!(t.stats().next_request_at, Some(t0 + secs(272)));
    assert_eq!(t.stats().query_interval, Some(secs(272)));

    let mut t = Tunnel::new(c, local(), t0, 9);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let mut q = QueryOpts::new(rn);
    q.qqic = 0;
    q.qrv = 0;
    t.handle_datagram(t0, relay_addr(), &q.bytes());
    assert_eq!(t.stats().next_request_at, Some(t0 + secs(125)));
    assert_eq!(t.stats().robustness, Some(2));
}

#[test]
fn state_changes_repeat_qrv_times() {
    let t0 = Instant::now();
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    c.no_data_timeout = None;
    let mut t = Tunnel::new(c, local(), t0, 21);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let mut q = QueryOpts::new(rn);
    q.qrv = 3;
    t.handle_datagram(t0, relay_addr(), &q.bytes());
    sent(&mut t);
    // Let the initial ALLOW repetitions finish.
    let mut now = t0;
    while let Some(d) = t.poll_timeout().filter(|d| *d < t0 + secs(100)) {
        now = d;
        t.handle_timeout(now);
    }
    sent(&mut t);

    // Leave: BLOCK within the coalescing window (a report just went out),
    // then twice more, spaced [0.5, 1] s.
    assert!(t.unsubscribe(sg(ip(S1), ip(G1)), now));
    assert!(!t.unsubscribe(sg(ip(S1), ip(G1)), now));
    let first = t.poll_timeout().unwrap();
    assert!(first <= now + Duration::from_millis(10));
    t.handle_timeout(first);
    let mut blocks = 0;
    let mut last = first;
    loop {
        for (_, s) in sent(&mut t) {
            assert_eq!(
                igmp_records(&s).2,
                vec![rec4(RecordType::BlockOldSources, G1, &[S1])]
            );
            blocks += 1;
        }
        let Some(d) = t.poll_timeout().filter(|d| *d < t0 + secs(100)) else {
            break;
        };
        assert!(d - last >= Duration::from_millis(500) && d - last <= secs(1));
        last = d;
        t.handle_timeout(d);
    }
    assert_eq!(blocks, 3);
}

#[test]
fn join_then_leave_before_repetitions_end_sends_block_not_allow() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    t.subscribe(sg(ip(S1), ip(G2)), now).unwrap();
    // A report went out just now: the ALLOW waits for the coalescing
    // window; G1's repetition is not due yet and stays spaced.
    assert!(sent(&mut t).is_empty());
    let at = t.poll_timeout().unwrap();
    assert_eq!(at, now + Duration::from_millis(10));
    t.handle_timeout(at);
    let out = sent(&mut t);
    assert_eq!(
        igmp_records(&out[0].1).2,
        vec![rec4(RecordType::AllowNewSources, G2, &[S1])]
    );
    t.unsubscribe(sg(ip(S1), ip(G2)), at);
    t.handle_timeout(t.poll_timeout().unwrap());
    let out = sent(&mut t);
    let recs = igmp_records(&out[0].1).2;
    assert!(recs.contains(&rec4(RecordType::BlockOldSources, G2, &[S1])));
    assert!(!recs.contains(&rec4(RecordType::AllowNewSources, G2, &[S1])));
}

#[test]
fn query_from_wrong_address_or_nonce_or_malformed_is_dropped() {
    let t0 = Instant::now();
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    let mut t = Tunnel::new(c, local(), t0, 2);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let q = QueryOpts::new(rn).bytes();
    assert_eq!(
        t.handle_datagram(t0, "203.0.113.21:2268".parse().unwrap(), &q),
        Received::Dropped(DropReason::NotFromRelay)
    );
    assert_eq!(
        t.handle_datagram(t0, "203.0.113.20:2269".parse().unwrap(), &q),
        Received::Dropped(DropReason::NotFromRelay)
    );
    assert_eq!(
        t.handle_datagram(
            t0,
            relay_addr(),
            &QueryOpts::new(rn.wrapping_add(1)).bytes()
        ),
        Received::Dropped(DropReason::NonceMismatch)
    );
    let mut corrupt = q.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff; // IGMP checksum no longer verifies
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &corrupt),
        Received::Dropped(DropReason::Malformed)
    );
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &[0x13, 0, 0, 0, 0, 0, 0, 0]),
        Received::Dropped(DropReason::Malformed)
    );
    // Relays never send Requests or Updates to gateways.
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &[0x03, 0, 0, 0, 0, 0, 0, 1]),
        Received::Dropped(DropReason::UnexpectedMessage)
    );
    assert_eq!(t.state(), TunnelState::Requesting);
    assert!(sent(&mut t).is_empty());
    let d = &t.stats().dropped;
    assert_eq!(d.get(DropReason::NotFromRelay), 2);
    assert_eq!(d.get(DropReason::NonceMismatch), 1);
    assert_eq!(d.get(DropReason::Malformed), 2);
    assert_eq!(d.get(DropReason::UnexpectedMessage), 1);
    assert_eq!(d.total(), 6);
    assert_eq!(t.handle_datagram(t0, relay_addr(), &q), Received::Control);
}

#[test]
fn limit_flag_before_up_refuses_and_holds_down() {
    let (mut t, t0, rn) = requesting(cfg(), 13);
    let mut q = QueryOpts::new(rn);
    q.limit = true;
    assert_eq!(
        t.handle_datagram(t0, relay_addr(), &q.bytes()),
        Received::Control
    );
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::RelayRefused {
            relay: relay_addr()
        }]
    );
    assert_eq!(t.state(), TunnelState::Refused);
    assert!(
        sent(&mut t).is_empty(),
        "no membership report to a refusing relay"
    );
    assert_eq!(t.poll_timeout(), Some(t0 + secs(600)));
    assert_eq!(t.stats().limited_queries, 1);
    t.handle_timeout(t0 + secs(599));
    assert!(sent(&mut t).is_empty());
    t.handle_timeout(t0 + secs(600));
    assert_eq!(t.state(), TunnelState::Discovering);
    discovery_nonce(&sent(&mut t));
}

#[test]
fn limit_flag_on_an_established_tunnel_is_honoured() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    let refresh = now + secs(125);
    t.handle_timeout(refresh);
    let rn = find_request(&sent(&mut t));
    let mut q = QueryOpts::new(rn);
    q.limit = true;
    t.handle_datagram(refresh, relay_addr(), &q.bytes());
    assert_eq!(t.state(), TunnelState::Up);
    assert_eq!(t.stats().limited_queries, 1);
    assert_eq!(sent(&mut t).len(), 1);
}

#[test]
fn gateway_address_change_sends_teardown_with_previous_values() {
    let t0 = Instant::now();
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    let mut t = Tunnel::new(c, local(), t0, 17);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    let old_gw: SocketAddr = "192.0.2.200:5000".parse().unwrap();
    let mut q = QueryOpts::new(rn);
    q.gateway = Some(old_gw);
    t.handle_datagram(t0, relay_addr(), &q.bytes());
    sent(&mut t);
    events(&mut t);
    assert_eq!(t.stats().gateway_address, Some(old_gw));

    let refresh = t0 + secs(125);
    t.handle_timeout(refresh);
    let rn2 = find_request(&sent(&mut t));
    let new_gw: SocketAddr = "192.0.2.200:6000".parse().unwrap();
    let mut q2 = QueryOpts::new(rn2);
    q2.mac = ResponseMac([7; 6]);
    q2.gateway = Some(new_gw);
    t.handle_datagram(refresh, relay_addr(), &q2.bytes());
    let out = sent(&mut t);
    assert_eq!(
        out[0],
        (
            relay_addr(),
            Sent::Teardown {
                mac: q.mac,
                nonce: rn,
                gateway: old_gw
            }
        )
    );
    assert!(matches!(out[1].1, Sent::Update { .. }));
    assert!(
        events(&mut t).contains(&TunnelEvent::GatewayAddressChanged {
            old: old_gw,
            new: new_gw
        })
    );
    assert_eq!(t.stats().teardowns_sent, 1);
}

// ---- data ------------------------------------------------------------------

#[test]
fn data_accepted_only_from_relay_and_for_subscribed_channels() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    let pkt = data(ip(S1), ip(G1), 100);
    match t.handle_datagram(now, relay_addr(), &pkt) {
        Received::Data { inner, sg: channel } => {
            assert_eq!(inner, 2..pkt.len());
            assert_eq!(&pkt[inner][..1], &[0x45]);
            assert_eq!(channel, sg(ip(S1), ip(G1)));
        }
        other => panic!("{other:?}"),
    }
    // Trailing bytes after the inner packet are not part of it.
    let mut padded = pkt.clone();
    padded.extend_from_slice(&[0; 5]);
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &padded),
        Received::Data {
            inner: 2..pkt.len(),
            sg: sg(ip(S1), ip(G1))
        }
    );
    assert_eq!(
        t.handle_datagram(now, "203.0.113.99:2268".parse().unwrap(), &pkt),
        Received::Dropped(DropReason::NotFromRelay)
    );
    assert_eq!(
        t.handle_datagram(now, "203.0.113.20:9".parse().unwrap(), &pkt),
        Received::Dropped(DropReason::NotFromRelay)
    );
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &data(ip("192.0.2.9"), ip(G1), 10)),
        Received::Dropped(DropReason::NotSubscribed)
    );
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &data(ip(S1), ip("10.1.1.1"), 10)),
        Received::Dropped(DropReason::NotMulticast)
    );
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &[0x06, 0, 0x45, 0, 0, 99]),
        Received::Dropped(DropReason::Malformed)
    );
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &[0x06, 0]),
        Received::Dropped(DropReason::Malformed)
    );
    let s = t.stats();
    assert_eq!(s.data_packets, 2);
    assert_eq!(s.data_bytes, 2 * (pkt.len() as u64 - 2));
    assert_eq!(s.dropped.get(DropReason::NotFromRelay), 2);
    assert_eq!(s.dropped.get(DropReason::NotSubscribed), 1);
    assert_eq!(s.dropped.get(DropReason::NotMulticast), 1);
    assert_eq!(s.dropped.get(DropReason::Malformed), 2);
    let sub = t.subscription_stats(sg(ip(S1), ip(G1))).unwrap();
    assert_eq!(sub.packets, 2);
    assert_eq!(sub.last_data_at, Some(now));

    // With data flowing, no NoData event.
    t.handle_timeout(now + secs(30));
    assert!(
        !events(&mut t)
            .iter()
            .any(|e| matches!(e, TunnelEvent::NoData { .. }))
    );

    t.unsubscribe(sg(ip(S1), ip(G1)), now);
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &pkt),
        Received::Dropped(DropReason::NotSubscribed)
    );
}

#[test]
fn data_before_discovery_is_not_accepted() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 4);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    assert_eq!(
        t.handle_datagram(t0, discovery_addr(), &data(ip(S1), ip(G1), 10)),
        Received::Dropped(DropReason::NotFromRelay)
    );
}

// ---- both families ---------------------------------------------------------

#[test]
fn ipv6_subscription_uses_p_flag_and_mld() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    t.subscribe(sg(ip(S6), ip(G6)), now).unwrap();
    let (rn6, kind) = only_request(&sent(&mut t));
    assert_eq!(kind, QueryKind::Mldv2);
    let mut q = QueryOpts::new(rn6);
    q.v6 = true;
    q.mac = ResponseMac([6; 6]);
    assert_eq!(
        t.handle_datagram(now, relay_addr(), &q.bytes()),
        Received::Control
    );
    let out = sent(&mut t);
    assert_eq!(out.len(), 2);
    match &out[0].1 {
        Sent::Update {
            mac,
            nonce,
            report: EncapReport::Mld { src, report },
        } => {
            assert_eq!((*mac, *nonce), (q.mac, rn6));
            assert_eq!(*src, "fe80::1".parse::<Ipv6Addr>().unwrap());
            assert_eq!(report.records.len(), 1);
            assert_eq!(report.records[0].record_type, RecordType::ModeIsInclude);
            assert_eq!(IpAddr::V6(report.records[0].group), ip(G6));
            assert_eq!(IpAddr::V6(report.records[0].sources[0]), ip(S6));
        }
        other => panic!("{other:?}"),
    }
    let pkt = data(ip(S6), ip(G6), 50);
    assert!(matches!(
        t.handle_datagram(now, relay_addr(), &pkt),
        Received::Data { .. }
    ));
    // IPv4 state is unaffected: the IPv4 ALLOW repetition still uses the v4 MAC.
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    for (_, s) in sent(&mut t) {
        if let Sent::Update {
            mac,
            report: EncapReport::Igmp { .. },
            ..
        } = s
        {
            assert_eq!(mac, QueryOpts::new(0).mac);
        }
    }
}

#[test]
fn unanswered_family_does_not_kill_a_healthy_tunnel() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    t.subscribe(sg(ip(S6), ip(G6)), now).unwrap();
    only_request(&sent(&mut t));
    // Let 60 s pass: the MLD family exhausts its retries, IPv4 stays healthy.
    let mut at = now;
    while let Some(d) = t.poll_timeout().filter(|d| *d <= now + secs(60)) {
        at = d;
        t.handle_timeout(at);
    }
    assert!(at > now);
    assert!(t.stats().request_timeouts >= 1);
    assert_eq!(t.stats().relay_losses, 0);
    assert!(
        !events(&mut t)
            .iter()
            .any(|e| matches!(e, TunnelEvent::RelayLost { .. }))
    );
    assert_eq!(t.state(), TunnelState::Up);
}

#[test]
fn relay_silent_after_up_is_lost_after_refresh_fails() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    let mut at = now;
    let mut lost = false;
    while let Some(d) = t.poll_timeout().filter(|d| *d <= now + secs(400)) {
        at = d;
        t.handle_timeout(at);
        if events(&mut t).contains(&TunnelEvent::RelayLost {
            reason: LossReason::NoQuery,
        }) {
            lost = true;
            break;
        }
    }
    assert!(lost);
    // Refresh at 125 s + at most 1+2+4+8 s of retransmissions.
    assert!(
        at >= now + secs(129) && at <= now + secs(140),
        "{:?}",
        at - now
    );
    assert_eq!(t.state(), TunnelState::Discovering);
    assert!(t.is_subscribed(sg(ip(S1), ip(G1))));
}

// ---- subscribe errors ------------------------------------------------------

#[test]
fn subscribe_validation() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 1);
    assert_eq!(
        t.subscribe(sg(ip(S6), ip(G1)), t0),
        Err(SubscribeError::NotAChannel(
            SourceGroupError::MixedFamilies(ip(S6), ip(G1))
        ))
    );
    assert_eq!(
        t.subscribe(sg(ip(S1), ip("10.0.0.1")), t0),
        Err(SubscribeError::NotAChannel(SourceGroupError::NotMulticast(
            ip("10.0.0.1")
        )))
    );
    assert_eq!(t.subscribe(sg(ip(S1), ip(G1)), t0), Ok(true));
    assert_eq!(t.subscribe(sg(ip(S1), ip(G1)), t0), Ok(false));
    assert_eq!(
        t.subscriptions().collect::<Vec<_>>(),
        vec![sg(ip(S1), ip(G1))]
    );
    t.close(t0);
    assert_eq!(
        t.subscribe(sg(ip(S1), ip(G2)), t0),
        Err(SubscribeError::Closed)
    );
}

// ---- close -----------------------------------------------------------------

#[test]
fn close_sends_blocks_then_teardown_then_closed() {
    let (mut t, _t0, now, rn) = up_tunnel(cfg());
    t.subscribe(sg(ip(S1), ip(G2)), now).unwrap();
    sent(&mut t);
    t.close(now);
    assert_eq!(t.state(), TunnelState::Closing);
    let mut blocks = 0;
    let mut teardown = None;
    let mut at = now;
    loop {
        for (dst, s) in sent(&mut t) {
            assert_eq!(dst, relay_addr());
            match s {
                Sent::Update { .. } => {
                    let recs = igmp_records(&s).2;
                    assert_eq!(
                        recs,
                        vec![
                            rec4(RecordType::BlockOldSources, G1, &[S1]),
                            rec4(RecordType::BlockOldSources, G2, &[S1])
                        ]
                    );
                    blocks += 1;
                }
                Sent::Teardown {
                    mac,
                    nonce,
                    gateway,
                } => {
                    assert_eq!(blocks, 2, "Teardown comes after the leaves");
                    teardown = Some((mac, nonce, gateway));
                }
                other => panic!("{other:?}"),
            }
        }
        let Some(d) = t.poll_timeout() else { break };
        assert!(d > at && d <= at + secs(1));
        at = d;
        t.handle_timeout(at);
    }
    assert_eq!(blocks, 2);
    // No G trailer was given: the local (specific) address is used.
    assert_eq!(teardown, Some((QueryOpts::new(0).mac, rn, local())));
    assert_eq!(t.state(), TunnelState::Closed);
    assert_eq!(events(&mut t), vec![TunnelEvent::Closed]);
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(
        t.handle_datagram(at, relay_addr(), &data(ip(S1), ip(G1), 10)),
        Received::Dropped(DropReason::Closed)
    );
    t.handle_timeout(at + secs(1000));
    assert!(sent(&mut t).is_empty());
}

#[test]
fn close_without_handshake_is_immediate_and_silent() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 1);
    sent(&mut t);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    t.close(t0);
    assert_eq!(t.state(), TunnelState::Closed);
    assert!(sent(&mut t).is_empty());
    assert_eq!(events(&mut t), vec![TunnelEvent::Closed]);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn close_with_unspecified_local_and_no_g_sends_no_teardown() {
    let t0 = Instant::now();
    let mut c = TunnelConfig::new(relay_addr());
    c.skip_discovery = true;
    let mut t = Tunnel::new(c, "0.0.0.0:4000".parse().unwrap(), t0, 1);
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let (rn, _) = only_request(&sent(&mut t));
    t.handle_datagram(t0, relay_addr(), &QueryOpts::new(rn).bytes());
    // Report source falls back to 0.0.0.0 for an unspecified local address.
    match &sent(&mut t)[0].1 {
        Sent::Update {
            report: EncapReport::Igmp { src, .. },
            ..
        } => assert_eq!(*src, Ipv4Addr::UNSPECIFIED),
        other => panic!("{other:?}"),
    }
    t.unsubscribe(sg(ip(S1), ip(G1)), t0);
    t.close(t0);
    while let Some(d) = t.poll_timeout() {
        t.handle_timeout(d);
    }
    assert!(
        sent(&mut t)
            .iter()
            .all(|(_, s)| !matches!(s, Sent::Teardown { .. }))
    );
    assert_eq!(t.state(), TunnelState::Closed);
}

// ---- a long run against a well-behaved scripted relay ------------------------

#[test]
fn six_hours_with_a_responsive_relay_keeps_state_and_never_spins() {
    let (mut t, _t0, mut now, _) = up_tunnel(cfg());
    let end = now + secs(6 * 3600);
    let mut wakeups = 0u32;
    let mut requests = 0u32;
    let mut updates = 0u32;
    while let Some(d) = t.poll_timeout().filter(|d| *d <= end) {
        assert!(d > now || wakeups == 0, "timer did not advance");
        now = d;
        t.handle_timeout(now);
        wakeups += 1;
        for (_, s) in sent(&mut t) {
            match s {
                Sent::Request { nonce, .. } => {
                    requests += 1;
                    t.handle_datagram(now, relay_addr(), &QueryOpts::new(nonce).bytes());
                    for (_, s2) in sent(&mut t) {
                        assert!(matches!(s2, Sent::Update { .. }));
                        updates += 1;
                    }
                }
                Sent::Update { .. } => updates += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    // One refresh per 125 s.
    assert_eq!(requests, (6 * 3600) / 125);
    assert!(updates >= requests);
    assert!(wakeups < 200, "{wakeups}");
    assert_eq!(t.state(), TunnelState::Up);
    assert_eq!(t.stats().relay_losses, 0);
}

#[test]
fn data_stall_sends_one_early_request_per_silence() {
    let (mut t, _t0, now, rn) = up_tunnel(cfg());
    // Let the ALLOW repetition go out first.
    let first = t.poll_timeout().unwrap();
    t.handle_timeout(first);
    sent(&mut t);
    // Data flows for 5 s (one packet per 100 ms): no probe meanwhile.
    let mut at = first;
    for _ in 0..50 {
        at += Duration::from_millis(100);
        while let Some(d) = t.poll_timeout().filter(|d| *d <= at) {
            t.handle_timeout(d);
        }
        assert!(
            matches!(
                t.handle_datagram(at, relay_addr(), &data(ip(S1), ip(G1), 100)),
                Received::Data { .. }
            ),
            "data accepted"
        );
        assert!(sent(&mut t).is_empty(), "nothing sent while data flows");
    }
    let last = at;
    // The relay restarts: silence. One Request 3 s after the last packet
    // (earlier wakeups only re-arm the timer).
    let mut wakeups = 0;
    let out = loop {
        let d = t.poll_timeout().unwrap();
        assert!(d <= last + secs(3), "stall timer later than 3 s: {d:?}");
        t.handle_timeout(d);
        wakeups += 1;
        let out = sent(&mut t);
        if !out.is_empty() {
            assert_eq!(d, last + secs(3));
            break out;
        }
        assert!(wakeups < 5);
    };
    let (probe, kind) = only_request(&out);
    assert_eq!(kind, QueryKind::Igmpv3);
    assert_ne!(probe, rn, "a probe is a new handshake");
    assert_eq!(t.stats().stall_requests, 1);
    // The restarted relay answers: the full state goes out again.
    t.handle_datagram(last + secs(3), relay_addr(), &QueryOpts::new(probe).bytes());
    let out = sent(&mut t);
    assert_eq!(out.len(), 1);
    assert_eq!(
        igmp_records(&out[0].1).2,
        vec![rec4(RecordType::ModeIsInclude, G1, &[S1])]
    );
    // Still silent (a paused source): no further probes, only the QQI refresh.
    let refresh = last + secs(3) + secs(125);
    while let Some(d) = t.poll_timeout().filter(|d| *d < refresh) {
        t.handle_timeout(d);
        assert!(sent(&mut t).is_empty(), "no probe storm at {d:?}");
    }
    assert_eq!(t.stats().stall_requests, 1);
    // Data resumes, then stops again: one more probe.
    let again = last + secs(60);
    t.handle_datagram(again, relay_addr(), &data(ip(S1), ip(G1), 100));
    assert!(t.poll_timeout().is_some_and(|d| d <= again + secs(3)));
    t.handle_timeout(again + secs(3));
    only_request(&sent(&mut t));
    assert_eq!(t.stats().stall_requests, 2);
    let _ = now;
}

// ---- relay racing --------------------------------------------------------

#[test]
fn connect_handshakes_without_reporting_anything() {
    let t0 = Instant::now();
    let mut t = Tunnel::new(cfg(), local(), t0, 7);
    let dn = discovery_nonce(&sent(&mut t));
    // Connecting before the relay is known starts the Request after the
    // Advertisement.
    t.connect(Family::V4, t0).unwrap();
    assert!(sent(&mut t).is_empty());
    t.handle_datagram(t0, discovery_addr(), &advertisement(dn, relay_addr().ip()));
    let (rn, kind) = only_request(&sent(&mut t));
    assert_eq!(kind, QueryKind::Igmpv3);
    t.handle_datagram(t0, relay_addr(), &QueryOpts::new(rn).bytes());
    assert_eq!(
        events(&mut t),
        vec![
            TunnelEvent::RelayDiscovered {
                relay: relay_addr()
            },
            TunnelEvent::Up {
                relay: relay_addr(),
                family: Family::V4
            }
        ]
    );
    assert!(
        sent(&mut t).is_empty(),
        "no membership report: nothing is subscribed"
    );
    assert_eq!(t.state(), TunnelState::Up);
    // The winner of a race then subscribes: one report goes out.
    t.subscribe(sg(ip(S1), ip(G1)), t0).unwrap();
    let updates: Vec<_> = sent(&mut t)
        .into_iter()
        .filter(|(_, s)| matches!(s, Sent::Update { .. }))
        .collect();
    assert_eq!(updates.len(), 1);
    // A closed tunnel cannot connect.
    t.close(t0);
    assert_eq!(t.connect(Family::V6, t0), Err(SubscribeError::Closed));
}

// ---- membership changes at scale -------------------------------------------

#[test]
fn a_burst_of_joins_is_coalesced_into_full_reports_and_paced() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    // 5,000 joins in one go (as a 10,000-channel joinfile over two relays).
    let channels: Vec<SourceGroup> = (0..5000u32)
        .map(|i| {
            sg(
                IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i / 50)),
                IpAddr::V4(Ipv4Addr::from(0xe801_0000 + i % 50 + 2)),
            )
        })
        .collect();
    for c in &channels {
        t.subscribe(*c, now).unwrap();
    }
    // Drive the timers for 3 s; record every Update with its time.
    let mut updates: Vec<(Instant, usize)> = Vec::new();
    let mut reported: std::collections::BTreeMap<(IpAddr, IpAddr), u32> = Default::default();
    let mut at = now;
    loop {
        for (_, s) in sent(&mut t) {
            let (_, _, records) = igmp_records(&s);
            let n: usize = records.iter().map(|r| r.sources.len()).sum();
            for r in &records {
                for src in &r.sources {
                    *reported
                        .entry((IpAddr::V4(*src), IpAddr::V4(r.group)))
                        .or_default() += 1;
                }
            }
            updates.push((at, n));
        }
        match t.poll_timeout() {
            Some(next) if next < now + secs(3) => {
                at = next;
                t.handle_timeout(at);
            }
            _ => break,
        }
    }
    // Every join reported QRV (2) times; the one before the burst too.
    for c in &channels {
        assert_eq!(reported.get(&(c.source, c.group)), Some(&2), "{c}");
    }
    // Full reports: 10,000 records in about as many Updates as 1,100
    // bytes of records need, not one per join.
    let records_per_update = 1100 / (8 + 4);
    assert!(
        updates.len() <= 2 * (10_000 / records_per_update + 8),
        "{} Updates",
        updates.len()
    );
    // Paced: at most 8 Updates in any 10 ms window.
    for (i, (start, _)) in updates.iter().enumerate() {
        let burst = updates[i..]
            .iter()
            .take_while(|(t, _)| *t < *start + Duration::from_millis(10))
            .count();
        assert!(
            burst <= 8,
            "{burst} Updates within 10 ms of {:?}",
            *start - now
        );
    }
}

#[test]
fn data_edges_say_when_data_starts_and_stops() {
    let (mut t, _t0, now, _) = up_tunnel(cfg());
    let channel = sg(ip(S1), ip(G1));
    let pkt = data(ip(S1), ip(G1), 100);
    t.handle_datagram(now, relay_addr(), &pkt);
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::DataFlowing { sg: channel }]
    );
    // More data: no more events.
    for i in 1..=20 {
        let at = now + Duration::from_millis(100 * i);
        t.handle_datagram(at, relay_addr(), &pkt);
        t.handle_timeout(at);
    }
    assert!(events(&mut t).is_empty());
    assert!(t.subscription_stats(channel).unwrap().flowing);
    // Silence for data_quiet_after (3 s) after the last packet.
    let last = now + Duration::from_millis(2000);
    let mut at = last;
    while let Some(next) = t.poll_timeout().filter(|n| *n <= last + secs(3)) {
        at = next;
        t.handle_timeout(at);
    }
    assert_eq!(at, last + secs(3));
    let edges: Vec<TunnelEvent> = events(&mut t)
        .into_iter()
        .filter(|e| matches!(e, TunnelEvent::DataStopped { .. }))
        .collect();
    assert_eq!(edges, vec![TunnelEvent::DataStopped { sg: channel }]);
    assert!(!t.subscription_stats(channel).unwrap().flowing);
    // Data again: flowing again.
    t.handle_datagram(at + secs(1), relay_addr(), &pkt);
    assert_eq!(
        events(&mut t),
        vec![TunnelEvent::DataFlowing { sg: channel }]
    );
}

// ---- data delivered by a kernel data plane ----------------------------------

#[test]
fn offloaded_data_counts_and_defers_the_stall_probe() {
    let (mut t, _t0, now, _rn) = up_tunnel(cfg());
    let first = t.poll_timeout().unwrap();
    t.handle_timeout(first);
    sent(&mut t);
    // The kernel delivers for 5 s; the driver feeds its counts every 500 ms,
    // always before the tunnel's timers run: no probe meanwhile.
    let mut at = first;
    for i in 0..10u64 {
        at += Duration::from_millis(500);
        t.record_offloaded_data(
            sg(ip(S1), ip(G1)),
            50,
            50 * 128,
            at - Duration::from_millis(10),
        );
        while let Some(d) = t.poll_timeout().filter(|d| *d <= at) {
            t.handle_timeout(d);
        }
        assert!(
            sent(&mut t).is_empty(),
            "no probe while the kernel delivers"
        );
        let s = t.subscription_stats(sg(ip(S1), ip(G1))).unwrap();
        assert_eq!(s.packets, 50 * (i + 1));
        assert_eq!(s.last_data_at, Some(at - Duration::from_millis(10)));
    }
    assert_eq!(t.stats().data_packets, 500);
    assert_eq!(t.stats().data_bytes, 500 * 128);
    // An older reading never moves last-seen backwards.
    t.record_offloaded_data(sg(ip(S1), ip(G1)), 1, 128, first);
    let last = at - Duration::from_millis(10);
    assert_eq!(
        t.subscription_stats(sg(ip(S1), ip(G1)))
            .unwrap()
            .last_data_at,
        Some(last)
    );
    // The kernel stops delivering: the probe goes out 3 s after its last packet.
    let d = t.poll_timeout().unwrap();
    assert!(d <= last + secs(3));
    t.handle_timeout(last + secs(3));
    only_request(&sent(&mut t));
    assert_eq!(t.stats().stall_requests, 1);
    let _ = now;
}

#[test]
fn offloaded_data_prevents_no_data_and_ignores_unknown_channels() {
    let (mut t, _t0, now, _rn) = up_tunnel(cfg());
    // Unknown (S,G): only the totals move.
    t.record_offloaded_data(sg(ip(S1), ip(G2)), 3, 300, now);
    assert_eq!(t.stats().data_packets, 3);
    assert!(t.subscription_stats(sg(ip(S1), ip(G2))).is_none());
    // Zero packets: nothing at all.
    t.record_offloaded_data(sg(ip(S1), ip(G1)), 0, 0, now);
    assert_eq!(t.subscription_stats(sg(ip(S1), ip(G1))).unwrap().packets, 0);
    // Data fed before the NoData deadline: no NoData event.
    t.record_offloaded_data(sg(ip(S1), ip(G1)), 1, 100, now + secs(1));
    let end = now + secs(30);
    while let Some(d) = t.poll_timeout().filter(|d| *d <= end) {
        t.handle_timeout(d);
    }
    assert!(
        !events(&mut t)
            .iter()
            .any(|e| matches!(e, TunnelEvent::NoData { .. })),
        "offloaded data counts as data"
    );
}

/// The driver reads the kernel's counters often only while a recent
/// subscription waits for its first data.
#[test]
fn awaits_first_data_until_data_or_for_recent_subscriptions_only() {
    let (mut t, t0, now, _rn) = up_tunnel(cfg());
    assert!(t.awaits_first_data(t0), "subscribed at t0, no data yet");
    assert!(
        !t.awaits_first_data(t0 + secs(1)),
        "no subscription made since"
    );
    t.record_offloaded_data(sg(ip(S1), ip(G1)), 1, 128, now);
    assert!(!t.awaits_first_data(t0), "its data came");
    t.subscribe(sg(ip(S1), ip(G2)), now + secs(5)).unwrap();
    assert!(t.awaits_first_data(t0 + secs(1)));
}
