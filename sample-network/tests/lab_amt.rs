//! Lab tests of the AMT path (issue 3): a sender on the relays' LAN, the lab
//! relays, the daemon's gateway in `border`, FRR routing amt0 to `rcv`.
//! Relays come from the static map here (DRIAD is switched off), so these
//! tests show the fallback operators keep. Run as root; they fail (never
//! skip) when the lab cannot be built.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const S: &str = "198.51.100.4";
const G: &str = "232.1.1.1";

/// The daemon config for these tests: static relays only, a short linger.
fn static_config(lab: &Lab, linger_s: u64) -> String {
    let toml = static_relays_config(
        Some(linger_s),
        &[
            ("198.51.100.0/24", "192.0.2.10"),
            ("203.0.113.0/24", "192.0.2.11"),
        ],
    );
    lab.write_config("amt-test.toml", &toml)
}

/// The tunnel to `relay` (e.g. "192.0.2.10:2268") from `show tunnels`.
fn tunnel(lab: &Lab, relay: &str) -> Option<Value> {
    lab.tunnels()
        .as_array()
        .and_then(|a| a.iter().find(|t| t["relay"] == relay).cloned())
}

/// tcpdump on a node's interface, writing `file`; stopped on drop.
struct Capture {
    child: Option<Child>,
}

