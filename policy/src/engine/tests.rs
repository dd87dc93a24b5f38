//! Policy engine tests: the sans-IO engine with an injected clock.

use crate::dns::DnsFailure;
use crate::driad::reverse_name;
use crate::fixtures::{
    DORMS_URL, M, answer, desired, dorms_down, dorms_ok, engine_config, ip, no_static, relay,
    relays_of, sg,
};
use crate::text::{limit_text, rate_text};

use super::*;

fn failed(source: &str, failure: DnsFailure) -> DriadOutcome {
    DriadOutcome::Failed {
        source: ip(source),
        query_name: reverse_name(ip(source)),
        failure,
        retry_after: Duration::from_secs(30),
    }
}

/// The daemon's defaults with `limit` (DORMS on when there is a limit).
fn config(limit: Option<&str>) -> EngineConfig {
    engine_config(limit.map(|text| crate::admission::parse_bandwidth(text).unwrap()))
}

/// An engine started at `t0`.
fn engine(cfg: EngineConfig, static_map: StaticRelayMap, t0: Instant) -> Engine {
    Engine::new(cfg, static_map, t0, SystemTime::now())
}

fn no_relay_reason(set: &PolicySet, flow: SourceGroup) -> String {
    match &set[&flow].relays {
        RelayVerdict::NoRelay(reason) => reason.clone(),
        other => panic!("{flow}: expected no relay, got {other:?}"),
    }
}

/// Limit 10M; 6M/3M/2M at population 1: the 3M and 2M flows fit, the 6M
/// one is blocked with its reason. Then the 6M flow gets 3 receivers:
/// offload 12M puts it first, and the 3M flow is blocked.
#[test]
fn must_show_scenario() {
    let t0 = Instant::now();
    let static_relay: StaticRelayMap = Box::new(|_| Some((relay("192.0.2.10"), true)));
    let mut core = engine(config(Some("10M")), static_relay, t0);
    let (a, b, c) = (
        sg("198.51.100.1", "232.1.1.1"),
        sg("198.51.100.2", "232.1.1.2"),
        sg("198.51.100.3", "232.1.1.3"),
    );
    core.set_wanted(desired(&[(a, 1), (b, 1), (c, 1)]));
    let lookups = core.poll_lookups(t0);
    assert_eq!(
        lookups,
        vec![Lookup::Bitrate(a), Lookup::Bitrate(b), Lookup::Bitrate(c)],
        "static relays: no DRIAD lookups"
    );
    assert!(core.poll_lookups(t0).is_empty(), "in flight once");

    // Before DORMS answers nothing is admitted, nothing counted.
    let set = core.evaluate(t0);
    assert!(!set[&a].admitted);
    assert_eq!(
        set[&a].admission_reason,
        "waiting for the bitrate (DORMS lookup in progress)"
    );
    assert_eq!(set[&a].bitrate_origin, "pending (DORMS lookup in progress)");
    assert_eq!(relays_of(&set, a), vec![relay("192.0.2.10")]);
    assert_eq!(set[&a].candidates[0].outcome, "chosen (static map)");

    for (flow, rate) in [(a, 6 * M), (b, 3 * M), (c, 2 * M)] {
        core.on_lookup(LookupDone::Bitrate(flow, dorms_ok(rate)), t0);
    }
    let set = core.evaluate(t0);
    assert!(set[&b].admitted && set[&c].admitted);
    assert!(!set[&a].admitted);
    assert!(
        set[&a].admission_reason.starts_with(
            "blocked: needs 6.0 Mbit/s, 5.0 Mbit/s left of 10 Mbit/s (offload 0); held down until "
        ),
        "{}",
        set[&a].admission_reason
    );
    assert_eq!(
        set[&b].admission_reason,
        "admitted: 3.0 Mbit/s within the 10 Mbit/s limit (offload 0)"
    );
    assert_eq!(set[&a].bitrate, Some(6 * M));
    assert_eq!(set[&a].bitrate_origin, format!("dorms:{DORMS_URL}"));
    assert!(set[&a].serve().is_none());
    assert_eq!(set[&b].serve().map(|r| r.relay), Some(relay("192.0.2.10")));

    // The blocked flow's hold-down is a re-evaluation deadline.
    let mut patient = engine(
        EngineConfig {
            recheck: Duration::from_secs(3600),
            ..config(Some("10M"))
        },
        Box::new(|_| Some((relay("192.0.2.10"), true))),
        t0,
    );
    patient.set_wanted(desired(&[(a, 1), (b, 1), (c, 1)]));
    patient.poll_lookups(t0);
    for (flow, rate) in [(a, 6 * M), (b, 3 * M), (c, 2 * M)] {
        patient.on_lookup(LookupDone::Bitrate(flow, dorms_ok(rate)), t0);
    }
    patient.evaluate(t0);
    let mut deadline = patient.next_wakeup(t0);
    // The log budget's summary of suppressed lines (its 10 s window) may
    // wake the engine first; that is not the re-evaluation deadline.
    for _ in 0..3 {
        if deadline >= t0 + Duration::from_secs(30) {
            break;
        }
        patient.evaluate(deadline);
        deadline = patient.next_wakeup(deadline);
    }
    assert!(
        deadline >= t0 + Duration::from_secs(30) && deadline <= t0 + Duration::from_secs(180),
        "{:?}",
        deadline - t0
    );

    let t1 = t0 + Duration::from_secs(10);
    core.set_wanted(desired(&[(a, 3), (b, 1), (c, 1)]));
    let set = core.evaluate(t1);
    assert_eq!(set[&a].population, 3);
    assert!(set[&a].admitted, "{}", set[&a].admission_reason);
    assert_eq!(
        set[&a].admission_reason,
        "admitted: 6.0 Mbit/s within the 10 Mbit/s limit (offload 12.0 Mbit/s)"
    );
    assert!(set[&c].admitted);
    assert!(!set[&b].admitted);
    assert!(
        set[&b]
            .admission_reason
            .starts_with("blocked: needs 3.0 Mbit/s, 2.0 Mbit/s left of 10 Mbit/s (offload 0)"),
        "{}",
        set[&b].admission_reason
    );
}

