//! Harness of the lab tests: a lab per test (own namespace prefix and run
//! directory, torn down on drop), the daemon, the receiver and vtysh.
//!
//! Lab tests need root (network namespaces, TUN, FRR). They do not skip:
//! without root or without FRR they fail with the reason, so CI cannot
//! report success for a test that did not run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

pub fn require_lab_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "lab tests need root (network namespaces, TUN, FRR); run them as root"
    );
    assert!(
        Path::new("/usr/lib/frr/pimd").exists(),
        "FRR is not installed (/usr/lib/frr/pimd): run scripts/install-deps"
    );
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success());
    assert!(matches!(ok, Ok(true)), "'ip netns' is not available");
}

pub fn wait_until<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
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

pub struct Lab {
    pub prefix: String,
    pub run_dir: PathBuf,
    daemons: Vec<Child>,
    /// Command (and arguments) the daemon is started through inside the
    /// border namespace, e.g. `setpriv ...` to drop root; empty: none.
    pub daemon_wrapper: Vec<String>,
}

impl Lab {
    /// Bring up a fresh lab with namespaces `<prefix>-*`. `LAB_TEST_PREFIX`
    /// (if set) is put in front of `prefix`, so that two checkouts can run
    /// the same lab test at once without sharing namespaces.
    pub fn up(prefix: &str) -> Lab {
        require_lab_prerequisites();
        let prefix = format!(
            "{}{prefix}",
            std::env::var("LAB_TEST_PREFIX").unwrap_or_default()
        );
        let prefix = prefix.as_str();
        let run_dir = PathBuf::from(format!("/run/frr-ingest-lab/{prefix}"));
        let lab = Lab {
            prefix: prefix.to_string(),
            run_dir,
            daemons: Vec::new(),
            daemon_wrapper: Vec::new(),
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
        lab
    }

    pub fn lab_cmd(&self, args: &[&str]) -> Output {
        run(Command::new(repo_dir().join("sample-network/lab"))
            .args(args)
            .env("LAB_PREFIX", &self.prefix)
            .env("LAB_RUN", &self.run_dir))
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.run_dir.join(node)
    }

    /// Run a command in a node's namespace and return its output.
    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .args(args))
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

    /// One vtysh command on a node's FRR.
    pub fn vtysh(&self, node: &str, cmd: &str) -> String {
        let out = run(Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.node_dir(node))
            .args(["-c", cmd]));
        String::from_utf8_lossy(&out.stdout).into_owned()
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
            .args(["--log-level", "info,frr_bridge=debug"])
            .args(extra)
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
            "192.0.2.53".into(),
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
    /// (192.0.2.1, the border's address), with their packet counts.
    pub fn relay_channels(&self, relay: &str) -> Vec<(String, String, u64)> {
        let v = self.relay_status(relay);
        let mut out = Vec::new();
        for gw in v["gateways"].as_array().into_iter().flatten() {
            if !gw["gateway"]
                .as_str()
                .unwrap_or("")
                .starts_with("192.0.2.1:")
            {
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

impl Drop for Lab {
    fn drop(&mut self) {
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
