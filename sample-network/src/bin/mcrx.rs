//! mcrx: join SSM (S,G) channels and report what arrives, as JSON.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use ingest_types::SourceGroup;
use sample_network::channel::ChannelCounts;
use sample_network::cli::ChannelArgs;
use sample_network::iface::Interface;
use sample_network::{
    LatencyHistogram, LatencySummary, Probe, SequenceSummary, SequenceTracker, mcast, signal,
};

/// Join SSM channels with IGMPv3/MLDv2 source-specific membership and report
/// what arrives.
///
/// Each datagram's payload is expected to start with an 8-byte big-endian
/// sequence number and an 8-byte big-endian send time (ns since the Unix
/// epoch, 0 = none), as `mcsend` writes it. Per channel, mcrx counts packets
/// and bytes, missing sequence numbers, duplicates and late (reordered)
/// packets, the time from the join to the first packet, and one-way latency
/// when the send time is present (sender and receiver share a clock in the lab).
///
/// It stops at --duration, --count, --until-idle or SIGINT/SIGTERM, whichever
/// comes first, leaves the channels and prints one JSON summary line on stdout
/// ("event":"summary"). With --progress, a JSON line ("event":"progress") is
/// printed every --progress-interval seconds before it, with the wall-clock
/// time ("unix_ms") and, with --progress-channels, every channel's running
/// totals ("channels": [{"channel":"S,G","packets":N,"missing":M}], missing
/// as in the summary) so a script can tell when each channel stopped and
/// came back (sample-network/tests/lab_soak.rs does).
///
/// Example: mcrx --iface rcv0 --channel 198.51.100.4,232.1.1.1 --duration 10
/// Example: mcrx -c 198.51.100.4,232.1.1.1 --groups 100 --until-idle 3
#[derive(Debug, Parser)]
#[command(name = "mcrx", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    channels: ChannelArgs,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Stop after this many packets in total.
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Stop when no packet arrived for this long, counted from the first packet.
    #[arg(long, value_name = "SECS")]
    until_idle: Option<f64>,

    /// Print a JSON progress line every --progress-interval seconds.
    #[arg(long)]
    progress: bool,

    /// Seconds between progress lines (with --progress).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    progress_interval: f64,

    /// Add each channel's running packet and missing counts to the progress
    /// lines (implies --progress).
    #[arg(long)]
    progress_channels: bool,

    /// Socket receive buffer per channel in bytes (SO_RCVBUFFORCE as root).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    recv_buffer: usize,
}

struct ChannelState {
    channel: SourceGroup,
    socket: UdpSocket,
    joined_at: Instant,
    packets: u64,
    bytes: u64,
    first_packet: Option<Instant>,
    last_packet: Option<Instant>,
    undecodable: u64,
    foreign_source: u64,
    sequence: SequenceTracker,
    latency: LatencyHistogram,
}

#[derive(Serialize)]
struct ChannelReport {
    #[serde(flatten)]
    counts: ChannelCounts,
    /// Milliseconds from the join to the first packet.
    first_packet_ms: Option<f64>,
    /// Milliseconds from the join to the last packet.
    last_packet_ms: Option<f64>,
    undecodable: u64,
    foreign_source: u64,
    sequence: SequenceSummary,
    latency: Option<LatencySummary>,
}

#[derive(Serialize)]
struct Summary<'a> {
    event: &'static str,
    stop_reason: &'a str,
    interface: Option<&'a str>,
    port: u16,
    elapsed_s: f64,
    channels_joined: usize,
    channels_receiving: usize,
    packets: u64,
    bytes: u64,
    missing: u64,
    duplicates: u64,
    reordered: u64,
    first_packet_ms: Option<f64>,
    channels: Vec<ChannelReport>,
}

#[derive(Serialize)]
struct Progress {
    event: &'static str,
    elapsed_s: f64,
    /// Wall-clock time of this line, ms since the Unix epoch (to line it up
    /// with events other programs record).
    unix_ms: u64,
    packets: u64,
    bytes: u64,
    /// Packets per second over the last interval.
    pps: f64,
    channels_receiving: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<ChannelProgress>>,
}

