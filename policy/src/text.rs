//! The words people read: rates, admission reasons, relay candidates and
//! times of day, as `ingestctl show flows` (through the engine's decisions)
//! and `ingestctl driad` / `ingestctl dorms` print them. One place, so the
//! daemon and the offline tools say the same thing the same way.

use std::time::SystemTime;

use crate::admission::DecisionReason;
use crate::driad::RelayCandidate;

/// "6.0 Mbit/s", "2.5 kbit/s", "800 bit/s".
pub fn rate_text(bits: u64) -> String {
    let b = bits as f64;
    if bits >= 1_000_000_000 {
        format!("{:.1} Gbit/s", b / 1e9)
    } else if bits >= 1_000_000 {
        format!("{:.1} Mbit/s", b / 1e6)
    } else if bits >= 1_000 {
        format!("{:.1} kbit/s", b / 1e3)
    } else {
        format!("{bits} bit/s")
    }
}

/// Like [`rate_text`] without a needless ".0": "10 Mbit/s", "1.5 Gbit/s".
pub fn limit_text(bits: u64) -> String {
    rate_text(bits).replace(".0 ", " ")
}

/// An offload `(population - 1) × bitrate`: "0" or a rate.
pub fn offload_text(offload: u128) -> String {
    if offload == 0 {
        "0".into()
    } else {
        rate_text(u64::try_from(offload).unwrap_or(u64::MAX))
    }
}

/// "12:00:00 UTC": the time of day of `at`, for hold-down ends and retries.
pub fn time_of_day_text(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        (day / 60) % 60,
        day % 60
    )
}

/// A relay candidate: its address, with the record's name when it came
/// from a type 3 record: "192.0.2.7 (relay.example.)".
pub fn candidate_text(candidate: &RelayCandidate) -> String {
    match &candidate.via_name {
        Some(name) => format!("{} ({name})", candidate.relay),
        None => candidate.relay.to_string(),
    }
}

/// Why a flow is admitted or blocked under the bandwidth limit.
/// `held_until` is the time of day a blocked flow's hold-down ends;
/// `dorms_error` why there is no DORMS bitrate, when there is none.
pub fn admission_reason_text(
    reason: &DecisionReason,
    bitrate: Option<u64>,
    offload: u128,
    held_until: Option<SystemTime>,
    limit: u64,
    dorms_error: Option<&str>,
) -> String {
    let held = held_until
        .map(|t| format!("; held down until {}", time_of_day_text(t)))
        .unwrap_or_default();
    match reason {
        DecisionReason::Fits => format!(
            "admitted: {} within the {} limit (offload {})",
            rate_text(bitrate.unwrap_or(0)),
            limit_text(limit),
            offload_text(offload)
        ),
        DecisionReason::OverLimit { needed, available }
        | DecisionReason::HeldDown {
            needed, available, ..
        } => format!(
            "blocked: needs {}, {} left of {} (offload {}){held}",
            rate_text(*needed),
            rate_text(*available),
            limit_text(limit),
            offload_text(offload)
        ),
        DecisionReason::NoBitrate => format!(
            "blocked: no bitrate (DORMS: {}) and no default_bitrate",
            dorms_error.unwrap_or("no metadata")
        ),
        DecisionReason::SenderPriority {
            blocked,
            blocked_priority,
            priority,
        } => format!(
            "blocked: its sender ranks {blocked} higher (DORMS priority \
             {blocked_priority} > {priority}) and that flow does not fit{held}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const M: u64 = 1_000_000;

    #[test]
    fn rates_and_limits() {
        assert_eq!(rate_text(2000), "2.0 kbit/s");
        assert_eq!(rate_text(999), "999 bit/s");
        assert_eq!(rate_text(6 * M), "6.0 Mbit/s");
        assert_eq!(limit_text(10 * M), "10 Mbit/s");
        assert_eq!(limit_text(1_500_000_000), "1.5 Gbit/s");
        assert_eq!(offload_text(0), "0");
        assert_eq!(offload_text(u128::from(12 * M)), "12.0 Mbit/s");
    }

    #[test]
    fn time_of_day() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 13 + 62);
        assert_eq!(time_of_day_text(t), "13:01:02 UTC");
    }
}
