//! Caps glibc's malloc arenas before the process starts its threads.
//!
//! glibc gives every thread that allocates under contention an arena of its own, up to eight per
//! core, and each arena keeps the memory freed into it. The daemon's threads (the runtime's
//! workers, the blocking pool that parses pages, one thread per SQLite connection) each pass
//! large, short-lived page buffers through their own arena, so the process held a third more
//! memory than its live heap (docs/benchmarks.md, issue 12). Two arenas keep the contention low
//! and the slack small. The cap can only be set before malloc starts, through the environment:
//! the process runs itself again, once, with `MALLOC_ARENA_MAX` set. Safe code cannot call
//! `mallopt`, and the crate forbids unsafe code.

/// The arenas glibc may use; the container image sets the same.
pub const ARENAS: &str = "2";

const VAR: &str = "MALLOC_ARENA_MAX";

/// Replaces this process with itself under `MALLOC_ARENA_MAX=2`, unless the variable is already
/// set (the operator's choice wins, and it stops a second run) or this is not glibc. Returns only
/// when nothing was done or the exec failed, and the process then goes on as it is.
pub fn cap_arenas() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(VAR).is_some() {
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
        // `exec` returns only on failure; running uncapped is better than not running.
        let _ = command.args(args).env(VAR, ARENAS).exec();
    }
}
