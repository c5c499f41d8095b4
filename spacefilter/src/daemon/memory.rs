//! The daemon's heap after bulk work. An import or a restart of a million
//! rules allocates and frees some hundred MiB of buffers among the nodes of
//! the maps that stay; glibc's allocator keeps what is freed for reuse, so
//! the daemon would stay at its peak. Large buffers are given their own
//! mappings, returned as soon as they are freed ([`tune`]), and the free
//! pages left among the maps' nodes are returned after each bulk change
//! ([`release`]). Other allocators go without.

/// Requests this large or larger get a mapping of their own. glibc raises
/// its threshold (up to 32 MiB) each time such a mapping is freed, which
/// sends the next bulk buffers to the heap, where they stay; a threshold
/// set explicitly stays.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Changes at least this large are bulk: their buffers are worth
/// returning.
pub(super) const BULK: usize = 16 * 1024;

/// Sets the allocator up, once, at start.
pub(super) fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes no pointers; M_MMAP_THRESHOLD (-3) is a glibc
    // parameter, and a value outside its range is refused, not applied.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 0 {
            log::debug!("the allocator keeps its own mmap threshold");
        }
        if libc::mallopt(libc::M_ARENA_MAX, 1) == 0 {
            log::debug!("the allocator keeps its own arena count");
        }
    }
}

/// Returns the heap's free pages to the system: after a bulk change.
pub(super) fn release() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and is safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
