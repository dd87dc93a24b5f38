//! CBACC-style bandwidth admission (pure).
//!
//! # Units
//! Rates are bits per second (`u64`). [`parse_bandwidth`] takes decimal SI
//! suffixes: `k`/`K` = 10^3, `M` = 10^6, `G` = 10^9, `T` = 10^12, e.g. `50M`,
//! `1.5G`, `800k`, or plain bits `2000000`. The old platform's
//! `--bandwidth 10` meant 10 x 2^20 = 10,485,760 bit/s; here `10M` is
//! 10,000,000 bit/s (use `10485760` to reproduce the old cap).
//!
//! # Order
//! Flows are ranked (best first) by:
//! 1. offload `(population - 1) * bitrate`, highest first (a flow serving
//!    more receivers saves more upstream traffic per bit ingested);
//! 2. bitrate, smallest first (more flows fit);
//! 3. flows already admitted first (stability);
//! 4. (S,G) ascending (deterministic).
//!
//! The limit is filled greedily in that order: a flow that does not fit is
//! blocked, and later (smaller) flows may still fit. Flows without a bitrate
//! are blocked (`NoBitrate`); callers substitute a configured default rate
//! before calling when one exists.
//!
//! # Hold-down and "displace"
//! A flow that is blocked for lack of room while it was not admitted is held
//! down for 150 s plus a uniform random 0-30 s (draft-ietf-mboned-cbacc),
//! drawn from the state's seeded RNG. A flow *displaces* an admitted flow when
//! it takes capacity that the admitted flow would otherwise keep, i.e. the
//! admitted flow is blocked in this evaluation because the other one was
//! placed first.
//!
//! While held down (and not currently admitted), a flow may still use spare
//! capacity, but it may displace only admitted flows with a strictly lower
//! offload. Concretely: when a held flow's turn comes, the bitrates of the
//! admitted flows ranked after it whose offload is >= its own are reserved,
//! and it is admitted only if it fits in what remains. So a flow blocked by
//! the "smaller flows first" or "already admitted first" rules cannot come
//! back and evict the flows that beat it until its hold-down expires, but a
//! flow whose offload has grown above theirs (more receivers joined) can.
//! Being admitted clears a flow's hold-down; when a hold-down expires the flow
//! competes in the full order again (and, if blocked again, gets a new one).
//! Hold-downs outlive a flow's absence from the input, so a flow that leaves
//! and rejoins within its hold-down is still held.
//!
//! # Sender priority
//! A sender ranks its own flows with the DORMS `priority` leaf (higher =
//! keep; [`DEFAULT_SENDER_PRIORITY`] when not declared). Within one source, a
//! lower-priority flow is never admitted while a higher-priority flow of that
//! source is blocked for room (draft-ietf-mboned-cbacc, "Fairness and
//! Inter-flow Ordering"; the old platform meant to do this and crashed
//! instead). After the greedy fill, admitted flows that break the rule are set
//! aside (`SenderPriority`) and the fill is run again without them, until
//! nothing changes; the room they free goes to the rest in the usual order.
//! Set-aside flows whose reason went away (the higher-priority flow got in)
//! then take any spare room, higher priority first; one that does not fit is
//! blocked for room like any other. Set-aside flows get no hold-down of their
//! own: they were not beaten for room. When all flows share one priority (the
//! usual case) none of this runs.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ingest_types::{SourceGroup, shrink_when_sparse};

/// Admission hashes every flow each evaluation; foldhash is several times
/// faster than SipHash on these small keys and still randomly seeded.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Errors from [`parse_bandwidth`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BandwidthError {
    #[error("empty bandwidth")]
    Empty,
    #[error("bad bandwidth {text:?}: expected a number with an optional k, M, G or T suffix")]
    Syntax { text: String },
    #[error("bandwidth {text:?} is too large")]
    Overflow { text: String },
}

/// Parses `50M`, `1.5G`, `800k`, `2000` into bits per second (decimal SI;
/// fractional bits are truncated).
pub fn parse_bandwidth(text: &str) -> Result<u64, BandwidthError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(BandwidthError::Empty);
    }
    let syntax = || BandwidthError::Syntax {
        text: text.to_owned(),
    };
    let (number, multiplier): (&str, u128) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 1_000),
        Some((i, 'M')) => (&trimmed[..i], 1_000_000),
        Some((i, 'G')) => (&trimmed[..i], 1_000_000_000),
        Some((i, 'T')) => (&trimmed[..i], 1_000_000_000_000),
        _ => (trimmed, 1),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return Err(syntax());
    }
    if number.ends_with('.') {
        return Err(syntax());
    }
    let overflow = || BandwidthError::Overflow {
        text: text.to_owned(),
    };
    let int_value: u128 = int_part.parse().map_err(|_| overflow())?;
    let mut value = int_value.checked_mul(multiplier).ok_or_else(overflow)?;
    // Fraction: only digits that can matter at this multiplier.
    let mut scale = multiplier;
    for digit in frac_part.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        value += u128::from(digit - b'0') * scale;
    }
    u64::try_from(value).map_err(|_| overflow())
}

