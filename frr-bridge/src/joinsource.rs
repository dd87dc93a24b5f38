//! Joinfile mode: the old platform's text interface instead of pimd.
//!
//! [`run_joinfile_source`] replaces the pimd watcher: it reads a joinfile
//! (`source,group[,population]`, see [`ingest_policy::joinfile`]) at start
//! and whenever it changes, and publishes it as a [`WantedSet`]. The
//! population column becomes that many pseudo-interfaces `joinfile#1..N`
//! (so population = number of interfaces everywhere downstream), capped at
//! [`MAX_JOINFILE_POPULATION`].
//!
//! Change detection polls: size, mtime and inode each `poll_interval`, and
//! a content hash when those changed, so an unchanged rewrite publishes
//! nothing. A missing or unreadable file keeps the last good set (a file
//! being replaced must not tear every flow down); errors are logged once
//! per burst. Rejected lines are logged once per content change, with line
//! numbers, and the other lines are used.
//!
//! [`write_admitted`] / [`JoinfileWriter`] go the other way: the admitted
//! flows of a [`PolicySet`] as a joinfile (`source,group,population`),
//! sorted, replaced atomically and only when the content changes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ingest_policy::joinfile::{JoinEntry, Joinfile, write_joinfile};
use ingest_types::SourceGroup;
use tokio::sync::watch;
use tracing::{info, warn};

use ingest_policy::engine::{PolicySet, WantedFlow, WantedSet};

use crate::watcher::WatchStatus;

/// Largest population taken from a joinfile line; larger values are cut to
/// it (and logged). Each counts as one pseudo-interface in memory.
pub const MAX_JOINFILE_POPULATION: u32 = 1024;

/// Name of the `n`th pseudo-interface of a joinfile flow (1-based).
pub fn pseudo_interface(n: u32) -> String {
    format!("joinfile#{n}")
}

/// The wanted set for a parsed joinfile, and the (S,G)s whose population
/// was capped.
pub fn wanted_from_joinfile(joinfile: &Joinfile) -> (WantedSet, Vec<(SourceGroup, u32)>) {
    let mut wanted = WantedSet::new();
    let mut capped = Vec::new();
    for entry in joinfile.iter() {
        let sg = entry.sg;
        let asked = entry.population.map_or(1, NonZeroU32::get);
        if asked > MAX_JOINFILE_POPULATION {
            capped.push((sg, asked));
        }
        let population = asked.min(MAX_JOINFILE_POPULATION);
        wanted.insert(
            sg,
            WantedFlow {
                interfaces: (1..=population).map(pseudo_interface).collect(),
                held: false,
            },
        );
    }
    (wanted, capped)
}

/// What identifies a file version cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileKey {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// State of one joinfile reader between polls.
struct Reader {
    path: PathBuf,
    key: Option<FileKey>,
    hash: Option<u64>,
    /// The error message of the current failure burst.
    failing: Option<(String, Instant, u64)>,
}

/// What one poll found.
enum Poll {
    Unchanged,
    Changed(Joinfile, Vec<String>),
    Failed(String),
}

