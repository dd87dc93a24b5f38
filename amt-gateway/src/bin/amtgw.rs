//! `amtgw`: join one SSM channel through an AMT relay and report what
//! arrives, once per second.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::dataplane::{
    self, AttachPreference, DataPlaneKind, DataPlaneMode, DeliveryTarget,
};
use amt_gateway::wire::ipv4::{Ipv4Header, PROTO_UDP};
use amt_gateway::wire::ipv6::{Ipv6Header, NEXT_UDP};
use amt_gateway::{
    DriverConfig, PacketSink, TunDevice, TunWriter, TunnelConfig, TunnelEvent, TunnelSnapshot,
    TunnelState, spawn_tunnel,
};
use anyhow::Context;
use clap::Parser;
use ingest_types::{AMT_PORT, SourceGroup};
use serde::Serialize;
use tokio::sync::mpsc;

const ABOUT: &str =
    "Join an SSM channel (S,G) through an RFC 7450 AMT relay and report the received stream.";

const LONG_ABOUT: &str = "\
Join an SSM channel (S,G) through an RFC 7450 AMT relay and report the received stream.

amtgw opens one UDP socket towards the relay, performs the AMT handshake
(optional Relay Discovery, then Request -> Membership Query -> Membership Update
with an IGMPv3 or MLDv2 report for S,G), keeps it refreshed at the relay's
query interval, and decapsulates the Multicast Data it receives.

Every second it prints one line: packets and bytes in the last second, the
bit rate, and, when the UDP payload carries the lab probe header (8-byte
big-endian sequence number, then 8-byte big-endian send time in ns since the
Unix epoch), lost/late packets and one-way latency. On exit (Ctrl-C or
--duration) it leaves the channel (BLOCK report, then Teardown) and prints a
summary.

Data plane (--dataplane): with --tun, `kernel` decapsulates Multicast Data
in the kernel (a BPF program at TC ingress of the interface towards the relay
redirects it into the TUN's ingress; with --tun-netns through a veth pair
into that namespace); control messages and anything the program does not
recognise still reach amtgw's socket. `userspace` receives everything on the
socket and writes packets into the TUN. `auto` (default) uses the kernel when
it can and says why not otherwise (first output line, kind \"dataplane\").
In kernel mode the per-second packet and byte counts come from the kernel's
counters; sequence/latency analysis only sees packets that took the
userspace path.

How the kernel data plane hooks in (--dataplane-attach): `tcx` links (Linux
6.6 and later; they vanish with the process), `tc` legacy filters (a
direct-action bpf filter at priority 65280 on a clsact qdisc, added if the
interface has none; for older kernels such as Debian 12's 6.1), or `auto`
(default): TCX when the kernel has it, else tc. Legacy filters outlive the
process: amtgw removes them (and a clsact qdisc it added) when it exits, and
after a kill -9 the next start in the same namespace removes the stale ones
before attaching. The dataplane line says which mode runs and why.

Exit status: 0 on a normal run; 2 when the relay never completed the
handshake within --give-up seconds; 3 when the relay refused us (L flag);
1 on other errors.

Examples:
  amtgw --relay 10.0.0.1 --source 192.0.2.1 --group 232.1.1.1
  amtgw --relay [2001:db8::1]:2268 --source 2001:db8:5::1 --group ff3e::8000:1 --json
  amtgw --relay 10.0.0.1 --discovery --source 192.0.2.1 --group 232.1.1.1 --duration 30 --tun amt0
  amtgw --relay 10.0.0.1 --source 192.0.2.1 --group 232.1.1.1 --tun amt0 --tun-netns /run/netns/frr --dataplane kernel";

#[derive(Debug, Parser)]
#[command(name = "amtgw", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Relay address, ADDR or ADDR:PORT ([v6]:PORT); the port defaults to 2268.
    /// With --discovery this is the discovery address and the relay named in
    /// the Advertisement is used instead.
    #[arg(long, value_name = "ADDR")]
    relay: String,
    /// Source address S of the channel.
    #[arg(long, value_name = "S")]
    source: IpAddr,
    /// Group address G of the channel (IPv4 232/8 or IPv6 ff3x::/32 for SSM;
    /// any multicast address is accepted).
    #[arg(long, value_name = "G")]
    group: IpAddr,
    /// Only analyse UDP datagrams to this destination port (others are
    /// counted in the totals but not checked for sequence numbers).
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Send Relay Discovery first (otherwise go straight to the relay, as
    /// when a DRIAD record has its D bit set).
    #[arg(long)]
    discovery: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Give up (exit 2) if the handshake has not completed after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    give_up: u64,
    /// Also write every decapsulated packet into this TUN device (created
    /// if needed and set up; needs CAP_NET_ADMIN).
    #[arg(long, value_name = "NAME")]
    tun: Option<String>,
    /// Create the --tun device in this network namespace (e.g.
    /// /run/netns/frr) instead of amtgw's own, as frr-ingestd does for FRR;
    /// the kernel data plane then crosses over through a veth pair
    /// NAME-dp (here) / NAME-df (there). Needs CAP_SYS_ADMIN.
    #[arg(long, value_name = "PATH", requires = "tun")]
    tun_netns: Option<std::path::PathBuf>,
    /// Where Multicast Data is decapsulated: auto, kernel or userspace
    /// (see above). The kernel data plane needs --tun.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    dataplane: DataPlaneMode,
    /// How the kernel data plane attaches its programs: auto, tcx or tc
    /// (see above).
    #[arg(
        long,
        value_name = "MODE",
        default_value = "auto",
        env = "AMT_DATAPLANE_ATTACH"
    )]
    dataplane_attach: AttachPreference,
    /// Local address to bind the tunnel socket to (default: any, ephemeral port).
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Option<SocketAddr>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Log protocol events to stderr (RUST_LOG overrides the level).
    #[arg(short, long)]
    verbose: bool,
}

