//! Crash consistency and one writer per run.
//!
//! A run is killed with SIGKILL at seeded random moments inside each stage kind and rerun each
//! time; once it completes, its tables equal (rows and values) those of a run never
//! interrupted, and after every kill each table path holds either nothing or a whole Parquet
//! file. A second run into a run root that is in use is refused, naming the first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{cloak_pipeline, cloakbench, cloakbench_exits, python_check, repo, scratch, shared, text, walk};

/// A pipeline with every per-picture stage and the trainer's: ingest, detect, split, cloak
/// (7 pictures, one per chunk), mix, detect, embed (16 per chunk), classify, evaluate.
fn crash_pipeline(dir: &Path) -> PathBuf {
    let spec = dir.join("crash.toml");
    let rest = r#"
[stages.mix]
kind = "mix"
inputs = { images = "images", cloaked_images = "cloaked_images", splits = "splits" }
fraction = 1.0

[stages.detect_scraped]
kind = "detect"
max_side = 400
inputs = { images = "scraped_images", known_faces = "faces" }
outputs = { faces = "scraped_faces" }

[stages.embed]
kind = "embed"
input = "aligned"
model = "dlib_resnet29_150"
part_size = 16
inputs = { images = "scraped_images", faces = "scraped_faces" }

[stages.classify]
kind = "classify"

[stages.evaluate]
kind = "evaluate"
"#;
    std::fs::write(&spec, cloak_pipeline("crash", &shared("datasets/fixture_facescrub12x10"), 10, 1) + rest).unwrap();
    spec
}

/// A run in the background whose stderr lines are collected as they come.
pub struct Background {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn start(args: &[String]) -> Background {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_cloakbench")).args(args).current_dir(repo()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Background { child, lines, reader: Some(reader) }
    }

    fn saw(&self, needle: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until a line contains `needle`; false if the run ended first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        self.wait_for_any(&[needle.to_owned()], limit).is_some()
    }

    /// Waits until a line contains one of `needles` and says which (the first in the log);
    /// `None` if the run ended without any.
    fn wait_for_any(&mut self, needles: &[String], limit: Duration) -> Option<usize> {
        let started = Instant::now();
        let found = |lines: &[String]| lines.iter().find_map(|l| needles.iter().position(|n| l.contains(n.as_str())));
        loop {
            if let Some(i) = found(&self.lines.lock().unwrap()) {
                return Some(i);
            }
            if self.child.try_wait().unwrap().is_some() {
                self.finish();
                return found(&self.lines.lock().unwrap());
            }
            assert!(started.elapsed() < limit, "none of {needles:?} within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn finish(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The stage that was running when the run ended: the last `running` line without its `done`.
    fn interrupted_stage(&self) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        let last = lines.iter().rev().find(|l| l.contains(": running ("))?;
        let stage = last.trim_start_matches("[cloakbench] ").split(": running").next()?.to_owned();
        let done = lines.iter().any(|l| l.contains(&format!("] {stage}: done in")));
        (!done).then_some(stage)
    }
}

/// A uniform delay in [0, hi) from the crate's seeded generator: the kill schedule replays.
pub fn uniform(rng: &mut cloakbench::rng::Rng, hi: f64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * hi
}

/// Every Parquet file under `dir` outside the bookkeeping folders is whole: it starts and ends
/// with `PAR1` and its footer fits in it. Staging files (a dot and the name) are not tables.
pub fn assert_no_partial_table(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                let bytes = std::fs::read(&path).unwrap();
                let n = bytes.len();
                assert!(n >= 12 && &bytes[..4] == b"PAR1" && &bytes[n - 4..] == b"PAR1", "{} is not a whole Parquet file ({n} bytes)", path.display());
                let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
                assert!(footer + 12 <= n, "{}: footer of {footer} bytes in a file of {n}", path.display());
            }
        }
    }
}

