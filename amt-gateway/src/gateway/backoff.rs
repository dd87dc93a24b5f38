//! Random exponential backoff of RFC 7450 §5.2.3.4.3 (as restated by
//! RFC 8777 §3.3): the n-th timeout (n from 0) is uniformly random in
//! `[initial, min(initial * 2^n, max)]`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    exponent: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        // A zero initial timeout would let a retransmission timer fire at
        // the instant it was armed; keep at least 1 ms.
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            exponent: 0,
        }
    }

    /// Upper bound of the next timeout, without drawing it.
    pub(crate) fn upper(&self) -> Duration {
        let factor = 1u32.checked_shl(self.exponent).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Draws the next timeout and doubles the window for the one after.
    pub(crate) fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let lo = self.initial.as_millis() as u64;
        let hi = (self.upper().as_millis() as u64).max(lo);
        self.exponent = (self.exponent + 1).min(31);
        Duration::from_millis(rng.random_range(lo..=hi))
    }

    pub(crate) fn reset(&mut self) {
        self.exponent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn windows_double_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut rng = StdRng::seed_from_u64(7);
        let expected_upper = [1u64, 2, 4, 8, 16, 32, 64, 120, 120, 120];
        for upper in expected_upper {
            assert_eq!(b.upper(), Duration::from_secs(upper));
            let t = b.next(&mut rng);
            assert!(t >= Duration::from_secs(1), "{t:?}");
            assert!(t <= Duration::from_secs(upper), "{t:?} > {upper}");
        }
        b.reset();
        assert_eq!(b.upper(), Duration::from_secs(1));
        assert_eq!(b.next(&mut rng), Duration::from_secs(1));
    }

    #[test]
    fn draws_are_spread_over_the_window() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
            for _ in 0..6 {
                b.next(&mut rng);
            }
            // Window is now [1 s, 64 s].
            let t = b.next(&mut rng);
            seen_low |= t < Duration::from_secs(16);
            seen_high |= t > Duration::from_secs(48);
            assert!(t <= Duration::from_secs(64));
        }
        assert!(seen_low && seen_high);
    }

    #[test]
    fn huge_exponent_saturates() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(b.next(&mut rng) <= Duration::from_secs(120));
        }
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(z.next(&mut rng), Duration::from_millis(1));
    }
}
