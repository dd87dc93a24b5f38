//! The outcome of a DRIAD lookup (RFC 8777): what the AMTRELAY answer for a
//! source held, or why there was none. Plain values, shared by the resolver
//! (behind the `net` feature) and the policy engine.

use std::net::IpAddr;
use std::time::Duration;

use super::name::RelayName;
use super::rdata::{AmtRelayRecord, RdataError};
use super::select::RelayCandidate;
use crate::dns::DnsFailure;

/// A record whose RDATA did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub rdata: Vec<u8>,
    pub error: RdataError,
}

/// A type 3 name that did not resolve to any address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnresolvedName {
    pub name: RelayName,
    pub precedence: u8,
    /// Failure of the A query, then of the AAAA query.
    pub ipv4: DnsFailure,
    pub ipv6: DnsFailure,
}

/// A successful AMTRELAY answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriadAnswer {
    pub source: IpAddr,
    /// The queried reverse name.
    pub query_name: String,
    /// Records as published (decoded; unassigned types included).
    pub records: Vec<AmtRelayRecord>,
    /// Records whose RDATA was malformed.
    pub rejected: Vec<RejectedRecord>,
    /// Selection input: type 0, IP relays, and addresses of resolved names
    /// (`via_name` set). Unassigned types are dropped.
    pub candidates: Vec<RelayCandidate>,
    /// Type 3 names with no address.
    pub unresolved: Vec<UnresolvedName>,
    /// How long this answer is cached.
    pub ttl: Duration,
}

/// Result of a DRIAD lookup for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriadOutcome {
    Answer(DriadAnswer),
    /// No AMTRELAY answer. `retry_after` is how long it is cached.
    Failed {
        source: IpAddr,
        query_name: String,
        failure: DnsFailure,
        retry_after: Duration,
    },
}

impl DriadOutcome {
    pub fn source(&self) -> IpAddr {
        match self {
            DriadOutcome::Answer(a) => a.source,
            DriadOutcome::Failed { source, .. } => *source,
        }
    }
}
