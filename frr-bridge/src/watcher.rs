//! The join watcher: reads pimd's (and pim6d's) join state over their vty
//! sockets and publishes the wanted set of (S,G)s with their downstream
//! interfaces.
//!
//! It polls on a short period and re-polls at once when triggered (a PIM
//! Join/Prune from pimd on the TUN, a kernel multicast-route change). The
//! poll is the source of truth: triggers only make it sooner. Errors are
//! logged once per burst and retried with backoff. What the polls mean (last
//! good set kept through an outage, the restart grace, the two families
//! merged) is decided by the pure [`WantedTracker`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amt_gateway::Family;
use ingest_policy::engine::WantedSet;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::frr::joins::{JoinParseError, ParsedJoins, parse_join_json};
use crate::frr::vty::{VtyClient, VtyError};
use crate::wanted::{DaemonHealth, JoinSet, WantedTracker};

#[derive(Debug, Clone, Default)]
pub struct WatchStatus {
    pub frr_state: String,
    /// pim6d's state: "" when not asked, else like `frr_state`.
    pub pim6d_state: String,
    pub polls: u64,
    pub poll_errors: u64,
    pub last_error: String,
    pub last_ok: Option<Instant>,
    pub skipped_entries: u64,
    pub reconnects: u64,
}

pub struct WatcherConfig {
    pub pimd_socket: PathBuf,
    pub pim6d_socket: Option<PathBuf>,
    /// pim6 "auto": query pim6d only while its socket exists.
    pub pim6_auto: bool,
    pub poll_interval: Duration,
    pub command_timeout: Duration,
    pub restart_grace: Duration,
    /// Interfaces that are not downstream (the ingest TUN itself).
    pub ignore_interfaces: Vec<String>,
}

/// Logs the first error of a burst, counts the rest, and logs recovery.
#[derive(Default)]
struct BurstLog {
    failing_since: Option<Instant>,
    suppressed: u64,
    last_message: String,
}

impl BurstLog {
    fn error(&mut self, what: &str, msg: String) {
        if self.failing_since.is_none() || msg != self.last_message {
            warn!("{what}: {msg} (keeping the last good join set; retrying with backoff)");
            self.failing_since.get_or_insert_with(Instant::now);
            self.last_message = msg;
        } else {
            self.suppressed += 1;
        }
    }
    /// True when this ends a failure burst.
    fn ok(&mut self, what: &str) -> bool {
        if let Some(since) = self.failing_since.take() {
            info!(
                "{what}: reachable again after {:.1} s ({} more errors suppressed)",
                since.elapsed().as_secs_f64(),
                self.suppressed
            );
            self.suppressed = 0;
            self.last_message.clear();
            true
        } else {
            false
        }
    }
}

/// Why one poll of a daemon gave no join set.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Vty(#[from] VtyError),
    #[error(transparent)]
    Json(#[from] JoinParseError),
}

pub struct JoinWatcher {
    cfg: WatcherConfig,
    pimd: VtyClient,
    pim6d: Option<VtyClient>,
    trigger: Arc<Notify>,
    tx: watch::Sender<Arc<WantedSet>>,
    status: Arc<Mutex<WatchStatus>>,
    log4: BurstLog,
    log6: BurstLog,
    tracker: WantedTracker,
}

