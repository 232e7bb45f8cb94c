//! Fingerprints come from meaning: writing a default out or restoring the dataset with new
//! modification times reruns nothing, while a picture edited in place (same size) or a replaced
//! weights file reruns what depends on it; and a rerun reads only the files that changed.

use std::path::Path;

use crate::{cloakbench, copy_dataset, python_check, scratch, shared, text};

fn ran(log: &str, stage: &str) -> bool {
    log.contains(&format!("{stage}: running"))
}

#[test]
fn defaults_written_out_or_new_file_times_rerun_nothing_and_an_edited_picture_reruns_ingest() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("fingerprints");
    let data = dir.join("data");
    copy_dataset(&fixture, &data);
    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", data.display());
    let args = ["run", "pipelines/baseline.toml", "--set", &set, "--run-root", root.to_str().unwrap()];
    cloakbench(&args, &[]);

    // Every stage's defaults, written out: nothing reruns.
    let defaults = [
        "--set",
        "ingest.batch_size=256",
        "--set",
        "ingest.concurrency=32",
        "--set",
        "embed.device=auto",
        "--set",
        "embed.input=resize",
        "--set",
        "embed.part_size=1024",
        "--set",
        "classify.probe.epochs=300",
        "--set",
        "split.protected=[]",
    ];
    let log = text(&cloakbench(&[&args[..], &defaults[..]].concat(), &[]).stderr);
    assert_eq!(log.matches("up to date, skipped").count(), 5, "{log}");

    // The dataset restored from a backup: every file the same, every modification time new.
    let restored = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for person in std::fs::read_dir(&data).unwrap() {
        for picture in std::fs::read_dir(person.unwrap().path()).unwrap() {
            std::fs::File::open(picture.unwrap().path()).unwrap().set_modified(restored).unwrap();
        }
    }
    // Let the new status-change times settle, so their digests are kept (io::digests).
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let files = std::fs::read_dir(&data).unwrap().map(|p| std::fs::read_dir(p.unwrap().path()).unwrap().count()).sum::<usize>();
    let log = text(&cloakbench(&args, &[]).stderr);
    assert_eq!(log.matches("up to date, skipped").count(), 5, "new modification times alone reran a stage:\n{log}");
    assert!(log.contains(&format!("fingerprint read {files} of {files} files")), "restored files must be read again:\n{log}");
    // Nothing changed since: the fingerprint comes from the kept digests, no file is read.
    let log = text(&cloakbench(&args, &[]).stderr);
    assert_eq!(log.matches("up to date, skipped").count(), 5, "{log}");
    assert!(log.contains(&format!("fingerprint read 0 of {files} files")), "unchanged files were read again:\n{log}");

    // One picture edited in place, same size (an EXIF-like edit): ingest and everything after it rerun.
    let picture = std::fs::read_dir(data.join("Bill_Hader")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&picture).unwrap();
    let len = bytes.len();
    bytes[len - 3] ^= 0x01; // inside the entropy-coded data, before the end marker
    std::fs::write(&picture, &bytes).unwrap();
    // Its old modification time put back, as a careless tool would: the content still tells.
    std::fs::File::options().write(true).open(&picture).unwrap().set_modified(restored).unwrap();
    let log = text(&cloakbench(&args, &[]).stderr);
    assert!(log.contains(&format!("fingerprint read 1 of {files} files")), "only the edited picture is read:\n{log}");
    for stage in ["ingest", "split", "embed", "classify", "evaluate"] {
        assert!(ran(&log, stage), "{stage} was not rerun after a picture changed:\n{log}");
    }
    let digest = sha256(&picture);
    let code = format!(
        "import polars as pl; i = pl.read_parquet({:?}); print(i.filter(pl.col('uri') == {:?})['sha256'][0])",
        root.join("baseline/images.parquet"),
        picture.display().to_string()
    );
    let out = std::process::Command::new(crate::python()).args(["-c", &code]).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), digest, "the images table does not describe the file as it is now");
    std::fs::remove_dir_all(dir).ok();
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn replaced_weights_rerun_the_stages_that_use_them() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("fingerprint-weights");
    let models = dir.join("models");
    python_check("make_torchscript_model.py", &[models.to_str().unwrap()], &[]);
    let env = [("CLOAKBENCH_MODELS", models.to_str().unwrap())];
    let set = format!("ingest.dataset={}", dataset.display());
    let root = dir.join("runs");
    let args = ["run", "pipelines/baseline.toml", "--set", &set, "--set", "embed.model=tiny_user_net", "--run-root", root.to_str().unwrap()];
    cloakbench(&args, &env);
    assert_eq!(text(&cloakbench(&args, &env).stderr).matches("up to date, skipped").count(), 5);
    // The same file, exported again with other weights: embed and what follows rerun, as a dry
    // run says first.
    python_check("make_torchscript_model.py", &[models.to_str().unwrap(), "1"], &[]);
    let dry = text(&cloakbench(&[&args[..], &["--dry-run"]].concat(), &env).stdout);
    assert!(dry.contains("3 of 5 stages (2 up to date)"), "{dry}");
    assert!(would_run(&dry, "embed", "its data or weights changed"), "{dry}");
    assert!(would_run(&dry, "classify", "its inputs changed") && would_run(&dry, "evaluate", "its inputs changed"), "{dry}");
    let log = text(&cloakbench(&args, &env).stderr);
    assert!(log.contains("ingest: up to date") && log.contains("split: up to date"), "{log}");
    for stage in ["embed", "classify", "evaluate"] {
        assert!(ran(&log, stage), "{stage} was not rerun with other weights:\n{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A dry run's lines after the plan: what would run.
fn preview(dry_run: &str) -> &str {
    dry_run.split_once("what would run").map_or("", |(_, rest)| rest)
}

/// Whether a dry run's output lists `stage` as one that would run, because of `why`.
fn would_run(dry_run: &str, stage: &str, why: &str) -> bool {
    preview(dry_run).lines().any(|l| l.split_whitespace().next() == Some(stage) && l.trim_end().ends_with(why))
}

/// Every file under `dir` with its length and modification time.
fn listing(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(listing(&path));
        } else {
            let meta = std::fs::metadata(&path).unwrap();
            out.push((path, meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_dry_run_says_which_stages_would_run_and_why_and_writes_nothing() {
    let dir = scratch("fingerprint-dry-run");
    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", shared("datasets/fixture_facescrub12x10").display());
    let args = ["run", "pipelines/baseline.toml", "--set", &set, "--run-root", root.to_str().unwrap()];
    let dry = |more: &[&str]| text(&cloakbench(&[&args[..], &["--dry-run"], more].concat(), &[]).stdout);
    assert!(dry(&[]).contains("what would run: everything (no run yet in"), "{}", dry(&[]));
    assert!(!root.exists(), "a dry run made the run folder");
    cloakbench(&args, &[]);
    let before = listing(&root);
    assert!(dry(&[]).contains("0 of 5 stages (5 up to date)"), "{}", dry(&[]));

    // Another split: the split runs for its configuration, what reads its table for its inputs;
    // the embeddings, made from the pictures alone, stay.
    let reseeded = dry(&["--set", "split.seed=3"]);
    assert!(reseeded.contains("3 of 5 stages (2 up to date)"), "{reseeded}");
    assert!(would_run(&reseeded, "split", "its configuration changed"), "{reseeded}");
    assert!(would_run(&reseeded, "classify", "its inputs changed") && would_run(&reseeded, "evaluate", "its inputs changed"), "{reseeded}");
    assert!(!preview(&reseeded).lines().any(|l| l.trim_start().starts_with("embed ")), "{reseeded}");

    // A table lost: its stage runs again, alone.
    std::fs::remove_file(root.join("baseline/embeddings.parquet")).unwrap();
    let lost = dry(&[]);
    assert!(lost.contains("1 of 5 stages") && would_run(&lost, "embed", "its table embeddings is missing"), "{lost}");

    let mut after = listing(&root);
    after.retain(|(p, _, _)| !p.ends_with("embeddings.parquet"));
    let mut expected = before.clone();
    expected.retain(|(p, _, _)| !p.ends_with("embeddings.parquet"));
    assert_eq!(after, expected, "a dry run wrote in the run folder");
    std::fs::remove_dir_all(dir).ok();
}
