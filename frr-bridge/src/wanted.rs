//! The wanted set: pimd's (IPv4) and pim6d's (IPv6) join state merged into
//! one [`WantedSet`], once, here.
//!
//! A pure core fed with poll results and the time. Each family keeps its
//! last good set while its daemon is unreachable (an outage must not tear
//! every flow down), and when its daemon comes back (a restart), that
//! daemon knows nothing until the downstream routers re-send their
//! periodic Joins: for a grace period the set held before the outage is
//! kept, joined with whatever the daemon reports, and those flows are
//! marked `held`. Either family failing leaves the other one working.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use amt_gateway::Family;
use ingest_policy::engine::{WantedFlow, WantedSet};
use ingest_types::SourceGroup;
use tracing::info;

/// Downstream interfaces per wanted (S,G), as one poll of one daemon saw
/// them.
pub type JoinSet = BTreeMap<SourceGroup, Vec<String>>;

/// What one family's daemon is doing, as far as the polls tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DaemonHealth {
    /// Not polled yet.
    #[default]
    Unknown,
    /// The last poll answered.
    Answering,
    /// The last poll failed (the last good set is kept).
    Failing,
    /// Not asked (e.g. pim6d not running and `frr.pim6 = "auto"`).
    Absent,
}

#[derive(Debug, Default)]
struct FamilyJoins {
    health: DaemonHealth,
    /// The last good set; `None` before the first answer.
    last: Option<JoinSet>,
    /// Set held across an outage, and until when.
    grace: Option<(JoinSet, Instant)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct WantedTracker {
    restart_grace: Duration,
    families: [FamilyJoins; 2],
}

fn index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn daemon(family: Family) -> &'static str {
    match family {
        Family::V4 => "pimd",
        Family::V6 => "pim6d",
    }
}

impl WantedTracker {
    pub fn new(restart_grace: Duration) -> Self {
        Self {
            restart_grace,
            families: Default::default(),
        }
    }

    pub fn health(&self, family: Family) -> &DaemonHealth {
        &self.families[index(family)].health
    }

    /// A poll of `family`'s daemon answered with `set`. Returns true when
    /// this ends an outage (the daemon is back, maybe restarted).
    pub fn on_answer(&mut self, family: Family, set: JoinSet, now: Instant) -> bool {
        let grace = self.restart_grace;
        let f = &mut self.families[index(family)];
        let recovered = f.health == DaemonHealth::Failing;
        if recovered
            && let Some(held) = f.last.take()
            && !held.is_empty()
        {
            info!(
                "keeping {} joins for {} s while {} relearns its state",
                held.len(),
                grace.as_secs(),
                daemon(family)
            );
            f.grace = Some((held, now + grace));
        }
        f.health = DaemonHealth::Answering;
        f.last = Some(set);
        recovered
    }

    /// A poll of `family`'s daemon failed: its last good set is kept.
    pub fn on_failure(&mut self, family: Family) {
        self.families[index(family)].health = DaemonHealth::Failing;
    }

    /// `family`'s daemon has no vty socket (with `frr.pim6 = "auto"`). A
    /// daemon that answered before is restarting (its socket goes while it
    /// is down): an outage, its set kept and held through the grace when
    /// it is back. One never seen is not running: it wants nothing.
    /// Returns whether it counts as absent.
    pub fn on_socket_missing(&mut self, family: Family) -> bool {
        match self.health(family) {
            DaemonHealth::Answering | DaemonHealth::Failing => {
                self.on_failure(family);
                false
            }
            DaemonHealth::Unknown | DaemonHealth::Absent => {
                self.on_absent(family);
                true
            }
        }
    }

    /// `family`'s daemon is not to be asked (not running, by
    /// configuration): it wants nothing.
    pub fn on_absent(&mut self, family: Family) {
        let f = &mut self.families[index(family)];
        f.health = DaemonHealth::Absent;
        f.last = None;
        f.grace = None;
    }

    /// The merged wanted set at `now`; a grace period that ended is
    /// dropped.
    pub fn wanted(&mut self, now: Instant) -> WantedSet {
        let mut wanted = WantedSet::new();
        for family in [Family::V4, Family::V6] {
            let f = &mut self.families[index(family)];
            for (sg, interfaces) in f.last.iter().flatten() {
                wanted.insert(
                    *sg,
                    WantedFlow {
                        interfaces: interfaces.clone(),
                        held: false,
                    },
                );
            }
            if let Some((held, until)) = &f.grace {
                if now < *until {
                    for (sg, interfaces) in held {
                        wanted.entry(*sg).or_insert_with(|| WantedFlow {
                            interfaces: interfaces.clone(),
                            held: true,
                        });
                    }
                } else {
                    info!(
                        "{} restart grace over; following its join state again",
                        daemon(family)
                    );
                    f.grace = None;
                }
            }
        }
        wanted
    }

