//! Northbound: Prometheus metrics (text exposition format 0.0.4) over plain
//! HTTP, for the operator's monitoring. Read-only and off by default
//! (`[api] metrics = "ADDR:PORT"`).
//!
//! The figures are the ones the gRPC API gives (`show status`, `show
//! tunnels`, `show flows`), rendered by [`render`], a pure function. Per
//! relay there is one series set (relays are few); flows are counted per
//! state rather than given a series each, so 10,000 joined channels do not
//! become 10,000 series.
//!
//! The HTTP side is deliberately tiny: one request per connection, the
//! request head read with a size limit and a timeout, `GET /metrics` (or
//! `/`) and `GET /healthz` answered, anything else refused. Scrapers and
//! health checkers send nothing more.
//!
//! `/healthz` is 200 while the join source works (pimd's vty connected, or
//! the joinfile readable) and 503 with the reason otherwise, for container
//! health checks and load balancers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ingest_proto::v1::ingest_server::Ingest;
use ingest_proto::v1::{
    FlowList, ListFlowsRequest, ListTunnelsRequest, Status, StatusRequest, TunnelList,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Request;
use tracing::{debug, info};

use crate::api::ApiService;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request head, and to take the
/// answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once (a scraper needs
/// one, so this only bounds what a misbehaving client can hold).
const MAX_CONNECTIONS: usize = 16;

/// Prometheus text for one snapshot of the daemon's state.
pub fn render(status: &Status, tunnels: &TunnelList, flows: &FlowList) -> String {
    let mut out = Text::default();
    out.gauge(
        "frr_ingest_info",
        "Version and join source of the running daemon (always 1).",
        &[
            ("version", status.version.as_str()),
            ("join_source", status.join_source.as_str()),
            ("tun", status.tun_name.as_str()),
        ],
        1,
    );
    out.gauge(
        "frr_ingest_dataplane_info",
        "The data plane that decapsulates AMT data (kernel: BPF at TC ingress; userspace) and the one asked for (always 1).",
        &[
            ("running", status.dataplane.as_str()),
            ("requested", status.dataplane_requested.as_str()),
        ],
        1,
    );
    out.gauge(
        "frr_ingest_uptime_seconds",
        "Seconds since the daemon started.",
        &[],
        status.uptime_ms / 1000,
    );
    out.gauge(
        "frr_ingest_frr_connected",
        "1 when pimd's vty socket is connected.",
        &[],
        u64::from(status.frr_state == "connected"),
    );
    out.gauge(
        "frr_ingest_joins",
        "(S,G)s joined downstream (the wanted set).",
        &[],
        u64::from(status.joins),
    );
    out.gauge(
        "frr_ingest_served_sources",
        "Sources routed into the TUN.",
        &[],
        u64::from(status.served_sources),
    );
    out.counter(
        "frr_ingest_polls_total",
        "Polls of pimd's join state.",
        &[],
        status.polls,
    );
    out.counter(
        "frr_ingest_poll_errors_total",
        "Polls of pimd's join state that failed.",
        &[],
        status.poll_errors,
    );
    out.counter(
        "frr_ingest_pim_hellos_sent_total",
        "PIM Hellos sent on the TUN.",
        &[],
        status.pim_hellos_sent,
    );
    out.counter(
        "frr_ingest_pim_joinprunes_seen_total",
        "PIM Join/Prunes from pimd seen on the TUN.",
        &[],
        status.pim_joinprunes_seen,
    );
    for (name, value) in &status.counters {
        out.counter(
            &format!("frr_ingest_{}_total", metric_name(name)),
            &format!("Daemon counter {name} (see `ingestctl show status`)."),
            &[],
            *value,
        );
    }

    out.header(
        "frr_ingest_relay_race_winners_total",
        "Relay races (RFC 8777 3.2) won, by the winner's position in the policy's order (last: that position or later).",
        true,
    );
    for (i, n) in status.race_winners.iter().enumerate() {
        let position = if i + 1 == status.race_winners.len() {
            format!("{}+", i + 1)
        } else {
            (i + 1).to_string()
        };
        out.sample(
            "frr_ingest_relay_race_winners_total",
            &[("position", position.as_str())],
            *n,
        );
    }

    out.gauge(
        "frr_ingest_tunnels",
        "AMT tunnels open (one per relay).",
        &[],
        tunnels.tunnels.len() as u64,
    );
    type TunnelValue = fn(&ingest_proto::v1::Tunnel) -> u64;
    let per_tunnel: [(&str, &str, bool, TunnelValue); 12] = [
        (
            "frr_ingest_tunnel_up",
            "1 when the tunnel's gateway state machine is up.",
            false,
            |t| u64::from(t.protocol_state == "up"),
        ),
        (
            "frr_ingest_tunnel_channels",
            "(S,G)s subscribed through the tunnel.",
            false,
            |t| t.channels.len() as u64,
        ),
        (
            "frr_ingest_tunnel_packets_total",
            "Multicast Data packets written into the TUN.",
            true,
            |t| t.packets,
        ),
        (
            "frr_ingest_tunnel_bytes_total",
            "Bytes of inner packets written into the TUN.",
            true,
            |t| t.bytes,
        ),
        (
            "frr_ingest_tunnel_kernel_packets_total",
            "Packets the kernel data plane delivered (part of frr_ingest_tunnel_packets_total).",
            true,
            |t| t.kernel_packets,
        ),
        (
            "frr_ingest_tunnel_discoveries_sent_total",
            "Relay Discovery messages sent.",
            true,
            |t| t.discoveries_sent,
        ),
        (
            "frr_ingest_tunnel_requests_sent_total",
            "Request messages sent.",
            true,
            |t| t.requests_sent,
        ),
        (
            "frr_ingest_tunnel_queries_received_total",
            "Membership Queries received.",
            true,
            |t| t.queries_received,
        ),
        (
            "frr_ingest_tunnel_updates_sent_total",
            "Membership Updates sent.",
            true,
            |t| t.updates_sent,
        ),
        (
            "frr_ingest_tunnel_relay_losses_total",
            "Times the relay was declared lost.",
            true,
            |t| t.relay_losses,
        ),
        (
            "frr_ingest_tunnel_stall_requests_total",
            "Early Requests sent because data stopped.",
            true,
            |t| t.stall_requests,
        ),
        (
            "frr_ingest_tunnel_last_query_age_seconds",
            "Seconds since the last Membership Query (0: none yet).",
            false,
            |t| t.last_query_age_ms / 1000,
        ),
    ];
    for (name, help, counter, value) in per_tunnel {
        out.header(name, help, counter);
        for t in &tunnels.tunnels {
            out.sample(name, &[("relay", t.relay.as_str())], value(t));
        }
    }
    out.header(
        "frr_ingest_tunnel_drops_total",
        "Packets the tunnel dropped, by reason.",
        true,
    );
    for t in &tunnels.tunnels {
        for (reason, n) in &t.drop_reasons {
            out.sample(
                "frr_ingest_tunnel_drops_total",
                &[("relay", t.relay.as_str()), ("reason", reason.as_str())],
                *n,
            );
        }
    }

    out.header(
        "frr_ingest_tunnel_kernel_passed_total",
        "The tunnel's packets the kernel data plane left to the socket, by reason.",
        true,
    );
    for t in &tunnels.tunnels {
        for (reason, n) in &t.kernel_passed {
            out.sample(
                "frr_ingest_tunnel_kernel_passed_total",
                &[("relay", t.relay.as_str()), ("reason", reason.as_str())],
                *n,
            );
        }
    }

    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &flows.flows {
        *by_state.entry(f.state.as_str()).or_default() += 1;
    }
    out.header(
        "frr_ingest_flows",
        "Wanted (S,G)s by state (forwarding, not-served, waiting-tunnel, ...).",
        false,
    );
    for (state, n) in by_state {
        out.sample("frr_ingest_flows", &[("state", state)], n);
    }
    out.gauge(
        "frr_ingest_flows_admitted",
        "Flows admitted under the bandwidth limit.",
        &[],
        flows.flows.iter().filter(|f| f.admitted).count() as u64,
    );
    out.gauge(
        "frr_ingest_bandwidth_limit_bps",
        "The CBACC bandwidth limit in bit/s (0: no limit).",
        &[],
        flows.limit_bps,
    );
    out.gauge(
        "frr_ingest_admitted_bps",
        "Declared bit/s of the admitted flows.",
        &[],
        flows.admitted_bps,
    );
    out.0
}

/// `[a-zA-Z0-9_]` only, as Prometheus metric names require.
fn metric_name(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[derive(Default)]
struct Text(String);

impl Text {
    fn header(&mut self, name: &str, help: &str, counter: bool) {
        let kind = if counter { "counter" } else { "gauge" };
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.header(name, help, false);
        self.sample(name, labels, value);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.header(name, help, true);
        self.sample(name, labels, value);
    }
}

/// Serve `GET /metrics` and `GET /healthz` on `listener` until `stop`
/// flips.
pub async fn serve_metrics(
    listener: TcpListener,
    service: ApiService,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!("Prometheus metrics on http://{addr}/metrics");
    }
    let service = std::sync::Arc::new(service);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open; closing");
                        continue;
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &service).await {
                            debug!(%peer, "metrics request: {e}");
                        }
                        drop(slot);
                    });
                }
                // Out of descriptors and the like: do not spin.
                Err(e) => {
                    debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    NotFound,
}