impl JoinWatcher {
    pub fn new(
        cfg: WatcherConfig,
        trigger: Arc<Notify>,
        tx: watch::Sender<Arc<WantedSet>>,
        status: Arc<Mutex<WatchStatus>>,
    ) -> Self {
        let pimd = VtyClient::new(cfg.pimd_socket.clone(), cfg.command_timeout);
        let pim6d = cfg
            .pim6d_socket
            .clone()
            .map(|p| VtyClient::new(p, cfg.command_timeout));
        let tracker = WantedTracker::new(cfg.restart_grace);
        Self {
            cfg,
            pimd,
            pim6d,
            trigger,
            tx,
            status,
            log4: BurstLog::default(),
            log6: BurstLog::default(),
            tracker,
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, WatchStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn to_set(&self, parsed: ParsedJoins) -> JoinSet {
        let mut out = JoinSet::new();
        for (sg, mut ifaces) in parsed.joins {
            ifaces.retain(|i| !self.cfg.ignore_interfaces.contains(i));
            if !ifaces.is_empty() {
                out.insert(sg, ifaces);
            }
        }
        out
    }

    async fn query(client: &mut VtyClient, command: &str) -> Result<ParsedJoins, PollError> {
        let text = client.command(command).await?;
        Ok(parse_join_json(&text)?)
    }

    /// One poll of pimd (and pim6d). Returns whether pimd answered.
    pub async fn poll_once(&mut self) -> bool {
        self.poll_at(Instant::now()).await
    }

    /// [`JoinWatcher::poll_once`] with the time of the poll given.
    async fn poll_at(&mut self, now: Instant) -> bool {
        let v4 = Self::query(&mut self.pimd, "show ip pim join json").await;
        let ok = match v4 {
            Ok(parsed) => {
                let skipped = parsed.skipped.len() as u64;
                if skipped > 0 {
                    debug!("pimd join json: skipped {:?}", parsed.skipped);
                }
                let set = self.to_set(parsed);
                self.log4.ok("pimd");
                if self.tracker.on_answer(Family::V4, set, now) {
                    self.status().reconnects += 1;
                }
                let mut st = self.status();
                st.polls += 1;
                st.last_ok = Some(now);
                st.skipped_entries += skipped;
                st.frr_state = "connected".into();
                true
            }
            Err(e) => {
                let msg = e.to_string();
                self.log4.error(
                    &format!("pimd at {}", self.cfg.pimd_socket.display()),
                    msg.clone(),
                );
                self.tracker.on_failure(Family::V4);
                let mut st = self.status();
                st.polls += 1;
                st.poll_errors += 1;
                st.frr_state = format!("unreachable: {msg}");
                st.last_error = msg;
                false
            }
        };
        self.poll_v6(now).await;
        self.publish(now);
        ok
    }

    async fn poll_v6(&mut self, now: Instant) {
        let Some(client) = self.pim6d.as_mut() else {
            return;
        };
        if self.cfg.pim6_auto && !client.path().exists() {
            let before = self.tracker.health(Family::V6).clone();
            if self.tracker.on_socket_missing(Family::V6) {
                if before != DaemonHealth::Absent {
                    info!(
                        "pim6d's vty socket {} is absent: no IPv6 joins (frr.pim6 = \"auto\")",
                        client.path().display()
                    );
                }
                self.status().pim6d_state = "absent (no vty socket)".into();
            } else {
                // A pim6d restart: its IPv6 joins are kept meanwhile.
                self.log6.error(
                    "pim6d",
                    format!("vty socket {} gone (restarting?)", client.path().display()),
                );
                self.status().pim6d_state = "unreachable: vty socket gone (restarting?)".into();
            }
            return;
        }
        match Self::query(client, "show ipv6 pim join json").await {
            Ok(parsed) => {
                let skipped = parsed.skipped.len() as u64;
                let set = self.to_set(parsed);
                self.log6.ok("pim6d");
                self.tracker.on_answer(Family::V6, set, now);
                let mut st = self.status();
                st.skipped_entries += skipped;
                st.pim6d_state = "connected".into();
            }
            Err(e) => {
                let msg = e.to_string();
                self.log6.error("pim6d", msg.clone());
                self.tracker.on_failure(Family::V6);
                self.status().pim6d_state = format!("unreachable: {msg}");
            }
        }
    }

    fn publish(&mut self, now: Instant) {
        let new = self.tracker.wanted(now);
        self.tx.send_if_modified(|cur| {
            if **cur != new {
                *cur = Arc::new(new);
                true
            } else {
                false
            }
        });
    }

    /// Poll forever (until the receiver side is gone).
    pub async fn run(mut self) {
        let base = self.cfg.poll_interval;
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.trigger.notified() => {}
                _ = self.tx.closed() => return,
            }
            let ok = self.poll_once().await;
            delay = if ok {
                base
            } else {
                // 2x backoff from the poll interval up to 5 s.
                (delay.max(base) * 2).min(Duration::from_secs(5))
            };
            // Grace expiry must publish even without a new trigger.
            if let Some(until) = self.tracker.next_deadline() {
                let left = until.saturating_duration_since(Instant::now());
                delay = delay.min(left.max(Duration::from_millis(1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ONE: &str = r#"{"ing-dn":{"name":"ing-dn","232.1.1.1":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.1","channelJoinName":"JOIN"}},
        "232.1.1.2":{"198.51.100.4":{"source":"198.51.100.4","group":"232.1.1.2","channelJoinName":"JOIN"}}},
        "amt0":{"name":"amt0","232.9.9.9":{"198.51.100.9":{"channelJoinName":"JOIN"}}}}"#;

    /// A fake pimd that answers each command with the next scripted reply
    /// (`None` = close the connection mid-reply).
    async fn fake_pimd(path: PathBuf, replies: Vec<Option<&'static str>>) {
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut replies = replies.into_iter();
        'conn: loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => continue 'conn,
                    Ok(_) => {}
                }
                match replies.next() {
                    Some(Some(text)) => {
                        let mut msg = text.as_bytes().to_vec();
                        msg.extend_from_slice(&[0, 0, 0, 0]);
                        let _ = s.write_all(&msg).await;
                    }
                    Some(None) => {
                        let _ = s.write_all(b"{\"ing-dn\":").await;
                        continue 'conn;
                    }
                    None => return,
                }
            }
        }
    }

    fn watcher(
        path: PathBuf,
        grace: Duration,
    ) -> (
        JoinWatcher,
        watch::Receiver<Arc<WantedSet>>,
        Arc<Mutex<WatchStatus>>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(WantedSet::default()));
        let status = Arc::new(Mutex::new(WatchStatus::default()));
        let w = JoinWatcher::new(
            WatcherConfig {
                pimd_socket: path,
                pim6d_socket: None,
                pim6_auto: true,
                poll_interval: Duration::from_millis(10),
                command_timeout: Duration::from_millis(500),
                restart_grace: grace,
                ignore_interfaces: vec!["amt0".into()],
            },
            Arc::new(Notify::new()),
            tx,
            status.clone(),
        );
        (w, rx, status)
    }