    /// When a grace period ends (the wanted set changes without a poll).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.families
            .iter()
            .filter_map(|f| f.grace.as_ref().map(|(_, until)| *until))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingest_policy::fixtures::sg;

    fn set(entries: &[(SourceGroup, &str)]) -> JoinSet {
        entries
            .iter()
            .map(|(sg, iface)| (*sg, vec![iface.to_string()]))
            .collect()
    }

    #[test]
    fn families_merge_and_fail_independently() {
        let t0 = Instant::now();
        let mut t = WantedTracker::new(Duration::from_secs(60));
        let v4 = sg("198.51.100.4", "232.1.1.1");
        let v6 = sg("2001:db8::4", "ff3e::1");
        t.on_answer(Family::V4, set(&[(v4, "ing-dn")]), t0);
        t.on_answer(Family::V6, set(&[(v6, "ing-dn")]), t0);
        assert_eq!(t.wanted(t0).len(), 2);
        // pim6d dies: its last set is kept, IPv4 goes on changing.
        t.on_failure(Family::V6);
        t.on_answer(Family::V4, JoinSet::new(), t0);
        let w = t.wanted(t0);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), vec![v6]);
        assert_eq!(t.health(Family::V6), &DaemonHealth::Failing);
        assert_eq!(t.health(Family::V4), &DaemonHealth::Answering);
        // pim6d is not to be asked any more: it wants nothing.
        t.on_absent(Family::V6);
        assert!(t.wanted(t0).is_empty());
    }

    #[test]
    fn restart_grace_holds_the_old_set_then_follows_the_daemon() {
        let t0 = Instant::now();
        let mut t = WantedTracker::new(Duration::from_secs(60));
        let a = sg("198.51.100.4", "232.1.1.1");
        let b = sg("198.51.100.4", "232.1.1.2");
        t.on_answer(Family::V4, set(&[(a, "ing-dn"), (b, "ing-dn")]), t0);
        t.on_failure(Family::V4);
        assert_eq!(t.wanted(t0).len(), 2, "kept through the outage");
        // Back, knowing only b so far: a is held.
        let t1 = t0 + Duration::from_secs(5);
        assert!(t.on_answer(Family::V4, set(&[(b, "ing-dn")]), t1));
        let w = t.wanted(t1);
        assert_eq!(w.len(), 2);
        assert!(w[&a].held && !w[&b].held);
        assert_eq!(t.next_deadline(), Some(t1 + Duration::from_secs(60)));
        // Grace over: the daemon's state wins.
        let w = t.wanted(t1 + Duration::from_secs(60));
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), vec![b]);
        assert_eq!(t.next_deadline(), None);
    }

    /// pim6d's vty socket goes away while pim6d restarts (FRR removes it
    /// on exit): that is an outage with a grace, like a failed poll; a
    /// pim6d never seen is simply not running.
    #[test]
    fn a_missing_pim6d_socket_is_a_restart_once_pim6d_answered() {
        let t0 = Instant::now();
        let mut t = WantedTracker::new(Duration::from_secs(60));
        assert!(t.on_socket_missing(Family::V6), "never seen: absent");
        assert_eq!(t.health(Family::V6), &DaemonHealth::Absent);
        let v6 = sg("2001:db8::4", "ff3e::1");
        t.on_answer(Family::V6, set(&[(v6, "ing-dn")]), t0);
        assert!(
            !t.on_socket_missing(Family::V6),
            "answered before: restarting"
        );
        assert_eq!(t.health(Family::V6), &DaemonHealth::Failing);
        assert_eq!(t.wanted(t0).len(), 1, "kept while pim6d is down");
        // Back, knowing nothing yet: held through the grace.
        let t1 = t0 + Duration::from_secs(2);
        assert!(t.on_answer(Family::V6, JoinSet::new(), t1));
        assert!(t.wanted(t1)[&v6].held);
        assert!(t.wanted(t1 + Duration::from_secs(60)).is_empty());
    }
}
