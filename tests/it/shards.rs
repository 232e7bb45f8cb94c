//! Sharded runs: plan, shards, commit. A sharded run's committed tables equal a single-process
//! run's, row for row, read through their manifests by Polars and Pandas: run by hand here,
//! with shards killed at seeded moments and restarted, and as a Slurm array over a dataset on
//! S3 with one task crashing and requeued. The launchers for Kubernetes and AWS Batch are
//! validated offline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::{Background, assert_no_partial_table, uniform};
use crate::s3::{KEY_ID, SECRET, start_moto};
use crate::{cloak_pipeline, cloakbench, cloakbench_exits, python_check, repo, scratch, shared, text};

/// The protect pipeline in small: ingest, detect, split, cloak (2 steps), detect the scraped
/// pictures, embed them, classify, evaluate. Two phases: the cloak waits for the split.
fn protect_pipeline(dir: &Path, name: &str) -> PathBuf {
    let spec = dir.join(format!("{name}.toml"));
    let rest = r#"
[stages.detect_scraped]
kind = "detect"
max_side = 400
inputs = { images = "cloaked_images" }
outputs = { faces = "scraped_faces" }

[stages.embed]
kind = "embed"
model = "dlib_resnet29_150"
input = "aligned"
part_size = 16
inputs = { images = "cloaked_images", faces = "scraped_faces" }

[stages.classify]
kind = "classify"

[stages.evaluate]
kind = "evaluate"
"#;
    std::fs::write(&spec, cloak_pipeline(name, &shared("datasets/fixture_facescrub12x10"), 2, 2) + rest).unwrap();
    spec
}

fn run_args<'a>(spec: &'a str, root: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", spec, "--run-root", root];
    args.extend_from_slice(more);
    args
}

fn stderr_of(out: &std::process::Output) -> String {
    text(&out.stderr)
}

