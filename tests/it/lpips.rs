//! LPIPS-AlexNet, LowKey's perceptual budget: the Rust network against the original `lpips`
//! package (scripts/reference/lpips_golden.py: its real v0.1 linear layers on a seeded random
//! AlexNet trunk, since ImageNet AlexNet weights cannot be installed here), and the attack
//! engine actually spending less LPIPS when the budget weighs it.

use std::process::Command;

use cloakbench::attack::{engine, methods};
use cloakbench::face::align::Alignment;
use cloakbench::models::{self, lpips::LpipsAlex};
use tch::{Device, Kind, Tensor};

use crate::{python, repo, scratch, text};

/// Golden weights and cases written by the original package into a scratch folder.
fn golden() -> (LpipsAlex, Tensor, Tensor, Tensor) {
    let dir = scratch("lpips");
    let out = Command::new(python()).arg(repo().join("scripts/reference/lpips_golden.py")).arg(&dir).output().expect("run python");
    assert!(out.status.success(), "lpips_golden.py failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    let net = LpipsAlex::load(&dir.join("lpips_alex.safetensors"), Device::Cpu).unwrap();
    let cases: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("cases.safetensors")).unwrap().into_iter().collect();
    std::fs::remove_dir_all(&dir).ok();
    (net, cases["a"].shallow_clone(), cases["b"].shallow_clone(), cases["distance"].shallow_clone())
}

#[test]
fn lpips_matches_the_original_package() {
    let (net, a, b, want) = golden();
    let got = tch::no_grad(|| net.distance(&a, &b));
    let (got, want) = (Vec::<f32>::try_from(&got).unwrap(), Vec::<f32>::try_from(&want).unwrap());
    assert_eq!(got[0], 0.0, "identical pictures must be at distance 0");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * w.abs() + 1e-8, "LPIPS {g} vs the package's {w} (all: {got:?} vs {want:?})");
    }
    // The cases grow in noise, so must the distance.
    assert!(want.windows(2).all(|p| p[0] < p[1]), "{want:?}");
}

#[test]
fn lowkey_spends_less_lpips_when_its_budget_weighs_it() {
    let targets = crate::cloak::targets();
    let (net, ..) = golden();
    let model = models::load("dlib_resnet29_150", Device::Cpu).unwrap();
    let ensemble = [engine::Member { model: model.as_ref(), alignment: Alignment::DlibChip { size: 150, padding: 0.25 } }];
    let spent = |weight: Option<f64>| {
        let mut cfg = methods::config(methods::Method::Lowkey, "default", 0).unwrap();
        cfg.steps = 4;
        cfg.budget.perceptual = weight;
        let out = engine::run(&cfg, &ensemble, Some(&net), &targets, Device::Cpu).unwrap();
        let pairs = out.iter().zip(&targets).map(|(c, t)| net.distance(&c.pixels.unsqueeze(0), &t.pixels.unsqueeze(0).to_kind(Kind::Float)));
        tch::no_grad(|| pairs.map(|d| d.double_value(&[0])).sum::<f64>())
    };
    let (free, weighed) = (spent(None), spent(Some(1e6)));
    // Measured: 0.00069 vs 0.00104 after 4 steps (the start noise is part of both).
    assert!(weighed < 0.8 * free, "LPIPS {weighed} with the budget vs {free} without");
}
