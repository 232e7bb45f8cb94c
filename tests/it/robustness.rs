//! Inputs that used to panic or hang: each is now a clear error or a counted skip.

use crate::{cloakbench_exits, copy_dataset, python_check, scratch, shared, text};

/// A plain grey picture: no face in it.
pub fn faceless_png() -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// The protected user's pictures have no detectable face: with one picture per batch, every
/// batch of the cloak stage is empty. The run completes, each picture is counted as left
/// uncloaked, and the exit code says so (the engine used to panic on the empty batch).
#[test]
fn a_protected_user_without_a_detectable_face_is_counted_not_a_panic() {
    let fixture = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("faceless-user");
    let data = dir.join("data");
    copy_dataset(&fixture, &data);
    for f in std::fs::read_dir(data.join("Bill_Hader")).unwrap() {
        let path = f.unwrap().path();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(path.with_extension("png"), faceless_png()).unwrap();
    }
    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", data.display());
    let args = [
        "run",
        "pipelines/protect.toml",
        "--quiet",
        "--set",
        &set,
        "--set",
        "cloak.batch_size=1",
        "--set",
        "cloak.steps=2",
        "--run-root",
        root.to_str().unwrap(),
    ];
    let out = cloakbench_exits(&args, &[], 3);
    let err = text(&out.stderr);
    assert!(err.contains("cloak: 7 failed") && err.contains("left uncloaked: no face detected"), "{err}");
    assert!(err.contains("detect: 10 skipped"), "{err}");
    let summary = python_check("check_tables.py", &[root.join("protect").to_str().unwrap()], &[]);
    assert!(summary.contains("\"cloaks\": 0"), "{summary}");
    std::fs::remove_dir_all(dir).ok();
}

/// A user's TorchScript model that loads (it passes the one-picture probe) but refuses a batch:
/// the embed stage stops with the model's own message, exit code 1, and no panic.
#[test]
fn a_user_model_whose_forward_fails_is_a_clear_error() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("failing-model");
    let models = dir.join("models");
    python_check("make_torchscript_model.py", &[models.to_str().unwrap()], &[]);
    let set = format!("ingest.dataset={}", dataset.display());
    let root = dir.join("runs");
    let args = ["run", "pipelines/baseline.toml", "--quiet", "--set", &set, "--set", "embed.model=tiny_fails_net", "--run-root", root.to_str().unwrap()];
    let out = cloakbench_exits(&args, &[("CLOAKBENCH_MODELS", models.to_str().unwrap())], 1);
    let err = text(&out.stderr);
    assert!(err.contains("stage embed") && err.contains("tiny_fails_net") && err.contains("this model takes one picture at a time"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
