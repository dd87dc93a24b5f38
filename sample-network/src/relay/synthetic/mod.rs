//! Synthetic source (`--synthetic S,G`): generated Multicast Data for one
//! channel at a fixed rate, to benchmark a gateway's data path without a
//! native sender. Pure parts (datagram template, pacing) are sans-IO; the
//! batched `sendmmsg` is in [`BatchSender`].

mod pacer;
mod template;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ingest_types::SourceGroup;
use serde_json::json;

pub use pacer::Pacer;
pub use template::{BatchSender, DataTemplate, TemplateError, UDP_HEADER_LEN};

use super::listener::Listener;
use super::output::{event, print_line, unix_ms, unix_ns};

/// What `--synthetic*` asked for (checked by the command line).
#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    pub channel: SourceGroup,
    /// Packets per second (per gateway), at least 1.
    pub rate: u64,
    /// UDP payload bytes.
    pub payload_len: usize,
    /// UDP source and destination port.
    pub port: u16,
    /// Packets to send in all (None: until stopped).
    pub limit: Option<u64>,
    /// Wait after the subscription before sending.
    pub delay: Duration,
    /// The datagram for `channel`, `port` and `payload_len`.
    pub template: DataTemplate,
}

/// Packets per `sendmmsg` call of the synthetic source.
const SYNTHETIC_BATCH: usize = 64;
/// Shortest sleep between synthetic send rounds: at high rates a round
/// sends everything due, so rounds are ~1 ms apart (100 packets at 100k/s).
const SYNTHETIC_TICK: Duration = Duration::from_millis(1);
/// Backlog sent at once after a stall; older due packets are skipped.
const SYNTHETIC_MAX_BACKLOG: Duration = Duration::from_millis(100);

enum SyntheticPhase {
    /// No gateway has subscribed the channel yet.
    Waiting,
    Armed {
        start_at: Instant,
    },
    Sending,
    Done,
}

/// The `--synthetic` run: waits for a subscription, then sends at the
/// fixed rate until the limit (one run per process).
pub struct SyntheticRun {
    channel: SourceGroup,
    rate: u64,
    payload_len: usize,
    port: u16,
    limit: Option<u64>,
    delay: Duration,
    sender: BatchSender,
    phase: SyntheticPhase,
    pacer: Option<Pacer>,
    subscribed: bool,
    /// (listener, gateway) pairs of the current round.
    targets: Vec<(usize, SocketAddr)>,
    max_gateways: usize,
    datagrams: u64,
    send_errors: u64,
    would_block: u64,
    start: Option<Instant>,
    last_send: Option<Instant>,
}

impl SyntheticRun {
    pub fn new(options: SyntheticOptions) -> Self {
        Self {
            channel: options.channel,
            rate: options.rate.max(1),
            payload_len: options.payload_len,
            port: options.port,
            limit: options.limit,
            delay: options.delay,
            sender: BatchSender::new(options.template, SYNTHETIC_BATCH),
            phase: SyntheticPhase::Waiting,
            pacer: None,
            subscribed: false,
            targets: Vec::new(),
            max_gateways: 0,
            datagrams: 0,
            send_errors: 0,
            would_block: 0,
            start: None,
            last_send: None,
        }
    }

    /// The channel this run generates.
    pub fn channel(&self) -> SourceGroup {
        self.channel
    }

    /// Still sending (a stop now cuts the run short).
    pub fn is_sending(&self) -> bool {
        matches!(self.phase, SyntheticPhase::Sending)
    }

    pub fn set_subscribed(&mut self, subscribed: bool, now: Instant) {
        self.subscribed = subscribed;
        if subscribed && matches!(self.phase, SyntheticPhase::Waiting) {
            self.phase = SyntheticPhase::Armed {
                start_at: now + self.delay,
            };
            event(
                "synthetic_armed",
                json!({
                    "source": self.channel.source,
                    "group": self.channel.group,
                    "starts_in_s": self.delay.as_secs_f64(),
                }),
            );
        }
    }

