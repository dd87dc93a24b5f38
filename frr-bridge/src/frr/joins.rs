//! Parser for pimd's `show ip pim join json` / `show ipv6 pim join json`.
//!
//! The shape (FRR 8.4 through 10.x) is interface → group → source, with the
//! interface's own scalars (`name`, `state`, `address`, `flag*`, ...) mixed
//! in beside the group objects:
//! `{"ing-dn":{"name":"ing-dn",...,"232.1.1.1":{"198.51.100.4":{...,
//! "channelJoinName":"JOIN"}}}}`. Newer versions add keys such as
//! `"S,S,Grpt"` for (S,G,rpt) state, and `vrf all` wraps everything in a VRF
//! object. Rather than trusting one layout, the parser walks the tree and
//! takes every object found under a multicast-group key whose key (or
//! `source` field) is a unicast address and whose `channelJoinName` is
//! `JOIN`, or that carries `"protocolIgmp":1` (a receiver joined by IGMPv3
//! or MLDv2 on the router's own interface); the interface is the nearest
//! enclosing key that is not an address. Anything it cannot read is skipped
//! and reported, never fatal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use thiserror::Error;

use ingest_types::SourceGroup;

/// How deep the walk goes: real output nests 3 levels (4 with VRFs).
const MAX_DEPTH: usize = 6;

#[derive(Debug, Error, PartialEq)]
pub enum JoinParseError {
    #[error("pimd returned an empty reply")]
    Empty,
    #[error("pimd's reply is not JSON ({0}); first bytes: {1:?}")]
    NotJson(String, String),
    #[error("pimd's reply is JSON but not an object (starts with {0:?})")]
    NotObject(String),
}

/// The downstream interfaces on which one (S,G) is joined.
pub type JoinedInterfaces = Vec<String>;

/// Result of one parse: the join set plus what was skipped and why.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedJoins {
    pub joins: BTreeMap<SourceGroup, JoinedInterfaces>,
    /// Entries ignored because something in them did not parse.
    pub skipped: Vec<String>,
    /// Entries present but not joined (NOINFO after a prune, PRUNE, ...).
    pub not_joined: usize,
}

pub fn parse_join_json(text: &str) -> Result<ParsedJoins, JoinParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(JoinParseError::Empty);
    }
    let value: Value = serde_json::from_str(trimmed).map_err(|e| {
        let head: String = trimmed.chars().take(60).collect();
        JoinParseError::NotJson(e.to_string(), head)
    })?;
    let Value::Object(top) = &value else {
        let head: String = trimmed.chars().take(20).collect();
        return Err(JoinParseError::NotObject(head));
    };
    let mut out = ParsedJoins::default();
    for (key, v) in top {
        walk(key, v, None, 1, &mut out);
    }
    for ifaces in out.joins.values_mut() {
        ifaces.sort();
        ifaces.dedup();
    }
    Ok(out)
}

/// `iface`: the nearest non-address key above `value`.
fn walk(key: &str, value: &Value, iface: Option<&str>, depth: usize, out: &mut ParsedJoins) {
    let Value::Object(map) = value else { return };
    if depth > MAX_DEPTH {
        return;
    }
    match key.parse::<IpAddr>() {
        Ok(group) if group.is_multicast() => {
            for (src_key, entry) in map {
                if entry.is_object() {
                    take_entry(group, src_key, entry, iface, out);
                }
            }
        }
        Ok(_) => {
            // A unicast address as key outside a group: not a layout we know.
            out.skipped
                .push(format!("unexpected address key {key:?} outside a group"));
        }
        Err(_) => {
            for (k, v) in map {
                walk(k, v, Some(key), depth + 1, out);
            }
        }
    }
}

