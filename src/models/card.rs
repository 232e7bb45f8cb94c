//! Model cards: what a face model expects and where its weights come from.
//!
//! Every model in the zoo has a card in `src/models/cards/<id>.toml`, compiled into the binary.
//! The embed stage reads the input size and alignment from it; `cloakbench models list` prints it.
//!
//! Users add their own models with a card `<id>.toml` in the models folder next to a TorchScript
//! file (`format = "torchscript"`): only `id`, `input_size`, `alignment`, `output_dim` and
//! `weights` are required there; the descriptive fields default to empty.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub id: String,
    #[serde(default)]
    pub architecture: String,
    /// [height, width] of the network input.
    pub input_size: [i64; 2],
    #[serde(default)]
    pub channel_order: String,
    #[serde(default)]
    pub normalisation: String,
    /// The alignment the model was trained with: `arcface`, `dlib_chip`, `facenet_crop` or
    /// `loose_box` (see [`crate::face::align`]).
    pub alignment: String,
    #[serde(default)]
    pub alignment_detail: String,
    pub output_dim: i64,
    #[serde(default)]
    pub l2_normalised: bool,
    #[serde(default)]
    pub distance: String,
    #[serde(default)]
    pub parameters: u64,
    #[serde(default)]
    pub training: String,
    #[serde(default)]
    pub claimed_lfw: String,
    #[serde(default)]
    pub licence: String,
    /// Marked weak: kept for diversity, not for accuracy.
    #[serde(default)]
    pub weak: bool,
    /// Weights file name in the models folder.
    pub weights: String,
    /// How the weights are stored: our safetensors (a Rust architecture in this crate) or a
    /// user's TorchScript module.
    #[serde(default)]
    pub format: WeightsFormat,
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsFormat {
    #[default]
    Safetensors,
    Torchscript,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Source {
    pub registry: String,
    pub package: String,
    pub path: String,
    pub sha256: String,
    pub format: String,
}

impl ModelCard {
    pub fn parse(text: &str) -> Result<ModelCard, toml::de::Error> {
        toml::from_str(text)
    }
}
