//! `lab-scale`: the scale lab (thousands of channels over a thousand relay
//! addresses) and its benchmark of frr-ingestd. See `lab-scale --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sample_network::scale::{
    CycleOptions, DaemonOptions, JoinMode, RelayMapKind, ScaleLab, ScaleParams, ScalePlan,
};

const LONG_ABOUT: &str = "\
The scale lab of frr-ingest (issue 10) and its benchmark, as root.

The scale lab is the normal lab (sample-network/lab up) plus: a node
'srelay' with one amt-relay answering on --relays addresses
(198.19.0.1, ...: routed from border via 192.0.2.20), sources 198.18.0.1,
... on the source host, each sending --groups-per-source channels (a group
of its own per channel, from 232.18.0.0) at --rate packets/s with one
mcsend, and each source's relay: an AMTRELAY record in the lab's DNS
(--relay-map driad, the default: zone 18.198.in-addr.arpa.) or the
daemon's static map (--relay-map static). Source i is served by relay
i mod R, so 10,000 channels as 1,000 sources x 10 groups over 1,000 relays
give every relay 10 channels of one source. Nothing in the default lab
changes; 'lab down' (or 'lab-scale down') removes it all.

'bench' runs one measured cycle of frr-ingestd (release build next to this
binary) and prints ONE JSON object on stdout (progress on stderr):
  1. lab up, extend; the daemon starts with an empty wanted set
     (joinfile mode: no multicast routing needed) and --linger-s;
  2. the wanted set is written: seconds until every channel is accepted by
     its relay (the relay's channel_added events; its status JSON is
     checked to list them) and until every flow is 'forwarding' at the
     daemon (GET /metrics, every second: data decapsulated by the
     gateway for that (S,G) lately; nothing goes through FRR here);
  3. ingestctl show flows --json and GET /metrics are timed;
  4. the daemon's CPU (sum of /proc/PID/task/*/schedstat) over --steady-s
     with data, then over --steady-s after the sender stopped;
  5. relay receive-buffer drops (its status: listen and native sockets),
     the daemon namespace's UDP drops;
  6. the wanted set is emptied: seconds until the relays hold nothing, the
     daemon has no tunnel (after the linger), no source route, no flow;
  7. RSS (start, peak, after emptying), log lines at info and above over
     the daemon's whole run; the targets of issue 10, met or not.
Then the lab goes down (--keep leaves it up).

--join-source pimd takes the wanted set from pimd instead: receivers on
rcv join every channel (mcrx), rtr's pimd joins toward the ingest router.
That needs a kernel with multicast routing (CONFIG_IP_MROUTE).

Namespaces are LAB_PREFIX-* (default scale), the run directory LAB_RUN
(default /run/frr-ingest-lab/LAB_PREFIX).

Examples:
  sudo sample-network/scale/scale-bench
  sudo sample-network/scale/scale-bench --channels 1000 --relays 100 --steady-s 10
  sudo target/release/lab-scale up --channels 10000 --relays 1000
  sudo sample-network/lab proc start border frr-ingestd   # (LAB_PREFIX=scale)
  cp /run/frr-ingest-lab/scale/border/scale-joins.all /run/frr-ingest-lab/scale/border/scale-joins.txt
  sudo target/release/lab-scale down";

