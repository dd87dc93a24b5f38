//! One-way latency statistics with bounded memory: exact count/min/max/mean and
//! percentiles from a log-linear histogram (relative error under 1/32).

use serde::Serialize;

/// Values below this many ns get one bucket each.
const LINEAR_LIMIT: u64 = 64;
/// Sub-buckets per power of two above LINEAR_LIMIT (5 bits of mantissa).
const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// log2(LINEAR_LIMIT)
const FIRST_EXPONENT: u32 = 6;
const BUCKETS: usize = LINEAR_LIMIT as usize + (64 - FIRST_EXPONENT as usize) * SUB_BUCKETS;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
    /// Samples whose receive time was before the send time (clock skew), recorded as 0.
    negative: u64,
}

/// Latency figures in microseconds, as reported in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub negative: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            negative: 0,
        }
    }

    /// Records one sample given send and receive times in ns since the epoch.
    pub fn record_times(&mut self, sent_unix_ns: u64, received_unix_ns: u64) {
        match received_unix_ns.checked_sub(sent_unix_ns) {
            Some(latency) => self.record(latency),
            None => {
                self.negative += 1;
                self.record(0);
            }
        }
    }

    pub fn record(&mut self, latency_ns: u64) {
        if let Some(bucket) = self.buckets.get_mut(bucket_index(latency_ns)) {
            *bucket += 1;
        }
        self.count += 1;
        self.sum_ns += u128::from(latency_ns);
        self.min_ns = self.min_ns.min(latency_ns);
        self.max_ns = self.max_ns.max(latency_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The latency (ns) below which `quantile` (0..=1) of the samples fall,
    /// as the midpoint of its bucket, clamped to the exact min and max.
    pub fn quantile_ns(&self, quantile: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bucket_bounds(index);
                let mid = low + (high - low) / 2;
                return Some(mid.clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.count == 0 {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            count: self.count,
            min_us: us(self.min_ns),
            mean_us: self.sum_ns as f64 / self.count as f64 / 1000.0,
            p50_us: us(self.quantile_ns(0.50).unwrap_or(0)),
            p90_us: us(self.quantile_ns(0.90).unwrap_or(0)),
            p99_us: us(self.quantile_ns(0.99).unwrap_or(0)),
            max_us: us(self.max_ns),
            negative: self.negative,
        })
    }
}

fn bucket_index(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= FIRST_EXPONENT
    let mantissa = (value >> (exponent - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    LINEAR_LIMIT as usize + (exponent - FIRST_EXPONENT) as usize * SUB_BUCKETS + mantissa
}

/// Inclusive lower and upper value of a bucket.
fn bucket_bounds(index: usize) -> (u64, u64) {
    if index < LINEAR_LIMIT as usize {
        return (index as u64, index as u64);
    }
    let rest = index - LINEAR_LIMIT as usize;
    let exponent = FIRST_EXPONENT + (rest / SUB_BUCKETS) as u32;
    let mantissa = (rest % SUB_BUCKETS) as u64;
    let width_shift = exponent - SUB_BUCKET_BITS;
    let low = (1u64 << exponent) | (mantissa << width_shift);
    let high = low.saturating_add((1u64 << width_shift) - 1);
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_and_bounds_match() {
        for value in [0, 1, 63, 64, 65, 100, 1000, 123_456, 1 << 40, u64::MAX] {
            let index = bucket_index(value);
            assert!(index < BUCKETS, "{value} -> {index}");
            let (low, high) = bucket_bounds(index);
            assert!(
                low <= value && value <= high,
                "{value} not in [{low}, {high}]"
            );
            // Relative width is at most 1/32.
            assert!((high - low) as f64 <= low as f64 / 32.0 + 1.0);
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 us .. 10 ms
        }
        let p50 = h.quantile_ns(0.5).unwrap_or(0) as f64;
        let p99 = h.quantile_ns(0.99).unwrap_or(0) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.04, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.04, "p99 {p99}");
        let s = h.summary();
        assert_eq!(
            s.map(|s| (s.count, s.min_us, s.max_us)),
            Some((10_000, 1.0, 10_000.0))
        );
        assert_eq!(s.map(|s| s.mean_us), Some(5000.5));
    }

    #[test]
    fn negative_latency_counts_as_zero() {
        let mut h = LatencyHistogram::new();
        h.record_times(2_000, 1_000);
        h.record_times(1_000, 1_500);
        let s = h.summary();
        assert_eq!(
            s.map(|s| (s.count, s.negative, s.min_us, s.max_us)),
            Some((2, 1, 0.0, 0.5))
        );
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert!(LatencyHistogram::new().summary().is_none());
        assert_eq!(LatencyHistogram::new().quantile_ns(0.5), None);
    }
}
