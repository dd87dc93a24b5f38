//! Prints data-path figures of the sans-IO tunnel (no I/O): the cost of
//! `Tunnel::handle_datagram` for accepted Multicast Data, for data of an
//! unsubscribed channel, and of the TTL rewrite. Run with
//! `cargo run --release -p amt-gateway --example datapath_bench`.

use ingest_types::SourceGroup;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use amt_gateway::wire::amt::{Message, ResponseMac};
use amt_gateway::wire::ipv4;
use amt_gateway::{Received, Tunnel, TunnelConfig};

#[path = "../tests/common/mod.rs"]
mod common;

/// Multicast Data of an IPv4 UDP packet with TTL 1.
fn data(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    common::multicast_data(src.into(), dst.into(), 1, payload)
}

fn main() {
    let relay: SocketAddr = "203.0.113.20:2268"
        .parse()
        .unwrap_or_else(|_| ([127, 0, 0, 1], 2268).into());
    let mut cfg = TunnelConfig::new(relay);
    cfg.skip_discovery = true;
    let now = Instant::now();
    let mut t = Tunnel::new(cfg, "198.51.100.2:4000".parse().unwrap_or(relay), now, 1);
    let channels = 100u32;
    for i in 0..channels {
        let g = Ipv4Addr::from(0xe801_0000 + i);
        let channel = SourceGroup {
            source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            group: IpAddr::V4(g),
        };
        let _ = t.subscribe(channel, now);
    }
    while let Some(tx) = t.poll_transmit() {
        if let Ok(Message::Request(r)) = Message::decode(&tx.payload) {
            let m = common::general_query_message(r.nonce, ResponseMac([1; 6]), None);
            t.handle_datagram(now, relay, &m);
        }
    }
    let hit = data(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::from(0xe801_0000 + 50),
        1316,
    );
    let miss = data(
        Ipv4Addr::new(192, 0, 2, 9),
        Ipv4Addr::from(0xe801_0000 + 50),
        1316,
    );
    let n = 5_000_000u32;
    for (name, pkt) in [
        ("accepted (100 channels subscribed)", &hit),
        ("dropped: not subscribed", &miss),
    ] {
        let start = Instant::now();
        let mut accepted = 0u64;
        for _ in 0..n {
            if let Received::Data { .. } = t.handle_datagram(now, relay, black_box(pkt)) {
                accepted += 1;
            }
        }
        report(name, start.elapsed(), n, accepted);
    }
    let mut inner = hit[2..].to_vec();
    let start = Instant::now();
    for i in 0..n {
        let _ = ipv4::set_ttl(black_box(&mut inner), (i & 1) as u8 + 1);
    }
    report(
        "TTL rewrite with checksum patch",
        start.elapsed(),
        n,
        u64::from(n),
    );
}

fn report(name: &str, elapsed: Duration, n: u32, ok: u64) {
    let ns = elapsed.as_nanos() as f64 / f64::from(n);
    println!(
        "{name:<40} {ns:>7.1} ns/packet  {:>6.2} Mpps  ({ok} of {n} accepted)",
        1e3 / ns
    );
}
