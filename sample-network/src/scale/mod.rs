//! The scale lab (issue 10): the normal lab (`sample-network/lab up`) plus
//! thousands of (S,G) channels from a thousand sources through a thousand
//! relay addresses, and one measured cycle of frr-ingestd over them.
//!
//! [`ScaleLab::extend`] adds to a lab that is up, without changing
//! anything the lab itself made:
//! - node `srelay` (namespace `PREFIX-srelay`, recorded in the run
//!   directory's `nodes`, so `lab down`, `lab status` and `lab leftovers`
//!   know it): `srl0` on the internet bridge (192.0.2.20/24), the relay
//!   addresses 198.19.0.1... (/32s on its `lo`), `srl-lan` on
//!   the sources' LAN (198.18.255.254/16); the sysctls 10,000 native joins
//!   need (`net.ipv4.igmp_max_memberships`, `net.core.optmem_max`, both per
//!   namespace); one `amt-relay --listen-range FIRST-LAST` answering on
//!   every relay address (`lab proc stop|start srelay amt-relay`), status
//!   in `srelay/amt-relay.status.json` (file only: with thousands of
//!   channels it is megabytes), channel events in `srelay/amt-relay.log`;
//! - the sources 198.18.0.1... on `src0` of node `source` and one `mcsend`
//!   (`source/mcsend-scale`) sending every channel at the plan's rate;
//! - in `border`, a route to 198.19.0.0/16 via 192.0.2.20;
//! - with DRIAD, the zone 18.198.in-addr.arpa. (an AMTRELAY record per
//!   source) in the lab's named, which is restarted to load it;
//! - in joinfile mode, the daemon's files in `border/`: `scale.toml`,
//!   the wanted set `scale-joins.txt` (empty) and the full set
//!   `scale-joins.all`, and `frr-ingestd.cmd`, so
//!   `lab proc start border frr-ingestd` starts the daemon by hand; in pimd
//!   mode a route to the sources on `rtr` (toward the ingest) so its pimd
//!   joins them, and receivers (`rcv/mcrx-scale`) make the wanted set.
//!
//! [`ScaleLab::run_cycle`] starts the daemon, writes the wanted set and
//! measures what [`CycleReport`] lists; the targets are issue 10's.

pub mod plan;
pub mod probe;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

pub use plan::{PlanError, RelayMapKind, ScaleParams, ScalePlan};
use probe::{RelayEvents, Rss, SchedTimes};

use crate::topology::Topology;

