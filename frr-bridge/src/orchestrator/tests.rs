//! Orchestrator tests: event sequences in, actions out, no I/O. Some run
//! the pure cores together (join tracker → policy engine → orchestrator)
//! the way the pipeline does, feeding actions' outcomes back by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use amt_gateway::{Family, LossReason, TunnelEvent};
use ingest_policy::driad::DriadOutcome;
use ingest_policy::engine::{
    Engine, FlowPolicy, Lookup, LookupDone, PolicySet, RelayChoice, RelaySource, RelayVerdict,
    StaticRelayMap, WantedSet,
};
use ingest_policy::fixtures::{answer_with_ttl, engine_config, ip, no_static, relay, sg};
use ingest_types::SourceGroup;

use super::*;
use crate::wanted::{JoinSet, WantedTracker};

const LINGER: Duration = Duration::from_secs(60);
const DELAY: Duration = Duration::from_millis(250);

fn orchestrator() -> Orchestrator {
    Orchestrator::new(OrchestratorConfig {
        serve_all: false,
        linger: LINGER,
        attempt_delay: DELAY,
    })
}

/// An admitted flow with these relays (best first), one interface.
fn decision(flow: SourceGroup, relays: &[&str]) -> FlowPolicy {
    FlowPolicy {
        sg: flow,
        interfaces: vec!["ing-dn".into()],
        held: false,
        population: 1,
        bitrate: None,
        bitrate_origin: "not looked up".into(),
        admitted: true,
        admission_reason: "no bandwidth limit".into(),
        relays: RelayVerdict::Relays(
            relays
                .iter()
                .map(|r| RelayChoice {
                    relay: relay(r),
                    skip_discovery: true,
                    precedence: 0,
                    origin: RelaySource::Driad,
                })
                .collect(),
        ),
        candidates: Vec::new(),
    }
}

fn decisions(flows: &[FlowPolicy]) -> Arc<PolicySet> {
    Arc::new(flows.iter().map(|f| (f.sg, Arc::new(f.clone()))).collect())
}

/// Shorthands for the actions the tests expect.
fn open_tunnel(r: &str, skip_discovery: bool) -> Action {
    Action::OpenTunnel {
        relay: relay(r),
        skip_discovery,
    }
}
fn subscribe(r: &str, sg: SourceGroup) -> Action {
    Action::Subscribe {
        relay: relay(r),
        sg,
    }
}
fn unsubscribe(r: &str, sg: SourceGroup) -> Action {
    Action::Unsubscribe {
        relay: relay(r),
        sg,
    }
}
fn add_route(source: &str) -> Action {
    Action::AddRoute { source: ip(source) }
}
fn remove_route(source: &str) -> Action {
    Action::RemoveRoute { source: ip(source) }
}

/// How many of `actions` open a tunnel to `relay`.
fn opens(actions: &[Action], relay: SocketAddr) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::OpenTunnel { relay: r, .. } if *r == relay))
        .count()
}

/// The tunnel to `tunnel` comes up, its relay answering from `via`.
fn tunnel_up(o: &mut Orchestrator, tunnel: &str, via: &str, now: Instant) -> Vec<Action> {
    o.on_tunnel_event(relay(tunnel), &up(relay(via)), now)
}

/// The actions without the API announcements (asserted separately).
fn work(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Announce(_)))
        .cloned()
        .collect()
}

fn up(relay: SocketAddr) -> TunnelEvent {
    TunnelEvent::Up {
        relay,
        family: Family::V4,
    }
}

fn phase(o: &Orchestrator, flow: SourceGroup) -> FlowPhase {
    o.flows()[&flow].phase
}

/// A flow on `relay` taken to forwarding: decided, tunnel up, route in,
/// data arriving.
fn forwarding(o: &mut Orchestrator, flow: &FlowPolicy, t0: Instant) {
    o.on_decisions(decisions(std::slice::from_ref(flow)), t0);
    let r = flow.serve().unwrap().relay;
    o.on_tunnel_event(r, &up(r), t0);
    o.on_route_added(flow.sg.source, Ok(()), t0);
    assert_eq!(phase(o, flow.sg), FlowPhase::Subscribed);
    o.on_tunnel_event(r, &TunnelEvent::DataFlowing { sg: flow.sg }, t0);
    assert_eq!(phase(o, flow.sg), FlowPhase::Forwarding);
}