    /// When the main loop must wake up for the next send round.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        match self.phase {
            SyntheticPhase::Armed { start_at } => Some(start_at),
            SyntheticPhase::Sending if self.subscribed => self
                .pacer
                .as_ref()
                .and_then(|p| p.next_due())
                .map(|t| t.max(now + SYNTHETIC_TICK)),
            _ => None,
        }
    }

    /// Sends everything due at `now` (batched) to every gateway of every
    /// listener subscribed to the channel; prints the summary when done.
    pub fn run(&mut self, now: Instant, listeners: &mut [Listener]) {
        self.start_when_due(now);
        if !matches!(self.phase, SyntheticPhase::Sending) {
            return;
        }
        while self.subscribed && self.send_round(now, listeners) {}
        if self.pacer.as_ref().is_some_and(Pacer::finished) {
            self.phase = SyntheticPhase::Done;
            print_line(&self.summary("limit"));
        }
    }

    /// Armed and the delay passed: start sending.
    fn start_when_due(&mut self, now: Instant) {
        let SyntheticPhase::Armed { start_at } = self.phase else {
            return;
        };
        if now < start_at {
            return;
        }
        self.phase = SyntheticPhase::Sending;
        self.start = Some(start_at);
        self.pacer = Some(Pacer::new(
            self.rate,
            start_at,
            self.limit,
            SYNTHETIC_MAX_BACKLOG,
        ));
        event(
            "synthetic_started",
            json!({
                "source": self.channel.source,
                "group": self.channel.group,
                "rate_pps": self.rate,
                "payload_bytes": self.payload_len,
                "limit": self.limit,
            }),
        );
    }

    /// Sends one batch of what is due; true when a full batch went out
    /// (more may be due).
    fn send_round(&mut self, now: Instant, listeners: &mut [Listener]) -> bool {
        let Some(pacer) = self.pacer.as_mut() else {
            return false;
        };
        let due = pacer.due(now);
        if due == 0 {
            return false;
        }
        let channel = self.channel;
        let packet_len = self.sender.packet_len();
        let count = (due as usize).min(self.sender.batch());
        self.targets.clear();
        for (index, listener) in listeners.iter_mut().enumerate() {
            let gateways = listener.relay.forward(channel, packet_len);
            self.targets.extend(gateways.iter().map(|gw| (index, *gw)));
        }
        if self.targets.is_empty() {
            return false;
        }
        self.max_gateways = self.max_gateways.max(self.targets.len());
        self.sender.stamp(pacer.taken(), count, unix_ns());
        // The sequence advances by what reached the first gateway; a
        // shortfall towards the others is counted as send errors.
        let mut advanced = 0;
        for (i, (index, gw)) in self.targets.iter().enumerate() {
            let listener = &listeners[*index];
            let sent = match self
                .sender
                .send(listener.fd(), listener.is_v6(), *gw, count)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    self.send_errors += 1;
                    0
                }
            };
            self.datagrams += sent as u64;
            if i == 0 {
                advanced = sent;
            } else {
                self.send_errors += count.saturating_sub(sent) as u64;
            }
        }
        // Count the rest of the batch for the relay's per-channel stats.
        for listener in listeners.iter_mut() {
            if listener.relay.wants(channel) {
                for _ in 1..advanced {
                    listener.relay.forward(channel, packet_len);
                }
            }
        }
        pacer.take(advanced as u64);
        if advanced > 0 {
            self.last_send = Some(now);
        }
        if advanced < count {
            // Socket buffer full: the rest stays due for the next round.
            self.would_block += 1;
            return false;
        }
        true
    }

    pub fn summary(&self, stopped_by: &str) -> serde_json::Value {
        let (sent, skipped) = self
            .pacer
            .as_ref()
            .map_or((0, 0), |p| (p.taken(), p.skipped()));
        let elapsed = match (self.start, self.last_send) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        json!({
            "kind": "synthetic_summary",
            "unix_ms": unix_ms(),
            "source": self.channel.source,
            "group": self.channel.group,
            "port": self.port,
            "rate_pps": self.rate,
            "payload_bytes": self.payload_len,
            "packet_bytes": self.sender.packet_len(),
            "datagram_bytes": self.sender.datagram_len(),
            "limit": self.limit,
            "sent": sent,
            "skipped": skipped,
            "datagrams": self.datagrams,
            "gateways": self.max_gateways,
            "send_errors": self.send_errors,
            "would_block_rounds": self.would_block,
            "elapsed_s": elapsed,
            "achieved_pps": if elapsed > 0.0 { (sent as f64 / elapsed).round() } else { 0.0 },
            "stopped_by": stopped_by,
        })
    }
}