impl Capture {
    fn start(lab: &Lab, node: &str, iface: &str, filter: &str, file: &Path) -> Capture {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(node)])
            .args(["tcpdump", "-i", iface, "-U", "-n", "-s", "256", "-w"])
            .arg(file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // tcpdump needs a moment before it captures.
        std::thread::sleep(Duration::from_millis(800));
        Capture { child: Some(child) }
    }

    fn stop(mut self) {
        if let Some(child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let out = child.wait_with_output().expect("tcpdump");
            eprintln!("tcpdump: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .output()
        .expect("run tshark (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "tshark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 3 must-shows 1, 2 and 5 on one tunnel's whole life: join, 30 s at
/// 1000 pkt/s (natively) end to end, leave, linger, Teardown; tshark decodes it all.
#[test]
fn amt_end_to_end_leave_and_tshark() {
    let _g = serial();
    let mut lab = Lab::up("t3a");
    let pcap = lab.node_dir("border").join("amt.pcap");
    let capture = Capture::start(&lab, "border", "bdr0", "udp port 2268", &pcap);
    let config = static_config(&lab, 3);
    lab.start_daemon(&["--config", &config]);

    // The sender runs first: the receiver's join is what starts the tunnel.
    let sender = lab.mcsend(&[(S, G)], end_to_end_rate(), &["--duration", "45"]);
    std::thread::sleep(Duration::from_secs(1));
    let rx = lab.mcrx(&[(S, G)], &["--duration", "31"]);
    let summary = rx.wait();
    let d = Delivery::of(&summary, S, G);
    let seq = &channel_summary(&summary, S, G)["sequence"];
    println!(
        "end to end through relay 192.0.2.10 at {} pkt/s: first packet {:.0} ms after the join; \
         {} of {} packets in the received range delivered ({:.3} %), missing {}, duplicates {}",
        end_to_end_rate(),
        d.first_ms,
        d.unique,
        d.span,
        d.ratio * 100.0,
        seq["missing"],
        seq["duplicates"]
    );
    d.assert_end_to_end("relay 192.0.2.10", &summary, &lab);

    // 2. The receiver left (mcrx leaves on exit): the relay drops our
    // subscription within 5 s.
    let left = Instant::now();
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        lab.relay_channels("relay")
            .is_empty()
            .then(|| left.elapsed())
    });
    let channels = lab.relay_channels("relay");
    let gone = gone.unwrap_or_else(|| {
        panic!(
            "relay still holds {channels:?} for us 5 s after the leave; daemon log:\n{}",
            lab.daemon_log()
        )
    });
    println!(
        "after the leave the relay holds no channel for the gateway within {:.2} s",
        gone.as_secs_f64()
    );

    // Linger (3 s) then Teardown closes the tunnel.
    let closed = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        tunnel(&lab, "192.0.2.10:2268").is_none().then_some(())
    });
    assert!(closed.is_some(), "tunnel not closed after its linger");
    std::thread::sleep(Duration::from_secs(1));
    drop(sender);
    capture.stop();

    // 5. An independent decoder over the whole life of the tunnel.
    let file = pcap.display().to_string();
    let bad = tshark(&[
        "-r",
        &file,
        "-d",
        "udp.port==2268,amt",
        "-Y",
        "_ws.malformed || _ws.expert.severity >= 0x400000",
    ]);
    assert!(
        bad.trim().is_empty(),
        "tshark finds malformed or warning-level frames:\n{bad}"
    );
    let fields = tshark(&[
        "-r",
        &file,
        "-d",
        "udp.port==2268,amt",
        "-Y",
        "amt && amt.type != 6",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "ip.src",
        "-e",
        "amt.type",
        "-e",
        "amt.discovery_nonce",
        "-e",
        "amt.request_nonce",
        "-e",
        "amt.request.p",
        "-e",
        "amt.response_mac",
    ]);
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    let mut discovery_nonces = Vec::new();
    let mut advertised_nonces = Vec::new();
    let mut request_nonces = Vec::new();
    let mut query_nonces = Vec::new();
    let mut query_macs = Vec::new();
    let mut update_macs = Vec::new();
    let mut p_flags = Vec::new();
    for line in fields.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() < 6 {
            continue;
        }
        let Ok(kind) = f[1].parse::<u32>() else {
            continue;
        };
        *count.entry(kind).or_default() += 1;
        match kind {
            1 => discovery_nonces.push(f[2].to_string()),
            2 => advertised_nonces.push(f[2].to_string()),
            3 => {
                request_nonces.push(f[3].to_string());
                p_flags.push(f[4].to_string());
            }
            4 => {
                query_nonces.push(f[3].to_string());
                query_macs.push(f[5].to_string());
            }
            5 => update_macs.push(f[5].to_string()),
            _ => {}
        }
    }
    let data = tshark(&[
        "-r",
        &file,
        "-d",
        "udp.port==2268,amt",
        "-Y",
        "amt.type == 6",
        "-T",
        "fields",
        "-e",
        "amt.type",
    ])
    .lines()
    .count();
    println!("tshark: AMT messages by type (non-data) {count:?}; {data} Multicast Data frames");
    for kind in 1..=5 {
        assert!(
            count.get(&kind).copied().unwrap_or(0) > 0,
            "no AMT type {kind} in the capture: {count:?}"
        );
    }
    assert!(
        count.get(&7).copied().unwrap_or(0) > 0,
        "no Teardown (type 7) in the capture: {count:?}"
    );
    let wanted = 29 * end_to_end_rate() as usize;
    assert!(
        data >= wanted,
        "only {data} Multicast Data frames captured (want {wanted}: 29 s at {} pkt/s)",
        end_to_end_rate()
    );
    // Every advertisement answers a discovery nonce we sent; every query
    // answers a request nonce; updates carry a MAC a query gave.
    for n in &advertised_nonces {
        assert!(
            discovery_nonces.contains(n),
            "advertisement nonce {n} never sent in a discovery {discovery_nonces:?}"
        );
    }
    for n in &query_nonces {
        assert!(
            request_nonces.contains(n),
            "query nonce {n} never sent in a request {request_nonces:?}"
        );
    }
    for mac in &update_macs {
        assert!(
            query_macs.contains(mac),
            "update MAC {mac} never given by a query {query_macs:?}"
        );
    }
    // IPv4 data only: the P flag is 0 in every request.
    assert!(
        p_flags.iter().all(|p| p == "0" || p == "False"),
        "P flags {p_flags:?}"
    );
    println!(
        "tshark: {} discoveries, {} requests (P=0), {} queries, {} updates, nonces and MACs consistent",
        discovery_nonces.len(),
        request_nonces.len(),
        query_nonces.len(),
        update_macs.len()
    );
}

