//! Users' own models: a TorchScript file and a card in the models folder are listed and used.

use crate::{cloakbench, python_check, scratch, shared, text};

#[test]
fn a_torchscript_model_with_a_card_is_listed_and_embeds() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("user-model");
    let models = dir.join("models");
    python_check("make_torchscript_model.py", &[models.to_str().unwrap()], &[]);
    let env = [("CLOAKBENCH_MODELS", models.to_str().unwrap())];

    let listing = text(&cloakbench(&["models", "list"], &env).stdout);
    assert!(listing.lines().any(|l| l.starts_with("tiny_user_net") && l.contains("installed") && l.contains("32")), "{listing}");

    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", dataset.display());
    let out = cloakbench(
        &["run", "pipelines/baseline.toml", "--quiet", "--set", &set, "--set", "embed.model=tiny_user_net", "--run-root", root.to_str().unwrap()],
        &env,
    );
    assert!(text(&out.stdout).contains("linear_probe on tiny_user_net embeddings"), "{}", text(&out.stdout));
    let summary = python_check("check_tables.py", &[root.join("baseline").to_str().unwrap()], &[]);
    assert!(summary.contains("linear_probe/tiny_user_net"), "{summary}");

    // A card whose output_dim disagrees with the module is refused with the reason.
    std::fs::write(
        models.join("tiny_user_net.toml"),
        std::fs::read_to_string(models.join("tiny_user_net.toml")).unwrap().replace("output_dim = 32", "output_dim = 64"),
    )
    .unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_cloakbench"))
        .args(["run", "pipelines/baseline.toml", "--force", "--set", &set, "--set", "embed.model=tiny_user_net", "--run-root", root.to_str().unwrap()])
        .envs(env)
        .current_dir(crate::repo())
        .output()
        .unwrap();
    let err = text(&bad.stderr);
    assert!(!bad.status.success() && err.contains("output_dim = 64"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// The README's import path for a model a user has: an ONNX file (here the faceplugin network's
/// own ONNX, which the zoo also ships as a Rust module) through scripts/import_model.py becomes a
/// TorchScript model that reproduces the original runtime's golden embeddings and that
/// cloakbench lists and embeds with.
#[test]
fn an_onnx_model_imported_by_the_script_matches_its_original_runtime() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let golden = shared("golden/faceplugin_mbf512_112");
    let home = std::env::var("CLOAKBENCH_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cloakbench"));
    let onnx = home.join("downloads/faceplugin-face-recognition-js_0.0.1/model/fr_feature.onnx");
    assert!(onnx.is_file(), "{} missing: make setup downloads it", onnx.display());
    let dir = scratch("import-onnx");
    let models = dir.join("models");
    let out = std::process::Command::new(crate::python())
        .arg(crate::repo().join("scripts/import_model.py"))
        .args([
            "onnx",
            onnx.to_str().unwrap(),
            "--id",
            "imported_mbf",
            "--input-size",
            "112",
            "112",
            "--alignment",
            "arcface",
            "--mean",
            "127",
            "--scale",
            "128",
            "--per-picture",
        ])
        .args(["--year", "2023", "--out", models.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let compared = python_check("compare_golden.py", &[models.join("imported_mbf.pt").to_str().unwrap(), golden.to_str().unwrap()], &[]);
    let figures: serde_json::Value = serde_json::from_str(compared.lines().last().unwrap()).unwrap();
    assert!(figures["max_diff_ratio"].as_f64().unwrap() <= 5e-6, "{figures}");
    let env = [("CLOAKBENCH_MODELS", models.to_str().unwrap())];
    let listing = text(&cloakbench(&["models", "list"], &env).stdout);
    assert!(listing.lines().any(|l| l.starts_with("imported_mbf") && l.contains("512") && l.contains("2023")), "{listing}");
    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", dataset.display());
    let run = cloakbench(
        &["run", "pipelines/baseline.toml", "--quiet", "--set", &set, "--set", "embed.model=imported_mbf", "--run-root", root.to_str().unwrap()],
        &env,
    );
    assert!(text(&run.stdout).contains("linear_probe on imported_mbf embeddings"));
    std::fs::remove_dir_all(dir).ok();
}

/// The same path for a PyTorch checkpoint: the module class that defines the network, its
/// state dict (under a key, with a prefix to strip, as MagFace's checkpoints have them).
#[test]
fn a_pytorch_checkpoint_imported_by_the_script_embeds() {
    let dataset = shared("datasets/fixture_facescrub12x10");
    let dir = scratch("import-pytorch");
    std::fs::write(
        dir.join("net.py"),
        "import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        \
         self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)\n        self.fc = torch.nn.Linear(4 * 27 * 27, 16)\n\n    \
         def forward(self, x):\n        return self.fc(torch.relu(self.conv(x)).flatten(1))\n",
    )
    .unwrap();
    let save = format!(
        "import sys, torch; sys.path.insert(0, {dir:?}); import net; torch.manual_seed(0); \
         torch.save({{'state_dict': {{'features.module.' + k: v for k, v in net.Net().state_dict().items()}}}}, {ckpt:?})",
        dir = dir.display().to_string(),
        ckpt = dir.join("net.pth").display().to_string()
    );
    let out = std::process::Command::new(crate::python()).args(["-c", &save]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let models = dir.join("models");
    let out = std::process::Command::new(crate::python())
        .arg(crate::repo().join("scripts/import_model.py"))
        .args(["pytorch", &format!("{}:Net", dir.join("net.py").display()), dir.join("net.pth").to_str().unwrap(), "--id", "tiny_magface_like"])
        .args([
            "--input-size",
            "112",
            "112",
            "--alignment",
            "arcface",
            "--mean",
            "0",
            "--scale",
            "255",
            "--bgr",
            "--state-dict-key",
            "state_dict",
            "--strip-prefix",
            "features.module.",
        ])
        .args(["--out", models.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = dir.join("runs");
    let set = format!("ingest.dataset={}", dataset.display());
    let env = [("CLOAKBENCH_MODELS", models.to_str().unwrap())];
    let run = cloakbench(
        &["run", "pipelines/baseline.toml", "--quiet", "--set", &set, "--set", "embed.model=tiny_magface_like", "--run-root", root.to_str().unwrap()],
        &env,
    );
    assert!(text(&run.stdout).contains("linear_probe on tiny_magface_like embeddings"));
    std::fs::remove_dir_all(dir).ok();
}
