//! The baseline pipeline end to end on a real fixture, and the runner's skip-what-is-done logic.

use crate::{cloakbench, python_check, scratch, shared, text};

#[test]
fn baseline_runs_end_to_end_and_reruns_only_what_changed() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let runs = scratch("baseline");
    let (dataset, root) = (dataset.to_str().unwrap(), runs.to_str().unwrap());
    let set_dataset = format!("ingest.dataset={dataset}");
    let args = ["run", "pipelines/baseline.toml", "--set", &set_dataset, "--run-root", root];

    let first = cloakbench(&args, &[]);
    let stdout = text(&first.stdout);
    assert!(stdout.contains("linear_probe on dlib_resnet29_150 embeddings"), "{stdout}");
    assert!(stdout.contains("(protected)"), "no protected user shown:\n{stdout}");

    let summary = python_check("check_tables.py", &[&format!("{root}/baseline"), "--expect-errors", "0"], &[]);
    let summary: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"]["images"], 120);
    let probe = summary["accuracy"]["linear_probe/dlib_resnet29_150"].as_f64().unwrap();
    let nn = summary["accuracy"]["nearest_neighbour/dlib_resnet29_150"].as_f64().unwrap();
    eprintln!("fixture_facescrub12x10 clean accuracy: linear probe {probe:.3}, 1-NN {nn:.3}");
    assert!(probe >= 0.9, "linear probe accuracy {probe} < 0.9");

    // CPU results are bitwise reproducible in this run (MKL's strict mode, checked at start-up).
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(runs.join("baseline/_run.json")).unwrap()).unwrap();
    assert_eq!(manifest["mkl_cbwr"], "AUTO,STRICT", "{manifest}");
    assert_eq!(manifest["failed"], 0);
    assert_eq!(manifest["stages"].as_array().unwrap().len(), 5);

    // Nothing changed: every stage is skipped; --report writes the run's page, which holds the
    // sections a baseline run has tables for (and no others) and opens in a browser.
    let again = cloakbench(&[&args[..], &["--report"]].concat(), &[]);
    let log = text(&again.stderr);
    assert_eq!(log.matches("up to date, skipped").count(), 5, "{log}");
    assert!(text(&again.stdout).contains("report: "), "{}", text(&again.stdout));
    let figures = crate::check_in_browser(&runs.join("baseline/report/index.html"), "baseline", &["run", "accuracy"]);
    assert_eq!(figures["sections"], serde_json::json!(["run", "accuracy"]), "{figures}");
    let page = std::fs::read_to_string(runs.join("baseline/report/index.html")).unwrap();
    assert!(page.contains("dlib_resnet29_150") && page.contains("FaceScrub"), "the model and its card's training set");

    // A new split seed reruns split and what depends on it, not ingest or embed.
    let reseeded = [&args[..], &["--set", "split.seed=1"]].concat();
    let log = text(&cloakbench(&reseeded, &[]).stderr);
    for stage in ["ingest", "embed"] {
        assert!(log.contains(&format!("{stage}: up to date")), "{stage} was redone:\n{log}");
    }
    for stage in ["split", "classify", "evaluate"] {
        assert!(log.contains(&format!("{stage}: running")), "{stage} was not rerun:\n{log}");
    }
    std::fs::remove_dir_all(runs).ok();
}

