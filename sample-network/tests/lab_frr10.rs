//! Lab tests of what FRR 10 brings (issue 8): IPv6 through pim6d (MLDv2
//! receivers, pim6d joins read by the sidecar, the sidecar as pim6d's PIMv6
//! neighbour on amt0 with link-local Hellos, IPv6 source routes via its
//! link-local address, AMT tunnels over IPv6 to relays with IPv6 addresses
//! and IPv6 data over IPv4 tunnels, DRIAD over ip6.arpa), and IPv4 RPF
//! through one static `ip mroute` instead of a route per source. They need
//! `LAB_FRR=10` (Debian 12's FRR 8.4.4 has no pim6d and ignores `ip mroute`
//! for RPF) and fail loudly without it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const S6: &str = "2001:db8:5100::4";
const G6: &str = "ff3e::8000:1";
const S4: &str = "198.51.100.4";
const G4: &str = "232.1.1.1";

fn require_frr10() {
    assert!(
        matches!(Frr::from_env(), Frr::V10 { .. }),
        "these lab tests need FRR 10 (pim6d, ip mroute for RPF): run them with LAB_FRR=10 (scripts/test-all does)"
    );
}

/// Static relays: IPv4 sources through relay (IPv4 tunnel); IPv6 sources
/// through relay2's IPv6 address (IPv6 tunnel), or with `v6_over_v4`
/// through relay's IPv4 address (IPv6 data in an IPv4 tunnel).
fn static_config(lab: &Lab, v6_over_v4: bool) -> String {
    let v6_relay = if v6_over_v4 {
        "192.0.2.10".to_string()
    } else {
        format!("[{}]:2268", ipv6("relay2", "rly0"))
    };
    let toml = static_relays_config(
        Some(3),
        &[
            ("198.51.100.0/24", "192.0.2.10"),
            ("2001:db8:5100::/64", &v6_relay),
        ],
    );
    lab.write_config("ipv6-test.toml", &toml)
}

/// Join seen, first packet, 30 s at 1000 pkt/s (natively) and the relay's state after
/// the leave, for one channel: the figures issue 8 asks per family.
fn end_to_end(lab: &Lab, relay_node: &str, s: &str, g: &str, family: &str) {
    let sender = lab.mcsend(&[(s, g)], end_to_end_rate(), &["--duration", "45"]);
    std::thread::sleep(Duration::from_secs(1));
    let joined = Instant::now();
    let rx = lab.mcrx(&[(s, g)], &["--duration", "31"]);
    let want = (s.to_string(), g.to_string());
    let seen = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        lab.joins().contains(&want).then(|| joined.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{family}: the sidecar never saw the join; log:\n{}",
            lab.daemon_log()
        )
    });
    let summary = rx.wait();
    let d = Delivery::of(&summary, s, g);
    println!(
        "{family}: join seen by the sidecar {:.0} ms after the receiver joined; first packet \
         {:.0} ms after the join; {} of {} packets delivered at {} pkt/s ({:.3} %)",
        seen.as_secs_f64() * 1000.0,
        d.first_ms,
        d.unique,
        d.span,
        end_to_end_rate(),
        d.ratio * 100.0
    );
    assert!(
        seen < limit(Duration::from_secs(1)),
        "{family}: join seen after {seen:?}"
    );
    d.assert_end_to_end(family, &summary, lab);
    let left = Instant::now();
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        lab.relay_channels(relay_node)
            .iter()
            .all(|(rs, rg, _)| (rs.as_str(), rg.as_str()) != (s, g))
            .then(|| left.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "{family}: {relay_node} still holds ({s},{g}) 5 s after the leave: {:?}",
            lab.relay_channels(relay_node)
        )
    });
    println!(
        "{family}: after the leave the relay holds no state for the channel within {:.2} s",
        gone.as_secs_f64()
    );
    drop(sender);
}