#[test]
fn no_limit_admits_everything_without_lookups() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let a = sg("198.51.100.1", "232.1.1.1");
    core.set_wanted(desired(&[(a, 2)]));
    assert_eq!(core.poll_lookups(t0), vec![Lookup::Relays(a.source)]);
    let set = core.evaluate(t0);
    assert!(set[&a].admitted);
    assert_eq!(set[&a].admission_reason, "no bandwidth limit");
    assert_eq!(set[&a].bitrate_origin, "not looked up");
    assert_eq!(set[&a].relays, RelayVerdict::Pending);
    assert!(set[&a].serve().is_none(), "no relay yet");
}

#[test]
fn failover_holds_the_relay_down_for_every_source() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let (a, b) = (
        sg("198.51.100.1", "232.1.1.1"),
        sg("198.51.100.2", "232.1.1.2"),
    );
    core.set_wanted(desired(&[(a, 1), (b, 1)]));
    assert_eq!(core.poll_lookups(t0).len(), 2);
    let records = ["10 0 1 192.0.2.1", "20 1 1 192.0.2.2"];
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &records)),
        t0,
    );
    let set = core.evaluate(t0);
    assert_eq!(set[&b].relays, RelayVerdict::Pending, "b not answered yet");
    core.on_lookup(
        LookupDone::Relays(b.source, answer("198.51.100.2", &records)),
        t0,
    );
    let set = core.evaluate(t0);
    assert_eq!(
        set[&a].relays,
        RelayVerdict::Relays(vec![
            RelayChoice {
                relay: relay("192.0.2.1"),
                skip_discovery: false,
                precedence: 10,
                origin: RelaySource::Driad
            },
            RelayChoice {
                relay: relay("192.0.2.2"),
                skip_discovery: true,
                precedence: 20,
                origin: RelaySource::Driad
            },
        ])
    );
    let outcomes: Vec<&str> = set[&a]
        .candidates
        .iter()
        .map(|c| c.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["chosen", "next"]);

    core.on_relay_failure(
        RelayFailure {
            relay: relay("192.0.2.1"),
            sg: Some(a),
            reason: "no relay advertisement".into(),
            hold_down: true,
        },
        t0,
    );
    let t1 = t0 + Duration::from_secs(1);
    let set = core.evaluate(t1);
    for flow in [a, b] {
        assert_eq!(relays_of(&set, flow), vec![relay("192.0.2.2")]);
        let held = &set[&flow].candidates[0];
        assert_eq!(held.relay, "192.0.2.1");
        assert!(
            held.outcome.starts_with("held down until ")
                && held.outcome.ends_with(" UTC (no relay advertisement)"),
            "{}",
            held.outcome
        );
        assert_eq!(set[&flow].candidates[1].outcome, "chosen");
    }

    // The backup fails too: nothing left until the first hold-down ends.
    core.on_relay_failure(
        RelayFailure {
            relay: relay("192.0.2.2"),
            sg: None,
            reason: "L flag".into(),
            hold_down: true,
        },
        t1,
    );
    let set = core.evaluate(t1);
    let reason = no_relay_reason(&set, a);
    assert!(
        reason.starts_with("all 2 relays of 1.100.51.198.in-addr.arpa. are held down after failures (first back at "),
        "{reason}"
    );

    // Hold-downs are 3-10 minutes; after that both are usable again and
    // the last working relay stays first (sticky).
    let t2 = t1 + Duration::from_secs(601);
    let set = core.evaluate(t2);
    assert_eq!(
        relays_of(&set, a),
        vec![relay("192.0.2.2"), relay("192.0.2.1")]
    );
}