#[test]
fn route_added_only_after_the_tunnel_is_up() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let actions = o.on_decisions(decisions(&[decision(a, &["192.0.2.10"])]), t0);
    assert_eq!(
        work(&actions),
        vec![open_tunnel("192.0.2.10", true), subscribe("192.0.2.10", a),],
        "no route before the relay answers"
    );
    assert!(actions.contains(&Action::announce(JoinChange::Added(o.flows()[&a].clone()))));
    assert_eq!(phase(&o, a), FlowPhase::WaitingTunnel);
    assert_eq!(
        o.flows()[&a].reason,
        "waiting for relay 192.0.2.10:2268 (requesting)"
    );

    // The relay names another address during discovery: still no route.
    let discovered = o.on_tunnel_event(
        relay("192.0.2.10"),
        &TunnelEvent::RelayDiscovered {
            relay: relay("192.0.2.11"),
        },
        Instant::now(),
    );
    assert!(work(&discovered).is_empty());
    assert_eq!(
        o.tunnels()[&relay("192.0.2.10")].state_text(),
        "requesting (relay 192.0.2.11:2268)"
    );

    let actions = tunnel_up(&mut o, "192.0.2.10", "192.0.2.11", Instant::now());
    assert_eq!(work(&actions), vec![add_route("198.51.100.4")]);
    assert_eq!(
        phase(&o, a),
        FlowPhase::WaitingTunnel,
        "until the route is in"
    );
    let actions = o.on_route_added(ip("198.51.100.4"), Ok(()), Instant::now());
    assert!(work(&actions).is_empty());
    assert_eq!(phase(&o, a), FlowPhase::Subscribed);
    assert_eq!(
        o.flows()[&a].reason,
        "subscribed at relay 192.0.2.10:2268; waiting for its data"
    );
    // Forwarding means the relay's data arrives.
    o.on_tunnel_event(relay("192.0.2.10"), &TunnelEvent::DataFlowing { sg: a }, t0);
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);
    assert_eq!(o.flows()[&a].reason, "data from relay 192.0.2.10:2268");
    o.on_tunnel_event(relay("192.0.2.10"), &TunnelEvent::DataStopped { sg: a }, t0);
    assert_eq!(phase(&o, a), FlowPhase::NoData);
    assert_eq!(
        o.flows()[&a].reason,
        "the data from relay 192.0.2.10:2268 stopped"
    );
    o.on_tunnel_event(relay("192.0.2.10"), &TunnelEvent::DataFlowing { sg: a }, t0);
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);
    assert_eq!(o.routed_sources(), 1);

    // A second flow of the same source on the up tunnel shares the route.
    let b = sg("198.51.100.4", "232.1.1.2");
    let actions = o.on_decisions(
        decisions(&[decision(a, &["192.0.2.10"]), decision(b, &["192.0.2.10"])]),
        t0,
    );
    assert_eq!(work(&actions), vec![subscribe("192.0.2.10", b)]);
    assert_eq!(
        phase(&o, b),
        FlowPhase::Subscribed,
        "the route is in; the relay's data is not yet"
    );
}

#[test]
fn failover_to_another_relay() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.7", "232.1.1.1");
    let both = decision(a, &["192.0.2.12", "192.0.2.11"]);
    forwarding(&mut o, &both, t0);

    // The preferred relay stops answering: reported with hold-down (the
    // flow has another candidate); the route stays while the flow waits.
    let actions = o.on_tunnel_event(
        relay("192.0.2.12"),
        &TunnelEvent::RelayLost {
            reason: LossReason::NoQuery,
        },
        Instant::now(),
    );
    assert_eq!(
        work(&actions),
        vec![Action::ReportRelayFailure(RelayFailure {
            relay: relay("192.0.2.12"),
            sg: Some(a),
            reason: "relay lost (NoQuery); retrying".into(),
            hold_down: true,
        })]
    );
    assert_eq!(phase(&o, a), FlowPhase::WaitingTunnel);
    assert_eq!(o.counters().relay_failures_reported, 1);

    // The engine moves the flow to its next relay.
    let t1 = t0 + Duration::from_secs(1);
    let actions = o.on_decisions(decisions(&[decision(a, &["192.0.2.11"])]), t1);
    assert_eq!(
        work(&actions),
        vec![
            remove_route("198.51.100.7"),
            unsubscribe("192.0.2.12", a),
            open_tunnel("192.0.2.11", true),
            subscribe("192.0.2.11", a),
        ]
    );
    assert_eq!(o.counters().flows_moved, 1);
    assert_eq!(o.flows()[&a].relay, Some(relay("192.0.2.11")));
    assert_eq!(
        o.tunnels()[&relay("192.0.2.12")].linger_until,
        Some(t1 + LINGER),
        "the old tunnel lingers"
    );
    let actions = tunnel_up(&mut o, "192.0.2.11", "192.0.2.11", Instant::now());
    assert_eq!(work(&actions), vec![add_route("198.51.100.7")]);
    o.on_route_added(ip("198.51.100.7"), Ok(()), Instant::now());
    assert_eq!(phase(&o, a), FlowPhase::Subscribed);
    o.on_tunnel_event(relay("192.0.2.11"), &TunnelEvent::DataFlowing { sg: a }, t1);
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);
}