impl Reader {
    async fn poll(&mut self) -> Poll {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => meta,
            Err(e) => return Poll::Failed(e.to_string()),
        };
        let key = FileKey {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        };
        if self.key.as_ref() == Some(&key) {
            return Poll::Unchanged;
        }
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) => return Poll::Failed(e.to_string()),
        };
        self.key = Some(key);
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let hash = hasher.finish();
        if self.hash == Some(hash) {
            return Poll::Unchanged;
        }
        self.hash = Some(hash);
        // Bytes that are not UTF-8 make their line unparsable, not the file.
        let parsed = Joinfile::parse(&String::from_utf8_lossy(&bytes));
        let errors = parsed.errors.iter().map(ToString::to_string).collect();
        Poll::Changed(parsed.joinfile, errors)
    }

    fn failed(&mut self, message: String, kept: usize) {
        // The next good read must publish even if the content is the same
        // as before the outage.
        self.key = None;
        match &mut self.failing {
            Some((last, _, suppressed)) if *last == message => *suppressed += 1,
            _ => {
                warn!(
                    path = %self.path.display(),
                    "joinfile unreadable: {message} (keeping the last good set of {kept} flows)"
                );
                let since = self.failing.as_ref().map_or_else(Instant::now, |f| f.1);
                self.failing = Some((message, since, 0));
            }
        }
    }

    fn ok(&mut self) {
        if let Some((_, since, suppressed)) = self.failing.take() {
            info!(
                path = %self.path.display(),
                "joinfile readable again after {:.1} s ({suppressed} more errors suppressed)",
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// Reads `path` now and whenever it changes, publishing the desired set on
/// `tx`, until every receiver of `tx` is gone.
pub async fn run_joinfile_source(
    path: PathBuf,
    poll_interval: Duration,
    tx: watch::Sender<Arc<WantedSet>>,
    status: Arc<Mutex<WatchStatus>>,
) {
    let mut reader = Reader {
        path: path.clone(),
        key: None,
        hash: None,
        failing: None,
    };
    let state_ok = format!("joinfile: {}", path.display());
    loop {
        let result = reader.poll().await;
        let kept = tx.borrow().len();
        let lock = || status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Poll::Unchanged => {
                reader.ok();
                let mut st = lock();
                st.polls += 1;
                st.last_ok = Some(Instant::now());
                st.frr_state.clone_from(&state_ok);
            }
            Poll::Changed(joinfile, errors) => {
                reader.ok();
                {
                    let mut st = lock();
                    st.polls += 1;
                    st.last_ok = Some(Instant::now());
                    st.frr_state.clone_from(&state_ok);
                    st.skipped_entries += errors.len() as u64;
                }
                for error in &errors {
                    warn!(path = %path.display(), "joinfile {error}: line ignored");
                }
                let (set, capped) = wanted_from_joinfile(&joinfile);
                for (sg, population) in capped {
                    warn!(%sg, population, "joinfile population cut to {MAX_JOINFILE_POPULATION}");
                }
                info!(
                    path = %path.display(),
                    flows = set.len(),
                    rejected_lines = errors.len(),
                    "joinfile read"
                );
                tx.send_if_modified(|current| {
                    if **current == set {
                        false
                    } else {
                        *current = Arc::new(set);
                        true
                    }
                });
            }
            Poll::Failed(message) => {
                {
                    let mut st = lock();
                    st.polls += 1;
                    st.poll_errors += 1;
                    st.last_error.clone_from(&message);
                    st.frr_state = format!(
                        "joinfile: {} (unreadable: {message}; keeping the last good set)",
                        path.display()
                    );
                }
                reader.failed(message, kept);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll_interval) => {}
            () = tx.closed() => return,
        }
    }
}

/// The admitted flows of `set` as a joinfile with populations.
pub fn admitted_joinfile(set: &PolicySet) -> Joinfile {
    set.values()
        .filter(|flow| flow.admitted)
        .map(|flow| JoinEntry {
            sg: flow.sg,
            population: NonZeroU32::new(flow.population.max(1)),
        })
        .collect()
}

/// Writes the admitted flows of `set` to `path` (`source,group,population`,
/// sorted), atomically and only when the content changes. Returns whether
/// it wrote.
pub fn write_admitted(path: &Path, set: &PolicySet) -> io::Result<bool> {
    write_joinfile(path, &admitted_joinfile(set))
}

/// Keeps a joinfile equal to the admitted set, for consumers of the old
/// platform's files.
pub struct JoinfileWriter {
    path: PathBuf,
    failing: bool,
}

impl JoinfileWriter {
    /// How soon a failed write is tried again without a new set.
    pub const RETRY: Duration = Duration::from_secs(5);

    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            failing: false,
        }
    }

    /// Writes `set` if changed; logs the first failure of a burst and the
    /// recovery. Returns whether the file now matches `set`.
    pub fn write(&mut self, set: &PolicySet) -> bool {
        let result = write_admitted(&self.path, set);
        self.report(result, admitted_count(set))
    }

    fn report(&mut self, result: io::Result<bool>, flows: usize) -> bool {
        match result {
            Ok(wrote) => {
                if self.failing {
                    info!(path = %self.path.display(), "admitted joinfile written again");
                }
                self.failing = false;
                if wrote {
                    info!(path = %self.path.display(), flows, "admitted joinfile written");
                }
                true
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %self.path.display(), "cannot write the admitted joinfile: {e}");
                }
                self.failing = true;
                false
            }
        }
    }

    /// Writes every new set from `rx` until its sender is gone; retries a
    /// failed write every [`Self::RETRY`].
    pub async fn run(mut self, mut rx: watch::Receiver<Arc<PolicySet>>) {
        loop {
            let set = rx.borrow_and_update().clone();
            let flows = admitted_count(&set);
            let path = self.path.clone();
            // fsync can take a while: keep it off the async threads.
            let result = tokio::task::spawn_blocking(move || write_admitted(&path, &set))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            let ok = self.report(result, flows);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Self::RETRY), if !ok => {}
            }
        }
    }
}

