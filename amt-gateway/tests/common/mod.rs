//! What a scripted relay sends a gateway, shared by the integration tests
//! and the data-path bench (`examples/datapath_bench.rs` includes this file).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use amt_gateway::wire::amt::{MULTICAST_DATA_HEADER, MembershipQuery, Message, ResponseMac};
use amt_gateway::wire::ip::IpRepr;
use amt_gateway::wire::ipv4::PROTO_UDP;
use amt_gateway::wire::{encap, igmp};

/// A relay's answer to the Request with `nonce`: a Membership Query
/// carrying an IGMPv3 General Query (Max Resp 1 s, QRV 2, QQIC 125) from
/// 127.0.0.1 with Router Alert, with the G trailer when `gateway` is set.
pub fn general_query_message(nonce: u32, mac: ResponseMac, gateway: Option<SocketAddr>) -> Vec<u8> {
    let query = encap::igmpv3_query_datagram(
        Ipv4Addr::LOCALHOST,
        &igmp::QueryRepr::general(10, 2, 125),
        true,
    )
    .expect("a general query fits its datagram");
    Message::MembershipQuery(MembershipQuery {
        limit: false,
        gateway_flag: gateway.is_some(),
        mac,
        nonce,
        query: &query,
        gateway,
    })
    .to_vec()
}

/// AMT Multicast Data carrying a UDP packet from `src` to `dst` with this
/// TTL and `payload_len` zero bytes after the (zero) UDP header.
pub fn multicast_data(src: IpAddr, dst: IpAddr, ttl: u8, payload_len: usize) -> Vec<u8> {
    let ip = IpRepr::new(src, dst, PROTO_UDP, ttl, 8 + payload_len).expect("one address family");
    let (packet, _) = ip.packet().expect("a packet within the IP length limit");
    let mut message = MULTICAST_DATA_HEADER.to_vec();
    message.extend(packet);
    message
}
