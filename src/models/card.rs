//! Model cards: what a face model expects and where its weights come from.
//!
//! Every model in the zoo has a card in `src/models/cards/<id>.toml`, compiled into the binary.
//! The embed stage reads the input size and alignment from it; `cloakbench models list` prints it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub id: String,
    pub architecture: String,
    /// [height, width] of the network input.
    pub input_size: [i64; 2],
    pub channel_order: String,
    pub normalisation: String,
    /// The alignment the model was trained with (see the detect module).
    pub alignment: String,
    pub alignment_detail: String,
    pub output_dim: i64,
    pub l2_normalised: bool,
    pub distance: String,
    pub parameters: u64,
    pub training: String,
    pub claimed_lfw: String,
    pub licence: String,
    /// Marked weak: kept for diversity, not for accuracy.
    pub weak: bool,
    /// Safetensors file name in the models folder.
    pub weights: String,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
