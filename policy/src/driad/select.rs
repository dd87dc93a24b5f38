//! Relay candidates, hold-downs and relay selection (RFC 8777 section 4.2).
//!
//! Rules implemented here:
//! * lowest precedence first; uniform random order among equal precedence
//!   (injected RNG);
//! * unassigned relay types (4-127) are ignored, with a log line;
//! * a type 0 record means "no relay should be used for this source". When
//!   selection reaches a type 0 candidate (every better candidate skipped),
//!   the outcome is [`SelectionOutcome::NoRelay`]: do not ingest. Within one
//!   precedence, type 0 sorts before relays, so "no AMT" wins ties
//!   deterministically; candidates after it are never used;
//! * a relay that failed is held down for a random 3-10 minutes (RFC 8777
//!   section 4.2.4.2 range) and skipped with a reason while held; a hold-down
//!   on a type 3 name applies to every address the name resolved to.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ingest_types::shrink_when_sparse;
use rand::Rng;
use rand::seq::SliceRandom;

use super::name::RelayName;
use super::rdata::{AmtRelayRecord, Relay};

/// Where a candidate points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RelayAddress {
    /// Relay type 0: do not use AMT for this source.
    None,
    Ip(IpAddr),
    /// A type 3 name not (yet) resolved to addresses.
    Name(RelayName),
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayAddress::None => f.write_str("none (type 0)"),
            RelayAddress::Ip(ip) => write!(f, "{ip}"),
            RelayAddress::Name(name) => write!(f, "{name}"),
        }
    }
}

/// One relay option derived from an AMTRELAY record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayCandidate {
    pub precedence: u8,
    /// The record's D bit.
    pub discovery_optional: bool,
    pub relay: RelayAddress,
    /// The type 3 name this address was resolved from, if any.
    pub via_name: Option<RelayName>,
}

impl RelayCandidate {
    pub fn is_no_relay(&self) -> bool {
        self.relay == RelayAddress::None
    }
}

impl fmt::Display for RelayCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (precedence {}, D={})",
            self.relay,
            self.precedence,
            u8::from(self.discovery_optional)
        )?;
        if let Some(name) = &self.via_name {
            write!(f, " via {name}")?;
        }
        Ok(())
    }
}

/// Converts records to candidates, dropping unassigned relay types (logged)
/// and duplicates (the lowest precedence of a relay is kept).
pub fn candidates_from_records<'a>(
    records: impl IntoIterator<Item = &'a AmtRelayRecord>,
) -> Vec<RelayCandidate> {
    let mut out: Vec<RelayCandidate> = Vec::new();
    for record in records {
        let relay = match &record.relay {
            Relay::None => RelayAddress::None,
            Relay::Ipv4(a) => RelayAddress::Ip(IpAddr::V4(*a)),
            Relay::Ipv6(a) => RelayAddress::Ip(IpAddr::V6(*a)),
            Relay::Name(n) => RelayAddress::Name(n.clone()),
            Relay::Unknown { relay_type, .. } => {
                tracing::info!(
                    relay_type,
                    precedence = record.precedence,
                    "ignoring AMTRELAY record with unassigned relay type"
                );
                continue;
            }
        };
        let candidate = RelayCandidate {
            precedence: record.precedence,
            discovery_optional: record.discovery_optional,
            relay,
            via_name: None,
        };
        push_dedup(&mut out, candidate);
    }
    out
}

/// Adds `candidate` unless the same relay is already present; keeps the
/// lower precedence.
pub(crate) fn push_dedup(list: &mut Vec<RelayCandidate>, candidate: RelayCandidate) {
    match list.iter_mut().find(|c| c.relay == candidate.relay) {
        Some(existing) if existing.precedence > candidate.precedence => *existing = candidate,
        Some(_) => {}
        None => list.push(candidate),
    }
}

/// Lowest precedence first, type 0 first within a precedence, uniform random
/// among the remaining equals.
pub fn order_candidates<R: Rng + ?Sized>(
    mut candidates: Vec<RelayCandidate>,
    rng: &mut R,
) -> Vec<RelayCandidate> {
    candidates.shuffle(rng);
    // Stable sort keeps the shuffled order within equal keys.
    candidates.sort_by_key(|c| (c.precedence, !c.is_no_relay()));
    candidates
}