#[test]
fn random_order_within_a_precedence_is_stable() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let a = sg("198.51.100.1", "232.1.1.1");
    core.set_wanted(desired(&[(a, 1)]));
    core.poll_lookups(t0);
    let records: Vec<String> = (1..=6).map(|i| format!("10 0 1 192.0.2.{i}")).collect();
    let records: Vec<&str> = records.iter().map(String::as_str).collect();
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &records)),
        t0,
    );
    let first = relays_of(&core.evaluate(t0), a);
    assert_eq!(first.len(), 6);
    for i in 1..20 {
        let again = relays_of(&core.evaluate(t0 + Duration::from_secs(i)), a);
        assert_eq!(again, first);
    }
    // A re-answer with the records in another order changes nothing.
    let reversed: Vec<&str> = records.iter().rev().copied().collect();
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &reversed)),
        t0,
    );
    assert_eq!(relays_of(&core.evaluate(t0), a), first);
}

#[test]
fn type0_and_missing_records() {
    let t0 = Instant::now();
    let mut core = engine(config(Some("10M")), no_static(), t0);
    let (zero, mixed, none, broken, fine) = (
        sg("198.51.100.1", "232.1.1.1"),
        sg("198.51.100.2", "232.1.1.2"),
        sg("23.212.185.4", "232.1.1.3"),
        sg("198.51.100.4", "232.1.1.4"),
        sg("198.51.100.5", "232.1.1.5"),
    );
    core.set_wanted(desired(&[
        (zero, 1),
        (mixed, 1),
        (none, 1),
        (broken, 1),
        (fine, 1),
    ]));
    core.poll_lookups(t0);
    let done = [
        (zero, answer("198.51.100.1", &["10 0 0 ."])),
        (
            mixed,
            answer(
                "198.51.100.2",
                &["10 0 1 192.0.2.1", "20 0 0 .", "30 0 1 192.0.2.3"],
            ),
        ),
        (none, failed("23.212.185.4", DnsFailure::NxDomain)),
        (broken, failed("198.51.100.4", DnsFailure::ServFail)),
        (fine, answer("198.51.100.5", &["10 0 1 192.0.2.5"])),
    ];
    for (flow, outcome) in done {
        core.on_lookup(LookupDone::Relays(flow.source, outcome), t0);
        // 6M each: only one fits in 10M unless the relay-less ones are
        // left out of the count.
        core.on_lookup(LookupDone::Bitrate(flow, dorms_ok(6 * M)), t0);
    }
    let set = core.evaluate(t0);
    assert_eq!(
        no_relay_reason(&set, zero),
        "AMTRELAY type 0: the source's owner says do not ingest"
    );
    assert_eq!(set[&zero].candidates[0].outcome, "no relay (type 0)");
    assert_eq!(relays_of(&set, mixed), vec![relay("192.0.2.1")]);
    let mixed_outcomes: Vec<&str> = set[&mixed]
        .candidates
        .iter()
        .map(|c| c.outcome.as_str())
        .collect();
    assert_eq!(
        mixed_outcomes,
        [
            "chosen",
            "end of the list (type 0)",
            "not used (after a type 0 record)"
        ]
    );
    assert_eq!(
        no_relay_reason(&set, none),
        "no AMTRELAY record for 4.185.212.23.in-addr.arpa. (NXDOMAIN)"
    );
    assert_eq!(
        no_relay_reason(&set, broken),
        "AMTRELAY lookup for 4.100.51.198.in-addr.arpa. failed: SERVFAIL; retrying"
    );
    for flow in [zero, none] {
        assert!(!set[&flow].admitted);
        assert_eq!(
            set[&flow].admission_reason,
            "not counted against the bandwidth limit: no relay for this source"
        );
    }
    // The transient failure still counts; of the three 6M flows one fits.
    let admitted: Vec<SourceGroup> = set.values().filter(|f| f.admitted).map(|f| f.sg).collect();
    assert_eq!(admitted.len(), 1, "{admitted:?}");

    // Once the type 0 relay is held down... (a relay failure cannot touch
    // a type 0 record): the mixed source falls to type 0 when 192.0.2.1
    // fails, and that is not permanent.
    core.on_relay_failure(
        RelayFailure {
            relay: relay("192.0.2.1"),
            sg: Some(mixed),
            reason: "no traffic".into(),
            hold_down: true,
        },
        t0,
    );
    let set = core.evaluate(t0);
    assert_eq!(
        no_relay_reason(&set, mixed),
        "AMTRELAY type 0: the source's owner says do not ingest"
    );
    assert_ne!(
        set[&mixed].admission_reason,
        "not counted against the bandwidth limit: no relay for this source",
        "a held-down relay comes back: still counted"
    );
}

