//! Process-wide settings that a helper binary chooses in its own `main`.
//! The runtime never applies them itself: linking a library must not change
//! how a process allocates or which modes its files get.
//!
//! Each helper binary of the suite, in `main` before anything else:
//!
//! ```text
//! #[global_allocator]
//! static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
//!
//! fn main() -> ExitCode {
//!     cgp_runtime::process::helper_defaults();
//!     …
//! }
//! ```
//!
//! mimalloc: request buffers are allocated on the reader thread and freed on
//! the workers, replies the other way round; glibc's malloc spent more
//! instructions on that cross-thread traffic than the whole request path
//! (the runtime benchmark in the README).

/// Files the process creates are for its own user only (umask 077), and its
/// memory is kept in small pages. Both for helpers: their stores, spools and
/// logs hold account names and hashes, and they run for weeks.
pub fn helper_defaults() {
    // Stores, spools and log files hold account names and hashes: whatever
    // a helper creates is for its own user only, even where a code path does
    // not set a mode itself.
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    // mimalloc asks for transparent huge pages on its arenas (the kernel's
    // "madvise" mode grants them): every thread that allocates (the async
    // workers, sled's I/O threads) then holds 2 MiB pages. cgp-auth measured
    // about 35 MiB of resident memory at 256 requests in flight with them,
    // 14 MiB without. A failure only costs that memory.
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
