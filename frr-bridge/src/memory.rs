//! How the daemon's heap gives memory back. Its memory follows its flows:
//! 10,000 flows over 1,000 tunnels take tens of MB, and an operator who
//! empties the wanted set expects most of it back.
//!
//! glibc's allocator keeps freed memory in its arenas, and gives each
//! thread that contends for the heap an arena of its own (up to 8 per
//! core). Freed blocks scattered over several arenas keep pages resident
//! that `malloc_trim` cannot return: the scale benchmark's daemon held
//! 15 MB in two worker-thread arenas that had 0.5 MB in use after its
//! flows were gone. The daemon is mostly a control plane and its data path
//! does not allocate per packet, so one arena costs no measurable
//! contention (the scale bench's userspace data plane at 10,000 pkt/s:
//! 12.4 % of a core with one arena, 12.9 % before) and keeps free memory in
//! one place, where trimming returns it.

/// One malloc arena for the whole process. Call before any thread starts
/// (arenas made before it stay).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn use_one_arena() {
    // SAFETY: mallopt only changes glibc's allocator settings; called
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn use_one_arena() {}

/// Returns the heap's free pages to the kernel (a few ms at most; nothing
/// when there is nothing to return).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}