#[derive(Debug, Parser)]
#[command(name = "lab-scale", version, about = "The frr-ingest scale lab and benchmark", long_about = LONG_ABOUT)]
struct Cli {
    /// Lab namespace prefix.
    #[arg(long, env = "LAB_PREFIX", default_value = "scale", global = true)]
    prefix: String,
    /// Lab run directory (default /run/frr-ingest-lab/PREFIX).
    #[arg(long, env = "LAB_RUN", global = true)]
    run_dir: Option<PathBuf>,
    /// Directory of the workspace binaries (default: this binary's).
    #[arg(long, env = "LAB_BIN_DIR", global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// lab up, extend, one measured cycle, one JSON object, lab down.
    Bench {
        #[command(flatten)]
        scale: ScaleArgs,
        #[command(flatten)]
        daemon: DaemonArgs,
        #[command(flatten)]
        cycle: CycleArgs,
        /// Leave the lab up afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// lab up and extend it; the daemon can then be started by hand.
    Up {
        #[command(flatten)]
        scale: ScaleArgs,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Extend a lab that is up (the lab tests use this).
    Extend {
        #[command(flatten)]
        scale: ScaleArgs,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// lab down.
    Down,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// (S,G) channels in all.
    #[arg(long, default_value_t = 10_000)]
    channels: usize,
    /// Relay addresses (one amt-relay answers on all).
    #[arg(long, default_value_t = 1_000)]
    relays: usize,
    /// Channels per source (consecutive groups).
    #[arg(long, default_value_t = 10)]
    groups_per_source: usize,
    /// Packets per second per channel.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How the daemon finds relays: driad (AMTRELAY records) or static.
    #[arg(long, value_enum, default_value = "driad")]
    relay_map: RelayMapKind,
    /// Query interval the relay announces (gateways refresh this often).
    #[arg(long, default_value_t = 125)]
    relay_qqi: u64,
    /// Native joins per raw socket of the relay (net.ipv4.igmp_max_memberships
    /// in its namespace).
    #[arg(long, default_value_t = 10_000)]
    relay_groups_per_socket: usize,
    /// Nice value of the relay and the sender (they stand for other
    /// machines; negative keeps them from starving on a busy machine).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    lab_nice: i32,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Where the wanted set comes from: joinfile or pimd.
    #[arg(long, value_enum, default_value = "joinfile")]
    join_source: JoinMode,
    /// amt.linger_s of the daemon.
    #[arg(long, default_value_t = 2)]
    linger_s: u64,
    /// amt.no_data_timeout_s of the daemon (default: the daemon's).
    #[arg(long)]
    no_data_timeout_s: Option<u64>,
    /// The daemon's data plane: auto, kernel or userspace (default: the
    /// daemon's, auto).
    #[arg(long, env = "LAB_DATAPLANE", value_name = "auto|kernel|userspace")]
    dataplane: Option<String>,
}

#[derive(Debug, Args)]
struct CycleArgs {
    /// Length of each CPU window (with data, without).
    #[arg(long, default_value_t = 30.0)]
    steady_s: f64,
    /// Longest wait for every channel accepted and forwarding.
    #[arg(long, default_value_t = 120.0)]
    converge_timeout_s: f64,
    /// Longest wait for relays, tunnels and routes to clear.
    #[arg(long, default_value_t = 60.0)]
    teardown_timeout_s: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plan(a: &ScaleArgs) -> anyhow::Result<ScalePlan> {
    Ok(ScalePlan::new(ScaleParams {
        channels: a.channels,
        relays: a.relays,
        groups_per_source: a.groups_per_source,
        rate_pps: a.rate,
        relay_map: a.relay_map,
        relay_qqi_s: a.relay_qqi,
        relay_groups_per_socket: a.relay_groups_per_socket,
        lab_nice: a.lab_nice,
    })?)
}

fn daemon(a: &DaemonArgs) -> DaemonOptions {
    DaemonOptions {
        join_mode: a.join_source,
        linger_s: a.linger_s,
        no_data_timeout_s: a.no_data_timeout_s,
        dataplane: a.dataplane.clone().filter(|m| !m.is_empty()),
        ..DaemonOptions::default()
    }
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{name} {s}"))
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("must run as root (network namespaces, TUN, FRR)");
    }
    let run_dir = cli
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/frr-ingest-lab/{}", cli.prefix)));
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .to_path_buf(),
    };
    for name in [
        "amt-relay",
        "mcsend",
        "mcrx",
        "frr-ingestd",
        "ingestctl",
        "lab-topology",
    ] {
        let p = bin_dir.join(name);
        anyhow::ensure!(
            p.exists(),
            "{} is missing: cargo build --release -p frr-bridge -p sample-network --bins \
             (or give --bin-dir)",
            p.display()
        );
    }
    let lab = ScaleLab::new(&cli.prefix, &run_dir, &bin_dir)?;
    match &cli.command {
        Cmd::Down => {
            lab.down()?;
        }
        Cmd::Extend { scale, daemon: d } => {
            lab.extend(&plan(scale)?, &daemon(d))?;
        }
        Cmd::Up { scale, daemon: d } => {
            let plan = plan(scale)?;
            lab.up()?;
            if let Err(e) = lab.extend(&plan, &daemon(d)) {
                let _ = lab.down();
                return Err(e.into());
            }
            let border = lab.node_dir("border");
            eprintln!(
                "lab-scale: up. Start the daemon: LAB_PREFIX={p} LAB_RUN={r} sample-network/lab proc start border frr-ingestd\n\
                 then want every channel: cp {b}/scale-joins.all {b}/scale-joins.txt (config {b}/scale.toml,\n\
                 relay status {s}); 'lab-scale down' when done.",
                p = cli.prefix,
                r = run_dir.display(),
                b = border.display(),
                s = lab
                    .node_dir("srelay")
                    .join("amt-relay.status.json")
                    .display(),
            );
        }
        Cmd::Bench {
            scale,
            daemon: d,
            cycle,
            keep,
        } => {
            let plan = plan(scale)?;
            let d = daemon(d);
            let opts = CycleOptions {
                steady: seconds("steady-s", cycle.steady_s)?,
                converge_timeout: seconds("converge-timeout-s", cycle.converge_timeout_s)?,
                teardown_timeout: seconds("teardown-timeout-s", cycle.teardown_timeout_s)?,
                ..CycleOptions::default()
            };
            lab.up()?;
            let result = lab
                .extend(&plan, &d)
                .and_then(|()| lab.run_cycle(&plan, &d, &opts));
            if !keep && let Err(e) = lab.down() {
                eprintln!("lab-scale: lab down failed: {e}");
            }
            let report = result?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            return Ok(if report.all_targets_met {
                ExitCode::SUCCESS
            } else {
                // 3: measured, but a target was missed (1 is a failure to measure).
                ExitCode::from(3)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
