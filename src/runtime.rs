//! Making CPU results reproducible: the same seed gives the same bytes in every run on one
//! machine.
//!
//! Intel MKL (inside libtorch) picks its matrix-multiply kernels by the memory alignment of each
//! buffer, which differs from one process to the next, so the same cloak came out different in
//! a few pixels between two runs. Its strict conditional numerical reproducibility mode
//! (`MKL_CBWR=AUTO,STRICT`) fixes the summation order. MKL reads that variable once, at its
//! first call, so [`make_cpu_reproducible`] sets it first thing in `main`, checks that MKL
//! really runs in that mode, and if MKL had started before (a static initialiser of a library),
//! starts the binary again with the variable in its environment from the beginning. The mode in
//! force is recorded in every run's `_run.json`.

use std::os::raw::c_int;

unsafe extern "C" {
    /// `mkl_cbwr_get` of the MKL linked into libtorch_cpu (exported under this name).
    fn mkl_serv_cbwr_get(what: c_int) -> c_int;
}

/// `MKL_CBWR_AUTO | MKL_CBWR_STRICT`.
const AUTO_STRICT: c_int = 0x10002;
/// `MKL_CBWR_ALL`: ask for the whole setting.
const ALL: c_int = !0;
/// Set in the environment of the restarted process, so it never restarts again.
const RESTARTED: &str = "CLOAKBENCH_MKL_RESTARTED";

/// The CNR mode MKL runs in, as `MKL_CBWR` would spell it.
pub fn mkl_mode() -> String {
    // SAFETY: a read-only query of MKL's global setting; it takes no pointers.
    match unsafe { mkl_serv_cbwr_get(ALL) } {
        AUTO_STRICT => "AUTO,STRICT".into(),
        1 => "OFF".into(),
        2 => "AUTO".into(),
        3 => "COMPATIBLE".into(),
        other => format!("0x{other:x}"),
    }
}

/// Puts MKL in strict reproducible mode unless the user chose another in `MKL_CBWR`. Call it
/// first thing in `main`, before any thread exists. May replace the process (see the module).
pub fn make_cpu_reproducible() {
    if std::env::var_os("MKL_CBWR").is_some() && std::env::var_os(RESTARTED).is_none() {
        return; // the user's choice
    }
    // SAFETY: no other thread exists yet, and nothing has read the environment.
    unsafe { std::env::set_var("MKL_CBWR", "AUTO,STRICT") };
    if mkl_mode() == "AUTO,STRICT" || std::env::var_os(RESTARTED).is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env(RESTARTED, "1").exec();
    eprintln!("[cloakbench] warning: MKL is not in reproducible mode and restarting failed ({err}); CPU results may differ between runs");
}

static SIGTERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_sigterm(_: c_int) {
    SIGTERM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGTERM (what a scheduler sends before it kills a task) does not end the process
/// at once: the batch in progress finishes and is saved, then the run stops with an error
/// ([`sigterm_received`]), so a restarted task resumes after it.
pub fn stop_on_sigterm() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, note_sigterm as *const () as libc::sighandler_t);
    }
}

/// Whether SIGTERM arrived since [`stop_on_sigterm`].
pub fn sigterm_received() -> bool {
    SIGTERM.load(std::sync::atomic::Ordering::SeqCst)
}

/// Caps glibc's malloc arenas at 2 unless `MALLOC_ARENA_MAX` says otherwise. By default each
/// thread that allocates may get an arena of its own (up to 8 per core), and with libtorch's,
/// rayon's and the loaders' threads those arenas fragment: embedding 10,240 glint24 pictures
/// peaked at 831 MB against 606 MB for 1,024; with two arenas, 608 MB (the dataset no longer
/// shows in memory). Call it first thing in `main`, before any thread exists.
pub fn bound_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: a plain setting of glibc's allocator, made before any other thread runs.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Keeps memory libtorch frees for its next allocation instead of handing it back to the
/// kernel, unless `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` say
/// otherwise. By default glibc maps every block over its threshold (at most 32 MiB) afresh and
/// trims the heap's top when it is freed, so each forward pass's activations (51 MB for one
/// layer of a MobileNet at batch 32) come back as new pages that the kernel faults in and
/// zeroes: 330,000 page faults per batch of 32 through HSE's MobileNet, more than half of its
/// time on this machine. With both thresholds at 1 GiB, blocks below it come from the heap and
/// are reused (no faults after the first batch; see the README's "Memory reuse"). The process
/// keeps its high-water mark until it ends; measured peaks rose a little (embed stage,
/// 623-967 MiB before, 636-1047 after).
pub fn reuse_freed_memory() {
    let chosen = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"].iter().any(|v| std::env::var_os(v).is_some());
    if !chosen {
        const ONE_GIB: c_int = 1 << 30;
        // SAFETY: plain settings of glibc's allocator, made before any other thread runs.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB);
        }
    }
}
