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
