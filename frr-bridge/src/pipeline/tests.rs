//! The pipeline shell with fake lookups and a fake southbound, in paused
//! tokio time: lookups run concurrently, tunnel events come back in, and
//! the decisions and actions reach the cores and the fakes.

use std::collections::HashMap;
use std::sync::Mutex;

use amt_gateway::{LossReason, TunnelEvent};
use ingest_policy::dorms::FlowBitrate;
use ingest_policy::driad::DriadOutcome;
use ingest_policy::engine::{EngineConfig, LookupFuture};
use ingest_policy::fixtures::{
    M, answer, desired, dorms_down, dorms_ok, engine_config, no_static, relay, relays_of, sg,
};
use ingest_types::SourceGroup;

use super::*;
use crate::orchestrator::{FlowPhase, OrchestratorConfig};
use crate::test_support::wait_published;

/// How long a test waits for a policy set (paused time: the limit only
/// stops a test that waits for something that never comes).
const WAIT: Duration = Duration::from_secs(3600);

/// Fake lookups: a source without an entry hangs forever.
#[derive(Default)]
struct Fake {
    relays: Mutex<HashMap<IpAddr, DriadOutcome>>,
    rates: Mutex<HashMap<SourceGroup, FlowBitrate>>,
    relay_calls: Mutex<Vec<IpAddr>>,
}

impl PolicyLookups for Fake {
    fn relays(&self, source: IpAddr) -> LookupFuture<'_, DriadOutcome> {
        self.relay_calls.lock().unwrap().push(source);
        let outcome = self.relays.lock().unwrap().get(&source).cloned();
        Box::pin(async move {
            match outcome {
                Some(outcome) => outcome,
                None => futures::future::pending().await,
            }
        })
    }

    fn bitrate(&self, sg: SourceGroup) -> LookupFuture<'_, FlowBitrate> {
        let rate = self
            .rates
            .lock()
            .unwrap()
            .get(&sg)
            .cloned()
            .unwrap_or_else(dorms_down);
        Box::pin(async move { rate })
    }
}

/// What the fake southbound was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Open(SocketAddr),
    Subscribe(SocketAddr, SourceGroup),
    Unsubscribe(SocketAddr, SourceGroup),
    Connect(SocketAddr, amt_gateway::Family),
    Close(SocketAddr),
    AddRoute(IpAddr),
    RemoveRoute(IpAddr),
}

#[derive(Default)]
struct FakeWorld {
    calls: Mutex<Vec<Call>>,
    /// Each open tunnel's event sender, to play the relay.
    events: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<RelayEvent>>>,
}

impl FakeWorld {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

struct FakePort {
    relay: SocketAddr,
    world: Arc<FakeWorld>,
}

impl TunnelPort for FakePort {
    fn subscribe(&self, sg: SourceGroup) {
        self.world.record(Call::Subscribe(self.relay, sg));
    }
    fn unsubscribe(&self, sg: SourceGroup) {
        self.world.record(Call::Unsubscribe(self.relay, sg));
    }
    fn connect(&self, family: amt_gateway::Family) {
        self.world.record(Call::Connect(self.relay, family));
    }
    fn close(&self) -> PortFuture<'_, ()> {
        self.world.record(Call::Close(self.relay));
        Box::pin(async {})
    }
    fn snapshot(&self) -> PortFuture<'_, Option<TunnelSnapshot>> {
        Box::pin(async { None })
    }
    fn is_finished(&self) -> bool {
        false
    }
}

struct FakeSouthbound(Arc<FakeWorld>);

impl Southbound for FakeSouthbound {
    fn open_tunnel(
        &self,
        relay: SocketAddr,
        _skip_discovery: bool,
        events: mpsc::UnboundedSender<RelayEvent>,
    ) -> Result<Arc<dyn TunnelPort>, OpenTunnelError> {
        self.0.record(Call::Open(relay));
        self.0.events.lock().unwrap().insert(relay, events);
        Ok(Arc::new(FakePort {
            relay,
            world: self.0.clone(),
        }))
    }
    fn add_route(&self, source: IpAddr) -> io::Result<()> {
        self.0.record(Call::AddRoute(source));
        Ok(())
    }
    fn remove_route(&self, source: IpAddr) -> io::Result<()> {
        self.0.record(Call::RemoveRoute(source));
        Ok(())
    }
}

