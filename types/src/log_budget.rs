use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Keeps per-item log lines from flooding: per cause (e.g. "new join",
/// "no data from relay 192.0.2.10:2268"), the first `per_window` lines of
/// each window go out at the normal level, the rest are counted and
/// reported as one summary line when the window ends. A handful of flows
/// log as before; ten thousand log a few lines.
///
/// It only decides and counts (no logging, no clock): callers pass `now`
/// and write the lines themselves.
#[derive(Debug, Clone)]
pub struct LogBudget {
    window: Duration,
    per_window: u32,
    started: Option<Instant>,
    used: BTreeMap<String, u32>,
    suppressed: BTreeMap<String, u64>,
}

impl LogBudget {
    pub fn new(window: Duration, per_window: u32) -> Self {
        Self {
            window,
            per_window,
            started: None,
            used: BTreeMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    /// The budget of the daemon's per-item lines: two per cause every 10 s
    /// and one summary line. At 10,000 channels over 1,000 relays a whole
    /// set-up or teardown stays within a few dozen lines (issue 10: at most
    /// 100 at info for a whole cycle); per-item detail is at debug.
    pub fn daemon_default() -> Self {
        Self::new(Duration::from_secs(10), 2)
    }

    /// How long a window lasts (summary lines say so).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether a line for `cause` may go out at `now`; when not, it is
    /// counted for the summary.
    pub fn allow(&mut self, cause: &str, now: Instant) -> bool {
        let started = *self.started.get_or_insert(now);
        if now >= started + self.window && self.suppressed.is_empty() {
            // A quiet window ended: start a fresh one.
            self.started = Some(now);
            self.used.clear();
        }
        let used = self.used.entry(cause.to_owned()).or_default();
        if *used < self.per_window {
            *used += 1;
            true
        } else {
            *self.suppressed.entry(cause.to_owned()).or_default() += 1;
            false
        }
    }

    /// When the window has ended: the causes with lines held back and how
    /// many, and a fresh window. Empty otherwise.
    pub fn take_summary(&mut self, now: Instant) -> Vec<(String, u64)> {
        match self.started {
            Some(started) if now >= started + self.window => {
                self.started = None;
                self.used.clear();
                std::mem::take(&mut self.suppressed).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// When [`LogBudget::take_summary`] has something to say.
    pub fn next_summary(&self) -> Option<Instant> {
        if self.suppressed.is_empty() {
            return None;
        }
        self.started.map(|t| t + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_go_through_the_rest_is_counted_once_per_window() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(Duration::from_secs(1), 3);
        let allowed = (0..10_000).filter(|_| b.allow("new join", t0)).count();
        assert_eq!(allowed, 3);
        assert!(b.allow("relay lost", t0), "causes have their own budget");
        assert!(b.take_summary(t0).is_empty(), "the window is still open");
        assert_eq!(b.next_summary(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take_summary(t1), vec![("new join".to_owned(), 9_997)]);
        assert!(b.allow("new join", t1), "a new window");
        assert_eq!(b.next_summary(), None);
    }
}
