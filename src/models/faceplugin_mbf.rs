//! faceplugin's MobileFaceNet-512 (npm `faceplugin-face-recognition-js@0.0.1`,
//! `model/fr_feature.onnx`, converted by `scripts/convert_onnx.py`): a MobileFaceNet
//! (Chen et al. 2018, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification")
//! with batch norm folded into the convolutions. Training data and loss are not stated.
//!
//! Layout, as the ONNX graph has it (every padding explicit and symmetric):
//! stem conv 3x3/2 (64) + depthwise 3x3 (64); bottlenecks (1x1 expand + PReLU, depthwise 3x3 +
//! PReLU, linear 1x1 project) at 64 / 128 / 128 channels with a stride-2 one opening each
//! stage (4, 6 and 2 residual ones after it); 1x1 to 512 + PReLU; global depthwise 7x7
//! (linear); 1x1 512 -> 512. Input (x - 127) / 128 (127, not 127.5, as the package feeds it).
//!
//! Layers are created in graph order, so `conv.<i>` and `prelu.<j>` in the weights file are
//! the i-th convolution and j-th PReLU.

use tch::{Tensor, nn, nn::Module};

use super::{FaceModel, ModelCard};

/// Creates convolutions and PReLUs in graph order under `conv.<i>` / `prelu.<j>`.
struct Layers<'a> {
    root: &'a nn::Path<'a>,
    convs: usize,
    prelus: usize,
}

impl Layers<'_> {
    fn conv(&mut self, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
        let padding = if k == 3 { 1 } else { 0 };
        let cfg = nn::ConvConfig { stride, padding, groups, ..Default::default() };
        let conv = nn::conv2d(self.root / "conv" / self.convs, c_in, c_out, k, cfg);
        self.convs += 1;
        conv
    }

    fn prelu(&mut self, channels: i64) -> Tensor {
        let w = (self.root / "prelu" / self.prelus).var("weight", &[channels], nn::Init::Const(0.25));
        self.prelus += 1;
        w
    }
}

/// expand 1x1 + PReLU, depthwise 3x3 + PReLU, project 1x1; residual when shapes allow.
struct Bottleneck {
    expand: (nn::Conv2D, Tensor),
    depthwise: (nn::Conv2D, Tensor),
    project: nn::Conv2D,
    residual: bool,
}

impl Bottleneck {
    fn new(l: &mut Layers, c_in: i64, expanded: i64, c_out: i64, stride: i64) -> Bottleneck {
        let expand = (l.conv(c_in, expanded, 1, 1, 1), l.prelu(expanded));
        let depthwise = (l.conv(expanded, expanded, 3, stride, expanded), l.prelu(expanded));
        let project = l.conv(expanded, c_out, 1, 1, 1);
        Bottleneck { expand, depthwise, project, residual: stride == 1 && c_in == c_out }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.expand.0.forward(x).prelu(&self.expand.1);
        let y = self.depthwise.0.forward(&y).prelu(&self.depthwise.1);
        let y = self.project.forward(&y);
        if self.residual { y + x } else { y }
    }
}

pub struct FacepluginMbf {
    card: ModelCard,
    stem: (nn::Conv2D, Tensor),
    stem_dw: (nn::Conv2D, Tensor),
    blocks: Vec<Bottleneck>,
    head: (nn::Conv2D, Tensor),
    gdc: nn::Conv2D,
    linear: nn::Conv2D,
    device: tch::Device,
}

impl FacepluginMbf {
    pub fn new(p: &nn::Path, card: ModelCard) -> FacepluginMbf {
        let mut l = Layers { root: p, convs: 0, prelus: 0 };
        let stem = (l.conv(3, 64, 3, 2, 1), l.prelu(64));
        let stem_dw = (l.conv(64, 64, 3, 1, 64), l.prelu(64));
        let mut blocks = Vec::new();
        // (input channels, expansion, output channels, stride-2 block + residual blocks)
        for (c_in, expanded, c_out, residuals) in [(64, 128, 64, 4), (64, 256, 128, 6), (128, 512, 128, 2)] {
            blocks.push(Bottleneck::new(&mut l, c_in, expanded, c_out, 2));
            let expanded = if expanded == 512 { 256 } else { expanded };
            for _ in 0..residuals {
                blocks.push(Bottleneck::new(&mut l, c_out, expanded, c_out, 1));
            }
        }
        let head = (l.conv(128, 512, 1, 1, 1), l.prelu(512));
        let gdc = l.conv(512, 512, 7, 1, 512);
        let linear = l.conv(512, 512, 1, 1, 1);
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

    fn embed(&self, pictures: &Tensor) -> Tensor {
        let x = (pictures - 127.0) / 128.0;
        let x = self.stem.0.forward(&x).prelu(&self.stem.1);
        let mut x = self.stem_dw.0.forward(&x).prelu(&self.stem_dw.1);
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let x = self.head.0.forward(&x).prelu(&self.head.1);
        self.linear.forward(&self.gdc.forward(&x)).flatten(1, -1)
    }
}