fn route(head: &[u8]) -> Result<Route, &'static str> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("no request line")?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| "request line is not UTF-8")?;
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    Ok(match (method, path) {
        ("GET", "/metrics" | "/") => Route::Metrics,
        ("GET", "/healthz") => Route::Health,
        _ => Route::NotFound,
    })
}

/// Healthy while the join source works: pimd connected, or the joinfile
/// read without error. Returns the state text either way.
/// 200 while the join source works: pimd connected (or pim6d, for a
/// deployment whose pimd is down), or the joinfile readable. Either IP
/// family failing alone leaves the other one working, so it is reported in
/// the body, not as a failure.
pub fn health(status: &Status) -> (bool, String) {
    let state = status.frr_state.as_str();
    let v6 = status.pim6d_state.as_str();
    let ok = state == "connected"
        || v6 == "connected"
        || (state.starts_with("joinfile:") && !state.contains("unreadable"));
    let mut text = format!("join source: {state}\n");
    if !v6.is_empty() {
        text.push_str(&format!("pim6d: {v6}\n"));
    }
    (ok, text)
}

async fn answer(mut stream: TcpStream, service: &ApiService) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let (code, body) = match (read, route(&head)) {
        (Err(_), _) => return Ok(()), // timed out: just close
        (Ok(Err(e)), _) => return Err(e),
        (Ok(Ok(())), Ok(Route::Metrics)) => ("200 OK", snapshot(service).await),
        (Ok(Ok(())), Ok(Route::Health)) => {
            match service.get_status(Request::new(StatusRequest {})).await {
                Ok(status) => match health(status.get_ref()) {
                    (true, text) => ("200 OK", text),
                    (false, text) => ("503 Service Unavailable", text),
                },
                Err(_) => ("503 Service Unavailable", "status unavailable\n".into()),
            }
        }
        (Ok(Ok(())), Ok(Route::NotFound)) => (
            "404 Not Found",
            "served: GET /metrics, GET /healthz\n".into(),
        ),
        (Ok(Ok(())), Err(why)) => ("400 Bad Request", format!("{why}\n")),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that stops reading must not hold its slot forever.
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn snapshot(service: &ApiService) -> String {
    let status = service.get_status(Request::new(StatusRequest {})).await;
    let tunnels = service
        .list_tunnels(Request::new(ListTunnelsRequest {}))
        .await;
    let flows = service
        .list_flows(Request::new(ListFlowsRequest::default()))
        .await;
    match (status, tunnels, flows) {
        (Ok(s), Ok(t), Ok(f)) => render(s.get_ref(), t.get_ref(), f.get_ref()),
        _ => "# the daemon's state could not be read\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingest_proto::v1::{Flow, Tunnel};

    fn sample() -> (Status, TunnelList, FlowList) {
        let status = Status {
            version: "0.1.0".into(),
            uptime_ms: 61_500,
            frr_state: "connected".into(),
            joins: 3,
            polls: 240,
            join_source: "pimd:/run/frr/pimd.vty".into(),
            tun_name: "amt0".into(),
            dataplane: "kernel".into(),
            dataplane_requested: "auto".into(),
            counters: [
                ("tunnels_opened".to_string(), 2),
                ("odd-name".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            ..Status::default()
        };
        let tunnels = TunnelList {
            tunnels: vec![Tunnel {
                relay: "192.0.2.10:2268".into(),
                protocol_state: "up".into(),
                channels: vec!["(198.51.100.4,232.1.1.1)".into()],
                packets: 30_000,
                bytes: 39_480_000,
                drop_reasons: [("not-subscribed".to_string(), 7)].into_iter().collect(),
                dataplane: "kernel via eth0".into(),
                kernel_packets: 29_000,
                kernel_passed: [("control".to_string(), 12)].into_iter().collect(),
                ..Tunnel::default()
            }],
        };
        let flows = FlowList {
            flows: vec![
                Flow {
                    state: "forwarding".into(),
                    admitted: true,
                    ..Flow::default()
                },
                Flow {
                    state: "forwarding".into(),
                    admitted: true,
                    ..Flow::default()
                },
                Flow {
                    state: "not-served".into(),
                    ..Flow::default()
                },
            ],
            limit_bps: 10_000_000,
            admitted_bps: 5_000_000,
        };
        (status, tunnels, flows)
    }

    #[test]
    fn renders_the_figures() {
        let (s, t, f) = sample();
        let text = render(&s, &t, &f);
        for line in [
            "frr_ingest_info{version=\"0.1.0\",join_source=\"pimd:/run/frr/pimd.vty\",tun=\"amt0\"} 1",
            "frr_ingest_uptime_seconds 61",
            "frr_ingest_frr_connected 1",
            "frr_ingest_joins 3",
            "frr_ingest_polls_total 240",
            "frr_ingest_tunnels_opened_total 2",
            "frr_ingest_odd_name_total 1",
            "frr_ingest_tunnels 1",
            "frr_ingest_tunnel_up{relay=\"192.0.2.10:2268\"} 1",
            "frr_ingest_tunnel_channels{relay=\"192.0.2.10:2268\"} 1",
            "frr_ingest_tunnel_packets_total{relay=\"192.0.2.10:2268\"} 30000",
            "frr_ingest_tunnel_bytes_total{relay=\"192.0.2.10:2268\"} 39480000",
            "frr_ingest_tunnel_drops_total{relay=\"192.0.2.10:2268\",reason=\"not-subscribed\"} 7",
            "frr_ingest_dataplane_info{running=\"kernel\",requested=\"auto\"} 1",
            "frr_ingest_tunnel_kernel_packets_total{relay=\"192.0.2.10:2268\"} 29000",
            "frr_ingest_tunnel_kernel_passed_total{relay=\"192.0.2.10:2268\",reason=\"control\"} 12",
            "frr_ingest_flows{state=\"forwarding\"} 2",
            "frr_ingest_flows{state=\"not-served\"} 1",
            "frr_ingest_flows_admitted 2",
            "frr_ingest_bandwidth_limit_bps 10000000",
            "frr_ingest_admitted_bps 5000000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    /// Every line is a comment or `name{labels} value`, each metric has
    /// one HELP and one TYPE, and label values are escaped.
    #[test]
    fn exposition_format_is_well_formed() {
        let (s, mut t, f) = sample();
        t.tunnels[0].relay = "we\"ird\\relay\nname".into();
        let text = render(&s, &t, &f);
        let mut helps = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "two HELP for {name}");
                continue;
            }
            if line.starts_with("# TYPE ") {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(helps.contains(name), "sample before its HELP: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
        assert!(
            text.contains("relay=\"we\\\"ird\\\\relay\\nname\""),
            "{text}"
        );
    }

    #[test]
    fn request_line() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Metrics)
        );
        assert_eq!(route(b"GET /?x=1 HTTP/1.0\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Ok(Route::Health));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Ok(Route::NotFound)
        );
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Ok(Route::NotFound));
        assert!(route(b"").is_err());
        assert!(route(b"\xff\xfe\r\n\r\n").is_err());
    }

    proptest::proptest! {
        /// Whatever a client sends, routing it answers without panicking.
        #[test]
        fn any_request_head_is_routed(head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = route(&head);
        }

        #[test]
        fn request_lines_with_any_target(target in "[ -~]{0,80}") {
            let head = format!("GET {target} HTTP/1.1\r\n\r\n");
            let routed = route(head.as_bytes());
            proptest::prop_assert!(routed.is_ok());
        }
    }

    #[test]
    fn health_follows_the_join_source() {
        let with = |state: &str| {
            health(&Status {
                frr_state: state.into(),
                ..Status::default()
            })
        };
        assert!(with("connected").0);
        assert!(with("joinfile: /etc/joins.csv").0);
        assert!(!with("connecting").0);
        assert!(!with("unreachable: connect /run/frr/pimd.vty: No such file").0);
        let (ok, text) =
            with("joinfile: /x (unreadable: permission denied; keeping the last good set)");
        assert!(!ok);
        assert!(text.contains("permission denied"), "{text}");
    }
}