#[test]
fn linger_close_after_the_last_leave() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let flow = decision(a, &["192.0.2.10"]);
    forwarding(&mut o, &flow, t0);

    let t1 = t0 + Duration::from_secs(5);
    let actions = o.on_decisions(decisions(&[]), t1);
    assert_eq!(
        work(&actions),
        vec![remove_route("198.51.100.4"), unsubscribe("192.0.2.10", a),]
    );
    assert!(
        matches!(actions.last(), Some(Action::Announce(change)) if matches!(**change, JoinChange::Removed(_)))
    );
    assert!(o.flows().is_empty());
    assert_eq!(o.tunnels()[&relay("192.0.2.10")].state_text(), "lingering");

    // Not before the linger ends; then closed once.
    assert!(work(&o.on_timeout(t1 + LINGER - Duration::from_millis(1))).is_empty());
    assert_eq!(
        work(&o.on_timeout(t1 + LINGER)),
        vec![Action::CloseTunnel {
            relay: relay("192.0.2.10")
        }]
    );
    assert!(o.tunnels().is_empty());
    assert_eq!(o.counters().tunnels_closed, 1);
    assert!(work(&o.on_timeout(t1 + LINGER * 2)).is_empty());
}

#[test]
fn a_join_within_the_linger_reuses_the_tunnel() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let flow = decision(a, &["192.0.2.10"]);
    forwarding(&mut o, &flow, t0);
    o.on_decisions(decisions(&[]), t0);
    let t1 = t0 + Duration::from_secs(10);
    let actions = o.on_decisions(decisions(&[flow]), t1);
    assert_eq!(
        work(&actions),
        vec![subscribe("192.0.2.10", a), add_route("198.51.100.4"),],
        "no new tunnel: the lingering one is up"
    );
    assert_eq!(o.tunnels()[&relay("192.0.2.10")].linger_until, None);
    assert!(work(&o.on_timeout(t1 + LINGER)).is_empty());
}

#[test]
fn tunnel_open_and_route_failures_are_retried() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let flow = decision(a, &["192.0.2.10"]);
    o.on_decisions(decisions(std::slice::from_ref(&flow)), t0);
    o.on_tunnel_open_failed(relay("192.0.2.10"), "Address family not supported", t0);
    assert_eq!(phase(&o, a), FlowPhase::Error);
    assert_eq!(
        o.flows()[&a].reason,
        "cannot open a tunnel to relay 192.0.2.10:2268: Address family not supported"
    );
    assert_eq!(
        work(&o.on_timeout(t0 + Duration::from_secs(1))),
        vec![open_tunnel("192.0.2.10", true), subscribe("192.0.2.10", a),]
    );
    tunnel_up(&mut o, "192.0.2.10", "192.0.2.10", Instant::now());
    // EEXIST, as netlink reports a route already in the way.
    let eexist = RouteError::from(std::io::Error::from_raw_os_error(17));
    assert_eq!(eexist.errno, Some(17));
    o.on_route_added(ip("198.51.100.4"), Err(eexist), Instant::now());
    assert_eq!(phase(&o, a), FlowPhase::Error);
    assert!(
        o.flows()[&a]
            .reason
            .starts_with("cannot add route for 198.51.100.4: File exists"),
        "{}",
        o.flows()[&a].reason
    );
    assert_eq!(o.counters().route_errors, 1);
    assert_eq!(o.routed_sources(), 0);
    let retry = o.on_timeout(t0 + Duration::from_secs(2));
    assert!(work(&retry).contains(&add_route("198.51.100.4")));
    o.on_route_added(ip("198.51.100.4"), Ok(()), Instant::now());
    assert_eq!(phase(&o, a), FlowPhase::Subscribed);
}

#[test]
fn a_route_that_cannot_be_removed_is_counted() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    forwarding(&mut o, &decision(a, &["192.0.2.10"]), t0);
    let actions = o.on_decisions(decisions(&[]), t0);
    assert!(work(&actions).contains(&remove_route("198.51.100.4")));
    // ESRCH: the route was already gone.
    let esrch = RouteError::from(std::io::Error::from_raw_os_error(3));
    o.on_route_removed(ip("198.51.100.4"), Err(esrch), t0);
    assert_eq!(o.counters().route_errors, 1);
    assert_eq!(o.routed_sources(), 0);
}

