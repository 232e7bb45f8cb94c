//! A generated corpus of hostile and odd inputs (tests/python/make_bad_corpus.py: truncated and
//! corrupt files, decompression bombs, every format, mode and EXIF orientation, links, FIFOs,
//! odd names, a hostile manifest) through ingest, detect, cloak and embed and through the
//! `cloak` command. No panic, no hang, every entry accounted for (a row `ok` or `error` naming
//! it, or a named skip), originals untouched, and the exit code and summary say what failed.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{cloak_pipeline, python_check, repo, scratch, shared, text, walk};

/// Digest of a tree as it is on disk, links and FIFOs included and never followed.
fn tree_digest(dir: &Path) -> String {
    let mut entries = Vec::new();
    walk(dir, &mut entries);
    entries.sort();
    let mut h = Sha256::new();
    for path in entries {
        h.update(path.as_os_str().as_encoded_bytes());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        if kind.is_symlink() {
            h.update(b"link:");
            h.update(std::fs::read_link(&path).unwrap().as_os_str().as_encoded_bytes());
        } else if kind.is_fifo() {
            h.update(b"fifo");
        } else if kind.is_file() {
            h.update(std::fs::read(&path).unwrap());
        }
    }
    format!("{:x}", h.finalize())
}

/// Runs cloakbench with a watchdog: a run that takes longer than `limit` is a hang.
fn run_bounded(args: &[&str], limit: Duration) -> Output {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_cloakbench")).args(args).current_dir(repo()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("cloakbench {args:?} hung: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("panicked"), "cloakbench {args:?} panicked:\n{all}");
    out
}

fn corpus_pipeline(dir: &Path, data: &Path) -> PathBuf {
    let spec = dir.join("corpus.toml");
    let embed = "\n[stages.embed]\nkind = \"embed\"\ninput = \"aligned\"\nmodel = \"dlib_resnet29_150\"\ninputs = { images = \"images\", faces = \"faces\" }\n";
    std::fs::write(&spec, cloak_pipeline("corpus", data, 5, 3) + embed).unwrap();
    spec
}

#[test]
fn a_generated_corpus_of_bad_inputs_is_accounted_for_without_a_panic_or_a_hang() {
    let dir = scratch("bad-corpus");
    let made = python_check("make_bad_corpus.py", &[shared("datasets/fixture_facescrub12x10").to_str().unwrap(), dir.to_str().unwrap()], &[]);
    let made: serde_json::Value = serde_json::from_str(made.lines().last().unwrap()).unwrap();
    let errors = made["errors"].as_u64().unwrap();
    let data = dir.join("dataset");
    let expected = dir.join("expected.json");
    let before = tree_digest(&data);

    // The pipeline: ingest, detect, split, cloak, embed. It completes; exit code 3 and the
    // summary count the failed entries.
    let spec = corpus_pipeline(&dir, &data);
    let root = dir.join("runs");
    let out = run_bounded(&["run", spec.to_str().unwrap(), "--run-root", root.to_str().unwrap()], Duration::from_secs(900));
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains(&format!("ingest: {errors} failed")), "the summary should count {errors} failed entries:\n{log}");
    let run = root.join("corpus");
    let summary = python_check("check_corpus.py", &[run.to_str().unwrap(), expected.to_str().unwrap(), "folders"], &[]);
    eprintln!("pipeline over the corpus: {}", summary.trim());
    let summary: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    // Every real face was found, whatever its format (GIF, animated GIF, TIFF, WebP, BMP, CMYK
    // JPEG, 16-bit PNG, greyscale, palette, RGBA) or EXIF orientation (1 to 8): only the
    // pictures without one have none. The protected user's training pictures were cloaked.
    let faceless = ["odd/faceless_animated.gif", "odd/large_6000x4000.jpg", "odd/no_face.png", "odd/one_pixel.png", "odd/tall_1x5000.png"];
    assert_eq!(summary["faceless"], serde_json::json!(faceless), "{summary}");
    assert_eq!(summary["cloaked_pictures"].as_array().unwrap().len(), 5, "{summary}");
    python_check("check_tables.py", &[run.to_str().unwrap(), "--expect-errors", &errors.to_string()], &[]);

    // The same folder through a manifest with missing, repeated, quoted, empty, absolute and
    // `../` rows: each bad row is an error row, the rest are read.
    let spec = dir.join("manifest.toml");
    std::fs::write(
        &spec,
        format!(
            "[pipeline]\nname = \"manifest\"\n\n[stages.ingest]\nkind = \"ingest\"\ndataset = {:?}\nmanifest = \"manifest.csv\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let out = run_bounded(&["run", spec.to_str().unwrap(), "--run-root", root.to_str().unwrap()], Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    python_check("check_corpus.py", &[root.join("manifest").to_str().unwrap(), expected.to_str().unwrap(), "manifest"], &[]);

    // The `cloak` command over the odd folder: every picture is cloaked, has no face, or is named
    // with its reason; outputs go only into --out; exit code 1 says some could not be read.
    let cloaked = dir.join("cloaked");
    let odd = data.join("odd");
    let out = run_bounded(&["cloak", odd.to_str().unwrap(), "--recursive", "--mode", "low", "--out", cloaked.to_str().unwrap()], Duration::from_secs(900));
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{printed}");
    for bad in ["truncated_50.jpg", "truncated_eoi_in_comment.jpg", "bomb_header.png", "phone.heic", "fifo.jpg", "dangling.jpg", "zero_bytes.jpg"] {
        assert!(printed.lines().any(|l| l.contains(bad) && l.contains("cloakbench cloak:")), "{bad} not named:\n{printed}");
    }
    assert!(printed.contains("cloaked "), "{printed}");
    let mut written = Vec::new();
    walk(&cloaked, &mut written);
    assert!(written.iter().any(|p| p.to_string_lossy().ends_with("name with spaces_cloaked.png")), "{written:?}");
    assert_eq!(before, tree_digest(&data), "the corpus was modified");
    // Nothing was written beside the pictures or their links' targets: only into --out (and
    // the pipeline's cloaks into its run root).
    let mut everything = Vec::new();
    walk(&dir, &mut everything);
    let strays: Vec<_> = everything.iter().filter(|p| p.to_string_lossy().contains("_cloaked") && !p.starts_with(&cloaked) && !p.starts_with(&root)).collect();
    assert!(strays.is_empty(), "cloaked copies outside --out: {strays:?}");
    std::fs::remove_dir_all(dir).ok();
}