fn admitted_count(set: &PolicySet) -> usize {
    set.values().filter(|f| f.admitted).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::wait_published;
    use ingest_policy::engine::{FlowPolicy, RelayVerdict};
    use ingest_policy::fixtures::sg;
    use ingest_policy::joinfile::read_joinfile;

    /// How long a test waits for the source to publish.
    const WAIT: Duration = Duration::from_secs(20);

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("joinsource-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The joinfile source on `path`, polling every 10 ms: what it
    /// publishes, its status, and its task.
    fn start_source(
        path: &Path,
    ) -> (
        watch::Receiver<Arc<WantedSet>>,
        Arc<Mutex<WatchStatus>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(WantedSet::default()));
        let status = Arc::new(Mutex::new(WatchStatus::default()));
        let task = tokio::spawn(run_joinfile_source(
            path.to_path_buf(),
            Duration::from_millis(10),
            tx,
            status.clone(),
        ));
        (rx, status, task)
    }

    async fn wait_status(
        status: &Arc<Mutex<WatchStatus>>,
        check: impl Fn(&WatchStatus) -> bool,
    ) -> WatchStatus {
        for _ in 0..2000 {
            let st = status.lock().unwrap().clone();
            if check(&st) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("status never matched: {:?}", status.lock().unwrap());
    }

    fn interfaces(n: u32) -> Vec<String> {
        (1..=n).map(pseudo_interface).collect()
    }

    #[tokio::test]
    async fn reads_changes_bad_lines_and_survives_deletion() {
        let dir = Dir::new("read");
        let path = dir.0.join("pimwatch.sgs");
        std::fs::write(
            &path,
            "# from pimwatch\n198.51.100.1,232.1.1.1\n198.51.100.2, 232.1.1.2, 3\n",
        )
        .unwrap();
        let (mut rx, status, task) = start_source(&path);
        let set = wait_published(&mut rx, WAIT, "two flows", |s| s.len() == 2).await;
        assert_eq!(
            set[&sg("198.51.100.1", "232.1.1.1")].interfaces,
            vec!["joinfile#1"]
        );
        assert_eq!(
            set[&sg("198.51.100.2", "232.1.1.2")].interfaces,
            interfaces(3)
        );
        let st = wait_status(&status, |s| s.polls >= 2).await;
        assert_eq!(st.frr_state, format!("joinfile: {}", path.display()));
        assert_eq!(st.poll_errors, 0);

        // Bad lines are rejected, the good ones used; population changes.
        std::fs::write(
            &path,
            "198.51.100.2,232.1.1.2,5\n198.51.100.3 232.1.1.3\n198.51.100.4,10.0.0.1\n2001:db8::1,ff3e::1,2\n",
        )
        .unwrap();
        let set = wait_published(&mut rx, WAIT, "new content", |s| {
            s.contains_key(&sg("2001:db8::1", "ff3e::1"))
        })
        .await;
        assert_eq!(set.len(), 2);
        assert_eq!(
            set[&sg("198.51.100.2", "232.1.1.2")].interfaces,
            interfaces(5)
        );
        assert_eq!(set[&sg("2001:db8::1", "ff3e::1")].interfaces, interfaces(2));
        wait_status(&status, |s| s.skipped_entries == 2).await;

        // Deleted: the last good set stays, the error shows in the status.
        std::fs::remove_file(&path).unwrap();
        let st = wait_status(&status, |s| s.poll_errors >= 3).await;
        assert!(st.frr_state.contains("unreadable"), "{}", st.frr_state);
        assert!(st.last_error.contains("No such file"), "{}", st.last_error);
        assert_eq!(rx.borrow().len(), 2);
        assert!(!rx.has_changed().unwrap());

        // Recreated (atomically, like our writer does): followed again.
        let tmp = dir.0.join(".pimwatch.sgs.tmp");
        std::fs::write(&tmp, "198.51.100.9,232.1.1.9,4000\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let set = wait_published(&mut rx, WAIT, "recreated", |s| s.len() == 1).await;
        assert_eq!(
            set[&sg("198.51.100.9", "232.1.1.9")].interfaces.len(),
            MAX_JOINFILE_POPULATION as usize,
            "population capped"
        );
        let st = wait_status(&status, |s| !s.frr_state.contains("unreadable")).await;
        assert_eq!(st.frr_state, format!("joinfile: {}", path.display()));

        // The same content rewritten: nothing published.
        std::fs::write(&path, "198.51.100.9,232.1.1.9,4000\n").unwrap();
        let polls = status.lock().unwrap().polls;
        wait_status(&status, |s| s.polls >= polls + 5).await;
        assert!(!rx.has_changed().unwrap());

        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops when the receivers are gone")
            .unwrap();
    }

    #[tokio::test]
    async fn missing_at_start_then_created() {
        let dir = Dir::new("late");
        let path = dir.0.join("cbacc.sgs");
        let (mut rx, status, task) = start_source(&path);
        wait_status(&status, |s| s.poll_errors >= 2).await;
        assert!(rx.borrow().is_empty());
        std::fs::write(&path, "198.51.100.1,232.1.1.1\n").unwrap();
        wait_published(&mut rx, WAIT, "created", |s| s.len() == 1).await;
        task.abort();
    }

    fn flow(s: &str, g: &str, population: u32, admitted: bool) -> FlowPolicy {
        FlowPolicy {
            sg: sg(s, g),
            interfaces: Vec::new(),
            held: false,
            population,
            bitrate: Some(1_000_000),
            bitrate_origin: "default".into(),
            admitted,
            admission_reason: String::new(),
            relays: RelayVerdict::Pending,
            candidates: Vec::new(),
        }
    }

    #[tokio::test]
    async fn write_admitted_round_trips_through_the_reader() {
        let dir = Dir::new("write");
        let path = dir.0.join("admitted.sgs");
        let set: PolicySet = [
            flow("2001:db8::1", "ff3e::1", 2, true),
            flow("198.51.100.2", "232.1.1.2", 1, true),
            flow("198.51.100.1", "232.1.1.1", 3, true),
            flow("198.51.100.3", "232.1.1.3", 1, false),
        ]
        .into_iter()
        .map(|f| (f.sg, Arc::new(f)))
        .collect();
        assert!(write_admitted(&path, &set).unwrap());
        assert!(!write_admitted(&path, &set).unwrap(), "unchanged: no write");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "198.51.100.1,232.1.1.1,3\n198.51.100.2,232.1.1.2,1\n2001:db8::1,ff3e::1,2\n"
        );
        let parsed = read_joinfile(&path).unwrap();
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.joinfile, admitted_joinfile(&set));

        // What the reader makes of it is the admitted set with populations.
        let (mut rx, _, task) = start_source(&path);
        let read = wait_published(&mut rx, WAIT, "read back", |s| !s.is_empty()).await;
        let expected: WantedSet = set
            .values()
            .filter(|f| f.admitted)
            .map(|f| {
                (
                    f.sg,
                    WantedFlow {
                        interfaces: interfaces(f.population),
                        held: false,
                    },
                )
            })
            .collect();
        assert_eq!(*read, expected);
        task.abort();

        // The writer task follows the policy set and stops with it.
        let (ptx, prx) = watch::channel(Arc::new(set.clone()));
        let writer = tokio::spawn(JoinfileWriter::new(path.clone()).run(prx));
        let mut fewer = set.clone();
        fewer.retain(|sg, _| sg.source.is_ipv6());
        ptx.send(Arc::new(fewer)).unwrap();
        for _ in 0..500 {
            if std::fs::read_to_string(&path).unwrap() == "2001:db8::1,ff3e::1,2\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2001:db8::1,ff3e::1,2\n"
        );
        drop(ptx);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();

        // An unwritable place: reported, not panicking.
        let mut bad = JoinfileWriter::new(dir.0.join("no-such-dir").join("x.sgs"));
        assert!(!bad.write(&set));
    }
}
