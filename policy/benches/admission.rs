//! Admission timing over 10,000 flows. Prints figures; target <= 5 ms per
//! evaluation. Run: `cargo bench -p ingest-policy --bench admission`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ingest_policy::admission::{
    AdmissionState, BitrateOrigin, DEFAULT_SENDER_PRIORITY, FlowDemand, admit,
};
use ingest_types::SourceGroup;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FLOWS: usize = 10_000;
const ITERATIONS: usize = 200;
const TARGET: Duration = Duration::from_millis(5);

fn flows(rng: &mut StdRng) -> Vec<FlowDemand> {
    (0..FLOWS)
        .map(|i| {
            let i = i as u32;
            let sg = if i.is_multiple_of(4) {
                SourceGroup::new(
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        (i % 500) as u16,
                    )),
                    IpAddr::V6(Ipv6Addr::new(
                        0xff3e,
                        0,
                        0,
                        0,
                        0,
                        0,
                        (i >> 16) as u16,
                        i as u16,
                    )),
                )
            } else {
                SourceGroup::new(
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i % 500))),
                    IpAddr::V4(Ipv4Addr::from(0xe800_0000 | i)),
                )
            }
            .expect("generated channels are valid");
            FlowDemand {
                sg,
                population: rng.random_range(1..=50),
                bitrate: if i.is_multiple_of(97) {
                    None
                } else {
                    Some(rng.random_range(100_000..=20_000_000))
                },
                bitrate_origin: BitrateOrigin::Dorms,
                admitted_now: rng.random_bool(0.5),
                priority: DEFAULT_SENDER_PRIORITY,
            }
        })
        .collect()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    let mean = total / samples.len() as u32;
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    let max = samples[samples.len() - 1];
    let verdict = if median <= TARGET {
        "OK"
    } else {
        "OVER TARGET"
    };
    println!(
        "{name}: {FLOWS} flows x {} runs: min {:?} median {median:?} mean {mean:?} p99 {p99:?} max {max:?} (target {TARGET:?}: {verdict})",
        samples.len(),
        samples[0],
    );
}

/// Evaluations from a fresh state (no hold-downs), timed one by one.
fn fresh_samples(demand: &[FlowDemand], limit: u64, now: Instant) -> Vec<Duration> {
    (0..ITERATIONS)
        .map(|_| {
            let mut state = AdmissionState::new(1);
            let start = Instant::now();
            black_box(admit(black_box(demand), limit, now, &mut state));
            start.elapsed()
        })
        .collect()
}

fn main() {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut demand = flows(&mut rng);
    let total: u64 = demand.iter().filter_map(|f| f.bitrate).sum();
    let limit = total / 3;
    let t0 = Instant::now();

    // Cold: no hold-downs.
    report("admit (fresh state)", fresh_samples(&demand, limit, t0));

    // Steady state: feed decisions back, many flows held down.
    let mut state = AdmissionState::new(1);
    let decisions = admit(&demand, limit, t0, &mut state);
    let admitted: std::collections::HashSet<SourceGroup> = decisions
        .iter()
        .filter(|d| d.admitted)
        .map(|d| d.sg)
        .collect();
    for f in demand.iter_mut() {
        f.admitted_now = admitted.contains(&f.sg);
    }
    let blocked = decisions.len() - admitted.len();
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..ITERATIONS {
        let mut s = state.clone();
        let now = t0 + Duration::from_millis(i as u64);
        let start = Instant::now();
        black_box(admit(black_box(&demand), limit, now, &mut s));
        samples.push(start.elapsed());
    }
    report(
        &format!(
            "admit (steady, {} admitted, {blocked} held/blocked)",
            admitted.len()
        ),
        samples,
    );

    // Senders ranking their own flows (4 priority levels, 20 flows per
    // source): the sender-priority rounds run.
    for f in demand.iter_mut() {
        f.priority = rng.random_range(1..=4) * 100;
        f.admitted_now = false;
    }
    report(
        "admit (fresh state, mixed sender priorities)",
        fresh_samples(&demand, limit, t0),
    );
}