#[test]
fn a_tunnel_task_that_ends_is_reopened_with_its_channels() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    forwarding(&mut o, &decision(a, &["192.0.2.10"]), t0);
    let actions = o.on_tunnel_task_ended(relay("192.0.2.10"), t0);
    assert_eq!(
        work(&actions),
        vec![open_tunnel("192.0.2.10", true), subscribe("192.0.2.10", a),]
    );
    assert!(!o.tunnels()[&relay("192.0.2.10")].up());
}

// ---- the cores together ------------------------------------------------

/// DRIAD's answer for `source`, cached for an hour.
fn answer(source: &str, records: &[&str]) -> DriadOutcome {
    answer_with_ttl(source, records, Duration::from_secs(3600))
}

/// Feeds the engine's relay failures back, as the pipeline does.
fn feed_failures(engine: &mut Engine, actions: &[Action], now: Instant) -> usize {
    let mut n = 0;
    for action in actions {
        if let Action::ReportRelayFailure(failure) = action {
            engine.on_relay_failure(failure.clone(), now);
            n += 1;
        }
    }
    n
}

#[test]
fn last_relay_failing_asks_dns_again() {
    let t0 = Instant::now();
    let mut engine = Engine::new(engine_config(None), no_static(), t0, SystemTime::now());
    let mut o = orchestrator();
    let a = sg("203.0.113.6", "232.1.1.1");
    let wanted: WantedSet = [(
        a,
        ingest_policy::engine::WantedFlow {
            interfaces: vec!["ing-dn".into()],
            held: false,
        },
    )]
    .into();
    engine.set_wanted(Arc::new(wanted));
    assert_eq!(engine.poll_lookups(t0), vec![Lookup::Relays(a.source)]);
    engine.on_lookup(
        LookupDone::Relays(a.source, answer("203.0.113.6", &["10 0 1 192.0.2.12"])),
        t0,
    );
    let actions = o.on_decisions(Arc::new(engine.evaluate(t0)), t0);
    assert!(actions.contains(&subscribe("192.0.2.12", a)));

    // The only relay never answers: reported without hold-down (nothing
    // else to move to), so its tunnel keeps retrying...
    let t1 = t0 + Duration::from_secs(10);
    let actions = o.on_tunnel_event(
        relay("192.0.2.12"),
        &TunnelEvent::RelayLost {
            reason: LossReason::NoQuery,
        },
        Instant::now(),
    );
    assert!(actions.contains(&Action::ReportRelayFailure(RelayFailure {
        relay: relay("192.0.2.12"),
        sg: Some(a),
        reason: "relay lost (NoQuery); retrying".into(),
        hold_down: false,
    })));
    assert_eq!(feed_failures(&mut engine, &actions, t1), 1);
    let set = engine.evaluate(t1);
    assert_eq!(
        set[&a].serve().map(|c| c.relay),
        Some(relay("192.0.2.12")),
        "still the relay to use"
    );
    assert!(work(&o.on_decisions(Arc::new(set), t1)).is_empty());

    // ... and DNS is asked again 30 s after the answer, not at its TTL
    // (an hour): the owner may have moved the source to another relay.
    assert!(engine.poll_lookups(t1).is_empty());
    assert!(engine.poll_lookups(t0 + Duration::from_secs(29)).is_empty());
    assert_eq!(
        engine.poll_lookups(t0 + Duration::from_secs(30)),
        vec![Lookup::Relays(a.source)]
    );
    engine.on_lookup(
        LookupDone::Relays(a.source, answer("203.0.113.6", &["10 0 1 192.0.2.11"])),
        t0 + Duration::from_secs(31),
    );
    let t2 = t0 + Duration::from_secs(31);
    let actions = o.on_decisions(Arc::new(engine.evaluate(t2)), t2);
    assert!(work(&actions).contains(&subscribe("192.0.2.11", a)));
}

