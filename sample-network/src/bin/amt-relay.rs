//! `amt-relay`: an RFC 7450 AMT relay for the lab (command line; the relay
//! is `sample_network::relay`, its protocol core `amt_gateway::relay`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use amt_gateway::relay::RelayConfig;
use anyhow::{Context, bail};
use clap::Parser;
use ingest_types::AMT_PORT;
use ingest_types::SourceGroup;
use sample_network::iface::Interface;
use sample_network::relay::synthetic::DataTemplate;
use sample_network::relay::{self, Options, SyntheticOptions};
use sample_network::signal;

const LONG_ABOUT: &str = "\
An RFC 7450 AMT relay for the lab.

Gateways send Relay Discovery / Request / Membership Update to --listen
(UDP, default 0.0.0.0:2268). The relay answers with Advertisements and
Membership Queries (IGMPv3 for IPv4 data, MLDv2 for IPv6 data) carrying a
Response MAC derived from the gateway's address, port and nonce and a
secret that rotates every --secret-rotation seconds (current and previous
secrets accepted). Updates with unknown nonces or bad MACs are rejected and
counted.

For every (S,G) some gateway subscribed, the relay makes a source-specific
join on its LAN (--lan-interface) and forwards each received packet, whole
IP header included, in a Multicast Data message to every subscribed
gateway. A subscription expires QRV x QQI + QRI after the last report; a
leave (BLOCK) stops forwarding at once.

Many addresses in one process (scale labs): repeat --listen, or give
--listen-range FIRST-LAST (port --listen-port), or both. Each address is a
relay of its own as gateways see it: its own socket, secret and
subscriptions; Advertisements, Queries and data come from the address the
gateway sent to. Native joins are shared: a channel several addresses'
gateways want is joined once. The open-file limit is raised to its hard
limit (one socket per address).

Native joins of thousands of channels are spread over raw sockets within
the kernel's per-socket limits (net.ipv4.igmp_max_memberships groups,
net.ipv4.igmp_max_msf / net.ipv6.mld_max_msf sources per group, option
memory net.core.optmem_max); raising these sysctls means fewer sockets.

Status: a JSON line on stdout every --status-interval seconds (and on
SIGUSR1), with per-gateway channels (and the listen address they use) and
forwarded packet counts; the same object is written atomically to
--status-file if given (with --status-file-only: there alone).
Receive-buffer drops, as the kernel counts them per socket:
stats.listen_rx_drops (all AMT sockets; 0 means no gateway datagram was
lost at the relay), stats.native_rx_drops (native raw sockets), and per
socket in listen[] and native_sockets[]. Events (channel
added/removed/expired, native joins) are JSON lines too.

Synthetic source (benchmarks): --synthetic S,G makes the relay generate
Multicast Data for (S,G) itself once a gateway has subscribed it (after
--synthetic-delay): IPv4/IPv6 UDP packets to --synthetic-port with the lab
probe payload (8-byte sequence from 0, 8-byte send time in ns, zero padding
to --synthetic-size bytes; valid checksums), paced at --synthetic-rate
packets/s and sent in sendmmsg batches to every subscribed gateway, until
--synthetic-count packets or --synthetic-duration seconds. Events
synthetic_armed / synthetic_started, then one synthetic_summary JSON line
(sent, achieved_pps, skipped, send errors). Native forwarding is unchanged.

Examples:
  amt-relay --lan-interface eth1
  amt-relay --listen 10.0.0.1:2268 --lan-address 10.1.0.1 --qqi 10 --status-file /run/relay.json
  amt-relay --listen [::]:2268 --lan-interface eth1 --refuse
  amt-relay --listen-range 192.0.2.100-192.0.2.199 --lan-interface eth1 --status-file /run/relay.json
  amt-relay --listen 10.99.0.1:2268 --synthetic 10.99.0.1,232.9.9.9 --synthetic-rate 100000 --synthetic-size 1316 --synthetic-duration 5";

#[derive(Debug, Parser)]
#[command(name = "amt-relay", version, about = "RFC 7450 AMT relay for the lab", long_about = LONG_ABOUT)]
struct Args {
    /// AMT address and port to listen on ([::]:PORT is dual-stack); repeat
    /// for several addresses. Default 0.0.0.0:2268 (unless --listen-range).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Also listen on every address FIRST..=LAST (IPv4 or IPv6, at most
    /// 65536) at --listen-port; repeatable. The addresses must be local.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_range)]
    listen_range: Vec<Vec<IpAddr>>,
    /// Port of the --listen-range addresses.
    #[arg(long, value_name = "PORT", default_value_t = AMT_PORT)]
    listen_port: u16,
    /// LAN interface (name or one of its addresses) where native multicast
    /// is joined and received. Default: the kernel's choice by route.
    #[arg(long, value_name = "IFACE")]
    lan_interface: Option<String>,
    /// LAN interface given by address (same as --lan-interface ADDR).
    #[arg(long, value_name = "ADDR", conflicts_with = "lan_interface")]
    lan_address: Option<IpAddr>,
    /// Relay address to put in Relay Advertisements (default: the address
    /// the Discovery arrived on, or the listen address if specific).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<IpAddr>,
    /// Query interval announced to gateways (they refresh this often).
    #[arg(long, value_name = "SECS", default_value_t = 125)]
    qqi: u64,
    /// Robustness variable announced to gateways.
    #[arg(long, value_name = "N", default_value_t = 2)]
    qrv: u8,
    /// Query response interval (Max Resp Code); capped at half the QQI.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    qri: f64,
    /// Secret rotation period for the Response MAC.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    secret_rotation: u64,
    /// Refuse new gateways: set the L flag in queries and ignore their Updates.
    #[arg(long)]
    refuse: bool,
    /// Append the gateway's address and port to queries (G flag), as a
    /// relay behind which gateways may be NATed would.
    #[arg(long)]
    gateway_address: bool,
    /// Seconds between status lines on stdout (0: only on SIGUSR1).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    status_interval: f64,
    /// Also write each status object to this file (atomic replace).
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// Write the status only to --status-file, not to stdout (a relay
    /// holding thousands of channels has a status of megabytes); events
    /// still go to stdout.
    #[arg(long, requires = "status_file")]
    status_file_only: bool,
    /// Receive buffer for native multicast sockets (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    recv_buffer: usize,
    /// Generate Multicast Data for this channel once a gateway subscribes it.
    #[arg(long, value_name = "S,G")]
    synthetic: Option<SourceGroup>,
    #[command(flatten)]
    synthetic_data: SyntheticArgs,
}

