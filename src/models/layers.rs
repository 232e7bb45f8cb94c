//! Building blocks shared by the networks converted from graph formats (ONNX, TFLite), whose
//! weights are named by layer order: the i-th convolution is `conv.<i>`, the j-th PReLU
//! `prelu.<j>` (see scripts/convert_onnx.py and scripts/convert_tflite.py).

use tch::{Tensor, nn, nn::Module};

/// The variable under a dotted graph name, e.g. `conv1.convolution.merged_input` (the
/// converters of graph formats keep the graph's names, '/' turned into '.').
pub fn named_var(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    let parts: Vec<&str> = name.split('.').collect();
    let (last, dirs) = parts.split_last().expect("a name");
    match dirs.split_first() {
        None => p.var(last, dims, nn::Init::Const(0.0)),
        Some((first, rest)) => rest.iter().fold(p.sub(*first), |acc, d| acc.sub(*d)).var(last, dims, nn::Init::Const(0.0)),
    }
}

/// How a convolution pads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pad {
    /// The same number of pixels on every side (ONNX's explicit pads, PyTorch's padding).
    Symmetric(i64),
    /// TensorFlow's "SAME": output = ceil(input / stride), any odd pixel of padding at the
    /// bottom and right. Differs from symmetric padding for stride 2 on even sizes.
    Same,
}

/// A convolution with its padding rule.
#[derive(Debug)]
pub struct Conv {
    conv: nn::Conv2D,
    pad: Pad,
    kernel: i64,
    stride: i64,
}

impl Conv {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.pad {
            Pad::Symmetric(_) => self.conv.forward(x),
            Pad::Same => self.conv.forward(&pad_same(x, self.kernel, self.stride)),
        }
    }
}

/// Pads `x` ([N, C, H, W]) as TensorFlow's "SAME" does before a `kernel`/`stride` window.
pub fn pad_same(x: &Tensor, kernel: i64, stride: i64) -> Tensor {
    let size = x.size();
    let ((top, bottom), _) = same_padding(size[2], kernel, stride);
    let ((left, right), _) = same_padding(size[3], kernel, stride);
    if top + bottom + left + right == 0 { x.shallow_clone() } else { x.constant_pad_nd([left, right, top, bottom]) }
}

/// TensorFlow's SAME padding of one dimension: ((before, after), output size).
fn same_padding(input: i64, kernel: i64, stride: i64) -> ((i64, i64), i64) {
    let out = (input + stride - 1) / stride;
    let total = ((out - 1) * stride + kernel - input).max(0);
    ((total / 2, total - total / 2), out)
}

/// How a PReLU is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreluForm {
    /// max(0, x) + a min(0, x).
    Standard,
    /// relu(x) + s (x - |x|), as TensorFlow graphs spell it (s = a / 2).
    TfSplit,
}

#[derive(Debug)]
pub struct Prelu {
    weight: Tensor,
    form: PreluForm,
}

impl Prelu {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.form {
            PreluForm::Standard => x.prelu(&self.weight),
            PreluForm::TfSplit => x.relu() + (x - x.abs()) * self.weight.view([1, -1, 1, 1]),
        }
    }
}

/// Creates layers in graph order under `conv.<i>` and `prelu.<j>`.
pub struct Ordered<'a> {
    root: &'a nn::Path<'a>,
    convs: usize,
    prelus: usize,
    prelu_form: PreluForm,
}

impl<'a> Ordered<'a> {
    pub fn new(root: &'a nn::Path<'a>, prelu_form: PreluForm) -> Ordered<'a> {
        Ordered { root, convs: 0, prelus: 0, prelu_form }
    }

    /// The next convolution (with bias); `groups == c_in` makes it depthwise.
    pub fn conv(&mut self, c_in: i64, c_out: i64, kernel: i64, stride: i64, groups: i64, pad: Pad) -> Conv {
        let padding = match pad {
            Pad::Symmetric(p) => p,
            Pad::Same => 0,
        };
        let cfg = nn::ConvConfig { stride, padding, groups, ..Default::default() };
        let conv = nn::conv2d(self.root / "conv" / self.convs, c_in, c_out, kernel, cfg);
        self.convs += 1;
        Conv { conv, pad, kernel, stride }
    }

    /// The next PReLU.
    pub fn prelu(&mut self, channels: i64) -> Prelu {
        let weight = (self.root / "prelu" / self.prelus).var("weight", &[channels], nn::Init::Const(0.25));
        self.prelus += 1;
        Prelu { weight, form: self.prelu_form }
    }
}

/// MobileFaceNet's bottleneck: 1x1 expand + PReLU, depthwise 3x3 (stride) + PReLU, linear 1x1
/// project; the input is added back when the shapes allow.
#[derive(Debug)]
pub struct Bottleneck {
    expand: (Conv, Prelu),
    depthwise: (Conv, Prelu),
    project: Conv,
    residual: bool,
}

impl Bottleneck {
    /// `pad3` is the padding rule of the 3x3 depthwise convolution.
    pub fn new(l: &mut Ordered, c_in: i64, expanded: i64, c_out: i64, stride: i64, pad3: Pad) -> Bottleneck {
        let expand = (l.conv(c_in, expanded, 1, 1, 1, Pad::Symmetric(0)), l.prelu(expanded));
        let depthwise = (l.conv(expanded, expanded, 3, stride, expanded, pad3), l.prelu(expanded));
        let project = l.conv(expanded, c_out, 1, 1, 1, Pad::Symmetric(0));
        Bottleneck { expand, depthwise, project, residual: stride == 1 && c_in == c_out }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.expand.1.forward(&self.expand.0.forward(x));
        let y = self.depthwise.1.forward(&self.depthwise.0.forward(&y));
        let y = self.project.forward(&y);
        if self.residual { y + x } else { y }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_last() {
        assert_eq!(same_padding(112, 3, 2), ((0, 1), 56));
        assert_eq!(same_padding(7, 3, 2), ((1, 1), 4));
        assert_eq!(same_padding(56, 3, 1), ((1, 1), 56));
    }
}
