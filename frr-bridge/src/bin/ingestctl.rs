//! ingestctl: the command-line client of frr-ingestd. See `ingestctl --help`.

use ingest_types::SourceGroup;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use frr_bridge::client::{ApiAddress, connect};
use ingest_proto::v1::*;
use serde_json::json;

/// Command-line client of frr-ingestd's management API.
///
/// Shows what the sidecar sees and does: the (S,G) joins learned from pimd,
/// daemon status, AMT tunnels and per-flow policy decisions. Every `show`
/// has --json for scripts. Examples:
///
///   ingestctl show joins
///   ingestctl --api unix:/run/frr-ingest/api.sock show status --json
///   ingestctl inject --source 198.51.100.4 --group 232.1.1.1 --count 1000 --rate 500
///
/// `driad` and `dorms` need no daemon: they make the daemon's DNS and HTTPS
/// lookups themselves (uncached) and explain every step:
///
///   ingestctl driad 198.51.100.4 --server 192.0.2.53
///   ingestctl dorms 198.51.100.4 232.1.1.1 --server 192.0.2.53 --ca ca.pem --json
///
/// Exit codes: 0 success, 1 failure (daemon unreachable, lookup failed).
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// API address: unix:/path/api.sock or tcp:127.0.0.1:PORT.
    #[arg(
        long,
        env = "FRR_INGEST_API",
        default_value = "unix:/run/frr-ingest/api.sock"
    )]
    api: ApiAddress,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show state: joins, status, tunnels, flows.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Stream join changes as they happen (a snapshot first).
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Write test packets for (S,G) into the ingest TUN through the daemon,
    /// as if they had come through a tunnel. Payload: 8-byte sequence
    /// number + 8-byte send time (ns), the format `mcrx` checks.
    Inject {
        #[arg(long)]
        source: String,
        #[arg(long)]
        group: String,
        /// Number of packets.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Packets per second (0 = as fast as possible).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// UDP payload bytes (at least 16).
        #[arg(long, default_value_t = 100)]
        size: u32,
        /// UDP destination port.
        #[arg(long, default_value_t = 5001)]
        port: u32,
        /// IP TTL / hop limit.
        #[arg(long, default_value_t = 16)]
        ttl: u32,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        first_sequence: u64,
        #[arg(long)]
        json: bool,
    },
    /// Which AMT relays the AMTRELAY records (RFC 8777) of SOURCE name, in
    /// the order the daemon would try them, and why any is skipped.
    Driad {
        source: std::net::IpAddr,
        /// DNS server (repeatable; default: /etc/resolv.conf).
        #[arg(long, value_name = "ADDR[:PORT]")]
        server: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The bitrate the DORMS server of SOURCE declares for (SOURCE,GROUP):
    /// SRV lookup, host-meta, metadata fetch, each step explained.
    Dorms {
        source: std::net::IpAddr,
        group: std::net::IpAddr,
        /// DNS server (repeatable; default: /etc/resolv.conf).
        #[arg(long, value_name = "ADDR[:PORT]")]
        server: Vec<String>,
        /// CA certificates (PEM) to trust instead of the system roots.
        #[arg(long, value_name = "PEM")]
        ca: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Prints a troubleshooting report; fails when the lookup did.
fn print_report((text, value): (String, serde_json::Value), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{text}");
    }
    if value.get("ok").and_then(|v| v.as_bool()) == Some(false) {
        anyhow::bail!("lookup failed");
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Show {
    /// The (S,G)s pimd wants, the downstream interfaces, what the sidecar does.
    Joins {
        #[arg(long)]
        json: bool,
    },
    /// Daemon health: FRR connection, TUN, counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// AMT tunnels (one per relay).
    Tunnels {
        #[arg(long)]
        json: bool,
    },
    /// Per-flow policy: population, bitrate, admission, relay, relay race.
    /// The filters are applied by the daemon (all that are given must
    /// match), so a large flow table need not be pulled whole.
    Flows {
        #[arg(long)]
        json: bool,
        /// Only this source address.
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// Only this group address.
        #[arg(long)]
        group: Option<std::net::IpAddr>,
        /// Only flows on (or racing) this relay: ADDR or ADDR:PORT.
        #[arg(long)]
        relay: Option<String>,
        /// Only flows in this state: forwarding, waiting-tunnel, racing,
        /// not-served, error.
        #[arg(long)]
        state: Option<String>,
    },
}

fn uptime(since_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(since_ms) / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn join_json(j: &Join) -> serde_json::Value {
    json!({
        "source": j.source, "group": j.group, "interfaces": j.interfaces,
        "population": j.interfaces.len(), "state": j.state, "reason": j.reason,
        "relay": j.relay, "since_unix_ms": j.since_unix_ms,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingestctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Driad {
            source,
            server,
            json,
        } => {
            return print_report(
                frr_bridge::policy_cli::driad_report(source, server).await,
                json,
            );
        }
        Command::Dorms {
            source,
            group,
            server,
            ca,
            json,
        } => {
            let channel = SourceGroup::new(source, group)
                .with_context(|| format!("SOURCE {source} GROUP {group}"))?;
            return print_report(
                frr_bridge::policy_cli::dorms_report(channel, server, ca).await,
                json,
            );
        }
        _ => {}
    }
    let mut c = connect(&cli.api).await?;
    match cli.command {
        Command::Show {
            what: Show::Joins { json },
        } => {
            let list = c
                .list_joins(ListJoinsRequest {})
                .await
                .context("ListJoins")?
                .into_inner();
            if json {
                let v: Vec<_> = list.joins.iter().map(join_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<40} {:<40} {:<16} {:<9} {:<18} Interfaces",
                    "Source", "Group", "State", "Uptime", "Relay"
                );
                for j in &list.joins {
                    println!(
                        "{:<40} {:<40} {:<16} {:<9} {:<18} {}",
                        j.source,
                        j.group,
                        j.state,
                        uptime(j.since_unix_ms),
                        if j.relay.is_empty() { "-" } else { &j.relay },
                        j.interfaces.join(",")
                    );
                }
                println!("{} joins", list.joins.len());
            }
        }
        Command::Show {
            what: Show::Status { json },
        } => {
            let s = c
                .get_status(StatusRequest {})
                .await
                .context("GetStatus")?
                .into_inner();
            if json {
                let mut counters: Vec<_> = s.counters.iter().collect();
                counters.sort();
                let v = json!({
                    "version": s.version, "uptime_ms": s.uptime_ms, "frr_state": s.frr_state,
                    "frr_vty_dir": s.frr_vty_dir, "frr_netns": s.frr_netns, "tun_name": s.tun_name,
                    "tun_local": s.tun_local, "tun_neighbor": s.tun_neighbor, "joins": s.joins,
                    "served_sources": s.served_sources, "polls": s.polls, "poll_errors": s.poll_errors,
                    "last_poll_error": s.last_poll_error, "last_poll_age_ms": s.last_poll_age_ms,
                    "pim_hellos_sent": s.pim_hellos_sent, "pim_joinprunes_seen": s.pim_joinprunes_seen,
                    "tunnels": s.tunnels, "join_source": s.join_source,
                    "pim6d_state": s.pim6d_state, "tun_local6": s.tun_local6,
                    "tun_neighbor6": s.tun_neighbor6, "ipv4_rpf": s.ipv4_rpf,
                    "race_winners": s.race_winners,
                    "dataplane": s.dataplane, "dataplane_requested": s.dataplane_requested,
                    "dataplane_reason": s.dataplane_reason,
                    "dataplane_interfaces": s.dataplane_interfaces,
                    "counters": counters.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "frr-ingestd {} up {}",
                    s.version,
                    uptime_ms_text(s.uptime_ms)
                );
                println!("  FRR:        {} ({})", s.frr_state, s.join_source);
                if !s.pim6d_state.is_empty() {
                    println!("  pim6d:      {}", s.pim6d_state);
                }
                if !s.frr_netns.is_empty() {
                    println!("  FRR netns:  {}", s.frr_netns);
                }
                println!(
                    "  TUN:        {} {} peer {}{} (IPv4 RPF: {})",
                    s.tun_name,
                    s.tun_local,
                    s.tun_neighbor,
                    if s.tun_local6.is_empty() {
                        String::new()
                    } else {
                        format!(", {} peer {}", s.tun_local6, s.tun_neighbor6)
                    },
                    s.ipv4_rpf
                );
                println!(
                    "  Joins:      {} ({} sources routed into the TUN)",
                    s.joins, s.served_sources
                );
                println!("  Tunnels:    {}", s.tunnels);
                if !s.dataplane.is_empty() {
                    println!(
                        "  Data plane: {} (asked: {}; {})",
                        s.dataplane, s.dataplane_requested, s.dataplane_reason
                    );
                    for iface in &s.dataplane_interfaces {
                        println!("              attached to {iface}");
                    }
                }
                println!(
                    "  Polls:      {} ({} failed, last good {} ms ago){}",
                    s.polls,
                    s.poll_errors,
                    s.last_poll_age_ms,
                    if s.last_poll_error.is_empty() {
                        String::new()
                    } else {
                        format!("; last error: {}", s.last_poll_error)
                    }
                );
                println!(
                    "  PIM:        {} Hellos sent, {} Join/Prunes seen",
                    s.pim_hellos_sent, s.pim_joinprunes_seen
                );
                let mut counters: Vec<_> = s.counters.iter().collect();
                counters.sort();
                for (k, v) in counters {
                    println!("  {k:<22} {v}");
                }
            }
        }
        Command::Show {
            what: Show::Tunnels { json },
        } => {
            let t = c
                .list_tunnels(ListTunnelsRequest {})
                .await
                .context("ListTunnels")?
                .into_inner();
            if json {
                let v: Vec<_> = t
                    .tunnels
                    .iter()
                    .map(|t| {
                        json!({"relay": t.relay, "state": t.state, "channels": t.channels, "packets": t.packets,
                               "bytes": t.bytes, "drops": t.drops, "drop_reasons": t.drop_reasons,
                               "last_query_age_ms": t.last_query_age_ms, "next_request_in_ms": t.next_request_in_ms,
                               "local": t.local, "linger_remaining_ms": t.linger_remaining_ms,
                               "protocol_state": t.protocol_state, "relay_address": t.relay_address,
                               "discoveries_sent": t.discoveries_sent, "requests_sent": t.requests_sent,
                               "queries_received": t.queries_received, "updates_sent": t.updates_sent,
                               "teardowns_sent": t.teardowns_sent, "relay_losses": t.relay_losses,
                               "stall_requests": t.stall_requests, "dataplane": t.dataplane,
                               "kernel_packets": t.kernel_packets, "kernel_bytes": t.kernel_bytes,
                               "kernel_passed": t.kernel_passed})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<28} {:<14} {:>8} {:>12} {:>14} {:>8} {:>10} {:>10}",
                    "Relay",
                    "State",
                    "Channels",
                    "Packets",
                    "Bytes",
                    "Drops",
                    "LastQuery",
                    "NextReq"
                );
                for t in &t.tunnels {
                    println!(
                        "{:<28} {:<14} {:>8} {:>12} {:>14} {:>8} {:>9}s {:>9}s",
                        t.relay,
                        t.state,
                        t.channels.len(),
                        t.packets,
                        t.bytes,
                        t.drops,
                        t.last_query_age_ms / 1000,
                        t.next_request_in_ms / 1000
                    );
                    if !t.dataplane.is_empty() {
                        println!("    data plane: {}{}", t.dataplane, kernel_text(t));
                    }
                    for ch in &t.channels {
                        println!("    {ch}");
                    }
                }
                println!("{} tunnels", t.tunnels.len());
            }
        }
        Command::Show {
            what:
                Show::Flows {
                    json,
                    source,
                    group,
                    relay,
                    state,
                },
        } => {
            let text = |a: Option<std::net::IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
            let f = c
                .list_flows(ListFlowsRequest {
                    source: text(source),
                    group: text(group),
                    relay: relay.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                })
                .await
                .context("ListFlows")?
                .into_inner();
            if json {
                let v = json!({
                    "limit_bps": f.limit_bps, "admitted_bps": f.admitted_bps,
                    "flows": f.flows.iter().map(|x| json!({
                        "source": x.source, "group": x.group, "population": x.population,
                        "bitrate": x.bitrate, "bitrate_origin": x.bitrate_origin, "admitted": x.admitted,
                        "admission_reason": x.admission_reason, "relay": x.relay, "relay_origin": x.relay_origin,
                        "state": x.state, "race": x.race,
                        "candidates": x.candidates.iter().map(|c| json!({"relay": c.relay, "precedence": c.precedence,
                            "discovery_optional": c.discovery_optional, "outcome": c.outcome})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rate = |bps: u64| {
                    if bps == 0 {
                        "-".to_string()
                    } else {
                        ingest_policy::text::rate_text(bps)
                    }
                };
                println!(
                    "{:<18} {:<16} {:>4} {:>9} {:<8} {:<14} {:<20} Reason",
                    "Source", "Group", "Pop", "Bitrate", "Admitted", "State", "Relay"
                );
                for x in &f.flows {
                    println!(
                        "{:<18} {:<16} {:>4} {:>9} {:<8} {:<14} {:<20} {}",
                        x.source,
                        x.group,
                        x.population,
                        rate(x.bitrate),
                        if x.admitted { "yes" } else { "no" },
                        x.state,
                        if x.relay.is_empty() { "-" } else { &x.relay },
                        x.admission_reason
                    );
                    if !x.race.is_empty() && x.state != "racing" {
                        println!("{:<18} relay race: {}", "", x.race);
                    }
                }
                let limit = if f.limit_bps == 0 {
                    "no limit".to_string()
                } else {
                    format!("limit {}", rate(f.limit_bps))
                };
                println!(
                    "{} flows; admitted {} ({limit})",
                    f.flows.len(),
                    rate(f.admitted_bps)
                );
            }
        }
        Command::Watch { json } => {
            let mut s = c
                .watch_joins(WatchJoinsRequest {})
                .await
                .context("WatchJoins")?
                .into_inner();
            while let Some(ev) = s.message().await? {
                let kind = match join_event::Kind::try_from(ev.kind) {
                    Ok(join_event::Kind::Added) => "added",
                    Ok(join_event::Kind::Changed) => "changed",
                    Ok(join_event::Kind::Removed) => "removed",
                    _ => "unknown",
                };
                let Some(j) = ev.join else { continue };
                if json {
                    println!(
                        "{}",
                        json!({"event": kind, "at_unix_ms": ev.at_unix_ms, "join": join_json(&j)})
                    );
                } else {
                    println!(
                        "{kind:<8} ({},{}) {} [{}] {}",
                        j.source,
                        j.group,
                        j.state,
                        j.interfaces.join(","),
                        j.reason
                    );
                }
            }
        }
        // Answered above without the daemon.
        Command::Driad { .. } | Command::Dorms { .. } => {}
        Command::Inject {
            source,
            group,
            count,
            rate,
            size,
            port,
            ttl,
            first_sequence,
            json,
        } => {
            let r = c
                .inject(InjectRequest {
                    source,
                    group,
                    count,
                    rate,
                    payload_size: size,
                    dst_port: port,
                    src_port: 0,
                    ttl,
                    first_sequence,
                })
                .await
                .context("Inject")?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"sent": r.sent, "failed": r.failed, "elapsed_ms": r.elapsed_ms})
                );
            } else {
                println!(
                    "sent {} packets ({} failed) in {} ms",
                    r.sent, r.failed, r.elapsed_ms
                );
            }
            if r.failed > 0 {
                anyhow::bail!("{} packets could not be written to the TUN", r.failed);
            }
        }
    }
    Ok(())
}

fn uptime_ms_text(ms: u64) -> String {
    let d = Duration::from_millis(ms).as_secs();
    format!("{:02}:{:02}:{:02}", d / 3600, (d / 60) % 60, d % 60)
}

/// The kernel data plane's share of a tunnel's traffic, for people:
/// "; kernel delivered 1200 packets, left 8 to the socket (control 8)".
fn kernel_text(t: &ingest_proto::v1::Tunnel) -> String {
    if !t.dataplane.starts_with("kernel") {
        return String::new();
    }
    let mut passed: Vec<_> = t.kernel_passed.iter().collect();
    passed.sort();
    let total: u64 = passed.iter().map(|(_, n)| **n).sum();
    let reasons: Vec<String> = passed.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!(
        "; kernel delivered {} packets, left {total} to the socket{}",
        t.kernel_packets,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    )
}
