//! Load harness for the lab relay (issue 10): many AMT gateways in one
//! process, one tunnel (and UDP socket) per relay address, subscribing many
//! (S,G) channels spread round-robin over the addresses. It reports how
//! long the relay took to bring every tunnel up and to deliver data on
//! every channel, what arrived, and the harness's own receive drops.
//!
//! Run it next to an `amt-relay --listen-range ...` and a sender of the
//! channels (e.g. `mcsend -c S,G --groups N`), in network namespaces:
//!
//!   relay_load --relays 10.250.1.0-10.250.1.99 --source 10.251.0.2 \
//!       --first-group 232.10.0.0 --channels 1000 --hold 10
//!
//! Prints one JSON line (`"kind":"relay_load"`); exits 1 when some tunnel
//! never came up or some channel never delivered data.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use amt_gateway::{Received, Tunnel, TunnelConfig, TunnelState};
use anyhow::{Context, bail};
use clap::Parser;
use ingest_types::{AMT_PORT, SourceGroup};
use sample_network::consecutive_groups;
use sample_network::relay::parse_address_range;
use sample_network::relay::udp::receive_drops;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "relay_load", about = "Many AMT gateways against the lab relay")]
struct Args {
    /// Relay addresses FIRST-LAST (one tunnel each, port 2268).
    #[arg(long, value_name = "FIRST-LAST")]
    relays: String,
    /// Source of every channel.
    #[arg(long, value_name = "S")]
    source: IpAddr,
    /// First group; channels use consecutive groups from it.
    #[arg(long, value_name = "G")]
    first_group: IpAddr,
    /// Channels in all, spread round-robin over the relays.
    #[arg(long, value_name = "N")]
    channels: u32,
    /// Local address of the tunnels' sockets.
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Seconds to stay subscribed after every channel delivered data (or
    /// after --give-up passed).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    hold: f64,
    /// Seconds to wait for all tunnels up and all channels delivering.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    give_up: f64,
}

struct Gateway {
    socket: UdpSocket,
    tunnel: Tunnel,
    up_at: Option<Instant>,
}

/// First and count of data packets per channel.
#[derive(Default, Clone, Copy)]
struct Delivery {
    first: Option<Instant>,
    packets: u64,
}

fn main() {
    sample_network::cli::run_tool("relay_load", run);
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let relays = parse_address_range(&args.relays)?;
    let first = SourceGroup::new(args.source, args.first_group).context("--first-group")?;
    let channels = consecutive_groups(first, args.channels)?;
    if relays.is_empty() || channels.is_empty() {
        bail!("nothing to do");
    }
    let started = Instant::now();
    let mut gateways = Vec::with_capacity(relays.len());
    for (i, relay) in relays.iter().enumerate() {
        let socket = UdpSocket::bind(SocketAddr::new(args.bind, 0)).context("binding")?;
        socket.set_nonblocking(true)?;
        let mut config = TunnelConfig::new(SocketAddr::new(*relay, AMT_PORT));
        config.skip_discovery = true;
        let local = socket.local_addr()?;
        let mut tunnel = Tunnel::new(config, local, started, i as u64 + 1);
        for channel in channels.iter().skip(i).step_by(relays.len()) {
            tunnel.subscribe(*channel, started)?;
        }
        gateways.push(Gateway {
            socket,
            tunnel,
            up_at: None,
        });
    }
    let mut deliveries: HashMap<SourceGroup, Delivery> =
        channels.iter().map(|c| (*c, Delivery::default())).collect();
    let give_up = started + Duration::from_secs_f64(args.give_up);
    let mut hold_until: Option<Instant> = None;
    let mut buf = vec![0u8; 65_536];
    let mut send_errors = 0u64;
    loop {
        let now = Instant::now();
        let mut idle = true;
        for gw in &mut gateways {
            idle &= !pump(gw, now, &mut buf, &mut deliveries, &mut send_errors)?;
        }
        let all_up = gateways.iter().all(|g| g.up_at.is_some());
        let all_data = deliveries.values().all(|d| d.first.is_some());
        if hold_until.is_none() && ((all_up && all_data) || now >= give_up) {
            hold_until = Some(now + Duration::from_secs_f64(args.hold));
        }
        if hold_until.is_some_and(|t| now >= t) {
            break;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let summary = summary(&gateways, &deliveries, started, send_errors);
    println!("{summary}");
    close_all(&mut gateways, &mut buf);
    if summary["tunnels_up"] != summary["tunnels"]
        || summary["channels_with_data"] != summary["channels"]
    {
        std::process::exit(1);
    }
    Ok(())
}

/// Receives, handles timers and sends for one gateway; true when it did
/// anything.
fn pump(
    gw: &mut Gateway,
    now: Instant,
    buf: &mut [u8],
    deliveries: &mut HashMap<SourceGroup, Delivery>,
    send_errors: &mut u64,
) -> io::Result<bool> {
    let mut busy = false;
    loop {
        let (n, from) = match gw.socket.recv_from(buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        busy = true;
        if let Received::Data { sg, .. } = gw.tunnel.handle_datagram(now, from, &buf[..n])
            && let Some(d) = deliveries.get_mut(&sg)
        {
            d.first.get_or_insert(now);
            d.packets += 1;
        }
    }
    if gw.tunnel.poll_timeout().is_some_and(|t| t <= now) {
        gw.tunnel.handle_timeout(now);
    }
    while let Some(tx) = gw.tunnel.poll_transmit() {
        busy = true;
        if gw.socket.send_to(&tx.payload, tx.destination).is_err() {
            *send_errors += 1;
        }
    }
    if gw.up_at.is_none() && gw.tunnel.state() == TunnelState::Up {
        gw.up_at = Some(now);
    }
    Ok(busy)
}

fn summary(
    gateways: &[Gateway],
    deliveries: &HashMap<SourceGroup, Delivery>,
    started: Instant,
    send_errors: u64,
) -> serde_json::Value {
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    let up: Vec<f64> = gateways.iter().filter_map(|g| g.up_at.map(since)).collect();
    let first_data: Vec<f64> = deliveries
        .values()
        .filter_map(|d| d.first.map(since))
        .collect();
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let drops: u64 = gateways
        .iter()
        .filter_map(|g| receive_drops(&g.socket))
        .sum();
    json!({
        "kind": "relay_load",
        "tunnels": gateways.len(),
        "tunnels_up": up.len(),
        "all_up_s": max(&up),
        "channels": deliveries.len(),
        "channels_with_data": first_data.len(),
        "all_data_s": max(&first_data),
        "packets": deliveries.values().map(|d| d.packets).sum::<u64>(),
        "tunnel_drops": gateways.iter().map(|g| g.tunnel.stats().dropped.total()).sum::<u64>(),
        "socket_rx_drops": drops,
        "send_errors": send_errors,
    })
}

/// Leaves every channel and tears every tunnel down (bounded wait).
fn close_all(gateways: &mut [Gateway], buf: &mut [u8]) {
    let now = Instant::now();
    for gw in gateways.iter_mut() {
        gw.tunnel.close(now);
    }
    let deadline = now + Duration::from_secs(5);
    let mut ignored = HashMap::new();
    let mut errors = 0;
    while Instant::now() < deadline
        && gateways
            .iter()
            .any(|g| g.tunnel.state() != TunnelState::Closed)
    {
        let now = Instant::now();
        for gw in gateways.iter_mut() {
            let _ = pump(gw, now, buf, &mut ignored, &mut errors);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