#[test]
fn a_sharded_run_commits_the_tables_of_a_single_process_run() {
    let dir = scratch("shards");
    let spec = protect_pipeline(&dir, "sharded");
    let spec = spec.to_str().unwrap();
    let (single, sharded) = (dir.join("single"), dir.join("sharded"));
    let (single, sharded) = (single.to_str().unwrap(), sharded.to_str().unwrap());
    cloakbench(&run_args(spec, single, &["-q"]), &[]);

    let planned = text(&cloakbench(&["plan", spec, "--shards", "3", "--run-root", sharded], &[]).stdout);
    assert!(planned.contains("120 items of ingest in 3 shards (40-40 each), 2 phase(s)"), "{planned}");
    let plan_file = std::fs::read(Path::new(sharded).join("sharded/plan.json")).unwrap();
    cloakbench(&["plan", spec, "--shards", "3", "--run-root", sharded], &[]);
    let other = stderr_of(&cloakbench_exits(&["plan", spec, "--shards", "4", "--run-root", sharded], &[], 2));
    assert!(other.contains("already holds another plan (3 shards"), "{other}");
    assert_eq!(std::fs::read(Path::new(sharded).join("sharded/plan.json")).unwrap(), plan_file, "a plan never changes");

    // Shards refuse what does not match the plan, before doing anything (exit 2: permanent).
    let changed = stderr_of(&cloakbench_exits(&run_args(spec, sharded, &["--shard", "0", "--set", "cloak.steps=3"]), &[], 2));
    assert!(changed.contains("planned for another pipeline or other settings"), "{changed}");
    let beyond = stderr_of(&cloakbench_exits(&run_args(spec, sharded, &["--shard", "3"]), &[], 2));
    assert!(beyond.contains("shard 3: the plan has shards 0..3"), "{beyond}");
    let no_index = stderr_of(&cloakbench_exits(&run_args(spec, sharded, &["--shard", "auto"]), &[], 2));
    assert!(no_index.contains("none of JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, AWS_BATCH_JOB_ARRAY_INDEX"), "{no_index}");
    let wrong_array =
        stderr_of(&cloakbench_exits(&run_args(spec, sharded, &["--shard", "auto"]), &[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "5")], 2));
    assert!(wrong_array.contains("planned with 3 shards, this task expects 5"), "{wrong_array}");
    let early = stderr_of(&cloakbench_exits(&["commit", spec, "--run-root", sharded], &[], 1));
    assert!(early.contains("phase 0: 3 of 3 shards are not done (shard 0, 1, 2)"), "{early}");

    // Phase 0 (ingest, detect), each shard's index from another scheduler's variable.
    cloakbench(&run_args(spec, sharded, &["--shard", "auto", "-q"]), &[("JOB_COMPLETION_INDEX", "0")]);
    cloakbench(&run_args(spec, sharded, &["--shard", "auto", "-q"]), &[("AWS_BATCH_JOB_ARRAY_INDEX", "1")]);
    cloakbench(&run_args(spec, sharded, &["--shard", "auto", "-q"]), &[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
    let again = stderr_of(&cloakbench(&run_args(spec, sharded, &["--shard", "1"]), &[]));
    assert!(again.contains("shard 1: phase 0 already done; nothing to do"), "{again}");
    assert!(!Path::new(sharded).join("sharded/images/_manifest.json").exists(), "a table appeared before its commit");
    let next = text(&cloakbench_exits(&["commit", spec, "--run-root", sharded, "-q"], &[], 5).stdout);
    assert!(next.contains("phase 0 committed; next: run the shards again (phase 1)"), "{next}");
    assert!(!Path::new(sharded).join("sharded/_SUCCESS").exists());

    // Phase 1 (cloak, detect_scraped, embed), then the last commit.
    for k in ["0", "1", "2"] {
        cloakbench(&run_args(spec, sharded, &["--shard", k, "-q"]), &[]);
    }
    let done = text(&cloakbench(&["commit", spec, "--run-root", sharded, "-q"], &[]).stdout);
    assert!(done.contains("_SUCCESS written") && done.contains("nearest_neighbour on dlib_resnet29_150"), "{done}");
    let same = python_check("compare_sharded.py", &[&format!("{single}/sharded"), &format!("{sharded}/sharded")], &[]);
    eprintln!("sharded = single-process: {}", same.trim());
    let figures: serde_json::Value = serde_json::from_str(same.trim()).unwrap();
    assert_eq!(figures["pictures"], 7, "Bill_Hader's 7 training pictures are cloaked, each once: {same}");

    // Rerunnable: a committed run commits again at once; a shard of it has nothing to do.
    cloakbench(&["commit", spec, "--run-root", sharded, "-q"], &[]);
    let finished = stderr_of(&cloakbench(&run_args(spec, sharded, &["--shard", "2"]), &[]));
    assert!(finished.contains("the run is committed; nothing to do"), "{finished}");
    // The report reads the committed tables through their manifests.
    let report = text(&cloakbench(&["report", &format!("{sharded}/sharded"), "-q"], &[]).stdout);
    assert!(report.contains("index.html"), "{report}");
    std::fs::remove_dir_all(dir).ok();
}

/// Ingest, detect (at full size: seconds of work per shard) and embed in shards, 8 to 16
/// pictures a chunk; split, classify and evaluate at the commit: one phase.
fn embed_pipeline(dir: &Path) -> PathBuf {
    let spec = dir.join("killed.toml");
    let text = format!(
        "[pipeline]\nname = \"killed\"\n\n[stages.ingest]\nkind = \"ingest\"\ndataset = {:?}\nbatch_size = 16\n\n\
         [stages.detect]\nkind = \"detect\"\npart_size = 8\n\n\
         [stages.split]\nkind = \"split\"\nprotected = [\"Bill_Hader\"]\n\n\
         [stages.embed]\nkind = \"embed\"\nmodel = \"dlib_resnet29_150\"\ninput = \"aligned\"\npart_size = 16\ninputs = {{ images = \"images\", faces = \"faces\" }}\n\n\
         [stages.classify]\nkind = \"classify\"\n\n[stages.evaluate]\nkind = \"evaluate\"\n",
        shared("datasets/fixture_facescrub12x10").display().to_string()
    );
    std::fs::write(&spec, text).unwrap();
    spec
}

#[test]
fn shards_killed_at_seeded_moments_commit_the_tables_of_an_uninterrupted_run() {
    let dir = scratch("shards-killed");
    let spec = embed_pipeline(&dir);
    let spec = spec.to_str().unwrap();
    let (single, killed) = (dir.join("single"), dir.join("killed"));
    let (single, killed) = (single.to_str().unwrap(), killed.to_str().unwrap());
    let started = std::time::Instant::now();
    cloakbench(&run_args(spec, single, &["-q"]), &[]);
    // Kill moments scale with how long the work takes on this machine: with a fixed window a
    // faster build (or machine) finished both shards before ten kills had landed.
    let window = (started.elapsed().as_secs_f64() / 10.0).clamp(0.2, 0.8);
    cloakbench(&["plan", spec, "--shards", "2", "--run-root", killed], &[]);
    let run_dir = Path::new(killed).join("killed");
    let no_table_yet = || {
        for table in ["images", "faces", "embeddings"] {
            assert!(!run_dir.join(format!("{table}/_manifest.json")).exists(), "{table} readable before its commit");
        }
        assert!(!run_dir.join("_SUCCESS").exists());
    };

    // Kills until ten have landed inside a shard, alternating between the unfinished shards,
    // each at a seeded moment within a tenth of the uninterrupted run's time (at most 0.8 s) of
    // the shard's first log line: ten kills then cost half the work at most on average. Each
    // restart resumes from its last saved chunk, so the kills walk through ingest, detect and
    // embed, and the marker.
    let mut rng = cloakbench::rng::Rng::new(0x5eed_5a4d_0000_0010);
    let marker = |k: usize| run_dir.join(format!("_shards/phase-0/shard-{k:05}.json"));
    let (mut landed, mut tries) = (0, 0);
    while landed < 10 {
        let open: Vec<usize> = (0..2).filter(|&k| !marker(k).exists()).collect();
        assert!(!open.is_empty() && tries < 40, "both shards finished after {landed} kills landed ({tries} tries)");
        let shard = open[tries % open.len()].to_string();
        tries += 1;
        let mut run = Background::start(&run_args(spec, killed, &["--shard", &shard]).iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(run.wait_for("[cloakbench] ", Duration::from_secs(120)), "{}", run.log());
        std::thread::sleep(Duration::from_secs_f64(uniform(&mut rng, window)));
        let _ = run.child.kill(); // SIGKILL
        if !run.finish().success() {
            landed += 1;
        }
        assert_no_partial_table(&run_dir);
        no_table_yet();
        // A commit now refuses while a shard is unfinished, and writes no table.
        if !marker(0).exists() || !marker(1).exists() {
            let refused = stderr_of(&cloakbench_exits(&["commit", spec, "--run-root", killed, "-q"], &[], 1));
            assert!(refused.contains("shards are not done"), "{refused}");
            no_table_yet();
        }
    }
    eprintln!("{landed} kills landed inside a shard in {tries} tries (window {window:.2} s)");
    for shard in ["0", "1"] {
        cloakbench(&run_args(spec, killed, &["--shard", shard, "-q"]), &[]);
    }
    // The commit itself killed once, early: what it leaves is no table or a whole one.
    let mut commit = Background::start(&["commit".to_owned(), spec.to_owned(), "--run-root".into(), killed.to_owned()]);
    assert!(commit.wait_for("split: running", Duration::from_secs(60)), "{}", commit.log());
    let _ = commit.child.kill();
    commit.finish();
    assert_no_partial_table(&run_dir);
    cloakbench(&["commit", spec, "--run-root", killed, "-q"], &[]);
    let same = python_check("compare_sharded.py", &[&format!("{single}/killed"), &format!("{killed}/killed")], &[]);
    eprintln!("killed and restarted shards = uninterrupted run: {}", same.trim());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sigterm_saves_the_chunk_in_progress_and_the_restarted_shard_resumes_after_it() {
    let dir = scratch("shards-sigterm");
    let spec = embed_pipeline(&dir);
    let (spec, root) = (spec.to_str().unwrap(), dir.join("runs"));
    let root = root.to_str().unwrap();
    cloakbench(&["plan", spec, "--shards", "1", "--run-root", root], &[]);
    let args: Vec<String> = run_args(spec, root, &["--shard", "0"]).iter().map(|s| s.to_string()).collect();
    let mut run = Background::start(&args);
    assert!(run.wait_for("detect: running", Duration::from_secs(120)), "{}", run.log());
    std::thread::sleep(Duration::from_millis(500));
    let pid = run.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = run.finish();
    assert_eq!(status.code(), Some(1), "a shard stopped by SIGTERM exits non-zero so the scheduler retries it:\n{}", run.log());
    assert!(run.log().contains("detect: stopped by SIGTERM after saving chunk"), "{}", run.log());
    let resumed = stderr_of(&cloakbench(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    assert!(resumed.contains("ingest: up to date") && resumed.contains("detect: resumed: "), "{resumed}");
    std::fs::remove_dir_all(dir).ok();
}

/// Starts (installing it the first time) the single-node Slurm of tests/slurm/start.sh and
/// returns its configuration file.
fn start_slurm() -> String {
    let out = Command::new(repo().join("tests/slurm/start.sh")).output().expect("run tests/slurm/start.sh");
    assert!(out.status.success(), "tests/slurm/start.sh failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn a_slurm_array_over_s3_with_a_crashed_and_requeued_shard_commits_the_single_process_tables() {
    let dir = scratch("slurm");
    let slurm_conf = start_slurm();
    let (_server, endpoint) = start_moto();
    let env = [("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint.as_str())];
    python_check("s3_helper.py", &["upload", &endpoint, "faces", "fixture", shared("datasets/fixture_facescrub12x10").to_str().unwrap()], &env);
    let spec = protect_pipeline(&dir, "slurm");
    let spec = spec.to_str().unwrap();
    let dataset = "ingest.dataset=s3://faces/fixture";
    // Bitwise equality needs the same thread count (a sum splits by threads): shard.sbatch gives
    // each task its one CPU's worth of threads, and so the reference gets one too.
    let one_thread = [("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("RAYON_NUM_THREADS", "1")];
    cloakbench(&["run", spec, "--set", dataset, "--run-root", "s3://faces/single", "-q"], &[&env[..], &one_thread[..]].concat());

    // Task 1's first attempt is SIGKILLed two seconds in (a crash): shard.sbatch requeues it.
    // It exits 137 even when the shard finished within the two seconds (a node lost after the
    // work, before it reported): otherwise a fast machine sees no crash and the test no requeue.
    let wrapper = dir.join("cloakbench-crashing-once.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/usr/bin/env bash\nif [ \"$1\" = run ] && [ \"$SLURM_ARRAY_TASK_ID\" = 1 ] && mkdir {:?} 2>/dev/null; then\n  \
             {bin:?} \"$@\" & pid=$!; sleep 2; kill -9 $pid 2>/dev/null; wait $pid; exit 137\nfi\nexec {bin:?} \"$@\"\n",
            dir.join("crashed-once"),
            bin = env!("CARGO_BIN_EXE_cloakbench")
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let logs = dir.join("logs");
    let started = Instant::now();
    let out = Command::new(repo().join("scripts/launch/slurm/launch.sh"))
        .args([spec, "4", "--set", dataset, "--run-root", "s3://faces/sharded"])
        .envs(env.iter().copied())
        .env("SLURM_CONF", &slurm_conf)
        .env("CLOAKBENCH", &wrapper)
        .env("CLOAKBENCH_GRES", "")
        .env("CLOAKBENCH_SLURM_LOGS", &logs)
        .env("SBATCH_ARGS", "--time=10")
        .current_dir(repo())
        .output()
        .unwrap();
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let mut task_logs = String::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        task_logs += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    assert!(out.status.success(), "launch.sh failed:\n{printed}\n{task_logs}");
    eprintln!("Slurm: 2 arrays of 4 tasks and 2 commits in {:.0} s", started.elapsed().as_secs_f64());
    assert!(printed.contains("committed after 2 array(s)"), "{printed}");
    assert!(task_logs.contains("failed (exit 137): requeued (attempt 1 of 3)") && task_logs.contains("attempt 1 on"), "no requeue:\n{task_logs}");
    assert!(!printed.contains(SECRET) && !task_logs.contains(SECRET), "credentials leaked into a log");

    let (a, b) = (dir.join("single"), dir.join("sharded"));
    python_check("s3_helper.py", &["download", &endpoint, "faces", "single/slurm", a.to_str().unwrap()], &env);
    python_check("s3_helper.py", &["download", &endpoint, "faces", "sharded/slurm", b.to_str().unwrap()], &env);
    let same =
        python_check("compare_sharded.py", &[a.to_str().unwrap(), b.to_str().unwrap(), "--urls", "s3://faces/single/slurm", "s3://faces/sharded/slurm"], &[]);
    eprintln!("Slurm over S3 = single process: {}", same.trim());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_kubernetes_and_aws_batch_launchers_validate_against_their_api_schemas() {
    let out = python_check("validate_launchers.py", &[repo().join("scripts/launch").to_str().unwrap()], &[]);
    eprintln!("{}", out.trim());
}
