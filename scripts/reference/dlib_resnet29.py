#!/usr/bin/env python3
"""Plain PyTorch port of dlib's face recognition ResNet (dlib_resnet29_150).

Loads the safetensors file written by scripts/convert_dlib.py. As a script:

    dlib_resnet29.py --weights W.safetensors --golden DIR [--device cpu]

embeds every DIR/inputs/*.png, compares with DIR/embeddings.json and exits
non-zero if max abs diff > 1e-4 * max|golden value|.

Forward pass (all from dlib's source; dlib tensors are NCHW float32, same as here):
  x: [N,3,150,150] RGB 0..255  ->  (x - [122.782, 117.001, 104.298]) / 256
  conv1 7x7 s2 pad 0 (+bias) -> affine (x*gamma+beta) -> relu     [32,72,72]
  max_pool 3x3 s2 pad 0                                            [32,35,35]
  14 residual blocks (layers.0..13), each:
      y = relu(bn1(conv1(x)))      conv1: 3x3, stride s, pad 1 if s==1 else 0
      y = bn2(conv2(y))            conv2: 3x3, stride 1, pad 1
      sc = x                      (s == 1)
      sc = avg_pool 2x2 s2 pad 0 of x   (s == 2, "down" blocks 3, 7, 10, 13)
      out = relu(add_prev(y, sc))
    add_prev (dlib tt::add with unequal shapes): the output has the maximum of
    each dimension (C, H, W); both inputs are aligned at index 0 and the
    smaller one is zero-padded at the END (high channels, bottom rows, right
    columns).
    sizes: blocks 0-2 [32,35,35]; 3 [64,17,17]; 4-6 same; 7 [128,8,8]; 8-9 same;
           10 [256,4,4] (conv path 3x3, shortcut 4x4); 11-12 same;
           13 [256,2,2] (conv path 1x1, shortcut 2x2)
  global average over H,W -> [256]; fc_no_bias -> [128] (not L2-normalised).
"""

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN_RGB = (122.782, 117.001, 104.298)
# (out_channels, stride) of the 14 residual blocks in forward order.
BLOCKS = [(32, 1)] * 3 + [(64, 2)] + [(64, 1)] * 3 + [(128, 2)] + [(128, 1)] * 2 + \
         [(256, 2)] + [(256, 1)] * 2 + [(256, 2)]


class Affine(nn.Module):
    """dlib affine_ (CONV_MODE): per-channel y = x * weight + bias."""

    def __init__(self, ch):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_prev(a, b):
    """dlib add_prev_: elementwise sum, zero-padding the smaller tensor at the end."""
    if a.shape == b.shape:
        return a + b
    shape = [max(p, q) for p, q in zip(a.shape, b.shape)]

    def grow(t):
        # F.pad order is (W_left, W_right, H_top, H_bottom, C_front, C_back).
        pad = (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1])
        return F.pad(t, pad)

    return grow(a) + grow(b)


class Block(nn.Module):
    """dlib ares / ares_down: relu(add_prev(BN(con(relu(BN(con(x))))), shortcut))."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1 if stride == 1 else 0)
        self.bn1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1)
        self.bn2 = Affine(cout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x if self.stride == 1 else F.avg_pool2d(x, 2, 2)
        return F.relu(add_prev(y, sc))


class DlibResNet29(nn.Module):
    """Input: float32 NCHW RGB in 0..255, 150x150. Output: [N,128] raw descriptors."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.conv1 = nn.Conv2d(3, 32, 7, 2, padding=0)
        self.bn1 = Affine(32)
        layers, cin = [], 32
        for cout, stride in BLOCKS:
            layers.append(Block(cin, cout, stride))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        x = (x - self.mean) / 256.0
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2)
        for block in self.layers:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def load(path, device="cpu"):
    """Build DlibResNet29 from a convert_dlib.py safetensors file (strict names)."""
    from safetensors.torch import load_file
    model = DlibResNet29()
    model.load_state_dict(load_file(path), strict=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------
# Golden check.

def read_png_rgb8(path):
    """Minimal PNG decoder (stdlib zlib): 8-bit RGB/RGBA, non-interlaced -> HxWx3 uint8."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"{path}: unsupported PNG (depth {depth}, type {ctype}, interlace {interlace})")
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), np.int32)
    prev = np.zeros(w * bpp, np.int32)
    for r in range(h):
        ft, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        if ft == 0:
            cur = line
        elif ft == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth depend on the left neighbour: per byte
            cur = np.zeros_like(line)
            for i in range(line.size):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                if ft == 1:
                    pred = a
                elif ft == 3:
                    pred = (a + b) >> 1
                elif ft == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise ValueError(f"{path}: bad filter type {ft}")
                cur[i] = (line[i] + pred) & 0xFF
        out[r], prev = cur, cur
    return out.reshape(h, w, bpp)[:, :, :3].astype(np.uint8)


def golden_check(weights, golden_dir, device="cpu"):
    """Embed all golden PNGs; return (max_abs_diff, max_abs_ref, min_cosine, n)."""
    with open(os.path.join(golden_dir, "embeddings.json")) as f:
        ref = json.load(f)["embeddings"]
    names = sorted(ref)
    imgs = [read_png_rgb8(os.path.join(golden_dir, "inputs", n)) for n in names]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().to(device)
    model = load(weights, device)
    with torch.no_grad():
        got = model(x).double().cpu()
    want = torch.tensor([ref[n] for n in names], dtype=torch.float64)
    max_diff = (got - want).abs().max().item()
    max_ref = want.abs().max().item()
    min_cos = F.cosine_similarity(got, want, dim=1).min().item()
    return max_diff, max_ref, min_cos, len(names)


def main(argv=None):
    ap = argparse.ArgumentParser(description="dlib_resnet29_150 PyTorch reference: golden check")
    ap.add_argument("--weights", required=True, help="safetensors from convert_dlib.py")
    ap.add_argument("--golden", required=True, help="golden dir with inputs/ and embeddings.json")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    max_diff, max_ref, min_cos, n = golden_check(args.weights, args.golden, args.device)
    ratio = max_diff / max_ref
    print(f"{n} images: max abs diff {max_diff:.3e}, max|value| {max_ref:.4f}, "
          f"ratio {ratio:.3e} (tolerance 1e-4), min cosine {min_cos:.9f}")
    if ratio > 1e-4:
        print("FAIL: max abs diff exceeds 1e-4 * max|value|", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