/// The scale relay's node and its interfaces.
pub const RELAY_NODE: &str = "srelay";
const RELAY_INET_IF: &str = "srl0";
const RELAY_LAN_IF: &str = "srl-lan";
/// The relay addresses are /32s on the node's loopback (no dummy
/// interfaces needed: some kernels lack them).
const RELAY_ADDR_IF: &str = "lo";
/// Its peers' name in the internet and sources' bridges.
const RELAY_BRIDGE_PORT: &str = "p-srelay";
/// The scale relay's address on the internet bridge (unused by the
/// topology: checked at [`ScaleLab::extend`]).
pub const RELAY_INET_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// Option memory of the relay's raw sockets (about 120 bytes per joined
/// group; 4 MiB holds 10,000 groups on one socket with room to spare).
const RELAY_OPTMEM_MAX: usize = 4 << 20;
/// Where the daemon serves /metrics, inside `border`.
pub const METRICS_ADDR: &str = "127.0.0.1:9478";
/// Lab process names.
const RELAY_PROC: &str = "amt-relay";
const SENDER_PROC: &str = "mcsend-scale";
const RECEIVER_PROC: &str = "mcrx-scale";
const DAEMON_PROC: &str = "frr-ingestd";

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{what}: {detail}")]
    Step { what: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn step(what: impl Into<String>, detail: impl ToString) -> ScaleError {
    ScaleError::Step {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ScaleError> {
    std::fs::write(path, text).map_err(|source| ScaleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` atomically (the daemon polls it and must never see half
/// a file).
fn replace_file(path: &Path, text: &str) -> Result<(), ScaleError> {
    let tmp = path.with_extension("tmp");
    write_file(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|source| ScaleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn progress(text: &str) {
    eprintln!("lab-scale: {text}");
}

/// Where the daemon's wanted set comes from in a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// A joinfile the cycle writes (no multicast routing needed).
    Joinfile,
    /// pimd's joins from receivers on node rcv (needs kernel multicast
    /// routing: FRR's pimd cannot join without it).
    Pimd,
}

/// The daemon's settings for a cycle.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonOptions {
    pub join_mode: JoinMode,
    /// `amt.linger_s`: short, so teardown is measured in seconds.
    pub linger_s: u64,
    /// `amt.no_data_timeout_s` (None: the daemon's default).
    pub no_data_timeout_s: Option<u64>,
    /// `--log-level` (the cycle counts the lines at info and above).
    pub log_level: String,
    /// `--dataplane` (auto, kernel, userspace; None: the daemon's default,
    /// auto).
    pub dataplane: Option<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            join_mode: JoinMode::Joinfile,
            linger_s: 2,
            no_data_timeout_s: None,
            log_level: "info".into(),
            dataplane: None,
        }
    }
}

/// How long a cycle waits and measures.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    /// Each CPU window (with data, then without).
    pub steady: Duration,
    /// Longest wait for every channel accepted and forwarding.
    pub converge_timeout: Duration,
    /// Longest wait for relays, tunnels and routes to clear.
    pub teardown_timeout: Duration,
    /// Calls of `show flows --json` and `GET /metrics` timed.
    pub api_samples: usize,
    /// Longest wait, after the data stopped, for the flow states to stay
    /// the same for 5 s before the steady window without data.
    pub settle_timeout: Duration,
}

impl Default for CycleOptions {
    fn default() -> Self {
        Self {
            steady: Duration::from_secs(30),
            converge_timeout: Duration::from_secs(120),
            teardown_timeout: Duration::from_secs(60),
            api_samples: 3,
            settle_timeout: Duration::from_secs(120),
        }
    }
}

/// A lab (`PREFIX-*` namespaces, run directory) and the tools to reach it.
pub struct ScaleLab {
    pub prefix: String,
    pub run_dir: PathBuf,
    /// Directory of the workspace binaries (amt-relay, mcsend, mcrx,
    /// frr-ingestd, ingestctl, lab-topology).
    pub bin_dir: PathBuf,
    /// `sample-network/lab`.
    pub lab_script: PathBuf,
    /// `LAB_TIME_SCALE` (default 1): the lab's own waits (relay status,
    /// daemon API, status file) are stretched by it on a slow (emulated)
    /// host; the cycle's timeouts are the caller's.
    pub time_scale: f64,
    topology: Topology,
}

impl ScaleLab {
    /// The lab `prefix` with run directory `run_dir`, using the binaries
    /// of `bin_dir` and the default topology.
    pub fn new(prefix: &str, run_dir: &Path, bin_dir: &Path) -> Result<Self, ScaleError> {
        let topology = Topology::load_default().map_err(|e| step("reading the topology", e))?;
        Ok(Self {
            prefix: prefix.to_owned(),
            run_dir: run_dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            lab_script: Path::new(env!("CARGO_MANIFEST_DIR")).join("lab"),
            time_scale: std::env::var("LAB_TIME_SCALE")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v >= 1.0)
                .unwrap_or(1.0),
            topology,
        })
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.run_dir.join(node)
    }

    /// A wait of the lab itself, stretched by [`ScaleLab::time_scale`].
    fn lab_wait(&self, d: Duration) -> Duration {
        d.mul_f64(self.time_scale)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn topo_v4(&self, node: &str, iface: &str) -> Result<Ipv4Addr, ScaleError> {
        self.topology
            .ipv4(node, iface)
            .ok_or_else(|| step("topology", format!("no IPv4 address of {node} on {iface}")))
    }

    /// The gateway's address as relays see it (border's bdr0).
    pub fn gateway_ip(&self) -> Result<IpAddr, ScaleError> {
        Ok(IpAddr::V4(self.topo_v4("border", "bdr0")?))
    }

    /// Runs `cmd`, failing with its stderr.
    fn run(&self, what: &str, cmd: &mut Command) -> Result<String, ScaleError> {
        let out: Output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| step(what, format!("cannot run {cmd:?}: {e}")))?;
        if !out.status.success() {
            return Err(step(
                what,
                format!(
                    "{} ({}){}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status,
                    match String::from_utf8_lossy(&out.stdout).trim() {
                        "" => String::new(),
                        s => format!("; stdout: {s}"),
                    }
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sample-network/lab ARGS` for this lab.
    pub fn lab(&self, args: &[&str]) -> Result<String, ScaleError> {
        let what = format!("lab {}", args.join(" "));
        self.run(
            &what,
            Command::new(&self.lab_script)
                .args(args)
                .env("LAB_PREFIX", &self.prefix)
                .env("LAB_RUN", &self.run_dir)
                .env("LAB_BIN_DIR", &self.bin_dir),
        )
    }

    /// `ip ARGS`.
    fn ip(&self, args: &[&str]) -> Result<String, ScaleError> {
        self.run(
            &format!("ip {}", args.join(" ")),
            Command::new("ip").args(args),
        )
    }

    /// `ip -n NS -batch` of `lines`, from a file in the node's directory.
    fn ip_batch(&self, node: &str, name: &str, lines: &str) -> Result<(), ScaleError> {
        let path = self.node_dir(node).join(name);
        write_file(&path, lines)?;
        let path_text = path.display().to_string();
        self.ip(&["-n", &self.ns(node), "-batch", &path_text])?;
        Ok(())
    }

    /// A command run in `node`'s namespace.
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<String, ScaleError> {
        self.run(
            &format!("{node}: {}", args.join(" ")),
            Command::new("ip")
                .args(["netns", "exec", &self.ns(node)])
                .args(args),
        )
    }

    fn ns_exists(&self, node: &str) -> bool {
        Path::new("/var/run/netns").join(self.ns(node)).exists()
    }

    /// Records `argv` as lab process `name` of `node` and starts it
    /// (`lab proc start`: pid, log and command in the node's directory).
    fn proc_start(&self, node: &str, name: &str, argv: &[String]) -> Result<(), ScaleError> {
        let mut cmd = Vec::new();
        for a in argv {
            cmd.extend_from_slice(a.as_bytes());
            cmd.push(0);
        }
        let path = self.node_dir(node).join(format!("{name}.cmd"));
        std::fs::write(&path, cmd).map_err(|source| ScaleError::Io { path, source })?;
        // A fresh log per start: counts (log lines, events) are per run.
        let log = self.node_dir(node).join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        self.lab(&["proc", "start", node, name])?;
        Ok(())
    }

    fn proc_stop(&self, node: &str, name: &str) -> Result<(), ScaleError> {
        self.lab(&["proc", "stop", node, name])?;
        Ok(())
    }

    /// The pid of lab process `name` of `node` (from its pid file).
    pub fn proc_pid(&self, node: &str, name: &str) -> Result<u32, ScaleError> {
        let path = self.node_dir(node).join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path).map_err(|source| ScaleError::Io {
            path: path.clone(),
            source,
        })?;
        text.trim()
            .parse()
            .map_err(|_| step(format!("{}", path.display()), "not a pid"))
    }

    /// `lab up` (the normal lab).
    pub fn up(&self) -> Result<(), ScaleError> {
        // A crashed earlier run may have left it.
        let _ = self.lab(&["down"]);
        self.lab(&["up"])?;
        Ok(())
    }

    pub fn down(&self) -> Result<(), ScaleError> {
        self.lab(&["down"])?;
        Ok(())
    }

    /// Adds the scale parts of `plan` to the lab (see the module
    /// documentation) and writes the daemon's files for `daemon`.
    pub fn extend(&self, plan: &ScalePlan, daemon: &DaemonOptions) -> Result<(), ScaleError> {
        let nodes_file = self.run_dir.join("nodes");
        if !nodes_file.exists() || !self.ns_exists("border") {
            return Err(step(
                "scale lab",
                format!(
                    "lab {} is not up (no {} or namespace {}): run 'lab up' first",
                    self.prefix,
                    nodes_file.display(),
                    self.ns("border")
                ),
            ));
        }
        if self.ns_exists(RELAY_NODE) {
            return Err(step(
                "scale lab",
                format!("already extended: namespace {} exists", self.ns(RELAY_NODE)),
            ));
        }
        self.check_addresses_unused()?;
        let params = &plan.params;
        progress(&format!(
            "adding {} relay addresses ({}), {} sources, {} channels at {} pkt/s each",
            plan.relays.len(),
            plan.relay_range(),
            plan.sources.len(),
            plan.channels.len(),
            params.rate_pps
        ));
        self.add_relay_node(plan)?;
        self.ip_batch(
            "source",
            "scale-sources.batch",
            &plan.source_address_batch("src0"),
        )?;
        let relay_gw = RELAY_INET_ADDR.to_string();
        let relay_net = format!("{}/{}", plan::RELAY_NET, plan::RELAY_PREFIX_LEN);
        self.ip(&[
            "-n",
            &self.ns("border"),
            "route",
            "add",
            &relay_net,
            "via",
            &relay_gw,
        ])?;
        if params.relay_map == RelayMapKind::Driad {
            self.load_zone(plan)?;
        }
        self.start_relay(plan)?;
        let mut send = lab_nice(params.lab_nice);
        send.extend([
            self.bin("mcsend").display().to_string(),
            "--iface=src0".into(),
            format!("--rate={}", params.rate_pps),
            "--size=64".into(),
        ]);
        send.extend(plan.channel_args());
        self.proc_start("source", SENDER_PROC, &send)?;
        if daemon.join_mode == JoinMode::Pimd {
            // rtr's pimd joins toward the source's RPF neighbour: the
            // ingest router, as for the lab's own sources.
            let ingest = self.topo_v4("ingest", "ing-dn")?;
            let route = format!(
                "ip route {}/{} {ingest}",
                plan::SOURCE_NET,
                plan::SOURCE_PREFIX_LEN
            );
            self.lab(&["vtysh", "rtr", "-c", "configure terminal", "-c", &route])?;
        }
        self.write_daemon_files(plan, daemon)?;
        Ok(())
    }

    /// The scale addresses must not be the lab's own.
    fn check_addresses_unused(&self) -> Result<(), ScaleError> {
        for node in &self.topology.nodes {
            for a in &node.addresses {
                let clash = a.addr == IpAddr::V4(RELAY_INET_ADDR)
                    || in_net(a.addr, plan::SOURCE_NET, plan::SOURCE_PREFIX_LEN)
                    || in_net(a.addr, plan::RELAY_NET, plan::RELAY_PREFIX_LEN);
                if clash {
                    return Err(step(
                        "scale lab",
                        format!(
                            "the topology gives {} the address {}, which the scale lab uses",
                            node.name, a.addr
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Node `srelay`: namespace, links to both bridges, addresses, sysctls.
    fn add_relay_node(&self, plan: &ScalePlan) -> Result<(), ScaleError> {
        let ns = self.ns(RELAY_NODE);
        self.ip(&["netns", "add", &ns])?;
        // From here on 'lab down' removes it.
        let nodes_file = self.run_dir.join("nodes");
        let mut nodes = std::fs::read_to_string(&nodes_file).unwrap_or_default();
        nodes.push_str(RELAY_NODE);
        nodes.push('\n');
        write_file(&nodes_file, &nodes)?;
        let dir = self.node_dir(RELAY_NODE);
        std::fs::create_dir_all(&dir).map_err(|source| ScaleError::Io { path: dir, source })?;
        self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let groups = plan.params.relay_groups_per_socket.to_string();
        for (key, value) in [
            // All native joins on as few raw sockets as the kernel allows.
            ("net.ipv4.igmp_max_memberships", groups.as_str()),
            ("net.core.optmem_max", &RELAY_OPTMEM_MAX.to_string()),
            // Replies leave from the relay address the gateway used.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if key == "net.core.optmem_max"
                && self.exec(RELAY_NODE, &["test", "-e", &path]).is_err()
            {
                // Per namespace only since Linux 6.9 (Debian 12's 6.1 has it
                // in the initial namespace alone): the relay then fills
                // more raw sockets, each up to the host's optmem_max.
                progress(&format!(
                    "{key} is not per namespace on this kernel: the relay spreads its joins over more sockets"
                ));
                continue;
            }
            self.exec(
                RELAY_NODE,
                &["sysctl", "-q", "-w", &format!("{key}={value}")],
            )?;
        }
        for (peer_node, iface) in [("inet", RELAY_INET_IF), ("source", RELAY_LAN_IF)] {
            let peer_ns = self.ns(peer_node);
            self.ip(&[
                "link",
                "add",
                iface,
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                RELAY_BRIDGE_PORT,
                "netns",
                &peer_ns,
            ])?;
            self.ip(&[
                "-n",
                &peer_ns,
                "link",
                "set",
                RELAY_BRIDGE_PORT,
                "master",
                "br0",
            ])?;
            self.ip(&["-n", &peer_ns, "link", "set", RELAY_BRIDGE_PORT, "up"])?;
            self.ip(&["-n", &ns, "link", "set", iface, "up"])?;
        }
        let inet_addr = format!("{RELAY_INET_ADDR}/24");
        self.ip(&[
            "-n",
            &ns,
            "address",
            "add",
            &inet_addr,
            "dev",
            RELAY_INET_IF,
        ])?;
        let lan_addr = format!("{}/{}", plan::RELAY_LAN_ADDR, plan::SOURCE_PREFIX_LEN);
        self.ip(&["-n", &ns, "address", "add", &lan_addr, "dev", RELAY_LAN_IF])?;
        self.ip_batch(
            RELAY_NODE,
            "scale-relays.batch",
            &plan.relay_address_batch(RELAY_ADDR_IF),
        )?;
        Ok(())
    }

    /// The sources' reverse zone into the lab's named (restarted).
    fn load_zone(&self, plan: &ScalePlan) -> Result<(), ScaleError> {
        let dir = self.node_dir("dns");
        let zone_file = dir.join(format!("{}zone", plan::SOURCE_REVERSE_ZONE));
        write_file(&zone_file, &plan.reverse_zone())?;
        let conf = dir.join("named.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|source| ScaleError::Io {
            path: conf.clone(),
            source,
        })?;
        text.push_str(&format!(
            "// The scale lab's sources (lab-scale).\nzone \"{}\" {{ type primary; file \"{}\"; }};\n",
            plan::SOURCE_REVERSE_ZONE,
            zone_file.display()
        ));
        write_file(&conf, &text)?;
        let conf_text = conf.display().to_string();
        self.run(
            "named-checkconf",
            Command::new("named-checkconf").args(["-z", &conf_text]),
        )?;
        self.lab(&["proc", "restart", "dns", "named"])?;
        Ok(())
    }

    /// `amt-relay` on every relay address; waits until its status lists
    /// them all.
    fn start_relay(&self, plan: &ScalePlan) -> Result<(), ScaleError> {
        let dir = self.node_dir(RELAY_NODE);
        let status = dir.join("amt-relay.status.json");
        let mut argv = lab_nice(plan.params.lab_nice);
        argv.extend([
            self.bin("amt-relay").display().to_string(),
            format!("--listen-range={}", plan.relay_range()),
            format!("--lan-interface={RELAY_LAN_IF}"),
            format!("--qqi={}", plan.params.relay_qqi_s),
            format!("--status-file={}", status.display()),
            "--status-interval=1".into(),
            "--status-file-only".into(),
        ]);
        self.proc_start(RELAY_NODE, RELAY_PROC, &argv)?;
        let gateway = self.gateway_ip()?;
        let start = Instant::now();
        loop {
            if probe::read_status(&status, gateway)
                .is_some_and(|s| s.listeners == plan.relays.len())
            {
                return Ok(());
            }
            if start.elapsed() > self.lab_wait(Duration::from_secs(30)) {
                return Err(step(
                    "scale relay",
                    format!(
                        "no status with {} listeners in {} after {:?} (see {})",
                        plan.relays.len(),
                        status.display(),
                        self.lab_wait(Duration::from_secs(30)),
                        dir.join("amt-relay.log").display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The wanted set's file, the full set, the daemon's config and its
    /// recorded command (`lab proc start border frr-ingestd`).
    pub fn joinfile_path(&self) -> PathBuf {
        self.node_dir("border").join("scale-joins.txt")
    }

    pub fn api_socket(&self) -> PathBuf {
        self.node_dir("border").join("api.sock")
    }

    fn write_daemon_files(&self, plan: &ScalePlan, d: &DaemonOptions) -> Result<(), ScaleError> {
        let border = self.node_dir("border");
        let config = border.join("scale.toml");
        let mut toml = format!(
            "# frr-ingestd for the scale lab (written by lab-scale).\n\
             [frr]\nvty_dir = \"{vty}\"\nnetns = \"/var/run/netns/{ns}\"\n\
             command_timeout_ms = {vty_timeout_ms}\n\n\
             [api]\nsocket = \"{socket}\"\nmetrics = \"{METRICS_ADDR}\"\n\n\
             [ingest]\njoin_source = \"{join}\"\n\n\
             [policy]\ndns_servers = [\"{dns}\"]\ndriad = {driad}\n\n\
             [amt]\nlinger_s = {linger}\n",
            vty = self.node_dir("ingest").display(),
            ns = self.ns("ingest"),
            // pimd answers `show ip pim join json` for thousands of joins
            // slowly on an emulated host; a vty timeout there looks like a
            // pimd restart to the daemon (it keeps the join set for the
            // restart grace, 75 s), so the default 2 s is stretched.
            vty_timeout_ms = self
                .lab_wait(Duration::from_secs(2))
                .as_millis()
                .min(60_000),
            socket = self.api_socket().display(),
            join = match d.join_mode {
                JoinMode::Joinfile => format!("file:{}", self.joinfile_path().display()),
                JoinMode::Pimd => "pimd".into(),
            },
            dns = self.topo_v4("dns", "dns0")?,
            driad = plan.params.relay_map == RelayMapKind::Driad,
            linger = d.linger_s,
        );
        if let Some(t) = d.no_data_timeout_s {
            toml.push_str(&format!("no_data_timeout_s = {t}\n"));
        }
        if plan.params.relay_map == RelayMapKind::Static {
            toml.push('\n');
            toml.push_str(&plan.static_relays_toml());
        }
        write_file(&config, &toml)?;
        write_file(&self.joinfile_path(), "")?;
        write_file(&border.join("scale-joins.all"), &plan.joinfile())?;
        let mut argv = vec![
            self.bin("frr-ingestd").display().to_string(),
            format!("--config={}", config.display()),
            format!("--log-level={}", d.log_level),
            "--log-json".into(),
        ];
        if let Some(mode) = &d.dataplane {
            argv.push(format!("--dataplane={mode}"));
        }
        let mut cmd = Vec::new();
        for a in &argv {
            cmd.extend_from_slice(a.as_bytes());
            cmd.push(0);
        }
        let path = border.join(format!("{DAEMON_PROC}.cmd"));
        std::fs::write(&path, cmd).map_err(|source| ScaleError::Io { path, source })
    }

    /// `ingestctl ARGS` against the daemon; output and wall time.
    pub fn ingestctl(&self, args: &[&str]) -> Result<(String, Duration), ScaleError> {
        let start = Instant::now();
        let out = self.run(
            &format!("ingestctl {}", args.join(" ")),
            Command::new(self.bin("ingestctl"))
                .arg(format!("--api=unix:{}", self.api_socket().display()))
                .args(args),
        )?;
        Ok((out, start.elapsed()))
    }

    fn metrics(&self) -> Result<(String, Duration), ScaleError> {
        let addr: SocketAddr = METRICS_ADDR
            .parse()
            .map_err(|e| step("metrics address", e))?;
        let (body, t) = probe::http_get(&self.ns("border"), addr, "/metrics")
            .map_err(|e| step("GET /metrics", e))?;
        Ok((String::from_utf8_lossy(&body).into_owned(), t))
    }

    /// Routes the daemon installed in the ingest namespace (proto 240).
    fn daemon_routes(&self) -> Result<usize, ScaleError> {
        let ns = self.ns("ingest");
        let out = self.ip(&["-n", &ns, "-4", "route", "show", "proto", "240"])?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// Writes or withdraws the wanted set.
    fn set_wanted(&self, plan: &ScalePlan, mode: JoinMode, all: bool) -> Result<(), ScaleError> {
        match (mode, all) {
            (JoinMode::Joinfile, true) => replace_file(&self.joinfile_path(), &plan.joinfile()),
            (JoinMode::Joinfile, false) => replace_file(&self.joinfile_path(), ""),
            (JoinMode::Pimd, true) => {
                let mut argv = vec![
                    self.bin("mcrx").display().to_string(),
                    "--iface=rcv0".into(),
                ];
                argv.extend(plan.channel_args());
                self.proc_start("rcv", RECEIVER_PROC, &argv)
            }
            (JoinMode::Pimd, false) => self.proc_stop("rcv", RECEIVER_PROC),
        }
    }

    /// One cycle: start the daemon, write the wanted set, measure
    /// acceptance and forwarding, the API, CPU with and without data,
    /// empty the set and measure the teardown, stop the daemon. The lab
    /// must have been extended with `plan` and `daemon`.
    pub fn run_cycle(
        &self,
        plan: &ScalePlan,
        daemon: &DaemonOptions,
        opts: &CycleOptions,
    ) -> Result<CycleReport, ScaleError> {
        let n = plan.channels.len();
        let gateway = self.gateway_ip()?;
        let relay_dir = self.node_dir(RELAY_NODE);
        let status_path = relay_dir.join("amt-relay.status.json");
        let expected: Vec<_> = plan
            .channels
            .iter()
            .map(|c| {
                (
                    c.channel,
                    SocketAddr::new(IpAddr::V4(c.relay), ingest_types::AMT_PORT),
                )
            })
            .collect();
        let mut events = RelayEvents::new(
            &relay_dir.join(format!("{RELAY_PROC}.log")),
            gateway,
            expected.iter().copied(),
        );
        events.skip_to_end().map_err(|e| step("relay log", e))?;
        let mut report = CycleReport::new(plan, daemon, opts);
        report.load_average.at_start = probe::load_average();
        let relay_pid = self.proc_pid(RELAY_NODE, RELAY_PROC)?;
        let sender_pid = self.proc_pid("source", SENDER_PROC)?;

        // The daemon, with nothing wanted yet.
        if daemon.join_mode == JoinMode::Joinfile {
            replace_file(&self.joinfile_path(), "")?;
        }
        let log = self.node_dir("border").join(format!("{DAEMON_PROC}.log"));
        let _ = std::fs::remove_file(&log);
        self.lab(&["proc", "start", "border", DAEMON_PROC])?;
        let pid = self.proc_pid("border", DAEMON_PROC)?;
        let start = Instant::now();
        while self.ingestctl(&["show", "status", "--json"]).is_err() {
            if start.elapsed() > self.lab_wait(Duration::from_secs(30)) {
                return Err(step(
                    "frr-ingestd",
                    format!(
                        "its API did not answer within {:?} (see {})",
                        self.lab_wait(Duration::from_secs(30)),
                        log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        report.rss_mb.at_start = rss_mb(pid)?.now;
        progress(&format!(
            "frr-ingestd pid {pid} up; writing the wanted set ({n} channels)"
        ));

        // The wanted set: until every channel is held by its relay, the
        // relay has forwarded data on each, and every flow is forwarding at
        // the daemon. /metrics and the relay's status are read once a
        // second (a /metrics of 10,000 flows is not free for the daemon).
        let phase = PhaseClock::start(pid, relay_pid, sender_pid);
        let t0 = Instant::now();
        let t0_ms = probe::unix_ms();
        self.set_wanted(plan, daemon.join_mode, true)?;
        let mut next_poll = Instant::now();
        let mut last_progress = Instant::now();
        let fw = &mut report.forwarding;
        loop {
            events.poll().map_err(|e| step("relay log", e))?;
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + Duration::from_secs(1);
                if fw.seconds.is_none()
                    && let Ok((text, _)) = self.metrics()
                {
                    fw.by_state = probe::flows_by_state(&text);
                    let forwarding = fw.by_state.get("forwarding").copied().unwrap_or(0);
                    fw.most_forwarding_seen = fw.most_forwarding_seen.max(forwarding);
                    if forwarding as usize == n {
                        fw.seconds = Some(t0.elapsed().as_secs_f64());
                    }
                }
                if fw.relay_sent_all_s.is_none()
                    && let Some(s) = probe::read_status(&status_path, gateway)
                    && s.unix_ms >= t0_ms
                {
                    let with_packets = expected
                        .iter()
                        .filter(|(sg, r)| s.channels.get(&(*r, *sg)).is_some_and(|p| *p > 0))
                        .count();
                    fw.relay_channels_with_packets = with_packets;
                    if with_packets == n {
                        fw.relay_sent_all_s = Some((s.unix_ms - t0_ms) as f64 / 1000.0);
                    }
                }
            }
            let done = events.all_held_at_ms.is_some()
                && fw.seconds.is_some()
                && fw.relay_sent_all_s.is_some();
            if done {
                break;
            }
            if t0.elapsed() > opts.converge_timeout {
                progress("converge timeout");
                break;
            }
            if last_progress.elapsed() > Duration::from_secs(5) {
                last_progress = Instant::now();
                progress(&format!(
                    "{:.0} s: relays hold {}/{n}, sent data on {}; flows {:?}",
                    t0.elapsed().as_secs_f64(),
                    events.held_expected(),
                    fw.relay_channels_with_packets,
                    fw.by_state
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        report.phases.converge = phase.stop();
        report.accepted.held = events.held_expected();
        report.accepted.wrong_relay_adds = events.wrong_relay_adds;
        report.accepted.seconds = events
            .all_held_at_ms
            .map(|ms| ms.saturating_sub(t0_ms) as f64 / 1000.0);
        progress(&format!(
            "accepted by relays after {:?} s, data sent on all after {:?} s, all forwarding after {:?} s",
            report.accepted.seconds, report.forwarding.relay_sent_all_s, report.forwarding.seconds
        ));

        // What the relay's status says: every channel at its relay.
        let after = probe::unix_ms() + 1000;
        if let Some(s) = probe::read_status_after(
            &status_path,
            gateway,
            after,
            self.lab_wait(Duration::from_secs(10)),
        ) {
            report.accepted.status_lists = expected
                .iter()
                .filter(|(sg, relay)| s.channels.contains_key(&(*relay, *sg)))
                .count();
            report.relay.native_sockets = s.native_sockets;
        }

        // The API with every flow there: wall time, and the daemon's CPU
        // time over the call (contention on a shared machine inflates the
        // first, not the second).
        let mut flows_calls = Vec::new();
        let mut metrics_calls = Vec::new();
        for _ in 0..opts.api_samples.max(1) {
            let c0 = probe::cpu_ns(pid).unwrap_or(0);
            let (out, t) = self.ingestctl(&["show", "flows", "--json"])?;
            let c1 = probe::cpu_ns(pid).unwrap_or(0);
            flows_calls.push((t, Duration::from_nanos(c1.saturating_sub(c0))));
            report.api.show_flows_json_bytes = out.len();
            if let Ok(v) = serde_json::from_str::<Value>(&out) {
                report.forwarding.flows_listed = v["flows"].as_array().map_or(0, Vec::len);
                report.forwarding.flows_at_wrong_relay = flows_at_wrong_relay(&v, plan);
            }
            let (text, t) = self.metrics()?;
            let c2 = probe::cpu_ns(pid).unwrap_or(0);
            metrics_calls.push((t, Duration::from_nanos(c2.saturating_sub(c1))));
            report.api.metrics_bytes = text.len();
        }
        report.api.show_flows_json = CallTimings::of(&flows_calls);
        report.api.metrics = CallTimings::of(&metrics_calls);

        // Steady, with data, then without.
        progress(&format!("CPU with data for {:?}", opts.steady));
        let phase = PhaseClock::start(pid, relay_pid, sender_pid);
        report.cpu_pct.with_data = cpu_over(pid, opts.steady)?;
        report.phases.steady_with_data = phase.stop();
        if let Ok((text, _)) = self.metrics() {
            report.cpu_pct.flows_by_state_with_data = probe::flows_by_state(&text);
        }
        self.proc_stop("source", SENDER_PROC)?;
        report.sender = sender_summary(&self.node_dir("source").join(format!("{SENDER_PROC}.log")));
        // The daemon first digests the data stopping (an edge per channel);
        // the steady window starts once the flow states stop changing.
        progress("data stopped; waiting until the flow states settle");
        let settle = Instant::now();
        let (mut last, mut stable) = (BTreeMap::new(), 0);
        while settle.elapsed() < opts.settle_timeout {
            std::thread::sleep(Duration::from_secs(1));
            let Ok((text, _)) = self.metrics() else {
                continue;
            };
            let states = probe::flows_by_state(&text);
            if states == last {
                stable += 1;
                if stable >= 5 {
                    report.cpu_pct.no_data_settled_after_s = Some(settle.elapsed().as_secs_f64());
                    break;
                }
            } else {
                (last, stable) = (states, 0);
            }
        }
        progress(&format!("CPU without data for {:?}", opts.steady));
        let phase = PhaseClock::start(pid, relay_pid, sender_pid);
        report.cpu_pct.no_data = cpu_over(pid, opts.steady)?;
        report.phases.steady_no_data = phase.stop();
        if let Ok((text, _)) = self.metrics() {
            report.cpu_pct.flows_by_state_after_no_data = probe::flows_by_state(&text);
        }
        events.poll().map_err(|e| step("relay log", e))?;
        report.cpu_pct.relays_hold_after_no_data = events.held_expected();
        if let Some(s) = probe::read_status(&status_path, gateway) {
            report.relay.listen_rx_drops = s.listen_rx_drops;
            report.relay.native_rx_drops = s.native_rx_drops;
            report.relay.native_packets = s.native_packets;
            report.relay.forwarded = s.forwarded;
            report.relay.send_errors = s.send_errors;
            report.relay.join_errors = s.join_errors;
        }
        report.gateway_udp_drops = probe::udp_drops(pid).ok();

        // Emptied: until relays, tunnels and routes are clear.
        progress("emptying the wanted set");
        events.reset_marks();
        let phase = PhaseClock::start(pid, relay_pid, sender_pid);
        let t1 = Instant::now();
        let t1_ms = probe::unix_ms();
        let held_before = events.held();
        self.set_wanted(plan, daemon.join_mode, false)?;
        let td = &mut report.teardown;
        loop {
            events.poll().map_err(|e| step("relay log", e))?;
            if td.relays_empty_s.is_none() {
                if held_before == 0 {
                    td.relays_empty_s = Some(0.0);
                } else if let Some(ms) = events.none_held_at_ms {
                    td.relays_empty_s = Some(ms.saturating_sub(t1_ms) as f64 / 1000.0);
                }
            }
            if td.tunnels_closed_s.is_none() || td.flows_gone_s.is_none() {
                let (out, _) = self.ingestctl(&["show", "status", "--json"])?;
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                if td.tunnels_closed_s.is_none() && v["tunnels"].as_u64() == Some(0) {
                    td.tunnels_closed_s = Some(t1.elapsed().as_secs_f64());
                }
                if td.flows_gone_s.is_none() && v["joins"].as_u64() == Some(0) {
                    td.flows_gone_s = Some(t1.elapsed().as_secs_f64());
                }
            }
            if td.routes_gone_s.is_none() && self.daemon_routes()? == 0 {
                td.routes_gone_s = Some(t1.elapsed().as_secs_f64());
            }
            let done = td.relays_empty_s.is_some()
                && td.tunnels_closed_s.is_some()
                && td.routes_gone_s.is_some()
                && td.flows_gone_s.is_some();
            if done || t1.elapsed() > opts.teardown_timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        report.phases.teardown = phase.stop();
        let td = &mut report.teardown;
        td.relays_hold_after = events.held();
        td.routes_after = self.daemon_routes()?;
        td.tunnels_after =
            serde_json::from_str::<Value>(&self.ingestctl(&["show", "tunnels", "--json"])?.0)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len));
        if let Some(s) = probe::read_status_after(
            &status_path,
            gateway,
            probe::unix_ms() + 1000,
            self.lab_wait(Duration::from_secs(10)),
        ) {
            td.relay_status_channels_after = Some(s.channels.len());
            td.relay_status_subscriptions_after = Some(s.subscriptions);
        }
        std::thread::sleep(Duration::from_secs(1));
        let r = rss_mb(pid)?;
        report.rss_mb.after_emptying = r.now;
        report.rss_mb.peak = r.peak;

        progress("stopping frr-ingestd");
        self.proc_stop("border", DAEMON_PROC)?;
        let (levels, other) = probe::log_levels(&log).map_err(|e| step("daemon log", e))?;
        report.log_lines.info_and_above = ["INFO", "WARN", "ERROR"]
            .iter()
            .map(|l| levels.get(*l).copied().unwrap_or(0))
            .sum();
        report.log_lines.by_level = levels;
        report.log_lines.not_json = other;
        report.load_average.at_end = probe::load_average();
        report.evaluate();
        Ok(report)
    }
}

/// Scheduler time of the daemon, the relay and the sender over a phase.
struct PhaseClock {
    pids: [u32; 3],
    at: [SchedTimes; 3],
    started: Instant,
}

impl PhaseClock {
    fn start(daemon: u32, relay: u32, sender: u32) -> Self {
        let pids = [daemon, relay, sender];
        Self {
            at: pids.map(|p| probe::sched_times(p).unwrap_or_default()),
            pids,
            started: Instant::now(),
        }
    }

    fn stop(&self) -> PhaseTimes {
        let [d, r, s] = [0, 1, 2].map(|i| {
            // A process that exited (the sender, stopped in the phase) counts
            // up to its last reading: nothing.
            let now = probe::sched_times(self.pids[i]).unwrap_or(self.at[i]);
            let t = now.since(self.at[i]);
            ProcTimes {
                cpu_s: t.cpu_ns as f64 / 1e9,
                waiting_for_cpu_s: t.wait_ns as f64 / 1e9,
            }
        });
        PhaseTimes {
            seconds: self.started.elapsed().as_secs_f64(),
            daemon: d,
            relay: r,
            sender: s,
        }
    }
}

/// `nice -n N` in front of a lab process's command (none for 0): the
/// relay and the sender stand for other machines, which the daemon does
/// not share its CPU with; on a busy machine a starved sender would make
/// the channels look silent.
fn lab_nice(nice: i32) -> Vec<String> {
    if nice == 0 {
        Vec::new()
    } else {
        vec!["nice".into(), "-n".into(), nice.to_string()]
    }
}

fn in_net(addr: IpAddr, net: Ipv4Addr, len: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(net) & mask
        }
        IpAddr::V6(_) => false,
    }
}

fn cpu_over(pid: u32, window: Duration) -> Result<f64, ScaleError> {
    probe::cpu_percent_over(pid, window).map_err(|e| step("daemon CPU (schedstat)", e))
}

struct RssMb {
    now: f64,
    peak: f64,
}

fn rss_mb(pid: u32) -> Result<RssMb, ScaleError> {
    let Rss { now_mib, peak_mib } = probe::rss(pid).map_err(|e| step("daemon RSS", e))?;
    // MB = 10^6 bytes, as the target is stated.
    let mb = |mib: f64| mib * 1_048_576.0 / 1e6;
    Ok(RssMb {
        now: mb(now_mib),
        peak: mb(peak_mib),
    })
}

/// Flows whose relay is not the plan's (`relay` as "ADDR" or "ADDR:PORT").
fn flows_at_wrong_relay(flows: &Value, plan: &ScalePlan) -> usize {
    let expected: std::collections::HashMap<(String, String), Ipv4Addr> = plan
        .channels
        .iter()
        .map(|c| {
            (
                (c.channel.source.to_string(), c.channel.group.to_string()),
                c.relay,
            )
        })
        .collect();
    flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            let key = (
                f["source"].as_str().unwrap_or("").to_owned(),
                f["group"].as_str().unwrap_or("").to_owned(),
            );
            let relay = f["relay"].as_str().unwrap_or("");
            let relay_ip = relay
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| relay.parse::<IpAddr>());
            expected
                .get(&key)
                .is_none_or(|want| relay_ip.ok() != Some(IpAddr::V4(*want)))
        })
        .count()
}

/// mcsend's JSON summary (the last line of its log after SIGTERM).
fn sender_summary(log: &Path) -> SenderSummary {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let v = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or(Value::Null);
    SenderSummary {
        packets: v["packets"].as_u64(),
        send_errors: v["send_errors"].as_u64(),
        achieved_pps: v["achieved_pps"].as_f64(),
    }
}

/// Timings of a few calls: wall time (min, median, max) and the
/// daemon's CPU time over the call (median).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallTimings {
    pub samples: usize,
    pub min_s: f64,
    pub median_s: f64,
    pub max_s: f64,
    pub daemon_cpu_median_s: f64,
}

impl CallTimings {
    fn of(calls: &[(Duration, Duration)]) -> Self {
        let sorted = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v
        };
        let wall = sorted(calls.iter().map(|c| c.0.as_secs_f64()).collect());
        let cpu = sorted(calls.iter().map(|c| c.1.as_secs_f64()).collect());
        if wall.is_empty() {
            return Self::default();
        }
        Self {
            samples: wall.len(),
            min_s: wall[0],
            median_s: wall[wall.len() / 2],
            max_s: wall[wall.len() - 1],
            daemon_cpu_median_s: cpu[cpu.len() / 2],
        }
    }
}

/// CPU time and time runnable but waiting for a CPU, over a phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcTimes {
    pub cpu_s: f64,
    pub waiting_for_cpu_s: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseTimes {
    pub seconds: f64,
    pub daemon: ProcTimes,
    pub relay: ProcTimes,
    pub sender: ProcTimes,
}

/// Where the time went in each phase (schedstat of the three processes):
/// much waiting for a CPU means the machine was busy, not the process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub converge: PhaseTimes,
    pub steady_with_data: PhaseTimes,
    pub steady_no_data: PhaseTimes,
    pub teardown: PhaseTimes,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LoadAverage {
    pub at_start: Option<f64>,
    pub at_end: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Accepted {
    /// Every channel held by the relay the plan gives it.
    pub all: bool,
    /// Channels held at their relay when the wait ended.
    pub held: usize,
    /// Channels some relay address other than theirs accepted.
    pub wrong_relay_adds: u64,
    /// From writing the wanted set to the relay's event that completed it.
    pub seconds: Option<f64>,
    /// Channels the relay's status JSON lists at their relay afterwards.
    pub status_lists: usize,
}

/// What "data flowing" means in the report (also in its JSON).
pub const FORWARDING_MEASURED_AT: &str = "at the daemon: a flow counts once its state is \
    'forwarding' in GET /metrics, i.e. the gateway decapsulated data of that (S,G) from its relay \
    within the last few seconds; relay_sent_all_s is the same at the relay (its status counts \
    packets forwarded to the gateway). In joinfile mode nothing passes through FRR's multicast \
    forwarding (a kernel without multicast routing can run it); in pimd mode the receivers' \
    joins make the wanted set, but this figure is still the daemon's";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Forwarding {
    /// Where "data flowing" is measured ([`FORWARDING_MEASURED_AT`]).
    pub measured_at: &'static str,
    /// Every flow `forwarding` at the daemon (its relay's data arrives).
    pub all: bool,
    /// From writing the wanted set until /metrics counted every flow
    /// forwarding (polled every second).
    pub seconds: Option<f64>,
    /// `frr_ingest_flows` by state when the wait ended, and the most
    /// flows seen forwarding at once.
    pub by_state: BTreeMap<String, u64>,
    pub most_forwarding_seen: u64,
    /// From writing the wanted set until the relay's status (written every
    /// second) counted forwarded packets on every channel for the gateway.
    pub relay_sent_all_s: Option<f64>,
    /// Flows `show flows --json` lists, and those at another relay.
    pub flows_listed: usize,
    pub flows_at_wrong_relay: usize,
    /// Channels with forwarded packets in the relay's status (last read).
    pub relay_channels_with_packets: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayFigures {
    /// Receive-buffer drops of the relay's AMT sockets and raw sockets.
    pub listen_rx_drops: u64,
    pub native_rx_drops: u64,
    pub native_sockets: usize,
    pub native_packets: u64,
    pub forwarded: u64,
    pub send_errors: u64,
    pub join_errors: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RssFigures {
    pub at_start: f64,
    pub peak: f64,
    pub after_emptying: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuFigures {
    pub window_s: f64,
    /// Percent of one core, schedstat over the window: with every channel
    /// receiving data at the plan's rate, and after the sender stopped.
    pub with_data: f64,
    pub no_data: f64,
    /// Seconds from stopping the sender until the flow states had been
    /// the same for 5 s (the window without data starts then; null: they
    /// kept changing until the settle timeout).
    pub no_data_settled_after_s: Option<f64>,
    pub flows_by_state_with_data: BTreeMap<String, u64>,
    pub flows_by_state_after_no_data: BTreeMap<String, u64>,
    pub relays_hold_after_no_data: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiFigures {
    /// `ingestctl show flows --json` (the whole command).
    pub show_flows_json: CallTimings,
    pub show_flows_json_bytes: usize,
    /// `GET /metrics` (connect to last byte).
    pub metrics: CallTimings,
    pub metrics_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFigures {
    /// Lines at INFO, WARN and ERROR over the daemon's whole run.
    pub info_and_above: u64,
    pub by_level: BTreeMap<String, u64>,
    pub not_json: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Teardown {
    /// From emptying the wanted set: relays hold nothing (last removal
    /// event), the daemon has no tunnel (after `linger_s`), no source
    /// route, no flow.
    pub relays_empty_s: Option<f64>,
    pub tunnels_closed_s: Option<f64>,
    pub routes_gone_s: Option<f64>,
    pub flows_gone_s: Option<f64>,
    pub relays_hold_after: usize,
    pub relay_status_channels_after: Option<usize>,
    pub relay_status_subscriptions_after: Option<u64>,
    pub tunnels_after: Option<usize>,
    pub routes_after: usize,
    pub all: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SenderSummary {
    pub packets: Option<u64>,
    pub send_errors: Option<u64>,
    pub achieved_pps: Option<f64>,
}

/// A target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: Value,
    pub met: bool,
}

/// What one cycle measured (printed as one JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub kind: &'static str,
    pub channels: usize,
    pub relays: usize,
    pub sources: usize,
    pub groups_per_source: usize,
    pub rate_pps_per_channel: f64,
    pub relay_map: RelayMapKind,
    pub join_source: JoinMode,
    pub relay_qqi_s: u64,
    pub relay_groups_per_socket: usize,
    pub linger_s: u64,
    pub no_data_timeout_s: Option<u64>,
    /// `--dataplane` given to the daemon (null: its default, auto).
    pub dataplane: Option<String>,
    pub accepted: Accepted,
    pub forwarding: Forwarding,
    pub relay: RelayFigures,
    /// Receive-buffer drops of the daemon's namespace's UDP sockets.
    pub gateway_udp_drops: Option<u64>,
    pub rss_mb: RssFigures,
    pub cpu_pct: CpuFigures,
    pub api: ApiFigures,
    pub log_lines: LogFigures,
    pub teardown: Teardown,
    pub sender: SenderSummary,
    pub phases: Phases,
    pub load_average: LoadAverage,
    pub targets: BTreeMap<&'static str, Target>,
    pub all_targets_met: bool,
}

impl CycleReport {
    fn new(plan: &ScalePlan, d: &DaemonOptions, opts: &CycleOptions) -> Self {
        let p = &plan.params;
        Self {
            kind: "scale_cycle",
            channels: plan.channels.len(),
            relays: plan.relays.len(),
            sources: plan.sources.len(),
            groups_per_source: p.groups_per_source,
            rate_pps_per_channel: p.rate_pps,
            relay_map: p.relay_map,
            join_source: d.join_mode,
            relay_qqi_s: p.relay_qqi_s,
            relay_groups_per_socket: p.relay_groups_per_socket,
            linger_s: d.linger_s,
            no_data_timeout_s: d.no_data_timeout_s,
            dataplane: d.dataplane.clone(),
            accepted: Accepted::default(),
            forwarding: Forwarding {
                measured_at: FORWARDING_MEASURED_AT,
                ..Forwarding::default()
            },
            relay: RelayFigures::default(),
            gateway_udp_drops: None,
            rss_mb: RssFigures::default(),
            cpu_pct: CpuFigures {
                window_s: opts.steady.as_secs_f64(),
                ..CpuFigures::default()
            },
            api: ApiFigures::default(),
            log_lines: LogFigures::default(),
            teardown: Teardown::default(),
            sender: SenderSummary::default(),
            phases: Phases::default(),
            load_average: LoadAverage::default(),
            targets: BTreeMap::new(),
            all_targets_met: false,
        }
    }

    /// The report as JSON, fractions rounded to 3 decimals (ms, kB, 0.001 %).
    pub fn to_json(&self) -> Value {
        fn round(v: &mut Value) {
            match v {
                Value::Number(n) if n.is_f64() => {
                    if let Some(x) = n.as_f64()
                        && let Some(r) = serde_json::Number::from_f64((x * 1000.0).round() / 1000.0)
                    {
                        *n = r;
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(round),
                Value::Object(o) => o.values_mut().for_each(round),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        round(&mut v);
        v
    }

    /// Fills the derived fields and the targets.
    fn evaluate(&mut self) {
        let n = self.channels;
        self.accepted.all = self.accepted.held == n && self.accepted.seconds.is_some();
        self.forwarding.all = self.forwarding.seconds.is_some();
        let td = &mut self.teardown;
        td.all = td.relays_empty_s.is_some()
            && td.tunnels_closed_s.is_some()
            && td.routes_gone_s.is_some()
            && td.flows_gone_s.is_some()
            && td.relays_hold_after == 0
            && td.routes_after == 0
            && td.tunnels_after == Some(0);
        // Issue 10's targets: seconds to accepted, to forwarding and to
        // empty relays; peak RSS (MB) and RSS after emptying (times the
        // RSS at start), idle CPU (% of a core), log lines.
        let (accepted_s, forwarding_s, relays_empty_s) = (5.0, 10.0, 5.0);
        let (rss_mb, rss_after_factor, idle_cpu_pct, log_lines) = (100.0, 2.0, 0.5, 100);
        let within = |v: Option<f64>, limit: f64| v.is_some_and(|v| v <= limit);
        let drops = self.relay.listen_rx_drops + self.relay.native_rx_drops;
        let teardown = serde_json::json!({
            "tunnels_closed_s": self.teardown.tunnels_closed_s,
            "routes_gone_s": self.teardown.routes_gone_s,
        });
        let t: BTreeMap<&'static str, Target> = [
            (
                "accepted_s",
                format!("every channel accepted by its relay <= {accepted_s} s"),
                serde_json::json!(self.accepted.seconds),
                self.accepted.all && within(self.accepted.seconds, accepted_s),
            ),
            (
                "forwarding_s",
                format!("data flowing on every channel <= {forwarding_s} s"),
                serde_json::json!(self.forwarding.seconds),
                within(self.forwarding.seconds, forwarding_s),
            ),
            (
                "relay_rx_drops",
                "0 relay receive-buffer errors".into(),
                serde_json::json!(drops),
                drops == 0,
            ),
            (
                "relays_empty_s",
                format!("relays hold nothing <= {relays_empty_s} s after emptying"),
                serde_json::json!(self.teardown.relays_empty_s),
                within(self.teardown.relays_empty_s, relays_empty_s),
            ),
            (
                "rss_mb",
                format!("daemon RSS (peak) <= {rss_mb} MB"),
                serde_json::json!(self.rss_mb.peak),
                self.rss_mb.peak <= rss_mb,
            ),
            (
                "rss_after_emptying",
                format!("daemon RSS after emptying <= {rss_after_factor}x its RSS at start"),
                serde_json::json!({
                    "at_start_mb": self.rss_mb.at_start,
                    "after_emptying_mb": self.rss_mb.after_emptying,
                }),
                self.rss_mb.after_emptying <= rss_after_factor * self.rss_mb.at_start,
            ),
            (
                "idle_cpu_pct",
                format!("steady CPU without data <= {idle_cpu_pct} % of a core"),
                serde_json::json!(self.cpu_pct.no_data),
                self.cpu_pct.no_data <= idle_cpu_pct,
            ),
            (
                "log_lines",
                format!("<= {log_lines} log lines at info level or above"),
                serde_json::json!(self.log_lines.info_and_above),
                self.log_lines.info_and_above <= log_lines,
            ),
            (
                "teardown",
                "tunnels closed and routes gone after emptying".into(),
                teardown,
                self.teardown.all,
            ),
        ]
        .into_iter()
        .map(|(name, target, measured, met)| {
            (
                name,
                Target {
                    target,
                    measured,
                    met,
                },
            )
        })
        .collect();
        self.all_targets_met = t.values().all(|t| t.met);
        self.targets = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_and_networks() {
        let ms = Duration::from_millis;
        let t = CallTimings::of(&[(ms(30), ms(3)), (ms(10), ms(1)), (ms(20), ms(2))]);
        assert_eq!((t.min_s, t.median_s, t.max_s), (0.01, 0.02, 0.03));
        assert_eq!(t.daemon_cpu_median_s, 0.002);
        assert!(in_net("198.18.3.4".parse().unwrap(), plan::SOURCE_NET, 16));
        assert!(!in_net("198.19.0.1".parse().unwrap(), plan::SOURCE_NET, 16));
        assert!(in_net(
            "10.0.0.1".parse().unwrap(),
            Ipv4Addr::UNSPECIFIED,
            0
        ));
    }
}
