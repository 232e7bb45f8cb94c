//! Invariants of the study that can fail, on a small grid over the fixture (the study demo with
//! short schedules): public identities train the adaptive model and the detectors and are never
//! evaluated; at fraction 1 no clean training picture of a protected user reaches a trainer;
//! fraction 0 reproduces the unprotected figures exactly; end-to-end fine-tuning on clean data
//! reaches the probe's accuracy.

use std::path::Path;

use crate::{cloakbench, python, scratch, shared, text};

const TINY: &str = "{epochs=2,steps_per_epoch=6,batch_size=8,learning_rate=1e-4,head_learning_rate=1e-3,weight_decay=0.0,flip=true,balanced=true,seed=0}";

/// The study demo (which has a detector and clustering) with a short cloak, a short adaptive
/// schedule, an end-to-end classifier, a purifier and a clean chain beside it.
fn small_grid(dir: &Path) -> String {
    let extra = "\n[stages.purify]\nkind = 'filter'\npurifier = 'median3'\ninputs = { images = 'scraped_images', splits = 'splits' }\noutputs = { filtered_images = 'purified' }\n\
        [stages.finetune_clean]\nkind = 'finetune'\nmodel = 'dlib_resnet29_150'\ninputs = { images = 'images', faces = 'faces', splits = 'splits' }\noutputs = { predictions = 'clean_e2e' }\n\
        [stages.evaluate_clean_e2e]\nkind = 'evaluate'\nreport = false\ninputs = { predictions = 'clean_e2e', splits = 'splits' }\noutputs = { metrics = 'clean_e2e_metrics' }\n\
        [stages.classify_clean]\nkind = 'classify'\ninputs = { splits = 'splits', embeddings = 'clean_embeddings' }\noutputs = { predictions = 'clean_predictions' }\n\
        [stages.evaluate_clean]\nkind = 'evaluate'\nreport = false\ninputs = { predictions = 'clean_predictions', splits = 'splits' }\noutputs = { metrics = 'clean_metrics' }\n";
    let text = std::fs::read_to_string(crate::repo().join("pipelines/study_demo.toml")).unwrap() + extra;
    let file = dir.join("small_grid.toml");
    std::fs::write(&file, text).unwrap();
    file.display().to_string()
}

#[test]
fn the_study_keeps_its_invariants() {
    shared("datasets/fixture_facescrub12x10");
    let dir = scratch("study");
    let root = dir.join("runs");
    let pipeline = small_grid(&dir);
    let out = cloakbench(
        &["run", &pipeline, "--quiet", "--set", "cloak.steps=4", "--set", &format!("adapt.schedule={TINY}"), "--run-root", root.to_str().unwrap()],
        &[],
    );
    assert!(text(&out.stdout).contains("results: mean protection"), "{}", text(&out.stdout));
    let code = format!(
        r#"
import glob, polars as pl, pandas as pd
d = {dir:?}
read = lambda t: pl.read_parquet(f"{{d}}/{{t}}.parquet")
splits = read("splits")
public = set(splits.filter(pl.col("role") == "public")["identity"])
evaluated = set(splits.filter(pl.col("role") != "public")["identity"])
assert public and evaluated and not (public & evaluated)

# The adaptive trainer learned from public identities only.
tuned = read("tuned_models")
assert set(tuned["trained_identities"][0].split(",")) == public, tuned

# The detector was trained on public identities and tested on the others only.
m = read("detection_metrics")
assert not (set(m["train_identities"][0].split(",")) & evaluated), m
assert not (set(read("detections")["identity"]) & public)

# At fraction 1, every protected training picture the trainers scraped is a cloaked copy.
train = splits.filter(pl.col("protected") & (pl.col("split") == "train"))["image_id"]
for table in ["scraped_images-1", "purified-1"]:
    scraped = read(table).filter(pl.col("image_id").is_in(train))
    assert scraped.height == len(train) and (scraped["uri"] != scraped["original_uri"]).all(), (table, scraped)

# Fraction 0 reproduces the clean chain's figures exactly.
clean = read("clean_metrics-dlib_resnet29_150").sort("classifier", "identity", nulls_last=True)
zero = read("metrics-0-dlib_resnet29_150").sort("classifier", "identity", nulls_last=True)
assert clean.equals(zero), (clean, zero)
results = read("results")
control = results.filter(pl.col("cloak_fraction") == 0.0)
assert (control["unprotected_error"] == control["protection_rate"]).all()
assert results.filter(pl.col("cloak_fraction") == 1.0)["unprotected_error"].is_not_null().all()

# End-to-end fine-tuning on clean data (the cpu preset) comes within 0.05 of the probe's
# accuracy (36 test pictures: one miss more than the probe at most).
overall = lambda t, c: t.filter(pl.col("identity").is_null() & (pl.col("classifier") == c))["accuracy"][0]
e2e, probe = overall(read("clean_e2e_metrics"), "end_to_end"), overall(clean, "linear_probe")
print(f"clean accuracy: end to end {{e2e:.3f}}, probe {{probe:.3f}}")
assert e2e >= probe - 0.05, (e2e, probe)

# Every table of the grid loads in Pandas too.
for f in glob.glob(f"{{d}}/*.parquet"):
    assert len(pd.read_parquet(f)) == pl.read_parquet(f).height, f
print("ok")
"#,
        dir = root.join("study_demo").display().to_string()
    );
    let out = std::process::Command::new(python()).args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("{}", text(&out.stdout));
    crate::python_check("check_tables.py", &[root.join("study_demo").to_str().unwrap()], &[]);

    // The report of the grid: every section, every plot and picture, in a real browser.
    let run = root.join("study_demo");
    let out = cloakbench(&["report", run.to_str().unwrap(), "--quiet"], &[]);
    assert!(text(&out.stdout).contains("report/index.html"), "{}", text(&out.stdout));
    let page = run.join("report/index.html");
    let figures = crate::check_in_browser(&page, "study", &["run", "results", "timeline", "quality", "detection", "clustering", "pictures"]);
    assert!(figures["plots"].as_u64().unwrap() >= 8 && figures["images"].as_u64().unwrap() >= 3, "{figures}");
    let html = std::fs::read_to_string(&page).unwrap();
    for reach in ["src=\"http", "href=\"http", "url(http", "<script src", "<link "] {
        assert!(!html.contains(reach), "the page must not reach the network: {reach}");
    }
    assert!(std::fs::read_dir(run.join("report/plots")).unwrap().count() >= 8, "every plot as a PNG too");
    std::fs::remove_dir_all(dir).ok();
}
