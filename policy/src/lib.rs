//! Policy layer of frr-ingest: joinfiles, DRIAD relay discovery (RFC 8777),
//! DORMS/CBACC flow metadata and bandwidth admission.
//!
//! Pure logic (parsers, codecs, ordering, hold-downs, admission) takes time as
//! an `Instant` argument and randomness as an injected `Rng`, so it is tested
//! without I/O. The I/O layers (`driad::DriadResolver`, `dorms::DormsClient`)
//! are thin async wrappers around hickory-resolver and reqwest.

pub mod admission;
pub mod cache;
pub mod dns;
pub mod dorms;
pub mod driad;
pub mod joinfile;

mod sg;

pub use sg::SourceGroup;
