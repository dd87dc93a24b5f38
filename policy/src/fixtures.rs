//! Values for tests of the policy engine and of what drives it (the
//! daemon's orchestrator and pipeline): addresses from text, wanted sets,
//! DRIAD answers, DORMS bitrates and the daemon's engine settings.
//!
//! Built only for this crate's tests and with the feature `test-fixtures`
//! (a dev-dependency feature of `frr-bridge`); never in production code.
//! The helpers panic on bad text: their input is the test's own.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ingest_types::{AMT_PORT, SourceGroup};

use crate::admission::BitrateOrigin;
use crate::dorms::{DormsError, FlowBitrate};
use crate::driad::{
    AmtRelayRecord, DriadAnswer, DriadOutcome, candidates_from_records, reverse_name,
};
use crate::engine::{EngineConfig, PolicySet, RelayVerdict, StaticRelayMap, WantedFlow, WantedSet};

/// Bits per second in a Mbit/s.
pub const M: u64 = 1_000_000;
/// Where [`dorms_ok`] says its bitrate came from.
pub const DORMS_URL: &str = "https://dorms.lab.test/restconf/data/x";

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A valid channel (SSM group, unicast source of the same family).
pub fn sg(source: &str, group: &str) -> SourceGroup {
    SourceGroup::new(ip(source), ip(group)).unwrap()
}

/// A relay address on the AMT port.
pub fn relay(text: &str) -> SocketAddr {
    SocketAddr::new(ip(text), AMT_PORT)
}

/// A wanted set: each (S,G) with `n` downstream interfaces.
pub fn desired(flows: &[(SourceGroup, usize)]) -> Arc<WantedSet> {
    Arc::new(
        flows
            .iter()
            .map(|(sg, n)| {
                (
                    *sg,
                    WantedFlow {
                        interfaces: (1..=*n).map(|i| format!("eth{i}")).collect(),
                        held: false,
                    },
                )
            })
            .collect(),
    )
}

/// DRIAD's answer for `source`: these AMTRELAY records (presentation
/// form), cached for five minutes.
pub fn answer(source: &str, records: &[&str]) -> DriadOutcome {
    answer_with_ttl(source, records, Duration::from_secs(300))
}

/// [`answer`] with its cache lifetime.
pub fn answer_with_ttl(source: &str, records: &[&str], ttl: Duration) -> DriadOutcome {
    let records: Vec<AmtRelayRecord> = records.iter().map(|r| r.parse().unwrap()).collect();
    DriadOutcome::Answer(DriadAnswer {
        source: ip(source),
        query_name: reverse_name(ip(source)),
        candidates: candidates_from_records(&records),
        records,
        rejected: Vec::new(),
        unresolved: Vec::new(),
        ttl,
    })
}

/// A bitrate DORMS declared (at [`DORMS_URL`]).
pub fn dorms_ok(bits: u64) -> FlowBitrate {
    FlowBitrate {
        bitrate: Some(bits),
        origin: BitrateOrigin::Dorms,
        metadata: None,
        url: Some(DORMS_URL.into()),
        error: None,
    }
}

/// No bitrate: the DORMS server timed out.
pub fn dorms_down() -> FlowBitrate {
    FlowBitrate {
        bitrate: None,
        origin: BitrateOrigin::Unknown,
        metadata: None,
        url: None,
        error: Some(DormsError::Timeout {
            url: "https://dorms.lab.test/.well-known/host-meta".into(),
        }),
    }
}

/// A static relay map with no entries.
pub fn no_static() -> StaticRelayMap {
    Box::new(|_| None)
}

/// The daemon's defaults with `limit` in bit/s (DORMS on when there is a
/// limit) and a fixed seed.
pub fn engine_config(limit: Option<u64>) -> EngineConfig {
    EngineConfig {
        limit,
        default_bitrate: None,
        dorms: limit.is_some(),
        driad: true,
        holddown_min: Duration::from_secs(180),
        holddown_max: Duration::from_secs(600),
        recheck: Duration::from_secs(5),
        seed: 7,
    }
}

/// The relays of `flow`'s verdict, best first; panics on any other verdict.
pub fn relays_of(set: &PolicySet, flow: SourceGroup) -> Vec<SocketAddr> {
    match &set[&flow].relays {
        RelayVerdict::Relays(r) => r.iter().map(|c| c.relay).collect(),
        other => panic!("{flow}: expected relays, got {other:?}"),
    }
}
