//! Tunes glibc's malloc before the process starts its threads.
//!
//! - **Arenas.** glibc gives every thread that allocates under contention an arena of its own,
//!   up to eight per core, and each arena keeps the memory freed into it. The daemon's threads
//!   (the runtime's workers, the blocking pool that parses pages, one thread per SQLite
//!   connection) each pass large, short-lived page buffers through their own arena, so the
//!   process held a third more memory than its live heap (docs/benchmarks.md, issue 12). Two
//!   arenas keep the contention low and the slack small.
//! - **Thresholds.** glibc raises its mmap threshold to the size of each large block freed, up
//!   to 32 MiB, so after the first multi-megabyte page a page's text and its buffers come from
//!   the heap, where they fragment it and what is freed is kept. Fixed thresholds (blocks of
//!   1 MiB and more are mapped and unmapped whole; the heap's top is given back above 4 MiB)
//!   took 6–7 MB off the drain's peak for ~1–3% more CPU (issue 12). 128 KiB cost 9–12%.
//!
//! These can only be set before malloc starts, through the environment: the process runs
//! itself again, once, with the variables the operator has not set. Safe code cannot call
//! `mallopt`, and the crate forbids unsafe code.

/// What glibc's malloc is told; the container image sets the same.
pub const SETTINGS: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ("MALLOC_TRIM_THRESHOLD_", "4194304"),
];

/// Replaces this process with itself under [`SETTINGS`], keeping any the operator set (their
/// choice wins, and having them all set is what stops a second run), unless this is not glibc.
/// Returns only when nothing was done or the exec failed, and the process then goes on as it is.
pub fn tune_malloc() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let unset: Vec<(&str, &str)> = SETTINGS
        .into_iter()
        .filter(|(var, _)| std::env::var_os(var).is_none())
        .collect();
    if unset.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` returns only on failure; running untuned is better than not running.
        let _ = command.args(args).envs(unset).exec();
    }
}
