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
pub mod scale;
pub mod sequence;
pub mod signal;
pub mod topology;

pub use channel::{GroupRangeError, consecutive_groups};
pub use latency::{LatencyHistogram, LatencySummary};
pub use payload::{PAYLOAD_HEADER_LEN, Probe, ProbeDecodeError};
pub use sequence::{SequenceSummary, SequenceTracker, SequenceVerdict};

/// Raises the open-file limit to its hard limit, for tools that hold a
/// socket per channel or per address (thousands in a scale lab). Best
/// effort: opening a socket beyond the limit still fails with its own error.
pub fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a valid, zero-initialised rlimit.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
