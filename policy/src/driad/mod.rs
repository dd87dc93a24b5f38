//! DRIAD: DNS Reverse IP AMT Discovery (RFC 8777).
//!
//! Pure parts: [`reverse_name`], the AMTRELAY RDATA codec ([`AmtRelayRecord`]),
//! candidate ordering, hold-downs, [`select_relays`] and the lookup outcome
//! ([`DriadOutcome`]). I/O part (feature `net`): `DriadResolver`
//! (hickory-resolver).

mod answer;
mod name;
mod rdata;
mod reverse;
mod select;

pub use answer::{DriadAnswer, DriadOutcome, RejectedRecord, UnresolvedName};
pub use name::{NameTextError, NameWireError, RelayName};
pub use rdata::{AMTRELAY_RR_TYPE, AmtRelayRecord, PresentationError, RdataError, Relay};
pub use reverse::{dorms_srv_name, reverse_name};
pub use select::{
    HOLD_DOWN_MAX, HOLD_DOWN_MIN, HoldDown, HoldDownReason, HoldDownTracker, RelayAddress,
    RelayCandidate, RelaySelection, SelectionEntry, SelectionOutcome, SkipReason,
    candidates_from_records, order_candidates, select_relays,
};

#[cfg(feature = "net")]
mod resolver;
#[cfg(feature = "net")]
pub use resolver::{DriadConfig, DriadResolver};
