//! The gateway's real entry point for datagrams from the network:
//! `amt_gateway::Tunnel::handle_datagram` (sans-IO state machine), driven
//! through discovery, handshake, data and teardown by a sequence of
//! datagrams, timer ticks and (un)subscriptions.
//!
//! Input: one config byte, then frames (`fuzz_support::Frames`), each a
//! control byte and a body:
//! - op 0 (control & 3): a datagram `body` from the address picked by bits
//!   2-3 (0: the relay in use, 1: the discovery address, 2: a stranger,
//!   3: the relay's address on another port). Bit 4 writes the nonce of the
//!   last Discovery (into an Advertisement) or of the pending Request of
//!   the family in bit 5 (into a Query), as a relay would echo it; bit 6
//!   repairs the checksums of a Query's inner datagram. Without these the
//!   fuzzer would almost never get past the nonce and checksum checks.
//! - op 1: time passes (`body` u16 in 10 ms units) and timers run.
//! - op 2: subscribe (bit 2 clear) or unsubscribe an (S,G) made from `body`.
//! - op 3: bit 2 clear: close the tunnel; set: `connect` the family in
//!   bit 3 (a relay race's handshake without a report).
//!
//! Asserts: every datagram the tunnel sends decodes as an AMT message of a
//! kind a gateway sends, and the reports in its Updates parse; accepted
//! data is for a subscribed (S,G), its range lies inside the datagram and
//! holds that packet.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use amt_gateway::gateway::Family;
use amt_gateway::wire::amt::{Message, QueryKind};
use amt_gateway::wire::encap::EncapReport;
use amt_gateway::wire::ip;
use amt_gateway::{Received, Tunnel, TunnelConfig};
use fuzz_support::{Frames, advance_clock, fix_datagram_checksums};
use ingest_types::SourceGroup;
use libfuzzer_sys::fuzz_target;

const MAX_STEPS: usize = 64;

fn discovery() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 1], 2268))
}

fn stranger() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 66], 2268))
}

fn channel_from(body: &[u8]) -> SourceGroup {
    if body.len() >= 32 {
        let mut s = [0u8; 16];
        let mut g = [0u8; 16];
        s.copy_from_slice(&body[..16]);
        g.copy_from_slice(&body[16..32]);
        SourceGroup {
            source: IpAddr::V6(Ipv6Addr::from(s)),
            group: IpAddr::V6(Ipv6Addr::from(g)),
        }
    } else if body.len() >= 8 {
        SourceGroup {
            source: IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
            group: IpAddr::V4(Ipv4Addr::new(body[4], body[5], body[6], body[7])),
        }
    } else {
        // The lab's channels.
        match body.first().copied().unwrap_or(0) % 2 {
            0 => SourceGroup {
                source: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)),
                group: IpAddr::V4(Ipv4Addr::new(232, 1, 1, 1)),
            },
            _ => SourceGroup {
                source: "2001:db8:5100::4".parse().unwrap(),
                group: "ff3e::8000:1".parse().unwrap(),
            },
        }
    }
}

#[derive(Default)]
struct Echo {
    discovery_nonce: Option<u32>,
    request_nonce: [Option<u32>; 2],
}

fn drain(tunnel: &mut Tunnel, echo: &mut Echo) {
    while let Some(tx) = tunnel.poll_transmit() {
        let msg = Message::decode(&tx.payload).expect("the tunnel sends valid AMT messages");
        match msg {
            Message::RelayDiscovery(d) => echo.discovery_nonce = Some(d.nonce),
            Message::Request(r) => {
                let f = usize::from(r.kind == QueryKind::Mldv2);
                echo.request_nonce[f] = Some(r.nonce);
            }
            Message::MembershipUpdate(u) => {
                EncapReport::parse(u.report).expect("the tunnel's reports parse");
            }
            Message::Teardown(_) => {}
            other => panic!("a gateway never sends {other:?}"),
        }
    }
    while tunnel.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = TunnelConfig::new(discovery());
    cfg.skip_discovery = config & 1 != 0;
    if config & 2 != 0 {
        cfg.no_data_timeout = None;
    }
    if config & 4 != 0 {
        cfg.stall_request_after = None;
    }
    let local = if config & 8 != 0 {
        SocketAddr::from(([198, 51, 100, 2], 40000))
    } else {
        "[fe80::2]:40000".parse().unwrap()
    };
    let start = Instant::now();
    let mut now = start;
    let mut tunnel = Tunnel::new(cfg, local, now, u64::from(config));
    let mut echo = Echo::default();
    // Start with the lab channels joined so data and reports are reachable.
    if config & 16 == 0 {
        let _ = tunnel.subscribe(channel_from(&[0]), now);
        let _ = tunnel.subscribe(channel_from(&[1]), now);
    }
    drain(&mut tunnel, &mut echo);

    for (control, body) in Frames::new(rest).take(MAX_STEPS) {
        match control & 3 {
            0 => {
                let from = match (control >> 2) & 3 {
                    0 => tunnel.relay().unwrap_or(discovery()),
                    1 => discovery(),
                    2 => stranger(),
                    _ => {
                        let relay = tunnel.relay().unwrap_or(discovery());
                        SocketAddr::new(relay.ip(), relay.port().wrapping_add(1))
                    }
                };
                let mut payload = body.to_vec();
                if control & 0x10 != 0 {
                    match payload.first() {
                        Some(2) if payload.len() >= 8 => {
                            if let Some(n) = echo.discovery_nonce {
                                payload[4..8].copy_from_slice(&n.to_be_bytes());
                            }
                        }
                        Some(4) if payload.len() >= 12 => {
                            let f = usize::from(control & 0x20 != 0);
                            if let Some(n) = echo.request_nonce[f] {
                                payload[8..12].copy_from_slice(&n.to_be_bytes());
                            }
                        }
                        _ => {}
                    }
                }
                if control & 0x40 != 0 && payload.first() == Some(&4) && payload.len() > 12 {
                    fix_datagram_checksums(&mut payload[12..]);
                }
                match tunnel.handle_datagram(now, from, &payload) {
                    Received::Data { inner, sg } => {
                        assert!(tunnel.is_subscribed(sg), "data accepted for {sg:?}");
                        let packet = payload.get(inner).expect("data range inside the datagram");
                        let seen = ip::inspect(packet).expect("accepted data is an IP packet");
                        assert_eq!((seen.src, seen.dst), (sg.source, sg.group));
                        assert_eq!(seen.len, packet.len());
                    }
                    Received::Control | Received::Dropped(_) => {}
                }
            }
            1 => {
                advance_clock(&mut tunnel, &mut now, body, 100, Duration::from_millis(10));
            }
            2 => {
                let sg = channel_from(body);
                if control & 4 == 0 {
                    let _ = tunnel.subscribe(sg, now);
                } else {
                    tunnel.unsubscribe(sg, now);
                }
            }
            _ if control & 4 == 0 => tunnel.close(now),
            _ => {
                let family = if control & 8 == 0 {
                    Family::V4
                } else {
                    Family::V6
                };
                let _ = tunnel.connect(family, now);
            }
        }
        drain(&mut tunnel, &mut echo);
    }
    let _ = (tunnel.state(), tunnel.stats(), start);
});
