//! What the relay tells scripts: JSON event lines and the status object
//! (stdout and the `--status-file`). Field names are read by the lab tests
//! and `amt-gateway/benches/tun-bench.sh`: change them only together.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::relay::{GatewayStatus, RelayStats};
use serde_json::json;

use super::listener::Listener;
use super::native::Native;

/// Counters of the relay's I/O (the core counts the protocol).
#[derive(Debug, Default, Clone)]
pub struct IoStats {
    pub native_packets: u64,
    pub native_unmatched: u64,
    pub forwarded: u64,
    pub send_errors: u64,
    pub join_errors: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Prints one JSON line and flushes (scripts wait for these lines).
pub fn print_line(value: &serde_json::Value) {
    println!("{value}");
    let _ = io::stdout().flush();
}

/// Prints an event line: `{"kind": KIND, "unix_ms": ..., FIELDS...}`.
pub fn event(kind: &str, fields: serde_json::Value) {
    let mut v = json!({ "kind": kind, "unix_ms": unix_ms() });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    print_line(&v);
}

/// The status object: per-gateway channels, native joins, counters (the
/// cores' summed over listeners) and per-socket receive drops.
///
/// Receive drops are the kernel's count of datagrams it dropped for a
/// socket (full receive buffer above all; SO_MEMINFO, the `drops` column
/// of /proc/net/udp and /proc/net/raw): `stats.listen_rx_drops` sums the
/// AMT sockets (a benchmark asserts 0 there: no lost control or gateway
/// traffic), `stats.native_rx_drops` the native raw sockets; `listen[]`
/// and `native_sockets[]` give them per socket (null where unreadable).
pub fn status_object(
    listeners: &[Listener],
    native: &Native,
    io_stats: &IoStats,
    started: Instant,
    now: Instant,
) -> serde_json::Value {
    let mut gateways = Vec::new();
    let mut listen = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let status = listener.relay.gateways();
        listen.push(json!({
            "address": listener.address.to_string(),
            "gateways": status.len(),
            "subscriptions": listener.relay.subscription_count(),
            "rx_drops": listener.drops(),
        }));
        gateways.extend(
            status
                .into_iter()
                .map(|g| gateway_object(listener, &g, now)),
        );
    }
    let native_sockets: Vec<serde_json::Value> = native
        .sockets()
        .iter()
        .map(|s| {
            json!({
                "family": s.family().number(),
                "groups": s.group_count(),
                "channels": s.channel_count(),
                "rx_drops": s.drops(),
            })
        })
        .collect();
    let joined: Vec<serde_json::Value> = native
        .joined()
        .map(|sg| json!({ "source": sg.source, "group": sg.group }))
        .collect();
    let sum = |counter: fn(&RelayStats) -> u64| -> u64 {
        listeners.iter().map(|l| counter(l.relay.stats())).sum()
    };
    let listen_rx_drops: u64 = listeners.iter().filter_map(Listener::drops).sum();
    let native_rx_drops: u64 = native.sockets().iter().filter_map(|s| s.drops()).sum();
    json!({
        "kind": "status",
        "unix_ms": unix_ms(),
        "uptime_s": now.duration_since(started).as_secs_f64(),
        "refuse": listeners.first().is_some_and(|l| l.relay.config().refuse),
        "gateways": gateways,
        "joined": joined,
        "listen": listen,
        "native_sockets": native_sockets,
        "stats": {
            "discoveries": sum(|s| s.discoveries),
            "requests": sum(|s| s.requests),
            "queries_sent": sum(|s| s.queries_sent),
            "updates_accepted": sum(|s| s.updates_accepted),
            "teardowns_accepted": sum(|s| s.teardowns_accepted),
            "malformed": sum(|s| s.malformed),
            "unexpected": sum(|s| s.unexpected),
            "unknown_nonce": sum(|s| s.unknown_nonce),
            "bad_mac": sum(|s| s.bad_mac),
            "refused": sum(|s| s.refused),
            "exclude_records": sum(|s| s.exclude_records),
            "expired": sum(|s| s.expired),
            "secret_rotations": sum(|s| s.secret_rotations),
            "native_packets": io_stats.native_packets,
            "native_unmatched": io_stats.native_unmatched,
            "forwarded": io_stats.forwarded,
            "send_errors": io_stats.send_errors,
            "join_errors": io_stats.join_errors,
            "listen_rx_drops": listen_rx_drops,
            "native_rx_drops": native_rx_drops,
        },
    })
}

/// One gateway of a listener: its channels with expiry and counts.
fn gateway_object(listener: &Listener, gateway: &GatewayStatus, now: Instant) -> serde_json::Value {
    let channels: Vec<serde_json::Value> = gateway
        .channels
        .iter()
        .map(|(sg, c)| {
            json!({
                "source": sg.source,
                "group": sg.group,
                "expires_in_s": c.expires.saturating_duration_since(now).as_secs_f64(),
                "packets": c.packets,
                "bytes": c.bytes,
            })
        })
        .collect();
    json!({
        "gateway": gateway.gateway.to_string(),
        "relay": listener.address.to_string(),
        "channels": channels,
    })
}

/// Writes `value` as one line to `path` by atomic replace (a reader never
/// sees half a status).
pub fn write_status_file(path: &Path, value: &serde_json::Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n"))?;
    std::fs::rename(&tmp, path)
}
