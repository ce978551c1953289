//! Allocator settings. glibc serves large blocks from its heaps and, after a free, keeps them
//! (its mmap threshold grows to 32 MiB as big blocks come and go), so a daemon that fitted a
//! few 12 MP photos stays tens of MiB larger for good. Blocks of 1 MiB and more (decoded
//! pictures, resize buffers, data URIs) are therefore always mapped, and unmapped when freed
//! (measured: 17 MiB resident after ten 12 MP fits, against 26 MiB with a 4 MiB threshold; the
//! price is ~1.5 ms of page faults on a 3 MP pass-through's data URI);
//! the heaps are trimmed beyond 4 MiB free; and at most two arenas serve the threads (each
//! blocking thread would otherwise get its own, each keeping its own free memory).

/// Applies the settings above; call once, before the threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
