//! The value types that every frr-ingest crate shares, kept in a crate of
//! their own so that the policy crate, the AMT gateway and the daemon can
//! all use them without depending on each other.
//!
//! * [`SourceGroup`]: a source-specific multicast channel (S,G).
//! * [`AMT_PORT`]: the UDP port of AMT (RFC 7450).
//! * [`LogBudget`]: how the cores keep per-flow log lines from flooding
//!   at scale (a pure counter; the cores log).
//! * [`shrink_when_sparse`]: per-flow maps give their table memory back
//!   when the flows go.

mod log_budget;
mod shrink;
mod source_group;

pub use log_budget::LogBudget;
pub use shrink::shrink_when_sparse;
pub use source_group::{SourceGroup, SourceGroupError};

/// The UDP port of AMT relays (RFC 7450 §7, IANA "amt"). DRIAD relays
/// (RFC 8777) are always reached on it.
pub const AMT_PORT: u16 = 2268;
