//! frr-ingestd: turns an FRRouting router into a multicast ingest point.
//!
//! Layout (holo-style separation):
//! - [`frr`]: southbound to FRR: the vty socket client and pimd JSON parsers.
//! - [`southbound`]: the kernel side: the ingest TUN, routes, PIM on the TUN.
//! - [`watcher`]: turns pimd's join state into a stream of desired sets.
//! - [`joinsource`]: joinfile mode: a joinfile instead of pimd as the desired
//!   set; the admitted set written back as a joinfile.
//! - [`policy_engine`]: per flow, the relays (static map, DRIAD) and the
//!   admission under the bandwidth limit (CBACC/DORMS).
//! - [`policy_cli`]: the `ingestctl driad` / `ingestctl dorms` reports.
//! - [`daemon`]: orchestration: desired set → flows → routes (and tunnels).
//! - [`api`]: northbound: the gRPC management service.
//! - [`config`]: the TOML configuration and its validation.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod frr;
pub mod inject;
pub mod joinsource;
pub mod metrics;
pub mod policy_cli;
pub mod policy_engine;
pub mod southbound;
pub mod tasks;
pub mod watcher;

/// Milliseconds since the Unix epoch, for API timestamps.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
