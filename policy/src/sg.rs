use std::fmt;
use std::net::IpAddr;

/// An SSM channel: (source, group). Ordered by source, then group, so sorted
/// output is stable (IPv4 sorts before IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceGroup {
    pub source: IpAddr,
    pub group: IpAddr,
}

impl SourceGroup {
    pub fn new(source: IpAddr, group: IpAddr) -> Self {
        Self { source, group }
    }
}

impl fmt::Display for SourceGroup {
    /// `(S,G)` in canonical text (IPv6 compressed lower case).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.source, self.group)
    }
}