    fn tmp_sock(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("watcher-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("pimd.vty");
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn bad_replies_keep_the_last_good_set_and_grace_holds_it() {
        let path = tmp_sock("bad");
        let server = tokio::spawn(fake_pimd(
            path.clone(),
            vec![
                Some(ONE),
                Some("not json at all"),
                Some("[1,2,3]"),
                None,       // pimd dies mid-reply
                Some("{}"), // pimd restarted: knows nothing yet
                Some("{}"),
            ],
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut w, rx, status) = watcher(path.clone(), Duration::from_secs(60));
        assert!(w.poll_once().await);
        let set = rx.borrow().clone();
        assert_eq!(set.len(), 2, "amt0 is not a downstream interface");
        for _ in 0..3 {
            assert!(!w.poll_once().await);
            assert_eq!(rx.borrow().len(), 2, "last good set kept");
        }
        {
            let st = status.lock().unwrap();
            assert_eq!(st.poll_errors, 3);
            assert!(st.frr_state.starts_with("unreachable"), "{}", st.frr_state);
        }
        // pimd is back with an empty state: the grace keeps the flows.
        assert!(w.poll_once().await);
        let set = rx.borrow().clone();
        assert_eq!(set.len(), 2);
        assert_eq!(set.values().filter(|f| f.held).count(), 2);
        assert_eq!(status.lock().unwrap().reconnects, 1);
        // Grace over: pimd's (empty) state wins.
        assert!(w.poll_at(Instant::now() + Duration::from_secs(61)).await);
        assert!(rx.borrow().is_empty());
        server.abort();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn unreachable_pimd_backs_off_and_reports() {
        let path = tmp_sock("none");
        let (w, rx, status) = watcher(path.clone(), Duration::from_secs(1));
        let task = tokio::spawn(w.run());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let st = status.lock().unwrap().clone();
        // 10 ms base doubling to 5 s: far fewer polls than 40.
        assert!(
            st.poll_errors >= 2 && st.poll_errors <= 8,
            "{} polls",
            st.poll_errors
        );
        assert!(st.last_error.contains("pimd.vty"), "{}", st.last_error);
        assert!(rx.borrow().is_empty());
        drop(rx);
        task.abort();
    }
}