#[test]
fn failed_refresh_keeps_the_last_answer_and_negative_answers_win() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let a = sg("198.51.100.1", "232.1.1.1");
    core.set_wanted(desired(&[(a, 1)]));
    assert_eq!(core.poll_lookups(t0), vec![Lookup::Relays(a.source)]);
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &["10 0 1 192.0.2.1"])),
        t0,
    );
    assert!(core.poll_lookups(t0).is_empty());
    // The answer's TTL (300 s) is the refresh time.
    let t1 = t0 + Duration::from_secs(300);
    assert_eq!(core.poll_lookups(t1), vec![Lookup::Relays(a.source)]);
    core.on_lookup(
        LookupDone::Relays(a.source, failed("198.51.100.1", DnsFailure::Timeout)),
        t1,
    );
    assert_eq!(relays_of(&core.evaluate(t1), a), vec![relay("192.0.2.1")]);
    let t2 = t1 + Duration::from_secs(30);
    assert_eq!(core.poll_lookups(t2), vec![Lookup::Relays(a.source)]);
    core.on_lookup(
        LookupDone::Relays(a.source, failed("198.51.100.1", DnsFailure::NxDomain)),
        t2,
    );
    assert!(no_relay_reason(&core.evaluate(t2), a).starts_with("no AMTRELAY record"));
}

