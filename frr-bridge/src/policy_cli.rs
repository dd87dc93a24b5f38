//! Offline troubleshooting for `ingestctl driad` and `ingestctl dorms`:
//! the same DNS and HTTPS lookups the daemon makes, uncached, explained
//! step by step for people (text) and scripts (JSON). They need no running
//! daemon.
//!
//! The I/O functions ([`driad_report`], [`dorms_report`]) only gather; the
//! `render_*` functions are pure, so the wording is tested without a
//! network.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ingest_policy::dns::{DnsConfig, DnsFailure};
use ingest_policy::dorms::{
    DormsClient, DormsConfig, DormsError, DormsStep, FlowMetadata, MetadataLayout, RateField,
};
use ingest_policy::driad::{
    DriadConfig, DriadOutcome, DriadResolver, HoldDownTracker, Relay, RelayAddress, RelayCandidate,
    SelectionOutcome, SkipReason, reverse_name, select_relays,
};
use ingest_types::{AMT_PORT, SourceGroup};
use rand::Rng;
use serde_json::{Value, json};

use ingest_policy::text::rate_text;

use crate::config::{DnsSetupError, RESOLV_CONF, dns_config_from, parse_server};

/// DNS timeout per try for the tools.
const TOOL_DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTPS timeout per request for the tools.
const TOOL_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tool could not set up its DNS lookups.
#[derive(Debug, thiserror::Error)]
enum ToolDnsError {
    #[error("--server: {0}")]
    Server(#[from] crate::config::AddressError),
    #[error(transparent)]
    Setup(#[from] DnsSetupError),
}

fn tool_dns(servers: &[String]) -> Result<DnsConfig, ToolDnsError> {
    let servers: Vec<SocketAddr> = servers
        .iter()
        .map(|s| parse_server(s))
        .collect::<Result<_, _>>()?;
    Ok(dns_config_from(
        &servers,
        Path::new(RESOLV_CONF),
        TOOL_DNS_TIMEOUT,
    )?)
}

fn servers_text(dns: &DnsConfig) -> String {
    dns.name_servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn servers_json(dns: &DnsConfig) -> Value {
    json!(
        dns.name_servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    )
}

fn setup_error(what: &str, error: String) -> (String, Value) {
    (
        format!("{what}: {error}\n"),
        json!({ "ok": false, "error": { "kind": "setup", "text": error } }),
    )
}

/// Looks up the AMTRELAY records of `source` (uncached) through `servers`
/// (empty: /etc/resolv.conf) and explains them.
pub async fn driad_report(source: IpAddr, servers: Vec<String>) -> (String, Value) {
    let dns = match tool_dns(&servers) {
        Ok(dns) => dns,
        Err(e) => return setup_error("cannot look up relays", e.to_string()),
    };
    let resolver = match DriadResolver::new(DriadConfig::new(dns.clone())) {
        Ok(r) => r,
        Err(e) => return setup_error("cannot look up relays", e.to_string()),
    };
    let outcome = resolver.query_relays(source).await;
    render_driad(&outcome, &dns, &mut rand::rng())
}

/// Short machine name of a DNS failure.
pub fn failure_kind(failure: &DnsFailure) -> &'static str {
    match failure {
        DnsFailure::NxDomain => "nxdomain",
        DnsFailure::NoData => "nodata",
        DnsFailure::ServFail => "servfail",
        DnsFailure::Refused => "refused",
        DnsFailure::Timeout => "timeout",
        DnsFailure::Other(_) => "other",
    }
}

fn failure_text(failure: &DnsFailure, dns: &DnsConfig, what: &str) -> String {
    match failure {
        DnsFailure::NxDomain => format!("NXDOMAIN: the name does not exist, so there is no {what}"),
        DnsFailure::NoData => format!("NODATA: the name exists but has no {what}"),
        DnsFailure::ServFail => format!(
            "SERVFAIL: the DNS server could not get an answer (broken delegation, unreachable authoritative server, DNSSEC failure); no {what} known"
        ),
        DnsFailure::Refused => "REFUSED: the DNS server will not answer this query".to_owned(),
        DnsFailure::Timeout => format!(
            "timeout: no answer from {} ({} s per try, {} tries)",
            servers_text(dns),
            dns.timeout.as_secs_f64(),
            dns.attempts
        ),
        DnsFailure::Other(text) => format!("DNS error: {text}"),
    }
}

fn relay_type(candidate: &RelayCandidate) -> (u8, String) {
    match (&candidate.relay, &candidate.via_name) {
        (RelayAddress::None, _) => (0, "type 0 (no relay)".into()),
        (RelayAddress::Ip(ip), Some(name)) => (
            3,
            format!(
                "type 3 {name} ({})",
                if ip.is_ipv4() { "A" } else { "AAAA" }
            ),
        ),
        (RelayAddress::Ip(IpAddr::V4(_)), None) => (1, "type 1 (IPv4)".into()),
        (RelayAddress::Ip(IpAddr::V6(_)), None) => (2, "type 2 (IPv6)".into()),
        (RelayAddress::Name(name), _) => (3, format!("type 3 {name} (unresolved)")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Text and JSON for a DRIAD outcome. `rng` draws the order within equal
/// precedence (random, as the daemon does).
pub fn render_driad<R: Rng + ?Sized>(
    outcome: &DriadOutcome,
    dns: &DnsConfig,
    rng: &mut R,
) -> (String, Value) {
    let source = outcome.source();
    let mut text = String::new();
    let _ = writeln!(text, "DRIAD (RFC 8777) relay discovery for source {source}");
    let answer = match outcome {
        DriadOutcome::Failed {
            query_name,
            failure,
            ..
        } => {
            let why = failure_text(failure, dns, "AMTRELAY record");
            let _ = writeln!(
                text,
                "query:   {query_name} AMTRELAY (type 260) via {}",
                servers_text(dns)
            );
            let _ = writeln!(text, "result:  {why}");
            let _ = writeln!(
                text,
                "         => no relay from DNS for this source: its joins are not ingested unless amt.static_relays covers it"
            );
            let value = json!({
                "source": source.to_string(),
                "query_name": query_name,
                "servers": servers_json(dns),
                "ok": false,
                "error": { "kind": failure_kind(failure), "text": why },
                "records": [],
                "candidates": [],
                "skipped": [],
            });
            return (text, value);
        }
        DriadOutcome::Answer(answer) => answer,
    };

    let _ = writeln!(
        text,
        "query:   {} AMTRELAY (type 260) via {}",
        answer.query_name,
        servers_text(dns)
    );
    let _ = writeln!(
        text,
        "records: {} (the daemon caches this answer for {} s)",
        answer.records.len() + answer.rejected.len(),
        answer.ttl.as_secs()
    );
    for record in &answer.records {
        let _ = writeln!(text, "  AMTRELAY {record}");
    }
    for rejected in &answer.rejected {
        let _ = writeln!(
            text,
            "  TYPE260 \\# {} {}   <- malformed: {}",
            rejected.rdata.len(),
            hex(&rejected.rdata),
            rejected.error
        );
    }

    let selection = select_relays(
        &answer.candidates,
        &HoldDownTracker::default(),
        Instant::now(),
        rng,
    );
    let ties = {
        let mut precedences: Vec<u8> = answer.candidates.iter().map(|c| c.precedence).collect();
        let before = precedences.len();
        precedences.sort_unstable();
        precedences.dedup();
        precedences.len() < before
    };
    let _ = writeln!(
        text,
        "relays in the order they would be tried{}:",
        if ties {
            " (equal precedence: random order, one draw shown)"
        } else {
            ""
        }
    );
    let mut candidates_json = Vec::new();
    let mut skipped_json = Vec::new();
    let mut order = 0;
    for entry in &selection.entries {
        let c = &entry.candidate;
        let (kind, kind_text) = relay_type(c);
        let d = u8::from(c.discovery_optional);
        match &entry.skip {
            None if c.is_no_relay() => {
                let _ = writeln!(
                    text,
                    "  --  none            precedence {:3}  D={d}  type 0: stop here, no relay for this source beyond this point",
                    c.precedence
                );
                candidates_json.push(json!({
                    "order": null, "relay": null, "port": null, "precedence": c.precedence,
                    "discovery_optional": c.discovery_optional, "type": 0, "via_name": null,
                    "status": "end of list (type 0)",
                }));
            }
            None => {
                order += 1;
                let status = if order == 1 { "use" } else { "fallback" };
                let _ = writeln!(
                    text,
                    "  {order:2}. {:15} precedence {:3}  D={d}  {kind_text}{}",
                    c.relay.to_string(),
                    c.precedence,
                    if order == 1 { "  <- first choice" } else { "" }
                );
                let ip = match c.relay {
                    RelayAddress::Ip(ip) => Some(ip.to_string()),
                    _ => None,
                };
                candidates_json.push(json!({
                    "order": order, "relay": ip, "port": AMT_PORT, "precedence": c.precedence,
                    "discovery_optional": c.discovery_optional, "type": kind,
                    "via_name": c.via_name.as_ref().map(ToString::to_string), "status": status,
                }));
            }
            Some(skip) => {
                let why = match skip {
                    SkipReason::AfterNoRelay => {
                        "not used: after a type 0 (no relay) record of better or equal precedence"
                            .to_owned()
                    }
                    other => other.to_string(),
                };
                skipped_json.push(json!({
                    "relay": c.relay.to_string(), "precedence": c.precedence,
                    "discovery_optional": c.discovery_optional, "type": kind, "reason": why,
                }));
            }
        }
    }
    if order == 0 && candidates_json.is_empty() {
        let _ = writeln!(text, "  (none)");
    }
    for name in &answer.unresolved {
        skipped_json.push(json!({
            "relay": name.name.to_string(), "precedence": name.precedence,
            "discovery_optional": null, "type": 3,
            "reason": format!("name did not resolve (A: {}, AAAA: {})", name.ipv4, name.ipv6),
        }));
    }
    for record in &answer.records {
        if let Relay::Unknown { relay_type, .. } = record.relay {
            skipped_json.push(json!({
                "relay": record.to_string(), "precedence": record.precedence,
                "discovery_optional": record.discovery_optional, "type": relay_type,
                "reason": format!("unassigned relay type {relay_type}: ignored (RFC 8777)"),
            }));
        }
    }
    for rejected in &answer.rejected {
        skipped_json.push(json!({
            "relay": format!("\\# {} {}", rejected.rdata.len(), hex(&rejected.rdata)),
            "precedence": null, "discovery_optional": null, "type": null,
            "reason": format!("malformed RDATA: {}", rejected.error),
        }));
    }
    if !skipped_json.is_empty() {
        let _ = writeln!(text, "skipped:");
        for skipped in &skipped_json {
            let _ = writeln!(
                text,
                "  {}  (precedence {}): {}",
                skipped["relay"].as_str().unwrap_or("?"),
                skipped["precedence"],
                skipped["reason"].as_str().unwrap_or("?")
            );
        }
    }

    let (result, result_kind) = match &selection.outcome {
        SelectionOutcome::Relay(c) => (
            format!(
                "use relay {} port {AMT_PORT}{}",
                c.relay,
                if c.discovery_optional {
                    " (D=1: Request without Relay Discovery allowed)"
                } else {
                    " (Relay Discovery first)"
                }
            ),
            "relay",
        ),
        SelectionOutcome::NoRelay { precedence } => (
            format!(
                "no relay: a type 0 record (precedence {precedence}) says this source must not be ingested through AMT"
            ),
            "no-relay",
        ),
        SelectionOutcome::AllSkipped { .. } => (
            "no usable relay: every candidate was skipped (see above)".to_owned(),
            "all-skipped",
        ),
        SelectionOutcome::NoCandidates => (
            "no usable relay: the records have no relay this gateway understands".to_owned(),
            "no-candidates",
        ),
    };
    let _ = writeln!(text, "result:  {result}");
    let value = json!({
        "source": source.to_string(),
        "query_name": answer.query_name,
        "servers": servers_json(dns),
        "ok": result_kind == "relay",
        "outcome": result_kind,
        "result": result,
        "ttl_s": answer.ttl.as_secs(),
        "records": answer.records.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "candidates": candidates_json,
        "skipped": skipped_json,
        "error": null,
    });
    (text, value)
}

/// Fetches the CBACC metadata of (source, group) (uncached, no retries)
/// through `servers` (empty: /etc/resolv.conf), trusting only `ca` when
/// given, and explains every step.
pub async fn dorms_report(
    sg: SourceGroup,
    servers: Vec<String>,
    ca: Option<PathBuf>,
) -> (String, Value) {
    let dns = match tool_dns(&servers) {
        Ok(dns) => dns,
        Err(e) => return setup_error("cannot fetch DORMS metadata", e.to_string()),
    };
    let mut config = DormsConfig::new(dns.clone());
    config.ca_bundle = ca;
    config.retries = 0;
    config.request_timeout = TOOL_HTTP_TIMEOUT;
    let client = match DormsClient::new(config) {
        Ok(client) => client,
        Err(e) => return setup_error("cannot fetch DORMS metadata", e.to_string()),
    };
    let (result, steps) = client.fetch_traced(sg).await;
    render_dorms(sg, &dns, &result, &steps)
}

fn layout_text(layout: MetadataLayout) -> &'static str {
    match layout {
        MetadataLayout::Draft01 => "draft -01/-02 layout ietf-dorms:metadata",
        MetadataLayout::Dorms => "draft -03+ layout ietf-dorms:dorms",
    }
}

fn layout_key(layout: MetadataLayout) -> &'static str {
    match layout {
        MetadataLayout::Draft01 => "draft-01",
        MetadataLayout::Dorms => "dorms",
    }
}

fn rate_field(metadata: &FlowMetadata) -> (&'static str, &'static str, u64) {
    match metadata.rate_field {
        RateField::MaxBitsPerSecond => ("max-bits-per-second", "bit/s", metadata.max_bitrate),
        RateField::MaxSpeedKbps => ("max-speed", "kbit/s", metadata.max_bitrate / 1000),
    }
}

/// Text and JSON for a traced DORMS fetch.
pub fn render_dorms(
    sg: SourceGroup,
    dns: &DnsConfig,
    result: &Result<(FlowMetadata, Duration), DormsError>,
    steps: &[DormsStep],
) -> (String, Value) {
    let mut text = String::new();
    let _ = writeln!(text, "DORMS/CBACC metadata for {sg}");
    let mut steps_json = Vec::new();
    let mut srv_json = Value::Null;
    let mut layout = None;
    let mut url = None;
    for step in steps {
        match step {
            DormsStep::Srv { name, result } => {
                let _ = writeln!(text, "SRV:       {name} via {}", servers_text(dns));
                match result {
                    Ok(targets) if targets.is_empty() => {
                        let _ = writeln!(text, "  no usable targets (\".\" means no service)");
                        srv_json = json!([]);
                    }
                    Ok(targets) => {
                        let _ = writeln!(text, "  targets in the order tried:");
                        for (i, t) in targets.iter().enumerate() {
                            let _ = writeln!(
                                text,
                                "  {:2}. {} port {} (priority {}, weight {})",
                                i + 1,
                                t.target,
                                t.port,
                                t.priority,
                                t.weight
                            );
                        }
                        srv_json = json!(
                            targets
                                .iter()
                                .map(|t| json!({
                                    "target": t.target, "port": t.port,
                                    "priority": t.priority, "weight": t.weight,
                                }))
                                .collect::<Vec<_>>()
                        );
                    }
                    Err(failure) => {
                        let why = failure_text(failure, dns, "DORMS server (SRV record)");
                        let _ = writeln!(text, "  {why}");
                    }
                }
                steps_json.push(json!({
                    "step": "srv", "name": name, "ok": result.is_ok(),
                    "error": result.as_ref().err().map(ToString::to_string),
                    "error_kind": result.as_ref().err().map(failure_kind),
                }));
            }
            DormsStep::HostMeta {
                url: step_url,
                result,
                cached,
            } => {
                let cached_text = if *cached { " (cached)" } else { "" };
                match result {
                    Ok(root) => {
                        let _ = writeln!(
                            text,
                            "host-meta: {step_url}{cached_text}\n           -> RESTCONF root {root}"
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(text, "host-meta: {step_url}\n           -> failed: {e}");
                    }
                }
                steps_json.push(json!({
                    "step": "host-meta", "url": step_url, "cached": cached, "ok": result.is_ok(),
                    "restconf_root": result.as_ref().ok(),
                    "error": result.as_ref().err().map(ToString::to_string),
                }));
            }
            DormsStep::Metadata {
                url: step_url,
                layout: step_layout,
                result,
            } => {
                match result {
                    Ok(m) => {
                        layout = Some(*step_layout);
                        url = Some(step_url.clone());
                        let _ = writeln!(
                            text,
                            "metadata:  {step_url}\n           ({}) -> {}",
                            layout_text(*step_layout),
                            rate_text(m.max_bitrate)
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            text,
                            "metadata:  {step_url}\n           ({}) -> failed: {e}",
                            layout_text(*step_layout)
                        );
                    }
                }
                steps_json.push(json!({
                    "step": "metadata", "url": step_url, "layout": layout_key(*step_layout),
                    "ok": result.is_ok(), "error": result.as_ref().err().map(ToString::to_string),
                }));
            }
        }
    }
    let mut value = json!({
        "source": sg.source.to_string(),
        "group": sg.group.to_string(),
        "servers": servers_json(dns),
        "srv_name": ingest_policy::driad::dorms_srv_name(sg.source),
        "reverse_name": reverse_name(sg.source),
        "srv_targets": srv_json,
        "steps": steps_json,
    });
    match result {
        Ok((metadata, max_age)) => {
            let (field, units, declared) = rate_field(metadata);
            let _ = writeln!(
                text,
                "result:    bitrate {} ({} bit/s; declared as {field} = {declared} {units})",
                rate_text(metadata.max_bitrate),
                metadata.max_bitrate
            );
            let _ = writeln!(
                text,
                "           priority {}, max packet {} bytes, rate window {} ms; cached for {} s",
                metadata.priority,
                metadata.max_packet_size,
                metadata.data_rate_window_ms,
                max_age.as_secs()
            );
            value["ok"] = json!(true);
            value["bitrate_bps"] = json!(metadata.max_bitrate);
            value["rate_field"] = json!(field);
            value["units"] = json!(units);
            value["declared_value"] = json!(declared);
            value["layout"] = json!(layout.map(layout_key));
            value["url"] = json!(url);
            value["max_age_s"] = json!(max_age.as_secs());
            value["priority"] = json!(metadata.priority);
            value["max_packet_size"] = json!(metadata.max_packet_size);
            value["data_rate_window_ms"] = json!(metadata.data_rate_window_ms);
            value["error"] = Value::Null;
        }
        Err(error) => {
            let _ = writeln!(
                text,
                "result:    no metadata: {error}\n           => the daemon uses policy.default_bitrate for this flow, or blocks it under a bandwidth limit when none is set"
            );
            value["ok"] = json!(false);
            value["bitrate_bps"] = Value::Null;
            value["error"] = json!({
                "kind": dorms_error_kind(error),
                "text": error.to_string(),
                "transient": error.is_transient(),
            });
        }
    }
    (text, value)
}

/// Short machine name of a DORMS error.
pub fn dorms_error_kind(error: &DormsError) -> &'static str {
    match error {
        DormsError::Srv { .. } => "srv",
        DormsError::NoServers { .. } => "no-servers",
        DormsError::HttpStatus { .. } => "http-status",
        DormsError::HostMeta { .. } => "host-meta",
        DormsError::BadHref { .. } => "bad-href",
        DormsError::Metadata { .. } => "metadata",
        DormsError::BodyTooLarge { .. } => "body-too-large",
        DormsError::Tls { .. } => "tls",
        DormsError::Timeout { .. } => "timeout",
        DormsError::Transport { .. } => "transport",
        DormsError::Config(_) => "config",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingest_policy::dorms::SrvTarget;
    use ingest_policy::driad::{
        AmtRelayRecord, DriadAnswer, RejectedRecord, UnresolvedName, candidates_from_records,
    };
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn dns() -> DnsConfig {
        DnsConfig::new(vec!["127.0.0.1:5353".parse().unwrap()])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn answer(records: &[&str]) -> DriadAnswer {
        let records: Vec<AmtRelayRecord> = records.iter().map(|r| r.parse().unwrap()).collect();
        DriadAnswer {
            source: ip("23.212.185.4"),
            query_name: "4.185.212.23.in-addr.arpa.".into(),
            candidates: candidates_from_records(&records),
            records,
            rejected: Vec::new(),
            unresolved: Vec::new(),
            ttl: Duration::from_secs(120),
        }
    }

    #[test]
    fn driad_answer_lists_order_and_skips() {
        let mut a = answer(&[
            "20 0 1 192.0.2.20",
            "10 1 1 192.0.2.10",
            "30 0 0 .",
            "40 0 1 192.0.2.40",
            "\\# 4 0a050102",
        ]);
        a.rejected.push(RejectedRecord {
            rdata: vec![0x0a, 0x01, 0xc0],
            error: ingest_policy::driad::RdataError::RelayLength {
                relay_type: 1,
                expected: 4,
                found: 1,
            },
        });
        a.unresolved.push(UnresolvedName {
            name: "gone.lab.test.".parse().unwrap(),
            precedence: 5,
            ipv4: DnsFailure::NxDomain,
            ipv6: DnsFailure::NxDomain,
        });
        let (text, value) = render_driad(
            &DriadOutcome::Answer(a),
            &dns(),
            &mut StdRng::seed_from_u64(1),
        );
        assert!(
            text.contains(
                "query:   4.185.212.23.in-addr.arpa. AMTRELAY (type 260) via 127.0.0.1:5353"
            ),
            "{text}"
        );
        assert!(text.contains("  AMTRELAY 10 1 1 192.0.2.10\n"), "{text}");
        assert!(
            text.contains("malformed: relay type 1 needs 4 relay bytes"),
            "{text}"
        );
        assert!(
            text.contains("result:  use relay 192.0.2.10 port 2268 (D=1: Request without Relay Discovery allowed)"),
            "{text}"
        );
        let first = text.find(" 1. 192.0.2.10").expect("first");
        let second = text.find(" 2. 192.0.2.20").expect("second");
        let stop = text.find("type 0: stop here").expect("type 0");
        assert!(first < second && second < stop, "{text}");
        assert_eq!(value["ok"], true);
        assert_eq!(value["outcome"], "relay");
        assert_eq!(value["ttl_s"], 120);
        let order: Vec<&str> = value["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["relay"].as_str())
            .collect();
        assert_eq!(order, ["192.0.2.10", "192.0.2.20"]);
        let skipped: Vec<String> = value["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{} {}", s["relay"].as_str().unwrap(), s["reason"]))
            .collect();
        assert_eq!(skipped.len(), 4, "{skipped:#?}");
        assert!(skipped[0].starts_with("192.0.2.40 \"not used: after a type 0"));
        assert!(skipped[1].contains("gone.lab.test.") && skipped[1].contains("NXDOMAIN"));
        assert!(skipped[2].contains("unassigned relay type 5"));
        assert!(skipped[3].starts_with("\\# 3 0a01c0"));
    }

    #[test]
    fn driad_type0_and_failures() {
        let (text, value) = render_driad(
            &DriadOutcome::Answer(answer(&["10 0 0 ."])),
            &dns(),
            &mut StdRng::seed_from_u64(1),
        );
        assert!(
            text.contains("result:  no relay: a type 0 record (precedence 10)"),
            "{text}"
        );
        assert_eq!(value["outcome"], "no-relay");
        assert_eq!(value["ok"], false);

        for (failure, kind, needle) in [
            (
                DnsFailure::NxDomain,
                "nxdomain",
                "NXDOMAIN: the name does not exist",
            ),
            (
                DnsFailure::ServFail,
                "servfail",
                "SERVFAIL: the DNS server could not",
            ),
            (
                DnsFailure::Timeout,
                "timeout",
                "timeout: no answer from 127.0.0.1:5353 (3 s per try, 2 tries)",
            ),
        ] {
            let outcome = DriadOutcome::Failed {
                source: ip("2001:db8::1"),
                query_name: reverse_name(ip("2001:db8::1")),
                failure,
                retry_after: Duration::from_secs(30),
            };
            let (text, value) = render_driad(&outcome, &dns(), &mut StdRng::seed_from_u64(1));
            assert!(text.contains(needle), "{text}");
            assert!(text.contains("ip6.arpa. AMTRELAY"), "{text}");
            assert_eq!(value["error"]["kind"], kind);
            assert_eq!(value["ok"], false);
        }
    }

    fn sg() -> SourceGroup {
        SourceGroup::new(ip("23.212.185.4"), ip("232.1.1.1")).unwrap()
    }

    #[test]
    fn dorms_success_and_failure_text() {
        let root = "https://dorms.lab.test:8443/restconf/";
        let url = format!(
            "{root}data/ietf-dorms:dorms/metadata/sender=23.212.185.4/group=232.1.1.1/ietf-cbacc:cbacc"
        );
        let metadata = FlowMetadata {
            max_bitrate: 2_500_000,
            rate_field: RateField::MaxSpeedKbps,
            priority: 256,
            max_packet_size: 1400,
            data_rate_window_ms: 2000,
        };
        let steps = vec![
            DormsStep::Srv {
                name: "_dorms._tcp.4.185.212.23.in-addr.arpa.".into(),
                result: Ok(vec![SrvTarget {
                    priority: 0,
                    weight: 1,
                    port: 8443,
                    target: "dorms.lab.test".into(),
                }]),
            },
            DormsStep::HostMeta {
                url: "https://dorms.lab.test:8443/.well-known/host-meta".into(),
                result: Ok(root.into()),
                cached: false,
            },
            DormsStep::Metadata {
                url: "https://x/old".into(),
                layout: MetadataLayout::Draft01,
                result: Err(DormsError::HttpStatus {
                    url: "https://x/old".into(),
                    status: 404,
                }),
            },
            DormsStep::Metadata {
                url: url.clone(),
                layout: MetadataLayout::Dorms,
                result: Ok(metadata),
            },
        ];
        let (text, value) = render_dorms(
            sg(),
            &dns(),
            &Ok((metadata, Duration::from_secs(30))),
            &steps,
        );
        for line in [
            "   1. dorms.lab.test port 8443 (priority 0, weight 1)",
            "-> RESTCONF root https://dorms.lab.test:8443/restconf/",
            "-> failed: https://x/old: HTTP status 404",
            "result:    bitrate 2.5 Mbit/s (2500000 bit/s; declared as max-speed = 2500 kbit/s)",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert_eq!(value["ok"], true);
        assert_eq!(value["bitrate_bps"], 2_500_000);
        assert_eq!(value["units"], "kbit/s");
        assert_eq!(value["layout"], "dorms");
        assert_eq!(value["url"], url.as_str());
        assert_eq!(value["steps"].as_array().unwrap().len(), 4);

        let error = DormsError::Srv {
            name: "_dorms._tcp.4.185.212.23.in-addr.arpa.".into(),
            failure: DnsFailure::NxDomain,
        };
        let steps = vec![DormsStep::Srv {
            name: "_dorms._tcp.4.185.212.23.in-addr.arpa.".into(),
            result: Err(DnsFailure::NxDomain),
        }];
        let (text, value) = render_dorms(sg(), &dns(), &Err(error), &steps);
        assert!(
            text.contains("NXDOMAIN: the name does not exist, so there is no DORMS server"),
            "{text}"
        );
        assert!(
            text.contains("result:    no metadata: DORMS SRV lookup"),
            "{text}"
        );
        assert_eq!(value["ok"], false);
        assert_eq!(value["error"]["kind"], "srv");
        assert_eq!(value["steps"][0]["error_kind"], "nxdomain");
    }

    #[tokio::test]
    async fn bad_server_argument_is_a_setup_error() {
        let (text, value) = driad_report(ip("192.0.2.1"), vec!["dns.example".into()]).await;
        assert!(
            text.contains("--server: \"dns.example\" is not ADDRESS"),
            "{text}"
        );
        assert_eq!(value["error"]["kind"], "setup");
        let (text, value) = dorms_report(
            SourceGroup::new(ip("192.0.2.1"), ip("232.1.1.1")).unwrap(),
            vec!["127.0.0.1:53".into()],
            Some("/nonexistent/ca.pem".into()),
        )
        .await;
        assert!(text.contains("CA bundle /nonexistent/ca.pem"), "{text}");
        assert_eq!(value["ok"], false);
    }
}
