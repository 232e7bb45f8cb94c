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
    /// The alignment the model was trained with (see `crate::face::align`).
    pub alignment: AlignmentName,
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
    /// When the weights were published (so results read as "the trainer waited for a newer
    /// model"); None when unknown.
    #[serde(default)]
    pub year: Option<u32>,
    /// Where the year comes from.
    #[serde(default)]
    pub year_source: String,
    /// The data the weights were trained on.
    #[serde(default)]
    pub training_set: String,
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

/// How a model's input face is cropped from the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlignmentName {
    /// 5-point similarity onto ArcFace's template (square input).
    Arcface,
    /// Similarity onto dlib's mean face, padding 0.25 (square input).
    DlibChip,
    /// The detector's box plus 16 px each side, resized.
    FacenetCrop,
    /// The detector's box plus 10 px each side, resized.
    LooseBox,
}

impl AlignmentName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlignmentName::Arcface => "arcface",
            AlignmentName::DlibChip => "dlib_chip",
            AlignmentName::FacenetCrop => "facenet_crop",
            AlignmentName::LooseBox => "loose_box",
        }
    }

    /// Whether the alignment makes square crops only.
    pub fn square(self) -> bool {
        matches!(self, AlignmentName::Arcface | AlignmentName::DlibChip)
    }
}

impl std::fmt::Display for AlignmentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
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

    /// What a card must hold for the model to be used: a positive input size and dimension,
    /// and a square input where the alignment crops square faces.
    pub fn check(&self) -> Result<(), String> {
        let [h, w] = self.input_size;
        if h <= 0 || w <= 0 || self.output_dim <= 0 {
            return Err(format!("model {}: input_size {:?} and output_dim {} must be positive", self.id, self.input_size, self.output_dim));
        }
        if self.alignment.square() && h != w {
            return Err(format!(
                "model {}: input_size [{h}, {w}] is not square, but alignment {} makes square crops; \
                 give a square input_size, or use facenet_crop or loose_box",
                self.id, self.alignment
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_square_input_needs_a_box_alignment() {
        let text = "id = 'x'\ninput_size = [112, 96]\nalignment = 'arcface'\noutput_dim = 8\nweights = 'x.pt'\n";
        let err = ModelCard::parse(text).unwrap().check().unwrap_err();
        assert!(err.contains("not square") && err.contains("arcface"), "{err}");
        assert!(ModelCard::parse(&text.replace("arcface", "loose_box")).unwrap().check().is_ok());
        assert!(ModelCard::parse(&text.replace("arcface", "sideways")).is_err(), "an unknown alignment is refused");
    }
}
