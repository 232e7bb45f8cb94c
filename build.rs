//! Makes the cloakbench binaries find libtorch at run time.
//!
//! torch-sys links libtorch but its link arguments do not propagate to dependents, and the
//! libraries live inside the Python torch wheel (see scripts/setup.sh), not on the system path.
//! So we add an rpath to the wheel's `lib/` folder, and link `libtorch` with `--no-as-needed`:
//! libtorch.so is what pulls in libtorch_cuda.so, whose static initialisers register the CUDA
//! backend. Without it the linker drops the "unused" library and CUDA is never seen.
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let lib_dir = libtorch_lib_dir();
    let dir = lib_dir.display();
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
}

/// The folder holding libtorch.so: `$LIBTORCH/lib`, or the active Python's torch wheel.
fn libtorch_lib_dir() -> PathBuf {
    if let Ok(root) = env::var("LIBTORCH") {
        return PathBuf::from(root).join("lib");
    }
    let python = if env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let output = Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to locate torch: {e}; run `make setup` first"));
    if !output.status.success() {
        panic!(
            "{python} could not import torch ({}); run `make setup`, which installs the pinned wheel in .venv",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    // Resolve the .venv link: the rpath then names the shared venv in $CLOAKBENCH_HOME, which
    // outlives any one clone of the repository.
    dir.canonicalize().unwrap_or(dir)
}
