//! Lab tests of the ingest spine (issue 2): real FRR in namespaces, the
//! daemon in `border`, a receiver in `rcv`. Run as root; they fail (never
//! skip) when the lab cannot be built.

mod common;

use std::time::{Duration, Instant};

use common::*;

const S: &str = "198.51.100.4";
const G: &str = "232.1.1.1";

#[test]
fn join_is_seen_forwarded_and_left() {
    let _g = serial();
    let mut lab = Lab::up("t2a");
    lab.start_daemon(&["--serve-all-sources"]);

    // 1. The join reaches the sidecar within 1 s, FRR resolves iif amt0.
    let rx = lab.mcrx(&[(S, G)], &[]);
    let seen = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        lab.joins()
            .contains(&(S.to_string(), G.to_string()))
            .then(|| rx.started.elapsed())
    })
    .unwrap_or_else(|| panic!("join never listed; daemon log:\n{}", lab.daemon_log()));
    println!(
        "join listed by ingestctl {:.0} ms after the receiver started",
        seen.as_secs_f64() * 1000.0
    );
    assert!(
        seen < limit(Duration::from_secs(1)),
        "join took {seen:?} to appear (limit 1 s)"
    );
    let resolved = wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        lab.upstream_on("ingest", S, G, "amt0").then_some(())
    });
    assert!(
        resolved.is_some(),
        "FRR upstream not joined with iif amt0: {}",
        lab.vtysh("ingest", "show ip pim upstream json")
    );
    let mroute = lab.vtysh_json("ingest", "show ip mroute json");
    assert_eq!(mroute[G][S]["iif"], "amt0", "{mroute}");
    assert!(mroute[G][S]["oil"]["ing-dn"].is_object(), "{mroute}");
    assert!(
        lab.own_routes().contains(S),
        "no source route: {}",
        lab.own_routes()
    );
    let j = lab.ingestctl_json(&["show", "joins", "--json"]);
    assert_eq!(j[0]["state"], "forwarding");
    assert_eq!(j[0]["interfaces"], serde_json::json!(["ing-dn"]));

    // 2. Injected packets arrive with no loss.
    let sent = lab.inject(S, G, 2000, 2000);
    assert_eq!(sent["sent"], 2000);
    std::thread::sleep(Duration::from_millis(500));
    let summary = rx.stop();
    println!("receiver: {}", summary["channels"][0]);
    assert_eq!(summary["packets"], 2000, "{summary}");
    assert_eq!(summary["missing"], 0, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");

    // 3. Leave: gone from the sidecar within 5 s, route removed, no delivery.
    let left = Instant::now();
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        lab.joins().is_empty().then(|| left.elapsed())
    })
    .expect("join still listed 10 s after the leave");
    println!(
        "join removed {:.2} s after the receiver left",
        gone.as_secs_f64()
    );
    assert!(
        gone < limit(Duration::from_secs(5)),
        "leave took {gone:?} (limit 5 s)"
    );
    assert!(
        !lab.own_routes().contains(S),
        "route left behind: {}",
        lab.own_routes()
    );
    let before = lab.rx_packets("rcv", "rcv0");
    lab.inject(S, G, 500, 1000);
    std::thread::sleep(Duration::from_millis(300));
    let delta = lab.rx_packets("rcv", "rcv0") - before;
    assert!(delta < 50, "{delta} packets reached rcv0 after the leave");
}

