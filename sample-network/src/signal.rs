//! SIGINT/SIGTERM as a flag, so a tool can stop cleanly and still print its summary;
//! SIGUSR1 as a request for a status report.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM without SA_RESTART, so blocking
/// calls like poll() return EINTR and the caller sees the flag at once.
pub fn install_stop_handler() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        install(signal, on_signal)?;
    }
    Ok(())
}

/// Sets `handler` for `signal`, with an empty mask and without SA_RESTART.
fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we set the handler and an empty mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as *const () as libc::sighandler_t;
    // SAFETY: sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: action is fully initialised; the old action is not needed.
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Name of the signal that requested the stop, if any.
pub fn stop_signal_name() -> Option<&'static str> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => None,
    }
}

static STATUS_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_status_signal(_: libc::c_int) {
    STATUS_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs a SIGUSR1 handler that asks for a status report (see
/// [`status_requested`]); no SA_RESTART, so poll() returns EINTR and the
/// status goes out at once.
pub fn install_status_handler() -> io::Result<()> {
    install(libc::SIGUSR1, on_status_signal)
}

/// True once per SIGUSR1 received since the last call.
pub fn status_requested() -> bool {
    STATUS_REQUESTED.swap(false, Ordering::SeqCst)
}
