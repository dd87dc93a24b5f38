//! Harness of the lab tests: a lab per test (own namespace prefix and run
//! directory, torn down on drop), the daemon, the receiver and vtysh.
//!
//! Lab tests need root (network namespaces, TUN, FRR) and, unless they say
//! otherwise ([`Lab::up_without_multicast_routing`]: joinfile mode, where
//! no FRR join is involved), a kernel with multicast routing. They do not
//! skip: without root, FRR or multicast routing they fail with the reason,
//! so CI cannot report success for a test that did not run.
//!
//! The FRR version is `LAB_FRR` (8, the default: the host's FRR; 10: the root
//! of scripts/install-frr10 at `FRR10_ROOT`); `lab up` records it and the
//! harness runs the matching vtysh. Addresses come from the lab's topology
//! file (`sample-network/clab/frr-ingest.clab.yml`, see [`topology`]).

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sample_network::topology::Topology;
use serde_json::Value;

/// Lab tests in one binary run one at a time (2 cores, FRR timing).
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Directory of the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// The lab's topology (nodes, links, addresses), read once from
/// `$LAB_TOPOLOGY` or `sample-network/clab/frr-ingest.clab.yml`.
pub fn topology() -> &'static Topology {
    static TOPOLOGY: OnceLock<Topology> = OnceLock::new();
    TOPOLOGY.get_or_init(|| Topology::load_default().unwrap_or_else(|e| panic!("{e}")))
}

/// The first IPv4 address of `node` on `iface` in the topology.
pub fn ipv4(node: &str, iface: &str) -> Ipv4Addr {
    topology()
        .ipv4(node, iface)
        .unwrap_or_else(|| panic!("the topology gives {node} no IPv4 address on {iface}"))
}

/// The first IPv6 address of `node` on `iface` in the topology.
pub fn ipv6(node: &str, iface: &str) -> Ipv6Addr {
    topology()
        .ipv6(node, iface)
        .unwrap_or_else(|| panic!("the topology gives {node} no IPv6 address on {iface}"))
}

/// The lab's DNS server (node dns, dns0).
pub fn dns_addr() -> Ipv4Addr {
    ipv4("dns", "dns0")
}

/// frr-ingestd's address toward the relays (node border, bdr0).
pub fn border_addr() -> Ipv4Addr {
    ipv4("border", "bdr0")
}

/// FRR version a lab runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frr {
    /// The host's FRR (Debian 12: 8.4.4): /usr/bin/vtysh, /usr/lib/frr.
    V8,
    /// FRR 10.x from a Debian 13 root, run through its loader.
    V10 { root: PathBuf },
}

impl Frr {
    /// The version `LAB_FRR` asks for (8 when unset).
    pub fn from_env() -> Frr {
        match std::env::var("LAB_FRR").as_deref() {
            Err(_) | Ok("") | Ok("8") => Frr::V8,
            Ok("10") => Frr::V10 { root: frr10_root() },
            Ok(other) => panic!("LAB_FRR={other}: the lab runs FRR 8 or 10"),
        }
    }

    /// A command running FRR program `path` (/usr/bin/vtysh,
    /// /usr/lib/frr/pimd, ...) of this version.
    pub fn command(&self, path: &str) -> Command {
        match self {
            Frr::V8 => Command::new(path),
            Frr::V10 { root } => {
                let lib = root.join("usr/lib/x86_64-linux-gnu");
                let mut cmd = Command::new(lib.join("ld-linux-x86-64.so.2"));
                cmd.arg("--library-path")
                    .arg(format!("{}:{}", lib.join("frr").display(), lib.display()))
                    .args(["--argv0", path])
                    .arg(root.join(path.trim_start_matches('/')));
                cmd
            }
        }
    }

    /// A vtysh command of this version.
    pub fn vtysh(&self) -> Command {
        self.command("/usr/bin/vtysh")
    }
}

/// The FRR 10 root: `FRR10_ROOT`, default /var/cache/frr-ingest/trixie.
pub fn frr10_root() -> PathBuf {
    std::env::var_os("FRR10_ROOT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/frr-ingest/trixie"))
}