/// Why a relay was held down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldDownReason {
    /// No Relay Advertisement after the Discovery retries.
    NoAdvertisement,
    /// Advertisement received but no Membership Query.
    NoQuery,
    /// The relay set the L (limit) flag.
    Limit,
    /// Joined but no data within the traffic-absence timer.
    NoTraffic,
    /// A type 3 name did not resolve.
    NameResolution,
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for HoldDownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldDownReason::NoAdvertisement => f.write_str("no relay advertisement"),
            HoldDownReason::NoQuery => f.write_str("no membership query"),
            HoldDownReason::Limit => f.write_str("relay at limit (L flag)"),
            HoldDownReason::NoTraffic => f.write_str("no traffic"),
            HoldDownReason::NameResolution => f.write_str("relay name did not resolve"),
            HoldDownReason::Other(text) => f.write_str(text),
        }
    }
}

/// One active hold-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldDown {
    pub since: Instant,
    pub until: Instant,
    pub reason: HoldDownReason,
}

/// Failed relays and when they may be tried again.
#[derive(Debug, Clone)]
pub struct HoldDownTracker {
    held: HashMap<RelayAddress, HoldDown>,
    min: Duration,
    max: Duration,
}

/// RFC 8777 hold-down range.
pub const HOLD_DOWN_MIN: Duration = Duration::from_secs(3 * 60);
pub const HOLD_DOWN_MAX: Duration = Duration::from_secs(10 * 60);

impl Default for HoldDownTracker {
    fn default() -> Self {
        Self::new(HOLD_DOWN_MIN, HOLD_DOWN_MAX)
    }
}

impl HoldDownTracker {
    /// Hold-downs are drawn uniformly from `min..=max` (swapped if reversed).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            held: HashMap::new(),
            min: min.min(max),
            max: max.max(min),
        }
    }

    /// Holds `relay` down for a random duration in the configured range.
    /// Returns the expiry. A longer existing hold-down is kept.
    pub fn hold_down<R: Rng + ?Sized>(
        &mut self,
        relay: RelayAddress,
        reason: HoldDownReason,
        now: Instant,
        rng: &mut R,
    ) -> Instant {
        let duration = rng.random_range(self.min..=self.max);
        self.hold_down_for(relay, reason, now, duration)
    }

    /// Holds `relay` down for exactly `duration`. A longer existing hold-down
    /// is kept.
    pub fn hold_down_for(
        &mut self,
        relay: RelayAddress,
        reason: HoldDownReason,
        now: Instant,
        duration: Duration,
    ) -> Instant {
        let until = now + duration;
        let entry = self.held.entry(relay).or_insert(HoldDown {
            since: now,
            until,
            reason: reason.clone(),
        });
        if entry.until <= until {
            *entry = HoldDown {
                since: now,
                until,
                reason,
            };
        }
        entry.until
    }

    /// The hold-down of `relay` if still running at `now`.
    pub fn get(&self, relay: &RelayAddress, now: Instant) -> Option<&HoldDown> {
        self.held.get(relay).filter(|h| h.until > now)
    }

    pub fn clear(&mut self, relay: &RelayAddress) {
        self.held.remove(relay);
    }

    /// Forgets expired hold-downs.
    pub fn prune(&mut self, now: Instant) {
        self.held.retain(|_, h| h.until > now);
        shrink_when_sparse(&mut self.held);
    }

    /// Active hold-downs at `now`.
    pub fn active(&self, now: Instant) -> impl Iterator<Item = (&RelayAddress, &HoldDown)> {
        self.held.iter().filter(move |(_, h)| h.until > now)
    }
}

/// Why a candidate is not usable now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The relay (or the name it came from) is held down.
    HeldDown {
        until: Instant,
        reason: HoldDownReason,
    },
    /// A type 3 name that was not resolved to addresses; selection needs
    /// resolved candidates (see `DriadResolver::lookup_relays`).
    UnresolvedName,
    /// A type 0 record of better or equal precedence ends the list.
    AfterNoRelay,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HeldDown { reason, .. } => write!(f, "held down: {reason}"),
            SkipReason::UnresolvedName => f.write_str("name not resolved"),
            SkipReason::AfterNoRelay => f.write_str("after a type 0 (no relay) record"),
        }
    }
}

/// A candidate in selection order and whether it is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionEntry {
    pub candidate: RelayCandidate,
    pub skip: Option<SkipReason>,
}