/// Formats bits/s with an SI suffix, e.g. `6M`, `1.5G`, `2000`.
pub fn format_bandwidth(bits: u64) -> String {
    for (suffix, unit) in [
        ("T", 1_000_000_000_000u64),
        ("G", 1_000_000_000),
        ("M", 1_000_000),
        ("k", 1_000),
    ] {
        if bits >= unit {
            let whole = bits / unit;
            let frac = bits % unit;
            if frac == 0 {
                return format!("{whole}{suffix}");
            }
            let digits = unit.ilog10() as usize;
            let frac_text = format!("{frac:0digits$}");
            return format!("{whole}.{}{suffix}", frac_text.trim_end_matches('0'));
        }
    }
    bits.to_string()
}

/// Where a flow's bitrate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitrateOrigin {
    /// Declared by the sender's DORMS server.
    Dorms,
    /// The operator's default for flows without metadata.
    Default,
    /// Set explicitly (configuration, tests).
    Configured,
    /// Unknown: no metadata and no default.
    Unknown,
}

/// The DORMS `priority` of a flow whose sender declares none (the YANG
/// default).
pub const DEFAULT_SENDER_PRIORITY: u16 = 256;

/// One wanted flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDemand {
    pub sg: SourceGroup,
    /// Downstream interfaces joined, or the joinfile's third column; 0 is
    /// treated as 1.
    pub population: u32,
    /// Bits per second; `None` blocks the flow.
    pub bitrate: Option<u64>,
    pub bitrate_origin: BitrateOrigin,
    /// Whether the flow is admitted (being ingested) right now.
    pub admitted_now: bool,
    /// The sender's preference among its own flows (DORMS `priority`,
    /// higher = keep); [`DEFAULT_SENDER_PRIORITY`] when not declared.
    pub priority: u16,
}

impl FlowDemand {
    /// `(population - 1) * bitrate`, 0 without a bitrate.
    pub fn offload(&self) -> u128 {
        let receivers_beyond_first = u128::from(self.population.max(1) - 1);
        receivers_beyond_first * u128::from(self.bitrate.unwrap_or(0))
    }
}

/// Why a flow was admitted or blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReason {
    /// Admitted: it fits.
    Fits,
    /// Blocked: not enough room at its rank.
    OverLimit { needed: u64, available: u64 },
    /// Blocked: no bitrate known and no default configured.
    NoBitrate,
    /// Blocked: held down and would have had to displace admitted flows of
    /// equal or higher offload. `available` counts spare room only.
    HeldDown {
        until: Instant,
        needed: u64,
        available: u64,
    },
    /// Blocked: a flow of the same source with a higher sender priority is
    /// blocked for room (see the module docs).
    SenderPriority {
        /// The higher-priority flow that is blocked.
        blocked: SourceGroup,
        blocked_priority: u16,
        priority: u16,
    },
}

impl DecisionReason {
    /// Blocked because the limit had no room for it (the kinds that hold
    /// back lower-priority flows of the same sender).
    pub fn is_blocked_for_room(&self) -> bool {
        matches!(
            self,
            DecisionReason::OverLimit { .. } | DecisionReason::HeldDown { .. }
        )
    }
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::Fits => f.write_str("fits"),
            DecisionReason::OverLimit { needed, available } => write!(
                f,
                "over limit: needs {}, {} available",
                format_bandwidth(*needed),
                format_bandwidth(*available)
            ),
            DecisionReason::NoBitrate => f.write_str("no bitrate known and no default"),
            DecisionReason::HeldDown {
                needed, available, ..
            } => write!(
                f,
                "held down after being blocked: needs {}, {} spare",
                format_bandwidth(*needed),
                format_bandwidth(*available)
            ),
            DecisionReason::SenderPriority {
                blocked,
                blocked_priority,
                priority,
            } => write!(
                f,
                "sender priority: {blocked} of the same source has priority \
                 {blocked_priority} > {priority} and is blocked"
            ),
        }
    }
}

/// The decision for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionDecision {
    pub sg: SourceGroup,
    pub admitted: bool,
    pub reason: DecisionReason,
    pub bitrate: Option<u64>,
    pub offload: u128,
    /// Position in the ranking, 0 = best.
    pub rank: usize,
    /// Hold-down in force after this evaluation (blocked flows only).
    pub held_until: Option<Instant>,
}

/// Hold-down timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldDownConfig {
    pub min: Duration,
    /// Uniform random extra in `0..=jitter`.
    pub jitter: Duration,
}