fn take_entry(
    group: IpAddr,
    src_key: &str,
    entry: &Value,
    iface: Option<&str>,
    out: &mut ParsedJoins,
) {
    // (S,G,rpt) and (*,G) keys: "1.2.3.4,S,Grpt", "*" — not SSM channels.
    if src_key.contains(',') || src_key == "*" {
        return;
    }
    let source_text = entry
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or(src_key);
    let Ok(source) = source_text.parse::<IpAddr>() else {
        out.skipped.push(format!(
            "source {source_text:?} in group {group} is not an address"
        ));
        return;
    };
    if let Some(g) = entry.get("group").and_then(Value::as_str)
        && g.parse::<IpAddr>().ok() != Some(group)
    {
        out.skipped.push(format!(
            "entry {source}: group field {g:?} disagrees with key {group}"
        ));
        return;
    }
    let Ok(sg) = SourceGroup::new(source, group) else {
        out.skipped.push(format!(
            "({source},{group}) is not a valid source-specific channel"
        ));
        return;
    };
    let state = entry.get("channelJoinName").and_then(Value::as_str);
    let pim_join = matches!(state, Some(s) if s.eq_ignore_ascii_case("JOIN"));
    // A receiver on one of the router's own interfaces (IGMPv3/MLDv2
    // source-specific membership) is listed with state NOINFO and
    // `"protocolIgmp":1` (FRR 8.4 and 10.x, pimd and pim6d alike); it wants
    // the channel on that interface just as a downstream PIM join does.
    let local_member = match entry.get("protocolIgmp") {
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    if !pim_join && !local_member {
        out.not_joined += 1;
        return;
    }
    let iface = iface
        .map(str::to_string)
        .or_else(|| {
            entry
                .get("interface")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".to_string());
    out.joins.entry(sg).or_default().push(iface);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingest_policy::fixtures::sg;

    /// Captured from FRR 8.4.4 (research frr-feasibility §6), one join.
    const FRR84_ONE: &str = r#"{"ing-dn":{"name":"ing-dn","state":"up","address":"10.77.1.1","index":2,"flagMulticast":true,
  "flagBroadcast":true,"lanDelayEnabled":true,
  "232.1.1.1":{"23.212.185.4":{"source":"23.212.185.4","group":"232.1.1.1","upTime":"00:00:01",
     "expire":"03:28","prune":"--:--","channelJoinName":"JOIN","protocolPim":1}}}}"#;

    #[test]
    fn frr84_single_join() {
        let p = parse_join_json(FRR84_ONE).unwrap();
        assert_eq!(p.joins.len(), 1);
        assert_eq!(
            p.joins[&sg("23.212.185.4", "232.1.1.1")],
            vec!["ing-dn".to_string()]
        );
        assert!(p.skipped.is_empty());
    }

    /// Captured from FRR 8.4.4: an IGMPv3 receiver on the ingest router's
    /// own LAN interface (`ip pim` + `ip igmp`), next to a PIM join.
    #[test]
    fn local_igmp_member_is_wanted() {
        let text = r#"{"ing-lan":{"name":"ing-lan","state":"up","address":"10.77.9.1","index":6,
            "flagMulticast":true,"flagBroadcast":true,"lanDelayEnabled":true,
            "232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1",
              "upTime":"--:--:--","expire":"--:--","prune":"--:--",
              "channelJoinName":"NOINFO","protocolIgmp":1}}},
          "ing-dn":{"name":"ing-dn","232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4",
              "group":"232.1.1.1","channelJoinName":"JOIN","protocolPim":1},
            "198.51.100.5":{"source":"198.51.100.5","group":"232.1.1.1",
              "channelJoinName":"NOINFO","protocolIgmp":0}}}}"#;
        let parsed = parse_join_json(text).unwrap();
        assert_eq!(
            parsed.joins.get(&sg("198.51.100.4", "232.1.1.1")),
            Some(&vec!["ing-dn".to_string(), "ing-lan".to_string()])
        );
        assert_eq!(parsed.joins.len(), 1, "{parsed:?}");
        assert_eq!(parsed.not_joined, 1);
    }

    #[test]
    fn noinfo_after_prune_is_not_wanted() {
        let t = FRR84_ONE.replace(
            r#""channelJoinName":"JOIN","protocolPim":1"#,
            r#""channelJoinName":"NOINFO""#,
        );
        let p = parse_join_json(&t).unwrap();
        assert!(p.joins.is_empty());
        assert_eq!(p.not_joined, 1);
    }

    #[test]
    fn empty_object_and_interfaces_without_joins() {
        assert_eq!(parse_join_json("{}\n").unwrap(), ParsedJoins::default());
        let t = r#"{"amt0":{"name":"amt0","state":"up","address":"169.254.77.1","index":5,"flagMulticast":true},
                   "ing-dn":{"name":"ing-dn","state":"up","address":"10.77.1.1","index":2}}"#;
        let p = parse_join_json(t).unwrap();
        assert!(p.joins.is_empty());
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn several_interfaces_groups_sources() {
        let t = r#"{
          "ing-dn":{"name":"ing-dn","state":"up","address":"10.77.1.1","index":2,
            "232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","channelJoinName":"JOIN"},
                         "198.51.100.5":{"source":"198.51.100.5","group":"232.1.1.1","channelJoinName":"JOIN"}},
            "232.1.1.2":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.2","channelJoinName":"PRUNE"}}},
          "ing-dn2":{"name":"ing-dn2","state":"up","address":"10.77.3.1","index":3,
            "232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","channelJoinName":"JOIN"}}}}"#;
        let p = parse_join_json(t).unwrap();
        assert_eq!(p.joins.len(), 2);
        assert_eq!(
            p.joins[&sg("198.51.100.4", "232.1.1.1")],
            vec!["ing-dn", "ing-dn2"]
        );
        assert_eq!(p.joins[&sg("198.51.100.5", "232.1.1.1")], vec!["ing-dn"]);
        assert_eq!(p.not_joined, 1);
    }

    #[test]
    fn newer_frr_rpt_and_star_keys_ignored() {
        let t = r#"{"ing-dn":{"name":"ing-dn",
            "232.1.1.1":{"198.51.100.4,S,Grpt":{"source":"198.51.100.4","group":"232.1.1.1","channelJoinName":"PRUNE"},
                         "*":{"source":"*","group":"232.1.1.1","channelJoinName":"JOIN"},
                         "198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","channelJoinName":"JOIN","protocolPim":1}}}}"#;
        let p = parse_join_json(t).unwrap();
        assert_eq!(p.joins.len(), 1);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    }

    #[test]
    fn vrf_wrapped_output() {
        let t = format!(r#"{{"default":{}}}"#, FRR84_ONE);
        let p = parse_join_json(&t).unwrap();
        assert_eq!(p.joins[&sg("23.212.185.4", "232.1.1.1")], vec!["ing-dn"]);
    }

    #[test]
    fn ipv6_join() {
        let t = r#"{"ing-dn":{"name":"ing-dn","ff3e::1:1":{"2001:db8:185::4":{"source":"2001:db8:185::4","group":"ff3e::1:1","channelJoinName":"JOIN"}}}}"#;
        let p = parse_join_json(t).unwrap();
        assert_eq!(p.joins[&sg("2001:db8:185::4", "ff3e::1:1")], vec!["ing-dn"]);
    }

    #[test]
    fn malformed_variants() {
        assert_eq!(parse_join_json("").unwrap_err(), JoinParseError::Empty);
        assert!(matches!(
            parse_join_json("{\"ing-dn\":{\"name\""),
            Err(JoinParseError::NotJson(..))
        ));
        assert!(matches!(
            parse_join_json("% Unknown command"),
            Err(JoinParseError::NotJson(..))
        ));
        assert!(matches!(
            parse_join_json("[1,2]"),
            Err(JoinParseError::NotObject(_))
        ));
        // Bad addresses are skipped with a reason, the rest is kept.
        let t = r#"{"ing-dn":{"232.1.1.1":{
            "banana":{"channelJoinName":"JOIN"},
            "198.51.100.4":{"source":"198.51.100.4","group":"232.9.9.9","channelJoinName":"JOIN"},
            "232.2.2.2":{"source":"232.2.2.2","group":"232.1.1.1","channelJoinName":"JOIN"},
            "2001:db8::1":{"source":"2001:db8::1","group":"232.1.1.1","channelJoinName":"JOIN"},
            "198.51.100.6":{"channelJoinName":"JOIN"},
            "198.51.100.7":{"source":"198.51.100.7","group":"232.1.1.1","channelJoinName":7},
            "198.51.100.8":"JOIN"}}}"#;
        let p = parse_join_json(t).unwrap();
        assert_eq!(
            p.joins.keys().cloned().collect::<Vec<_>>(),
            vec![sg("198.51.100.6", "232.1.1.1")]
        );
        assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
        assert_eq!(p.not_joined, 1);
    }

    /// `inner` wrapped in `depth` objects: {"a":{"a":...inner...}}.
    fn nested(depth: usize, inner: &str) -> String {
        format!("{}{inner}{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn deeply_nested_garbage_does_not_recurse_forever() {
        // serde_json's own recursion limit (128) rejects this first.
        assert!(parse_join_json(&nested(200, "1")).is_err());
        let t = nested(
            100,
            "{\"232.1.1.1\":{\"198.51.100.4\":{\"channelJoinName\":\"JOIN\"}}}",
        );
        assert!(parse_join_json(&t).unwrap().joins.is_empty());
    }

    #[test]
    fn scale_1000_channels() {
        let mut t = String::from("{\"ing-dn\":{\"name\":\"ing-dn\"");
        for g in 0..50 {
            t.push_str(&format!(",\"232.1.1.{g}\":{{"));
            for s in 0..20 {
                if s > 0 {
                    t.push(',');
                }
                t.push_str(&format!(
                    "\"198.51.100.{s}\":{{\"source\":\"198.51.100.{s}\",\"group\":\"232.1.1.{g}\",\"channelJoinName\":\"JOIN\"}}"
                ));
            }
            t.push('}');
        }
        t.push_str("}}");
        assert_eq!(parse_join_json(&t).unwrap().joins.len(), 1000);
    }
}