/// One channel's running totals in a progress line.
#[derive(Serialize)]
struct ChannelProgress {
    channel: String,
    packets: u64,
    /// Sequence numbers between the lowest and highest received that never
    /// arrived (so far).
    missing: u64,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.progress |= args.progress_channels;
    if !(args.progress_interval.is_finite() && args.progress_interval >= 0.01) {
        bail!(
            "--progress-interval {}: give at least 0.01 seconds",
            args.progress_interval
        );
    }
    signal::install_stop_handler().context("installing signal handlers")?;
    let iface = args.channels.interface()?;
    let mut channels = args.channels.expanded()?;
    channels.sort();
    channels.dedup();

    let mut states = Vec::with_capacity(channels.len());
    for channel in channels {
        let socket = mcast::open_receiver(
            &channel,
            iface.as_ref(),
            args.channels.port,
            args.recv_buffer,
        )
        .with_context(|| format!("joining {channel}"))?;
        states.push(ChannelState {
            channel,
            socket: socket.into(),
            joined_at: Instant::now(),
            packets: 0,
            bytes: 0,
            first_packet: None,
            last_packet: None,
            undecodable: 0,
            foreign_source: 0,
            sequence: SequenceTracker::new(),
            latency: LatencyHistogram::new(),
        });
    }
    eprintln!(
        "mcrx: joined {} channel(s) on {} port {}",
        states.len(),
        iface
            .as_ref()
            .map_or("(kernel's choice)", |i| i.name.as_str()),
        args.channels.port
    );

    let start = Instant::now();
    let stop_reason = receive(&args, &mut states, start)?;
    for state in &states {
        // Closing leaves too; an explicit leave makes the IGMP/MLD report immediate.
        let socket = socket2::SockRef::from(&state.socket);
        mcast::leave_ssm(&socket, &state.channel, iface.as_ref()).ok();
    }
    let summary = summarize(
        &args,
        iface.as_ref(),
        &states,
        start.elapsed(),
        &stop_reason,
    );
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &summary)?;
    writeln!(out)?;
    Ok(())
}

/// Receives until a stop condition holds; returns its name.
fn receive(args: &Args, states: &mut [ChannelState], start: Instant) -> Result<String> {
    let deadline = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let idle = args.until_idle.map(|d| Duration::from_secs_f64(d.max(0.0)));
    let mut fds: Vec<libc::pollfd> = states
        .iter()
        .map(|s| libc::pollfd {
            fd: s.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = vec![0u8; 65536];
    let mut total_packets = 0u64;
    let mut last_any: Option<Instant> = None;
    let progress_interval = Duration::from_secs_f64(args.progress_interval);
    let mut next_progress = start + progress_interval;
    let mut progress_packets = 0u64;
    let mut progress_at = start;

    loop {
        let now = Instant::now();
        if signal::stop_requested() {
            return Ok(signal::stop_signal_name().unwrap_or("signal").to_owned());
        }
        if deadline.is_some_and(|d| now >= d) {
            return Ok("duration".to_owned());
        }
        if args.count.is_some_and(|n| total_packets >= n) {
            return Ok("count".to_owned());
        }
        if let (Some(idle), Some(last)) = (idle, last_any)
            && now.duration_since(last) >= idle
        {
            return Ok("idle".to_owned());
        }
        if args.progress && now >= next_progress {
            let elapsed = now.duration_since(start).as_secs_f64();
            let interval = now.duration_since(progress_at).as_secs_f64().max(1e-3);
            let line = Progress {
                event: "progress",
                elapsed_s: elapsed,
                unix_ms: unix_ns_now() / 1_000_000,
                packets: total_packets,
                bytes: states.iter().map(|s| s.bytes).sum(),
                pps: (total_packets - progress_packets) as f64 / interval,
                channels_receiving: states.iter().filter(|s| s.packets > 0).count(),
                channels: args.progress_channels.then(|| {
                    states
                        .iter()
                        .map(|s| ChannelProgress {
                            channel: format!("{},{}", s.channel.source, s.channel.group),
                            packets: s.packets,
                            missing: s.sequence.summary().missing,
                        })
                        .collect()
                }),
            };
            progress_packets = total_packets;
            progress_at = now;
            next_progress += progress_interval;
            // After a stall, do not print a burst of lines to catch up.
            if next_progress < now {
                next_progress = now + progress_interval;
            }
            let mut out = io::stdout().lock();
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
            out.flush()?;
        }

        let mut wait = Duration::from_millis(100);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if let (Some(idle), Some(last)) = (idle, last_any) {
            wait = wait.min((last + idle).saturating_duration_since(now));
        }
        if args.progress {
            wait = wait.min(next_progress.saturating_duration_since(now));
        }
        let timeout_ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(100);
        // SAFETY: fds is a valid, exclusively borrowed array of pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {err}");
        }
        for (fd, state) in fds.iter_mut().zip(states.iter_mut()) {
            if fd.revents == 0 {
                continue;
            }
            fd.revents = 0;
            // Bounded drain so one busy channel cannot starve the stop checks.
            for _ in 0..4096 {
                if args.count.is_some_and(|n| total_packets >= n) {
                    break;
                }
                match state.socket.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        let received = Instant::now();
                        let payload = buf.get(..len).unwrap_or_default();
                        record(state, payload, from, received, unix_ns_now());
                        total_packets += 1;
                        last_any = Some(received);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                    Err(e) => bail!("receiving on {}: {e}", state.channel),
                }
            }
        }
    }
}