impl Default for HoldDownConfig {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(150),
            jitter: Duration::from_secs(30),
        }
    }
}

/// State carried between evaluations: hold-downs and the seeded RNG.
#[derive(Debug, Clone)]
pub struct AdmissionState {
    holddowns: FastMap<SourceGroup, Instant>,
    rng: StdRng,
    config: HoldDownConfig,
}

impl AdmissionState {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, HoldDownConfig::default())
    }

    pub fn with_config(seed: u64, config: HoldDownConfig) -> Self {
        Self {
            holddowns: FastMap::default(),
            rng: StdRng::seed_from_u64(seed),
            config,
        }
    }

    /// The running hold-down of `sg` at `now`.
    pub fn held_until(&self, sg: &SourceGroup, now: Instant) -> Option<Instant> {
        if self.holddowns.is_empty() {
            return None; // skips hashing on a fresh state
        }
        self.holddowns.get(sg).copied().filter(|u| *u > now)
    }

    /// When the next hold-down expires: re-evaluate then.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.holddowns.values().copied().filter(|u| *u > now).min()
    }

    fn start_hold_down(&mut self, sg: SourceGroup, now: Instant) -> Instant {
        let jitter_ms = u64::try_from(self.config.jitter.as_millis()).unwrap_or(u64::MAX);
        let extra = Duration::from_millis(self.rng.random_range(0..=jitter_ms));
        let until = now + self.config.min + extra;
        self.holddowns.insert(sg, until);
        until
    }
}

/// Ranks `flows` and fills `limit` bits/s; see the module docs for the
/// rules. Returns one decision per flow, in rank order.
pub fn admit(
    flows: &[FlowDemand],
    limit: u64,
    now: Instant,
    state: &mut AdmissionState,
) -> Vec<AdmissionDecision> {
    state.holddowns.retain(|_, until| *until > now);
    // Blocked flows get hold-downs; reserve so inserts do not rehash.
    state
        .holddowns
        .reserve(flows.len().saturating_sub(state.holddowns.len()));

    let offloads: Vec<u128> = flows.iter().map(FlowDemand::offload).collect();
    // Compact sort keys (32 bytes) with the index attached; the (S,G) breaks
    // ties through the index, then the index itself (duplicate input), so
    // the order is total and an unstable sort is deterministic.
    type RankKey = (std::cmp::Reverse<u128>, u64, bool, usize);
    let mut ranked: Vec<RankKey> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                std::cmp::Reverse(offloads[i]),
                f.bitrate.unwrap_or(u64::MAX),
                !f.admitted_now,
                i,
            )
        })
        .collect();
    ranked.sort_unstable_by(|a, b| {
        (a.0, a.1, a.2)
            .cmp(&(b.0, b.1, b.2))
            .then_with(|| flows[a.3].sg.cmp(&flows[b.3].sg))
            .then(a.3.cmp(&b.3))
    });
    let ranking = Ranking {
        flows,
        order: ranked.iter().map(|k| k.3).collect(),
        offloads,
        held: ranked
            .iter()
            .map(|k| {
                let flow = &flows[k.3];
                if flow.admitted_now {
                    None
                } else {
                    state.held_until(&flow.sg, now)
                }
            })
            .collect(),
        limit,
    };

    // Per rank: set aside by the sender-priority rule (see the module docs).
    let mut set_aside = vec![false; flows.len()];
    let (mut reasons, mut used) = ranking.fill(&set_aside);
    if flows.windows(2).any(|w| w[0].priority != w[1].priority) {
        let sources = SourceIds::new(&ranking);
        // Each round sets aside at least one more flow, or ends: at most
        // one round per flow, and the rule holds when it ends.
        loop {
            used = ranking.readmit_set_aside(&sources, &mut reasons, used);
            let top = ranking.top_blocked_priority(&sources, &reasons);
            let mut changed = false;
            for (rank, &index) in ranking.order.iter().enumerate() {
                // Only newly set-aside flows count as a change, so the loop
                // cannot spin on a flow it already set aside.
                if !set_aside[rank]
                    && reasons[rank] == DecisionReason::Fits
                    && top[sources.per_rank[rank]]
                        .is_some_and(|(priority, _)| priority > flows[index].priority)
                {
                    set_aside[rank] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            (reasons, used) = ranking.fill(&set_aside);
        }
    }
    debug_assert!(used <= limit);

    let mut decisions = Vec::with_capacity(flows.len());
    for (rank, (&index, reason)) in ranking.order.iter().zip(reasons).enumerate() {
        let flow = &flows[index];
        let admitted = reason == DecisionReason::Fits;
        let held_until = if admitted {
            if !state.holddowns.is_empty() {
                state.holddowns.remove(&flow.sg);
            }
            None
        } else {
            match &reason {
                DecisionReason::OverLimit { .. } => Some(state.start_hold_down(flow.sg, now)),
                DecisionReason::HeldDown { until, .. } => Some(*until),
                DecisionReason::SenderPriority { .. } => ranking.held[rank],
                DecisionReason::NoBitrate | DecisionReason::Fits => None,
            }
        };
        decisions.push(AdmissionDecision {
            sg: flow.sg,
            admitted,
            reason,
            bitrate: flow.bitrate,
            offload: ranking.offloads[index],
            rank,
            held_until,
        });
    }
    // After the inserts (the reserve above grows it for them): a table
    // sized for flows that have gone is given back.
    shrink_when_sparse(&mut state.holddowns);
    decisions
}

/// The ranked input of one evaluation; the passes below read it.
struct Ranking<'a> {
    flows: &'a [FlowDemand],
    /// Flow indexes, best first.
    order: Vec<usize>,
    /// Per flow index.
    offloads: Vec<u128>,
    /// Per rank: the running hold-down of a flow that is not admitted now.
    held: Vec<Option<Instant>>,
    limit: u64,
}