fn parse_relay(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let trimmed = text.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = trimmed
        .parse()
        .with_context(|| format!("--relay {text:?} is neither ADDR nor ADDR:PORT"))?;
    Ok(SocketAddr::new(ip, AMT_PORT))
}

/// Per-stream counters shared between the sink (tunnel task) and the printer.
#[derive(Debug, Default, Clone)]
struct StreamCounters {
    packets: u64,
    bytes: u64,
    probes: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
    latency_sum_ns: u128,
    latency_count: u64,
    latency_max_ns: u64,
    highest: Option<u64>,
}

impl StreamCounters {
    /// Loss is counted from forward jumps; a late packet (below the highest
    /// seen) fills one lost slot. Without a bitmap a repeat of an older
    /// number also counts as late: fine for a monitoring tool.
    fn observe(&mut self, seq: u64, sent_ns: u64, now_ns: u64) {
        self.probes += 1;
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) if seq > h => {
                self.lost += seq - h - 1;
                self.highest = Some(seq);
            }
            Some(h) if seq == h => self.duplicates += 1,
            Some(_) => {
                self.late += 1;
                self.lost = self.lost.saturating_sub(1);
            }
        }
        if sent_ns != 0 && now_ns > sent_ns && now_ns - sent_ns < 60_000_000_000 {
            let l = now_ns - sent_ns;
            self.latency_sum_ns += u128::from(l);
            self.latency_count += 1;
            self.latency_max_ns = self.latency_max_ns.max(l);
        }
    }
}

struct AnalyzingSink {
    port: Option<u16>,
    counters: Mutex<StreamCounters>,
    tun: Option<TunWriter>,
}