struct Running {
    desired: watch::Sender<Arc<WantedSet>>,
    out: watch::Receiver<Arc<PolicySet>>,
    world: Arc<FakeWorld>,
    shared: Shared,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn shared() -> Shared {
    let (events, _) = broadcast::channel(64);
    Shared {
        orchestrator: Arc::new(RwLock::new(Orchestrator::new(OrchestratorConfig {
            serve_all: false,
            linger: Duration::from_secs(60),
            attempt_delay: Duration::from_millis(250),
        }))),
        tunnels: Arc::new(RwLock::new(BTreeMap::new())),
        watch_status: Arc::new(Mutex::new(WatchStatus::default())),
        events,
        counters: Arc::new(Counters::default()),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        limit_bps: None,
    }
}

fn start(cfg: EngineConfig, fake: Arc<Fake>, flows: &[(SourceGroup, usize)]) -> Running {
    let engine = Engine::new(cfg, no_static(), clock(), SystemTime::now());
    let world = Arc::new(FakeWorld::default());
    let shared = shared();
    let mut pipeline = Pipeline::new(
        shared.clone(),
        Deciding::Policy {
            engine: Box::new(engine),
            lookups: fake,
        },
        Arc::new(FakeSouthbound(world.clone())),
    );
    let (out_tx, out_rx) = watch::channel(Arc::new(PolicySet::new()));
    pipeline.publish_decisions(out_tx);
    let (desired_tx, desired_rx) = watch::channel(desired(flows));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(desired_rx, stop_rx));
    Running {
        desired: desired_tx,
        out: out_rx,
        world,
        shared,
        stop: stop_tx,
        task,
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_lookup_does_not_hold_back_other_sources() {
    let (slow, fast) = (
        sg("198.51.100.1", "232.1.1.1"),
        sg("198.51.100.2", "232.1.1.2"),
    );
    let fake = Arc::new(Fake::default());
    fake.relays
        .lock()
        .unwrap()
        .insert(fast.source, answer("198.51.100.2", &["10 0 1 192.0.2.2"]));
    let mut run = start(engine_config(None), fake.clone(), &[(slow, 1), (fast, 1)]);
    let set = wait_published(&mut run.out, WAIT, "fast source relayed", |s| {
        s.get(&fast).is_some_and(|f| f.relays.first().is_some())
    })
    .await;
    assert_eq!(set[&slow].relays, RelayVerdict::Pending);
    assert_eq!(relays_of(&set, fast), vec![relay("192.0.2.2")]);

    // Minutes later the slow one is still pending, asked only once, and
    // nothing is republished while nothing changes.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        !run.out.has_changed().unwrap(),
        "republished without change"
    );
    assert_eq!(run.out.borrow()[&slow].relays, RelayVerdict::Pending);
    let calls = fake.relay_calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|s| **s == slow.source).count(), 1);
    // The fast flow is subscribed on its relay's tunnel meanwhile.
    assert!(
        run.world
            .calls
            .lock()
            .unwrap()
            .contains(&Call::Subscribe(relay("192.0.2.2"), fast))
    );

    drop(run.desired);
    run.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn relay_failure_moves_the_verdict_and_dorms_recovery_is_picked_up() {
    let a = sg("198.51.100.1", "232.1.1.1");
    let fake = Arc::new(Fake::default());
    fake.relays.lock().unwrap().insert(
        a.source,
        answer("198.51.100.1", &["10 0 1 192.0.2.1", "20 0 1 192.0.2.2"]),
    );
    let mut run = start(engine_config(Some(10 * M)), fake.clone(), &[(a, 2)]);
    let set = wait_published(&mut run.out, WAIT, "DORMS failure shown", |s| {
        s.get(&a)
            .is_some_and(|f| f.bitrate_origin.starts_with("unknown: "))
    })
    .await;
    assert!(!set[&a].admitted);
    assert!(set[&a].admission_reason.starts_with("blocked: no bitrate"));
    assert_eq!(relays_of(&set, a)[0], relay("192.0.2.1"));

    // DORMS comes back: picked up without any input change.
    fake.rates.lock().unwrap().insert(a, dorms_ok(4 * M));
    let set = wait_published(&mut run.out, WAIT, "admitted after DORMS recovery", |s| {
        s.get(&a).is_some_and(|f| f.admitted)
    })
    .await;
    assert_eq!(set[&a].bitrate, Some(4 * M));
    assert_eq!(set[&a].serve().map(|r| r.relay), Some(relay("192.0.2.1")));

    // The relay answers, then stops: the tunnel reports it lost.
    let events = run.world.events.lock().unwrap()[&relay("192.0.2.1")].clone();
    let send = |event| {
        events
            .send(RelayEvent {
                relay: relay("192.0.2.1"),
                event,
            })
            .unwrap()
    };
    send(TunnelEvent::Up {
        relay: relay("192.0.2.1"),
        family: amt_gateway::Family::V4,
    });
    send(TunnelEvent::RelayLost {
        reason: LossReason::NoQuery,
    });
    let set = wait_published(&mut run.out, WAIT, "moved to the next relay", |s| {
        s.get(&a).and_then(|f| f.relays.first()).map(|r| r.relay) == Some(relay("192.0.2.2"))
    })
    .await;
    assert_eq!(relays_of(&set, a), vec![relay("192.0.2.2")]);
    {
        let calls = run.world.calls.lock().unwrap();
        assert!(calls.contains(&Call::AddRoute(a.source)));
        assert!(calls.contains(&Call::Unsubscribe(relay("192.0.2.1"), a)));
        assert!(calls.contains(&Call::Subscribe(relay("192.0.2.2"), a)));
    }
    assert_eq!(
        run.shared.read().flows()[&a].phase,
        FlowPhase::WaitingTunnel
    );

    // The flow leaves: it disappears from the set.
    run.desired.send(desired(&[])).unwrap();
    wait_published(&mut run.out, WAIT, "empty set", |s| s.is_empty()).await;
    run.stop.send(true).unwrap();
    run.task.await.unwrap();
    // Stopped: every tunnel closed.
    let calls = run.world.calls.lock().unwrap();
    assert!(calls.contains(&Call::Close(relay("192.0.2.1"))));
    assert!(calls.contains(&Call::Close(relay("192.0.2.2"))));
}
