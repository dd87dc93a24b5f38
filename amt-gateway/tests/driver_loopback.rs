//! The tokio driver against a scripted relay on 127.0.0.1 (loopback only).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amt_gateway::wire::RecordType;
use amt_gateway::wire::amt::{self, Message, ResponseMac};
use amt_gateway::wire::encap::EncapReport;
use amt_gateway::wire::ipv4::Ipv4Header;
use amt_gateway::{
    DriverConfig, PacketSink, RelayEvent, TunnelConfig, TunnelEvent, TunnelState, spawn_tunnel,
};
use ingest_types::SourceGroup;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A channel from its parts (unchecked, so tests can also build bad ones).
fn sg(source: IpAddr, group: IpAddr) -> SourceGroup {
    SourceGroup { source, group }
}

#[derive(Default)]
struct Collect(Mutex<Vec<Vec<u8>>>);

impl PacketSink for Collect {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .push(packet.to_vec());
        Ok(())
    }
}

async fn recv_msg(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("relay timed out waiting for the gateway")
        .expect("recv");
    buf.truncate(n);
    (buf, from)
}

fn data_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    common::multicast_data(src.into(), dst.into(), ttl, 16)
}

/// The next event that is not a data edge (DataFlowing/DataStopped say
/// when data starts and stops; these tests follow the tunnel's life).
async fn next_event(rx: &mut mpsc::UnboundedReceiver<RelayEvent>) -> TunnelEvent {
    loop {
        let event = timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event")
            .expect("channel")
            .event;
        if !matches!(
            event,
            TunnelEvent::DataFlowing { .. } | TunnelEvent::DataStopped { .. }
        ) {
            return event;
        }
    }
}

