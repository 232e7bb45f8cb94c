//! An interrupted run resumes without redoing finished work: the embed stage is killed after
//! a few of its chunks are saved; the rerun reuses them and completes the table.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cloak_pipeline, cloakbench, python_check, repo, scratch, shared, text};

#[test]
fn a_killed_embed_stage_resumes_from_its_saved_parts() {
    let dataset = shared("datasets/facescrub12");
    let dir = scratch("resume");
    let root = dir.join("runs");
    let set_dataset = format!("ingest.dataset={}", dataset.display());
    let args = ["run", "pipelines/baseline.toml", "--set", &set_dataset, "--set", "embed.part_size=128", "--run-root", root.to_str().unwrap()];

    let mut child = Command::new(env!("CARGO_BIN_EXE_cloakbench")).args(args).current_dir(repo()).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    let work = root.join("baseline/_work");
    let started = Instant::now();
    let saved_parts = || -> usize {
        let embed_work = std::fs::read_dir(&work).into_iter().flatten().flatten().filter(|d| d.file_name().to_string_lossy().starts_with("embed-"));
        let files = embed_work.flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten());
        files.filter(|f| f.file_name().to_string_lossy().starts_with("chunk-")).count()
    };
    while saved_parts() < 2 {
        assert!(started.elapsed() < Duration::from_secs(300), "no embed chunk was saved");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = text(&cloakbench(&args, &[]).stderr);
    let resumed = log.lines().find(|l| l.contains("resumed:")).unwrap_or_else(|| panic!("no resume:\n{log}"));
    let done: usize = resumed.split("resumed: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(done >= 2, "{resumed}");
    assert!(log.contains("ingest: up to date"), "ingest was redone:\n{log}");
    let summary = python_check("check_tables.py", &[root.join("baseline").to_str().unwrap()], &[]);
    assert!(summary.contains("\"embeddings\": 1603"), "{summary}");
    assert_eq!(saved_parts(), 0, "parts left behind after the table was joined");
    std::fs::remove_dir_all(dir).ok();
}

/// The cloak stage saves each batch as it finishes: killed mid-stage, the rerun keeps the
/// finished batches, cloaks the rest, and ends with exactly the pictures and rows of a run
/// that was never interrupted (same seed, same bytes).
#[test]
fn a_killed_cloak_stage_resumes_and_gives_the_same_pictures() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("cloak-resume");
    let spec = dir.join("cloak_only.toml");
    std::fs::write(&spec, cloak_pipeline("cloak_only", &dataset, 6, 1)).unwrap();
    let run_args = |root: &std::path::Path| vec!["run".to_owned(), spec.display().to_string(), "--run-root".into(), root.display().to_string()];
    let (interrupted, straight) = (dir.join("interrupted"), dir.join("straight"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_cloakbench"))
        .args(run_args(&interrupted))
        .current_dir(repo())
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let work = interrupted.join("cloak_only/_work");
    // A chunk is finished once its marker is written (after its parts).
    let cloak_parts = || -> usize {
        std::fs::read_dir(&work)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| d.file_name().to_string_lossy().starts_with("cloak-"))
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name().to_string_lossy().starts_with("chunk-"))
            .count()
    };
    let started = Instant::now();
    while cloak_parts() < 2 {
        assert!(started.elapsed() < Duration::from_secs(600), "no cloak part was saved");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The cloaked files so far, with their modification times (one picture per chunk, in order).
    let pictures = interrupted.join("cloak_only/cloaked/cloak/Bill_Hader");
    let written = || -> Vec<(std::ffi::OsString, std::time::SystemTime)> {
        // Staging files (a dot and the name) of a write the kill cut short are not pictures.
        let files = std::fs::read_dir(&pictures).unwrap().map(|f| f.unwrap()).filter(|f| !f.file_name().to_string_lossy().starts_with('.'));
        let mut files: Vec<_> = files.map(|f| (f.file_name(), f.metadata().unwrap().modified().unwrap())).collect();
        files.sort();
        files
    };
    let before = written();

    let args = run_args(&interrupted);
    let log = text(&cloakbench(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).stderr);
    let resumed = log.lines().find(|l| l.contains("cloak: resumed:")).unwrap_or_else(|| panic!("no resume:\n{log}"));
    let done: usize = resumed.split("resumed: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((2..7).contains(&done), "{resumed}");
    assert_eq!(cloak_parts(), 0, "parts left behind after the tables were joined");
    // The finished chunks (one picture each) were not cloaked again: at least as many cloaked
    // files as chunks resumed are untouched since the kill.
    let after = written();
    let untouched = before.iter().filter(|b| after.contains(b)).count();
    assert!(untouched >= done, "only {untouched} cloaked files untouched, {done} chunks resumed: a finished chunk was redone");

    let args = run_args(&straight);
    cloakbench(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let code = format!(
        r#"
import polars as pl
a, b = {a:?}, {b:?}
read = lambda d, t: pl.read_parquet(f"{{d}}/cloak_only/{{t}}.parquet")
images = [read(d, "cloaked_images").sort("image_id").select("image_id", "sha256", "bytes", "width", "height") for d in (a, b)]
assert images[0].equals(images[1]), "the resumed run's pictures differ from the uninterrupted run's"
cloaks = [read(d, "cloaks").sort("image_id", "face_index").drop("seconds") for d in (a, b)]
assert cloaks[0].equals(cloaks[1]), (cloaks[0], cloaks[1])
assert cloaks[0].height == 7, cloaks[0].height
shifts = [read(d, "cloak_shifts").sort("image_id", "face_index", "model") for d in (a, b)]
assert shifts[0].equals(shifts[1])
print("ok")
"#,
        a = interrupted.display().to_string(),
        b = straight.display().to_string()
    );
    let out = Command::new(crate::python()).args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    std::fs::remove_dir_all(dir).ok();
}

/// End-to-end fine-tuning stopped after its first epoch continues from that epoch's checkpoint
/// and ends exactly where an uninterrupted run ends: the same losses, the same weights.
#[test]
fn a_stopped_fine_tune_continues_from_its_last_checkpoint() {
    use cloakbench::io::Location;
    use cloakbench::learn::crops::Crops;
    use cloakbench::learn::finetune::{Schedule, fine_tune};
    use cloakbench::progress::Progress;
    use tch::{Device, Kind, Tensor};

    tch::manual_seed(7);
    let n = 8;
    let crops = Crops {
        ids: (0..n).map(|i| format!("face-{i}")).collect(),
        pixels: Tensor::randint(256, [n as i64, 3, 150, 150], (Kind::Uint8, Device::Cpu)),
        labels: (0..n).map(|i| i % 2).collect(),
    };
    let schedule = |epochs| Schedule { epochs, steps_per_epoch: 2, batch_size: 4, ..Schedule::cpu() };
    let dir = scratch("finetune-resume");
    let train = |epochs, folder: &str| {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        let checkpoints = Location::open(dir.join(folder).to_str().unwrap()).unwrap();
        let progress = Progress::new("finetune", schedule(epochs).steps(), "steps", true);
        fine_tune("dlib_resnet29_150", None, Device::Cpu, &crops, 2, &schedule(epochs), &checkpoints, progress).unwrap()
    };

    let straight = train(2, "straight");
    assert_eq!(straight.resumed_after, None);
    let first = train(1, "stopped");
    assert_eq!(first.losses.len(), 1);
    let resumed = train(2, "stopped");
    assert_eq!(resumed.resumed_after, Some(0), "the second run did not resume from the first epoch's checkpoint");
    assert_eq!(resumed.losses, straight.losses, "the resumed run trained differently");
    assert!(resumed.network_weights().unwrap() == straight.network_weights().unwrap(), "the resumed run's weights differ");
    std::fs::remove_dir_all(dir).ok();
}