#[test]
fn hundred_channels_from_twenty_sources() {
    let _g = serial();
    let mut lab = Lab::up("t2b");
    lab.start_daemon(&["--serve-all-sources"]);
    let sources: Vec<String> = (0..20).map(|i| format!("198.51.100.{}", 10 + i)).collect();
    let channels: Vec<(&str, &str)> = sources.iter().map(|s| (s.as_str(), "232.1.2.1")).collect();
    let mut expected = Vec::new();
    for s in &sources {
        for g in 1..=5 {
            expected.push((s.clone(), format!("232.1.2.{g}")));
        }
    }
    expected.sort();
    let rx = lab.mcrx(&channels, &["--groups", "5"]);
    let all = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        (lab.joins() == expected).then(|| rx.started.elapsed())
    })
    .unwrap_or_else(|| panic!("only {} of 100 joins listed", lab.joins().len()));
    println!(
        "100 (S,G)s listed {:.0} ms after the receiver started",
        all.as_secs_f64() * 1000.0
    );
    assert!(
        all < limit(Duration::from_secs(2)),
        "100 joins took {all:?} (limit 2 s)"
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", lab.daemon_pid(0))).unwrap_or_default();
    let mem: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect();
    println!(
        "frr-ingestd with 100 joins (debug build): {}",
        mem.join(", ")
    );
    let routes = wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        let r = lab.own_routes();
        sources
            .iter()
            .all(|s| r.contains(&format!("{s} ")))
            .then_some(r)
    });
    assert!(
        routes.is_some(),
        "not every source routed: {}",
        lab.own_routes()
    );
    // A packet on every channel arrives.
    for (s, g) in &expected {
        lab.inject(s, g, 3, 0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = Instant::now();
    let summary = rx.stop();
    assert_eq!(
        summary["channels_receiving"], 100,
        "{}",
        summary["channels_receiving"]
    );
    assert_eq!(summary["packets"], 300);
    let gone = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.joins().is_empty().then(|| left.elapsed())
    });
    let gone = gone.unwrap_or_else(|| {
        panic!(
            "{} joins still listed 20 s after leaving",
            lab.joins().len()
        )
    });
    println!(
        "all 100 removed {:.2} s after the receiver left",
        gone.as_secs_f64()
    );
    let routes = wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        lab.own_routes().trim().is_empty().then_some(())
    });
    assert!(routes.is_some(), "routes left: {}", lab.own_routes());
}

#[test]
fn sidecar_and_pimd_restarts_converge() {
    let _g = serial();
    let mut lab = Lab::up("t2c");
    let d0 = lab.start_daemon(&["--serve-all-sources"]);
    let rx = lab.mcrx(&[(S, G)], &[]);
    let want = vec![(S.to_string(), G.to_string())];
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(50), || (lab
            .joins()
            == want)
            .then_some(()))
        .is_some()
    );
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(50), || lab
            .upstream_on("ingest", S, G, "amt0")
            .then_some(()))
        .is_some()
    );
    lab.inject(S, G, 300, 1000);

    // kill -9: the TUN and its routes vanish with the process.
    lab.kill_daemon(d0, libc::SIGKILL);
    assert!(
        !lab.exec("ingest", &["ip", "link", "show", "amt0"])
            .status
            .success(),
        "amt0 outlived the killed daemon"
    );
    let restarted = Instant::now();
    lab.start_daemon(&["--serve-all-sources"]);
    let back = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (lab.joins() == want).then(|| restarted.elapsed())
    })
    .expect("joins did not reappear after the sidecar restart");
    println!(
        "after kill -9 + restart, joins back in {:.0} ms (no receiver re-joined)",
        back.as_secs_f64() * 1000.0
    );
    let fwd = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        lab.upstream_on("ingest", S, G, "amt0")
            .then(|| restarted.elapsed())
    })
    .expect("FRR did not resolve amt0 again after the sidecar restart");
    println!(
        "FRR forwarding again {:.0} ms after the restart",
        fwd.as_secs_f64() * 1000.0
    );
    lab.inject(S, G, 300, 1000);

    // pimd restart: the sidecar reconnects, keeps its flows meanwhile, and
    // converges once the downstream router re-sends its periodic Join.
    let t = Instant::now();
    lab.restart_frr_daemon("ingest", "pimd");
    let reconnected = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = lab.ingestctl_json(&["show", "status", "--json"]);
        (s["frr_state"] == "connected" && s["counters"]["pimd_reconnects"].as_u64() >= Some(1))
            .then_some(())
    });
    assert!(
        reconnected.is_some(),
        "sidecar did not see pimd's restart and reconnect; log:\n{}",
        lab.daemon_log()
    );
    assert_eq!(lab.joins(), want, "join dropped during pimd's restart");
    let conv = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        lab.upstream_on("ingest", S, G, "amt0").then(|| t.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "pimd never re-resolved amt0: {}",
            lab.vtysh("ingest", "show ip pim upstream json")
        )
    });
    println!(
        "after pimd restart, forwarding via amt0 again in {:.1} s",
        conv.as_secs_f64()
    );
    // The grace period may still hold the join; what pimd reports must be it.
    let pim = lab.vtysh_json("ingest", "show ip pim join json");
    assert_eq!(pim["ing-dn"][G][S]["channelJoinName"], "JOIN", "{pim}");
    std::thread::sleep(Duration::from_millis(300));
    lab.inject(S, G, 300, 1000);
    std::thread::sleep(Duration::from_millis(500));
    let summary = rx.stop();
    assert_eq!(summary["packets"], 900, "{summary}");
    assert_eq!(lab.joins(), want);
}