/// Whether a lab test needs the kernel's multicast routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MulticastRouting {
    /// pimd joins or forwards (most lab tests): a kernel without
    /// CONFIG_IP_MROUTE fails the test at once.
    Needed,
    /// Nothing goes through FRR's multicast routing (joinfile mode: the
    /// wanted set comes from a file and the test watches the relays and the
    /// daemon, not FRR's forwarding).
    NotNeeded,
}

/// Root, FRR, `ip netns` and kernel multicast routing (see
/// [`require_lab_prerequisites_for`]).
pub fn require_lab_prerequisites() {
    require_lab_prerequisites_for(MulticastRouting::Needed);
}

/// Root, FRR and `ip netns`, and multicast routing when `mroute` says so.
pub fn require_lab_prerequisites_for(mroute: MulticastRouting) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "lab tests need root (network namespaces, TUN, FRR); run them as root"
    );
    match Frr::from_env() {
        Frr::V8 => assert!(
            Path::new("/usr/lib/frr/pimd").exists(),
            "FRR is not installed (/usr/lib/frr/pimd): run scripts/install-deps"
        ),
        Frr::V10 { root } => assert!(
            root.join(".frr-ingest-root").exists()
                && root.join("usr/lib/frr/pimd").exists()
                && root.join("usr/lib/frr/pim6d").exists(),
            "LAB_FRR=10 but there is no complete FRR 10 root at {} (FRR10_ROOT): run scripts/install-frr10",
            root.display()
        ),
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success());
    assert!(matches!(ok, Ok(true)), "'ip netns' is not available");
    // pimd needs the kernel's multicast routing (MRT_INIT); without it, it
    // forms neighbours but never joins or forwards, and every lab test would
    // fail later with a misleading symptom. LAB_ALLOW_NO_MROUTE=1 lets the
    // tests run anyway to diagnose the rest of the lab on such a kernel (the
    // ones that need a join then fail at it; nothing is skipped).
    if mroute == MulticastRouting::NotNeeded {
        return;
    }
    assert!(
        Path::new("/proc/net/ip_mr_vif").exists()
            || std::env::var_os("LAB_ALLOW_NO_MROUTE").is_some_and(|v| v == "1"),
        "this kernel ({}) has no IPv4 multicast routing (CONFIG_IP_MROUTE is not set): \
         pimd cannot join or forward, so the lab tests cannot run here",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
}

/// `LAB_DATAPLANE` (kernel, userspace or auto; unset: the daemon's
/// default) for every daemon a test starts without choosing one itself:
/// `scripts/test-all` runs the lab suites once per data plane.
fn dataplane_args(extra: &[&str]) -> Vec<String> {
    match std::env::var("LAB_DATAPLANE") {
        Ok(mode) if !mode.is_empty() && !extra.contains(&"--dataplane") => {
            vec!["--dataplane".into(), mode]
        }
        _ => Vec::new(),
    }
}

