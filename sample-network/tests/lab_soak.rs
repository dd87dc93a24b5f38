//! Fault soak (issue 11): steady traffic on many channels through
//! frr-ingestd with DRIAD, DORMS and CBACC, and faults injected on a seeded
//! random schedule; then what broke, how fast it came back, and what the
//! daemon leaked.
//!
//! ```text
//! sudo LAB_FRR=10 SOAK_DURATION_S=600 SOAK_SEED=42 \
//!     cargo test -p sample-network --test lab_soak -- --nocapture
//! ```
//! or `sudo LAB_FRR=10 sample-network/lab soak --duration 600 --seed 42`
//! (the same, through this test executable; `scripts/test-all` runs it for
//! 120 s with seed 1). Environment:
//!
//! - `SOAK_DURATION_S` (default 120): how long faults are injected. Before it:
//!   lab up and warm-up (every channel forwarding); after it: the last fault's
//!   recovery and 10 s of steady state. About 1.5 min more in all.
//! - `SOAK_SEED` (default: from the clock): the schedule's seed. It is printed
//!   first; the same seed, duration and `LAB_FRR` replay the same schedule
//!   (kinds, targets, durations, gaps; the policy engine gets it too).
//! - `SOAK_PPS` (default 5): packets per second per channel.
//! - `SOAK_GROUPS` (default 5): groups per IPv4 source; `SOAK_GROUPS6`
//!   (default 2) per IPv6 source.
//! - `SOAK_FAULTS` (default: every kind): only these fault kinds, by the
//!   names the report uses, comma-separated (e.g.
//!   `daemon_kill_restart,pim6d_restart` to replay one interaction).
//! - `SOAK_OUT` (default `<target>/soak`): where `report.json`, the
//!   receiver's progress lines and the daemon's logs are written, in a
//!   directory named after the seed.
//!
//! Channels: 198.51.100.4 (relay), .5 (relay2, CNAME + type 3), .8 (either,
//! equal precedence) and 203.0.113.4 (relay2) with 5 groups each from
//! 232.1.1.1: 20 IPv4 channels; with FRR 10 (pim6d) also 2001:db8:5100::4
//! (relay over IPv6), ::5 (relay2 by name) and ::8 (relay over IPv6 or relay2
//! over IPv4) on ff3e::8000:1..2: 6 IPv6 channels. The receiver is mcrx in
//! `rcv` (`--progress-channels`: each channel's running counts every second).
//!
//! Fault kinds (shuffled, each kind once per round, seeded): relay SIGKILL
//! and restart; relay silent (its egress dropped with netem 100 % loss);
//! loss on a relay's link; DNS stopped, answering SERVFAIL (zones made
//! unloadable), slow (netem delay); DORMS answering 500, garbage JSON, a slow
//! body (nginx config variants), stopped; pimd restart (pim6d restart too on
//! FRR 10); frr-ingestd SIGKILL and restart; loss and delay on the
//! internet link (netem on both ends of the border's uplink). Faults do not
//! overlap; each is checked to have taken effect (a DNS answer, an HTTP
//! status, a qdisc), so the soak cannot pass without faults.
//!
//! Which channels a fault touches: relay faults the channels whose flow used
//! that relay during the fault (`show flows`); pimd restart the IPv4
//! channels, pim6d restart the IPv6 ones; daemon kill and internet loss all;
//! DNS and DORMS faults none (tunnels are up, so they must do no damage).
//!
//! It asserts (and lists every failure before failing):
//! - every touched channel is forwarding again (two consecutive 1 s
//!   intervals with at least half the expected packets) at most 30 s after
//!   the fault cleared, unless another fault touching it started first (the
//!   later one then counts);
//! - no channel stops for 5 s or more where no fault touching it explains
//!   it (shorter stops of 2 s or more are counted in the report);
//! - at the end, vs. minute 2 (runs of 4 min or more) or vs. the middle of
//!   the run (shorter runs; the report says which): no more tunnels, routes
//!   (proto 240), TUN devices, lab namespaces, daemon sockets or file
//!   descriptors; the daemon's RSS grew by at most 5 % (against a sample of
//!   the same process: after a daemon restart, a sample 30 s or more after
//!   it, said so in the report);
//!
//! With LAB_TIME_SCALE (an emulated VM, scripts/labvm), the 30 s recovery
//! limit, the 5 s stop, the warm-up and settle waits are multiplied by it,
//! as every latency limit of the lab tests; the report gives the limits.
//! - the daemon's log: no message with the same cause (text and fields with
//!   numbers stripped, addresses kept) more than once in a second, and no
//!   panic;
//! - after the lab goes down: `lab leftovers` finds nothing (namespaces,
//!   processes, FRR tmp dirs of every pimd that ran), no amt0 in the root
//!   namespace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ingest_types::SourceGroup;
use serde_json::{Value, json};

/// A channel is forwarding again this long after the fault that touched it
/// (times LAB_TIME_SCALE: see [`recovery_limit_s`]).
const RECOVERY_LIMIT_S: f64 = 30.0;
/// Seconds between the receiver's progress lines.
const TICK_S: f64 = 1.0;
/// Seconds between the soak's looks at `show flows` (each is a process,
/// which costs on an emulated CPU).
const POLL_S: f64 = 3.0;
/// Seconds between samples of the daemon's resources.
const SAMPLE_S: f64 = 30.0;
/// An interval is good with at least this share of the expected packets.
const GOOD_SHARE: f64 = 0.5;
/// Runs at least this long get the minute-2 baseline (shorter: the middle
/// of the run).
const LONG_RUN_S: u64 = 240;
/// A stop of a channel no fault explains fails the soak from this long
/// (times LAB_TIME_SCALE); shorter ones (2 s or more) are reported only:
/// in the emulated VM a busy second (named starting, a daemon restarting)
/// holds the single CPU's packets back for several seconds.
const DAMAGE_MIN_S: f64 = 5.0;
/// The daemon's RSS is compared from this long after its start (allocator
/// warm-up: the first tunnels, lookups and caches).
const RSS_SETTLE_S: f64 = 30.0;

/// [`RECOVERY_LIMIT_S`] stretched by LAB_TIME_SCALE, like every latency limit
/// of the lab tests (an emulated VM is 6-25x slower).
fn recovery_limit_s() -> f64 {
    limit(Duration::from_secs_f64(RECOVERY_LIMIT_S)).as_secs_f64()
}
/// RSS may grow this much from the baseline to the end.
const RSS_GROWTH_LIMIT: f64 = 0.05;

const IPV4_BASES: [(&str, &str); 4] = [
    ("198.51.100.4", "232.1.1.1"),
    ("198.51.100.5", "232.1.1.1"),
    ("198.51.100.8", "232.1.1.1"),
    ("203.0.113.4", "232.1.1.1"),
];
const IPV6_BASES: [(&str, &str); 3] = [
    ("2001:db8:5100::4", "ff3e::8000:1"),
    ("2001:db8:5100::5", "ff3e::8000:1"),
    ("2001:db8:5100::8", "ff3e::8000:1"),
];
/// The lab's relay nodes and the addresses they serve AMT on.
const RELAYS: [(&str, [&str; 2]); 2] = [
    ("relay", ["192.0.2.10", "2001:db8:0:2::10"]),
    ("relay2", ["192.0.2.11", "2001:db8:0:2::11"]),
];
/// The reverse zones DRIAD and DORMS look in (made unloadable for SERVFAIL).
const REVERSE_ZONES: [&str; 3] = [
    "100.51.198.in-addr.arpa.zone",
    "113.0.203.in-addr.arpa.zone",
    "0.0.0.0.0.0.1.5.8.b.d.0.1.0.0.2.ip6.arpa.zone",
];

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------
// Parameters and the seeded schedule

struct Params {
    duration_s: u64,
    seed: u64,
    pps: u32,
    groups: u32,
    groups6: u32,
    out_dir: PathBuf,
}

impl Params {
    fn from_env() -> Params {
        fn number(name: &str, default: u64) -> u64 {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
                _ => default,
            }
        }
        let clock_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            % 1_000_000;
        let seed = number("SOAK_SEED", clock_seed);
        let duration_s = number("SOAK_DURATION_S", 120);
        assert!(
            duration_s >= 30,
            "SOAK_DURATION_S={duration_s}: give at least 30 seconds"
        );
        let pps = number("SOAK_PPS", 5) as u32;
        assert!(
            (2..=1000).contains(&pps),
            "SOAK_PPS={pps}: 2..1000 per channel"
        );
        let groups = number("SOAK_GROUPS", 5) as u32;
        assert!((1..=50).contains(&groups), "SOAK_GROUPS={groups}: 1..50");
        let groups6 = number("SOAK_GROUPS6", 2) as u32;
        assert!((1..=50).contains(&groups6), "SOAK_GROUPS6={groups6}: 1..50");
        let base = std::env::var_os("SOAK_OUT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir().parent().expect("target dir").join("soak"));
        let out_dir = base.join(format!("seed-{seed}-{duration_s}s"));
        Params {
            duration_s,
            seed,
            pps,
            groups,
            groups6,
            out_dir,
        }
    }
}

/// SplitMix64: small, seeded, the same on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RelayKill,
    RelaySilent,
    RelayLinkLoss,
    DnsStopped,
    DnsServfail,
    DnsSlow,
    Dorms500,
    DormsGarbage,
    DormsSlowBody,
    DormsStopped,
    PimdRestart,
    Pim6dRestart,
    DaemonKill,
    InternetLossDelay,
}