#[test]
fn pimd_restart_grace_keeps_flows_forwarding() {
    let t0 = Instant::now();
    let static_map: StaticRelayMap = Box::new(|_| Some((relay("192.0.2.10"), false)));
    let mut engine = Engine::new(engine_config(None), static_map, t0, SystemTime::now());
    let mut tracker = WantedTracker::new(Duration::from_secs(75));
    let mut o = orchestrator();
    let (a, b) = (
        sg("198.51.100.4", "232.1.1.1"),
        sg("198.51.100.5", "232.1.1.1"),
    );
    let joins: JoinSet = [
        (a, vec!["ing-dn".to_string()]),
        (b, vec!["ing-dn2".to_string()]),
    ]
    .into();
    let mut step = |tracker: &mut WantedTracker, o: &mut Orchestrator, now: Instant| {
        engine.set_wanted(Arc::new(tracker.wanted(now)));
        o.on_decisions(Arc::new(engine.evaluate(now)), now)
    };
    tracker.on_answer(Family::V4, joins.clone(), t0);
    step(&mut tracker, &mut o, t0);
    tunnel_up(&mut o, "192.0.2.10", "192.0.2.10", Instant::now());
    o.on_route_added(a.source, Ok(()), Instant::now());
    o.on_route_added(b.source, Ok(()), Instant::now());
    for flow in [a, b] {
        o.on_tunnel_event(
            relay("192.0.2.10"),
            &TunnelEvent::DataFlowing { sg: flow },
            t0,
        );
    }
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);
    assert_eq!(phase(&o, b), FlowPhase::Forwarding);

    // pimd restarts: unreachable, then back knowing nothing.
    tracker.on_failure(Family::V4);
    let t1 = t0 + Duration::from_secs(2);
    assert!(work(&step(&mut tracker, &mut o, t1)).is_empty());
    let t2 = t0 + Duration::from_secs(4);
    tracker.on_answer(Family::V4, JoinSet::new(), t2);
    let actions = step(&mut tracker, &mut o, t2);
    assert!(
        work(&actions).is_empty(),
        "held through the grace: {actions:?}"
    );
    assert!(o.flows()[&a].held && o.flows()[&b].held);
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);

    // The downstream router re-sends a's Join; b's receiver left meanwhile.
    let t3 = t0 + Duration::from_secs(30);
    tracker.on_answer(Family::V4, [(a, vec!["ing-dn".to_string()])].into(), t3);
    assert!(work(&step(&mut tracker, &mut o, t3)).is_empty());
    assert!(!o.flows()[&a].held && o.flows()[&b].held);

    // Grace over: b goes, a stays.
    let t4 = t2 + Duration::from_secs(75);
    let actions = step(&mut tracker, &mut o, t4);
    assert_eq!(
        work(&actions),
        vec![
            Action::RemoveRoute { source: b.source },
            unsubscribe("192.0.2.10", b),
        ]
    );
    assert_eq!(o.flows().keys().copied().collect::<Vec<_>>(), vec![a]);
}

#[test]
fn serve_all_routes_without_tunnels_and_shutdown_cleans_up() {
    let t0 = Instant::now();
    let mut o = Orchestrator::new(OrchestratorConfig {
        serve_all: true,
        linger: LINGER,
        attempt_delay: DELAY,
    });
    let a = sg("198.51.100.4", "232.1.1.1");
    let mut flow = decision(a, &[]);
    flow.relays = RelayVerdict::NoRelay("serve_all_sources: no tunnel".into());
    let actions = o.on_decisions(decisions(&[flow]), t0);
    assert_eq!(work(&actions), vec![add_route("198.51.100.4")]);
    o.on_route_added(ip("198.51.100.4"), Ok(()), Instant::now());
    assert_eq!(phase(&o, a), FlowPhase::Forwarding);
    assert_eq!(
        o.flows()[&a].reason,
        "serve_all_sources: routed without a tunnel"
    );
    assert_eq!(o.flows()[&a].policy, None);
    assert_eq!(o.shutdown(), vec![remove_route("198.51.100.4")]);
    assert_eq!(o.routed_sources(), 0);
}

// ---- relay racing (RFC 8777 §3.2) ---------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn connect(r: &str) -> Action {
    Action::Connect {
        relay: relay(r),
        family: Family::V4,
    }
}

fn open(r: &str) -> Action {
    Action::OpenTunnel {
        relay: relay(r),
        skip_discovery: true,
    }
}