/// `LAB_TIME_SCALE` (default 1): how much slower than a real machine this
/// lab runs. `scripts/test-all` sets it when the lab runs in an emulated
/// VM (scripts/labvm), where every process start costs 15-25x and CPU work
/// 6-10x; latency limits and waits are multiplied by it and the tests say
/// so when they print their figures.
pub fn time_scale() -> f64 {
    std::env::var("LAB_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 1.0)
        .unwrap_or(1.0)
}

/// A latency limit of the product (e.g. "join seen within 1 s"), stretched
/// by [`time_scale`] for slow lab hosts.
pub fn limit(target: Duration) -> Duration {
    target.mul_f64(time_scale())
}

/// The packet rate of the 31 s end-to-end checks: 1000 pkt/s on a real
/// machine, divided by [`time_scale`] on an emulated one. Under software
/// emulation the relay, the gateway and three kernels' forwarding share one
/// slow vCPU (and the host's cores with a second VM): at 1000 pkt/s a stall
/// of a few hundred ms overflows a queue on the way (CI lost 0.24 % so).
/// The 99.9 % bar stays; the rate is what the host can carry.
pub fn end_to_end_rate() -> u32 {
    (1000.0 / time_scale()).round().max(100.0) as u32
}

/// Calls `f` every `step` until it returns something, for at most
/// `timeout` (times [`time_scale`]).
pub fn wait_until<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let timeout = limit(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(step);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` with stdout and stderr in files under `dir` and waits for the
/// command itself only. A daemon it starts (FRR's `-d` since 9.0 keeps the
/// stdout/stderr it inherited when they are not a terminal) therefore cannot
/// keep us waiting for pipes to close.
fn run_to_files(cmd: &mut Command, dir: &Path) -> Output {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = |what: &str| dir.join(format!(".exec-{}-{n}.{what}", std::process::id()));
    let (out_path, err_path) = (path("out"), path("err"));
    let file = |p: &Path| {
        std::fs::File::create(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()))
    };
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let read = |p: &Path| {
        let bytes = std::fs::read(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        bytes
    };
    Output {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

pub struct Lab {
    pub prefix: String,
    pub run_dir: PathBuf,
    /// The FRR version this lab runs (recorded by `lab up`).
    pub frr: Frr,
    daemons: Vec<Child>,
    /// Command (and arguments) the daemon is started through inside the
    /// border namespace, e.g. `setpriv ...` to drop root; empty: none.
    pub daemon_wrapper: Vec<String>,
    /// The daemon's --log-level (default "info,frr_bridge=debug").
    pub daemon_log_level: String,
}

impl Lab {
    /// Bring up a fresh lab with namespaces `<prefix>-*`. `LAB_TEST_PREFIX`
    /// (if set) is put in front of `prefix`, so that two checkouts can run
    /// the same lab test at once without sharing namespaces.
    pub fn up(prefix: &str) -> Lab {
        Self::up_with(prefix, MulticastRouting::Needed)
    }

    /// [`Lab::up`] for a test that needs no multicast routing (joinfile
    /// mode): it runs on a kernel without CONFIG_IP_MROUTE, where FRR forms
    /// neighbours but cannot join or forward. Everything else is checked
    /// as for [`Lab::up`].
    pub fn up_without_multicast_routing(prefix: &str) -> Lab {
        Self::up_with(prefix, MulticastRouting::NotNeeded)
    }

    fn up_with(prefix: &str, mroute: MulticastRouting) -> Lab {
        require_lab_prerequisites_for(mroute);
        if time_scale() > 1.0 {
            println!(
                "LAB_TIME_SCALE={}: a slow (emulated) lab host; latency limits and waits are \
                 stretched {}x and the figures below are this host's",
                time_scale(),
                time_scale()
            );
        }
        let prefix = format!(
            "{}{prefix}",
            std::env::var("LAB_TEST_PREFIX").unwrap_or_default()
        );
        let prefix = prefix.as_str();
        let run_dir = PathBuf::from(format!("/run/frr-ingest-lab/{prefix}"));
        let mut lab = Lab {
            prefix: prefix.to_string(),
            run_dir,
            frr: Frr::from_env(),
            daemons: Vec::new(),
            daemon_wrapper: Vec::new(),
            daemon_log_level: "info,frr_bridge=debug".to_string(),
        };
        // A previous crashed run may have left it: start clean.
        let _ = lab.lab_cmd(&["down"]);
        let out = lab.lab_cmd(&["up"]);
        assert!(
            out.status.success(),
            "lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The version 'lab up' ran is the one to talk to.
        let recorded = std::fs::read_to_string(lab.run_dir.join("frr-version")).unwrap_or_default();
        lab.frr = match recorded.trim() {
            "10" => Frr::V10 { root: frr10_root() },
            "8" => Frr::V8,
            other => panic!("lab up recorded FRR version {other:?}"),
        };
        lab
    }

    /// Runs `sample-network/lab ARGS` for this lab, with the relays and
    /// tools of the same build as the test (LAB_BIN_DIR).
    pub fn lab_cmd(&self, args: &[&str]) -> Output {
        run(Command::new(repo_dir().join("sample-network/lab"))
            .args(args)
            .env("LAB_PREFIX", &self.prefix)
            .env("LAB_RUN", &self.run_dir)
            .env("LAB_BIN_DIR", bin_dir()))
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.run_dir.join(node)
    }

    /// Run a command in a node's namespace and return its output (waiting
    /// for the command, not for daemons it starts: see [`run_to_files`]).
    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        run_to_files(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(node)])
                .args(args),
            &self.run_dir,
        )
    }

    pub fn exec_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.exec(node, args);
        assert!(
            out.status.success(),
            "{args:?} in {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A vtysh command of the lab's FRR version (add --vty_socket and -c).
    pub fn vtysh_command(&self) -> Command {
        self.frr.vtysh()
    }

    /// One vtysh command on a node's FRR.
    pub fn vtysh(&self, node: &str, cmd: &str) -> String {
        let out = run(self
            .vtysh_command()
            .arg("--vty_socket")
            .arg(self.node_dir(node))
            .args(["-c", cmd]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Several vtysh commands in one session on a node's FRR (for
    /// `configure terminal` followed by configuration lines).
    pub fn vtysh_session(&self, node: &str, cmds: &[&str]) -> std::process::Output {
        let mut command = self.vtysh_command();
        command.arg("--vty_socket").arg(self.node_dir(node));
        for cmd in cmds {
            command.args(["-c", cmd]);
        }
        command.output().expect("run vtysh")
    }

    pub fn vtysh_json(&self, node: &str, cmd: &str) -> Value {
        let t = self.vtysh(node, cmd);
        serde_json::from_str(&t).unwrap_or(Value::Null)
    }

    /// Is (S,G) upstream on `node` joined with iif `iif`?
    pub fn upstream_on(&self, node: &str, s: &str, g: &str, iif: &str) -> bool {
        let v = self.vtysh_json(node, "show ip pim upstream json");
        let e = &v[g][s];
        e["inboundInterface"] == iif && e["state"] == "J"
    }

    /// Stop a node's FRR daemon (`pimd`, `pim6d`, ...) and run it again
    /// with its original command line, as an operator's restart would.
    pub fn restart_frr_daemon(&self, node: &str, daemon: &str) {
        let pidfile = self.node_dir(node).join(format!("{daemon}.pid"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .parse()
            .expect("pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("daemon cmdline");
        // The FRR tmp dirs it holds open (/var/tmp/frr/<daemon>.<pid>).
        let tmp_dirs: std::collections::BTreeSet<PathBuf> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let rest = target.strip_prefix("/var/tmp/frr/").ok()?;
                    let top = rest.components().next()?;
                    Some(Path::new("/var/tmp/frr").join(top))
                })
                .collect();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // SAFETY: signalling the lab's daemon.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let dead = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        assert!(dead.is_some(), "{node}/{daemon} did not stop");
        // FRR 10.3 leaves its /var/tmp/frr/<daemon>.<pid> behind on exit,
        // and 'lab down' finds only the dirs of daemons it started or that
        // still run: the replaced daemon's dir is removed here.
        for dir in &tmp_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec_ok(node, &argv);
    }

    pub fn api_socket(&self) -> PathBuf {
        self.node_dir("border").join("api.sock")
    }

    /// Start frr-ingestd in `border` with the lab's wiring plus `extra` args.
    pub fn start_daemon(&mut self, extra: &[&str]) -> usize {
        let log = std::fs::File::create(
            self.node_dir("border")
                .join(format!("frr-ingestd.{}.log", self.daemons.len())),
        )
        .expect("daemon log");
        let netns = format!("/var/run/netns/{}", self.ns("ingest"));
        let vty = self.node_dir("ingest");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("border")])
            .args(&self.daemon_wrapper)
            .arg(bin("frr-ingestd"))
            .arg("--frr-vty-dir")
            .arg(&vty)
            .args(["--frr-netns", &netns, "--api-socket"])
            .arg(self.api_socket())
            .arg("--log-level")
            .arg(&self.daemon_log_level)
            .args(extra)
            .args(dataplane_args(extra))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn frr-ingestd");
        self.daemons.push(child);
        let sock = self.api_socket();
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            self.ingestctl(&["show", "status", "--json"])
                .status
                .success()
                .then_some(())
        });
        assert!(
            up.is_some(),
            "frr-ingestd did not come up; log:\n{}",
            self.daemon_log()
        );
        assert!(sock.exists());
        self.daemons.len() - 1
    }

    /// The daemon's log files, one per start, in start order.
    pub fn daemon_log_paths(&self) -> Vec<PathBuf> {
        (0..self.daemons.len())
            .map(|i| self.node_dir("border").join(format!("frr-ingestd.{i}.log")))
            .collect()
    }

    /// How many times the daemon was started.
    pub fn daemon_starts(&self) -> usize {
        self.daemons.len()
    }

    pub fn daemon_log(&self) -> String {
        let mut s = String::new();
        for i in 0..self.daemons.len() {
            s.push_str(
                &std::fs::read_to_string(
                    self.node_dir("border").join(format!("frr-ingestd.{i}.log")),
                )
                .unwrap_or_default(),
            );
        }
        s
    }

    /// The pid of a started daemon.
    pub fn daemon_pid(&self, idx: usize) -> u32 {
        self.daemons[idx].id()
    }

    pub fn kill_daemon(&mut self, idx: usize, signal: i32) {
        let child = &mut self.daemons[idx];
        // `ip netns exec` execs the daemon: the child pid is the daemon.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let _ = child.wait();
    }

    pub fn ingestctl(&self, args: &[&str]) -> Output {
        run(Command::new(bin("ingestctl"))
            .arg("--api")
            .arg(format!("unix:{}", self.api_socket().display()))
            .args(args))
    }

    pub fn ingestctl_json(&self, args: &[&str]) -> Value {
        let out = self.ingestctl(args);
        assert!(
            out.status.success(),
            "ingestctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ingestctl JSON")
    }

    /// (source, group) pairs listed by `ingestctl show joins --json`.
    pub fn joins(&self) -> Vec<(String, String)> {
        let out = self.ingestctl(&["show", "joins", "--json"]);
        if !out.status.success() {
            return vec![];
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut joins: Vec<_> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|j| {
                        (
                            j["source"].as_str().unwrap_or("").to_string(),
                            j["group"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        joins.sort();
        joins
    }

    pub fn inject(&self, s: &str, g: &str, count: u32, rate: u32) -> Value {
        self.ingestctl_json(&[
            "inject",
            "--source",
            s,
            "--group",
            g,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--json",
        ])
    }

    /// Routes the daemon installed in the ingest namespace (proto 240).
    pub fn own_routes(&self) -> String {
        self.exec_ok("ingest", &["ip", "-4", "route", "show", "proto", "240"])
    }

    /// Received packets of a node's interface.
    pub fn rx_packets(&self, node: &str, iface: &str) -> u64 {
        let p = format!("/sys/class/net/{iface}/statistics/rx_packets");
        self.exec_ok(node, &["cat", &p]).trim().parse().unwrap_or(0)
    }

    /// Start the receiver in `rcv` for the given channels.
    pub fn mcrx(&self, channels: &[(&str, &str)], extra: &[&str]) -> Mcrx {
        self.mcrx_on("rcv", "rcv0", channels, extra)
    }

    /// Start the receiver in `node` joined on `iface` (rcv2/rcv3 for
    /// population 2 and 3, or `ingest`/`amt0` in joinfile mode).
    pub fn mcrx_on(
        &self,
        node: &str,
        iface: &str,
        channels: &[(&str, &str)],
        extra: &[&str],
    ) -> Mcrx {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(node)])
            .arg(bin("mcrx"))
            .args(["--iface", iface]);
        for (s, g) in channels {
            cmd.args(["--channel", &format!("{s},{g}")]);
        }
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn mcrx");
        Mcrx {
            child: Some(child),
            started: Instant::now(),
        }
    }
}

impl Lab {
    /// Start the sender on the `source` host (src0 on the relays' LAN):
    /// `rate` packets/s per channel, stopping after `extra` (e.g.
    /// `--duration 30`) or at `stop()`. Its summary has the same shape.
    pub fn mcsend(&self, channels: &[(&str, &str)], rate: u32, extra: &[&str]) -> Mcrx {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("source")])
            .arg(bin("mcsend"))
            .args(["--iface", "src0", "--rate", &rate.to_string()]);
        for (s, g) in channels {
            cmd.args(["--channel", &format!("{s},{g}")]);
        }
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Mcrx {
            child: Some(cmd.spawn().expect("spawn mcsend")),
            started: Instant::now(),
        }
    }

    /// The daemon flags that point the policy stage at the lab's DNS and
    /// DORMS servers (the lab CA is the only one trusted).
    pub fn policy_args(&self) -> Vec<String> {
        vec![
            "--dns-server".into(),
            dns_addr().to_string(),
            "--dorms-ca".into(),
            self.node_dir("dorms").join("ca.pem").display().to_string(),
        ]
    }

    /// Start the daemon with `policy_args()` plus `extra`.
    pub fn start_daemon_with_policy(&mut self, extra: &[&str]) -> usize {
        let mut args = self.policy_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_daemon(&refs)
    }

    /// A lab relay's status file (`relay` or `relay2`); Null while absent.
    pub fn relay_status(&self, relay: &str) -> Value {
        std::fs::read_to_string(self.node_dir(relay).join("amt-relay.status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// (source, group) channels a lab relay holds for our gateway
    /// (the border's address, 192.0.2.1), with their packet counts.
    pub fn relay_channels(&self, relay: &str) -> Vec<(String, String, u64)> {
        let v = self.relay_status(relay);
        let ours = format!("{}:", border_addr());
        let mut out = Vec::new();
        for gw in v["gateways"].as_array().into_iter().flatten() {
            if !gw["gateway"].as_str().unwrap_or("").starts_with(&ours) {
                continue;
            }
            for ch in gw["channels"].as_array().into_iter().flatten() {
                out.push((
                    ch["source"].as_str().unwrap_or("").to_string(),
                    ch["group"].as_str().unwrap_or("").to_string(),
                    ch["packets"].as_u64().unwrap_or(0),
                ));
            }
        }
        out.sort();
        out
    }

    /// `ingestctl show flows --json`'s flows, keyed "S,G".
    pub fn flows(&self) -> std::collections::BTreeMap<String, Value> {
        let v = self.ingestctl_json(&["show", "flows", "--json"]);
        v["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    format!(
                        "{},{}",
                        f["source"].as_str().unwrap_or(""),
                        f["group"].as_str().unwrap_or("")
                    ),
                    f.clone(),
                )
            })
            .collect()
    }

    /// `ingestctl show tunnels --json`.
    pub fn tunnels(&self) -> Value {
        self.ingestctl_json(&["show", "tunnels", "--json"])
    }
}

impl Lab {
    /// What explains a failed test: the tail of every log of the lab run
    /// (frr-ingestd, FRR's daemons, relays, named, nginx), `lab status`,
    /// and the daemon's flows and tunnels while it still runs. Printed by
    /// [`Drop`] when the test panicked, before the lab goes down.
    fn print_failure_context(&self) {
        const TAIL_LINES: usize = 60;
        eprintln!(
            "\n===== lab {} at the failure: state and log tails =====",
            self.prefix
        );
        if self.api_socket().exists() {
            for what in ["status", "flows", "tunnels"] {
                let out = self.ingestctl(&["show", what]);
                eprintln!(
                    "--- ingestctl show {what}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let status = self.lab_cmd(&["status"]);
        eprintln!(
            "--- lab status:\n{}",
            String::from_utf8_lossy(&status.stdout)
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|node| node.path().is_dir())
            .flat_map(|node| {
                std::fs::read_dir(node.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            eprintln!(
                "--- {} (last {} of {} lines):",
                log.display(),
                TAIL_LINES.min(lines.len()),
                lines.len()
            );
            for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                eprintln!("{line}");
            }
        }
        eprintln!("===== end of lab {} =====", self.prefix);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_failure_context();
        }
        for i in 0..self.daemons.len() {
            if matches!(self.daemons[i].try_wait(), Ok(None)) {
                self.kill_daemon(i, libc::SIGTERM);
            }
        }
        if std::env::var_os("LAB_KEEP").is_none() {
            let out = self.lab_cmd(&["down"]);
            if !out.status.success() {
                eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

pub struct Mcrx {
    child: Option<Child>,
    pub started: Instant,
}

impl Mcrx {
    /// Stop (SIGTERM) and return the JSON summary.
    pub fn stop(mut self) -> Value {
        let child = self.child.take().expect("child");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        Self::summary(child.wait_with_output().expect("mcrx output"))
    }

    /// Wait for it to stop by itself (duration/count) and return the summary.
    pub fn wait(mut self) -> Value {
        let child = self.child.take().expect("child");
        Self::summary(child.wait_with_output().expect("mcrx output"))
    }

    fn summary(out: Output) -> Value {
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "summary")
            .unwrap_or_else(|| {
                panic!(
                    "mcrx gave no summary; stdout={text} stderr={}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

impl Drop for Mcrx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Lab {
    /// Writes a daemon config file into the border's run directory and
    /// returns its path.
    pub fn write_config(&self, name: &str, toml: &str) -> String {
        let path = self.node_dir("border").join(name);
        std::fs::write(&path, toml).expect("write daemon config");
        path.display().to_string()
    }
}

/// A daemon config whose relays come from the static map alone (DRIAD
/// off): one `[[amt.static_relays]]` per (prefix, relay), and `linger_s`
/// when given.
pub fn static_relays_config(linger_s: Option<u64>, relays: &[(&str, &str)]) -> String {
    let mut toml = String::new();
    if let Some(linger_s) = linger_s {
        toml.push_str(&format!("[amt]\nlinger_s = {linger_s}\n\n"));
    }
    for (prefix, relay) in relays {
        toml.push_str(&format!(
            "[[amt.static_relays]]\nprefix = \"{prefix}\"\nrelay = \"{relay}\"\n\n"
        ));
    }
    toml.push_str("[policy]\ndriad = false\n");
    toml
}

/// The entry of (S,G) in an mcrx/mcsend summary; panics naming the
/// summary when it has none.
pub fn channel_summary<'a>(summary: &'a Value, s: &str, g: &str) -> &'a Value {
    summary["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["source"] == s && c["group"] == g))
        .unwrap_or_else(|| panic!("no channel {s},{g} in {summary}"))
}

/// What a receiver got of one channel, from its summary.
pub struct Delivery {
    /// First packet after the join, in ms (`f64::MAX` when none came).
    pub first_ms: f64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Sequence numbers from the lowest to the highest received.
    pub span: u64,
    /// `unique / span`: the share of the received range delivered.
    pub ratio: f64,
}

impl Delivery {
    pub fn of(summary: &Value, s: &str, g: &str) -> Delivery {
        let ch = channel_summary(summary, s, g);
        let seq = &ch["sequence"];
        let unique = seq["unique"].as_u64().unwrap_or(0);
        let span = seq["highest"].as_u64().unwrap_or(0) + 1 - seq["lowest"].as_u64().unwrap_or(0);
        Delivery {
            first_ms: ch["first_packet_ms"].as_f64().unwrap_or(f64::MAX),
            unique,
            span,
            ratio: unique as f64 / span.max(1) as f64,
        }
    }

    /// The bar of a 31 s receiver of [`end_to_end_rate`] end to end: the
    /// first packet within 1 s of the join, 29 s of packets, 99.9 % of the
    /// range.
    pub fn assert_end_to_end(&self, what: &str, summary: &Value, lab: &Lab) {
        let rate = u64::from(end_to_end_rate());
        assert!(
            self.first_ms < limit(Duration::from_secs(1)).as_secs_f64() * 1000.0,
            "{what}: first packet {} ms after the join (want < 1 s); daemon log:\n{}",
            self.first_ms,
            lab.daemon_log()
        );
        assert!(
            self.unique >= 29 * rate,
            "{what}: only {} packets in 31 s at {rate} pkt/s: {summary}",
            self.unique
        );
        assert!(
            self.ratio >= 0.999,
            "{what}: delivered {:.3} % < 99.9 %",
            self.ratio * 100.0
        );
    }
}

/// Prints what `counts` (an mcrx summary, or one channel of it) says under
/// `what`, and asserts it holds at least `min` packets; returns the count.
pub fn assert_received(lab: &Lab, what: &str, counts: &Value, min: u64) -> u64 {
    let packets = counts["packets"].as_u64().unwrap_or(0);
    println!(
        "{what}: {packets} packets, first after {} ms",
        counts["first_packet_ms"]
    );
    assert!(
        packets >= min,
        "{what}: {packets} packets, want at least {min}; daemon log:\n{}",
        lab.daemon_log()
    );
    packets
}
