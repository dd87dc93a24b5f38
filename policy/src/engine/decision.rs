//! The values the engine takes and gives: the wanted set in, a decision
//! per flow out, relay failures back in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ingest_types::SourceGroup;

/// One wanted (S,G), as the join source (pimd, pim6d or a joinfile) sees
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedFlow {
    /// Downstream interfaces with the join; the population is their count.
    pub interfaces: Vec<String>,
    /// Kept only because the join source restarted recently: its joins are
    /// not back yet, and tearing the flow down would interrupt receivers.
    pub held: bool,
}

/// Every wanted (S,G).
pub type WantedSet = BTreeMap<SourceGroup, WantedFlow>;

/// Where a relay came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelaySource {
    /// `amt.static_relays` of the config.
    StaticMap,
    /// An AMTRELAY record (RFC 8777).
    Driad,
}

impl fmt::Display for RelaySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelaySource::StaticMap => "static map",
            RelaySource::Driad => "DRIAD",
        })
    }
}

/// A relay a flow may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayChoice {
    /// Relay address and port (2268 for DRIAD relays).
    pub relay: SocketAddr,
    /// Send the Request without Relay Discovery first (the record's D bit;
    /// for the static map, `discovery = false`).
    pub skip_discovery: bool,
    /// The record's precedence (0 for the static map).
    pub precedence: u8,
    pub origin: RelaySource,
}

/// One DRIAD candidate as shown to people, in the order tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateView {
    /// Address, with the record's name when it came from a type 3 record,
    /// e.g. "192.0.2.7 (relay.example.)"; "none (type 0)".
    pub relay: String,
    pub precedence: u8,
    /// The D bit.
    pub discovery_optional: bool,
    /// "chosen", "next", "held down until 12:00:00 UTC (no traffic)",
    /// "no relay (type 0)", "unresolved name (A: NXDOMAIN, AAAA: NODATA)", ...
    pub outcome: String,
}

/// Which relays a flow may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// The DRIAD lookup for the source has not answered yet.
    Pending,
    /// Usable relays, best first: use the first now, the others in order
    /// when it fails.
    Relays(Vec<RelayChoice>),
    /// No relay can be used; the reason is for people.
    NoRelay(String),
}

impl RelayVerdict {
    /// The relay to use now.
    pub fn first(&self) -> Option<&RelayChoice> {
        match self {
            RelayVerdict::Relays(relays) => relays.first(),
            _ => None,
        }
    }
}

impl fmt::Display for RelayVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayVerdict::Pending => f.write_str("pending (DRIAD lookup in progress)"),
            RelayVerdict::Relays(relays) => {
                let Some(first) = relays.first() else {
                    return f.write_str("no relay");
                };
                write!(f, "relay {} ({}", first.relay, first.origin)?;
                if first.origin == RelaySource::Driad {
                    write!(f, ", precedence {}", first.precedence)?;
                }
                if first.skip_discovery {
                    f.write_str(", no discovery")?;
                }
                f.write_str(")")?;
                match relays.len() {
                    1 => Ok(()),
                    2 => f.write_str(", 1 fallback"),
                    n => write!(f, ", {} fallbacks", n - 1),
                }
            }
            RelayVerdict::NoRelay(reason) => write!(f, "no relay: {reason}"),
        }
    }
}

/// The policy decision for one wanted (S,G): everything the orchestrator
/// needs to serve it (or to say why it does not), so the wanted set is
/// merged into decisions once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPolicy {
    pub sg: SourceGroup,
    /// Downstream interfaces with the join (from the wanted set).
    pub interfaces: Vec<String>,
    /// Kept only because the join source restarted recently (grace).
    pub held: bool,
    /// Downstream interfaces joined (at least 1).
    pub population: u32,
    /// Bits per second used for admission.
    pub bitrate: Option<u64>,
    /// `dorms:<url>`, `default (no DORMS metadata: ...)`, `unknown: <error>`,
    /// `pending (DORMS lookup in progress)`, `not looked up`.
    pub bitrate_origin: String,
    /// Serve it (the bandwidth limit allows it).
    pub admitted: bool,
    pub admission_reason: String,
    pub relays: RelayVerdict,
    /// DRIAD candidates in the order tried, with why each is (not) used.
    pub candidates: Vec<CandidateView>,
}

impl FlowPolicy {
    /// Admitted and a relay is known: the orchestrator should ingest it
    /// through `relays.first()`.
    pub fn serve(&self) -> Option<&RelayChoice> {
        if self.admitted {
            self.relays.first()
        } else {
            None
        }
    }
}

/// The decisions for every wanted (S,G). Each decision is shared: the
/// engine keeps the last set to see what changed, the orchestrator keeps
/// each flow's, and an unchanged decision is the same allocation in both.
pub type PolicySet = BTreeMap<SourceGroup, Arc<FlowPolicy>>;

/// Reported by the orchestrator when a relay fails for a flow or tunnel (no
/// advertisement, no query, L flag, no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFailure {
    pub relay: SocketAddr,
    pub sg: Option<SourceGroup>,
    pub reason: String,
    /// Hold the relay down so flows move to their next candidate. False
    /// when no flow on it has another relay left: the tunnel keeps
    /// retrying it, and the engine only asks DNS again (the source's owner
    /// may have moved it to another relay).
    pub hold_down: bool,
}

/// The static relay map: source → (relay, send Discovery first).
pub type StaticRelayMap = Box<dyn Fn(IpAddr) -> Option<(SocketAddr, bool)> + Send + Sync>;
