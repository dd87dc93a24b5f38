//! Fixed-rate pacing of the synthetic source (sans-IO: time passed in).

use std::time::{Duration, Instant};

/// A fixed-rate schedule: packet k is due at `start + k / rate`. A
/// backlog beyond `max_backlog` (after a stall) is skipped and counted,
/// so a stalled sender never bursts more than that at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    start: Instant,
    limit: Option<u64>,
    max_backlog: u64,
    taken: u64,
    skipped: u64,
}

impl Pacer {
    pub fn new(rate: u64, start: Instant, limit: Option<u64>, max_backlog: Duration) -> Self {
        let rate = rate.max(1);
        let max_backlog =
            ((u128::from(rate) * max_backlog.as_nanos() / 1_000_000_000) as u64).max(1);
        Self {
            rate,
            start,
            limit,
            max_backlog,
            taken: 0,
            skipped: 0,
        }
    }

    fn scheduled_by(&self, now: Instant) -> u64 {
        if now < self.start {
            return 0;
        }
        let elapsed = now.duration_since(self.start).as_nanos();
        let due = (elapsed * u128::from(self.rate) / 1_000_000_000) as u64 + 1;
        self.limit.map_or(due, |l| due.min(l))
    }

    /// Packets due at `now` and not yet taken or skipped.
    pub fn due(&mut self, now: Instant) -> u64 {
        let due = self
            .scheduled_by(now)
            .saturating_sub(self.taken + self.skipped);
        if due > self.max_backlog {
            self.skipped += due - self.max_backlog;
            self.max_backlog
        } else {
            due
        }
    }

    /// `n` packets were sent.
    pub fn take(&mut self, n: u64) {
        self.taken += n;
    }

    pub fn taken(&self) -> u64 {
        self.taken
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Every packet of a limited schedule was sent or skipped.
    pub fn finished(&self) -> bool {
        self.limit.is_some_and(|l| self.taken + self.skipped >= l)
    }

    /// When the next packet is due (None when finished).
    pub fn next_due(&self) -> Option<Instant> {
        if self.finished() {
            return None;
        }
        let k = u128::from(self.taken + self.skipped);
        let ns = k * 1_000_000_000 / u128::from(self.rate);
        Some(self.start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_follows_the_rate_and_limit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0, Some(2500), Duration::from_millis(50));
        assert_eq!(p.due(t0), 1);
        p.take(1);
        assert_eq!(p.due(t0 + Duration::from_micros(999)), 0);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(1)));
        assert_eq!(p.due(t0 + Duration::from_millis(10)), 10);
        p.take(10);
        assert_eq!(p.taken(), 11);
        assert!(!p.finished());
        // A 1 s stall: only 50 ms worth is sent, the rest skipped.
        assert_eq!(p.due(t0 + Duration::from_millis(1010)), 50);
        assert_eq!(p.skipped(), 1011 - 11 - 50);
        p.take(50);
        assert!(!p.finished());
        // The limit caps the schedule (2500 packets, not 10 s worth).
        assert_eq!(p.due(t0 + Duration::from_secs(10)), 50);
        p.take(50);
        assert_eq!(p.taken() + p.skipped(), 2500);
        assert!(p.finished());
        assert_eq!(p.due(t0 + Duration::from_secs(10)), 0);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn pacer_before_start_has_nothing_due() {
        let t0 = Instant::now();
        let mut p = Pacer::new(
            100_000,
            t0 + Duration::from_secs(1),
            None,
            Duration::from_millis(10),
        );
        assert_eq!(p.due(t0), 0);
        assert_eq!(p.due(t0 + Duration::from_millis(1001)), 101);
        p.take(101);
        assert_eq!(p.skipped(), 0);
    }
}
