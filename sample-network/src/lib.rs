//! Lab tools shared by `mcrx` (receiver), `mcsend` (source) and `amt-relay`: the probe payload,
//! sequence and latency accounting, ranges of (S,G) channels, interface lookup,
//! source-specific joins, signal handling, the lab AMT relay ([`relay`]);
//! and the lab's topology (`topology`, read from `clab/frr-ingest.clab.yml`).

pub mod channel;
pub mod cli;
pub mod iface;
pub mod latency;
pub mod mcast;
pub mod payload;
pub mod relay;
pub mod sequence;
pub mod signal;
pub mod topology;

pub use channel::{GroupRangeError, consecutive_groups};
pub use latency::{LatencyHistogram, LatencySummary};
pub use payload::{PAYLOAD_HEADER_LEN, Probe, ProbeDecodeError};
pub use sequence::{SequenceSummary, SequenceTracker, SequenceVerdict};
