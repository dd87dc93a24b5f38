//! mcsend: send probe datagrams to SSM (S,G) channels at a steady rate.

use std::io::{self, Write};
use std::net::UdpSocket;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use ingest_types::SourceGroup;
use sample_network::channel::ChannelCounts;
use sample_network::cli::ChannelArgs;
use sample_network::{PAYLOAD_HEADER_LEN, Probe, mcast, signal};

/// Below this packet interval, send in batches once per tick instead of
/// sleeping per packet (sleep granularity is tens of microseconds).
const TICK: Duration = Duration::from_millis(1);
/// Never send more than this much of the schedule at once after a stall.
const MAX_CATCH_UP: Duration = Duration::from_millis(10);

/// Send UDP probe datagrams to SSM (S,G) channels at a steady rate.
///
/// Every datagram carries an 8-byte big-endian sequence number (per channel,
/// from 0), an 8-byte big-endian send time (ns since the Unix epoch) and zero
/// padding up to --size. The socket is bound to S, so S must be an address of
/// this host (or namespace). Channels are served round-robin; --rate and
/// --count are per channel. Pacing is computed from the start time, so the
/// average rate stays exact; above 1000 pps packets go out in batches once per
/// millisecond.
///
/// Stops at --duration, --count or SIGINT/SIGTERM and prints one JSON summary
/// line ("event":"summary") on stdout.
///
/// Example: mcsend -c 198.51.100.4,232.1.1.1 --rate 1000 --duration 5
/// Example: mcsend -c 198.51.100.4,232.1.1.1 --groups 100 --rate 10 --count 50
#[derive(Debug, Parser)]
#[command(name = "mcsend", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    channels: ChannelArgs,

    /// Packets per second per channel.
    #[arg(short, long, value_name = "PPS", default_value_t = 100.0)]
    rate: f64,

    /// UDP payload size in bytes (at least 16).
    #[arg(short, long, value_name = "BYTES", default_value_t = 64)]
    size: usize,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Stop after this many packets per channel.
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Multicast TTL / IPv6 hop limit.
    #[arg(long, default_value_t = 16)]
    ttl: u32,
}

struct Sender {
    channel: SourceGroup,
    socket: UdpSocket,
    next_sequence: u64,
    packets: u64,
    bytes: u64,
    errors: u64,
}

#[derive(Serialize)]
struct ChannelReport {
    #[serde(flatten)]
    counts: ChannelCounts,
    errors: u64,
    next_sequence: u64,
}

#[derive(Serialize)]
struct Summary {
    event: &'static str,
    stop_reason: String,
    elapsed_s: f64,
    rate_pps_per_channel: f64,
    achieved_pps: f64,
    size: usize,
    packets: u64,
    bytes: u64,
    send_errors: u64,
    first_error: Option<String>,
    channels: Vec<ChannelReport>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.size < PAYLOAD_HEADER_LEN || args.size > 65507 {
        bail!("--size must be between {PAYLOAD_HEADER_LEN} and 65507");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    signal::install_stop_handler().context("installing signal handlers")?;
    // One socket per channel.
    sample_network::raise_open_file_limit();
    let iface = args.channels.interface()?;
    let mut senders = Vec::new();
    for channel in args.channels.expanded()? {
        let socket = mcast::open_sender(&channel, iface.as_ref(), args.channels.port, args.ttl)
            .with_context(|| format!("opening a sender for {channel}"))?;
        senders.push(Sender {
            channel,
            socket: socket.into(),
            next_sequence: 0,
            packets: 0,
            bytes: 0,
            errors: 0,
        });
    }

    let start = Instant::now();
    let (stop_reason, first_error) = send(&args, &mut senders, start);
    let elapsed = start.elapsed();
    let packets: u64 = senders.iter().map(|s| s.packets).sum();
    let summary = Summary {
        event: "summary",
        stop_reason,
        elapsed_s: elapsed.as_secs_f64(),
        rate_pps_per_channel: args.rate,
        achieved_pps: packets as f64 / elapsed.as_secs_f64().max(1e-9),
        size: args.size,
        packets,
        bytes: senders.iter().map(|s| s.bytes).sum(),
        send_errors: senders.iter().map(|s| s.errors).sum(),
        first_error,
        channels: senders
            .iter()
            .map(|s| ChannelReport {
                counts: ChannelCounts::new(&s.channel, s.packets, s.bytes),
                errors: s.errors,
                next_sequence: s.next_sequence,
            })
            .collect(),
    };
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &summary)?;
    writeln!(out)?;
    Ok(())
}

/// Sends on schedule until a stop condition; returns its name and the first error.
fn send(args: &Args, senders: &mut [Sender], start: Instant) -> (String, Option<String>) {
    let channels = senders.len() as u64;
    let total_rate = args.rate * channels as f64;
    // Packet k is due at start + k / total_rate; a duration is a packet budget
    // too, so the last tick before the deadline is not lost.
    let count_limit = args.count.map(|c| c.saturating_mul(channels));
    let duration_limit = args
        .duration
        .map(|d| (d.max(0.0) * total_rate).ceil() as u64);
    let limit = match (count_limit, duration_limit) {
        (Some(c), Some(d)) => Some(c.min(d)),
        (c, d) => c.or(d),
    };
    let deadline = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let max_burst = ((total_rate * MAX_CATCH_UP.as_secs_f64()) as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / total_rate);
    let mut buf = vec![0u8; args.size];
    let mut scheduled = 0u64; // packets handed to the channels so far, all channels
    let mut first_error = None;

    loop {
        if signal::stop_requested() {
            let name = signal::stop_signal_name().unwrap_or("signal");
            return (name.to_owned(), first_error);
        }
        if limit.is_some_and(|l| scheduled >= l) {
            let reason = if count_limit.is_some_and(|c| scheduled >= c) {
                "count"
            } else {
                "duration"
            };
            return (reason.to_owned(), first_error);
        }
        let now = Instant::now();
        let elapsed = now.duration_since(start).as_secs_f64();
        let mut due = (elapsed * total_rate) as u64 + 1;
        due = due.min(scheduled + max_burst);
        if let Some(l) = limit {
            due = due.min(l);
        }
        while scheduled < due {
            // Round-robin: channel k % n; every channel advances its own sequence.
            let index = (scheduled % channels) as usize;
            scheduled += 1;
            let Some(sender) = senders.get_mut(index) else {
                continue;
            };
            let probe = Probe {
                sequence: sender.next_sequence,
                sent_unix_ns: Some(unix_ns_now()),
            };
            sender.next_sequence += 1;
            if probe.encode(&mut buf).is_err() {
                continue;
            }
            match sender.socket.send(&buf) {
                Ok(n) => {
                    sender.packets += 1;
                    sender.bytes += n as u64;
                }
                Err(e) => {
                    sender.errors += 1;
                    first_error.get_or_insert_with(|| format!("{}: {e}", sender.channel));
                }
            }
        }
        // Behind schedule at the deadline (CPU-bound): stop rather than run over.
        if deadline.is_some_and(|d| now >= d) {
            return ("duration".to_owned(), first_error);
        }
        let next_due = start + Duration::from_secs_f64(scheduled as f64 / total_rate);
        let now = Instant::now();
        let mut wake = if interval < TICK {
            now + TICK
        } else {
            next_due
        };
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        // A signal interrupts the sleep only at its end; ticks are short enough.
        std::thread::sleep(
            wake.saturating_duration_since(now)
                .min(Duration::from_millis(100)),
        );
    }
}

fn unix_ns_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
