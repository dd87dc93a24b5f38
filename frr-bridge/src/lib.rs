//! frr-ingestd: turns an FRRouting router into a multicast ingest point.
//!
//! Layout (holo-style separation):
//! - [`frr`]: southbound to FRR: the vty socket client and pimd JSON parsers.
//! - [`southbound`]: the kernel side: the ingest TUN, routes, PIM on the TUN.
//! - [`watcher`] (pimd/pim6d) and [`joinsource`] (a joinfile): the I/O
//!   tasks that produce the wanted set; [`wanted`] is the pure core that
//!   merges the families and holds joins through a daemon restart.
//! - [`orchestrator`]: the pure core that turns the policy engine's
//!   decisions (`ingest_policy::engine`) into tunnels, subscriptions and
//!   routes, as actions.
//! - [`pipeline`]: the async shell that runs the policy engine and the
//!   orchestrator and carries out their actions.
//! - [`api`] and [`metrics`]: northbound: the gRPC management service and
//!   Prometheus metrics.
//! - [`policy_cli`]: the `ingestctl driad` / `ingestctl dorms` reports.
//! - [`config`]: the TOML configuration and its validation.

pub mod api;
pub mod client;
pub mod config;
pub mod frr;
pub mod inject;
pub mod joinsource;
pub mod memory;
pub mod metrics;
pub mod orchestrator;
pub mod pipeline;
pub mod policy_cli;
pub mod southbound;
pub mod tasks;
#[cfg(test)]
mod test_support;
pub mod wanted;
pub mod watcher;

/// Milliseconds since the Unix epoch, for API timestamps.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