/// Every kind with the name the report and `SOAK_FAULTS` use, in the
/// order the schedule shuffles them (a seed replays only in this order).
const KINDS: &[(Kind, &str)] = &[
    (Kind::RelayKill, "relay_kill_restart"),
    (Kind::RelaySilent, "relay_silent"),
    (Kind::RelayLinkLoss, "relay_link_loss"),
    (Kind::DnsStopped, "dns_stopped"),
    (Kind::DnsServfail, "dns_servfail"),
    (Kind::DnsSlow, "dns_slow"),
    (Kind::Dorms500, "dorms_500"),
    (Kind::DormsGarbage, "dorms_garbage_json"),
    (Kind::DormsSlowBody, "dorms_slow_body"),
    (Kind::DormsStopped, "dorms_stopped"),
    (Kind::PimdRestart, "pimd_restart"),
    (Kind::DaemonKill, "daemon_kill_restart"),
    (Kind::InternetLossDelay, "internet_loss_delay"),
    (Kind::Pim6dRestart, "pim6d_restart"),
];

impl Kind {
    /// The kinds a lab can have: pim6d restarts need FRR 10.
    fn all(frr10: bool) -> Vec<Kind> {
        KINDS
            .iter()
            .map(|(kind, _)| *kind)
            .filter(|kind| frr10 || *kind != Kind::Pim6dRestart)
            .collect()
    }

    fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("?", |(_, name)| name)
    }
}

/// One planned fault: what, where, for how long, after how long a gap.
#[derive(Clone, Debug)]
struct Plan {
    kind: Kind,
    gap_s: f64,
    hold_s: f64,
    relay: &'static str,
    loss_pct: u32,
    delay_ms: u32,
}

/// The schedule for `seed`: rounds of every kind in a shuffled order, each
/// with a random gap before it, hold time and parameters. Longer than any
/// run needs; the runner stops taking from it when the duration is used up.
/// The fault kinds `SOAK_FAULTS` names (empty: every kind).
fn faults_from_env(frr10: bool) -> Vec<Kind> {
    let wanted = std::env::var("SOAK_FAULTS").unwrap_or_default();
    let names: Vec<&str> = wanted
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let all = Kind::all(frr10);
    names
        .iter()
        .map(|name| {
            *all.iter().find(|k| k.name() == *name).unwrap_or_else(|| {
                let known: Vec<&str> = all.iter().map(|k| k.name()).collect();
                panic!("SOAK_FAULTS: no fault kind {name:?} here (known: {known:?})")
            })
        })
        .collect()
}

/// The seeded fault schedule, of the kinds in `only` (empty: every kind).
fn schedule(seed: u64, frr10: bool, only: &[Kind]) -> Vec<Plan> {
    let mut rng = Rng(seed);
    let mut plans = Vec::new();
    for _round in 0..40 {
        let mut kinds = Kind::all(frr10);
        kinds.retain(|k| only.is_empty() || only.contains(k));
        rng.shuffle(&mut kinds);
        for kind in kinds {
            use Kind::*;
            let relay = RELAYS[rng.below(2) as usize].0;
            let gap_s = rng.range(6.0, 20.0);
            let (hold_s, loss_pct, delay_ms) = match kind {
                RelayKill => (rng.range(0.0, 8.0), 0, 0),
                RelaySilent => (rng.range(3.0, 25.0), 100, 0),
                RelayLinkLoss => (rng.range(5.0, 20.0), rng.range(20.0, 80.0) as u32, 0),
                DnsSlow => (rng.range(5.0, 30.0), 0, rng.range(500.0, 3000.0) as u32),
                DnsStopped | DnsServfail | Dorms500 | DormsGarbage | DormsSlowBody
                | DormsStopped => (rng.range(5.0, 30.0), 0, 0),
                PimdRestart | Pim6dRestart => (0.0, 0, 0),
                DaemonKill => (rng.range(0.0, 5.0), 0, 0),
                InternetLossDelay => (
                    rng.range(5.0, 20.0),
                    rng.range(5.0, 40.0) as u32,
                    rng.range(20.0, 300.0) as u32,
                ),
            };
            plans.push(Plan {
                kind,
                gap_s,
                hold_s,
                relay,
                loss_pct,
                delay_ms,
            });
        }
    }
    plans
}

// ---------------------------------------------------------------------------
// The receiver's progress lines

/// One progress line: wall-clock ms and each channel's running totals, in
/// the soak's channel order.
#[derive(Clone, Debug)]
struct Tick {
    ms: u64,
    packets: Vec<u64>,
    missing: Vec<u64>,
}

/// Reads mcrx's stdout file as it grows.
struct ProgressLog {
    path: PathBuf,
    offset: u64,
    partial: String,
    index: BTreeMap<String, usize>,
    ticks: Vec<Tick>,
    summary: Option<Value>,
}

impl ProgressLog {
    fn new(path: PathBuf, channels: &[String]) -> ProgressLog {
        ProgressLog {
            path,
            offset: 0,
            partial: String::new(),
            index: channels
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect(),
            ticks: Vec::new(),
            summary: None,
        }
    }

