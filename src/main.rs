//! The `cloakbench` binary: all the work is in the library; see `cloakbench --help`.
fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`cloakbench models list | head`)
    // would panic; like other command-line tools, end quietly instead.
    #[cfg(unix)]
    // SAFETY: called first thing, before any thread exists; SIG_DFL is always a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // MKL picks its summation order by the alignment of each buffer, which differs from one
    // process to the next: the same cloak then differed in a few pixels between two runs. Strict
    // conditional numerical reproducibility makes a seed give the same bytes in every run.
    if std::env::var_os("MKL_CBWR").is_none() {
        // SAFETY: no other thread exists yet, and nothing has read the environment.
        unsafe { std::env::set_var("MKL_CBWR", "AUTO,STRICT") };
    }
    cloakbench::cli::main()
}
