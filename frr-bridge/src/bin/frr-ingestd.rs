//! frr-ingestd: the frr-ingest sidecar daemon. See `frr-ingestd --help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use amt_gateway::dataplane::{self, DataPlaneReason, DataPlaneSelection, DeliveryTarget};
use amt_gateway::driver::DEFAULT_MIN_INNER_TTL;
use anyhow::Context;
use clap::Parser;
use frr_bridge::api::{ApiInfo, ApiService, bind_unix, serve};
use frr_bridge::config::{Config, ConfigError, JoinSource};
use frr_bridge::joinsource::{JoinfileWriter, run_joinfile_source};
use frr_bridge::orchestrator::{Orchestrator, OrchestratorConfig};
use frr_bridge::pipeline::{AmtSettings, Counters, DaemonSouthbound, Deciding, Pipeline, Shared};
use frr_bridge::southbound::tun::{IngestTun, TunConfig, TunIpv6};
use frr_bridge::tasks::{run_memory_trim, run_mroute_monitor, run_pim};
use frr_bridge::watcher::{JoinWatcher, WatchStatus, WatcherConfig};
use ingest_policy::engine::{Engine, NetLookups, PolicySet, WantedSet};
use tokio::sync::{Notify, broadcast, watch};
use tracing::{error, info, warn};

