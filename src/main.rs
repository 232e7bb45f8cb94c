//! The `cloakbench` binary: all the work is in the library; see `cloakbench --help`.
fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`cloakbench models list | head`)
    // would panic; like other command-line tools, end quietly instead.
    #[cfg(unix)]
    // SAFETY: called first thing, before any thread exists; SIG_DFL is always a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Memory follows the batch, not the dataset (see the function).
    cloakbench::runtime::bound_malloc_arenas();
    // Freed memory is reused, not faulted in again for every batch (see the function).
    cloakbench::runtime::reuse_freed_memory();
    // The same seed gives the same bytes in every run (MKL's strict reproducible mode).
    cloakbench::runtime::make_cpu_reproducible();
    cloakbench::cli::main()
}
