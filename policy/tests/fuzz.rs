//! Property tests: parsers fed random input never panic, and what decodes
//! round-trips.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ingest_policy::admission::{
    AdmissionDecision, AdmissionState, BitrateOrigin, DEFAULT_SENDER_PRIORITY, DecisionReason,
    FlowDemand, admit, format_bandwidth, parse_bandwidth,
};
use ingest_policy::dorms::{parse_host_meta_json, parse_host_meta_xml, parse_metadata};
use ingest_policy::driad::{AmtRelayRecord, RelayName};
use ingest_policy::joinfile::Joinfile;
use ingest_types::SourceGroup;
use proptest::prelude::*;

fn any_sg() -> impl Strategy<Value = SourceGroup> {
    (any::<[u8; 4]>(), any::<u8>()).prop_map(|(s, g)| SourceGroup {
        source: IpAddr::from(s),
        group: IpAddr::from([232, 1, 1, g]),
    })
}

/// Text biased toward the syntax each parser cares about.
fn xmlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("/>".to_owned()),
            Just("<!--".to_owned()),
            Just("-->".to_owned()),
            Just("<?".to_owned()),
            Just("<![CDATA[".to_owned()),
            Just("Link".to_owned()),
            Just(" rel='restconf'".to_owned()),
            Just(" href=\"/r&amp;\"".to_owned()),
            Just("=".to_owned()),
            Just("'".to_owned()),
            Just("&#x".to_owned()),
            "[ -~]{0,8}",
            "\\PC{0,4}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn jsonish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("\"ietf-cbacc:cbacc\"".to_owned()),
            Just("\"ietf-dorms:metadata\"".to_owned()),
            Just("\"ietf-dorms:dorms\"".to_owned()),
            Just("\"metadata\"".to_owned()),
            Just("\"sender\"".to_owned()),
            Just("\"group\"".to_owned()),
            Just("\"source-address\"".to_owned()),
            Just("\"group-address\"".to_owned()),
            Just("\"10.0.0.1\"".to_owned()),
            Just("\"232.1.1.1\"".to_owned()),
            Just("\"max-bits-per-second\"".to_owned()),
            Just("\"max-speed\"".to_owned()),
            Just("\"priority\"".to_owned()),
            Just("\"links\"".to_owned()),
            Just("\"rel\"".to_owned()),
            Just("\"restconf\"".to_owned()),
            Just("\"href\"".to_owned()),
            "-?[0-9]{1,22}",
            "\"[0-9a-z.]{0,6}\"",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn joinfile_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("10.0.0.1".to_owned()),
            Just("232.1.1.1".to_owned()),
            Just("2001:db8::1".to_owned()),
            Just("ff3e::1".to_owned()),
            Just(",".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("#".to_owned()),
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            "[0-9]{1,4}",
            "[ -~]{0,6}",
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn amtrelay_decode_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(record) = AmtRelayRecord::decode(&bytes) {
            let wire = record.encode();
            prop_assert_eq!(AmtRelayRecord::decode(&wire), Ok(record.clone()));
            let text = record.to_string();
            prop_assert_eq!(text.parse::<AmtRelayRecord>(), Ok(record));
        }
    }

    #[test]
    fn amtrelay_type3_names_decode_safely(
        flags in any::<u8>(),
        labels in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut bytes = vec![1, (flags & 0x80) | 3];
        bytes.extend(labels);
        let _ = AmtRelayRecord::decode(&bytes);
    }

    #[test]
    fn amtrelay_presentation_never_panics(text in "\\PC{0,60}") {
        if let Ok(record) = text.parse::<AmtRelayRecord>() {
            prop_assert_eq!(record.to_string().parse::<AmtRelayRecord>(), Ok(record));
        }
    }

    #[test]
    fn relay_name_text_never_panics(text in "[a-z0-9.\\\\]{0,70}") {
        if let Ok(name) = text.parse::<RelayName>() {
            prop_assert_eq!(RelayName::from_wire(&name.to_wire()), Ok(name.clone()));
            prop_assert_eq!(name.to_string().parse::<RelayName>(), Ok(name));
        }
    }

    #[test]
    fn host_meta_parsers_never_panic(text in xmlish(), raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_host_meta_xml(&text);
        let _ = parse_host_meta_json(&text);
        let lossy = String::from_utf8_lossy(&raw);
        let _ = parse_host_meta_xml(&lossy);
        let _ = parse_host_meta_json(&lossy);
    }

    #[test]
    fn metadata_parser_never_panics(text in jsonish(), sg in any_sg(), raw in "\\PC{0,100}") {
        let _ = parse_metadata(&text, sg);
        let _ = parse_metadata(&raw, sg);
        let _ = parse_host_meta_json(&text);
    }

    #[test]
    fn joinfile_never_panics_and_render_round_trips(text in joinfile_text(), raw in "\\PC{0,200}") {
        let _ = Joinfile::parse(&raw);
        let parsed = Joinfile::parse(&text);
        let again = Joinfile::parse(&parsed.joinfile.render());
        prop_assert!(again.errors.is_empty());
        prop_assert_eq!(again.joinfile, parsed.joinfile);
    }

    #[test]
    fn bandwidth_parse_never_panics(text in "[0-9.kKMGTm ]{0,24}") {
        if let Ok(bits) = parse_bandwidth(&text) {
            prop_assert_eq!(parse_bandwidth(&format_bandwidth(bits)), Ok(bits));
        }
    }

    #[test]
    fn admission_never_exceeds_limit(
        flows in proptest::collection::vec(
            (any_sg(), 0u32..20, proptest::option::of(0u64..20_000_000), any::<bool>()),
            0..60,
        ),
        limit in 0u64..100_000_000,
        seed in any::<u64>(),
        steps in 1usize..4,
    ) {
        let demand: Vec<FlowDemand> = flows
            .into_iter()
            .map(|(sg, population, bitrate, admitted_now)| FlowDemand {
                sg,
                population,
                bitrate,
                bitrate_origin: BitrateOrigin::Configured,
                admitted_now,
                priority: DEFAULT_SENDER_PRIORITY,
            })
            .collect();
        evaluate_steps(demand, limit, seed, steps, |_, _| Ok(()))?;
    }

    /// Few sources, few priority levels: the sender-priority rule holds
    /// after every evaluation, the limit is kept, and set-aside flows name a
    /// blocked higher-priority flow of their own source.
    #[test]
    fn admission_keeps_sender_priority(
        flows in proptest::collection::vec(
            (0u8..4, any::<u8>(), 1u32..5, proptest::option::of(1u64..10_000_000), any::<bool>(), 0u16..4),
            0..60,
        ),
        limit in 0u64..40_000_000,
        seed in any::<u64>(),
        steps in 1usize..4,
    ) {
        let demand: Vec<FlowDemand> = flows
            .into_iter()
            .map(|(s, g, population, bitrate, admitted_now, priority)| FlowDemand {
                sg: SourceGroup {
                    source: IpAddr::from([10, 0, 0, s]),
                    group: IpAddr::from([232, 1, 1, g]),
                },
                population,
                bitrate,
                bitrate_origin: BitrateOrigin::Configured,
                admitted_now,
                priority: priority * 100,
            })
            .collect();
        evaluate_steps(demand, limit, seed, steps, |demand, decisions| {
            let priority = |sg: SourceGroup| demand.iter().find(|f| f.sg == sg).map(|f| f.priority);
            for d in decisions {
                if let DecisionReason::SenderPriority { blocked, blocked_priority, priority: own } = &d.reason {
                    prop_assert_eq!(blocked.source, d.sg.source);
                    prop_assert!(blocked_priority > own);
                    let b = decisions.iter().find(|x| x.sg == *blocked);
                    prop_assert!(b.is_some_and(|b| b.reason.is_blocked_for_room()), "{:?}", d);
                    prop_assert_eq!(priority(*blocked), Some(*blocked_priority));
                }
                if !d.admitted {
                    continue;
                }
                let own = priority(d.sg);
                for other in decisions {
                    if other.sg.source == d.sg.source && other.reason.is_blocked_for_room() {
                        prop_assert!(priority(other.sg) <= own, "{:?} admitted while {:?} blocked", d, other);
                    }
                }
            }
            Ok(())
        })?;
    }
}

/// Admission over `steps` evaluations a minute apart, decisions fed back as
/// the daemon does: each keeps one decision per flow and the limit, and
/// passes `check(demand, decisions)`.
fn evaluate_steps(
    mut demand: Vec<FlowDemand>,
    limit: u64,
    seed: u64,
    steps: usize,
    check: impl Fn(&[FlowDemand], &[AdmissionDecision]) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    demand.sort_by_key(|f| f.sg);
    demand.dedup_by_key(|f| f.sg);
    let mut state = AdmissionState::new(seed);
    let t0 = Instant::now();
    for step in 0..steps {
        let now = t0 + Duration::from_secs(step as u64 * 60);
        let decisions = admit(&demand, limit, now, &mut state);
        prop_assert_eq!(decisions.len(), demand.len());
        let used: u64 = decisions
            .iter()
            .filter(|d| d.admitted)
            .filter_map(|d| d.bitrate)
            .sum();
        prop_assert!(used <= limit);
        check(&demand, &decisions)?;
        for f in demand.iter_mut() {
            f.admitted_now = decisions.iter().any(|d| d.sg == f.sg && d.admitted);
        }
    }
    Ok(())
}
