//! Property test of the sans-IO tunnel: random operations, random and
//! scripted relay answers, random time steps. The tunnel must never panic,
//! its timer must always move forward after `handle_timeout`, and what it
//! sends must always decode.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use amt_gateway::wire::amt::{self, MembershipQuery, Message, ResponseMac};
use amt_gateway::wire::encap::{self, EncapReport};
use amt_gateway::wire::{igmp, mld};
use amt_gateway::{Tunnel, TunnelConfig, TunnelState};
use ingest_types::SourceGroup;
use proptest::prelude::*;

/// A channel from its parts (unchecked, so tests can also build bad ones).
fn sg(source: IpAddr, group: IpAddr) -> SourceGroup {
    SourceGroup { source, group }
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(u8),
    Unsubscribe(u8),
    Advance(u32),
    Garbage(Vec<u8>, u8),
    /// Answer the outstanding handshakes (if the relay is "up").
    Answer {
        limit: bool,
        qrv: u8,
        qqic: u8,
    },
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8).prop_map(Op::Subscribe),
        (0u8..8).prop_map(Op::Unsubscribe),
        (0u32..300_000).prop_map(Op::Advance),
        (proptest::collection::vec(any::<u8>(), 0..64), 0u8..3)
            .prop_map(|(b, f)| Op::Garbage(b, f)),
        (any::<bool>(), 0u8..8, any::<u8>()).prop_map(|(limit, qrv, qqic)| Op::Answer {
            limit,
            qrv,
            qqic
        }),
        Just(Op::Close),
    ]
}

fn channel(i: u8) -> (IpAddr, IpAddr) {
    if i < 4 {
        (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + i % 2)),
            IpAddr::V4(Ipv4Addr::new(232, 1, 1, i)),
        )
    } else {
        (
            format!("2001:db8::{}", i % 2 + 1)
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            format!("ff3e::{i}")
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
    }
}

fn query_bytes(nonce: u32, v6: bool, limit: bool, qrv: u8, qqic: u8) -> Vec<u8> {
    let datagram = if v6 {
        encap::mldv2_query_datagram(
            "fe80::2".parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST),
            &mld::QueryRepr::general(1000, qrv, qqic),
        )
    } else {
        encap::igmpv3_query_datagram(
            Ipv4Addr::new(10, 0, 0, 1),
            &igmp::QueryRepr::general(10, qrv, qqic),
            true,
        )
    }
    .unwrap_or_default();
    Message::MembershipQuery(MembershipQuery {
        limit,
        gateway_flag: false,
        mac: ResponseMac([1, 2, 3, 4, 5, 6]),
        nonce,
        query: &datagram,
        gateway: None,
    })
    .to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_tunnel_sane(skip in any::<bool>(), seed in any::<u64>(),
                                               ops in proptest::collection::vec(op(), 1..60)) {
        let discovery: SocketAddr = "203.0.113.1:2268".parse().unwrap();
        let relay: SocketAddr = "203.0.113.20:2268".parse().unwrap();
        let mut cfg = TunnelConfig::new(if skip { relay } else { discovery });
        cfg.skip_discovery = skip;
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = Tunnel::new(cfg, "198.51.100.2:4000".parse().unwrap(), now, seed);
        // Handshakes seen on the wire and not answered yet.
        let mut pending_discovery: Option<u32> = None;
        let mut pending_requests: Vec<(u32, bool)> = Vec::new();
        let mut wakeups = 0u32;

        for op in ops {
            match op {
                Op::Subscribe(i) => { let (s, g) = channel(i); let _ = t.subscribe(sg(s, g), now); }
                Op::Unsubscribe(i) => { let (s, g) = channel(i); t.unsubscribe(sg(s, g), now); }
                Op::Advance(ms) => {
                    let target = now + Duration::from_millis(u64::from(ms));
                    while let Some(d) = t.poll_timeout().filter(|d| *d <= target) {
                        prop_assert!(d >= now, "timer in the past");
                        now = d;
                        t.handle_timeout(now);
                        wakeups += 1;
                        prop_assert!(wakeups < 100_000, "busy loop");
                        if let Some(next) = t.poll_timeout() {
                            prop_assert!(next > now, "timer did not advance");
                        }
                    }
                    now = target;
                }
                Op::Garbage(bytes, from) => {
                    let from = match from { 0 => relay, 1 => discovery, _ => "192.0.2.99:2268".parse().unwrap() };
                    let _ = t.handle_datagram(now, from, &bytes);
                }
                Op::Answer { limit, qrv, qqic } => {
                    if let Some(n) = pending_discovery.take() {
                        let adv = Message::RelayAdvertisement(amt::RelayAdvertisement { nonce: n, relay: relay.ip() }).to_vec();
                        let _ = t.handle_datagram(now, discovery, &adv);
                    }
                    for (n, v6) in std::mem::take(&mut pending_requests) {
                        let _ = t.handle_datagram(now, relay, &query_bytes(n, v6, limit, qrv, qqic));
                    }
                }
                Op::Close => t.close(now),
            }
            while let Some(tx) = t.poll_transmit() {
                let msg = Message::decode(&tx.payload);
                prop_assert!(msg.is_ok(), "undecodable transmit");
                match msg.unwrap_or(Message::RelayDiscovery(amt::RelayDiscovery { nonce: 0 })) {
                    Message::RelayDiscovery(d) => { prop_assert_eq!(tx.destination, discovery); pending_discovery = Some(d.nonce); }
                    Message::Request(r) => { prop_assert_eq!(tx.destination, relay); pending_requests.push((r.nonce, r.kind == amt::QueryKind::Mldv2)); }
                    Message::MembershipUpdate(u) => { prop_assert!(EncapReport::parse(u.report).is_ok()); }
                    Message::Teardown(_) => {}
                    other => prop_assert!(false, "gateway sent {:?}", other),
                }
            }
            while t.poll_event().is_some() {}
            if t.state() == TunnelState::Closed {
                prop_assert_eq!(t.poll_timeout(), None);
            }
        }
    }
}
