//! Readiness of many sockets: an epoll set (level-triggered), waited on
//! with `ppoll` for sub-millisecond timeouts (the synthetic source's
//! pacing; `epoll_wait` counts in milliseconds). The cost of a wait does
//! not grow with the number of sockets (a relay may listen on thousands of
//! addresses).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a ready socket is to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Listener (AMT address) number.
    Control(usize),
    /// Native raw socket number.
    Native(usize),
}

const NATIVE_BIT: u64 = 1 << 63;

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Control(i) => i as u64,
            Token::Native(i) => i as u64 | NATIVE_BIT,
        }
    }

    fn decode(data: u64) -> Self {
        let index = (data & !NATIVE_BIT) as usize;
        if data & NATIVE_BIT != 0 {
            Token::Native(index)
        } else {
            Token::Control(index)
        }
    }
}

pub struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is a new descriptor nobody else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    /// Watches `fd` for input.
    pub fn add(&mut self, fd: RawFd, token: Token) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token.encode(),
        };
        // SAFETY: event is a valid epoll_event; both fds are open.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a watched socket is readable, `timeout` passes or a
    /// signal arrives, then puts the ready sockets into `ready`.
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<Token>) -> io::Result<()> {
        ready.clear();
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let mut fds = [libc::pollfd {
            fd: self.epoll.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: fds is a valid pollfd array and timeout a valid timespec;
        // a null sigmask keeps the current mask.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &timeout, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: events has room for its length; a zero timeout never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                0,
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        ready.extend(self.events[..n].iter().map(|e| Token::decode(e.u64)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Control(0),
            Token::Control(4095),
            Token::Native(0),
            Token::Native(7),
        ] {
            assert_eq!(Token::decode(t.encode()), t);
        }
    }

    #[test]
    fn reports_only_readable_sockets_and_honours_the_timeout() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut poller = Poller::new().unwrap();
        poller.add(a.as_raw_fd(), Token::Control(0)).unwrap();
        poller.add(b.as_raw_fd(), Token::Native(3)).unwrap();
        let mut ready = Vec::new();
        let started = std::time::Instant::now();
        poller.wait(Duration::from_millis(20), &mut ready).unwrap();
        assert!(ready.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(20));
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        poller.wait(Duration::from_secs(5), &mut ready).unwrap();
        assert_eq!(ready, vec![Token::Native(3)]);
    }
}
