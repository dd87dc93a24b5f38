//! Policy layer of frr-ingest: joinfiles, DRIAD relay discovery (RFC 8777),
//! DORMS/CBACC flow metadata and bandwidth admission.
//!
//! Pure logic (parsers, codecs, ordering, hold-downs, admission, and the
//! sans-IO policy [`engine`] that combines them) takes time as an `Instant`
//! argument and randomness as an injected `Rng` or seed, so it is tested
//! without I/O. The I/O layers (`driad::DriadResolver`,
//! `dorms::DormsClient`, `engine::NetLookups`) are thin async wrappers
//! around hickory-resolver and reqwest, behind the default feature `net`:
//! without it the crate pulls in no tokio, hickory or reqwest.
//! [`text`] holds the words people read (rates, reasons, times).

pub mod admission;
pub mod cache;
pub mod dns;
pub mod dorms;
pub mod driad;
pub mod engine;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod joinfile;
pub mod text;

#[cfg(all(test, feature = "net"))]
mod send_sync {
    use crate::dorms::DormsClient;
    use crate::driad::DriadResolver;
    use ingest_types::SourceGroup;

    fn is_send_sync<T: Send + Sync>() {}
    fn is_send<T: Send>(_: &T) {}

    /// The daemon shares the clients across tasks and spawns their futures.
    #[test]
    fn clients_and_futures_are_send() {
        is_send_sync::<DriadResolver>();
        is_send_sync::<DormsClient>();
        #[allow(dead_code)]
        fn futures(driad: &DriadResolver, dorms: &DormsClient, sg: SourceGroup) {
            is_send(&driad.lookup_relays(sg.source));
            is_send(&dorms.flow_bitrate(sg));
            is_send(&dorms.flow_metadata(sg));
        }
    }
}