#[test]
fn lab_up_down_twice_leaves_nothing() {
    let _g = serial();
    for round in 0..2 {
        let lab = Lab::up("t2d");
        let (prefix, run_dir) = (lab.prefix.clone(), lab.run_dir.clone());
        drop(lab);
        let out = std::process::Command::new(repo_dir().join("sample-network/lab"))
            .arg("leftovers")
            .env("LAB_PREFIX", &prefix)
            .env("LAB_RUN", &run_dir)
            .output()
            .expect("lab leftovers");
        assert!(
            out.status.success(),
            "round {round}: leftovers:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The sidecar does not need root: as `nobody` in group frrvty with
/// CAP_NET_ADMIN (TUN, routes, TC attach), CAP_SYS_ADMIN (entering FRR's
/// namespace) and CAP_BPF (the kernel data plane's program and maps) it
/// learns joins, owns amt0 and carries AMT traffic end to end. These are
/// the capabilities `frr-config/frr-ingestd.service` grants; with them the
/// data plane is never refused for lack of permission.
#[test]
fn runs_unprivileged_with_the_units_capabilities() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    let mut lab = Lab::up("t2u");
    let border = lab.node_dir("border");
    let owner = std::process::Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(&border)
        .status()
        .expect("chown");
    assert!(owner.success());
    let mut caps = "+net_admin,+sys_admin,+bpf".to_string();
    // Debian creates /dev/net/tun 0666; some images have 0600, where only
    // DAC override lets a non-root user open it.
    let tun_mode = std::fs::metadata("/dev/net/tun")
        .expect("/dev/net/tun")
        .permissions()
        .mode();
    if tun_mode & 0o006 != 0o006 {
        println!(
            "/dev/net/tun is {:o}: adding CAP_DAC_OVERRIDE for this machine",
            tun_mode & 0o777
        );
        caps.push_str(",+dac_override");
    }
    lab.daemon_wrapper = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--groups=frrvty",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = lab.write_config(
        "static.toml",
        &static_relays_config(Some(5), &[("198.51.100.0/24", "192.0.2.10")]),
    );
    let idx = lab.start_daemon(&["--config", &config]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.daemon_pid(idx)))
        .expect("daemon status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    let cap_line = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or("");
    println!("daemon {uid_line}; {cap_line}");
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "daemon is not running as nobody: {uid_line}"
    );
    let st = lab.ingestctl_json(&["show", "status", "--json"]);
    println!(
        "unprivileged daemon's data plane: {} ({})",
        st["dataplane"], st["dataplane_reason"]
    );
    assert!(
        !st["dataplane_reason"]
            .as_str()
            .unwrap_or("")
            .contains("not permitted"),
        "the unit's capabilities do not suffice for the kernel data plane: {st}"
    );

    let _tx = lab.mcsend(&[(S, G)], 200, &["--duration", "20"]);
    let rx = lab.mcrx(&[(S, G)], &["--duration", "6"]);
    let summary = rx.wait();
    assert_received(
        &lab,
        "unprivileged daemon, through AMT in 6 s at 200 pkt/s",
        &summary,
        1000,
    );
}
