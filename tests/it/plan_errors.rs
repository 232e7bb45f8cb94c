//! A corpus of bad pipelines: each is refused before anything runs, with one line naming the
//! problem, exit code 2, and no table (no run folder) written.

use std::path::Path;

use crate::{python_check, scratch, shared, text};

/// A pipeline that would run: ingest, split, detect, cloak, embed, classify, evaluate.
fn good(dataset: &Path) -> String {
    format!(
        "[pipeline]\nname = 'p'\n\
         [stages.ingest]\nkind = 'ingest'\ndataset = {:?}\n\
         [stages.split]\nkind = 'split'\nprotected = ['Bill_Hader']\n\
         [stages.detect]\nkind = 'detect'\n\
         [stages.cloak]\nkind = 'cloak'\nmethod = 'fawkes'\nmode = 'low'\n\
         [stages.embed]\nkind = 'embed'\nmodel = 'dlib_resnet29_150'\ninputs = {{ images = 'cloaked_images' }}\n\
         [stages.classify]\nkind = 'classify'\n\
         [stages.evaluate]\nkind = 'evaluate'\n",
        dataset.display().to_string()
    )
}

/// Runs `pipeline` with `overrides`; asserts exit 2, one error line containing `expect`, and no
/// run folder.
fn refused(dir: &Path, case: &str, pipeline: &str, overrides: &[&str], envs: &[(&str, &str)], expect: &str) {
    let file = dir.join(format!("{case}.toml"));
    std::fs::write(&file, pipeline).unwrap();
    let root = dir.join(format!("runs-{case}"));
    let mut args = vec!["run".to_owned(), file.display().to_string(), "--run-root".into(), root.display().to_string()];
    for o in overrides {
        args.extend(["--set".to_owned(), o.to_string()]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloakbench")).args(&args).envs(envs.iter().copied()).current_dir(crate::repo()).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: exit {:?}\n{err}", out.status.code());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: not one line:\n{err}");
    assert!(lines[0].starts_with("cloakbench: error: ") && lines[0].contains(expect), "{case}: {:?} does not say {expect:?}", lines[0]);
    assert!(!root.exists(), "{case}: the run folder was created");
}

#[test]
fn every_bad_pipeline_is_one_clear_line_and_exit_code_2() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("plan-errors");
    let good = good(&dataset);
    let models = dir.join("models");
    python_check("make_torchscript_model.py", &[models.to_str().unwrap()], &[]);
    let user_models = [("CLOAKBENCH_MODELS", models.to_str().unwrap())];
    let with = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        ("unknown_kind", with("kind = 'evaluate'", "kind = 'evaluat'"), vec![], "stage evaluate: unknown kind \"evaluat\"; kinds are ingest, split"),
        ("unknown_key", good.clone(), vec!["ingest.datset=/x"], "unknown field `datset`, expected one of `dataset`"),
        ("wrong_type", good.clone(), vec!["split.seed=abc"], "stage split: seed: invalid type: string \"abc\", expected u64"),
        (
            "unwritten_table",
            with("inputs = { images = 'cloaked_images' }", "inputs = { images = 'cloaked' }"),
            vec![],
            "stage embed reads table \"cloaked\", which no stage writes",
        ),
        (
            "wrong_table",
            with("inputs = { images = 'cloaked_images' }", "inputs = { images = 'splits' }"),
            vec![],
            "inputs.images = \"splits\": stage split writes it as splits rows",
        ),
        ("cycle", with("kind = 'split'\n", "kind = 'split'\ninputs = { images = 'cloaked_images' }\n"), vec![], "(a cycle)"),
        (
            "missing_dataset",
            good.clone(),
            vec!["ingest.dataset=/no/such/dataset"],
            "stage ingest: dataset = \"/no/such/dataset\": /no/such/dataset: no such folder",
        ),
        ("missing_manifest", good.clone(), vec!["ingest.manifest=/nonexistent/m.csv"], "manifest = \"/nonexistent/m.csv\""),
        (
            "unknown_model",
            good.clone(),
            vec!["embed.model=arcface_r100"],
            "model = \"arcface_r100\": unknown model \"arcface_r100\"; models: dlib_resnet29_150",
        ),
        ("mode_the_method_lacks", good.clone(), vec!["cloak.method=lowkey", "cloak.mode=high"], "lowkey has no mode \"high\"; modes: [\"default\"]"),
        ("unknown_method", good.clone(), vec!["cloak.method=fawks"], "unknown variant `fawks`"),
        ("train_fraction", good.clone(), vec!["split.train_fraction=1.5"], "train_fraction = 1.5: must be within 0..1"),
        ("scale_factor", good.clone(), vec!["detect.scale_factor=1.0"], "scale_factor = 1: must be between 0 and 1"),
        ("min_face_size", good.clone(), vec!["detect.min_face_size=0"], "min_face_size = 0: must be at least 1"),
        ("batch_size", good.clone(), vec!["embed.batch_size=0"], "stage embed: batch_size = 0: must be at least 1"),
        ("in_flight", good.clone(), vec!["cloak.in_flight=0"], "stage cloak: in_flight = 0: must be at least 1"),
        ("device", good.clone(), vec!["embed.device=cuda:99"], "device cuda:99: not available here"),
        ("device_name", good.clone(), vec!["classify.device=gpu"], "device \"gpu\": use auto, cpu, cuda or cuda:N"),
        ("jpeg_quality", good.clone(), vec!["cloak.jpeg_quality=101"], "jpeg_quality = 101: must be within 1..100"),
        ("unknown_stage_in_set", good.clone(), vec!["embedd.model=x"], "--set embedd.model=x: no stage named \"embedd\""),
        ("no_stages", "[pipeline]\nname = 'p'\n[stages]\n".into(), vec![], "the pipeline has no stage to run"),
        ("syntax", good.replace("kind = 'classify'", "kind = 'classify"), vec![], "not a valid pipeline file"),
        (
            "aligned_without_faces",
            with("model = 'dlib_resnet29_150'", "model = 'dlib_resnet29_150'\ninput = 'aligned'"),
            vec![],
            "input = \"aligned\" needs the faces table",
        ),
    ];
    for (case, pipeline, overrides, expect) in &cases {
        refused(&dir, case, pipeline, overrides, &[], expect);
    }
    // A user's card asking for a non-square input with a square alignment (the models folder
    // holds only the user's models, so the pipeline embeds and nothing else).
    let embed_only = format!(
        "[pipeline]\nname = 'p'\n[stages.ingest]\nkind = 'ingest'\ndataset = {:?}\n[stages.embed]\nkind = 'embed'\nmodel = 'tiny_user_net'\n",
        dataset.display().to_string()
    );
    refused(
        &dir,
        "non_square_card",
        &embed_only,
        &["embed.model=tiny_wide_net"],
        &user_models,
        "input_size [112, 96] is not square, but alignment arcface makes square crops",
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Every pipeline the repository ships plans as it is (the README's commands start from them):
/// a stage renamed in one file, a key a stage no longer takes or a preset that is gone fails
/// here before anyone runs hours of it. Planning writes nothing.
#[test]
fn every_shipped_pipeline_plans() {
    let dir = scratch("shipped_pipelines");
    let mut files: Vec<_> = std::fs::read_dir(crate::repo().join("pipelines")).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(files.len() >= 10, "pipelines/ holds {} files", files.len());
    let root = dir.join("runs");
    for file in &files {
        let out = crate::cloakbench(&["run", file.to_str().unwrap(), "--dry-run", "--run-root", root.to_str().unwrap()], &[]);
        assert!(!text(&out.stdout).trim().is_empty(), "{}: the dry run listed no stage", file.display());
    }
    assert!(!root.exists(), "a dry run wrote a run folder");
}