#[tokio::test]
async fn discovery_join_data_and_graceful_close_over_loopback() {
    let relay_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = relay_sock.local_addr().unwrap();
    let sink = Arc::new(Collect::default());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut cfg = DriverConfig::new(TunnelConfig::new(relay));
    cfg.rng_seed = Some(1);
    let (handle, join) = spawn_tunnel(cfg, sink.clone(), ev_tx).unwrap();

    // Discovery -> Advertisement naming 127.0.0.1.
    let (bytes, gw) = recv_msg(&relay_sock).await;
    let Ok(Message::RelayDiscovery(d)) = Message::decode(&bytes) else {
        panic!("{bytes:?}")
    };
    let adv = Message::RelayAdvertisement(amt::RelayAdvertisement {
        nonce: d.nonce,
        relay: IpAddr::V4(Ipv4Addr::LOCALHOST),
    });
    relay_sock.send_to(&adv.to_vec(), gw).await.unwrap();
    assert_eq!(
        next_event(&mut ev_rx).await,
        TunnelEvent::RelayDiscovered { relay }
    );

    let s: IpAddr = "192.0.2.1".parse().unwrap();
    let g: IpAddr = "232.1.1.1".parse().unwrap();
    assert_eq!(handle.subscribe(sg(s, g)).await, Ok(true));

    // Request -> Query (with a G trailer) -> Update with the MAC.
    let (bytes, from) = recv_msg(&relay_sock).await;
    assert_eq!(from, gw, "one socket for the tunnel's life");
    let Ok(Message::Request(r)) = Message::decode(&bytes) else {
        panic!("{bytes:?}")
    };
    let mac = ResponseMac([1, 2, 3, 4, 5, 6]);
    let query = common::general_query_message(r.nonce, mac, Some(gw));
    relay_sock.send_to(&query, gw).await.unwrap();
    assert!(matches!(
        next_event(&mut ev_rx).await,
        TunnelEvent::Up { .. }
    ));
    let (bytes, _) = recv_msg(&relay_sock).await;
    let Ok(Message::MembershipUpdate(u)) = Message::decode(&bytes) else {
        panic!("{bytes:?}")
    };
    assert_eq!((u.mac, u.nonce), (mac, r.nonce));

    // Data: subscribed with TTL 1 (raised to 2), unsubscribed, and from a stranger.
    let (IpAddr::V4(s4), IpAddr::V4(g4)) = (s, g) else {
        unreachable!()
    };
    for _ in 0..10 {
        relay_sock
            .send_to(&data_packet(s4, g4, 1), gw)
            .await
            .unwrap();
    }
    relay_sock
        .send_to(&data_packet(Ipv4Addr::new(192, 0, 2, 99), g4, 5), gw)
        .await
        .unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&data_packet(s4, g4, 5), gw).await.unwrap();

    let snap = timeout(Duration::from_secs(5), async {
        loop {
            let snap = handle.snapshot().await.unwrap();
            if snap.stats.data_packets >= 10 && snap.stats.dropped.total() >= 2 {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("data delivered");
    assert_eq!(snap.state, TunnelState::Up);
    assert_eq!(snap.stats.data_packets, 10);
    assert_eq!(snap.driver.ttl_raised, 10);
    assert_eq!(snap.subscriptions.len(), 1);
    assert_eq!(snap.subscriptions[0].stats.packets, 10);
    assert!(snap.driver.recv_buffer_bytes > 0);
    assert_eq!(snap.local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    {
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 10);
        let h = Ipv4Header::parse(&got[0]).unwrap();
        assert_eq!(h.ttl(), 2);
        assert!(h.checksum_ok());
        assert_eq!(IpAddr::V4(h.src()), s);
    }

    // Graceful close: BLOCK (QRV times), then Teardown naming our address.
    let closer = handle.clone();
    let close = tokio::spawn(async move { closer.close().await });
    let mut blocks = 0;
    loop {
        let (bytes, _) = recv_msg(&relay_sock).await;
        match Message::decode(&bytes).unwrap() {
            Message::MembershipUpdate(u) => {
                let Ok(EncapReport::Igmp { report, .. }) = EncapReport::parse(u.report) else {
                    panic!()
                };
                // Leftover ALLOW repetitions may precede the leave.
                if report.records[0].record_type == RecordType::BlockOldSources {
                    blocks += 1;
                }
            }
            Message::Teardown(t) => {
                assert_eq!(t.gateway, gw);
                assert_eq!(t.mac, mac);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(blocks, 2);
    timeout(Duration::from_secs(5), close)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut ev_rx).await, TunnelEvent::Closed);
    timeout(Duration::from_secs(5), join)
        .await
        .unwrap()
        .unwrap();
    assert!(handle.is_finished());
    assert_eq!(handle.snapshot().await, Err(amt_gateway::DriverError::Gone));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_tunnel() {
    let relay_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = relay_sock.local_addr().unwrap();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut tc = TunnelConfig::new(relay);
    tc.skip_discovery = true;
    let (handle, join) = spawn_tunnel(
        DriverConfig::new(tc),
        Arc::new(amt_gateway::DiscardSink),
        ev_tx,
    )
    .unwrap();
    drop(handle);
    timeout(Duration::from_secs(5), join)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut ev_rx).await, TunnelEvent::Closed);
}

/// RFC 7450 lets relays send Multicast Data over IPv6 with a zero UDP
/// checksum; the driver's socket must accept it. Skipped without IPv6.
#[tokio::test]
async fn zero_checksum_ipv6_data_is_accepted() {
    use std::os::fd::AsRawFd;
    let Ok(std_sock) = std::net::UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback; skipped");
        return;
    };
    let one: libc::c_int = 1;
    // UDP_NO_CHECK6_TX: send with a zero checksum.
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std_sock.as_raw_fd(),
            libc::IPPROTO_UDP,
            libc::UDP_NO_CHECK6_TX,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    std_sock.set_nonblocking(true).unwrap();
    let relay_sock = UdpSocket::from_std(std_sock).unwrap();
    let relay = relay_sock.local_addr().unwrap();
    let sink = Arc::new(Collect::default());
    let (ev_tx, _ev_rx) = mpsc::unbounded_channel();
    let mut tc = TunnelConfig::new(relay);
    tc.skip_discovery = true;
    let (handle, _join) = spawn_tunnel(DriverConfig::new(tc), sink.clone(), ev_tx).unwrap();
    let s: IpAddr = "192.0.2.1".parse().unwrap();
    let g: IpAddr = "232.1.1.1".parse().unwrap();
    handle.subscribe(sg(s, g)).await.unwrap();
    let (bytes, gw) = recv_msg(&relay_sock).await;
    let Ok(Message::Request(r)) = Message::decode(&bytes) else {
        panic!("{bytes:?}")
    };
    let query = common::general_query_message(r.nonce, ResponseMac([9; 6]), None);
    relay_sock.send_to(&query, gw).await.unwrap();
    for _ in 0..5 {
        relay_sock
            .send_to(
                &data_packet(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(232, 1, 1, 1), 9),
                gw,
            )
            .await
            .unwrap();
    }
    timeout(Duration::from_secs(5), async {
        while sink.0.lock().unwrap().len() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("zero-checksum data delivered");
    handle.close().await.unwrap();
}
