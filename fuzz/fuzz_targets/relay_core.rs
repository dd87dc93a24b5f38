//! The lab relay's real entry point for datagrams from gateways:
//! `amt_gateway::relay::Relay::handle_datagram` (sans-IO), driven by a
//! sequence of datagrams from several gateways, timer ticks and forwarded
//! packets.
//!
//! Input: one config byte, then frames (`fuzz_support::Frames`), each a
//! control byte and a body:
//! - op 0 (control & 3): a datagram `body` from the gateway picked by bits
//!   2-3. Bit 4 writes the MAC and nonce of the last Query the relay sent
//!   to that gateway into an Update or Teardown (as a gateway echoes
//!   them); bit 5 also writes that gateway's address into a Teardown;
//!   bit 6 repairs the checksums of an Update's inner datagram.
//! - op 1: time passes (`body` u16 in 100 ms units) and timers run.
//! - op 2: a native packet of the (S,G) at index `body[0]` is forwarded.
//! - op 3: the refuse (L) flag toggles.
//!
//! Asserts: every datagram the relay sends is a valid AMT message of a kind
//! a relay sends, addressed to a gateway that spoke to it; the channel
//! index (`channels`) always equals the union of the gateways' channels;
//! the channel events, replayed into a model, always give exactly the
//! relay's (gateway, channel) pairs and wanted channels (no event lost,
//! doubled or out of order).
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use amt_gateway::relay::{ChannelEvent, Relay, RelayConfig};
use amt_gateway::wire::amt::{Message, ResponseMac, encode_gateway_ip};
use fuzz_support::{Frames, advance_clock, fix_datagram_checksums};
use ingest_types::SourceGroup;
use libfuzzer_sys::fuzz_target;

const MAX_STEPS: usize = 64;

fn gateway(index: u8) -> SocketAddr {
    match index & 3 {
        0 => SocketAddr::from(([198, 51, 100, 2], 40000)),
        1 => SocketAddr::from(([198, 51, 100, 3], 40001)),
        2 => "[2001:db8::2]:40000".parse().unwrap(),
        _ => "[::ffff:198.51.100.2]:40000".parse().unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let cfg = RelayConfig {
        refuse: config & 1 != 0,
        send_gateway_address: config & 2 != 0,
        advertised: (config & 4 != 0).then_some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20))),
        nonces_per_gateway: usize::from(config >> 4).max(1),
        max_pending_gateways: 2,
        ..RelayConfig::default()
    };
    let local_ip: IpAddr = if config & 8 != 0 {
        "2001:db8::20".parse().unwrap()
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20))
    };
    let mut now = Instant::now();
    let mut relay = Relay::new(cfg, now, u64::from(config));
    let mut last_query: HashMap<SocketAddr, (ResponseMac, u32)> = HashMap::new();
    let mut spoke: BTreeSet<SocketAddr> = BTreeSet::new();
    // What the channel events say the relay holds.
    let mut pairs: BTreeSet<(SocketAddr, SourceGroup)> = BTreeSet::new();
    let mut wanted: BTreeSet<SourceGroup> = BTreeSet::new();

    for (control, body) in Frames::new(rest).take(MAX_STEPS) {
        match control & 3 {
            0 => {
                let from = gateway(control >> 2);
                spoke.insert(from);
                let mut payload = body.to_vec();
                if control & 0x10 != 0
                    && matches!(payload.first(), Some(5 | 7))
                    && payload.len() >= 12
                    && let Some((mac, nonce)) = last_query.get(&from)
                {
                    payload[2..8].copy_from_slice(&mac.0);
                    payload[8..12].copy_from_slice(&nonce.to_be_bytes());
                }
                if control & 0x20 != 0 && payload.first() == Some(&7) && payload.len() >= 30 {
                    payload[12..14].copy_from_slice(&from.port().to_be_bytes());
                    payload[14..30].copy_from_slice(&encode_gateway_ip(from.ip()));
                }
                if control & 0x40 != 0 && payload.first() == Some(&5) && payload.len() > 12 {
                    fix_datagram_checksums(&mut payload[12..]);
                }
                let _ = relay.handle_datagram(now, from, local_ip, &payload);
            }
            1 => {
                advance_clock(&mut relay, &mut now, body, 10, Duration::from_millis(100));
            }
            2 => {
                let channels: Vec<SourceGroup> = relay.channels().into_iter().collect();
                if !channels.is_empty() {
                    let index = usize::from(body.first().copied().unwrap_or(0)) % channels.len();
                    let sent_to = relay.forward(channels[index], 1200).len();
                    assert!(sent_to > 0, "an indexed channel has a gateway");
                }
            }
            _ => {
                let refuse = !relay.config().refuse;
                relay.set_refuse(refuse);
            }
        }
        while let Some(tx) = relay.poll_transmit() {
            assert!(
                spoke.contains(&tx.destination),
                "sent to {:?}",
                tx.destination
            );
            match Message::decode(&tx.payload).expect("the relay sends valid AMT messages") {
                Message::RelayAdvertisement(_) => {}
                Message::MembershipQuery(q) => {
                    last_query.insert(tx.destination, (q.mac, q.nonce));
                }
                other => panic!("a relay never sends {other:?} from its control path"),
            }
        }
        while let Some(event) = relay.poll_channel_event() {
            match event {
                ChannelEvent::Added { gateway, channel } => {
                    assert!(pairs.insert((gateway, channel)), "added twice: {event:?}");
                }
                ChannelEvent::Removed {
                    gateway, channel, ..
                } => {
                    assert!(
                        pairs.remove(&(gateway, channel)),
                        "removed unknown: {event:?}"
                    );
                }
                ChannelEvent::Wanted(channel) => {
                    assert!(wanted.insert(channel), "wanted twice: {event:?}");
                }
                ChannelEvent::Unwanted(channel) => {
                    assert!(wanted.remove(&channel), "unwanted unknown: {event:?}");
                }
            }
        }
        let held: BTreeSet<(SocketAddr, SourceGroup)> = relay
            .gateways()
            .iter()
            .flat_map(|g| g.channels.iter().map(|(sg, _)| (g.gateway, *sg)))
            .collect();
        assert_eq!(held, pairs, "channel events out of step with the gateways");
        let from_gateways: BTreeSet<SourceGroup> = held.iter().map(|(_, sg)| *sg).collect();
        assert_eq!(relay.channels(), from_gateways, "channel index out of step");
        assert_eq!(wanted, from_gateways, "Wanted/Unwanted events out of step");
    }
    let _ = relay.stats();
});