#[test]
fn dead_first_relay_loses_the_race_to_the_second() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.7", "232.1.1.1");
    let actions = o.on_decisions(decisions(&[decision(a, &["192.0.2.12", "192.0.2.11"])]), t0);
    assert_eq!(
        work(&actions),
        vec![open("192.0.2.12"), connect("192.0.2.12")],
        "the best candidate first; nothing subscribed yet"
    );
    assert_eq!(phase(&o, a), FlowPhase::Racing);
    assert_eq!(o.next_timeout(), Some(t0 + DELAY));
    assert!(work(&o.on_timeout(t0 + ms(249))).is_empty());
    assert_eq!(
        work(&o.on_timeout(t0 + DELAY)),
        vec![open("192.0.2.11"), connect("192.0.2.11")]
    );
    assert!(o.flows()[&a].reason.starts_with("racing 2 of 2 relays"));
    assert_eq!(o.next_timeout(), None, "every candidate started");

    // The second answers first: it gets the flow, the first is reported.
    let t1 = t0 + ms(270);
    let actions = tunnel_up(&mut o, "192.0.2.11", "192.0.2.11", t1);
    assert_eq!(
        work(&actions),
        vec![
            Action::ReportRelayFailure(RelayFailure {
                relay: relay("192.0.2.12"),
                sg: Some(a),
                reason: "lost the relay race: no Query 270 ms after the Request".into(),
                hold_down: true,
            }),
            subscribe("192.0.2.11", a),
            add_route("198.51.100.7"),
        ]
    );
    let flow = &o.flows()[&a];
    assert_eq!(flow.relay, Some(relay("192.0.2.11")));
    assert_eq!(
        flow.race_result
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("won by 192.0.2.11:2268 (2 of 2) in 270 ms")
    );
    assert_eq!(o.counters().races, 1);
    assert_eq!(o.counters().race_winners[1], 1);
    // The loser's tunnel serves nothing: it lingers, then closes.
    assert_eq!(
        o.tunnels()[&relay("192.0.2.12")].linger_until,
        Some(t1 + LINGER)
    );
    assert!(o.tunnels()[&relay("192.0.2.12")].channels.is_empty());
    // A late answer from the loser changes nothing for the flow.
    let late = tunnel_up(&mut o, "192.0.2.12", "192.0.2.12", t1 + ms(100));
    assert!(work(&late).is_empty());
    assert_eq!(o.flows()[&a].relay, Some(relay("192.0.2.11")));

    // The policy still lists both (the engine has not heard back yet):
    // the flow stays on the relay that works.
    let actions = o.on_decisions(decisions(&[decision(a, &["192.0.2.12", "192.0.2.11"])]), t1);
    assert!(work(&actions).is_empty());
}

#[test]
fn two_live_relays_exactly_one_carries_the_flow() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    o.on_decisions(decisions(&[decision(a, &["192.0.2.10", "192.0.2.11"])]), t0);
    o.on_timeout(t0 + DELAY);
    let first = tunnel_up(&mut o, "192.0.2.10", "192.0.2.10", t0 + ms(260));
    let second = tunnel_up(&mut o, "192.0.2.11", "192.0.2.11", t0 + ms(261));
    let subscribes: Vec<Action> = work(&first)
        .into_iter()
        .chain(work(&second))
        .filter(|a| matches!(a, Action::Subscribe { .. }))
        .collect();
    assert_eq!(subscribes, vec![subscribe("192.0.2.10", a)]);
    assert_eq!(o.counters().race_winners[0], 1);
    // The second had been asked only 10 ms before: abandoned, not blamed.
    assert!(
        !work(&first)
            .iter()
            .any(|a| matches!(a, Action::ReportRelayFailure(_))),
        "{first:?}"
    );
    assert_eq!(
        o.tunnels()[&relay("192.0.2.11")].linger_until,
        Some(t0 + ms(260) + LINGER)
    );
}

#[test]
fn a_tunnel_already_up_is_reused_without_a_race() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let b = sg("198.51.100.5", "232.1.1.1");
    forwarding(&mut o, &decision(b, &["192.0.2.11"]), t0);
    let c = sg("198.51.100.6", "232.1.1.1");
    let actions = o.on_decisions(
        decisions(&[
            decision(b, &["192.0.2.11"]),
            decision(c, &["192.0.2.12", "192.0.2.11"]),
        ]),
        t0,
    );
    assert_eq!(
        work(&actions),
        vec![subscribe("192.0.2.11", c), add_route("198.51.100.6"),]
    );
    assert_eq!(o.counters().races, 0);
    assert!(!o.tunnels().contains_key(&relay("192.0.2.12")));
}

#[test]
fn a_refusing_relay_starts_the_next_candidate_at_once() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    o.on_decisions(
        decisions(&[decision(a, &["192.0.2.10", "192.0.2.11", "192.0.2.12"])]),
        t0,
    );
    let actions = o.on_tunnel_event(
        relay("192.0.2.10"),
        &TunnelEvent::RelayRefused {
            relay: relay("192.0.2.10"),
        },
        t0 + ms(20),
    );
    assert_eq!(
        work(&actions),
        vec![
            Action::ReportRelayFailure(RelayFailure {
                relay: relay("192.0.2.10"),
                sg: Some(a),
                reason: "refused by relay 192.0.2.10:2268 (L flag)".into(),
                hold_down: true,
            }),
            open("192.0.2.11"),
            connect("192.0.2.11"),
        ]
    );
    // A relay that cannot even get a socket fails its attempt too.
    let actions = o.on_tunnel_open_failed(relay("192.0.2.11"), "no route", t0 + ms(21));
    assert!(work(&actions).contains(&connect("192.0.2.12")));
    assert!(o.flows()[&a].reason.contains("(+21 ms)"));
}