impl Ranking<'_> {
    /// One greedy pass over the flows not set aside. Returns the reason per
    /// rank and the bits/s admitted.
    /// Set-aside flows get a placeholder `SenderPriority` reason that
    /// [`Self::readmit_set_aside`] replaces.
    fn fill(&self, set_aside: &[bool]) -> (Vec<DecisionReason>, u64) {
        let flows = self.flows;
        let order = &self.order;
        // reserved_after[rank]: bitrate of admitted flows ranked after it
        // with the same offload (those a held flow may not displace; flows
        // with higher offload rank before it anyway). Set-aside flows hold
        // nothing.
        let mut reserved_after = vec![0u64; order.len()];
        let mut running = 0u64;
        for pos in (0..order.len()).rev() {
            reserved_after[pos] = running;
            let index = order[pos];
            let flow = &flows[index];
            let next_same_offload = pos
                .checked_sub(1)
                .is_some_and(|prev| self.offloads[order[prev]] == self.offloads[index]);
            if flow.admitted_now && !set_aside[pos] {
                running = running.saturating_add(flow.bitrate.unwrap_or(0));
            }
            if !next_same_offload {
                running = 0;
            }
        }

        let mut used = 0u64;
        let mut reasons = Vec::with_capacity(order.len());
        for (rank, &index) in order.iter().enumerate() {
            let flow = &flows[index];
            if set_aside[rank] {
                reasons.push(DecisionReason::SenderPriority {
                    blocked: flow.sg,
                    blocked_priority: flow.priority,
                    priority: flow.priority,
                });
                continue;
            }
            let available = self.limit.saturating_sub(used);
            let reason = match (flow.bitrate, self.held[rank]) {
                (None, _) => DecisionReason::NoBitrate,
                (Some(bitrate), None) if bitrate <= available => DecisionReason::Fits,
                (Some(bitrate), None) => DecisionReason::OverLimit {
                    needed: bitrate,
                    available,
                },
                (Some(bitrate), Some(until)) => {
                    let spare = available.saturating_sub(reserved_after[rank]);
                    if bitrate <= spare {
                        DecisionReason::Fits
                    } else {
                        DecisionReason::HeldDown {
                            until,
                            needed: bitrate,
                            available: spare,
                        }
                    }
                }
            };
            if reason == DecisionReason::Fits {
                used = used.saturating_add(flow.bitrate.unwrap_or(0));
            }
            reasons.push(reason);
        }
        (reasons, used)
    }

    /// Per source id: the highest priority among its flows blocked for
    /// room, and that flow (the best-ranked one on ties).
    fn top_blocked_priority(
        &self,
        sources: &SourceIds,
        reasons: &[DecisionReason],
    ) -> Vec<Option<(u16, SourceGroup)>> {
        let mut top: Vec<Option<(u16, SourceGroup)>> = vec![None; sources.count];
        for (rank, &index) in self.order.iter().enumerate() {
            if reasons[rank].is_blocked_for_room() {
                raise(&mut top[sources.per_rank[rank]], &self.flows[index]);
            }
        }
        top
    }

    /// Decides the set-aside flows: one whose source still has a
    /// higher-priority flow blocked for room stays set aside (naming it);
    /// the others take spare room, higher priority first (so a sender's
    /// flows are decided in its order), or are blocked for room when they do
    /// not fit, which in turn holds back lower-priority flows of their
    /// source. Returns bits/s used.
    fn readmit_set_aside(
        &self,
        sources: &SourceIds,
        reasons: &mut [DecisionReason],
        mut used: u64,
    ) -> u64 {
        let mut top = self.top_blocked_priority(sources, reasons);
        let mut waiting: Vec<usize> = (0..reasons.len())
            .filter(|&rank| matches!(reasons[rank], DecisionReason::SenderPriority { .. }))
            .collect();
        waiting.sort_by_key(|&rank| {
            (
                std::cmp::Reverse(self.flows[self.order[rank]].priority),
                rank,
            )
        });
        for rank in waiting {
            let flow = &self.flows[self.order[rank]];
            let top = &mut top[sources.per_rank[rank]];
            if let Some((priority, blocked)) = *top
                && priority > flow.priority
            {
                reasons[rank] = DecisionReason::SenderPriority {
                    blocked,
                    blocked_priority: priority,
                    priority: flow.priority,
                };
                continue;
            }
            // Only flows that fitted (so have a bitrate) are set aside.
            let bitrate = flow.bitrate.unwrap_or(0);
            let spare = self.limit.saturating_sub(used);
            reasons[rank] = if bitrate <= spare {
                used = used.saturating_add(bitrate);
                DecisionReason::Fits
            } else {
                raise(top, flow);
                match self.held[rank] {
                    Some(until) => DecisionReason::HeldDown {
                        until,
                        needed: bitrate,
                        available: spare,
                    },
                    None => DecisionReason::OverLimit {
                        needed: bitrate,
                        available: spare,
                    },
                }
            };
        }
        used
    }
}

