//! Lab tests of the kernel data plane (issue 9): frr-ingestd with
//! `--dataplane kernel` decapsulates AMT data in a BPF program at TC
//! ingress of the border's uplink and hands it through a veth pair into
//! amt0 in FRR's namespace, where pimd's kernel route forwards it to the
//! receiver. Needs root, a kernel that loads the program (the test fails,
//! never skips, when it does not) and bpftool (to look for leftovers).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const S: &str = "198.51.100.4";
const G: &str = "232.1.1.1";
const RELAY: &str = "192.0.2.10:2268";

fn static_config(lab: &Lab) -> String {
    let path = lab.node_dir("border").join("dataplane-test.toml");
    std::fs::write(
        &path,
        "[amt]\nlinger_s = 5\n[[amt.static_relays]]\nprefix = \"198.51.100.0/24\"\n\
         relay = \"192.0.2.10\"\n[policy]\ndriad = false\n",
    )
    .expect("write config");
    path.display().to_string()
}

fn tunnel(lab: &Lab) -> Value {
    lab.tunnels()
        .as_array()
        .and_then(|a| a.iter().find(|t| t["relay"] == RELAY).cloned())
        .unwrap_or(Value::Null)
}

/// What of the kernel data plane is visible in a node: BPF programs
/// attached to its interfaces (`bpftool net show`, TCX and tc) and the
/// data plane's veth ends.
fn kernel_objects(lab: &Lab, node: &str) -> Vec<String> {
    let mut found = Vec::new();
    let net = lab.exec(node, &["bpftool", "net", "show"]);
    assert!(
        net.status.success(),
        "bpftool net show in {node}: {}",
        String::from_utf8_lossy(&net.stderr)
    );
    for line in String::from_utf8_lossy(&net.stdout).lines() {
        if line.contains("amt_decap") || line.contains("amt_to_tun") {
            found.push(format!("program: {}", line.trim()));
        }
    }
    let links = lab.exec_ok(node, &["ip", "-o", "link", "show"]);
    for line in links.lines() {
        if line.contains("amtdp-") {
            found.push(format!("link: {}", line.trim()));
        }
    }
    found
}

/// Data through the kernel path end to end, with the counters the operator
/// relies on coming from the BPF maps, and nothing left after a stop.
#[test]
fn kernel_data_plane_end_to_end() {
    let _g = serial();
    let mut lab = Lab::up("t9k");
    let config = static_config(&lab);
    let idx = lab.start_daemon(&["--config", &config, "--dataplane", "kernel"]);
    let status = lab.ingestctl_json(&["show", "status", "--json"]);
    println!(
        "data plane: {} ({}); attached: {}",
        status["dataplane"], status["dataplane_reason"], status["dataplane_interfaces"]
    );
    assert_eq!(status["dataplane"], "kernel", "{status}");
    let sender = lab.mcsend(&[(S, G)], 1000, &["--duration", "40"]);
    std::thread::sleep(Duration::from_secs(1));
    let joined = Instant::now();
    let rx = lab.mcrx(&[(S, G)], &["--duration", "21"]);
    let forwarding = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let flows = lab.flows();
        (flows.get(&format!("{S},{G}"))?["state"] == "forwarding").then(|| joined.elapsed())
    });
    let forwarding = forwarding.unwrap_or_else(|| {
        panic!(
            "the flow never became forwarding (data seen through the kernel's counters): {:#?}\nlog:\n{}",
            lab.flows(),
            lab.daemon_log()
        )
    });
    let summary = rx.wait();
    let seq = &summary["channels"][0]["sequence"];
    let unique = seq["unique"].as_u64().unwrap_or(0);
    let span = seq["highest"].as_u64().unwrap_or(0) + 1 - seq["lowest"].as_u64().unwrap_or(0);
    let ratio = unique as f64 / span.max(1) as f64;
    let t = tunnel(&lab);
    let packets = t["packets"].as_u64().unwrap_or(0);
    let kernel = t["kernel_packets"].as_u64().unwrap_or(0);
    println!(
        "kernel data plane: flow forwarding {:.0} ms after the join; receiver got {unique} of \
         {span} ({:.3} %), first after {} ms; tunnel {packets} packets, {kernel} by the kernel \
         ({}), passed to the socket: {}",
        forwarding.as_secs_f64() * 1000.0,
        ratio * 100.0,
        summary["channels"][0]["first_packet_ms"],
        t["dataplane"],
        t["kernel_passed"]
    );
    assert!(
        t["dataplane"]
            .as_str()
            .unwrap_or("")
            .starts_with("kernel via"),
        "{t}"
    );
    // 1000 pkt/s for the receiver's 21 s, less the first second; an emulated
    // lab host (LAB_TIME_SCALE) sends that much slower.
    let wanted = (19_000.0 / time_scale()) as u64;
    assert!(
        unique >= wanted,
        "only {unique} packets (want {wanted}): {summary}"
    );
    assert!(ratio >= 0.999, "delivered {:.3} %", ratio * 100.0);
    assert!(
        kernel as f64 >= packets as f64 * 0.99 && kernel > 0,
        "the kernel delivered {kernel} of the tunnel's {packets} packets"
    );
    while_running_objects_then_none_after_stop(&mut lab, idx);
    drop(sender);
}

