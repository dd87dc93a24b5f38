//! What the relay tells scripts: JSON event lines and the status object
//! (stdout and the `--status-file`). Field names are read by the lab tests
//! and `amt-gateway/benches/tun-bench.sh`: change them only together.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amt_gateway::relay::Relay;
use ingest_types::SourceGroup;
use serde_json::json;

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

/// The status object: per-gateway channels, native joins and counters.
pub fn status_object(
    relay: &Relay,
    joined: &BTreeSet<SourceGroup>,
    io_stats: &IoStats,
    started: Instant,
    now: Instant,
) -> serde_json::Value {
    let gateways: Vec<serde_json::Value> = relay
        .gateways()
        .into_iter()
        .map(|g| {
            let channels: Vec<serde_json::Value> = g
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
            json!({ "gateway": g.gateway.to_string(), "channels": channels })
        })
        .collect();
    let joined: Vec<serde_json::Value> = joined
        .iter()
        .map(|sg| json!({ "source": sg.source, "group": sg.group }))
        .collect();
    let s = relay.stats();
    json!({
        "kind": "status",
        "unix_ms": unix_ms(),
        "uptime_s": now.duration_since(started).as_secs_f64(),
        "refuse": relay.config().refuse,
        "gateways": gateways,
        "joined": joined,
        "stats": {
            "discoveries": s.discoveries,
            "requests": s.requests,
            "queries_sent": s.queries_sent,
            "updates_accepted": s.updates_accepted,
            "teardowns_accepted": s.teardowns_accepted,
            "malformed": s.malformed,
            "unexpected": s.unexpected,
            "unknown_nonce": s.unknown_nonce,
            "bad_mac": s.bad_mac,
            "refused": s.refused,
            "exclude_records": s.exclude_records,
            "expired": s.expired,
            "secret_rotations": s.secret_rotations,
            "native_packets": io_stats.native_packets,
            "native_unmatched": io_stats.native_unmatched,
            "forwarded": io_stats.forwarded,
            "send_errors": io_stats.send_errors,
            "join_errors": io_stats.join_errors,
        },
    })
}

/// Writes `value` as one line to `path` by atomic replace (a reader never
/// sees half a status).
pub fn write_status_file(path: &Path, value: &serde_json::Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n"))?;
    std::fs::rename(&tmp, path)
}
