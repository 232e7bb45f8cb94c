//! MTCNN against facenet-pytorch's own detections (`../shared/golden/mtcnn`): same number of
//! faces, boxes and landmarks within 1e-4 px, probabilities within 1e-6, as the README says.

use cloakbench::face::mtcnn::{Detectors, Mtcnn, Settings};
use cloakbench::io::image::{DecodeLimits, decode};
use tch::Device;

use crate::shared;

#[test]
fn mtcnn_matches_facenet_pytorch() {
    let dir = shared("golden/mtcnn");
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("detections.json")).unwrap()).unwrap();
    let entries: Vec<(&String, &serde_json::Value)> = golden["images"].as_object().unwrap().iter().collect();
    let pictures: Vec<_> = entries
        .iter()
        .map(|(_, entry)| {
            decode(&std::fs::read(dir.join("inputs").join(entry["decoded_png"].as_str().unwrap())).unwrap(), &DecodeLimits::default()).unwrap().rgb
        })
        .collect();
    let mtcnn = Mtcnn::load(Device::Cpu).unwrap();
    let one_at_a_time: Vec<_> = pictures.iter().map(|rgb| mtcnn.detect(rgb, &Settings::default()).unwrap()).collect();
    // The detect stage's way: pictures side by side, one libtorch thread each.
    let side_by_side: Vec<_> = Detectors::load(Device::Cpu).unwrap().map(&pictures, |d, rgb| d.detect(rgb, &Settings::default()).unwrap());
    for (way, found) in [("one at a time", one_at_a_time), ("side by side", side_by_side)] {
        let (mut worst_px, mut worst_prob, mut faces) = (0f64, 0f64, 0);
        for ((name, entry), found) in entries.iter().zip(&found) {
            let want = entry["faces"].as_array().unwrap();
            assert_eq!(found.len(), want.len(), "{name} ({way}): {} faces, golden {}", found.len(), want.len());
            for (f, w) in found.iter().zip(want) {
                let wb: Vec<f64> = w["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                for (got, want) in f.bbox.iter().zip(&wb) {
                    worst_px = worst_px.max((*got as f64 - want).abs());
                }
                for (p, wp) in f.landmarks.iter().zip(w["landmarks"].as_array().unwrap()) {
                    for k in 0..2 {
                        worst_px = worst_px.max((p[k] as f64 - wp[k].as_f64().unwrap()).abs());
                    }
                }
                worst_prob = worst_prob.max((f.score as f64 - w["prob"].as_f64().unwrap()).abs());
                faces += 1;
            }
        }
        eprintln!("mtcnn ({way}): {faces} faces; worst box/landmark error {worst_px:.2e} px, worst probability error {worst_prob:.2e}");
        // The README's claim: boxes and landmarks within 1e-4 px, probabilities within 1e-6.
        assert!(worst_px <= 1e-4, "{way}: a box or landmark is {worst_px} px off");
        assert!(worst_prob <= 1e-6, "{way}: a probability is {worst_prob} off");
    }
}

/// The detect stage and aligned embedding end to end: LFW pairs separate far better once faces
/// are aligned as the model expects (whole 250x250 LFW pictures resized give dlib AUC ~0.65).
#[test]
fn aligned_faces_make_lfw_pairs_separable() {
    let _ = shared("datasets/fixture_lfw10x10");
    let root = crate::scratch("zoo-lfw");
    let out = crate::cloakbench(&["run", "pipelines/zoo_lfw.toml", "--quiet", "--run-root", root.to_str().unwrap()], &[]);
    let stdout = crate::text(&out.stdout);
    let auc: f64 = stdout.split("AUC ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{stdout}"));
    assert!(auc >= 0.97, "dlib AUC on aligned LFW faces {auc}");
    let summary = crate::python_check("check_tables.py", &[root.join("zoo_lfw").to_str().unwrap()], &[]);
    assert!(summary.contains("\"faces\": 119"), "{summary}");
    std::fs::remove_dir_all(root).ok();
}
