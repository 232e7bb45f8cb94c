//! An interrupted run resumes without redoing finished work: the embed stage is killed after
//! a few of its parts are saved; the rerun reuses them and completes the table.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cloakbench, python_check, repo, scratch, shared, text};

#[test]
fn a_killed_embed_stage_resumes_from_its_saved_parts() {
    let Some(dataset) = shared("datasets/facescrub12") else { return };
    let dir = scratch("resume");
    let root = dir.join("runs");
    let set_dataset = format!("ingest.dataset={}", dataset.display());
    let args = ["run", "pipelines/baseline.toml", "--set", &set_dataset, "--set", "embed.part_size=128", "--run-root", root.to_str().unwrap()];

    let mut child = Command::new(env!("CARGO_BIN_EXE_cloakbench")).args(args).current_dir(repo()).stderr(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
    let work = root.join("baseline/_work");
    let started = Instant::now();
    let saved_parts = || -> usize {
        std::fs::read_dir(&work).into_iter().flatten().flatten().map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count())).sum()
    };
    while saved_parts() < 2 {
        assert!(started.elapsed() < Duration::from_secs(300), "no embed part was saved");
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
