//! dlib's face-recognition ResNet ("dlib_face_recognition_resnet_model_v1", Davis King, 2017):
//! a thinned ResNet-34 with 29 convolutions and a 128-unit metric embedding, trained with a
//! pairwise hinge loss. Weights: PyPI `face-recognition-models==0.3.0`, converted from dlib's
//! serialisation to safetensors by `scripts/convert_dlib.py`.
//!
//! Written to reproduce dlib's arithmetic, not a generic ResNet:
//! - convolutions with stride 2 have no padding (dlib's default), stride-1 ones pad by 1;
//! - batch norm was folded into per-channel `affine` layers (gamma * x + beta);
//! - a downsampling block adds `avg_pool(2, stride 2)` of its input to the block's output; the
//!   two can differ in channels (32 vs 64) and in size (4x4 vs 3x3): dlib's `add_prev` sums the
//!   overlapping region of tensors aligned at the origin, i.e. zero-pads the smaller one at the
//!   end of each dimension;
//! - the input is normalised inside: (x - mean) / 256 per RGB channel.

use tch::{Tensor, nn};

use super::{FaceModel, ModelCard};

const MEAN_RGB: [f64; 3] = [122.782, 117.001, 104.298];

/// Per-channel affine transform (dlib's `affine` layer: batch norm folded for inference).
#[derive(Debug)]
struct Affine {
    weight: Tensor,
    bias: Tensor,
}

impl Affine {
    fn new(p: &nn::Path, channels: i64) -> Affine {
        Affine { weight: p.var("weight", &[channels], nn::Init::Const(1.)), bias: p.var("bias", &[channels], nn::Init::Const(0.)) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x * self.weight.view([1, -1, 1, 1]) + self.bias.view([1, -1, 1, 1])
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let padding = if stride == 1 { k / 2 } else { 0 };
    nn::conv2d(p, c_in, c_out, k, nn::ConvConfig { stride, padding, ..Default::default() })
}

/// conv-affine-relu-conv-affine, plus the shortcut, then relu.
#[derive(Debug)]
struct Block {
    conv1: nn::Conv2D,
    bn1: Affine,
    conv2: nn::Conv2D,
    bn2: Affine,
    downsample: bool,
}

impl Block {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, downsample: bool) -> Block {
        Block {
            conv1: conv(p / "conv1", c_in, c_out, 3, if downsample { 2 } else { 1 }),
            bn1: Affine::new(&(p / "bn1"), c_out),
            conv2: conv(p / "conv2", c_out, c_out, 3, 1),
            bn2: Affine::new(&(p / "bn2"), c_out),
            downsample,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.bn1.forward(&x.apply(&self.conv1)).relu();
        let y = self.bn2.forward(&y.apply(&self.conv2));
        let shortcut = if self.downsample { x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None) } else { x.shallow_clone() };
        add_prev(&y, &shortcut).relu()
    }
}

/// dlib's `add_prev`: the output takes the larger size in every dimension and sums where the
/// two tensors overlap (both aligned at index 0), which is zero-padding the smaller at the end.
fn add_prev(a: &Tensor, b: &Tensor) -> Tensor {
    let (sa, sb) = (a.size(), b.size());
    let target: Vec<i64> = sa.iter().zip(&sb).map(|(x, y)| *x.max(y)).collect();
    pad_to(a, &target) + pad_to(b, &target)
}

fn pad_to(t: &Tensor, target: &[i64]) -> Tensor {
    let size = t.size();
    if size == target {
        return t.shallow_clone();
    }
    // constant_pad_nd takes (before, after) pairs from the last dimension backwards: W, H, C.
    let pad = [0, target[3] - size[3], 0, target[2] - size[2], 0, target[1] - size[1]];
    t.constant_pad_nd(pad)
}

/// The network: stem, 14 residual blocks, global average pool, 128-unit fc without bias.
#[derive(Debug)]
pub struct DlibResNet29 {
    card: ModelCard,
    conv1: nn::Conv2D,
    bn1: Affine,
    layers: Vec<Block>,
    fc: Tensor,
    mean: Tensor,
}

/// (channels, downsample) of the 14 blocks, in forward order.
const BLOCKS: [(i64, bool); 14] = [
    (32, false),
    (32, false),
    (32, false),
    (64, true),
    (64, false),
    (64, false),
    (64, false),
    (128, true),
    (128, false),
    (128, false),
    (256, true),
    (256, false),
    (256, false),
    (256, true),
];

impl DlibResNet29 {
    pub fn new(p: &nn::Path, card: ModelCard) -> DlibResNet29 {
        let mut c_in = 32;
        let layers = BLOCKS
            .iter()
            .enumerate()
            .map(|(i, &(c_out, down))| {
                let block = Block::new(&(p / "layers" / i), c_in, c_out, down);
                c_in = c_out;
                block
            })
            .collect();
        DlibResNet29 {
            card,
            conv1: conv(p / "conv1", 3, 32, 7, 2),
            bn1: Affine::new(&(p / "bn1"), 32),
            layers,
            fc: p.sub("fc").var("weight", &[128, 256], nn::Init::Const(0.)),
            mean: Tensor::from_slice(&MEAN_RGB).to_kind(tch::Kind::Float).view([1, 3, 1, 1]).to_device(p.device()),
        }
    }
}

impl FaceModel for DlibResNet29 {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.mean.device()
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = (pictures - &self.mean) / 256.0;
        let x = self.bn1.forward(&x.apply(&self.conv1)).relu();
        let mut x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        for block in &self.layers {
            x = block.forward(&x);
        }
        Ok(x.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float).matmul(&self.fc.tr()))
    }
}