    fn refresh(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&buf);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            if v["event"] == "summary" {
                self.summary = Some(v);
                continue;
            }
            if v["event"] != "progress" {
                continue;
            }
            let n = self.index.len();
            let mut tick = Tick {
                ms: v["unix_ms"].as_u64().unwrap_or(0),
                packets: vec![0; n],
                missing: vec![0; n],
            };
            for c in v["channels"].as_array().into_iter().flatten() {
                if let Some(&i) = c["channel"].as_str().and_then(|k| self.index.get(k)) {
                    tick.packets[i] = c["packets"].as_u64().unwrap_or(0);
                    tick.missing[i] = c["missing"].as_u64().unwrap_or(0);
                }
            }
            self.ticks.push(tick);
        }
    }

    /// Channels that got fewer than half the expected packets in the last
    /// `window_s` seconds (all of them while there is not enough data).
    fn lagging(&mut self, window_s: f64, pps: u32) -> Vec<usize> {
        self.refresh();
        let n = self.index.len();
        let Some(last) = self.ticks.last() else {
            return (0..n).collect();
        };
        let want_ms = (window_s * 1000.0) as u64;
        let Some(first) = self
            .ticks
            .iter()
            .rev()
            .find(|t| last.ms.saturating_sub(t.ms) >= want_ms)
        else {
            return (0..n).collect();
        };
        let expected = pps as f64 * (last.ms - first.ms) as f64 / 1000.0;
        (0..n)
            .filter(|&i| {
                ((last.packets[i] - first.packets[i].min(last.packets[i])) as f64)
                    < GOOD_SHARE * expected
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Analysis (pure: ticks and fault windows in, findings out)

/// A fault as the analysis sees it.
#[derive(Clone, Debug)]
struct Window {
    id: usize,
    start_ms: u64,
    clear_ms: u64,
    touched: BTreeSet<usize>,
}

/// One interval between two ticks of one channel.
fn interval_good(a: &Tick, b: &Tick, ch: usize, pps: u32) -> bool {
    let expected = pps as f64 * b.ms.saturating_sub(a.ms) as f64 / 1000.0;
    (b.packets[ch].saturating_sub(a.packets[ch]) as f64) >= GOOD_SHARE * expected
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Forwarding again this many seconds after the fault cleared (0: it
    /// never stopped after the clear).
    Recovered { recovery_s: f64, outage_s: f64 },
    /// Still out when the next fault touching the channel began.
    Superseded { by: usize, outage_s: f64 },
    /// Still out when the data ends.
    NotRecovered { outage_s: f64 },
}

/// How long after its clear a fault keeps owning the outages of a channel
/// it touched, even when the channel looked fine in between (a relay's
/// loss can be noticed a little after the packets flow again); times
/// LAB_TIME_SCALE in the soak.
const GRACE_S: f64 = 10.0;

/// Per fault and touched channel: how it came back, and until when the
/// fault owns the channel's outages. A fault's window on a channel starts
/// at the fault and closes at the first moment at least `grace_ms` after
/// its clear at which the channel has had two good intervals in a row since
/// the clear, or at the start of the next fault touching the channel.
fn recoveries(
    ticks: &[Tick],
    faults: &[Window],
    channels: usize,
    pps: u32,
    grace_ms: u64,
) -> BTreeMap<(usize, usize), (Outcome, u64)> {
    let mut out = BTreeMap::new();
    let end_ms = ticks.last().map_or(0, |t| t.ms);
    for (fi, f) in faults.iter().enumerate() {
        for &ch in &f.touched {
            if ch >= channels {
                continue;
            }
            let next = faults[fi + 1..].iter().find(|g| g.touched.contains(&ch));
            let hard_end = next.map_or(end_ms, |g| g.start_ms);
            let mut outage_ms = 0u64;
            let mut last_bad_end: Option<u64> = None;
            let mut last_interval_bad = false;
            let mut good_streak = 0;
            let mut closed_at: Option<u64> = None;
            for pair in ticks.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if b.ms <= f.start_ms || a.ms >= hard_end {
                    continue;
                }
                let good = interval_good(a, b, ch, pps);
                if good {
                    if b.ms > f.clear_ms {
                        good_streak += 1;
                    }
                } else {
                    good_streak = 0;
                    outage_ms += b.ms - a.ms;
                    last_bad_end = Some(b.ms);
                }
                last_interval_bad = !good;
                if good_streak >= 2 && b.ms >= f.clear_ms + grace_ms {
                    closed_at = Some(b.ms);
                    break;
                }
            }
            let outage_s = outage_ms as f64 / 1000.0;
            let recovered = Outcome::Recovered {
                recovery_s: last_bad_end
                    .map_or(0.0, |e| e.saturating_sub(f.clear_ms) as f64 / 1000.0),
                outage_s,
            };
            let outcome = match (closed_at, next, last_interval_bad) {
                (Some(_), _, _) | (None, _, false) => recovered,
                (None, Some(g), true) => Outcome::Superseded { by: g.id, outage_s },
                (None, None, true) => Outcome::NotRecovered { outage_s },
            };
            out.insert((f.id, ch), (outcome, closed_at.unwrap_or(hard_end)));
        }
    }
    out
}

/// A stop of a channel that no fault touching it explains.
#[derive(Clone, Debug, PartialEq)]
struct Damage {
    channel: usize,
    from_ms: u64,
    to_ms: u64,
    /// The last fault begun before it, if any.
    after_fault: Option<usize>,
}

/// Runs of bad intervals lasting at least `min_ms` (and at least two
/// intervals) outside the windows (see [`recoveries`]) of the faults that
/// touched the channel.
fn unexplained_damage(
    ticks: &[Tick],
    faults: &[Window],
    owned: &BTreeMap<(usize, usize), (Outcome, u64)>,
    (channels, pps): (usize, u32),
    from_ms: u64,
    min_ms: u64,
) -> Vec<Damage> {
    let mut out = Vec::new();
    for ch in 0..channels {
        let windows: Vec<(u64, u64)> = faults
            .iter()
            .filter_map(|f| owned.get(&(f.id, ch)).map(|(_, end)| (f.start_ms, *end)))
            .collect();
        let explained = |a: u64, b: u64| windows.iter().any(|&(s, e)| b > s && a < e);
        let mut run: Option<(u64, u64, usize)> = None;
        let flush = |run: &mut Option<(u64, u64, usize)>, out: &mut Vec<Damage>| {
            if let Some((a, b, n)) = run.take()
                && n >= 2
                && b - a >= min_ms
            {
                let after_fault = faults.iter().rfind(|f| f.start_ms <= a).map(|f| f.id);
                out.push(Damage {
                    channel: ch,
                    from_ms: a,
                    to_ms: b,
                    after_fault,
                });
            }
        };
        for pair in ticks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.ms < from_ms {
                continue;
            }
            let bad = !interval_good(a, b, ch, pps) && !explained(a.ms, b.ms);
            if bad {
                run = Some(match run {
                    Some((s, _, n)) => (s, b.ms, n + 1),
                    None => (a.ms, b.ms, 1),
                });
            } else {
                flush(&mut run, &mut out);
            }
        }
        flush(&mut run, &mut out);
    }
    out
}

/// Packets that never arrived, per channel, between two times (from the
/// receiver's running "missing" counts).
fn lost_between(ticks: &[Tick], from_ms: u64, to_ms: u64, ch: usize) -> u64 {
    let at = |ms: u64| {
        ticks
            .iter()
            .rev()
            .find(|t| t.ms <= ms)
            .or(ticks.first())
            .map_or(0, |t| t.missing[ch])
    };
    at(to_ms).saturating_sub(at(from_ms))
}

// ---------------------------------------------------------------------------
// Log volume

/// The text of a log line's message and fields with numbers replaced by
/// `#`; IP addresses are kept (without their port) when `keep_addresses`,
/// else replaced by `<addr>`.
fn normalize(text: &str, keep_addresses: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let is_token_char = |c: char| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '[' | ']');
    let flush = |token: &mut String, out: &mut String| {
        if token.is_empty() {
            return;
        }
        let trimmed = token.trim_end_matches(['.', ':']);
        let tail = &token[trimmed.len()..];
        // Addresses have digits ("::d" in "policy::dorms" is a path).
        let has_digit = trimmed.chars().any(|c| c.is_ascii_digit());
        let addr = has_digit
            .then(|| {
                trimmed
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| trimmed.parse::<SocketAddr>().ok().map(|s| s.ip()))
                    .or_else(|| {
                        trimmed
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<IpAddr>()
                            .ok()
                    })
            })
            .flatten();
        match addr {
            Some(ip) if keep_addresses => out.push_str(&ip.to_string()),
            Some(_) => out.push_str("<addr>"),
            // Digits glued to a word are part of its name ("V4" and "V6",
            // "IPv6", "amt0"): another family is another cause.
            None if has_digit && out.ends_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                out.push_str(trimmed)
            }
            None if has_digit => {
                // Hex-looking words with digits are numbers; keep letters-only
                // words ("dead", "face") as they are.
                out.push('#');
            }
            None => out.push_str(trimmed),
        }
        out.push_str(tail);
        token.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// A JSON log line's level, target and message with its fields (sorted).
fn log_line_text(v: &Value) -> Option<(String, String)> {
    let ts = v["timestamp"].as_str()?;
    let second = ts.get(..19)?.to_string();
    let fields = v["fields"].as_object()?;
    let mut text = format!(
        "{} {} {}",
        v["level"].as_str().unwrap_or("?"),
        v["target"].as_str().unwrap_or("?"),
        fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    for (k, val) in fields {
        if k != "message" {
            text.push_str(&format!(" {k}={val}"));
        }
    }
    // The span (flow, relay, tunnel) is part of the cause.
    for span in v["spans"].as_array().into_iter().flatten() {
        for (k, val) in span.as_object().into_iter().flatten() {
            text.push_str(&format!(" {k}={val}"));
        }
    }
    Some((second, text))
}

/// Counts of the daemon's log: lines, levels, the worst repetition of one
/// cause within a second, the busiest message classes.
fn log_volume(paths: &[PathBuf]) -> (Value, Vec<String>) {
    let mut failures = Vec::new();
    let mut lines = 0u64;
    let mut levels: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_cause: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut per_class_second: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut class_total: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_json = Vec::new();
    let mut panics = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            if line.contains("panicked at") {
                panics.push(line.to_string());
            }
            let Some((second, body)) = serde_json::from_str::<Value>(line)
                .ok()
                .as_ref()
                .and_then(log_line_text)
            else {
                if !line.trim().is_empty() {
                    not_json.push(line.to_string());
                }
                continue;
            };
            lines += 1;
            *levels
                .entry(body.split(' ').next().unwrap_or("?").to_string())
                .or_default() += 1;
            let cause = normalize(&body, true);
            let class = normalize(&body, false);
            *per_cause.entry((second.clone(), cause)).or_default() += 1;
            *per_class_second.entry((second, class.clone())).or_default() += 1;
            *class_total.entry(class).or_default() += 1;
        }
    }
    let mut repeated: Vec<_> = per_cause.iter().filter(|(_, n)| **n > 1).collect();
    repeated.sort_by(|a, b| b.1.cmp(a.1));
    for ((second, cause), n) in repeated.iter().take(10) {
        failures.push(format!(
            "log: {n} identical messages in second {second}: {cause}"
        ));
    }
    if repeated.len() > 10 {
        failures.push(format!(
            "log: {} more (second, cause) pairs repeated",
            repeated.len() - 10
        ));
    }
    for p in panics.iter().take(5) {
        failures.push(format!("daemon panicked: {p}"));
    }
    let mut top: Vec<_> = class_total.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let busiest_second = per_class_second
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|((s, c), n)| json!({"second": s, "count": n, "message": c}));
    let seconds: BTreeSet<&String> = per_cause.keys().map(|(s, _)| s).collect();
    let report = json!({
        "lines": lines,
        "by_level": levels,
        "seconds_with_lines": seconds.len(),
        "max_same_cause_per_second": per_cause.values().max().copied().unwrap_or(0),
        "repeated_causes": repeated.len(),
        "busiest_class_second": busiest_second,
        "top_messages": top.iter().take(8).map(|(c, n)| json!({"count": n, "message": c})).collect::<Vec<_>>(),
        "non_json_lines": not_json.len(),
        "non_json_examples": not_json.iter().take(3).collect::<Vec<_>>(),
        "panics": panics.len(),
    });
    (report, failures)
}

// ---------------------------------------------------------------------------
// The soak

struct Soak {
    lab: Lab,
    params: Params,
    channels: Vec<String>,
    ipv6: Vec<bool>,
    daemon_args: Vec<String>,
    /// Soak time zero: every channel forwarding after the warm-up.
    t0: Instant,
    /// Last known relay of each channel (from `show flows`).
    relay_of: Vec<String>,
    samples: Vec<Value>,
    last_sample: Instant,
    /// (seconds since t0, pid) of every daemon start after the first.
    daemon_restarts: Vec<(f64, u32)>,
    frr_tmp: BTreeSet<String>,
    progress: ProgressLog,
    zone_backup: BTreeMap<PathBuf, String>,
    nginx_conf: Option<String>,
}

struct Fault {
    id: usize,
    plan: Plan,
    start_ms: u64,
    clear_ms: u64,
    start_s: f64,
    clear_s: f64,
    action: String,
    verified: String,
    touched: BTreeSet<usize>,
}

impl Soak {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn lab_ok(&self, args: &[&str]) -> String {
        let out = self.lab.lab_cmd(args);
        assert!(
            out.status.success(),
            "lab {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn daemon_pid(&self) -> u32 {
        self.lab.daemon_pid(self.lab.daemon_starts() - 1)
    }

