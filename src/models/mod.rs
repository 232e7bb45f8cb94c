//! The model zoo: face-recognition networks written as `tch::nn` modules, their weights, and
//! their model cards.
//!
//! Weights are converted once, at setup, from each model's registry package into a safetensors
//! file in the models folder (`$CLOAKBENCH_MODELS`, else `$CLOAKBENCH_HOME/models`, else
//! `~/.cache/cloakbench/models`). Networks are our own Rust modules rather than TorchScript
//! blobs: cloaks need their insides (gradients, intermediate features), and TorchScript loading
//! is deprecated in recent torch releases.
//!
//! ```no_run
//! let model = cloakbench::models::load("dlib_resnet29_150", tch::Device::Cpu)?;
//! let faces = tch::Tensor::zeros([4, 3, 150, 150], (tch::Kind::Float, tch::Device::Cpu));
//! let embeddings = model.embed(&faces); // [4, 128]
//! # anyhow::Ok(())
//! ```

pub mod card;
pub mod dlib_resnet29;
pub mod facenet_irv1;
pub mod faceplugin_mbf;
pub mod hse_mobilenet;
pub mod layers;
pub mod lpips;
pub mod mobileface;
pub mod mobilefacenet_tflite;
pub mod torchscript;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use tch::{Device, Tensor, nn};

pub use card::ModelCard;

/// A face model: float32 NCHW RGB pictures in 0..255 (at the card's input size) to embeddings.
pub trait FaceModel: Send {
    fn card(&self) -> &ModelCard;
    /// Embeddings [N, output_dim]; differentiable with respect to `pictures`.
    fn embed(&self, pictures: &Tensor) -> Tensor;
    fn device(&self) -> Device;
}

const CARDS: &[&str] = &[
    include_str!("cards/dlib_resnet29_150.toml"),
    include_str!("cards/facenet_casia_irv1_160.toml"),
    include_str!("cards/faceplugin_mbf512_112.toml"),
    include_str!("cards/mobilefacenet_sirius_tflite_112.toml"),
    include_str!("cards/hse_faceres_mobilenet_224.toml"),
    include_str!("cards/hse_faceres_mobilenet_224_rgb255.toml"),
    include_str!("cards/mobileface_becauseofai_112.toml"),
];

/// Every model card: the zoo's, then the user's (`<id>.toml` files in the models folder).
pub fn cards() -> Result<Vec<ModelCard>> {
    let mut all: Vec<ModelCard> = CARDS.iter().map(|t| ModelCard::parse(t).expect("bundled model cards parse")).collect();
    let mut user_files: Vec<_> = std::fs::read_dir(models_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    user_files.sort();
    for path in user_files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read model card", path.display()))?;
        let card = ModelCard::parse(&text).with_context(|| format!("{}: bad model card", path.display()))?;
        if all.iter().any(|c| c.id == card.id) {
            bail!("{}: model id {} is already taken", path.display(), card.id);
        }
        all.push(card);
    }
    Ok(all)
}

/// The card of model `id`.
pub fn card(id: &str) -> Result<ModelCard> {
    let all = cards()?;
    let ids: Vec<_> = all.iter().map(|c| c.id.clone()).collect();
    all.into_iter().find(|c| c.id == id).ok_or_else(|| anyhow!("unknown model {id:?}; installed: {ids:?}"))
}

/// Folder holding converted weights.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOAKBENCH_MODELS") {
        return dir.into();
    }
    let home = std::env::var_os("CLOAKBENCH_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cloakbench"));
    home.join("models")
}

/// Path of a model's weights, or an error saying how to install them.
pub fn weights_path(card: &ModelCard) -> Result<PathBuf> {
    let path = models_dir().join(&card.weights);
    if !path.is_file() {
        bail!("{}: weights of {} not installed; run `make setup`", path.display(), card.id);
    }
    Ok(path)
}

/// Loads model `id` with its weights onto `device`, frozen (no parameter gradients).
pub fn load(id: &str, device: Device) -> Result<Box<dyn FaceModel>> {
    let card = card(id)?;
    let path = weights_path(&card)?;
    if card.format == card::WeightsFormat::Torchscript {
        return torchscript::load(card, &path, device);
    }
    let mut vs = nn::VarStore::new(device);
    let model: Box<dyn FaceModel> = match id {
        "dlib_resnet29_150" => Box::new(dlib_resnet29::DlibResNet29::new(&vs.root(), card)),
        "facenet_casia_irv1_160" => Box::new(facenet_irv1::FacenetIrv1::new(&vs.root(), card)),
        "faceplugin_mbf512_112" => Box::new(faceplugin_mbf::FacepluginMbf::new(&vs.root(), card)),
        "mobilefacenet_sirius_tflite_112" => Box::new(mobilefacenet_tflite::MobileFaceNetTflite::new(&vs.root(), card)),
        "hse_faceres_mobilenet_224" => Box::new(hse_mobilenet::HseMobileNet::new(&vs.root(), card, hse_mobilenet::Preprocessing::HseBgrMeans)),
        "hse_faceres_mobilenet_224_rgb255" => Box::new(hse_mobilenet::HseMobileNet::new(&vs.root(), card, hse_mobilenet::Preprocessing::Rgb255)),
        "mobileface_becauseofai_112" => Box::new(mobileface::MobileFace::new(&vs.root(), card)),
        _ => bail!("model {id} has a card but no architecture"),
    };
    vs.load(&path).with_context(|| format!("{}: cannot load weights", path.display()))?;
    vs.freeze();
    Ok(model)
}

/// The device named by a setting: `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) if (n as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(n)),
            _ => bail!("device {other:?} is not available (use auto, cpu, cuda or cuda:N; CUDA present: {})", tch::Cuda::is_available()),
        },
    }
}