fn record(
    state: &mut ChannelState,
    payload: &[u8],
    from: SocketAddr,
    received: Instant,
    received_unix_ns: u64,
) {
    if from.ip() != state.channel.source {
        state.foreign_source += 1;
        return;
    }
    state.packets += 1;
    state.bytes += payload.len() as u64;
    state.first_packet.get_or_insert(received);
    state.last_packet = Some(received);
    match Probe::decode(payload) {
        Ok(probe) => {
            state.sequence.observe(probe.sequence);
            if let Some(sent) = probe.sent_unix_ns {
                state.latency.record_times(sent, received_unix_ns);
            }
        }
        Err(_) => state.undecodable += 1,
    }
}

fn unix_ns_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ms_since(from: Instant, to: Option<Instant>) -> Option<f64> {
    to.map(|t| t.duration_since(from).as_secs_f64() * 1000.0)
}

fn summarize<'a>(
    args: &Args,
    iface: Option<&'a Interface>,
    states: &[ChannelState],
    elapsed: Duration,
    stop_reason: &'a str,
) -> Summary<'a> {
    let channels: Vec<ChannelReport> = states
        .iter()
        .map(|s| ChannelReport {
            counts: ChannelCounts::new(&s.channel, s.packets, s.bytes),
            first_packet_ms: ms_since(s.joined_at, s.first_packet),
            last_packet_ms: ms_since(s.joined_at, s.last_packet),
            undecodable: s.undecodable,
            foreign_source: s.foreign_source,
            sequence: s.sequence.summary(),
            latency: s.latency.summary(),
        })
        .collect();
    Summary {
        event: "summary",
        stop_reason,
        interface: iface.map(|i| i.name.as_str()),
        port: args.channels.port,
        elapsed_s: elapsed.as_secs_f64(),
        channels_joined: channels.len(),
        channels_receiving: channels.iter().filter(|c| c.counts.packets > 0).count(),
        packets: channels.iter().map(|c| c.counts.packets).sum(),
        bytes: channels.iter().map(|c| c.counts.bytes).sum(),
        missing: channels.iter().map(|c| c.sequence.missing).sum(),
        duplicates: channels.iter().map(|c| c.sequence.duplicates).sum(),
        reordered: channels.iter().map(|c| c.sequence.reordered).sum(),
        first_packet_ms: channels
            .iter()
            .filter_map(|c| c.first_packet_ms)
            .min_by(f64::total_cmp),
        channels,
    }
}