/// Issue 3 must-show 3: a relay restart is survived without touching the
/// sidecar; a relay gone for good is reported and retried with backoff.
#[test]
fn relay_restart_and_relay_gone() {
    let _g = serial();
    let mut lab = Lab::up("t3b");
    let config = static_config(&lab, 60);
    lab.start_daemon(&["--config", &config]);
    let _sender = lab.mcsend(&[(S, G)], 200, &["--duration", "150"]);
    let rx = lab.mcrx(&[(S, G)], &["--duration", "150"]);
    let packets = |lab: &Lab| {
        tunnel(lab, "192.0.2.10:2268")
            .and_then(|t| t["packets"].as_u64())
            .unwrap_or(0)
    };
    let flowing = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (packets(&lab) > 100).then_some(())
    });
    assert!(
        flowing.is_some(),
        "no traffic before the restart; log:\n{}",
        lab.daemon_log()
    );

    let out = lab.lab_cmd(&["proc", "restart", "relay", "amt-relay"]);
    assert!(
        out.status.success(),
        "lab proc restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = Instant::now();
    let before = packets(&lab);
    // The new relay process knows nothing of us: 3 s after data stopped the
    // gateway sends an early Request (stall probe); the new relay's Query
    // makes it send its full state again, which re-subscribes.
    let resumed = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let ch = lab.relay_channels("relay");
        (packets(&lab) > before + 50 && ch.iter().any(|c| c.2 > 0)).then(|| restarted.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "traffic did not resume within 60 s of the relay restart; log:\n{}",
            lab.daemon_log()
        )
    });
    let probes = tunnel(&lab, "192.0.2.10:2268")
        .and_then(|t| t["stall_requests"].as_u64())
        .unwrap_or(0);
    println!(
        "relay restarted: traffic resumed after {:.1} s with no action on the sidecar \
         ({probes} stall probe(s): an early Request 3 s after data stopped)",
        resumed.as_secs_f64()
    );
    assert!(probes >= 1, "no stall probe was sent");
    assert!(
        resumed < limit(Duration::from_secs(10)),
        "recovery took {resumed:?}: the stall probe should beat the 10 s query interval"
    );

    // Gone for good (the receiver stays joined): the tunnel reports the loss and backs off.
    let out = lab.lab_cmd(&["proc", "stop", "relay", "amt-relay"]);
    assert!(out.status.success());
    let stopped = Instant::now();
    let lost = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let t = tunnel(&lab, "192.0.2.10:2268")?;
        (t["relay_losses"].as_u64().unwrap_or(0) > 0).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "relay loss not reported within 60 s; log:\n{}",
            lab.daemon_log()
        )
    });
    println!(
        "relay gone: loss reported after {:.1} s, tunnel state {:?}",
        stopped.elapsed().as_secs_f64(),
        lost["state"]
    );
    assert!(
        lost["state"].as_str().unwrap_or("").contains("lost"),
        "tunnel state does not say the relay is lost: {lost}"
    );
    let sent = |t: &Value| {
        t["discoveries_sent"].as_u64().unwrap_or(0) + t["requests_sent"].as_u64().unwrap_or(0)
    };
    let a = sent(&lost);
    std::thread::sleep(Duration::from_secs(30));
    let later = tunnel(&lab, "192.0.2.10:2268").expect("tunnel still there");
    let b = sent(&later);
    println!(
        "relay gone: {} discoveries+requests in 30 s while retrying (backoff, no busy loop)",
        b - a
    );
    assert!(b > a, "the tunnel stopped retrying: {later}");
    assert!(
        b - a <= 12,
        "{} handshake messages in 30 s: not backing off",
        b - a
    );
    let flows = lab.flows();
    let flow = &flows[&format!("{S},{G}")];
    assert_ne!(flow["state"], "forwarding", "{flow}");
    println!("flow while the relay is gone: {}", flow["admission_reason"]);
    drop(rx);
}

/// Issue 3 must-show 4: two relays, three sources, six (S,G)s: one tunnel
/// per relay, everything flowing.
#[test]
fn two_relays_three_sources_six_channels() {
    let _g = serial();
    let mut lab = Lab::up("t3c");
    let config = static_config(&lab, 60);
    lab.start_daemon(&["--config", &config]);
    let sources = ["198.51.100.4", "198.51.100.5", "203.0.113.4"];
    let groups = ["232.1.1.1", "232.1.1.2"];
    let channels: Vec<(&str, &str)> = sources
        .iter()
        .flat_map(|s| groups.iter().map(move |g| (*s, *g)))
        .collect();
    let _sender = lab.mcsend(&channels, 200, &["--duration", "20"]);
    let rx = lab.mcrx(&channels, &["--duration", "10"]);
    // The tunnels while the receiver is still there (after it leaves, its
    // channels go: reading them after rx.wait() raced the leave).
    let want = vec![
        ("192.0.2.10:2268".to_string(), 4),
        ("192.0.2.11:2268".to_string(), 2),
    ];
    let mut last = Value::Null;
    let relays = wait_until(Duration::from_secs(8), Duration::from_millis(200), || {
        last = lab.tunnels();
        let relays: Vec<(String, usize)> = last
            .as_array()?
            .iter()
            .map(|t| {
                (
                    t["relay"].as_str().unwrap_or("").to_string(),
                    t["channels"].as_array().map(Vec::len).unwrap_or(0),
                )
            })
            .collect();
        (relays == want).then_some(relays)
    });
    println!("tunnels: {relays:?}");
    assert!(
        relays.is_some(),
        "want one tunnel per relay, {want:?}: {last}"
    );
    let summary = rx.wait();
    // 2000 sent in the receiver's 10 s, less the join's first seconds; an
    // emulated host (LAB_TIME_SCALE) gets its joins through that much slower.
    let wanted = (1600.0 / time_scale()) as u64;
    for (s, g) in &channels {
        assert_received(
            &lab,
            &format!("({s},{g}) in 10 s at 200 pkt/s"),
            channel_summary(&summary, s, g),
            wanted,
        );
    }
}