#[test]
fn ipv6_and_ipv4_end_to_end_through_frr10() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6a");
    let config = static_config(&lab, false);
    lab.start_daemon(&["--config", &config]);
    // The sidecar is pim6d's PIMv6 neighbour on amt0 (link-local Hellos).
    let neighbour = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        lab.vtysh("ingest", "show ipv6 pim neighbor json")
            .contains("fe80::a9fe:4d02")
            .then_some(())
    });
    assert!(
        neighbour.is_some(),
        "not pim6d's neighbour on amt0: {}",
        lab.vtysh("ingest", "show ipv6 pim neighbor")
    );
    end_to_end(&lab, "relay2", S6, G6, "IPv6 (IPv6 tunnel to relay2)");
    // The IPv6 route went via the link-local neighbour while it was used.
    end_to_end(&lab, "relay", S4, G4, "IPv4 on FRR 10");
}

#[test]
fn ipv6_data_over_an_ipv4_tunnel() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6b");
    let config = static_config(&lab, true);
    lab.start_daemon(&["--config", &config]);
    let sender = lab.mcsend(&[(S6, G6)], 200, &["--duration", "20"]);
    let rx = lab.mcrx(&[(S6, G6)], &["--duration", "8"]);
    let summary = rx.wait();
    let ch = channel_summary(&summary, S6, G6);
    let packets = ch["packets"].as_u64().unwrap_or(0);
    println!("IPv6 data over the IPv4 tunnel to 192.0.2.10: {packets} packets in 8 s at 200 pkt/s");
    assert!(packets >= 1000, "{summary}\nlog:\n{}", lab.daemon_log());
    let tunnels = lab.tunnels();
    assert!(
        tunnels.to_string().contains("192.0.2.10:2268"),
        "not over the IPv4 tunnel: {tunnels}"
    );
    drop(sender);
}