#[test]
fn dorms_down_with_and_without_default_then_recovery() {
    let t0 = Instant::now();
    let a = sg("198.51.100.1", "232.1.1.1");
    let static_map = || -> StaticRelayMap { Box::new(|_| Some((relay("192.0.2.10"), true))) };

    let mut strict = engine(config(Some("10M")), static_map(), t0);
    strict.set_wanted(desired(&[(a, 1)]));
    strict.poll_lookups(t0);
    strict.on_lookup(LookupDone::Bitrate(a, dorms_down()), t0);
    let set = strict.evaluate(t0);
    assert!(!set[&a].admitted);
    assert_eq!(
        set[&a].admission_reason,
        "blocked: no bitrate (DORMS: https://dorms.lab.test/.well-known/host-meta: timed out) and no default_bitrate"
    );
    assert_eq!(
        set[&a].bitrate_origin,
        "unknown: https://dorms.lab.test/.well-known/host-meta: timed out"
    );

    let mut lenient = engine(
        EngineConfig {
            default_bitrate: Some(1_000_000),
            ..config(Some("10M"))
        },
        static_map(),
        t0,
    );
    lenient.set_wanted(desired(&[(a, 1)]));
    lenient.poll_lookups(t0);
    lenient.on_lookup(LookupDone::Bitrate(a, dorms_down()), t0);
    let set = lenient.evaluate(t0);
    assert!(set[&a].admitted);
    assert_eq!(set[&a].bitrate, Some(M));
    assert!(
        set[&a]
            .bitrate_origin
            .starts_with("default (no DORMS metadata: "),
        "{}",
        set[&a].bitrate_origin
    );

    // A failure is asked again 10 s later; DORMS is back with 12M, which
    // does not fit.
    for core in [&mut strict, &mut lenient] {
        assert!(core.poll_lookups(t0 + Duration::from_secs(9)).is_empty());
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(core.poll_lookups(t1), vec![Lookup::Bitrate(a)]);
        core.on_lookup(LookupDone::Bitrate(a, dorms_ok(12 * M)), t1);
        let set = core.evaluate(t1);
        assert_eq!(set[&a].bitrate, Some(12 * M));
        assert_eq!(set[&a].bitrate_origin, format!("dorms:{DORMS_URL}"));
        assert!(!set[&a].admitted);
        assert!(
            set[&a]
                .admission_reason
                .starts_with("blocked: needs 12.0 Mbit/s, 10.0 Mbit/s left of 10 Mbit/s"),
            "{}",
            set[&a].admission_reason
        );
    }
}

#[test]
fn driad_off_and_gone_flows() {
    let t0 = Instant::now();
    let mut core = engine(
        EngineConfig {
            driad: false,
            ..config(None)
        },
        Box::new(|s: IpAddr| (s == ip("198.51.100.1")).then(|| (relay("192.0.2.10"), false))),
        t0,
    );
    let (a, b) = (
        sg("198.51.100.1", "232.1.1.1"),
        sg("198.51.100.2", "232.1.1.2"),
    );
    core.set_wanted(desired(&[(a, 1), (b, 1)]));
    assert!(core.poll_lookups(t0).is_empty());
    let set = core.evaluate(t0);
    assert_eq!(
        set[&a].relays,
        RelayVerdict::Relays(vec![RelayChoice {
            relay: relay("192.0.2.10"),
            skip_discovery: true,
            precedence: 0,
            origin: RelaySource::StaticMap
        }])
    );
    assert_eq!(
        no_relay_reason(&set, b),
        "no static relay for 198.51.100.2 and DRIAD discovery is off"
    );
    core.set_wanted(desired(&[(a, 1)]));
    let set = core.evaluate(t0);
    assert_eq!(set.keys().copied().collect::<Vec<_>>(), vec![a]);
    // A late result for a gone source is ignored.
    core.on_lookup(
        LookupDone::Relays(b.source, answer("198.51.100.2", &["10 0 1 192.0.2.1"])),
        t0,
    );
    assert_eq!(core.evaluate(t0).len(), 1);
}