/// A namespace joined to `ingest` by a veth, removed on drop (before the
/// lab goes down: declare it after the `Lab`).
struct LocalLan {
    ns: String,
}

impl Drop for LocalLan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A receiver on a LAN of the ingest router itself (IGMPv3, no downstream
/// PIM router): pimd lists it as local membership, not as a PIM join, and
/// the sidecar must still ingest the channel for it.
#[test]
fn receiver_on_the_ingest_router_itself() {
    let _g = serial();
    let mut lab = Lab::up("t3d");
    let lan = LocalLan { ns: lab.ns("lrcv") };
    let ingest = lab.ns("ingest");
    let sh = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&["netns", "add", &lan.ns]);
    sh(&[
        "link", "add", "ing-lan", "netns", &ingest, "type", "veth", "peer", "name", "lrcv0",
        "netns", &lan.ns,
    ]);
    sh(&[
        "-n",
        &ingest,
        "addr",
        "add",
        "10.77.9.1/24",
        "dev",
        "ing-lan",
    ]);
    sh(&["-n", &ingest, "link", "set", "ing-lan", "up"]);
    sh(&["-n", &lan.ns, "addr", "add", "10.77.9.2/24", "dev", "lrcv0"]);
    sh(&["-n", &lan.ns, "link", "set", "lrcv0", "up"]);
    sh(&["-n", &lan.ns, "link", "set", "lo", "up"]);
    sh(&["-n", &lan.ns, "route", "add", "default", "via", "10.77.9.1"]);
    let out = lab
        .vtysh_command()
        .arg("--vty_socket")
        .arg(lab.node_dir("ingest"))
        .args(["-c", "configure terminal", "-c", "interface ing-lan"])
        .args(["-c", "ip pim", "-c", "ip igmp", "-c", "ip igmp version 3"])
        .output()
        .expect("vtysh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains('%'),
        "configuring ing-lan failed: {text}"
    );

    let config = static_config(&lab, 60);
    lab.start_daemon(&["--config", &config, "--metrics", "127.0.0.1:9477"]);
    let _sender = lab.mcsend(&[(S, G)], 200, &["--duration", "20"]);
    let rx = lab.mcrx_on("lrcv", "lrcv0", &[(S, G)], &["--duration", "6"]);
    let seen = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        let joins = lab.ingestctl_json(&["show", "joins", "--json"]);
        joins.to_string().contains("ing-lan").then_some(joins)
    });
    let joins = seen.unwrap_or_else(|| {
        panic!(
            "the local receiver's membership never reached the sidecar: {}",
            lab.vtysh("ingest", "show ip pim join json")
        )
    });
    println!("local IGMPv3 receiver seen by the sidecar: {joins}");
    let summary = rx.wait();
    let packets = assert_received(
        &lab,
        "local receiver on ing-lan in 6 s at 200 pkt/s",
        channel_summary(&summary, S, G),
        900,
    );

    // The same figures for Prometheus, read with curl (the daemon runs in
    // `border`); the tunnel lingers, so its counters are still there.
    let metrics = |path: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("border"), "curl", "-sS", "-i"])
            .arg(format!("http://127.0.0.1:9477{path}"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {path}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = metrics("/metrics");
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let written = value("frr_ingest_tunnel_packets_total{relay=\"192.0.2.10:2268\"}");
    println!(
        "metrics: {written} packets written for relay 192.0.2.10, joins {}, tunnels {}",
        value("frr_ingest_joins"),
        value("frr_ingest_tunnels")
    );
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(written >= packets, "{written} written < {packets} received");
    assert_eq!(value("frr_ingest_tunnel_up{relay=\"192.0.2.10:2268\"}"), 1);
    assert!(metrics("/other").starts_with("HTTP/1.1 404"));
    let health = metrics("/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("join source: connected"),
        "{health}"
    );
    // mcrx left: the membership and the sidecar's join go.
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        lab.joins().is_empty().then_some(())
    });
    assert!(gone.is_some(), "join still listed: {:?}", lab.joins());
}