/// 50 IPv4 and 50 IPv6 channels through one daemon, over two relays, one
/// of them reached over IPv6.
#[test]
fn fifty_ipv4_and_fifty_ipv6_channels() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6c");
    let config = static_config(&lab, false);
    lab.start_daemon(&["--config", &config]);
    let sender = lab.mcsend(
        &[(S4, G4), (S6, G6)],
        20,
        &["--groups", "50", "--duration", "60"],
    );
    let rx = lab.mcrx(
        &[(S4, G4), (S6, G6)],
        &["--groups", "50", "--duration", "25"],
    );
    let started = Instant::now();
    let all = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        let flows = lab.flows();
        (flows.len() == 100 && flows.values().all(|f| f["state"] == "forwarding"))
            .then(|| started.elapsed())
    });
    let flows = lab.flows();
    let states: std::collections::BTreeMap<String, usize> =
        flows.values().fold(Default::default(), |mut m, f| {
            *m.entry(f["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
    let all = all.unwrap_or_else(|| panic!("not all 100 forwarding: {states:?}"));
    let summary = rx.wait();
    let receiving = summary["channels_receiving"].as_u64().unwrap_or(0);
    println!(
        "50 IPv4 + 50 IPv6 channels: all forwarding {:.1} s after the joins; {receiving} of 100 \
         received at the receiver",
        all.as_secs_f64()
    );
    assert_eq!(receiving, 100, "{summary}");
    let relays: std::collections::BTreeSet<String> = flows
        .values()
        .map(|f| f["relay"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(relays.len(), 2, "{relays:?}");
    assert!(
        relays.iter().any(|r| r.starts_with('[')),
        "no IPv6 relay: {relays:?}"
    );
    drop(sender);
}

/// pimd and pim6d restart: forwarding resumes in both families without a
/// receiver re-joining.
#[test]
fn pimd_and_pim6d_restarts_keep_both_families() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6d");
    let config = static_config(&lab, false);
    lab.start_daemon(&["--config", &config]);
    let sender = lab.mcsend(&[(S4, G4), (S6, G6)], 100, &["--duration", "200"]);
    let rx = lab.mcrx(&[(S4, G4), (S6, G6)], &["--duration", "190"]);
    let forwarding = |lab: &Lab, s: &str, g: &str| {
        lab.flows()
            .get(&format!("{s},{g}"))
            .is_some_and(|f| f["state"] == "forwarding")
    };
    for (s, g) in [(S4, G4), (S6, G6)] {
        assert!(
            wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
                forwarding(&lab, s, g).then_some(())
            })
            .is_some(),
            "({s},{g}) never forwarding; log:\n{}",
            lab.daemon_log()
        );
    }
    for (daemon, upstream) in [
        ("pimd", "show ip pim upstream json"),
        ("pim6d", "show ipv6 pim upstream json"),
    ] {
        let t = Instant::now();
        lab.restart_frr_daemon("ingest", daemon);
        // Both families stay served through the restart (the grace period
        // holds the joins the restarted daemon has not relearnt yet).
        for (s, g) in [(S4, G4), (S6, G6)] {
            assert!(
                lab.joins().contains(&(s.to_string(), g.to_string())),
                "({s},{g}) dropped while {daemon} restarted"
            );
        }
        let back = wait_until(Duration::from_secs(90), Duration::from_millis(250), || {
            lab.vtysh("ingest", upstream)
                .contains("amt0")
                .then(|| t.elapsed())
        })
        .unwrap_or_else(|| {
            panic!(
                "{daemon} never re-resolved amt0: {}",
                lab.vtysh("ingest", upstream)
            )
        });
        println!(
            "{daemon} restart: upstream on amt0 again {:.1} s later",
            back.as_secs_f64()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let summary = rx.stop();
    for (s, g) in [(S4, G4), (S6, G6)] {
        let ch = channel_summary(&summary, s, g);
        println!("({s},{g}): {} packets through both restarts", ch["packets"]);
        assert!(ch["packets"].as_u64().unwrap_or(0) > 0, "{summary}");
        let last_ms = ch["last_packet_ms"].as_f64().unwrap_or(0.0);
        assert!(
            last_ms > 0.0,
            "({s},{g}) got nothing after the restarts: {summary}"
        );
    }
    drop(sender);
}

/// IPv6 sources found through DRIAD (ip6.arpa AMTRELAY: type 2 relay, type
/// 3 name with an AAAA record, type 0) and DORMS metadata over IPv6.
#[test]
fn ipv6_sources_through_driad_and_dorms() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6e");
    lab.start_daemon_with_policy(&["--bandwidth-limit", "10M"]);
    let chans = [
        ("2001:db8:5100::4", G6),
        ("2001:db8:5100::5", G6),
        ("2001:db8:5100::6", G6),
    ];
    let sender = lab.mcsend(&chans, 100, &["--duration", "40"]);
    let rx = lab.mcrx(&chans, &["--duration", "20"]);
    let ok = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let flows = lab.flows();
        (flows
            .get(&format!("2001:db8:5100::4,{G6}"))
            .is_some_and(|f| f["state"] == "forwarding")
            && flows
                .get(&format!("2001:db8:5100::5,{G6}"))
                .is_some_and(|f| f["state"] == "forwarding"))
        .then_some(flows)
    });
    let flows = ok.unwrap_or_else(|| panic!("{:#?}\nlog:\n{}", lab.flows(), lab.daemon_log()));
    let f4 = &flows[&format!("2001:db8:5100::4,{G6}")];
    let f5 = &flows[&format!("2001:db8:5100::5,{G6}")];
    let f6 = &flows[&format!("2001:db8:5100::6,{G6}")];
    println!(
        "::4 via {} (bitrate {} from {}); ::5 via {}; ::6: {} -- {}",
        f4["relay"],
        f4["bitrate"],
        f4["bitrate_origin"],
        f5["relay"],
        f6["state"],
        f6["admission_reason"]
    );
    assert_eq!(f4["relay"], format!("[{}]:2268", ipv6("relay", "rly0")));
    assert_eq!(f4["bitrate"], 1_000_000, "DORMS metadata over IPv6: {f4}");
    assert_eq!(f5["relay"], format!("[{}]:2268", ipv6("relay2", "rly0")));
    assert_eq!(f6["state"], "not-served");
    assert!(
        f6["admission_reason"]
            .as_str()
            .unwrap_or("")
            .contains("type 0"),
        "{f6}"
    );
    let summary = rx.wait();
    assert!(channel_summary(&summary, "2001:db8:5100::4", G6)["packets"].as_u64() > Some(0));
    assert_eq!(
        channel_summary(&summary, "2001:db8:5100::6", G6)["packets"],
        0
    );
    drop(sender);
}

/// FRR >= 10.3 honours `ip mroute` for RPF: with one static
/// `ip mroute 0.0.0.0/0 <sidecar>` and `tun.ipv4_rpf = "mroute"`, IPv4
/// channels need no route per source.
#[test]
fn static_mroute_replaces_per_source_routes() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6f");
    let out = lab.vtysh_session(
        "ingest",
        &["configure terminal", "ip mroute 0.0.0.0/0 169.254.77.2"],
    );
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "ip mroute not accepted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = static_config(&lab, false);
    let mroute_config = lab.write_config(
        "mroute-test.toml",
        &format!(
            "[tun]\nipv4_rpf = \"mroute\"\n{}",
            std::fs::read_to_string(&config).expect("config")
        ),
    );
    lab.start_daemon(&["--config", &mroute_config]);
    let sender = lab.mcsend(&[(S4, G4)], 200, &["--duration", "30"]);
    let rx = lab.mcrx(&[(S4, G4)], &["--duration", "10"]);
    let summary = rx.wait();
    let packets = channel_summary(&summary, S4, G4)["packets"]
        .as_u64()
        .unwrap_or(0);
    let routes = lab.own_routes();
    let rpf = lab.vtysh("ingest", &format!("show ip rpf {S4}"));
    println!(
        "ip mroute RPF: {packets} packets in 10 s at 200 pkt/s; per-source routes: {:?}; RPF: {}",
        routes.trim(),
        rpf.trim()
    );
    assert!(packets >= 1500, "{summary}\nlog:\n{}", lab.daemon_log());
    assert!(
        routes.trim().is_empty(),
        "per-source routes in mroute mode: {routes}"
    );
    assert!(rpf.contains("amt0"), "RPF does not point at amt0: {rpf}");
    drop(sender);
}

