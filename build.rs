//! Makes the cloakbench binaries find libtorch at run time, and digests the code they are built
//! from: the whole crate (the run's manifest records it) and, for every source file, the files
//! it depends on (build/code_deps.rs); a stage's fingerprint includes its own file's digest, so
//! a rebuilt binary never reuses a table its code would now make differently, and keeps those
//! it would make the same.
//!
//! torch-sys links libtorch but its link arguments do not propagate to dependents, and the
//! libraries live inside the Python torch wheel (see scripts/setup.sh), not on the system path.
//! So we add an rpath to the wheel's `lib/` folder, and link `libtorch` with `--no-as-needed`:
//! libtorch.so is what pulls in libtorch_cuda.so, whose static initialisers register the CUDA
//! backend. Without it the linker drops the "unused" library and CUDA is never seen.
use std::{env, path::Path, path::PathBuf, process::Command};

use sha2::{Digest, Sha256};

#[path = "build/code_deps.rs"]
mod code_deps;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let lib_dir = libtorch_lib_dir();
    let dir = lib_dir.display();
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    println!("cargo:rustc-env=CLOAKBENCH_CODE_DIGEST={}", code_digest());
    write_source_digests();
}

/// `$OUT_DIR/code_digests.rs`: every source file's dependencies' digest, sorted by path, for
/// `pipeline::run::code_digest_of`.
fn write_source_digests() {
    println!("cargo:rerun-if-changed=build");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let krate = code_deps::Crate::read(&root).unwrap_or_else(|e| panic!("reading the sources: {e}"));
    let mut rows = String::new();
    for file in krate.sources() {
        let digest = krate.digest(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        rows.push_str(&format!("    ({:?}, {digest:?}),\n", file.to_string_lossy()));
    }
    let code =
        format!("/// Each source file and the digest of the files it depends on (build.rs).\npub const SOURCE_DIGESTS: &[(&str, &str)] = &[\n{rows}];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it")).join("code_digests.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// SHA-256 over every file of src/ and schemas/, the Cargo files and the build script, by path.
fn code_digest() -> String {
    let mut files = Vec::new();
    for dir in ["src", "schemas"] {
        println!("cargo:rerun-if-changed={dir}");
        collect(Path::new(dir), &mut files);
    }
    // Named, or cargo would not run this script again when only the dependencies change (once a
    // script names any path, cargo watches those alone).
    for file in ["Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={file}");
    }
    files.extend(["Cargo.lock", "Cargo.toml", "build.rs", "build/code_deps.rs"].map(PathBuf::from));
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a readable folder").path();
        if path.is_dir() { collect(&path, out) } else { out.push(path) }
    }
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