#[test]
fn an_ipv6_join_whose_relays_are_unreachable_says_why() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("2001:db8:5100::7", "ff3e::8000:1");
    let (first, second) = ("2001:db8:0:2::12", "2001:db8:0:2::11");
    o.on_decisions(decisions(&[decision(a, &[first, second])]), t0);
    let no_route = |r: &str| {
        format!(
            "unreachable from this host: no IPv6 route to {} (Network is unreachable)",
            relay(r)
        )
    };
    // The first relay cannot be reached at all: reported (held down, the
    // flow has another candidate) and the next one starts at once.
    let actions = o.on_tunnel_open_failed(relay(first), &no_route(first), t0 + ms(1));
    let work = work(&actions);
    assert!(work.contains(&Action::ReportRelayFailure(RelayFailure {
        relay: relay(first),
        sg: Some(a),
        reason: format!(
            "cannot open a tunnel to relay {}: {}",
            relay(first),
            no_route(first)
        ),
        hold_down: true,
    })));
    assert!(work.contains(&Action::Connect {
        relay: relay(second),
        family: Family::V6,
    }));
    assert!(o.flows()[&a].reason.contains(&no_route(first)));
    // Neither can the second: the flow names both and why.
    o.on_tunnel_open_failed(relay(second), &no_route(second), t0 + ms(2));
    assert_eq!(
        o.flows()[&a].reason,
        format!(
            "every relay failed ({}: {}; {}: {}); waiting for the policy to move on",
            relay(first),
            no_route(first),
            relay(second),
            no_route(second)
        )
    );
}

#[test]
fn fifty_candidates_are_tried_one_every_delay() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let other = sg("198.51.100.9", "232.1.1.9");
    let relays: Vec<String> = (1..=50).map(|i| format!("192.0.2.{}", 100 + i)).collect();
    let names: Vec<&str> = relays.iter().map(String::as_str).collect();
    o.on_decisions(
        decisions(&[decision(a, &names), decision(other, &["192.0.2.10"])]),
        t0,
    );
    let mut now = t0;
    while let Some(next) = o.next_timeout() {
        if next > t0 + Duration::from_secs(60) {
            break;
        }
        now = next;
        o.on_timeout(now);
    }
    assert_eq!(
        now,
        t0 + DELAY * 49,
        "the 50th started 49 delays after the first"
    );
    assert_eq!(o.tunnels().len(), 51);
    // The other flow was never held back: it is subscribed on its relay.
    assert_eq!(phase(&o, other), FlowPhase::WaitingTunnel);
    // The 37th answers: it wins; the 48 others that had their delay to
    // answer are reported once each, the 50th (asked just now) is not.
    let actions = o.on_tunnel_event(relay(names[36]), &up(relay(names[36])), now);
    let reports = work(&actions)
        .into_iter()
        .filter(|a| matches!(a, Action::ReportRelayFailure(_)))
        .count();
    assert_eq!(reports, 48);
    assert_eq!(
        o.flows()[&a].race_result.as_ref().map(|r| r.position),
        Some(37)
    );
    assert_eq!(o.counters().race_winners[RACE_POSITIONS - 1], 1);
}

/// A relay whose tunnel cannot be opened (an IPv6 relay without an IPv6
/// route) is tried again after 1, 2, 4 ... s, not at every timeout: the
/// soak saw one reopened several times a second while other flows raced.
#[test]
fn a_relay_that_cannot_be_opened_is_retried_with_backoff() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("198.51.100.4", "232.1.1.1");
    let r = relay("192.0.2.10");
    o.on_decisions(decisions(&[decision(a, &["192.0.2.10"])]), t0);
    let mut failed_at = t0;
    for (round, wait) in [1u64, 2, 4, 8].into_iter().enumerate() {
        o.on_tunnel_open_failed(r, "Network is unreachable", failed_at);
        assert_eq!(phase(&o, a), FlowPhase::Error);
        let retry = failed_at + Duration::from_secs(wait);
        assert_eq!(o.next_timeout(), Some(retry), "round {round}");
        // Timeouts before the wait is over (races elsewhere) retry nothing.
        for ms in [250, 500, wait * 1000 - 1] {
            let early = o.on_timeout(failed_at + Duration::from_millis(ms));
            assert_eq!(opens(&early, r), 0, "round {round}, {ms} ms: {early:?}");
        }
        assert_eq!(opens(&o.on_timeout(retry), r), 1, "round {round}");
        failed_at = retry;
    }
    // Up at last: the next failure waits the shortest time again.
    o.on_tunnel_event(r, &up(r), failed_at);
    o.on_tunnel_open_failed(r, "Network is unreachable", failed_at);
    assert_eq!(o.next_timeout(), Some(failed_at + Duration::from_secs(1)));
}