/// What selection decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectionOutcome {
    /// Use this relay; the other unskipped entries are fallbacks in order.
    Relay(RelayCandidate),
    /// A type 0 record was reached: the operator asked for no AMT ingest of
    /// this source.
    NoRelay { precedence: u8 },
    /// Every candidate is skipped; `retry_at` is the earliest hold-down
    /// expiry, if any hold-down caused it.
    AllSkipped { retry_at: Option<Instant> },
    /// The answer had no usable records at all.
    NoCandidates,
}

/// The ordered candidate list with skip reasons, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySelection {
    pub entries: Vec<SelectionEntry>,
    pub outcome: SelectionOutcome,
}

impl RelaySelection {
    /// Usable relays in the order they should be tried.
    pub fn usable(&self) -> impl Iterator<Item = &RelayCandidate> {
        self.entries
            .iter()
            .filter(|e| e.skip.is_none() && !e.candidate.is_no_relay())
            .map(|e| &e.candidate)
    }
}

/// Orders `candidates` (see [`order_candidates`]) and marks each one usable
/// or skipped at `now`.
pub fn select_relays<R: Rng + ?Sized>(
    candidates: &[RelayCandidate],
    holddowns: &HoldDownTracker,
    now: Instant,
    rng: &mut R,
) -> RelaySelection {
    let ordered = order_candidates(candidates.to_vec(), rng);
    let mut entries = Vec::with_capacity(ordered.len());
    let mut chosen: Option<RelayCandidate> = None;
    let mut no_relay_at: Option<u8> = None;
    let mut retry_at: Option<Instant> = None;
    for candidate in ordered {
        let skip = if no_relay_at.is_some() {
            Some(SkipReason::AfterNoRelay)
        } else if candidate.is_no_relay() {
            // Ends the list; it is the outcome only when nothing better was
            // usable, otherwise it just ends the fallbacks.
            no_relay_at = Some(candidate.precedence);
            None
        } else if let Some(hold) = hold_down_of(&candidate, holddowns, now) {
            retry_at = Some(retry_at.map_or(hold.until, |r| r.min(hold.until)));
            Some(SkipReason::HeldDown {
                until: hold.until,
                reason: hold.reason.clone(),
            })
        } else if matches!(candidate.relay, RelayAddress::Name(_)) {
            Some(SkipReason::UnresolvedName)
        } else {
            if chosen.is_none() {
                chosen = Some(candidate.clone());
            }
            None
        };
        entries.push(SelectionEntry { candidate, skip });
    }
    let outcome = match (chosen, no_relay_at) {
        (Some(relay), _) => SelectionOutcome::Relay(relay),
        (None, Some(precedence)) => SelectionOutcome::NoRelay { precedence },
        (None, None) if entries.is_empty() => SelectionOutcome::NoCandidates,
        (None, None) => SelectionOutcome::AllSkipped { retry_at },
    };
    RelaySelection { entries, outcome }
}

