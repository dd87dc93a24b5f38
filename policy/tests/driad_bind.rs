//! DriadResolver against a real BIND 9 on loopback.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ingest_policy::dns::{DnsConfig, DnsFailure};
use ingest_policy::driad::{
    DriadConfig, DriadOutcome, DriadResolver, HoldDownReason, HoldDownTracker, Relay, RelayAddress,
    SelectionOutcome, select_relays,
};
use ingest_test_support::{Named, Silent, Zone};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn lab() -> Named {
    let reverse_v4 = Zone {
        origin: "185.212.23.in-addr.arpa.".into(),
        records: "\
4 120 IN AMTRELAY 10 0 1 203.0.113.15
4 120 IN AMTRELAY 20 1 3 relay.lab.test.
4 120 IN AMTRELAY 20 0 2 2001:db8::15
5 IN CNAME 5.v4.driad.lab.test.
6 IN AMTRELAY 10 0 0 .
7 IN TXT \"no relay here\"
9 IN AMTRELAY 10 0 3 missing.lab.test.
10 IN TYPE260 \\# 4 0a850102
10 IN AMTRELAY 30 0 1 198.51.100.30
"
        .into(),
    };
    let lab_zone = Zone {
        origin: "lab.test.".into(),
        records: "\
ns IN A 127.0.0.1
relay 60 IN A 192.0.2.7
relay 60 IN AAAA 2001:db8::7
5.v4.driad IN AMTRELAY 16 0 3 r5v4.amt.lab.test.
r5v4.amt IN A 192.0.2.5
"
        .into(),
    };
    let reverse_v6 = Zone {
        origin: "8.b.d.0.1.0.0.2.ip6.arpa.".into(),
        records: "\
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN AMTRELAY 10 0 2 2001:db8::15
"
        .into(),
    };
    Named::start(
        &[reverse_v4, lab_zone, reverse_v6],
        &["186.212.23.in-addr.arpa."],
    )
}

fn resolver(named: &Named) -> DriadResolver {
    let mut dns = DnsConfig::new(vec![named.addr]);
    dns.timeout = Duration::from_secs(2);
    DriadResolver::new(DriadConfig::new(dns)).unwrap()
}

