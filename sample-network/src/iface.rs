//! Interface lookup by name or address (`rcv0`, `10.77.2.2`, `fe80::1`).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error("listing interfaces failed: {0}")]
    List(#[from] io::Error),
    #[error("no interface named or addressed {0:?}")]
    NotFound(String),
    #[error("interface {name} has no {family} address")]
    NoAddress { name: String, family: &'static str },
}

impl Interface {
    /// The interface named `spec`, or the one holding address `spec`.
    pub fn find(spec: &str) -> Result<Interface, InterfaceError> {
        let all = list()?;
        let wanted_addr = spec.parse::<IpAddr>().ok();
        all.into_iter()
            .find(|i| match wanted_addr {
                Some(IpAddr::V4(a)) => i.ipv4.contains(&a),
                Some(IpAddr::V6(a)) => i.ipv6.contains(&a),
                None => i.name == spec,
            })
            .ok_or_else(|| InterfaceError::NotFound(spec.to_owned()))
    }

    /// First IPv4 address (what `IP_ADD_SOURCE_MEMBERSHIP` and `IP_MULTICAST_IF` take).
    pub fn first_ipv4(&self) -> Result<Ipv4Addr, InterfaceError> {
        self.ipv4
            .first()
            .copied()
            .ok_or_else(|| InterfaceError::NoAddress {
                name: self.name.clone(),
                family: "IPv4",
            })
    }
}

/// All interfaces with their addresses (getifaddrs).
pub fn list() -> Result<Vec<Interface>, InterfaceError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let iface = by_name.entry(name.clone()).or_insert_with(|| Interface {
            index: index_of(entry.ifa_name),
            name,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        });
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
            let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            iface
                .ipv4
                .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        } else if family == libc::AF_INET6 {
            // SAFETY: family AF_INET6 means the sockaddr is a sockaddr_in6.
            let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
            iface.ipv6.push(Ipv6Addr::from(sin6.sin6_addr.s6_addr));
        }
    }
    // SAFETY: head came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(by_name.into_values().collect())
}

fn index_of(name: *const libc::c_char) -> u32 {
    // SAFETY: name is a valid NUL-terminated C string.
    unsafe { libc::if_nametoindex(name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_name_and_address() {
        let by_name = Interface::find("lo");
        let by_addr = Interface::find("127.0.0.1");
        match (by_name, by_addr) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.name, "lo");
                assert_eq!(a, b);
                assert!(a.index > 0);
                assert_eq!(a.first_ipv4().ok(), Some(Ipv4Addr::LOCALHOST));
            }
            other => panic!("lookup of lo failed: {other:?}"),
        }
        assert!(matches!(
            Interface::find("no-such-if0"),
            Err(InterfaceError::NotFound(_))
        ));
    }
}
