//! Property ("fuzz") tests of the parsers that read pimd's output and what
//! arrives on the TUN: whatever the bytes, they return a value or an error,
//! never panic; valid input cut at any point never yields joins that were
//! not in it.

use frr_bridge::frr::joins::parse_join_json;
use frr_bridge::frr::vty::{ReplyDecoder, VtyStatus};
use frr_bridge::southbound::pim::parse_tun_packet;
use proptest::prelude::*;

/// Captured from FRR 8.4.4: interface metadata mixed with group objects,
/// one joined (S,G) and one pruned.
const FRR84: &str = r#"{"ing-dn":{"name":"ing-dn","state":"up","address":"10.77.1.1","index":2,"flagMulticast":true,
  "flagBroadcast":true,"lanDelayEnabled":true,
  "232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","upTime":"00:00:01",
     "expire":"03:28","prune":"--:--","channelJoinName":"JOIN","protocolPim":1}},
  "232.1.1.2":{"198.51.100.5":{"source":"198.51.100.5","group":"232.1.1.2","upTime":"00:00:09",
     "expire":"--:--","prune":"00:02","channelJoinName":"PRUNE","protocolPim":1}}},
 "ing-dn2":{"name":"ing-dn2","state":"up","address":"10.77.1.5","index":3,
  "232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","upTime":"00:00:02",
     "expire":"03:27","prune":"--:--","channelJoinName":"JOIN","protocolPim":1}}}}"#;

/// Text made of JSON's punctuation, pimd's key names and addresses, so the
/// generator reaches the parser's deeper branches.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("\"channelJoinName\"".to_string()),
        Just("\"JOIN\"".to_string()),
        Just("\"source\"".to_string()),
        Just("\"group\"".to_string()),
        Just("\"232.1.1.1\"".to_string()),
        Just("\"198.51.100.4\"".to_string()),
        Just("\"ff3e::1\"".to_string()),
        Just("\"2001:db8::4\"".to_string()),
        Just("\"ing-dn\"".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("null".to_string()),
        Just("1".to_string()),
        "\\PC{0,6}".prop_map(|s| format!("\"{s}\"")),
    ];
    proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn join_parser_never_panics(text in jsonish(), raw in "\\PC{0,200}") {
        let _ = parse_join_json(&text);
        let _ = parse_join_json(&raw);
    }

    #[test]
    fn join_parser_on_cut_and_mutated_real_output(cut in 0..FRR84.len(), at in 0..FRR84.len(), byte in any::<u8>()) {
        // Cut anywhere: an error or a subset of the real joins.
        let cut_text = FRR84.get(..cut).unwrap_or("");
        if let Ok(p) = parse_join_json(cut_text) {
            prop_assert!(p.joins.len() <= 1);
        }
        // One byte replaced: never a panic, never a join that was not there
        // unless the byte changed an address into another valid one.
        let mut bytes = FRR84.as_bytes().to_vec();
        bytes[at] = byte;
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(p) = parse_join_json(text)
        {
            prop_assert!(p.joins.len() <= 2, "{:?}", p.joins);
            for (sg, ifaces) in &p.joins {
                prop_assert!(!ifaces.is_empty(), "{sg} with no interface");
            }
        }
    }

    #[test]
    fn vty_decoder_reassembles_any_split(
        replies in proptest::collection::vec(("[^\\x00]{0,300}", any::<u8>()), 1..5),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut wire = Vec::new();
        for (text, status) in &replies {
            wire.extend_from_slice(text.as_bytes());
            wire.extend_from_slice(&[0, 0, 0, *status]);
        }
        let mut decoder = ReplyDecoder::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            decoder.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            while let Some(reply) = decoder.next_reply() {
                got.push(reply);
            }
        }
        let want: Vec<(Vec<u8>, VtyStatus)> = replies
            .iter()
            .map(|(t, s)| (t.as_bytes().to_vec(), VtyStatus::from(*s)))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn vty_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20)) {
        let mut decoder = ReplyDecoder::new();
        for c in &chunks {
            decoder.push(c);
            while decoder.next_reply().is_some() {}
        }
    }

    #[test]
    fn tun_packet_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_tun_packet(&bytes);
    }
}