fn answer(outcome: DriadOutcome) -> ingest_policy::driad::DriadAnswer {
    match outcome {
        DriadOutcome::Answer(a) => a,
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The failure of a failed outcome and when to retry.
fn failed(outcome: DriadOutcome) -> (DnsFailure, Duration) {
    match outcome {
        DriadOutcome::Failed {
            failure,
            retry_after,
            ..
        } => (failure, retry_after),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn driad_against_bind() {
    let named = lab();
    let driad = resolver(&named);

    // Mixed record set: IPv4, name (A+AAAA), IPv6.
    let a = answer(driad.lookup_relays(ip("23.212.185.4")).await);
    assert_eq!(a.query_name, "4.185.212.23.in-addr.arpa.");
    assert_eq!(a.records.len(), 3, "{:?}", a.records);
    let mut got: Vec<(u8, bool, String, Option<String>)> = a
        .candidates
        .iter()
        .map(|c| {
            (
                c.precedence,
                c.discovery_optional,
                c.relay.to_string(),
                c.via_name.as_ref().map(|n| n.to_string()),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (10, false, "203.0.113.15".into(), None),
            (20, false, "2001:db8::15".into(), None),
            (20, true, "192.0.2.7".into(), Some("relay.lab.test.".into())),
            (
                20,
                true,
                "2001:db8::7".into(),
                Some("relay.lab.test.".into())
            ),
        ]
    );
    // TTL = smallest of the chain (relay A/AAAA at 60 s), within bounds.
    assert_eq!(a.ttl, Duration::from_secs(60));
    assert!(a.unresolved.is_empty());
    let sel = select_relays(
        &a.candidates,
        &HoldDownTracker::default(),
        Instant::now(),
        &mut StdRng::seed_from_u64(1),
    );
    assert_eq!(
        sel.usable().next().map(|c| c.relay.clone()),
        Some(RelayAddress::Ip(ip("203.0.113.15")))
    );

    // CNAME chain (Akamai style) followed; name relay resolved.
    let a = answer(driad.lookup_relays(ip("23.212.185.5")).await);
    assert_eq!(a.records.len(), 1);
    assert_eq!(a.records[0].to_string(), "16 0 3 r5v4.amt.lab.test.");
    assert_eq!(a.candidates.len(), 1);
    assert_eq!(a.candidates[0].relay, RelayAddress::Ip(ip("192.0.2.5")));

    // Type 0 only: selection says "no relay".
    let a = answer(driad.lookup_relays(ip("23.212.185.6")).await);
    assert_eq!(a.records[0].relay, Relay::None);
    let sel = select_relays(
        &a.candidates,
        &HoldDownTracker::default(),
        Instant::now(),
        &mut StdRng::seed_from_u64(1),
    );
    assert_eq!(sel.outcome, SelectionOutcome::NoRelay { precedence: 10 });

    // NODATA (name exists with TXT only) and NXDOMAIN.
    // SOA minimum 60 s is the negative TTL (within 30..600 bounds).
    assert_eq!(
        failed(driad.lookup_relays(ip("23.212.185.7")).await),
        (DnsFailure::NoData, Duration::from_secs(60))
    );
    let (failure, _) = failed(driad.lookup_relays(ip("23.212.185.8")).await);
    assert_eq!(failure, DnsFailure::NxDomain);

    // Name that does not resolve: listed as unresolved, no candidates.
    let a = answer(driad.lookup_relays(ip("23.212.185.9")).await);
    assert!(a.candidates.is_empty());
    assert_eq!(a.unresolved.len(), 1);
    assert_eq!(a.unresolved[0].name.to_string(), "missing.lab.test.");
    assert_eq!(a.unresolved[0].ipv4, DnsFailure::NxDomain);

    // Unassigned relay type ignored, the other record used.
    let a = answer(driad.lookup_relays(ip("23.212.185.10")).await);
    assert_eq!(a.records.len(), 2);
    assert_eq!(a.candidates.len(), 1);
    assert_eq!(a.candidates[0].relay, RelayAddress::Ip(ip("198.51.100.30")));

    // (BIND refuses to load a type 3 name without its root byte, so the
    // Akamai form is covered by the codec unit tests only.)

    // IPv6 source.
    let a = answer(driad.lookup_relays(ip("2001:db8::1")).await);
    assert_eq!(a.candidates.len(), 1);
    assert_eq!(a.candidates[0].relay, RelayAddress::Ip(ip("2001:db8::15")));

    // SERVFAIL from a zone that failed to load.
    assert_eq!(
        failed(driad.lookup_relays(ip("23.212.186.1")).await),
        (DnsFailure::ServFail, Duration::from_secs(30))
    );

    // Cached: the outcome is served from cache, then invalidation re-queries.
    assert!(driad.cached(ip("23.212.185.4"), Instant::now()).is_some());
    driad.invalidate(ip("23.212.185.4"));
    assert!(driad.cached(ip("23.212.185.4"), Instant::now()).is_none());

    // Hold-down of the name covers its addresses; the IPv6 relay remains.
    let a = answer(driad.lookup_relays(ip("23.212.185.4")).await);
    let mut holds = HoldDownTracker::default();
    let now = Instant::now();
    holds.hold_down_for(
        RelayAddress::Ip(ip("203.0.113.15")),
        HoldDownReason::NoAdvertisement,
        now,
        Duration::from_secs(300),
    );
    holds.hold_down_for(
        RelayAddress::Name("relay.lab.test".parse().unwrap()),
        HoldDownReason::NameResolution,
        now,
        Duration::from_secs(300),
    );
    let sel = select_relays(&a.candidates, &holds, now, &mut StdRng::seed_from_u64(2));
    assert_eq!(
        sel.outcome,
        SelectionOutcome::Relay(
            a.candidates
                .iter()
                .find(|c| c.relay == RelayAddress::Ip(ip("2001:db8::15")))
                .unwrap()
                .clone()
        )
    );
    drop(named);
}

#[tokio::test]
async fn timeout_is_typed() {
    let silent = Silent::start();
    let mut dns = DnsConfig::new(vec![silent.addr]);
    dns.timeout = Duration::from_millis(300);
    dns.attempts = 1;
    let driad = DriadResolver::new(DriadConfig::new(dns)).unwrap();
    let (failure, _) = failed(driad.lookup_relays(ip("23.212.185.4")).await);
    assert_eq!(failure, DnsFailure::Timeout);
}