/// An IPv6 join whose only relay has an IPv6 address the border cannot
/// route to: `show flows` says so (no Discovery timeouts first), and IPv4
/// keeps working beside it.
#[test]
fn ipv6_join_whose_relay_is_unreachable_says_why() {
    require_frr10();
    let _g = serial();
    let mut lab = Lab::up("t6g");
    let config = lab.write_config(
        "unreachable-v6.toml",
        &static_relays_config(
            None,
            &[
                ("198.51.100.0/24", "192.0.2.10"),
                ("2001:db8:5100::/64", "[2001:db8:ffff::1]:2268"),
            ],
        ),
    );
    lab.start_daemon(&["--config", &config]);
    // The receiver stays joined while the flow is looked at: on an emulated
    // host (LAB_TIME_SCALE) the join takes longer to get through.
    let listen = limit(Duration::from_secs(10)).as_secs().to_string();
    let send = limit(Duration::from_secs(30)).as_secs().to_string();
    let sender = lab.mcsend(&[(S4, G4), (S6, G6)], 100, &["--duration", &send]);
    let rx = lab.mcrx(&[(S4, G4), (S6, G6)], &["--duration", &listen]);
    let key6 = format!("{S6},{G6}");
    let flow6 = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
        lab.flows().get(&key6).cloned().filter(|f| {
            f["admission_reason"]
                .as_str()
                .is_some_and(|r| r.contains("no IPv6 route to [2001:db8:ffff::1]:2268"))
        })
    })
    .unwrap_or_else(|| panic!("{:#?}\nlog:\n{}", lab.flows(), lab.daemon_log()));
    println!(
        "IPv6 join, unreachable relay: {} -- {}",
        flow6["state"], flow6["admission_reason"]
    );
    let summary = rx.wait();
    assert!(
        channel_summary(&summary, S4, G4)["packets"].as_u64() > Some(500),
        "{summary}"
    );
    assert_eq!(channel_summary(&summary, S6, G6)["packets"], 0);
    drop(sender);
}