#[test]
fn verdict_text() {
    let v = RelayVerdict::Relays(vec![
        RelayChoice {
            relay: relay("192.0.2.1"),
            skip_discovery: true,
            precedence: 10,
            origin: RelaySource::Driad,
        },
        RelayChoice {
            relay: relay("192.0.2.2"),
            skip_discovery: false,
            precedence: 20,
            origin: RelaySource::Driad,
        },
    ]);
    assert_eq!(
        v.to_string(),
        "relay 192.0.2.1:2268 (DRIAD, precedence 10, no discovery), 1 fallback"
    );
    assert_eq!(rate_text(2000), "2.0 kbit/s");
    assert_eq!(rate_text(999), "999 bit/s");
    assert_eq!(limit_text(10 * M), "10 Mbit/s");
    assert_eq!(limit_text(1_500_000_000), "1.5 Gbit/s");
}

fn dorms_with_priority(bits: u64, priority: u16) -> FlowBitrate {
    FlowBitrate {
        metadata: Some(crate::dorms::FlowMetadata {
            max_bitrate: bits,
            rate_field: crate::dorms::RateField::MaxBitsPerSecond,
            priority,
            max_packet_size: 1400,
            data_rate_window_ms: 2000,
        }),
        ..dorms_ok(bits)
    }
}

/// The sender's DORMS priority reaches admission: its preferred 9M flow
/// does not fit, so its 3M flow is held back although there is room, and
/// the operator sees which flow the sender ranks higher.
#[test]
fn sender_priority_from_dorms_holds_back_lower_flow() {
    let t0 = Instant::now();
    let mut core = engine(
        config(Some("10M")),
        Box::new(|_| Some((relay("192.0.2.10"), true))),
        t0,
    );
    let preferred = sg("198.51.100.1", "232.1.1.1");
    let lower = sg("198.51.100.1", "232.1.1.2");
    let other = sg("203.0.113.7", "232.1.1.3");
    core.set_wanted(desired(&[(preferred, 1), (lower, 1), (other, 1)]));
    core.poll_lookups(t0);
    for (flow, result) in [
        (preferred, dorms_with_priority(9 * M, 300)),
        (lower, dorms_with_priority(3 * M, 100)),
        (other, dorms_ok(2 * M)),
    ] {
        core.on_lookup(LookupDone::Bitrate(flow, result), t0);
    }
    let set = core.evaluate(t0);
    assert!(set[&other].admitted);
    assert!(!set[&preferred].admitted);
    assert!(!set[&lower].admitted);
    assert_eq!(
        set[&lower].admission_reason,
        "blocked: its sender ranks (198.51.100.1,232.1.1.1) higher (DORMS priority 300 > 100) \
         and that flow does not fit"
    );

    // Equal priorities: the 3M flow fits beside the 2M one as usual.
    core.on_lookup(
        LookupDone::Bitrate(preferred, dorms_with_priority(9 * M, 100)),
        t0,
    );
    let set = core.evaluate(t0 + Duration::from_secs(1));
    assert!(set[&lower].admitted, "{}", set[&lower].admission_reason);
}