#[test]
fn a_manifest_names_the_pictures_and_their_identities() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("manifest");
    let mut csv = String::from("path,identity\n");
    for (person, label) in [("Alec_Baldwin", "person_a"), ("Bill_Hader", "person_b")] {
        for f in std::fs::read_dir(dataset.join(person)).unwrap() {
            csv += &format!("{person}/{},{label}\n", f.unwrap().file_name().to_string_lossy());
        }
    }
    let manifest = dir.join("labels.csv");
    std::fs::write(&manifest, &csv).unwrap();
    let pipeline = dir.join("ingest.toml");
    std::fs::write(&pipeline, "[pipeline]\nname = 'manifest'\n[stages.ingest]\nkind = 'ingest'\n").unwrap();
    let root = dir.join("runs");
    let set = |k: &str, v: &std::path::Path| format!("ingest.{k}={}", v.display());
    for manifest in [manifest.clone(), dir.join("labels.parquet")] {
        if manifest.extension().unwrap() == "parquet" {
            let code = format!("import polars as pl; pl.read_csv({:?}).write_parquet({:?})", dir.join("labels.csv"), manifest);
            assert!(std::process::Command::new(crate::python()).args(["-c", &code]).status().unwrap().success());
        }
        cloakbench(
            &[
                "run",
                pipeline.to_str().unwrap(),
                "--quiet",
                "--force",
                "--set",
                &set("dataset", &dataset),
                "--set",
                &set("manifest", &manifest),
                "--run-root",
                root.to_str().unwrap(),
            ],
            &[],
        );
        let code = format!(
            "import polars as pl; d = pl.read_parquet({:?}); print(d.height, sorted(set(d['identity'])), (d['status'] == 'ok').all())",
            root.join("manifest/images.parquet")
        );
        let out = std::process::Command::new(crate::python()).args(["-c", &code]).output().unwrap();
        assert_eq!(text(&out.stdout).trim(), "20 ['person_a', 'person_b'] True", "{}", text(&out.stderr));
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Decoding the next batch while the model runs this one changes when pictures are decoded,
/// never what is embedded: the embeddings are the same, bit for bit, in the same order.
#[test]
fn decoding_ahead_embeds_the_same_pictures_to_the_bit() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let runs = scratch("decode-ahead");
    let set_dataset = format!("ingest.dataset={}", dataset.display());
    for ahead in ["false", "true"] {
        let root = runs.join(ahead);
        let set_ahead = format!("embed.decode_ahead={ahead}");
        let args =
            ["run", "pipelines/baseline.toml", "--set", &set_dataset, "--set", "embed.batch_size=8", "--set", &set_ahead, "--run-root", root.to_str().unwrap()];
        let log = text(&cloakbench(&args, &[]).stderr);
        assert_eq!(log.contains("decoding a batch ahead"), ahead == "true", "{log}");
    }
    let code = format!(
        "import polars as pl; r = {:?}; a, b = (pl.read_parquet(f'{{r}}/{{x}}/baseline/embeddings.parquet') for x in ('false', 'true')); \
         assert a.height == 120, a.height; assert a.equals(b), 'embeddings differ'; print('same')",
        runs.display().to_string()
    );
    let out = std::process::Command::new(crate::python()).args(["-c", &code]).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "same", "{}", text(&out.stderr));
    std::fs::remove_dir_all(runs).ok();
}

/// Every benchmark writes its figures as a `bench` table beside what it prints: checked against
/// its schema with Polars and Pandas, each ratio our value over the reference's.
#[test]
fn benchmarks_write_their_figures_as_a_table() {
    let out = scratch("bench-table");
    let dataset = shared("datasets/fixture_lfw10x10");
    let o = out.to_str().unwrap();
    cloakbench(&["bench", "baseline", "--dataset", dataset.to_str().unwrap(), "--out", o], &[]);
    cloakbench(&["bench", "cloak", "--pictures", "1", "--steps", "1", "--batch-sizes", "1", "--size", "160", "160", "--out", o], &[]);
    let baseline = python_check("check_tables.py", &[out.join("baseline").to_str().unwrap()], &[]);
    assert!(baseline.contains("images_per_s") && baseline.contains("peak_rss"), "{baseline}");
    assert!(baseline.contains("\"bench\": 8"), "ingest, embed at batch 8, 32 and 64 decoding in turn and ahead, peak memory: {baseline}");
    cloakbench(&["bench", "decode", "--dataset", dataset.to_str().unwrap(), "--out", o], &[]);
    let decode = python_check("check_tables.py", &[out.join("decode").to_str().unwrap()], &[]);
    let rows = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 { 4 } else { 3 };
    assert!(
        decode.contains("images_per_s") && decode.contains(&format!("\"bench\": {rows}")),
        "decoding on one thread and all, resizing and cropping beside the way before: {decode}"
    );
    // The study's path: faces detected first, then cropped as the model card says.
    cloakbench(&["bench", "baseline", "--dataset", dataset.to_str().unwrap(), "--input", "aligned", "--batch-sizes", "8,8", "--out", o], &[]);
    let aligned = python_check("check_tables.py", &[out.join("baseline").to_str().unwrap()], &[]);
    assert!(aligned.contains("\"bench\": 4"), "ingest, embed at batch 8 in turn and ahead (once: a repeated size is measured once), peak memory: {aligned}");
    cloakbench(&["bench", "detect", "--dataset", dataset.to_str().unwrap(), "--pictures", "6", "--out", o], &[]);
    let detect = python_check("check_tables.py", &[out.join("detect").to_str().unwrap()], &[]);
    assert!(detect.contains("\"bench\": 2") && detect.contains("images_per_s"), "side by side and one at a time, beside facenet-pytorch: {detect}");
    let cloak = python_check("check_tables.py", &[out.join("cloak").to_str().unwrap()], &[]);
    assert!(cloak.contains("\"bench\": 14") && cloak.contains("s_per_picture_step"), "4 methods x 2 figures, and Fawkes high's 6 phases: {cloak}");
    std::fs::remove_dir_all(out).ok();
}