    /// Latest relay of every channel, from `show flows` (kept when the
    /// daemon does not answer).
    fn poll_flows(&mut self) -> Option<BTreeMap<String, Value>> {
        let out = self.lab.ingestctl(&["show", "flows", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut flows = BTreeMap::new();
        for f in v["flows"].as_array().into_iter().flatten() {
            let key = format!(
                "{},{}",
                f["source"].as_str().unwrap_or(""),
                f["group"].as_str().unwrap_or("")
            );
            flows.insert(key, f.clone());
        }
        for (i, c) in self.channels.iter().enumerate() {
            if let Some(relay) = flows.get(c).and_then(|f| f["relay"].as_str())
                && !relay.is_empty()
            {
                self.relay_of[i] = relay.to_string();
            }
        }
        Some(flows)
    }

    /// Channels whose last known relay is `node`'s.
    fn channels_on(&self, node: &str) -> BTreeSet<usize> {
        (0..self.channels.len())
            .filter(|&i| relay_node_of(&self.relay_of[i]) == Some(node))
            .collect()
    }

    /// Sleep until `until`, polling flows every POLL_S (adding channels on
    /// `relay` to `touched`) and sampling the daemon every SAMPLE_S.
    ///
    /// Every look is a process (ingestctl): on an emulated CPU each costs
    /// seconds of the one CPU the lab's data path runs on, so flows are
    /// only polled while a relay fault is tracked, and both intervals are
    /// stretched by LAB_TIME_SCALE.
    fn idle(&mut self, until: Instant, mut track: Option<(&str, &mut BTreeSet<usize>)>) {
        let poll = limit(Duration::from_secs_f64(POLL_S));
        loop {
            if let Some((node, touched)) = track.as_mut() {
                self.poll_flows();
                touched.extend(self.channels_on(node));
            }
            if self.last_sample.elapsed() >= limit(Duration::from_secs_f64(SAMPLE_S)) {
                let s = self.sample("periodic");
                self.samples.push(s);
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(poll));
        }
    }

    /// Every channel forwarding by `show flows` and at the receiver.
    fn all_forwarding(&mut self) -> (bool, Vec<String>) {
        let mut problems = Vec::new();
        match self.poll_flows() {
            None => problems.push("the daemon does not answer".to_string()),
            Some(flows) => {
                for c in &self.channels {
                    match flows.get(c) {
                        Some(f) if f["state"] == "forwarding" => {}
                        Some(f) => problems.push(format!(
                            "{c}: {} via {:?}: {} {}",
                            f["state"],
                            f["relay"].as_str().unwrap_or(""),
                            f["admission_reason"].as_str().unwrap_or(""),
                            f["race"].as_str().unwrap_or("")
                        )),
                        None => problems.push(format!("{c}: no flow")),
                    }
                }
            }
        }
        let window_s = limit(Duration::from_secs(2)).as_secs_f64();
        for i in self.progress.lagging(window_s, self.params.pps) {
            problems.push(format!(
                "{}: not arriving at the receiver",
                self.channels[i]
            ));
        }
        (problems.is_empty(), problems)
    }

    fn wait_all_forwarding(&mut self, timeout: Duration) -> Option<f64> {
        let start = Instant::now();
        loop {
            let (ok, _) = self.all_forwarding();
            if ok {
                return Some(start.elapsed().as_secs_f64());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            self.idle(Instant::now() + limit(Duration::from_millis(500)), None);
        }
    }

    /// The daemon's resources and the lab state that must not grow.
    fn sample(&mut self, label: &str) -> Value {
        self.last_sample = Instant::now();
        let (steady, _) = self.all_forwarding();
        let pid = self.daemon_pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        let mut fd_kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut fds = 0u64;
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in dir.flatten() {
                fds += 1;
                let target = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let kind = if target.starts_with("socket:") {
                    "socket".to_string()
                } else if target.starts_with("net:") {
                    "netns".to_string()
                } else if target.starts_with("pipe:") {
                    "pipe".to_string()
                } else if let Some(a) = target.strip_prefix("anon_inode:") {
                    a.trim_matches(['[', ']']).to_string()
                } else if target.starts_with("/dev/") {
                    target.clone()
                } else {
                    "file".to_string()
                };
                *fd_kinds.entry(kind).or_default() += 1;
            }
        }
        let tunnels = {
            let out = self.lab.ingestctl(&["show", "tunnels", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
        };
        let mut tunnel_states: BTreeMap<String, u64> = BTreeMap::new();
        for t in tunnels.as_array().into_iter().flatten() {
            *tunnel_states
                .entry(t["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        // One process for the ingest namespace's counts (each costs).
        let counts = self.lab.exec(
            "ingest",
            &[
                "sh",
                "-c",
                "ip -4 route show table all proto 240 | wc -l; \
                 ip -6 route show table all proto 240 | wc -l; \
                 ip -o link show type tun | wc -l",
            ],
        );
        let counts: Vec<u64> = String::from_utf8_lossy(&counts.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (routes4, routes6, tun_links) = match counts[..] {
            [a, b, c] => (a, b, c),
            _ => (u64::MAX, u64::MAX, u64::MAX),
        };
        let netns_out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours = format!("{}-", self.lab.prefix);
        let lab_netns = netns_out.lines().filter(|l| l.starts_with(&ours)).count();
        let relay_channels: BTreeMap<&str, usize> = RELAYS
            .iter()
            .map(|(node, _)| (*node, self.lab.relay_channels(node).len()))
            .collect();
        json!({
            "label": label,
            "steady": steady,
            "at_s": (self.secs() * 10.0).round() / 10.0,
            "pid": pid,
            "rss_kb": field("VmRSS:"),
            "threads": field("Threads:"),
            "fds": fds,
            "sockets": fd_kinds.get("socket").copied().unwrap_or(0),
            "fd_kinds": fd_kinds,
            "tunnels": tunnels.as_array().map_or(0, Vec::len),
            "tunnel_states": tunnel_states,
            "routes": {"ipv4": routes4, "ipv6": routes6},
            "tun_links": tun_links,
            "lab_namespaces": lab_netns,
            "all_namespaces": netns_out.lines().filter(|l| !l.trim().is_empty()).count(),
            "relay_channels_for_us": relay_channels,
        })
    }

    /// FRR tmp dirs the lab's processes hold open (for `lab leftovers`).
    fn note_frr_tmp(&mut self) {
        for node in ["ingest", "rtr", "rtr2", "rtr3"] {
            let out = Command::new("ip")
                .args(["netns", "pids", &self.lab.ns(node)])
                .output();
            let Ok(out) = out else { continue };
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for e in dir.flatten() {
                    if let Ok(t) = std::fs::read_link(e.path()) {
                        let t = t.display().to_string();
                        if let Some(rest) = t.strip_prefix("/var/tmp/frr/") {
                            let top = rest.split('/').next().unwrap_or("");
                            self.frr_tmp.insert(format!("/var/tmp/frr/{top}"));
                        }
                    }
                }
            }
        }
    }

    fn tc_netem(&self, node: &str, dev: &str, netem: &str) -> String {
        let mut args = vec!["tc", "qdisc", "replace", "dev", dev, "root", "netem"];
        args.extend(netem.split_whitespace());
        let out = self.lab.exec(node, &args);
        assert!(
            out.status.success(),
            "tc netem on {node}/{dev} failed (is sch_netem available? the soak needs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = self.lab.exec_ok(node, &["tc", "qdisc", "show", "dev", dev]);
        assert!(
            shown.contains("netem"),
            "{node}/{dev} has no netem qdisc after adding it: {shown}"
        );
        format!(
            "{node}/{dev}: {}",
            shown.lines().next().unwrap_or("").trim()
        )
    }

    fn tc_clear(&self, node: &str, dev: &str) {
        let out = self
            .lab
            .exec(node, &["tc", "qdisc", "del", "dev", dev, "root"]);
        assert!(
            out.status.success(),
            "removing netem from {node}/{dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `dig` from the border namespace: the status of the answer.
    fn dns_status(&self, name: &str) -> String {
        let out = self.lab.exec(
            "border",
            &[
                "dig",
                "+time=2",
                "+tries=1",
                &format!("@{}", dns_addr()),
                name,
                "TYPE260",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .map_or_else(|| "no answer".to_string(), str::to_string)
    }

    /// The DORMS server's answer to host-meta from the border namespace:
    /// (HTTP status or curl's failure, seconds, first bytes of the body).
    fn dorms_probe(&self) -> (String, f64, String) {
        let t = Instant::now();
        let out = self.lab.exec(
            "border",
            &[
                "curl",
                "-sk",
                "--max-time",
                "4",
                "-w",
                "\n%{http_code}",
                "https://192.0.2.80/.well-known/host-meta",
            ],
        );
        let took = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = if out.status.success() {
            code.to_string()
        } else {
            format!("curl exit {}", out.status.code().unwrap_or(-1))
        };
        (status, took, body.chars().take(40).collect())
    }

    fn nginx_variant(&mut self, directives: &str) {
        let path = self.lab.node_dir("dorms").join("nginx.conf");
        let original = self
            .nginx_conf
            .get_or_insert_with(|| std::fs::read_to_string(&path).expect("nginx.conf"))
            .clone();
        let marker = "server_name dorms.lab;";
        assert!(original.contains(marker), "nginx.conf has no {marker}");
        let changed = original.replace(marker, &format!("{marker}\n\t\t{directives}"));
        std::fs::write(&path, changed).expect("write nginx.conf");
        self.lab_ok(&["proc", "restart", "dorms", "nginx"]);
    }

    fn nginx_restore(&mut self) {
        let path = self.lab.node_dir("dorms").join("nginx.conf");
        if let Some(original) = &self.nginx_conf {
            std::fs::write(&path, original).expect("restore nginx.conf");
        }
        self.lab_ok(&["proc", "restart", "dorms", "nginx"]);
    }

    /// Inject the fault; returns what was done and how it was checked.
    fn apply(&mut self, p: &Plan) -> (String, String) {
        use Kind::*;
        match p.kind {
            RelayKill => {
                self.lab_ok(&["proc", "kill", p.relay, "amt-relay", "KILL"]);
                (format!("SIGKILL {}/amt-relay", p.relay), "exited".into())
            }
            RelaySilent => {
                let shown = self.tc_netem(p.relay, "rly0", "loss 100%");
                (format!("{} silent", p.relay), shown)
            }
            RelayLinkLoss => {
                let shown = self.tc_netem(p.relay, "rly0", &format!("loss {}%", p.loss_pct));
                (format!("{} link loss {} %", p.relay, p.loss_pct), shown)
            }
            DnsStopped => {
                self.lab_ok(&["proc", "stop", "dns", "named"]);
                let status = self.dns_status("4.100.51.198.in-addr.arpa");
                assert_eq!(status, "no answer", "named stopped but answers");
                ("named stopped".into(), format!("dig: {status}"))
            }
            DnsServfail => {
                let dir = self.lab.node_dir("dns");
                for zone in REVERSE_ZONES {
                    let path = dir.join(zone);
                    let text = std::fs::read_to_string(&path).expect("zone file");
                    self.zone_backup.entry(path.clone()).or_insert(text.clone());
                    std::fs::write(&path, format!("{text}\nbroken IN A not-an-address\n"))
                        .expect("write zone");
                }
                self.lab_ok(&["proc", "restart", "dns", "named"]);
                let status = self.dns_status("4.100.51.198.in-addr.arpa");
                assert_eq!(status, "SERVFAIL", "the reverse zone still loads");
                (
                    "reverse zones unloadable, named restarted".into(),
                    format!("dig: {status}"),
                )
            }
            DnsSlow => {
                let shown = self.tc_netem("dns", "dns0", &format!("delay {}ms", p.delay_ms));
                (format!("DNS answers {} ms late", p.delay_ms), shown)
            }
            Dorms500 => {
                self.nginx_variant("return 500;");
                let (status, _, _) = self.dorms_probe();
                assert_eq!(status, "500", "nginx does not answer 500");
                ("nginx answers 500".into(), format!("curl: {status}"))
            }
            DormsGarbage => {
                self.nginx_variant(
                    "default_type application/yang-data+json; return 200 '{\"ietf-cbacc:cbacc\": {\"max-bits-per-sec';",
                );
                let (status, _, body) = self.dorms_probe();
                assert_eq!(status, "200", "garbage variant: {status}");
                assert!(body.starts_with("{\"ietf-cbacc"), "body {body:?}");
                (
                    "nginx answers 200 with truncated JSON".into(),
                    format!("curl: {status} {body}"),
                )
            }
            DormsSlowBody => {
                self.nginx_variant("limit_rate_after 300; limit_rate 8;");
                let (status, took, _) = self.dorms_probe();
                assert!(
                    took >= 3.0,
                    "slow-body variant answered in {took:.1} s ({status})"
                );
                (
                    "nginx sends bodies at 8 B/s after 300 bytes".into(),
                    format!("curl: {status} after {took:.1} s"),
                )
            }
            DormsStopped => {
                self.lab_ok(&["proc", "stop", "dorms", "nginx"]);
                let (status, _, _) = self.dorms_probe();
                assert_ne!(status, "200", "nginx stopped but answers");
                ("nginx stopped".into(), format!("curl: {status}"))
            }
            PimdRestart | Pim6dRestart => {
                let daemon = if p.kind == PimdRestart {
                    "pimd"
                } else {
                    "pim6d"
                };
                self.note_frr_tmp();
                self.lab.restart_frr_daemon("ingest", daemon);
                self.note_frr_tmp();
                (format!("ingest/{daemon} restarted"), "re-run".into())
            }
            DaemonKill => {
                let idx = self.lab.daemon_starts() - 1;
                let pid = self.daemon_pid();
                self.lab.kill_daemon(idx, libc::SIGKILL);
                assert!(
                    !Path::new(&format!("/proc/{pid}")).exists(),
                    "frr-ingestd {pid} survived SIGKILL"
                );
                (format!("SIGKILL frr-ingestd {pid}"), "exited".into())
            }
            InternetLossDelay => {
                let netem = format!("delay {}ms loss {}%", p.delay_ms, p.loss_pct);
                let a = self.tc_netem("border", "bdr0", &netem);
                let b = self.tc_netem("inet", "p-border", &netem);
                (
                    format!(
                        "border uplink: {} % loss, {} ms delay each way",
                        p.loss_pct, p.delay_ms
                    ),
                    format!("{a}; {b}"),
                )
            }
        }
    }

    fn clear(&mut self, p: &Plan) {
        use Kind::*;
        match p.kind {
            RelayKill => {
                self.lab_ok(&["proc", "start", p.relay, "amt-relay"]);
            }
            RelaySilent | RelayLinkLoss => self.tc_clear(p.relay, "rly0"),
            DnsStopped => {
                self.lab_ok(&["proc", "start", "dns", "named"]);
            }
            DnsServfail => {
                for (path, text) in &self.zone_backup {
                    std::fs::write(path, text).expect("restore zone");
                }
                self.lab_ok(&["proc", "restart", "dns", "named"]);
                let status = self.dns_status("4.100.51.198.in-addr.arpa");
                assert_eq!(status, "NOERROR", "zones not back");
            }
            DnsSlow => self.tc_clear("dns", "dns0"),
            Dorms500 | DormsGarbage | DormsSlowBody => self.nginx_restore(),
            DormsStopped => {
                self.lab_ok(&["proc", "start", "dorms", "nginx"]);
            }
            PimdRestart | Pim6dRestart => {}
            DaemonKill => {
                let args: Vec<&str> = self.daemon_args.iter().map(String::as_str).collect();
                self.lab.start_daemon(&args);
                let at = self.secs();
                let pid = self.daemon_pid();
                self.daemon_restarts.push((at, pid));
            }
            InternetLossDelay => {
                self.tc_clear("border", "bdr0");
                self.tc_clear("inet", "p-border");
            }
        }
    }

    /// The channels a fault touches by its kind (relay faults: added while
    /// it runs from the flows' relays).
    fn touched_by_kind(&self, p: &Plan) -> BTreeSet<usize> {
        use Kind::*;
        let n = self.channels.len();
        match p.kind {
            RelayKill | RelaySilent | RelayLinkLoss => self.channels_on(p.relay),
            DnsStopped | DnsServfail | DnsSlow | Dorms500 | DormsGarbage | DormsSlowBody
            | DormsStopped => BTreeSet::new(),
            PimdRestart => (0..n).filter(|&i| !self.ipv6[i]).collect(),
            Pim6dRestart => (0..n).filter(|&i| self.ipv6[i]).collect(),
            DaemonKill | InternetLossDelay => (0..n).collect(),
        }
    }

    fn run_fault(&mut self, id: usize, p: &Plan) -> Fault {
        // The flows' relays now (idle() does not poll between faults).
        self.poll_flows();
        let start_ms = unix_ms();
        let start_s = self.secs();
        let mut touched = self.touched_by_kind(p);
        let (action, verified) = self.apply(p);
        println!(
            "soak: {start_s:7.1} s fault {id} {}: {action} ({verified}); hold {:.1} s",
            p.kind.name(),
            p.hold_s
        );
        let until = Instant::now() + Duration::from_secs_f64(p.hold_s);
        let relay_fault = matches!(
            p.kind,
            Kind::RelayKill | Kind::RelaySilent | Kind::RelayLinkLoss
        );
        if relay_fault {
            self.idle(until, Some((p.relay, &mut touched)));
        } else {
            self.idle(until, None);
        }
        self.clear(p);
        if relay_fault {
            self.poll_flows();
            touched.extend(self.channels_on(p.relay));
        }
        let clear_ms = unix_ms();
        Fault {
            id,
            plan: p.clone(),
            start_ms,
            clear_ms,
            start_s,
            clear_s: self.secs(),
            action,
            verified,
            touched,
        }
    }
}

fn relay_node_of(relay: &str) -> Option<&'static str> {
    let ip = relay
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| relay.parse::<IpAddr>())
        .ok()?;
    RELAYS
        .iter()
        .find(|(_, addrs)| addrs.iter().any(|a| a.parse::<IpAddr>().ok() == Some(ip)))
        .map(|(node, _)| *node)
}

/// The daemon's config: DRIAD on (the default), CBACC with a limit above
/// what the channels need (1M each by default, DORMS rates where the lab
/// has them), relay hold-downs of 10-20 s, the soak's seed for the policy
/// engine; `SOAK_SET` (e.g.
/// `amt.connection_attempt_delay_ms=1000 policy.relay_holddown_min_s=20`,
/// values in TOML syntax) changes or adds keys. Returns the text and the
/// overrides applied.
fn daemon_config(seed: u64) -> (String, Vec<String>) {
    let mut tables: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut set = |key: &str, value: &str| {
        let (table, name) = key
            .split_once('.')
            .unwrap_or_else(|| panic!("SOAK_SET: {key:?} is not TABLE.KEY"));
        tables
            .entry(table.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    };
    set("amt.linger_s", "10");
    set("policy.bandwidth_limit", "\"1G\"");
    set("policy.default_bitrate", "\"1M\"");
    set("policy.seed", &seed.to_string());
    // A failed relay is held down for every source (default 180-600 s),
    // including sources it is the only relay of: with the defaults one
    // relay fault starves those sources for minutes, far past the 30 s the
    // soak allows. The soak measures recovery with short hold-downs.
    set("policy.relay_holddown_min_s", "10");
    set("policy.relay_holddown_max_s", "20");
    let mut overrides = Vec::new();
    let extra = std::env::var("SOAK_SET").unwrap_or_default();
    for item in extra
        .split([',', ' ', '\n'])
        .filter(|i| !i.trim().is_empty())
    {
        let (key, value) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("SOAK_SET: {item:?} is not TABLE.KEY=VALUE"));
        set(key.trim(), value.trim());
        overrides.push(item.trim().to_string());
    }
    let mut text = String::from("# frr-ingestd config of the fault soak (lab_soak.rs)\n");
    for (table, keys) in &tables {
        text.push_str(&format!("\n[{table}]\n"));
        for (k, v) in keys {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    (text, overrides)
}

fn channel_list(frr10: bool, groups: u32, groups6: u32) -> Vec<String> {
    let mut bases: Vec<(&str, &str, u32)> =
        IPV4_BASES.iter().map(|(s, g)| (*s, *g, groups)).collect();
    if frr10 {
        bases.extend(IPV6_BASES.iter().map(|(s, g)| (*s, *g, groups6)));
    }
    let mut out = Vec::new();
    for (s, g, groups) in bases {
        let first = SourceGroup::new(s.parse().expect("S"), g.parse().expect("G")).expect("(S,G)");
        for sg in sample_network::consecutive_groups(first, groups).expect("groups") {
            out.push(format!("{},{}", sg.source, sg.group));
        }
    }
    out
}

fn spawn_in(lab: &Lab, node: &str, program: &str, args: &[String], stdout: &Path) -> Child {
    let file = std::fs::File::create(stdout).expect("output file");
    let err = std::fs::File::create(stdout.with_extension("stderr")).expect("stderr file");
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(node)])
        .arg(bin(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

fn stop_child(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stopped = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        matches!(child.try_wait(), Ok(Some(_))).then_some(())
    });
    if stopped.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[test]
fn fault_soak() {
    let _g = serial();
    let params = Params::from_env();
    let frr10 = matches!(Frr::from_env(), Frr::V10 { .. });
    println!(
        "soak: seed {} duration {} s, FRR {} (replay: SOAK_SEED={} SOAK_DURATION_S={} LAB_FRR={})",
        params.seed,
        params.duration_s,
        if frr10 { 10 } else { 8 },
        params.seed,
        params.duration_s,
        if frr10 { 10 } else { 8 }
    );
    std::fs::create_dir_all(&params.out_dir).expect("create SOAK_OUT dir");
    let started = Instant::now();
    let mut lab = Lab::up("soak");
    let lab_up_s = started.elapsed().as_secs_f64();
    lab.daemon_log_level = "info".into();
    let config = lab.node_dir("border").join("soak.toml");
    let (config_text, overrides) = daemon_config(params.seed);
    std::fs::write(&config, &config_text).expect("write daemon config");
    let mut daemon_args = lab.policy_args();
    daemon_args.extend([
        "--config".to_string(),
        config.display().to_string(),
        "--log-json".to_string(),
    ]);
    {
        let args: Vec<&str> = daemon_args.iter().map(String::as_str).collect();
        lab.start_daemon(&args);
    }

    let channels = channel_list(frr10, params.groups, params.groups6);
    let ipv6: Vec<bool> = channels.iter().map(|c| c.contains(':')).collect();
    let mut chan_args = Vec::new();
    for c in &channels {
        chan_args.push("--channel".to_string());
        chan_args.push(c.clone());
    }
    let mut send_args = vec![
        "--iface".to_string(),
        "src0".into(),
        "--rate".into(),
        params.pps.to_string(),
    ];
    send_args.extend(chan_args.iter().cloned());
    let mut sender = spawn_in(
        &lab,
        "source",
        "mcsend",
        &send_args,
        &params.out_dir.join("mcsend.json"),
    );
    let mut rx_args = vec![
        "--iface".to_string(),
        "rcv0".into(),
        "--progress-channels".into(),
        "--progress-interval".into(),
        TICK_S.to_string(),
    ];
    rx_args.extend(chan_args.iter().cloned());
    let progress_path = params.out_dir.join("mcrx.jsonl");
    let mut receiver = spawn_in(&lab, "rcv", "mcrx", &rx_args, &progress_path);

    let n = channels.len();
    let mut soak = Soak {
        lab,
        channels: channels.clone(),
        ipv6,
        daemon_args,
        t0: Instant::now(),
        relay_of: vec![String::new(); n],
        samples: Vec::new(),
        last_sample: Instant::now(),
        daemon_restarts: Vec::new(),
        frr_tmp: BTreeSet::new(),
        progress: ProgressLog::new(progress_path, &channels),
        zone_backup: BTreeMap::new(),
        nginx_conf: None,
        params,
    };
    let mut failures: Vec<String> = Vec::new();

    // Warm-up: every channel forwarding (the daemon's view and the receiver's).
    // A channel that is not forwarding after it fails the soak, which goes
    // on anyway so that the report shows everything else too.
    let warm = soak.wait_all_forwarding(limit(Duration::from_secs(120)));
    if warm.is_none() {
        let (_, problems) = soak.all_forwarding();
        failures.push(format!(
            "warm-up: not every channel forwarding within {:.0} s (120 s x LAB_TIME_SCALE) of the daemon's start: {}",
            limit(Duration::from_secs(120)).as_secs_f64(),
            problems.join("; ")
        ));
    }
    let warm_up_s = warm.unwrap_or(limit(Duration::from_secs(120)).as_secs_f64());
    soak.t0 = Instant::now();
    let t0_ms = unix_ms();
    soak.samples.clear();
    let warm_sample = soak.sample("after warm-up");
    soak.samples.push(warm_sample.clone());
    soak.note_frr_tmp();
    println!(
        "soak: lab up in {lab_up_s:.0} s; {n} channels forwarding {warm_up_s:.1} s after the \
         daemon started; faults for {} s",
        soak.params.duration_s
    );

    // The faults.
    let plans = schedule(soak.params.seed, frr10, &faults_from_env(frr10));
    let duration = Duration::from_secs(soak.params.duration_s);
    let long_run = soak.params.duration_s >= LONG_RUN_S;
    let mut faults: Vec<Fault> = Vec::new();
    for (id, p) in plans.iter().enumerate() {
        let start_at = Instant::now() + Duration::from_secs_f64(p.gap_s);
        if start_at + Duration::from_secs_f64(p.hold_s) > soak.t0 + duration {
            break;
        }
        soak.idle(start_at, None);
        let fault = soak.run_fault(id, p);
        faults.push(fault);
    }

    // The last recovery, then steady state. A channel counts as not
    // arriving only once its receiver has missed it for the lag window: the
    // check waits that long after the last fault cleared, or a fault whose
    // stall is not visible yet (a pim6d restart as the last fault: forwarding
    // is back only when the downstream router's periodic Join comes, up to
    // 60 s later) would pass it at once and fail only the end check.
    if let Some(last) = faults.last() {
        let visible =
            soak.t0 + Duration::from_secs_f64(last.clear_s) + limit(Duration::from_secs(3));
        if Instant::now() < visible {
            soak.idle(visible, None);
        }
    }
    let settle = soak.wait_all_forwarding(limit(Duration::from_secs(45)));
    if settle.is_none() {
        let (_, problems) = soak.all_forwarding();
        failures.push(format!(
            "after the last fault: not every channel forwarding within {:.0} s (45 s x LAB_TIME_SCALE): {problems:?}",
            limit(Duration::from_secs(45)).as_secs_f64()
        ));
    }
    // A daemon restarted by a late fault runs RSS_SETTLE_S before the
    // sample its end is compared with.
    if let Some((at, _)) = soak.daemon_restarts.last().copied() {
        let settled = soak.t0 + Duration::from_secs_f64(at + RSS_SETTLE_S);
        if Instant::now() < settled {
            soak.idle(settled, None);
        }
    }
    let before_end = soak.sample("before end");
    soak.samples.push(before_end);
    soak.idle(Instant::now() + Duration::from_secs(10), None);
    let mut end_samples = Vec::new();
    for _ in 0..3 {
        let s = soak.sample("end");
        soak.samples.push(s.clone());
        end_samples.push(s);
        soak.idle(Instant::now() + Duration::from_secs(2), None);
    }
    let (end_ok, end_problems) = soak.all_forwarding();
    if !end_ok {
        failures.push(format!(
            "at the end not every channel forwards: {end_problems:?}"
        ));
    }
    let end_ms = unix_ms();
    let total_s = soak.secs();
    stop_child(&mut receiver);
    stop_child(&mut sender);
    soak.progress.refresh();
    soak.note_frr_tmp();

    // --- Analysis
    let pps = soak.params.pps;
    let windows: Vec<Window> = faults
        .iter()
        .map(|f| Window {
            id: f.id,
            start_ms: f.start_ms,
            clear_ms: f.clear_ms,
            touched: f.touched.clone(),
        })
        .collect();
    let ticks: Vec<Tick> = soak
        .progress
        .ticks
        .iter()
        .filter(|t| t.ms >= t0_ms.saturating_sub(1000) && t.ms <= end_ms)
        .cloned()
        .collect();
    let scaled_ms = |s: f64| limit(Duration::from_secs_f64(s)).as_millis() as u64;
    let outcomes = recoveries(&ticks, &windows, n, pps, scaled_ms(GRACE_S));
    let (damage, short_stops): (Vec<Damage>, Vec<Damage>) =
        unexplained_damage(&ticks, &windows, &outcomes, (n, pps), t0_ms, 2_000)
            .into_iter()
            .partition(|d| d.to_ms - d.from_ms >= scaled_ms(DAMAGE_MIN_S));

    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fault_reports = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        *by_kind.entry(f.plan.kind.name()).or_default() += 1;
        let next_start = faults.get(i + 1).map_or(end_ms, |g| g.start_ms);
        let mut rec: Vec<f64> = Vec::new();
        let mut superseded = 0;
        let mut lost_touched = 0;
        let mut lost_other = 0;
        for ch in 0..n {
            let lost = lost_between(&ticks, f.start_ms, next_start, ch);
            if f.touched.contains(&ch) {
                lost_touched += lost;
            } else {
                lost_other += lost;
            }
            match outcomes.get(&(f.id, ch)).map(|(o, _)| o) {
                Some(Outcome::Recovered { recovery_s, .. }) => rec.push(*recovery_s),
                Some(Outcome::Superseded { .. }) => superseded += 1,
                Some(Outcome::NotRecovered { .. }) | None => {}
            }
        }
        rec.sort_by(f64::total_cmp);
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let mut params = json!({});
        if f.plan.loss_pct > 0 {
            params["loss_pct"] = json!(f.plan.loss_pct);
        }
        if f.plan.delay_ms > 0 {
            params["delay_ms"] = json!(f.plan.delay_ms);
        }
        if matches!(
            f.plan.kind,
            Kind::RelayKill | Kind::RelaySilent | Kind::RelayLinkLoss
        ) {
            params["relay"] = json!(f.plan.relay);
        }
        fault_reports.push(json!({
            "id": f.id,
            "kind": f.plan.kind.name(),
            "start_s": round1(f.start_s),
            "cleared_s": round1(f.clear_s),
            "params": params,
            "action": f.action,
            "verified": f.verified,
            "channels_touched": f.touched.len(),
            "recovery_s": {
                "max": rec.last().copied().map(round1),
                "median": rec.get(rec.len() / 2).copied().map(round1),
            },
            "superseded": superseded,
            "packets_lost": {"touched": lost_touched, "other": lost_other},
        }));
    }

    let mut per_channel = serde_json::Map::new();
    for (ch, name) in channels.iter().enumerate() {
        let mut list = Vec::new();
        let mut worst: f64 = 0.0;
        for f in &faults {
            let Some((o, _)) = outcomes.get(&(f.id, ch)) else {
                continue;
            };
            let entry = match o {
                Outcome::Recovered {
                    recovery_s,
                    outage_s,
                } => {
                    worst = worst.max(*recovery_s);
                    if *recovery_s > recovery_limit_s() {
                        failures.push(format!(
                            "{name}: forwarding again {recovery_s:.1} s after fault {} ({}) cleared (limit {RECOVERY_LIMIT_S} s x LAB_TIME_SCALE {} = {:.0} s)",
                            f.id,
                            f.plan.kind.name(),
                            time_scale(),
                            recovery_limit_s()
                        ));
                    }
                    json!({"fault": f.id, "kind": f.plan.kind.name(), "recovery_s": recovery_s, "outage_s": outage_s})
                }
                Outcome::Superseded { by, outage_s } => {
                    json!({"fault": f.id, "kind": f.plan.kind.name(), "superseded_by": by, "outage_s": outage_s})
                }
                Outcome::NotRecovered { outage_s } => {
                    failures.push(format!(
                        "{name}: never forwarding again after fault {} ({})",
                        f.id,
                        f.plan.kind.name()
                    ));
                    json!({"fault": f.id, "kind": f.plan.kind.name(), "recovered": false, "outage_s": outage_s})
                }
            };
            list.push(entry);
        }
        let total_lost =
            ticks.last().map_or(0, |t| t.missing[ch]) - ticks.first().map_or(0, |t| t.missing[ch]);
        per_channel.insert(
            name.clone(),
            json!({
                "relay_at_end": soak.relay_of[ch],
                "max_recovery_s": worst,
                "packets_lost": total_lost,
                "recoveries": list,
            }),
        );
    }
    // One line per channel: how often and how long it stopped unexplained.
    let mut damage_by_channel: BTreeMap<usize, Vec<&Damage>> = BTreeMap::new();
    for d in &damage {
        damage_by_channel.entry(d.channel).or_default().push(d);
    }
    for (ch, list) in &damage_by_channel {
        let total: f64 = list
            .iter()
            .map(|d| (d.to_ms - d.from_ms) as f64 / 1000.0)
            .sum();
        let first = list[0];
        failures.push(format!(
            "{}: stopped {} time(s), {total:.1} s in all, with no fault touching it; first at {:.1} s for {:.1} s (last fault begun before: {})",
            channels[*ch],
            list.len(),
            first.from_ms.saturating_sub(t0_ms) as f64 / 1000.0,
            (first.to_ms - first.from_ms) as f64 / 1000.0,
            first.after_fault.map_or("none".to_string(), |id| format!("{id} {}", faults[id].plan.kind.name()))
        ));
    }
    let lost_before_faults: u64 = (0..n)
        .map(|ch| {
            lost_between(
                &ticks,
                t0_ms,
                faults.first().map_or(end_ms, |f| f.start_ms),
                ch,
            )
        })
        .sum();

    // Leaks: end vs. baseline, both taken while every channel forwarded
    // ("steady"), of the same daemon process for RSS.
    let last_restart = soak.daemon_restarts.last().copied();
    let end_steady: Vec<&Value> = end_samples.iter().filter(|s| s["steady"] == true).collect();
    let end_pid = end_samples
        .last()
        .map(|s| s["pid"].clone())
        .unwrap_or(Value::Null);
    let minute2 = soak
        .samples
        .iter()
        .find(|s| s["steady"] == true && num(&s["at_s"]) >= 120.0)
        .cloned();
    // The baseline: minute 2 on long runs, the middle of shorter ones, and
    // never before the end's daemon process has run RSS_SETTLE_S.
    let (from_s, mut baseline_why) = if long_run {
        (
            120.0,
            "minute 2 (the first sample at or after 120 s".to_string(),
        )
    } else {
        let mid = soak.params.duration_s as f64 / 2.0;
        (
            mid,
            format!(
                "the middle of the run (the run is shorter than {LONG_RUN_S} s; the first sample at or after {mid:.0} s"
            ),
        )
    };
    let from_s = match last_restart {
        None => from_s,
        Some((at, pid)) => {
            baseline_why.push_str(&format!(
                " and {RSS_SETTLE_S:.0} s or more after the restart at {at:.0} s by a fault, of that process, pid {pid}"
            ));
            from_s.max(at + RSS_SETTLE_S)
        }
    };
    let settled_from = last_restart.map_or(0.0, |(at, _)| at + RSS_SETTLE_S);
    let usable = |s: &&Value| {
        s["steady"] == true
            && s["pid"] == end_pid
            && s["label"] != "end"
            && num(&s["at_s"]) >= settled_from
    };
    let baseline = match soak
        .samples
        .iter()
        .filter(usable)
        .find(|s| num(&s["at_s"]) >= from_s)
    {
        Some(s) => Some(s.clone()),
        None => {
            baseline_why
                .push_str("; none had every channel forwarding: the last such sample before it");
            soak.samples.iter().rfind(usable).cloned()
        }
    };
    baseline_why.push_str(", with every channel forwarding)");
    let baseline = baseline.unwrap_or(Value::Null);
    let end = end_steady.last().map_or(Value::Null, |v| (*v).clone());
    if baseline.is_null() {
        failures.push(format!(
            "leaks not checked: no sample to compare with ({baseline_why})"
        ));
    }
    if end.is_null() {
        failures.push("leaks not checked: no end sample with every channel forwarding".into());
    }
    let comparable = !baseline.is_null() && !end.is_null();
    let min_of = |key: &str| {
        end_steady
            .iter()
            .map(|s| s[key].as_u64().unwrap_or(u64::MAX))
            .min()
            .unwrap_or(0)
    };
    let leak = |what: &str, base: u64, end: u64, failures: &mut Vec<String>| {
        if comparable && end > base {
            failures.push(format!(
                "leak: {what} {end} at the end vs {base} at the baseline ({baseline_why})"
            ));
        }
    };
    leak(
        "tunnels",
        baseline["tunnels"].as_u64().unwrap_or(0),
        end["tunnels"].as_u64().unwrap_or(0),
        &mut failures,
    );
    for fam in ["ipv4", "ipv6"] {
        leak(
            &format!("{fam} routes (proto 240)"),
            baseline["routes"][fam].as_u64().unwrap_or(0),
            end["routes"][fam].as_u64().unwrap_or(0),
            &mut failures,
        );
    }
    leak(
        "TUN devices in ingest",
        baseline["tun_links"].as_u64().unwrap_or(0),
        end["tun_links"].as_u64().unwrap_or(0),
        &mut failures,
    );
    leak(
        "lab namespaces",
        baseline["lab_namespaces"].as_u64().unwrap_or(0),
        end["lab_namespaces"].as_u64().unwrap_or(0),
        &mut failures,
    );
    leak(
        "daemon sockets (least of the end samples)",
        baseline["sockets"].as_u64().unwrap_or(0),
        min_of("sockets"),
        &mut failures,
    );
    leak(
        "daemon fds (least of the end samples)",
        baseline["fds"].as_u64().unwrap_or(0),
        min_of("fds"),
        &mut failures,
    );
    let rss_base = num(&baseline["rss_kb"]);
    let rss_end = num(&end["rss_kb"]);
    let rss_growth = if rss_base > 0.0 {
        (rss_end - rss_base) / rss_base
    } else {
        f64::NAN
    };
    if comparable && (rss_growth.is_nan() || rss_growth > RSS_GROWTH_LIMIT) {
        failures.push(format!(
            "RSS {rss_end} kB at the end vs {rss_base} kB at the baseline ({baseline_why}): {:+.1} % (limit +{:.0} %)",
            rss_growth * 100.0,
            RSS_GROWTH_LIMIT * 100.0
        ));
    }
    let mut rss_series: Vec<Value> = soak
        .samples
        .iter()
        .map(|s| json!([s["at_s"], s["pid"], s["rss_kb"], s["steady"]]))
        .collect();
    rss_series.dedup();

    // The daemon's log.
    let log_paths = soak.lab.daemon_log_paths();
    for (i, p) in log_paths.iter().enumerate() {
        let _ = std::fs::copy(p, soak.params.out_dir.join(format!("frr-ingestd.{i}.log")));
    }
    let (logs, log_failures) = log_volume(&log_paths);
    failures.extend(log_failures);

    let receiver_summary = soak.progress.summary.clone().unwrap_or(Value::Null);
    let faults_injected = faults.len();
    if faults_injected == 0 {
        failures.push("no fault was injected (duration too short?)".into());
    }

    // --- Down, and what it left behind.
    let prefix = soak.lab.prefix.clone();
    let run_dir = soak.lab.run_dir.clone();
    let frr_tmp: Vec<String> = soak.frr_tmp.iter().cloned().collect();
    let out_dir = soak.params.out_dir.clone();
    let seed = soak.params.seed;
    let duration_s = soak.params.duration_s;
    drop(soak);
    let leftovers = Command::new(repo_dir().join("sample-network/lab"))
        .arg("leftovers")
        .env("LAB_PREFIX", &prefix)
        .env("LAB_RUN", &run_dir)
        .env("LAB_CHECK_FRR_TMP", frr_tmp.join(" "))
        .output()
        .expect("lab leftovers");
    let leftovers_text = String::from_utf8_lossy(&leftovers.stdout)
        .trim()
        .to_string();
    if !leftovers.status.success() {
        failures.push(format!("after lab down: {leftovers_text}"));
    }
    let amt0_in_root = Command::new("ip")
        .args(["link", "show", "amt0"])
        .output()
        .is_ok_and(|o| o.status.success());
    if amt0_in_root {
        failures.push("after lab down: amt0 exists in the root namespace".into());
    }

    let report = json!({
        "event": "soak",
        "seed": seed,
        "duration_s": duration_s,
        "frr": if frr10 { 10 } else { 8 },
        "limits": {
            "lab_time_scale": time_scale(),
            "recovery_s": recovery_limit_s(),
            "unexplained_stop_s": limit(Duration::from_secs_f64(DAMAGE_MIN_S)).as_secs_f64(),
            "rss_growth_pct": RSS_GROWTH_LIMIT * 100.0,
            "same_log_cause_per_second": 1,
        },
        "channels": {"total": n, "ipv4": channels.iter().filter(|c| !c.contains(':')).count(),
                     "ipv6": channels.iter().filter(|c| c.contains(':')).count(), "pps_each": pps},
        "daemon_config_overrides": overrides,
        "lab_up_s": (lab_up_s * 10.0).round() / 10.0,
        "warm_up_s": (warm_up_s * 10.0).round() / 10.0,
        "run_s": (total_s * 10.0).round() / 10.0,
        "faults_injected": faults_injected,
        "faults_by_kind": by_kind,
        "faults": fault_reports,
        "packets_lost_before_first_fault": lost_before_faults,
        "receiver": {
            "packets": receiver_summary["packets"], "missing": receiver_summary["missing"],
            "duplicates": receiver_summary["duplicates"], "reordered": receiver_summary["reordered"],
        },
        "per_channel": per_channel,
        "unexplained_short_stops": {
            "count": short_stops.len(),
            "seconds": short_stops.iter().map(|d| (d.to_ms - d.from_ms) as f64 / 1000.0).sum::<f64>(),
            "channels": short_stops.iter().map(|d| d.channel).collect::<BTreeSet<_>>().len(),
        },
        "unexplained_damage": damage.iter().map(|d| json!({
            "channel": channels[d.channel],
            "from_s": d.from_ms.saturating_sub(t0_ms) as f64 / 1000.0,
            "seconds": (d.to_ms - d.from_ms) as f64 / 1000.0,
            "last_fault_begun_before": d.after_fault,
        })).collect::<Vec<_>>(),
        "daemon": {
            "baseline": baseline,
            "baseline_is": baseline_why,
            "minute_2": minute2,
            "after_warm_up": warm_sample,
            "end": end,
            "rss_growth_pct": (rss_growth * 1000.0).round() / 10.0,
            "restarts": soak_restarts_json(&last_restart),
            "rss_kb_series": rss_series,
        },
        "log": logs,
        "leftovers_after_down": leftovers_text,
        "frr_tmp_dirs_checked": frr_tmp.len(),
        "failures": failures,
        "out_dir": out_dir.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&report).expect("report JSON");
    std::fs::write(out_dir.join("report.json"), &text).expect("write report.json");
    println!("{text}");
    println!(
        "soak: seed {seed}, {faults_injected} faults, {} failures; report {}",
        failures.len(),
        out_dir.join("report.json").display()
    );
    assert!(
        failures.is_empty(),
        "fault soak (seed {seed}, replay with SOAK_SEED={seed} SOAK_DURATION_S={duration_s}) failed:\n  {}",
        failures.join("\n  ")
    );
}

fn soak_restarts_json(last: &Option<(f64, u32)>) -> Value {
    match last {
        None => json!(null),
        Some((at, pid)) => json!({"last_at_s": (at * 10.0).round() / 10.0, "pid": pid}),
    }
}

// ---------------------------------------------------------------------------
// The analysis on made-up data (no lab): it must be able to fail.

#[cfg(test)]
mod analysis {
    use super::*;

    /// Ticks every 500 ms for `secs` seconds at 20 pps, with channel 0
    /// silent in `[out_from, out_to)` seconds.
    fn ticks(secs: u64, out_from: f64, out_to: f64) -> Vec<Tick> {
        let mut t = Vec::new();
        let (mut p0, mut p1) = (0u64, 0u64);
        for i in 0..=(secs * 2) {
            let s = i as f64 / 2.0;
            if i > 0 {
                if !(s > out_from && s <= out_to) {
                    p0 += 10;
                }
                p1 += 10;
            }
            t.push(Tick {
                ms: 1_000_000 + i * 500,
                packets: vec![p0, p1],
                missing: vec![0, 0],
            });
        }
        t
    }

    fn fault(id: usize, start: f64, clear: f64, touched: &[usize]) -> Window {
        Window {
            id,
            start_ms: 1_000_000 + (start * 1000.0) as u64,
            clear_ms: 1_000_000 + (clear * 1000.0) as u64,
            touched: touched.iter().copied().collect(),
        }
    }

    #[test]
    fn recovery_is_measured_from_the_clear() {
        let t = ticks(60, 10.0, 25.0);
        let r = recoveries(&t, &[fault(0, 10.0, 15.0, &[0, 1])], 2, 20, 10_000);
        assert_eq!(
            r[&(0, 0)].0,
            Outcome::Recovered {
                recovery_s: 10.0,
                outage_s: 15.0
            }
        );
        assert_eq!(
            r[&(0, 1)].0,
            Outcome::Recovered {
                recovery_s: 0.0,
                outage_s: 0.0
            }
        );
        // The window closes 10 s after the clear, with two good intervals.
        assert_eq!(r[&(0, 0)].1, 1_000_000 + 26_000);
        assert_eq!(r[&(0, 1)].1, 1_000_000 + 25_000);
    }

    #[test]
    fn a_channel_that_stays_out_is_not_recovered() {
        let t = ticks(60, 10.0, 100.0);
        let r = recoveries(&t, &[fault(0, 10.0, 12.0, &[0])], 2, 20, 10_000);
        assert!(
            matches!(r[&(0, 0)].0, Outcome::NotRecovered { .. }),
            "{r:?}"
        );
    }

    #[test]
    fn a_later_fault_on_the_channel_supersedes() {
        let t = ticks(60, 10.0, 30.0);
        let faults = [fault(0, 10.0, 12.0, &[0]), fault(1, 20.0, 22.0, &[0])];
        let r = recoveries(&t, &faults, 2, 20, 10_000);
        assert_eq!(
            r[&(0, 0)].0,
            Outcome::Superseded {
                by: 1,
                outage_s: 10.0
            }
        );
        assert!(matches!(r[&(1, 0)].0, Outcome::Recovered { recovery_s, .. } if recovery_s == 8.0));
    }

    #[test]
    fn an_outage_no_touching_fault_explains_is_damage() {
        let t = ticks(60, 30.0, 33.0);
        let damage = |faults: &[Window]| {
            let owned = recoveries(&t, faults, 2, 20, 10_000);
            unexplained_damage(&t, faults, &owned, (2, 20), 1_000_000, 2_000)
        };
        // The fault touches channel 1 only.
        let d = damage(&[fault(0, 29.0, 31.0, &[1])]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].channel, 0);
        assert_eq!(d[0].after_fault, Some(0));
        // Touching channel 0, the same outage is explained.
        assert!(damage(&[fault(0, 29.0, 31.0, &[0])]).is_empty());
        // A fault touching channel 0 long before does not explain it: its
        // window closed after the channel had recovered.
        let d = damage(&[fault(0, 5.0, 6.0, &[0])]);
        assert_eq!(d.len(), 1, "{d:?}");
    }

    #[test]
    fn log_causes_keep_addresses_and_drop_numbers() {
        let a = normalize("relay 192.0.2.10:2268 lost after 3.5 s (seq 17)", true);
        let b = normalize("relay 192.0.2.10:41000 lost after 12 s (seq 9)", true);
        let c = normalize("relay [2001:db8:0:2::11]:2268 lost after 1 s (seq 1)", true);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.contains("192.0.2.10"), "{a}");
        assert_eq!(
            normalize("relay 192.0.2.10:2268 lost", false),
            normalize("relay [2001:db8::1]:2268 lost", false)
        );
        assert_eq!(normalize("amt0 up after 12 s", true), "amt0 up after # s");
        assert_ne!(
            normalize("Up { family: V4 }", true),
            normalize("Up { family: V6 }", true)
        );
        assert_eq!(
            normalize("ingest_policy::dorms::client failed", false),
            "ingest_policy::dorms::client failed"
        );
    }

    #[test]
    fn schedule_is_seeded() {
        let a: Vec<_> = schedule(7, true, &[])
            .iter()
            .map(|p| (p.kind, p.relay, p.hold_s.to_bits()))
            .collect();
        let b: Vec<_> = schedule(7, true, &[])
            .iter()
            .map(|p| (p.kind, p.relay, p.hold_s.to_bits()))
            .collect();
        let c: Vec<_> = schedule(8, true, &[])
            .iter()
            .map(|p| (p.kind, p.relay, p.hold_s.to_bits()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Every kind once per round.
        let first: BTreeSet<Kind> = schedule(7, true, &[])[..Kind::all(true).len()]
            .iter()
            .map(|p| p.kind)
            .collect();
        assert_eq!(first.len(), Kind::all(true).len());
    }
}