#[test]
fn runs_killed_at_random_moments_end_with_the_tables_of_an_uninterrupted_run() {
    let dir = scratch("crash");
    let spec = crash_pipeline(&dir);
    let args = |root: &Path| vec!["run".to_owned(), spec.display().to_string(), "--run-root".into(), root.display().to_string()];
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let run_to_the_end = |root: &Path| text(&cloakbench(&args(root).iter().map(String::as_str).collect::<Vec<_>>(), &[]).stderr);
    run_to_the_end(&straight);
    // Each stage's time in the uninterrupted run bounds the kill delay after it starts.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(straight.join("crash/_run.json")).unwrap()).unwrap();
    let seconds = |stage: &str| manifest["stages"].as_array().unwrap().iter().find(|s| s["name"] == stage).unwrap()["seconds"].as_f64().unwrap();

    let mut rng = cloakbench::rng::Rng::new(0x5eed_c10a_4b3e_7001);
    // Five kills aimed inside each stage kind, in pipeline order: a run is killed at a random
    // moment within the first 60% of the aimed stage's uninterrupted time after it starts (a
    // resumed stage has less left to do, so a later kill would often land in the next stage).
    // When the aimed stage is already done, the harness forgets its state so that the run
    // redoes it: that kill then also hits a stage rewriting a table that exists.
    let aims: Vec<&str> = ["ingest", "detect", "cloak", "embed", "classify", "evaluate"].iter().flat_map(|s| [*s; 5]).collect();
    let mut landed: Vec<String> = Vec::new();
    let mut aim = 0;
    while aim < aims.len() {
        let _ = std::fs::remove_file(killed.join(format!("crash/_state/{}.json", aims[aim])));
        let mut run = Background::start(&args(&killed));
        assert!(run.wait_for(&format!("] {}: running", aims[aim]), Duration::from_secs(300)), "{} did not run:\n{}", aims[aim], run.log());
        std::thread::sleep(Duration::from_secs_f64(uniform(&mut rng, 0.6 * seconds(aims[aim]).max(0.02))));
        let _ = run.child.kill(); // SIGKILL
        let completed = run.finish().success(); // before the kill came
        if !completed {
            landed.push(run.interrupted_stage().unwrap_or_else(|| "between stages".into()));
        }
        assert_no_partial_table(&killed);
        aim += 1;
    }
    eprintln!("{} kills, landed in: {landed:?}", landed.len());
    assert!(landed.len() >= 20, "only {} kills landed: {landed:?}", landed.len());
    // Where a kill lands depends on timing (a short stage may finish first); the kills must
    // still have hit the long per-picture stages.
    let kinds: std::collections::BTreeSet<&String> = landed.iter().filter(|l| *l != "between stages").collect();
    assert!(kinds.len() >= 3, "kills landed inside only {kinds:?}");
    let log = run_to_the_end(&killed);
    assert_no_partial_table(&killed);
    let mut left = Vec::new();
    walk(&killed.join("crash"), &mut left);
    let staging: Vec<_> = left.iter().filter(|p| p.to_string_lossy().contains(".staging-")).collect();
    assert!(staging.is_empty(), "staging files left after the final run: {staging:?}\n{log}");
    let same = python_check("compare_runs.py", &[straight.join("crash").to_str().unwrap(), killed.join("crash").to_str().unwrap()], &[]);
    eprintln!("identical to the uninterrupted run: {}", same.trim());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_second_run_into_a_run_root_in_use_is_refused_and_a_killed_one_is_taken_over() {
    let dir = scratch("one-writer");
    let spec = crash_pipeline(&dir);
    let root = dir.join("runs");
    let args = vec!["run".to_owned(), spec.display().to_string(), "--run-root".into(), root.display().to_string()];
    let mut first = Background::start(&args);
    assert!(first.wait_for("] detect: running", Duration::from_secs(120)), "{}", first.log());
    let str_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let second = cloakbench_exits(&str_args, &[], 4);
    let msg = text(&second.stderr);
    assert!(msg.contains("in use by `cloakbench run crash`") && msg.contains(&format!("pid {}", first.child.id())), "{msg}");
    assert!(!first.saw("error"), "the first run was disturbed:\n{}", first.log());
    let _ = first.child.kill();
    first.finish();
    // The killed run's lock died with it: the next run goes ahead and completes.
    let log = text(&cloakbench(&str_args, &[]).stderr);
    assert!(log.contains("evaluate: done"), "{log}");
    std::fs::remove_dir_all(dir).ok();
}
