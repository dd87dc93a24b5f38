//! Sequence-number accounting for one channel: loss, duplicates, reordering.
//!
//! Seen numbers are kept in a bitmap starting a little below the first number
//! seen, so duplicates are exact. Numbers outside that window (far below the
//! first, or absurdly far ahead, e.g. a sender restart or garbage) are counted
//! as `out_of_window` and otherwise ignored, which bounds memory.

use serde::Serialize;

/// How far below the first sequence number late packets are still tracked.
const BACKWARD_SLACK: u64 = 4096;
/// Largest tracked span (bits): 64 Mi numbers, 8 MiB of bitmap, 11 min at 100 kpps.
const MAX_SPAN: u64 = 1 << 26;

/// What one observed sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Next or ahead of everything seen so far.
    InOrder,
    /// New, but lower than the highest seen: arrived late.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Outside the tracked window; not counted anywhere else.
    OutOfWindow,
}

#[derive(Debug, Default, Clone)]
pub struct SequenceTracker {
    /// Sequence number of bit 0 of `seen`; `None` before the first packet.
    base: Option<u64>,
    first: Option<u64>,
    seen: Vec<u64>,
    lowest: u64,
    highest: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    gap_events: u64,
    out_of_window: u64,
}

/// Counters of a [`SequenceTracker`], as reported in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SequenceSummary {
    pub first: Option<u64>,
    pub lowest: Option<u64>,
    pub highest: Option<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Numbers between lowest and highest never received.
    pub missing: u64,
    /// Times the sequence jumped forward by more than one.
    pub gap_events: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub out_of_window: u64,
}

impl SequenceTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&mut self, sequence: u64) -> SequenceVerdict {
        let base = *self.base.get_or_insert_with(|| {
            self.first = Some(sequence);
            self.lowest = sequence;
            self.highest = sequence;
            sequence.saturating_sub(BACKWARD_SLACK)
        });
        let first_packet = self.unique == 0;
        let Some(offset) = sequence.checked_sub(base).filter(|o| *o < MAX_SPAN) else {
            self.out_of_window += 1;
            return SequenceVerdict::OutOfWindow;
        };
        // offset < MAX_SPAN = 2^26, so these fit in usize.
        let word = (offset / 64) as usize;
        let bit = 1u64 << (offset % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let Some(slot) = self.seen.get_mut(word) else {
            return SequenceVerdict::OutOfWindow;
        };
        if *slot & bit != 0 {
            self.duplicates += 1;
            return SequenceVerdict::Duplicate;
        }
        *slot |= bit;
        self.unique += 1;
        self.lowest = self.lowest.min(sequence);
        if first_packet {
            return SequenceVerdict::InOrder;
        }
        if sequence > self.highest {
            if sequence > self.highest + 1 {
                self.gap_events += 1;
            }
            self.highest = sequence;
            SequenceVerdict::InOrder
        } else {
            self.reordered += 1;
            SequenceVerdict::Reordered
        }
    }

    pub fn summary(&self) -> SequenceSummary {
        let any = self.unique > 0;
        let span = if any {
            self.highest - self.lowest + 1
        } else {
            0
        };
        SequenceSummary {
            first: self.first,
            lowest: any.then_some(self.lowest),
            highest: any.then_some(self.highest),
            unique: self.unique,
            missing: span.saturating_sub(self.unique),
            gap_events: self.gap_events,
            duplicates: self.duplicates,
            reordered: self.reordered,
            out_of_window: self.out_of_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (Vec<SequenceVerdict>, SequenceSummary) {
        let mut t = SequenceTracker::new();
        let verdicts = seqs.iter().map(|s| t.observe(*s)).collect();
        (verdicts, t.summary())
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let seqs: Vec<u64> = (0..1000).collect();
        let (_, s) = run(&seqs);
        assert_eq!(
            (s.lowest, s.highest, s.unique, s.missing),
            (Some(0), Some(999), 1000, 0)
        );
        assert_eq!((s.gap_events, s.duplicates, s.reordered), (0, 0, 0));
    }

    #[test]
    fn losses_duplicates_and_reordering_are_counted() {
        use SequenceVerdict::*;
        let (v, s) = run(&[10, 11, 14, 12, 14, 15, 20]);
        assert_eq!(
            v,
            [
                InOrder, InOrder, InOrder, Reordered, Duplicate, InOrder, InOrder
            ]
        );
        // 10..=20 is 11 numbers; 10 11 12 14 15 20 received: 13 16 17 18 19 missing.
        assert_eq!(s.unique, 6);
        assert_eq!(s.missing, 5);
        assert_eq!(s.gap_events, 2);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 1);
    }

    #[test]
    fn late_packet_below_the_first_is_tracked_within_slack() {
        let (v, s) = run(&[5000, 4999, 4999]);
        assert_eq!(v[1], SequenceVerdict::Reordered);
        assert_eq!(v[2], SequenceVerdict::Duplicate);
        assert_eq!(
            (s.lowest, s.highest, s.missing),
            (Some(4999), Some(5000), 0)
        );
        assert_eq!(s.first, Some(5000));
    }

    #[test]
    fn far_away_numbers_are_out_of_window() {
        let (v, s) = run(&[100_000, 1, u64::MAX, 100_001]);
        assert_eq!(v[1], SequenceVerdict::OutOfWindow);
        assert_eq!(v[2], SequenceVerdict::OutOfWindow);
        assert_eq!(s.out_of_window, 2);
        assert_eq!((s.unique, s.missing), (2, 0));
    }

    #[test]
    fn empty_tracker_reports_nothing() {
        let s = SequenceTracker::new().summary();
        assert_eq!(s.first, None);
        assert_eq!((s.unique, s.missing), (0, 0));
    }
}