/// Keeps the highest-priority blocked flow of a source (the first seen on
/// ties, i.e. the best-ranked when walked in rank order).
fn raise(top: &mut Option<(u16, SourceGroup)>, flow: &FlowDemand) {
    if top.is_none_or(|(priority, _)| flow.priority > priority) {
        *top = Some((flow.priority, flow.sg));
    }
}

/// Dense per-source ids, so the sender-priority rounds index a `Vec`
/// instead of hashing addresses every round.
struct SourceIds {
    /// Per rank.
    per_rank: Vec<usize>,
    count: usize,
}

impl SourceIds {
    fn new(ranking: &Ranking<'_>) -> Self {
        let mut ids: FastMap<IpAddr, usize> = FastMap::default();
        let per_rank = ranking
            .order
            .iter()
            .map(|&index| {
                let next = ids.len();
                *ids.entry(ranking.flows[index].sg.source).or_insert(next)
            })
            .collect();
        Self {
            per_rank,
            count: ids.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn sg(n: u8) -> SourceGroup {
        SourceGroup::new(
            format!("10.0.0.{n}").parse().unwrap(),
            format!("232.1.1.{n}").parse().unwrap(),
        )
        .unwrap()
    }

    fn flow(n: u8, bitrate: u64, population: u32, admitted_now: bool) -> FlowDemand {
        FlowDemand {
            sg: sg(n),
            population,
            bitrate: Some(bitrate),
            bitrate_origin: BitrateOrigin::Dorms,
            admitted_now,
            priority: DEFAULT_SENDER_PRIORITY,
        }
    }

    fn decision(decisions: &[AdmissionDecision], n: u8) -> &AdmissionDecision {
        decisions.iter().find(|d| d.sg == sg(n)).unwrap()
    }

    /// Feeds decisions back as `admitted_now`, like the daemon does.
    fn apply(flows: &mut [FlowDemand], decisions: &[AdmissionDecision]) {
        for f in flows.iter_mut() {
            f.admitted_now = decisions.iter().any(|d| d.sg == f.sg && d.admitted);
        }
    }

    #[test]
    fn bandwidth_units() {
        assert_eq!(parse_bandwidth("50M"), Ok(50 * M));
        assert_eq!(parse_bandwidth("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bandwidth("800k"), Ok(800_000));
        assert_eq!(parse_bandwidth("800K"), Ok(800_000));
        assert_eq!(parse_bandwidth(" 2000 "), Ok(2000));
        assert_eq!(parse_bandwidth("0"), Ok(0));
        assert_eq!(parse_bandwidth("2T"), Ok(2_000_000_000_000));
        assert_eq!(parse_bandwidth("1.0000005k"), Ok(1000));
        assert_eq!(parse_bandwidth("10485760"), Ok(10_485_760));
        for bad in [
            "", " ", "M", "1.M", ".5M", "5m", "5 M", "5Mi", "-1", "1e6", "five",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_bandwidth("99999999999T"),
            Err(BandwidthError::Overflow { .. })
        ));
        assert_eq!(format_bandwidth(6 * M), "6M");
        assert_eq!(format_bandwidth(1_500_000_000), "1.5G");
        assert_eq!(format_bandwidth(2000), "2k");
        assert_eq!(format_bandwidth(999), "999");
        assert_eq!(format_bandwidth(10_485_760), "10.48576M");
    }

    #[test]
    fn must_show_scenario() {
        let t0 = Instant::now();
        let mut state = AdmissionState::new(1);
        let limit = parse_bandwidth("10M").unwrap();
        let mut flows = vec![
            flow(1, 6 * M, 1, false),
            flow(2, 3 * M, 1, false),
            flow(3, 2 * M, 1, false),
        ];

        let d = admit(&flows, limit, t0, &mut state);
        assert!(decision(&d, 2).admitted);
        assert!(decision(&d, 3).admitted);
        let six = decision(&d, 1);
        assert!(!six.admitted);
        assert_eq!(
            six.reason,
            DecisionReason::OverLimit {
                needed: 6 * M,
                available: 5 * M
            }
        );
        let held = six.held_until.unwrap();
        assert!(held >= t0 + Duration::from_secs(150) && held <= t0 + Duration::from_secs(180));
        apply(&mut flows, &d);

        // 10 s later the 6M flow's population rises to 3: offload 12M beats
        // the zero-offload admitted flows, so it may displace one even while
        // held down.
        let t1 = t0 + Duration::from_secs(10);
        flows[0].population = 3;
        let d = admit(&flows, limit, t1, &mut state);
        assert!(decision(&d, 1).admitted, "{d:?}");
        assert_eq!(decision(&d, 1).offload, 12 * u128::from(M));
        assert!(decision(&d, 3).admitted);
        let three = decision(&d, 2);
        assert!(!three.admitted);
        assert_eq!(
            three.reason,
            DecisionReason::OverLimit {
                needed: 3 * M,
                available: 2 * M
            }
        );
        assert!(three.held_until.is_some());
        assert_eq!(
            state.held_until(&sg(1), t1),
            None,
            "admission clears hold-down"
        );
    }

    #[test]
    fn held_flow_cannot_displace_equal_offload_until_expiry() {
        let t0 = Instant::now();
        let mut state = AdmissionState::new(7);
        let limit = 10 * M;
        let mut flows = vec![
            flow(1, 6 * M, 1, false),
            flow(2, 3 * M, 1, false),
            flow(3, 2 * M, 1, false),
        ];
        let d = admit(&flows, limit, t0, &mut state);
        apply(&mut flows, &d);
        let held = decision(&d, 1).held_until.unwrap();

        // Flow 2 now declares 7M. Without a hold-down, flow 1 (6M) would rank
        // ahead of it and displace it. Held, it may not.
        flows[1].bitrate = Some(7 * M);
        let t1 = t0 + Duration::from_secs(20);
        let d = admit(&flows, limit, t1, &mut state);
        assert!(decision(&d, 2).admitted);
        assert!(decision(&d, 3).admitted);
        assert_eq!(
            decision(&d, 1).reason,
            DecisionReason::HeldDown {
                until: held,
                needed: 6 * M,
                available: M
            }
        );
        apply(&mut flows, &d);

        // After the hold-down expires it displaces flow 2.
        let d = admit(&flows, limit, held, &mut state);
        assert!(decision(&d, 1).admitted);
        assert!(decision(&d, 3).admitted);
        assert!(!decision(&d, 2).admitted);
        assert!(matches!(
            decision(&d, 2).reason,
            DecisionReason::OverLimit { .. }
        ));
    }

    #[test]
    fn held_flow_uses_spare_capacity() {
        let t0 = Instant::now();
        let mut state = AdmissionState::new(3);
        let mut flows = vec![
            flow(1, 6 * M, 1, false),
            flow(2, 3 * M, 1, false),
            flow(3, 2 * M, 1, false),
        ];
        let d = admit(&flows, 10 * M, t0, &mut state);
        apply(&mut flows, &d);
        // Flow 2 leaves: 6M + 2M fit; the held flow takes the spare room.
        flows.remove(1);
        let d = admit(&flows, 10 * M, t0 + Duration::from_secs(5), &mut state);
        assert!(d.iter().all(|d| d.admitted), "{d:?}");
    }

    #[test]
    fn greedy_fill_lets_smaller_later_flows_in() {
        let mut state = AdmissionState::new(0);
        // Offload puts the 8M flow first; the 5M does not fit; the 2M does.
        let flows = vec![
            flow(1, 8 * M, 2, false),
            flow(2, 5 * M, 1, false),
            flow(3, 2 * M, 1, false),
        ];
        let d = admit(&flows, 10 * M, Instant::now(), &mut state);
        let admitted: Vec<bool> = (1..=3).map(|n| decision(&d, n).admitted).collect();
        assert_eq!(admitted, vec![true, false, true]);
        assert_eq!(
            d.iter().map(|d| d.sg).collect::<Vec<_>>(),
            vec![sg(1), sg(3), sg(2)]
        );
    }

    #[test]
    fn research_examples_fixed_behaviour() {
        // Cap as the old `--bandwidth 10`.
        let cap = 10_485_760;
        // Example A: 6M/3M/2M, populations absent: smaller flows first.
        let flows = vec![
            flow(1, 6 * M, 1, false),
            flow(2, 3 * M, 1, false),
            flow(3, 2 * M, 1, false),
        ];
        let d = admit(&flows, cap, Instant::now(), &mut AdmissionState::new(0));
        assert_eq!(
            (
                decision(&d, 1).admitted,
                decision(&d, 2).admitted,
                decision(&d, 3).admitted
            ),
            (false, true, true)
        );
        // Example B: D without metadata at default 12 x 2^20; no default.
        let mut with_d = flows.clone();
        with_d.push(FlowDemand {
            sg: sg(4),
            population: 1,
            bitrate: Some(12_582_912),
            bitrate_origin: BitrateOrigin::Default,
            admitted_now: false,
            priority: DEFAULT_SENDER_PRIORITY,
        });
        let d = admit(&with_d, cap, Instant::now(), &mut AdmissionState::new(0));
        assert!(!decision(&d, 4).admitted);
        assert!(!decision(&d, 1).admitted);
        assert!(decision(&d, 2).admitted && decision(&d, 3).admitted);
        with_d[3].bitrate = None;
        with_d[3].bitrate_origin = BitrateOrigin::Unknown;
        let d = admit(&with_d, cap, Instant::now(), &mut AdmissionState::new(0));
        assert_eq!(decision(&d, 4).reason, DecisionReason::NoBitrate);
        assert_eq!(decision(&d, 4).held_until, None);
        // Example C: A has population 5 (offload 24M) and is kept; among the
        // zero-offload flows the smaller one (C, 2M) fits, B does not.
        let mut c = flows.clone();
        c[0].population = 5;
        let d = admit(&c, cap, Instant::now(), &mut AdmissionState::new(0));
        assert_eq!(decision(&d, 1).offload, 24 * u128::from(M));
        assert!(decision(&d, 1).admitted);
        assert!(decision(&d, 3).admitted);
        assert!(!decision(&d, 2).admitted);
        assert_eq!(
            decision(&d, 2).reason,
            DecisionReason::OverLimit {
                needed: 3 * M,
                available: cap - 8 * M
            }
        );
    }

    #[test]
    fn boundary_sum_equal_to_limit_is_admitted() {
        let flows = vec![flow(1, 6 * M, 1, false), flow(2, 4 * M, 1, false)];
        let d = admit(&flows, 10 * M, Instant::now(), &mut AdmissionState::new(0));
        assert!(d.iter().all(|d| d.admitted));
    }

    #[test]
    fn equal_flows_prefer_admitted_then_sg() {
        let flows = vec![flow(1, 6 * M, 1, false), flow(2, 6 * M, 1, true)];
        let d = admit(&flows, 10 * M, Instant::now(), &mut AdmissionState::new(0));
        assert!(decision(&d, 2).admitted);
        assert!(!decision(&d, 1).admitted);
        let flows = vec![flow(2, 6 * M, 1, false), flow(1, 6 * M, 1, false)];
        let d = admit(&flows, 10 * M, Instant::now(), &mut AdmissionState::new(0));
        assert!(decision(&d, 1).admitted);
        assert!(!decision(&d, 2).admitted);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let flows: Vec<FlowDemand> = (1..=50u8)
            .map(|n| flow(n, u64::from(n) * 100_000, u32::from(n % 4), n % 3 == 0))
            .collect();
        let t0 = Instant::now();
        let a = admit(&flows, 50 * M, t0, &mut AdmissionState::new(99));
        let b = admit(&flows, 50 * M, t0, &mut AdmissionState::new(99));
        assert_eq!(a, b);
        let mut state = AdmissionState::new(99);
        admit(&flows, 50 * M, t0, &mut state);
        assert!(state.next_expiry(t0).is_some());
    }

    #[test]
    fn hold_down_survives_absence_and_expires() {
        let t0 = Instant::now();
        let mut state = AdmissionState::with_config(
            5,
            HoldDownConfig {
                min: Duration::from_secs(150),
                jitter: Duration::ZERO,
            },
        );
        let flows = vec![flow(1, 6 * M, 1, true), flow(2, 6 * M, 1, false)];
        let d = admit(&flows, 10 * M, t0, &mut state);
        assert_eq!(
            decision(&d, 2).held_until,
            Some(t0 + Duration::from_secs(150))
        );
        // Flow 2 leaves and comes back; still held.
        admit(
            &flows[..1],
            10 * M,
            t0 + Duration::from_secs(10),
            &mut state,
        );
        assert_eq!(
            state.held_until(&sg(2), t0 + Duration::from_secs(20)),
            Some(t0 + Duration::from_secs(150))
        );
        assert_eq!(
            state.held_until(&sg(2), t0 + Duration::from_secs(150)),
            None
        );
    }

    /// Flows 1 and 2 share source 10.0.0.99; flow 3 has its own.
    fn same_sender(n: u8, bitrate: u64, priority: u16) -> FlowDemand {
        let mut f = flow(n, bitrate, 1, false);
        f.sg.source = "10.0.0.99".parse().unwrap();
        f.priority = priority;
        f
    }

    fn sender_sg(n: u8) -> SourceGroup {
        same_sender(n, 0, 0).sg
    }

    #[test]
    fn sender_priority_frees_room_for_the_preferred_flow() {
        // Plain order: 2M and 3M fit, the 6M one (which its sender prefers)
        // does not. The rule sets the 3M one aside; then 6M fits and 3M has
        // no room left, so it is blocked for room like any other.
        let flows = vec![
            same_sender(1, 6 * M, 300),
            same_sender(2, 3 * M, 100),
            flow(3, 2 * M, 1, false),
        ];
        let mut state = AdmissionState::new(0);
        let d = admit(&flows, 10 * M, Instant::now(), &mut state);
        let by = |sg: SourceGroup| d.iter().find(|d| d.sg == sg).unwrap();
        assert!(by(sender_sg(1)).admitted, "{d:?}");
        assert!(by(sg(3)).admitted);
        assert_eq!(
            by(sender_sg(2)).reason,
            DecisionReason::OverLimit {
                needed: 3 * M,
                available: 2 * M
            }
        );
        assert!(by(sender_sg(2)).held_until.is_some());
    }

    #[test]
    fn sender_priority_holds_back_lower_flow_while_preferred_is_blocked() {
        // The 9M flow cannot fit even alone beside the 2M one; its sender's
        // 3M flow (lower priority) is held back although it would fit.
        let flows = vec![
            same_sender(1, 9 * M, 300),
            same_sender(2, 3 * M, 100),
            flow(3, 2 * M, 1, false),
        ];
        let mut state = AdmissionState::new(0);
        let now = Instant::now();
        let d = admit(&flows, 10 * M, now, &mut state);
        let by = |sg: SourceGroup| d.iter().find(|d| d.sg == sg).unwrap();
        assert!(by(sg(3)).admitted);
        assert!(by(sender_sg(1)).reason.is_blocked_for_room());
        let held_back = by(sender_sg(2));
        assert!(!held_back.admitted);
        assert_eq!(
            held_back.reason,
            DecisionReason::SenderPriority {
                blocked: sender_sg(1),
                blocked_priority: 300,
                priority: 100
            }
        );
        assert_eq!(held_back.held_until, None, "not beaten for room");
        assert_eq!(state.held_until(&sender_sg(2), now), None);
        assert_eq!(
            held_back.reason.to_string(),
            "sender priority: (10.0.0.99,232.1.1.1) of the same source has priority 300 > 100 and is blocked"
        );

        // Equal priorities: the plain order again.
        let flows: Vec<FlowDemand> = flows
            .into_iter()
            .map(|mut f| {
                f.priority = DEFAULT_SENDER_PRIORITY;
                f
            })
            .collect();
        let d = admit(&flows, 10 * M, now, &mut AdmissionState::new(0));
        let by = |sg: SourceGroup| d.iter().find(|d| d.sg == sg).unwrap();
        assert!(by(sender_sg(2)).admitted && by(sg(3)).admitted);
        assert!(!by(sender_sg(1)).admitted);
    }

    #[test]
    fn sender_priority_does_not_cross_sources() {
        // Flow 3's source prefers nothing over flow 1's: a blocked
        // high-priority flow of another source holds nothing back.
        let mut other = flow(3, 2 * M, 1, false);
        other.priority = 1;
        let flows = vec![same_sender(1, 9 * M, 300), other];
        let d = admit(&flows, 10 * M, Instant::now(), &mut AdmissionState::new(0));
        assert!(decision(&d, 3).admitted, "{d:?}");
    }

    #[test]
    fn sender_priority_is_stable_when_fed_back() {
        let mut flows = vec![
            same_sender(1, 6 * M, 300),
            same_sender(2, 3 * M, 100),
            flow(3, 2 * M, 1, false),
        ];
        let mut state = AdmissionState::new(4);
        let t0 = Instant::now();
        let first = admit(&flows, 10 * M, t0, &mut state);
        for step in 1..5u64 {
            apply(&mut flows, &first);
            let again = admit(&flows, 10 * M, t0 + Duration::from_secs(step), &mut state);
            let admitted = |d: &[AdmissionDecision]| {
                let mut v: Vec<SourceGroup> =
                    d.iter().filter(|d| d.admitted).map(|d| d.sg).collect();
                v.sort();
                v
            };
            assert_eq!(admitted(&again), admitted(&first), "step {step}");
        }
    }
}
