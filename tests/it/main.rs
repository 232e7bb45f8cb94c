//! Integration tests, all against real parts: the real binary, real pretrained weights, real
//! Parquet read back by Python Polars and Pandas, and a real S3 API server on 127.0.0.1.
//!
//! They read photos from `../shared/datasets` (never copied into the repository) and fail with
//! a message naming the missing folder when it is absent: no test passes without running.

mod bad_inputs;
mod baseline;
mod cloak;
mod code_digests;
mod crash;
mod data_plane;
mod detect;
mod fingerprints;
mod golden;
mod lpips;
mod plan_errors;
mod properties;
mod resume;
mod robustness;
mod s3;
mod shards;
mod study;
mod user_models;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/<rel>`. Tests never pass without their data: when it is absent the test fails
/// with a message naming the folder (CI and `make test` run beside ../shared).
pub fn shared(rel: &str) -> PathBuf {
    let path = repo().join("..").join("shared").join(rel);
    assert!(path.exists(), "{} not found: the tests read datasets and golden files from ../shared (next to the repository)", path.display());
    path.canonicalize().unwrap()
}

/// The Python of the project's venv (made by `make setup`).
pub fn python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run `make setup` (make test does)", py.display());
    py
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloakbench-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where the binary run by the tests keeps its dataset digests: the tests' scratch datasets
/// are not left in the user's cache.
pub fn digest_caches() -> PathBuf {
    std::env::temp_dir().join(format!("cloakbench-it-digests-{}", std::process::id()))
}

/// Runs the cloakbench binary; panics with its output when it fails.
pub fn cloakbench(args: &[&str], envs: &[(&str, &str)]) -> Output {
    cloakbench_exits(args, envs, 0)
}

/// Runs the cloakbench binary; panics with its output unless it exits with `code`.
pub fn cloakbench_exits(args: &[&str], envs: &[(&str, &str)], code: i32) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cloakbench"))
        .args(args)
        .env("CLOAKBENCH_DIGESTS", digest_caches())
        .envs(envs.iter().copied())
        .current_dir(repo())
        .output()
        .expect("run cloakbench");
    if out.status.code() != Some(code) {
        panic!("cloakbench {args:?} exited {:?}, expected {code}:\n{}\n{}", out.status.code(), text(&out.stdout), text(&out.stderr));
    }
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a script of tests/python with the venv's Python; panics with its output on failure.
pub fn python_check(script: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(python()).arg(repo().join("tests/python").join(script)).args(args).envs(envs.iter().copied()).output().expect("run python");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{script} {args:?} failed:\n{all}");
    all
}

/// The head of the pipelines that cloak: ingest `dataset`, detect (on pictures shrunk to 400
/// px), split with Bill_Hader protected, and cloak his training pictures with Fawkes high on
/// dlib's ResNet for `steps` steps, `batch_size` pictures per chunk. Tests append their stages.
pub fn cloak_pipeline(name: &str, dataset: &Path, steps: usize, batch_size: usize) -> String {
    format!(
        "[pipeline]\nname = {name:?}\n\n[stages.ingest]\nkind = \"ingest\"\ndataset = {:?}\n\n\
         [stages.detect]\nkind = \"detect\"\nmax_side = 400\n\n\
         [stages.split]\nkind = \"split\"\nseed = 0\nprotected = [\"Bill_Hader\"]\n\n\
         [stages.cloak]\nkind = \"cloak\"\nmethod = \"fawkes\"\nmode = \"high\"\nensemble = [\"dlib_resnet29_150\"]\n\
         steps = {steps}\nbatch_size = {batch_size}\n",
        dataset.display().to_string()
    )
}

/// Every entry below `dir`, recursively (links not followed), folders included.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        out.push(entry.path());
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), out);
        }
    }
}

/// Copies a dataset folder (two levels: identity/file).
pub fn copy_dataset(from: &Path, to: &Path) {
    for identity in std::fs::read_dir(from).unwrap() {
        let identity = identity.unwrap().path();
        if !identity.is_dir() {
            continue;
        }
        let dest = to.join(identity.file_name().unwrap());
        std::fs::create_dir_all(&dest).unwrap();
        for file in std::fs::read_dir(&identity).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, dest.join(file.file_name().unwrap())).unwrap();
        }
    }
}

/// Installs Chromium (and the font the report's plots are drawn with) when missing: Debian's
/// packages, through apt-get as root or with passwordless sudo. The tests that open reports
/// need a real browser.
pub fn ensure_chromium() {
    let have = |bin: &str| Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success());
    if have("chromium") && Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        return;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| text(&o.stdout).trim() == "0");
    let apt = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core";
    let script = if root { apt.to_string() } else { format!("sudo -n sh -c '{apt}'") };
    let out = Command::new("sh").args(["-c", &script]).output().expect("run apt-get");
    assert!(out.status.success() && have("chromium"), "could not install chromium (Debian package `chromium`): {}{}", text(&out.stdout), text(&out.stderr));
}

/// Opens a report page in headless Chromium (tests/python/check_report.py): no console error,
/// every picture and plot loads, every section in `sections` is there, tables sort. Saves a
/// screenshot under <tmp>/cloakbench-screenshots/<name>.png and returns the checker's figures.
pub fn check_in_browser(page: &Path, name: &str, sections: &[&str]) -> serde_json::Value {
    ensure_chromium();
    let shots = std::env::temp_dir().join("cloakbench-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("{name}.png"));
    let out = Command::new(python())
        .arg(repo().join("tests/python/check_report.py"))
        .args([page.to_str().unwrap(), shot.to_str().unwrap(), &sections.join(",")])
        .output()
        .expect("run check_report.py");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{} in Chromium:\n{all}", page.display());
    let figures: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let png = image::open(&shot).expect("a screenshot");
    assert!(png.width() >= 1000 && png.height() >= 500, "screenshot {}x{}", png.width(), png.height());
    eprintln!("{name}: {figures} (screenshot {})", shot.display());
    figures
}