/// When every relay in a source's answer has failed, DNS is asked again
/// before the TTL (300 s here) runs out, but not sooner than 30 s after the
/// last answer; a relay the new answer names is used at once. The last
/// relay left is reported without a hold-down (the orchestrator does that
/// when no flow on it has another relay): it stays in use meanwhile.
#[test]
fn all_relays_failed_asks_dns_again() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let a = sg("198.51.100.1", "232.1.1.1");
    core.set_wanted(desired(&[(a, 1)]));
    assert_eq!(core.poll_lookups(t0), vec![Lookup::Relays(a.source)]);
    let records = ["10 0 1 192.0.2.1", "20 0 1 192.0.2.2"];
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &records)),
        t0,
    );
    core.evaluate(t0);
    let fail = |core: &mut Engine, ip: &str, hold_down: bool, at: Instant| {
        core.on_relay_failure(
            RelayFailure {
                relay: relay(ip),
                sg: Some(a),
                reason: "relay lost (NoQuery)".into(),
                hold_down,
            },
            at,
        );
    };

    // One of two fails: the other is used, no new query.
    let t1 = t0 + Duration::from_secs(5);
    fail(&mut core, "192.0.2.1", true, t1);
    assert!(core.poll_lookups(t1).is_empty());
    assert_eq!(relays_of(&core.evaluate(t1), a), vec![relay("192.0.2.2")]);

    // The last one fails 10 s after the answer: it stays in use, and DNS
    // is asked again 30 s after the answer.
    let t2 = t0 + Duration::from_secs(10);
    fail(&mut core, "192.0.2.2", false, t2);
    assert_eq!(relays_of(&core.evaluate(t2), a), vec![relay("192.0.2.2")]);
    assert!(
        core.poll_lookups(t2).is_empty(),
        "too soon after the answer"
    );
    let requery = t0 + Duration::from_secs(30);
    assert!(core.next_wakeup(t2) <= requery);
    assert!(
        core.poll_lookups(requery - Duration::from_secs(1))
            .is_empty()
    );
    assert_eq!(core.poll_lookups(requery), vec![Lookup::Relays(a.source)]);

    // The owner moved the source to a new relay: it is used at once.
    core.on_lookup(
        LookupDone::Relays(
            a.source,
            answer("198.51.100.1", &["10 0 1 192.0.2.1", "15 0 1 192.0.2.3"]),
        ),
        requery,
    );
    let set = core.evaluate(requery);
    assert_eq!(relays_of(&set, a), vec![relay("192.0.2.3")]);

    // Failures of relays the answer does not name change nothing.
    fail(&mut core, "192.0.2.99", false, requery);
    assert!(core.poll_lookups(requery).is_empty());
}

/// A source with a single relay: its failures never hold it down, but
/// each asks DNS again, at most every 30 s.
#[test]
fn single_relay_failure_asks_dns_again_without_hold_down() {
    let t0 = Instant::now();
    let mut core = engine(config(None), no_static(), t0);
    let a = sg("198.51.100.1", "232.1.1.1");
    core.set_wanted(desired(&[(a, 1)]));
    core.poll_lookups(t0);
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &["10 0 1 192.0.2.1"])),
        t0,
    );
    let lost = RelayFailure {
        relay: relay("192.0.2.1"),
        sg: Some(a),
        reason: "relay lost (NoAdvertisement)".into(),
        hold_down: false,
    };
    let t1 = t0 + Duration::from_secs(40);
    core.on_relay_failure(lost.clone(), t1);
    assert_eq!(relays_of(&core.evaluate(t1), a), vec![relay("192.0.2.1")]);
    assert_eq!(core.poll_lookups(t1), vec![Lookup::Relays(a.source)]);
    core.on_lookup(
        LookupDone::Relays(a.source, answer("198.51.100.1", &["10 0 1 192.0.2.1"])),
        t1,
    );
    // Lost again 10 s later: the next query waits until 30 s after the
    // last answer.
    let t2 = t1 + Duration::from_secs(10);
    core.on_relay_failure(lost, t2);
    assert!(core.poll_lookups(t2).is_empty());
    assert_eq!(
        core.poll_lookups(t1 + Duration::from_secs(30)),
        vec![Lookup::Relays(a.source)]
    );
}
