//! Reverse-lookup owner names (RFC 1035 in-addr.arpa, RFC 3596 ip6.arpa).

use std::fmt::Write;
use std::net::IpAddr;

/// The reverse name of `addr`, fully qualified (trailing dot):
/// `4.185.212.23.in-addr.arpa.` or 32 reversed nibbles + `ip6.arpa.`.
pub fn reverse_name(addr: IpAddr) -> String {
    let mut name = String::with_capacity(73);
    match addr {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
            name.push_str("in-addr.arpa.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            name.push_str("ip6.arpa.");
        }
    }
    name
}

/// The DORMS SRV owner name: `_dorms._tcp.<reverse name>`.
pub fn dorms_srv_name(source: IpAddr) -> String {
    format!("_dorms._tcp.{}", reverse_name(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn research_examples() {
        type Name = fn(IpAddr) -> String;
        let cases: [(Name, &str, &str); 4] = [
            (reverse_name, "23.212.185.4", "4.185.212.23.in-addr.arpa."),
            (
                reverse_name,
                "2001:db8::1",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            ),
            (
                dorms_srv_name,
                "23.212.185.4",
                "_dorms._tcp.4.185.212.23.in-addr.arpa.",
            ),
            (
                reverse_name,
                "2600:14e0::3",
                "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.4.1.0.0.6.2.ip6.arpa.",
            ),
        ];
        for (name, addr, expected) in cases {
            assert_eq!(name(addr.parse().unwrap()), expected, "{addr}");
        }
    }
}