/// The backoff of a relay that could not be opened holds for every flow: a
/// flow decided meanwhile waits for the retry (its only relay) or races
/// without it, and the retry opens the tunnel once for all of them (the
/// soak saw two flows reopen the same unreachable relay within a second).
#[test]
fn a_relay_in_open_backoff_is_not_reopened_by_other_flows() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let a = sg("2001:db8:5100::4", "ff3e::8000:1");
    let b = sg("2001:db8:5100::4", "ff3e::8000:2");
    let c = sg("2001:db8:5100::5", "ff3e::8000:1");
    let dead = relay("2001:db8:77::11");
    let alive = relay("192.0.2.10");
    o.on_decisions(decisions(&[decision(a, &["2001:db8:77::11"])]), t0);
    o.on_tunnel_open_failed(dead, "Network is unreachable", t0);
    assert_eq!(phase(&o, a), FlowPhase::Error);

    // 300 ms later two more flows: b's only relay is the dead one, c races
    // the dead one and a live one.
    let t1 = t0 + Duration::from_millis(300);
    let actions = o.on_decisions(
        decisions(&[
            decision(a, &["2001:db8:77::11"]),
            decision(b, &["2001:db8:77::11"]),
            decision(c, &["2001:db8:77::11", "192.0.2.10"]),
        ]),
        t1,
    );
    assert_eq!(opens(&actions, dead), 0, "{actions:?}");
    assert_eq!(opens(&actions, alive), 1, "{actions:?}");
    assert_eq!(phase(&o, b), FlowPhase::Error);
    assert!(
        o.flows()[&b].reason.contains("next try in 0.7 s"),
        "{}",
        o.flows()[&b].reason
    );
    assert_eq!(o.flows()[&c].relay, Some(alive));
    // Timeouts (c's race) before the retry open nothing.
    assert_eq!(
        opens(&o.on_timeout(t0 + Duration::from_millis(600)), dead),
        0
    );
    // The retry: one open for a and b together.
    let retry = o.on_timeout(t0 + Duration::from_secs(1));
    assert_eq!(opens(&retry, dead), 1, "{retry:?}");
    assert_eq!(phase(&o, a), FlowPhase::WaitingTunnel);
    assert_eq!(phase(&o, b), FlowPhase::WaitingTunnel);
}

/// A race whose last candidate is skipped (its relay waits out the open
/// backoff another flow caused) does not wait for the policy: the flow is
/// in error on that relay and retried with it.
#[test]
fn a_race_left_with_a_relay_in_backoff_retries_it() {
    let t0 = Instant::now();
    let mut o = orchestrator();
    let c = sg("198.51.100.4", "232.1.1.1");
    let x = sg("198.51.100.5", "232.1.1.1");
    let (a, b) = ("192.0.2.10", "192.0.2.11");
    o.on_decisions(decisions(&[decision(c, &[a, b])]), t0);
    assert_eq!(phase(&o, c), FlowPhase::Racing);
    // Another flow opens b, which fails: b waits 1 s.
    o.on_decisions(
        decisions(&[decision(c, &[a, b]), decision(x, &[b])]),
        t0 + ms(10),
    );
    o.on_tunnel_open_failed(relay(b), "Network is unreachable", t0 + ms(20));
    // c's first attempt fails too: b is skipped, not reopened.
    let actions = o.on_tunnel_open_failed(relay(a), "Network is unreachable", t0 + ms(30));
    assert_eq!(opens(&actions, relay(b)), 0, "{actions:?}");
    assert_eq!(phase(&o, c), FlowPhase::Error);
    assert_eq!(o.flows()[&c].relay, Some(relay(b)));
    assert!(
        o.flows()[&c].reason.contains("next try in 1.0 s"),
        "{}",
        o.flows()[&c].reason
    );
    // b's retry takes c along: one open for both flows.
    let retry = o.on_timeout(t0 + ms(1020));
    let opened: Vec<_> = retry
        .iter()
        .filter(|x| matches!(x, Action::OpenTunnel { .. }))
        .collect();
    assert_eq!(opened, vec![&open_tunnel(b, true)], "{retry:?}");
    assert_eq!(phase(&o, c), FlowPhase::WaitingTunnel);
    assert_eq!(phase(&o, x), FlowPhase::WaitingTunnel);
}
