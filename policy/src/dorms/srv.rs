//! SRV target ordering (RFC 2782) and HTTP cache lifetimes.

use std::time::Duration;

use rand::Rng;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host name, without the final dot.
    pub target: String,
}

/// RFC 2782 order: priority ascending; within a priority, repeatedly pick by
/// weighted random (weight-0 entries first in the running list, so they are
/// chosen only rarely when others have weight). A lone target `.` means "no
/// service" and such entries are dropped.
pub fn order_srv<R: Rng + ?Sized>(mut records: Vec<SrvTarget>, rng: &mut R) -> Vec<SrvTarget> {
    records.retain(|r| !r.target.trim_end_matches('.').is_empty());
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(same);
        let mut pending: Vec<SrvTarget> = group.to_vec();
        while !pending.is_empty() {
            let total: u32 = pending.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0u32;
            let index = pending
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(pending.remove(index));
        }
        rest = tail;
    }
    ordered
}

/// Cache lifetime from a `Cache-Control` header: `max-age=N` (clamped to
/// `max`); `no-cache`, `no-store`, `max-age=0` or no header give `default`
/// (draft-ietf-mboned-cbacc: with no-cache, refresh after 30 s).
pub fn cache_lifetime(cache_control: Option<&str>, default: Duration, max: Duration) -> Duration {
    let Some(header) = cache_control else {
        return default;
    };
    let mut max_age: Option<u64> = None;
    for directive in header.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-cache" || directive == "no-store" {
            return default;
        }
        if let Some(value) = directive.strip_prefix("max-age=") {
            max_age = value.trim_matches('"').parse().ok();
        }
    }
    match max_age {
        Some(0) | None => default,
        Some(secs) => Duration::from_secs(secs).min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 443,
            target: target.into(),
        }
    }

    #[test]
    fn priority_then_weight() {
        let records = vec![
            srv(20, 0, "backup"),
            srv(10, 60, "a"),
            srv(10, 20, "b"),
            srv(10, 20, "c"),
            srv(10, 0, "zero"),
        ];
        let mut rng = StdRng::seed_from_u64(11);
        let mut first: HashMap<String, u32> = HashMap::new();
        let runs = 5000;
        for _ in 0..runs {
            let ordered = order_srv(records.clone(), &mut rng);
            assert_eq!(ordered.len(), 5);
            assert_eq!(ordered[4].target, "backup");
            assert!(ordered[..4].iter().all(|r| r.priority == 10));
            *first.entry(ordered[0].target.clone()).or_default() += 1;
        }
        // Expected shares of first place: a 60/100, b and c 20/100, zero
        // only when the pick is exactly 0 (1/101).
        let share = |t: &str| f64::from(first.get(t).copied().unwrap_or(0)) / f64::from(runs);
        assert!((share("a") - 0.60).abs() < 0.03, "{first:?}");
        assert!((share("b") - 0.20).abs() < 0.03, "{first:?}");
        assert!((share("c") - 0.20).abs() < 0.03, "{first:?}");
        assert!(share("zero") < 0.03, "{first:?}");
    }

    #[test]
    fn all_zero_weights_and_dot_target() {
        let mut rng = StdRng::seed_from_u64(1);
        let ordered = order_srv(
            vec![srv(0, 0, "x"), srv(0, 0, "y"), srv(0, 0, ".")],
            &mut rng,
        );
        let mut names: Vec<_> = ordered.iter().map(|r| r.target.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["x", "y"]);
        assert!(order_srv(vec![srv(0, 0, ".")], &mut rng).is_empty());
    }

    #[test]
    fn deterministic_for_seed() {
        let records: Vec<_> = (0..8).map(|i| srv(1, i * 10, &format!("t{i}"))).collect();
        let a = order_srv(records.clone(), &mut StdRng::seed_from_u64(5));
        let b = order_srv(records, &mut StdRng::seed_from_u64(5));
        assert_eq!(a, b);
    }

    #[test]
    fn cache_control() {
        let d = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        assert_eq!(cache_lifetime(None, d, max), d);
        assert_eq!(
            cache_lifetime(Some("max-age=300"), d, max),
            Duration::from_secs(300)
        );
        assert_eq!(
            cache_lifetime(Some("public, Max-Age=120"), d, max),
            Duration::from_secs(120)
        );
        assert_eq!(cache_lifetime(Some("max-age=999999"), d, max), max);
        assert_eq!(cache_lifetime(Some("no-cache"), d, max), d);
        assert_eq!(cache_lifetime(Some("max-age=60, no-store"), d, max), d);
        assert_eq!(cache_lifetime(Some("max-age=0"), d, max), d);
        assert_eq!(cache_lifetime(Some("max-age=abc"), d, max), d);
    }
}