fn udp_payload(packet: &[u8]) -> Option<(u16, &[u8])> {
    let udp = match packet.first()? >> 4 {
        4 => {
            let h = Ipv4Header::parse(packet).ok()?;
            if h.protocol() != PROTO_UDP || h.is_fragment() {
                return None;
            }
            h.payload()
        }
        6 => {
            let h = Ipv6Header::parse(packet).ok()?;
            let upper = h.upper_layer().ok()?;
            if upper.protocol != NEXT_UDP {
                return None;
            }
            h.packet().get(upper.offset..)?
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    Some((port, udp.get(8..)?))
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl PacketSink for AnalyzingSink {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        let probe = udp_payload(packet).and_then(|(port, payload)| {
            if self.port.is_some_and(|p| p != port) {
                return None;
            }
            let seq = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
            let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
            Some((seq, sent))
        });
        if let Ok(mut c) = self.counters.lock() {
            c.packets += 1;
            c.bytes += packet.len() as u64;
            if let Some((seq, sent)) = probe {
                c.observe(seq, sent, unix_ns());
            }
        }
        match &self.tun {
            Some(tun) => tun.write_packet(packet),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    kind: &'a str,
    elapsed_s: f64,
    state: String,
    relay: Option<String>,
    packets: u64,
    bytes: u64,
    rate_bps: f64,
    lost: u64,
    late: u64,
    duplicates: u64,
    latency_avg_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    total_packets: u64,
    total_bytes: u64,
    total_lost: u64,
    dropped: u64,
    /// Packets the kernel data plane delivered (kernel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_packets: Option<u64>,
    /// Packets of this tunnel the kernel passed to the socket (kernel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_passed: Option<u64>,
    /// Inner packets whose TTL/hop limit the kernel raised (kernel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_ttl_raised: Option<u64>,
    /// Interface whose ingress hook handles the tunnel (kernel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_uplink: Option<String>,
    /// How the kernel data plane was attached in the end, `tcx` or `tc`
    /// (summary only, kernel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_attach: Option<&'static str>,
    /// Packets the tunnel dropped, by reason (summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_by_reason: Option<std::collections::BTreeMap<&'static str, u64>>,
}

fn line<'a>(
    kind: &'a str,
    elapsed: Duration,
    interval: Duration,
    now: &StreamCounters,
    before: &StreamCounters,
    snap: Option<&TunnelSnapshot>,
) -> Line<'a> {
    let packets = now.packets - before.packets;
    let bytes = now.bytes - before.bytes;
    let lat_n = now.latency_count - before.latency_count;
    let secs = interval.as_secs_f64().max(1e-9);
    Line {
        kind,
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        state: snap.map_or_else(|| "gone".to_string(), |s| format!("{:?}", s.state)),
        relay: snap.and_then(|s| s.relay).map(|r| r.to_string()),
        packets,
        bytes,
        rate_bps: (bytes as f64 * 8.0 / secs).round(),
        lost: now.lost.saturating_sub(before.lost),
        late: now.late - before.late,
        duplicates: now.duplicates - before.duplicates,
        latency_avg_ms: (lat_n > 0)
            .then(|| (now.latency_sum_ns - before.latency_sum_ns) as f64 / lat_n as f64 / 1e6),
        latency_max_ms: (now.latency_count > 0).then(|| now.latency_max_ns as f64 / 1e6),
        total_packets: now.packets,
        total_bytes: now.bytes,
        total_lost: now.lost,
        dropped: snap.map_or(0, |s| s.stats.dropped.total()),
        kernel_packets: snap
            .and_then(|s| s.driver.kernel.as_ref())
            .map(|k| k.counters.packets),
        kernel_passed: snap
            .and_then(|s| s.driver.kernel.as_ref())
            .map(|k| k.counters.passed_total()),
        kernel_ttl_raised: snap
            .and_then(|s| s.driver.kernel.as_ref())
            .map(|k| k.counters.ttl_raised),
        kernel_uplink: snap
            .and_then(|s| s.driver.kernel.as_ref())
            .and_then(|k| k.uplink.clone()),
        kernel_attach: None,
        dropped_by_reason: None,
    }
}

/// In kernel mode the sink sees only the packets of the userspace path:
/// the tunnel's own totals (fed from the kernel's counters) are the truth.
fn with_tunnel_totals(mut c: StreamCounters, snap: Option<&TunnelSnapshot>) -> StreamCounters {
    if let Some(s) = snap
        && s.driver.kernel.is_some()
    {
        c.packets = s.stats.data_packets;
        c.bytes = s.stats.data_bytes;
    }
    c
}

fn print_line(json: bool, l: &Line<'_>) {
    if json {
        if let Ok(text) = serde_json::to_string(l) {
            println!("{text}");
        }
        return;
    }
    let lat = match (l.latency_avg_ms, l.latency_max_ms) {
        (Some(a), Some(m)) => format!(" latency avg {a:.2} ms max {m:.2} ms"),
        _ => String::new(),
    };
    println!(
        "{:>8.1}s {:<10} {:>7} pkt {:>10} B {:>9.3} Mbit/s lost {} late {} dup {}{} | total {} pkt {} lost, {} dropped",
        l.elapsed_s,
        l.state,
        l.packets,
        l.bytes,
        l.rate_bps / 1e6,
        l.lost,
        l.late,
        l.duplicates,
        lat,
        l.total_packets,
        l.total_lost,
        l.dropped
    );
}

fn print_event(json: bool, elapsed: Duration, event: &TunnelEvent) {
    if json {
        let v = serde_json::json!({
            "kind": "event",
            "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "event": format!("{event:?}"),
        });
        println!("{v}");
    } else {
        println!("{:>8.1}s event: {event:?}", elapsed.as_secs_f64());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("amtgw: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.verbose {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("amt_gateway=debug"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let relay = parse_relay(&args.relay)?;
    let channel = SourceGroup::new(args.source, args.group)
        .with_context(|| format!("--source {} --group {}", args.source, args.group))?;
    let (tun, target) = match (&args.tun, &args.tun_netns) {
        (Some(name), None) => {
            let dev =
                TunDevice::create(name).with_context(|| format!("creating TUN device {name}"))?;
            dev.set_up().with_context(|| format!("setting {name} up"))?;
            let target = DeliveryTarget::SameNamespace {
                tun_ifindex: dev.ifindex(),
            };
            (Some(dev.into_writer()), Some(target))
        }
        (Some(name), Some(netns)) => {
            let dev = TunDevice::create_in_netns(name, netns)
                .with_context(|| format!("creating TUN device {name} in {}", netns.display()))?;
            let stem: String = name.chars().take(12).collect();
            let target = DeliveryTarget::OtherNamespace {
                netns: netns.clone(),
                tun_ifindex: dev.ifindex(),
                veth_local: format!("{stem}-dp"),
                veth_remote: format!("{stem}-df"),
            };
            (Some(dev.into_writer()), Some(target))
        }
        (None, _) => (None, None),
    };
    let min_inner_ttl = DriverConfig::new(TunnelConfig::new(relay)).min_inner_ttl;
    let selection =
        dataplane::select_with_attach(args.dataplane, target, min_inner_ttl, args.dataplane_attach)
            .context("--dataplane kernel")?;
    let interfaces: Vec<String> = selection
        .kernel
        .as_ref()
        .map(|k| {
            k.attached_interfaces()
                .iter()
                .map(|i| match i.attach {
                    Some(mode) => format!("{} ({:?}, {})", i.name, i.role, mode.as_str()),
                    None => format!("{} ({:?})", i.name, i.role),
                })
                .collect()
        })
        .unwrap_or_default();
    if args.json {
        let attach = selection.status.attach.as_ref();
        let v = serde_json::json!({
            "kind": "dataplane",
            "requested": selection.status.requested.as_str(),
            "running": selection.status.running.as_str(),
            "reason": selection.status.reason_text(),
            "attach": attach.map(|a| a.mode.as_str()),
            "attach_reason": attach.map(|a| a.reason.clone()),
            "kernel_release": attach.map(|a| a.kernel_release.clone()),
            "interfaces": interfaces,
        });
        println!("{v}");
    } else {
        println!("data plane: {}", selection.status);
    }
    if let (Some(attach), false) = (&selection.status.attach, args.json) {
        println!(
            "kernel data plane attach mode: {} ({})",
            attach.mode, attach.reason
        );
    }
    if selection.status.running == DataPlaneKind::Kernel && !args.json {
        println!("kernel data plane attached to: {}", interfaces.join(", "));
    }
    let sink = Arc::new(AnalyzingSink {
        port: args.port,
        counters: Mutex::new(StreamCounters::default()),
        tun,
    });
    let mut tc = TunnelConfig::new(relay);
    tc.skip_discovery = !args.discovery;
    let mut dc = DriverConfig::new(tc);
    dc.bind = args.bind;
    dc.kernel = selection.kernel.clone();
    dc.kernel_required = args.dataplane == DataPlaneMode::Kernel;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (handle, join) =
        spawn_tunnel(dc, sink.clone(), events_tx).context("opening the tunnel socket")?;
    handle.subscribe(channel).await.context("subscribing")?;

    let start = Instant::now();
    let give_up = start + Duration::from_secs(args.give_up);
    let stop_at = args.duration.map(|d| start + Duration::from_secs(d));
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    let mut previous = StreamCounters::default();
    let mut previous_at = start;
    let mut was_up = false;
    let mut exit = ExitCode::SUCCESS;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            Some(ev) = events.recv() => {
                print_event(args.json, start.elapsed(), &ev.event);
                match ev.event {
                    TunnelEvent::Up { .. } => was_up = true,
                    TunnelEvent::RelayRefused { relay } => {
                        eprintln!("amtgw: relay {relay} refused the tunnel (L flag: no capacity for new gateways)");
                        exit = ExitCode::from(3);
                        break;
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let snap = handle.snapshot().await.ok();
                let current = sink.counters.lock().map(|c| c.clone()).unwrap_or_default();
                let current = with_tunnel_totals(current, snap.as_ref());
                let l = line("interval", now - start, now - previous_at, &current, &previous, snap.as_ref());
                print_line(args.json, &l);
                previous = current;
                previous_at = now;
                if snap.as_ref().is_some_and(|s| s.state == TunnelState::Up) {
                    was_up = true;
                }
                if !was_up && now >= give_up {
                    let sent = snap.as_ref().map_or((0, 0), |s| (s.stats.discoveries_sent, s.stats.requests_sent));
                    eprintln!(
                        "amtgw: relay {relay} did not complete the AMT handshake within {} s ({} Relay Discovery and {} Request messages sent, no valid answer)",
                        args.give_up, sent.0, sent.1
                    );
                    exit = ExitCode::from(2);
                    break;
                }
                if stop_at.is_some_and(|t| now >= t) {
                    break;
                }
                if snap.is_none() {
                    eprintln!("amtgw: tunnel task ended unexpectedly");
                    exit = ExitCode::from(1);
                    break;
                }
            }
        }
    }

    let snap = handle.snapshot().await.ok();
    if snap.as_ref().is_some_and(|s| s.state == TunnelState::Up) {
        was_up = true;
    }
    if !was_up && exit == ExitCode::SUCCESS {
        eprintln!("amtgw: relay {relay} never completed the AMT handshake");
        exit = ExitCode::from(2);
    }
    let _ = tokio::time::timeout(Duration::from_secs(12), handle.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), join).await;
    let total = sink.counters.lock().map(|c| c.clone()).unwrap_or_default();
    let total = with_tunnel_totals(total, snap.as_ref());
    let elapsed = start.elapsed();
    let mut l = line(
        "summary",
        elapsed,
        elapsed,
        &total,
        &StreamCounters::default(),
        snap.as_ref(),
    );
    l.kernel_attach = selection
        .kernel
        .as_ref()
        .map(|k| k.attach_info().mode.as_str());
    l.dropped_by_reason = snap.as_ref().map(|s| {
        s.stats
            .dropped
            .iter()
            .map(|(reason, n)| (reason.as_str(), n))
            .collect()
    });
    if args.json {
        print_line(true, &l);
    } else {
        println!(
            "summary: {:.1} s, {} packets, {} bytes ({:.3} Mbit/s avg), {} lost, {} late, {} duplicate, {} probe packets, {} dropped by the gateway",
            elapsed.as_secs_f64(),
            total.packets,
            total.bytes,
            l.rate_bps / 1e6,
            total.lost,
            total.late,
            total.duplicates,
            total.probes,
            l.dropped
        );
        if let Some(s) = &snap {
            for (reason, n) in s.stats.dropped.iter().filter(|(_, n)| *n > 0) {
                println!("  dropped {}: {n}", reason.as_str());
            }
            if let Some(k) = &s.driver.kernel {
                println!(
                    "  kernel data plane: {} packets delivered, {} passed to the socket, uplink {} ({})",
                    k.counters.packets,
                    k.counters.passed_total(),
                    k.uplink.as_deref().unwrap_or("none"),
                    l.kernel_attach.unwrap_or("-")
                );
            }
        }
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_parsing() {
        assert_eq!(
            parse_relay("10.0.0.1").unwrap(),
            "10.0.0.1:2268".parse().unwrap()
        );
        assert_eq!(
            parse_relay("10.0.0.1:9000").unwrap(),
            "10.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_relay("2001:db8::1").unwrap(),
            "[2001:db8::1]:2268".parse().unwrap()
        );
        assert_eq!(
            parse_relay("[2001:db8::1]").unwrap(),
            "[2001:db8::1]:2268".parse().unwrap()
        );
        assert_eq!(
            parse_relay("[2001:db8::1]:7").unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        assert!(parse_relay("relay.example").is_err());
    }

    #[test]
    fn sequence_accounting() {
        let mut c = StreamCounters::default();
        for seq in [1u64, 2, 3, 6, 5, 7, 7] {
            c.observe(seq, 0, 0);
        }
        // 4 and 5 missing at 6; 5 arrives late; 7 repeated.
        assert_eq!((c.lost, c.late, c.duplicates, c.probes), (1, 1, 1, 7));
        c.observe(1, 100, 2_000_100);
        assert_eq!(c.latency_count, 1);
        assert_eq!(c.latency_max_ns, 2_000_000);
    }
}