/// The frr-ingest sidecar: makes an FRRouting router a multicast ingest point.
///
/// It reads the (S,G) joins that pimd learned from downstream PIM routers
/// (over pimd's vty socket, like vtysh), and for every channel it can serve
/// it routes the source into one TUN interface (default amt0) in FRR's
/// network namespace, where it is pimd's PIM neighbour. Packets written into
/// the TUN (from AMT tunnels, or `ingestctl inject`) are then forwarded by
/// FRR to the receivers.
///
/// For each channel, the policy stage picks the AMT relay (the static map
/// [amt.static_relays], else the source's AMTRELAY DNS record, RFC 8777)
/// and, with a bandwidth limit, admits flows by their DORMS bitrate
/// (CBACC). `ingestctl show flows` tells why each flow is (not) served.
///
/// Configuration comes from a TOML file (--config; see
/// --print-default-config for every key with its default), and the flags
/// below override it. Typical lab start:
///
///   frr-ingestd --frr-vty-dir /run/frr-ingest-lab/fi/ingest \
///       --frr-netns /var/run/netns/fi-ingest \
///       --dns-server 192.0.2.53 --bandwidth-limit 10M
///
/// Needs CAP_NET_ADMIN (TUN, routes) and CAP_SYS_ADMIN when --frr-netns is
/// given (to enter FRR's namespace), plus access to pimd's vty socket (root
/// or group frrvty). Exit codes: 0 clean stop, 1 runtime failure, 2 bad
/// configuration.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Directory of FRR's vty sockets (pimd.vty). [frr.vty_dir]
    #[arg(long)]
    frr_vty_dir: Option<PathBuf>,
    /// FRR's network namespace file (e.g. /var/run/netns/ingest). [frr.netns]
    #[arg(long)]
    frr_netns: Option<PathBuf>,
    /// Name of the ingest TUN. [tun.name]
    #[arg(long)]
    tun_name: Option<String>,
    /// IPv4 address of the TUN in FRR's namespace. [tun.local]
    #[arg(long)]
    tun_local: Option<std::net::IpAddr>,
    /// The sidecar's PIM neighbour address on the TUN. [tun.neighbor]
    #[arg(long)]
    tun_neighbor: Option<std::net::IpAddr>,
    /// Period of pimd join-state polls in ms. [watch.poll_interval_ms]
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// Unix socket of the management API. [api.socket]
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Also serve the API on this loopback TCP address. [api.tcp]
    #[arg(long)]
    api_tcp: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics (plain HTTP, GET /metrics) and a health
    /// check (GET /healthz) on this address, e.g. 127.0.0.1:9477.
    /// [api.metrics]
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Lab mode: route every joined source into the TUN without a tunnel.
    /// [ingest.serve_all_sources]
    #[arg(long)]
    serve_all_sources: bool,
    /// Where wanted channels come from: "pimd" or "file:PATH" (a joinfile,
    /// `source,group[,population]` per line). [ingest.join_source]
    #[arg(long, value_name = "pimd|file:PATH")]
    join_source: Option<String>,
    /// Write the admitted flows to this joinfile. [ingest.write_joinfile]
    #[arg(long, value_name = "PATH")]
    write_joinfile: Option<PathBuf>,
    /// DNS server for DRIAD and DORMS lookups (repeatable; default: those
    /// of /etc/resolv.conf). [policy.dns_servers]
    #[arg(long, value_name = "ADDR[:PORT]")]
    dns_server: Vec<String>,
    /// Bandwidth limit of all ingested flows together, e.g. "50M" (bit/s,
    /// decimal SI). Turns on DORMS bitrate lookups. [policy.bandwidth_limit]
    #[arg(long, value_name = "RATE")]
    bandwidth_limit: Option<String>,
    /// CA certificates (PEM) trusted for DORMS servers. [policy.dorms_ca_bundle]
    #[arg(long, value_name = "PEM")]
    dorms_ca: Option<PathBuf>,
    /// Where AMT data is decapsulated: "kernel" (BPF at TC ingress; needs
    /// CAP_BPF), "userspace", or "auto" (kernel when it loads, else
    /// userspace, saying why). [amt.dataplane]
    #[arg(long, value_name = "auto|kernel|userspace")]
    dataplane: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or
    /// "frr_bridge=debug". RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn build_config(a: &Args) -> Result<Config, ConfigError> {
    let mut c = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = &a.frr_vty_dir {
        c.frr.vty_dir = v.clone();
    }
    if let Some(v) = &a.frr_netns {
        c.frr.netns = Some(v.clone());
    }
    if let Some(v) = &a.tun_name {
        c.tun.name = v.clone();
    }
    if let Some(v) = a.tun_local {
        c.tun.local = v;
    }
    if let Some(v) = a.tun_neighbor {
        c.tun.neighbor = v;
    }
    if let Some(v) = a.poll_interval_ms {
        c.watch.poll_interval_ms = v;
    }
    if let Some(v) = &a.api_socket {
        c.api.socket = v.clone();
    }
    if let Some(v) = a.metrics {
        c.api.metrics = Some(v);
    }
    if let Some(v) = a.api_tcp {
        c.api.tcp = Some(v);
    }
    if a.serve_all_sources {
        c.ingest.serve_all_sources = true;
    }
    if let Some(v) = &a.join_source {
        c.ingest.join_source = v.clone();
    }
    if let Some(v) = &a.write_joinfile {
        c.ingest.write_joinfile = Some(v.clone());
    }
    if !a.dns_server.is_empty() {
        c.policy.dns_servers = a.dns_server.clone();
    }
    if let Some(v) = &a.bandwidth_limit {
        c.policy.bandwidth_limit = Some(v.clone());
    }
    if let Some(v) = &a.dorms_ca {
        c.policy.dorms_ca_bundle = Some(v.clone());
    }
    if let Some(v) = &a.dataplane {
        c.amt.dataplane = v.clone();
    }
    c.validate()?;
    Ok(c)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", Config::default().to_toml());
        return ExitCode::SUCCESS;
    }
    let cfg = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("frr-ingestd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    // Before the runtime's threads exist (see frr_bridge::memory).
    frr_bridge::memory::use_one_arena();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("frr-ingestd: --log-level {:?}: {e}", args.log_level);
            return ExitCode::from(2);
        }
    };
    if args.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("frr-ingestd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("frr-ingestd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    info!(
        vty = %cfg.pimd_socket().display(),
        netns = %cfg.frr.netns.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(own)".into()),
        "frr-ingestd {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let tun = IngestTun::create(&TunConfig {
        name: cfg.tun.name.clone(),
        netns: cfg.frr.netns.clone(),
        local: cfg.tun.local,
        neighbor: cfg.tun.neighbor,
        ipv6: cfg.tun.ipv6.then_some(TunIpv6 {
            local: cfg.tun.local6,
            neighbor: cfg.tun.neighbor6,
        }),
        ipv4_rpf: cfg.ipv4_rpf()?,
        mtu: cfg.tun.mtu,
    })
    .context("setting up the ingest TUN")?;
    info!(
        tun = tun.name(),
        ifindex = tun.ifindex(),
        ipv4_rpf = %cfg.tun.ipv4_rpf,
        "TUN up: {} peer {}{}",
        cfg.tun.local,
        cfg.tun.neighbor,
        if cfg.tun.ipv6 {
            format!(", {} peer {}", cfg.tun.local6, cfg.tun.neighbor6)
        } else {
            String::new()
        }
    );
    let dataplane = select_dataplane(&cfg, &tun)?;
    match tun.remove_stale_routes() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} stale source routes left by an earlier instance"),
        Err(e) => warn!("cannot list old source routes: {e}"),
    }
    let mode = cfg.socket_mode()?;
    let unix = bind_unix(&cfg.api.socket, mode)
        .with_context(|| format!("binding the API socket {}", cfg.api.socket.display()))?;
    let metrics_listener = match cfg.api.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .with_context(|| format!("api.metrics: cannot listen on {addr}"))?,
        ),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let (set_tx, set_rx) = watch::channel(Arc::new(WantedSet::new()));
    let trigger = Arc::new(Notify::new());
    let watch_status = Arc::new(Mutex::new(WatchStatus::default()));
    let (events, _) = broadcast::channel(4096);
    let limit_bps = cfg
        .policy
        .bandwidth_limit
        .as_deref()
        .and_then(|t| ingest_policy::admission::parse_bandwidth(t).ok());
    let tun = Arc::new(tun);
    let shared = Shared {
        orchestrator: Arc::new(RwLock::new(Orchestrator::new(OrchestratorConfig {
            serve_all: cfg.ingest.serve_all_sources,
            linger: std::time::Duration::from_secs(cfg.amt.linger_s),
            attempt_delay: std::time::Duration::from_millis(cfg.amt.connection_attempt_delay_ms),
        }))),
        tunnels: Arc::new(RwLock::new(BTreeMap::new())),
        watch_status: watch_status.clone(),
        events,
        counters: Arc::new(Counters::default()),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        limit_bps,
    };

    let join_source = cfg.join_source()?;
    let watcher_task = match &join_source {
        JoinSource::Pimd => {
            let pim6 = match cfg.frr.pim6.as_str() {
                "no" => None,
                _ => Some(cfg.pim6d_socket()),
            };
            let watcher = JoinWatcher::new(
                WatcherConfig {
                    pimd_socket: cfg.pimd_socket(),
                    pim6d_socket: pim6,
                    pim6_auto: cfg.frr.pim6 == "auto",
                    poll_interval: cfg.poll_interval(),
                    command_timeout: cfg.command_timeout(),
                    restart_grace: std::time::Duration::from_secs(cfg.watch.pimd_restart_grace_s),
                    ignore_interfaces: vec![cfg.tun.name.clone()],
                },
                trigger.clone(),
                set_tx,
                watch_status,
            );
            tokio::spawn(watcher.run())
        }
        JoinSource::File(path) => {
            info!(path = %path.display(), "wanted channels come from a joinfile, not pimd");
            tokio::spawn(run_joinfile_source(
                path.clone(),
                cfg.poll_interval(),
                set_tx,
                watch_status,
            ))
        }
    };
    let relay_map = cfg.relay_map()?;
    let amt = AmtSettings {
        bind: cfg.amt.bind,
        no_data_timeout: (cfg.amt.no_data_timeout_s > 0)
            .then(|| std::time::Duration::from_secs(cfg.amt.no_data_timeout_s)),
        kernel: dataplane.kernel.clone(),
    };
    // The policy engine decides (not in serve_all_sources mode, which
    // routes everything unasked).
    let deciding = if cfg.ingest.serve_all_sources {
        warn!(
            "serve_all_sources: every joined source is routed into the TUN without a tunnel or policy (lab mode)"
        );
        Deciding::ServeAll
    } else {
        let settings = cfg.policy.engine_config(rand::random())?;
        let lookups = NetLookups::new(cfg.policy.net_lookups_config()?)
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let engine = Engine::new(
            settings,
            Box::new(move |source| relay_map.lookup(source)),
            Instant::now(),
            SystemTime::now(),
        );
        Deciding::Policy {
            engine: Box::new(engine),
            lookups: Arc::new(lookups),
        }
    };
    info!(
        driad = cfg.policy.driad,
        static_relays = cfg.amt.static_relays.len(),
        bandwidth_limit = cfg.policy.bandwidth_limit.as_deref().unwrap_or("none"),
        dorms = cfg.policy.dorms_enabled(),
        "policy"
    );
    let southbound = Arc::new(DaemonSouthbound {
        tun: tun.clone(),
        amt,
    });
    let mut pipeline = Pipeline::new(shared.clone(), deciding, southbound);
    if let Some(path) = &cfg.ingest.write_joinfile
        && !cfg.ingest.serve_all_sources
    {
        info!(path = %path.display(), "writing the admitted flows as a joinfile");
        let (decisions_tx, decisions_rx) = watch::channel(Arc::new(PolicySet::new()));
        pipeline.publish_decisions(decisions_tx);
        tokio::spawn(JoinfileWriter::new(path.clone()).run(decisions_rx));
    }
    let orch_task = tokio::spawn(pipeline.run(set_rx, stop_rx.clone()));
    let pim_task = tokio::spawn(run_pim(
        shared.clone(),
        tun.clone(),
        std::iter::once(cfg.tun.neighbor)
            .chain(
                cfg.tun
                    .ipv6
                    .then_some(std::net::IpAddr::V6(cfg.tun.neighbor6)),
            )
            .collect(),
        std::time::Duration::from_secs(cfg.tun.hello_interval_s),
        trigger.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(run_memory_trim(shared.clone(), stop_rx.clone()));
    match IngestTun::open_mroute_monitor(cfg.frr.netns.as_deref()) {
        Ok(fd) => {
            tokio::spawn(run_mroute_monitor(fd, shared.clone(), trigger.clone()));
        }
        Err(e) => warn!("{e}; relying on polling and PIM Join/Prunes only"),
    }
    let info = ApiInfo {
        frr_vty_dir: cfg.frr.vty_dir.display().to_string(),
        frr_netns: cfg
            .frr
            .netns
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        tun_local: cfg.tun.local.to_string(),
        tun_neighbor: cfg.tun.neighbor.to_string(),
        tun_local6: if cfg.tun.ipv6 {
            cfg.tun.local6.to_string()
        } else {
            String::new()
        },
        tun_neighbor6: if cfg.tun.ipv6 {
            cfg.tun.neighbor6.to_string()
        } else {
            String::new()
        },
        ipv4_rpf: cfg.tun.ipv4_rpf.clone(),
        join_source: match &join_source {
            JoinSource::Pimd => format!("pimd:{}", cfg.pimd_socket().display()),
            JoinSource::File(p) => format!("file:{}", p.display()),
        },
        dataplane: Some(dataplane.status.clone()),
        kernel: dataplane.kernel.clone(),
    };
    if let Some(listener) = metrics_listener {
        tokio::spawn(frr_bridge::metrics::serve_metrics(
            listener,
            ApiService::new(shared.clone(), tun.clone(), info.clone()),
            stop_rx.clone(),
        ));
    }
    let api_task = tokio::spawn(serve(
        ApiService::new(shared.clone(), tun.clone(), info),
        unix,
        cfg.api.socket.clone(),
        cfg.api.tcp,
        stop_rx.clone(),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
    let _ = stop_tx.send(true);
    let _ = orch_task.await;
    let _ = pim_task.await;
    watcher_task.abort();
    match tokio::time::timeout(std::time::Duration::from_secs(3), api_task).await {
        Ok(Ok(Err(e))) => warn!("API server: {e:#}"),
        Err(_) => warn!("API server did not stop within 3 s"),
        _ => {}
    }
    // The tunnels are closed: dropping the last reference detaches the
    // programs and removes the veth pair and maps.
    drop(dataplane);
    info!("stopped; routes removed, TUN released");
    Ok(())
}

/// Opens the data plane `amt.dataplane` asks for, delivering into `tun`
/// (through a veth pair when FRR runs in another namespace). `kernel` that
/// cannot load is an error; `auto` falls back to userspace and says why.
fn select_dataplane(cfg: &Config, tun: &IngestTun) -> anyhow::Result<DataPlaneSelection> {
    let mode = cfg.dataplane_mode()?;
    let target = match &cfg.frr.netns {
        Some(netns) => DeliveryTarget::other_namespace(netns, tun.ifindex()),
        None => DeliveryTarget::SameNamespace {
            tun_ifindex: tun.ifindex(),
        },
    };
    let selection = dataplane::select(mode, Some(target), Some(DEFAULT_MIN_INNER_TTL))
        .with_context(|| format!("amt.dataplane = \"{mode}\": the kernel data plane cannot run"))?;
    let status = &selection.status;
    match &status.reason {
        DataPlaneReason::Fallback(why) => {
            warn!(requested = %status.requested, "data plane: userspace, because {why}")
        }
        _ => info!(requested = %status.requested, "data plane: {}", status.reason_text()),
    }
    Ok(selection)
}