fn hold_down_of<'a>(
    candidate: &RelayCandidate,
    holddowns: &'a HoldDownTracker,
    now: Instant,
) -> Option<&'a HoldDown> {
    holddowns.get(&candidate.relay, now).or_else(|| {
        candidate
            .via_name
            .as_ref()
            .and_then(|name| holddowns.get(&RelayAddress::Name(name.clone()), now))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ip(text: &str) -> RelayAddress {
        RelayAddress::Ip(text.parse().unwrap())
    }

    fn cand(precedence: u8, relay: RelayAddress) -> RelayCandidate {
        RelayCandidate {
            precedence,
            discovery_optional: false,
            relay,
            via_name: None,
        }
    }

    fn records(lines: &[&str]) -> Vec<AmtRelayRecord> {
        lines.iter().map(|l| l.parse().unwrap()).collect()
    }

    #[test]
    fn candidates_drop_unknown_types_and_duplicates() {
        let recs = records(&[
            "32 0 1 10.0.0.1",
            "\\# 4 0a850102",
            "16 1 1 10.0.0.1",
            "16 0 3 relay.example.",
            "20 0 2 2001:db8::1",
        ]);
        let cands = candidates_from_records(&recs);
        assert_eq!(
            cands,
            vec![
                RelayCandidate {
                    precedence: 16,
                    discovery_optional: true,
                    relay: ip("10.0.0.1"),
                    via_name: None
                },
                cand(16, RelayAddress::Name("relay.example".parse().unwrap())),
                cand(20, ip("2001:db8::1")),
            ]
        );
    }

    #[test]
    fn lowest_precedence_first_random_within_equal() {
        // Sample-network shape: 15 type 1; 32 type 1 x3.
        let cands = vec![
            cand(32, ip("10.0.0.32")),
            cand(32, ip("10.0.0.33")),
            cand(15, ip("69.77.14.145")),
            cand(32, ip("10.0.0.34")),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut first_backup = HashMap::new();
        for _ in 0..3000 {
            let ordered = order_candidates(cands.clone(), &mut rng);
            assert_eq!(ordered[0].relay, ip("69.77.14.145"));
            assert!(ordered[1..].iter().all(|c| c.precedence == 32));
            *first_backup.entry(ordered[1].relay.clone()).or_insert(0u32) += 1;
        }
        // Uniform spread: each of the 3 backups first about 1000 times.
        assert_eq!(first_backup.len(), 3);
        for (relay, count) in &first_backup {
            assert!((850..=1150).contains(count), "{relay}: {count}");
        }
    }

    #[test]
    fn ordering_is_deterministic_for_a_seed() {
        let cands: Vec<_> = (0..10)
            .map(|i| cand(1, ip(&format!("10.0.0.{i}"))))
            .collect();
        let a = order_candidates(cands.clone(), &mut StdRng::seed_from_u64(42));
        let b = order_candidates(cands, &mut StdRng::seed_from_u64(42));
        assert_eq!(a, b);
    }

    #[test]
    fn held_down_relays_are_skipped_and_next_precedence_used() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut holds = HoldDownTracker::default();
        let cands = vec![
            cand(10, ip("10.0.0.1")),
            cand(10, ip("10.0.0.2")),
            cand(20, ip("10.0.0.3")),
        ];
        let until1 = holds.hold_down(
            ip("10.0.0.1"),
            HoldDownReason::NoAdvertisement,
            t0,
            &mut rng,
        );
        let until2 = holds.hold_down(ip("10.0.0.2"), HoldDownReason::NoTraffic, t0, &mut rng);
        for until in [until1, until2] {
            let held = until - t0;
            assert!(held >= HOLD_DOWN_MIN && held <= HOLD_DOWN_MAX, "{held:?}");
        }
        let sel = select_relays(&cands, &holds, t0 + Duration::from_secs(1), &mut rng);
        assert_eq!(
            sel.outcome,
            SelectionOutcome::Relay(cand(20, ip("10.0.0.3")))
        );
        assert_eq!(sel.entries.len(), 3);
        let skipped: Vec<_> = sel.entries.iter().filter(|e| e.skip.is_some()).collect();
        assert_eq!(skipped.len(), 2);
        for e in skipped {
            match &e.skip {
                Some(SkipReason::HeldDown { until, reason }) => {
                    if e.candidate.relay == ip("10.0.0.1") {
                        assert_eq!(*until, until1);
                        assert_eq!(*reason, HoldDownReason::NoAdvertisement);
                    } else {
                        assert_eq!(*until, until2);
                        assert_eq!(*reason, HoldDownReason::NoTraffic);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // After the longer hold-down expires both are usable again.
        let later = until1.max(until2);
        let sel = select_relays(&cands, &holds, later, &mut rng);
        match &sel.outcome {
            SelectionOutcome::Relay(c) => assert_eq!(c.precedence, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(sel.usable().count(), 3);
    }

    /// Holds `relay` down from `t0` for `secs` seconds; returns the expiry.
    fn hold(
        holds: &mut HoldDownTracker,
        relay: &str,
        reason: HoldDownReason,
        t0: Instant,
        secs: u64,
    ) -> Instant {
        holds.hold_down_for(ip(relay), reason, t0, Duration::from_secs(secs))
    }

    #[test]
    fn all_held_down_reports_earliest_retry() {
        let t0 = Instant::now();
        let mut holds = HoldDownTracker::default();
        hold(&mut holds, "10.0.0.1", HoldDownReason::Limit, t0, 600);
        hold(&mut holds, "10.0.0.2", HoldDownReason::NoQuery, t0, 200);
        let cands = vec![cand(10, ip("10.0.0.1")), cand(20, ip("10.0.0.2"))];
        let sel = select_relays(&cands, &holds, t0, &mut StdRng::seed_from_u64(0));
        assert_eq!(
            sel.outcome,
            SelectionOutcome::AllSkipped {
                retry_at: Some(t0 + Duration::from_secs(200))
            }
        );
        assert_eq!(
            select_relays(&[], &holds, t0, &mut StdRng::seed_from_u64(0)).outcome,
            SelectionOutcome::NoCandidates
        );
    }

    #[test]
    fn longer_hold_down_is_kept() {
        let t0 = Instant::now();
        let mut holds = HoldDownTracker::default();
        hold(&mut holds, "10.0.0.1", HoldDownReason::Limit, t0, 600);
        let until = hold(&mut holds, "10.0.0.1", HoldDownReason::NoQuery, t0, 100);
        assert_eq!(until, t0 + Duration::from_secs(600));
        assert_eq!(
            holds.get(&ip("10.0.0.1"), t0).unwrap().reason,
            HoldDownReason::Limit
        );
        holds.prune(t0 + Duration::from_secs(600));
        assert!(holds.get(&ip("10.0.0.1"), t0).is_none());
    }

    #[test]
    fn type0_alone_means_no_relay() {
        let recs = records(&["10 0 0 ."]);
        let cands = candidates_from_records(&recs);
        let sel = select_relays(
            &cands,
            &HoldDownTracker::default(),
            Instant::now(),
            &mut StdRng::seed_from_u64(0),
        );
        assert_eq!(sel.outcome, SelectionOutcome::NoRelay { precedence: 10 });
        assert_eq!(sel.usable().count(), 0);
    }

    #[test]
    fn type0_mixed_with_relays() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let recs = records(&[
            "10 0 1 10.0.0.1",
            "20 0 0 .",
            "30 0 1 10.0.0.3",
            "20 0 1 10.0.0.2",
        ]);
        let cands = candidates_from_records(&recs);
        let mut holds = HoldDownTracker::default();
        // Better relay usable: use it; nothing at or after type 0 is a fallback.
        let sel = select_relays(&cands, &holds, t0, &mut rng);
        assert_eq!(
            sel.outcome,
            SelectionOutcome::Relay(cand(10, ip("10.0.0.1")))
        );
        assert_eq!(
            sel.usable().map(|c| c.relay.clone()).collect::<Vec<_>>(),
            vec![ip("10.0.0.1")]
        );
        // Type 0 wins the tie with 10.0.0.2 at precedence 20.
        let order: Vec<_> = sel
            .entries
            .iter()
            .map(|e| e.candidate.relay.clone())
            .collect();
        assert_eq!(
            order,
            vec![
                ip("10.0.0.1"),
                RelayAddress::None,
                ip("10.0.0.2"),
                ip("10.0.0.3")
            ]
        );
        assert_eq!(sel.entries[2].skip, Some(SkipReason::AfterNoRelay));
        assert_eq!(sel.entries[3].skip, Some(SkipReason::AfterNoRelay));
        // Better relay held down: type 0 reached, do not ingest.
        holds.hold_down(ip("10.0.0.1"), HoldDownReason::NoTraffic, t0, &mut rng);
        let sel = select_relays(&cands, &holds, t0, &mut rng);
        assert_eq!(sel.outcome, SelectionOutcome::NoRelay { precedence: 20 });
    }

    #[test]
    fn names_need_resolution_and_name_hold_down_covers_addresses() {
        let t0 = Instant::now();
        let name: RelayName = "relay.example.".parse().unwrap();
        let unresolved = vec![cand(10, RelayAddress::Name(name.clone()))];
        let mut holds = HoldDownTracker::default();
        let sel = select_relays(&unresolved, &holds, t0, &mut StdRng::seed_from_u64(0));
        assert_eq!(sel.entries[0].skip, Some(SkipReason::UnresolvedName));
        assert_eq!(sel.outcome, SelectionOutcome::AllSkipped { retry_at: None });

        let resolved = vec![
            RelayCandidate {
                via_name: Some(name.clone()),
                ..cand(10, ip("10.0.0.1"))
            },
            RelayCandidate {
                via_name: Some(name.clone()),
                ..cand(10, ip("2001:db8::1"))
            },
            cand(20, ip("10.0.0.9")),
        ];
        holds.hold_down_for(
            RelayAddress::Name(name),
            HoldDownReason::NoAdvertisement,
            t0,
            Duration::from_secs(300),
        );
        let sel = select_relays(&resolved, &holds, t0, &mut StdRng::seed_from_u64(0));
        assert_eq!(
            sel.outcome,
            SelectionOutcome::Relay(cand(20, ip("10.0.0.9")))
        );
    }
}
