//! faceplugin's MobileFaceNet-512 (npm `faceplugin-face-recognition-js@0.0.1`,
//! `model/fr_feature.onnx`, converted by `scripts/convert_onnx.py`): a MobileFaceNet
//! (Chen et al. 2018, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification")
//! with batch norm folded into the convolutions. Training data and loss are not stated.
//!
//! Layout, as the ONNX graph has it (every padding explicit and symmetric): stem conv 3x3/2
//! (64) + depthwise 3x3 (64); bottlenecks at 64 / 128 / 128 channels, a stride-2 one opening
//! each stage and 4, 6 and 2 residual ones after it; 1x1 to 512 + PReLU; global depthwise 7x7
//! (linear); 1x1 512 -> 512. Input (x - 127) / 128 (127, not 127.5, as the package feeds it).

use tch::Tensor;

use super::layers::{Bottleneck, Conv, Ordered, Pad, Prelu, PreluForm};
use super::{FaceModel, ModelCard};

pub struct FacepluginMbf {
    card: ModelCard,
    stem: (Conv, Prelu),
    stem_dw: (Conv, Prelu),
    blocks: Vec<Bottleneck>,
    head: (Conv, Prelu),
    gdc: Conv,
    linear: Conv,
    device: tch::Device,
}

impl FacepluginMbf {
    pub fn new(p: &tch::nn::Path, card: ModelCard) -> FacepluginMbf {
        let mut l = Ordered::new(p, PreluForm::Standard);
        let stem = (l.conv(3, 64, 3, 2, 1, Pad::Symmetric(1)), l.prelu(64));
        let stem_dw = (l.conv(64, 64, 3, 1, 64, Pad::Symmetric(1)), l.prelu(64));
        let mut blocks = Vec::new();
        // (input channels, expansion of the stride-2 block, output channels, residual blocks)
        for (c_in, expanded, c_out, residuals) in [(64, 128, 64, 4), (64, 256, 128, 6), (128, 512, 128, 2)] {
            blocks.push(Bottleneck::new(&mut l, c_in, expanded, c_out, 2, Pad::Symmetric(1)));
            for _ in 0..residuals {
                blocks.push(Bottleneck::new(&mut l, c_out, 2 * c_out, c_out, 1, Pad::Symmetric(1)));
            }
        }
        let head = (l.conv(128, 512, 1, 1, 1, Pad::Symmetric(0)), l.prelu(512));
        let gdc = l.conv(512, 512, 7, 1, 512, Pad::Symmetric(0));
        let linear = l.conv(512, 512, 1, 1, 1, Pad::Symmetric(0));
        FacepluginMbf { card, stem, stem_dw, blocks, head, gdc, linear, device: p.device() }
    }
}

impl FaceModel for FacepluginMbf {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.device
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = (pictures - 127.0) / 128.0;
        let x = self.stem.1.forward(&self.stem.0.forward(&x));
        let mut x = self.stem_dw.1.forward(&self.stem_dw.0.forward(&x));
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let x = self.head.1.forward(&self.head.0.forward(&x));
        Ok(self.linear.forward(&self.gdc.forward(&x)).flatten(1, -1))
    }
}
