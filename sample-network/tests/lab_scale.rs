//! Lab tests at scale (issue 10): 1,000 (S,G)s from 100 sources through 100
//! relay addresses (one `amt-relay --listen-range`), each source's relay
//! from its AMTRELAY record in the lab's DNS, data from one `mcsend` on the
//! sources' LAN. The scale lab is `sample_network::scale` (the same code as
//! `lab-scale bench`); each test prints the cycle's JSON report.
//!
//! - `thousand_channels_over_hundred_relays_from_a_joinfile`: the wanted set
//!   from a joinfile. Needs no multicast routing (the relays receive
//!   natively with raw sockets and SSM joins, the daemon counts the data it
//!   decapsulates), so it runs on any kernel.
//! - `thousand_channels_over_hundred_relays_from_pimd_joins`: the wanted set
//!   from pimd: receivers on `rcv` join every channel, `rtr` joins toward the
//!   ingest router. Needs kernel multicast routing and fails at once
//!   without it.
//!
//! Both check that every channel is accepted by the relay its source's
//! record names (the relay's channel events and its status JSON), that the
//! relay forwarded data on every channel and every flow is `forwarding` at
//! the daemon, that no relay socket dropped anything, and that emptying the
//! wanted set clears the relays, closes every tunnel (after the linger) and
//! removes every source route.

mod common;

use std::time::Duration;

use common::*;
use sample_network::scale::{
    CycleOptions, CycleReport, DaemonOptions, JoinMode, ScaleLab, ScaleParams, ScalePlan,
};

const CHANNELS: usize = 1_000;
const RELAYS: usize = 100;

fn scale_cycle(lab: &Lab, join_mode: JoinMode) -> CycleReport {
    let plan = ScalePlan::new(ScaleParams {
        channels: CHANNELS,
        relays: RELAYS,
        groups_per_source: 10,
        // Two packets a second per channel: a flow stays `forwarding` even
        // when a busy machine delays the sender by a second.
        rate_pps: 2.0,
        relay_groups_per_socket: 1_000,
        ..ScaleParams::default()
    })
    .expect("plan");
    let daemon = DaemonOptions {
        join_mode,
        linger_s: 2,
        dataplane: std::env::var("LAB_DATAPLANE")
            .ok()
            .filter(|m| !m.is_empty()),
        ..DaemonOptions::default()
    };
    let scale = ScaleLab::new(&lab.prefix, &lab.run_dir, &bin_dir()).expect("scale lab");
    for name in ["amt-relay", "mcsend", "mcrx", "frr-ingestd", "ingestctl"] {
        bin(name);
    }
    scale.extend(&plan, &daemon).expect("extending the lab");
    // Waits, not limits: a slow (emulated, LAB_TIME_SCALE) host gets
    // longer; what the test asserts does not depend on them.
    let opts = CycleOptions {
        steady: Duration::from_secs(5),
        converge_timeout: Duration::from_secs(60).mul_f64(time_scale()),
        teardown_timeout: Duration::from_secs(30).mul_f64(time_scale()),
        settle_timeout: Duration::from_secs(30).mul_f64(time_scale()),
        ..CycleOptions::default()
    };
    let report = scale.run_cycle(&plan, &daemon, &opts).expect("scale cycle");
    println!(
        "{}",
        serde_json::to_string_pretty(&report.to_json()).expect("JSON")
    );
    report
}

fn check(r: &CycleReport) {
    let json = r.to_json();
    // Every channel at the relay its source's AMTRELAY record names.
    assert!(r.accepted.all, "not every channel accepted: {json}");
    assert_eq!(r.accepted.held, CHANNELS, "{json}");
    assert_eq!(r.accepted.wrong_relay_adds, 0, "{json}");
    assert_eq!(
        r.accepted.status_lists, CHANNELS,
        "the relay's status JSON does not list every channel: {json}"
    );
    // Data on every channel: sent by the relay, forwarding at the daemon.
    assert!(
        r.forwarding.relay_sent_all_s.is_some(),
        "the relay did not forward data on every channel: {json}"
    );
    assert!(r.forwarding.all, "not every flow forwarding: {json}");
    assert_eq!(r.forwarding.flows_listed, CHANNELS, "{json}");
    assert_eq!(r.forwarding.flows_at_wrong_relay, 0, "{json}");
    assert_eq!(
        r.relay.listen_rx_drops + r.relay.native_rx_drops,
        0,
        "relay receive-buffer drops: {json}"
    );
    assert_eq!(r.relay.join_errors, 0, "{json}");
    // Emptied: relays hold nothing, tunnels closed, routes gone.
    let td = &r.teardown;
    assert!(
        td.relays_empty_s.is_some(),
        "relays still hold channels: {json}"
    );
    assert_eq!(td.relays_hold_after, 0, "{json}");
    assert_eq!(td.relay_status_channels_after, Some(0), "{json}");
    assert_eq!(td.tunnels_after, Some(0), "tunnels left: {json}");
    assert_eq!(td.routes_after, 0, "source routes left: {json}");
    assert!(td.all, "{json}");
}

/// 1,000 channels over 100 relays from a joinfile (no multicast routing
/// needed).
#[test]
fn thousand_channels_over_hundred_relays_from_a_joinfile() {
    let _g = serial();
    let lab = Lab::up_without_multicast_routing("scl");
    let r = scale_cycle(&lab, JoinMode::Joinfile);
    check(&r);
}

/// The same through real pimd joins (needs kernel multicast routing).
#[test]
fn thousand_channels_over_hundred_relays_from_pimd_joins() {
    let _g = serial();
    let lab = Lab::up("sclp");
    let r = scale_cycle(&lab, JoinMode::Pimd);
    check(&r);
}