/// The programs and the veth pair exist while the daemon runs and are
/// gone after SIGTERM.
fn while_running_objects_then_none_after_stop(lab: &mut Lab, idx: usize) {
    let border = kernel_objects(lab, "border");
    let ingest = kernel_objects(lab, "ingest");
    assert!(
        border.iter().any(|o| o.contains("amt_decap")),
        "no amt_decap in border while running: {border:?}"
    );
    assert!(
        ingest.iter().any(|o| o.contains("amt_to_tun")),
        "no amt_to_tun in ingest while running: {ingest:?}"
    );
    lab.kill_daemon(idx, libc::SIGTERM);
    let left: Vec<String> = kernel_objects(lab, "border")
        .into_iter()
        .chain(kernel_objects(lab, "ingest"))
        .collect();
    assert!(left.is_empty(), "left behind after SIGTERM: {left:?}");
}

/// The stall probe and relay-restart recovery work from the kernel's
/// counters (the socket sees no data at all).
#[test]
fn kernel_data_plane_survives_a_relay_restart() {
    let _g = serial();
    let mut lab = Lab::up("t9r");
    let config = static_config(&lab);
    lab.start_daemon(&["--config", &config, "--dataplane", "kernel"]);
    let _sender = lab.mcsend(&[(S, G)], 200, &["--duration", "90"]);
    let rx = lab.mcrx(&[(S, G)], &["--duration", "60"]);
    let packets = |lab: &Lab| tunnel(lab)["kernel_packets"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (packets(&lab) > 100).then_some(())
    })
    .unwrap_or_else(|| panic!("no kernel-delivered data; log:\n{}", lab.daemon_log()));
    let out = lab.lab_cmd(&["proc", "restart", "relay", "amt-relay"]);
    assert!(out.status.success(), "lab proc restart failed");
    let restarted = Instant::now();
    let before = packets(&lab);
    let resumed = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        (packets(&lab) > before + 50).then(|| restarted.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "kernel-delivered data did not resume within 30 s of the relay restart; log:\n{}",
            lab.daemon_log()
        )
    });
    let probes = tunnel(&lab)["stall_requests"].as_u64().unwrap_or(0);
    println!(
        "kernel data plane, relay restarted: data again after {:.1} s ({probes} stall probe(s))",
        resumed.as_secs_f64()
    );
    assert!(
        probes >= 1,
        "no stall probe: the kernel's counters did not reach the tunnel"
    );
    assert!(
        resumed < limit(Duration::from_secs(10)),
        "recovery took {resumed:?}"
    );
    drop(rx);
}

/// After `kill -9` the veth pair survives the daemon; the next start
/// removes it and works, and its clean stop leaves nothing.
#[test]
fn kernel_data_plane_after_kill_9() {
    let _g = serial();
    let mut lab = Lab::up("t9x");
    let config = static_config(&lab);
    let first = lab.start_daemon(&["--config", &config, "--dataplane", "kernel"]);
    lab.kill_daemon(first, libc::SIGKILL);
    let left = kernel_objects(&lab, "border");
    println!("after kill -9: {left:?}");
    std::fs::remove_file(lab.api_socket()).ok();
    let second = lab.start_daemon(&["--config", &config, "--dataplane", "kernel"]);
    let status = lab.ingestctl_json(&["show", "status", "--json"]);
    assert_eq!(
        status["dataplane"],
        "kernel",
        "{status}\n{}",
        lab.daemon_log()
    );
    let _sender = lab.mcsend(&[(S, G)], 200, &["--duration", "30"]);
    let summary = lab.mcrx(&[(S, G)], &["--duration", "6"]).wait();
    let got = summary["packets"].as_u64().unwrap_or(0);
    assert!(
        got >= 900,
        "after a kill -9 and restart: {got} packets; {summary}"
    );
    while_running_objects_then_none_after_stop(&mut lab, second);
}