/// How the data of `--synthetic` is made (given only with it).
#[derive(clap::Args, Debug)]
#[group(requires = "synthetic", multiple = true)]
struct SyntheticArgs {
    /// Synthetic packets per second (per gateway).
    #[arg(long = "synthetic-rate", value_name = "PPS", default_value_t = 10_000)]
    rate: u64,
    /// Synthetic UDP payload size (at least 16: the probe header).
    #[arg(long = "synthetic-size", value_name = "BYTES", default_value_t = 1316)]
    size: usize,
    /// UDP source and destination port of synthetic packets.
    #[arg(long = "synthetic-port", value_name = "PORT", default_value_t = 5000)]
    port: u16,
    /// Stop generating after this many packets.
    #[arg(long = "synthetic-count", value_name = "N")]
    count: Option<u64>,
    /// Stop generating after this many seconds (RATE x SECS packets).
    #[arg(long = "synthetic-duration", value_name = "SECS")]
    duration: Option<f64>,
    /// Wait this long after the subscription before sending.
    #[arg(long = "synthetic-delay", value_name = "SECS", default_value_t = 1.0)]
    delay: f64,
}

fn main() {
    sample_network::cli::run_tool("amt-relay", run);
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    signal::install_stop_handler().context("signal handlers")?;
    signal::install_status_handler().context("SIGUSR1 handler")?;
    let options = options(&args)?;
    relay::serve(options)?;
    Ok(())
}

/// Checks the arguments and turns them into the relay's options.
fn options(args: &Args) -> anyhow::Result<Options> {
    let iface = match (&args.lan_interface, args.lan_address) {
        (Some(spec), _) => Some(Interface::find(spec)?),
        (None, Some(addr)) => Some(Interface::find(&addr.to_string())?),
        (None, None) => None,
    };
    if args.qqi == 0 {
        bail!("--qqi must be at least 1");
    }
    let qqi = Duration::from_secs(args.qqi);
    let qri = Duration::from_secs_f64(args.qri.max(0.1)).min(qqi / 2);
    let config = RelayConfig {
        // None: each listen address advertises itself.
        advertised: args.advertise,
        qqi,
        qrv: args.qrv.clamp(1, 7),
        qri,
        secret_rotation: Duration::from_secs(args.secret_rotation.max(1)),
        refuse: args.refuse,
        send_gateway_address: args.gateway_address,
        ..RelayConfig::default()
    };
    let synthetic = match args.synthetic {
        Some(channel) => Some(synthetic_options(&args.synthetic_data, channel)?),
        None => None,
    };
    Ok(Options {
        listen: listen_addresses(args),
        iface,
        config,
        status_interval: (args.status_interval > 0.0)
            .then(|| Duration::from_secs_f64(args.status_interval)),
        status_file: args.status_file.clone(),
        status_file_only: args.status_file_only,
        recv_buffer: args.recv_buffer,
        synthetic,
    })
}

/// --listen and --listen-range addresses in order, without repeats; the
/// default when neither is given.
fn listen_addresses(args: &Args) -> Vec<SocketAddr> {
    let ranges = args
        .listen_range
        .iter()
        .flatten()
        .map(|ip| SocketAddr::new(*ip, args.listen_port));
    let mut seen = HashSet::new();
    let listen: Vec<SocketAddr> = args
        .listen
        .iter()
        .copied()
        .chain(ranges)
        .filter(|a| seen.insert(*a))
        .collect();
    if listen.is_empty() {
        vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), AMT_PORT)]
    } else {
        listen
    }
}

fn parse_range(text: &str) -> Result<Vec<IpAddr>, String> {
    relay::parse_address_range(text).map_err(|e| e.to_string())
}

fn synthetic_options(
    args: &SyntheticArgs,
    channel: SourceGroup,
) -> anyhow::Result<SyntheticOptions> {
    if args.rate == 0 {
        bail!("--synthetic-rate must be at least 1");
    }
    if !(args.delay.is_finite() && args.delay >= 0.0) {
        bail!("--synthetic-delay must be a non-negative number");
    }
    let by_duration = match args.duration {
        Some(d) if d.is_finite() && d > 0.0 => Some((d * args.rate as f64).ceil() as u64),
        Some(_) => bail!("--synthetic-duration must be a positive number"),
        None => None,
    };
    let limit = match (args.count, by_duration) {
        (Some(c), Some(d)) => Some(c.min(d)),
        (c, d) => c.or(d),
    };
    let template = DataTemplate::new(channel, args.port, args.size).context("--synthetic-size")?;
    Ok(SyntheticOptions {
        channel,
        rate: args.rate,
        payload_len: args.size,
        port: args.port,
        limit,
        delay: Duration::from_secs_f64(args.delay),
        template,
    })
}
