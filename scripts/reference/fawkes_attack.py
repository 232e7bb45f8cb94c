#!/usr/bin/env python3
"""The Fawkes v1.0 attack in plain PyTorch, on the same dlib weights: the reference that
`cloakbench bench cloak` times our engine against.

Usage: fawkes_attack.py --weights W.safetensors --picture P.png --size H W --pictures N
                        --batch B --steps S [--threads T] [--device cpu|cuda|cuda:N] [--profile]

Same work as the engine: full pictures of H x W (the PNG resized), the face cropped to dlib's
150x150 chip through affine_grid + grid_sample, tanh parameterisation, Adadelta (rho 0.95,
eps 1e-7), DSSIM penalty with the adaptive weight, L-inf cap of 15. Prints one JSON line:
{"seconds": total, "pictures": N, "steps": S, "batch": B}; with --profile also "phases": seconds
per phase of the step (crop, forward, objective, backward, update: the engine's names, see
`engine::PHASES`), the clock waiting for the device at each phase's end.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dlib_resnet29 import load, read_png_rgb8  # noqa: E402

# dlib's mean face at the 5 points, padding 0.25, size 150 (src/detect/align.rs).
MEAN_FACE = [(0.224152, 0.2119465), (0.75610125, 0.2119465), (0.490127, 0.628106), (0.254149, 0.780233), (0.726104, 0.780233)]


def gaussian_window(device):
    x = torch.arange(11, dtype=torch.float32, device=device) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    return g / g.sum()


def ssim(a, b, window):
    c = a.shape[1]
    k1 = window.view(1, 1, 1, 11).expand(c, 1, 1, 11)
    k2 = window.view(1, 1, 11, 1).expand(c, 1, 11, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, k1, groups=c), k2, groups=c)  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    return (((2 * ma * mb + c1) / (ma * ma + mb * mb + c1)) * ((2 * cov + c2) / (va + vb + c2))).mean(dim=(1, 2, 3))


def chip_theta(h, w, n, device):
    """affine_grid theta taking the 150x150 chip onto a face centred in an h x w picture."""
    # The face fills the middle of the picture: its chip is the picture's central square.
    side = min(h, w) * 0.8
    s = side / 150.0
    x0, y0 = (w - side) / 2, (h - side) / 2
    m = np.array([[s, 0, x0 + 0.5 * s - 0.5], [0, s, y0 + 0.5 * s - 0.5]])
    rx = [m[0, 0] * 150 / w, m[0, 1] * 150 / w, (2 * (m[0, 0] * 149 / 2 + m[0, 1] * 149 / 2 + m[0, 2]) + 1) / w - 1]
    ry = [m[1, 0] * 150 / h, m[1, 1] * 150 / h, (2 * (m[1, 0] * 149 / 2 + m[1, 1] * 149 / 2 + m[1, 2]) + 1) / h - 1]
    return torch.tensor([rx, ry], dtype=torch.float32, device=device).expand(n, 2, 3)


class Clock:
    """Charges the time since the last lap to a phase; does nothing when off."""

    def __init__(self, on, sync):
        self.on, self.sync, self.phases, self.last = on, sync, {}, time.perf_counter()

    def reset(self):
        if self.on:
            self.sync()
            self.last = time.perf_counter()

    def lap(self, phase):
        if self.on:
            self.sync()
            now = time.perf_counter()
            self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
            self.last = now


def attack(model, x0, steps, th=0.017, lr=15.0, eps=15.0, clock=None):
    clock = clock or Clock(False, None)
    n, _, h, w = x0.shape
    theta = chip_theta(h, w, n, x0.device)
    grid = F.affine_grid(theta, (n, 3, 150, 150), align_corners=False)
    crop = lambda x: F.grid_sample(x, grid, align_corners=False)  # noqa: E731
    window = gaussian_window(x0.device)
    with torch.no_grad():
        f0 = F.normalize(model(crop(x0)), dim=1)
        c0 = crop(x0)
    w0 = torch.atanh((x0 / 127.5 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    v = (torch.rand_like(x0) * 2 - 1) * 1e-4
    v.requires_grad_(True)
    opt = torch.optim.Adadelta([v], lr=lr, rho=0.95, eps=1e-7)
    weight = torch.ones(n, device=x0.device)
    clock.reset()
    for _ in range(steps):
        x = (torch.tanh(w0 + v) + 1) * 127.5
        c = crop(x)
        clock.lap("crop")
        f = F.normalize(model(c), dim=1)
        clock.lap("forward")
        feature = ((f - f0) ** 2).sum(1) / f0.norm(dim=1)
        d = (1 - ssim(c, c0, window)) / 2
        loss = (-(weight * feature) + 1e6 * (d - th).clamp(min=0) ** 2).sum()
        clock.lap("objective")
        opt.zero_grad()
        loss.backward()
        clock.lap("backward")
        opt.step()
        with torch.no_grad():
            x = (torch.tanh(w0 + v) + 1) * 127.5
            x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 255)
            v.copy_(torch.atanh((x / 127.5 - 1).clamp(-1 + 1e-6, 1 - 1e-6)) - w0)
            weight = torch.where(d <= 0.9 * th, (weight * 2).clamp(max=256), torch.where(d >= 1.1 * th, (weight / 2).clamp(min=1 / 256), torch.ones_like(weight)))
        clock.lap("update")
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--picture", required=True)
    ap.add_argument("--size", type=int, nargs=2, required=True)
    ap.add_argument("--pictures", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = load(a.weights).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    rgb = torch.from_numpy(read_png_rgb8(a.picture).copy()).permute(2, 0, 1).float().unsqueeze(0)
    x = F.interpolate(rgb, size=tuple(a.size), mode="bilinear", align_corners=False).to(device)
    # CUDA runs asynchronously: the clock reads only after the device has finished the work.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    attack(model, x.repeat(1, 1, 1, 1), 2)  # warm-up
    sync()
    clock = Clock(a.profile, sync)
    start, done = time.perf_counter(), 0
    while done < a.pictures:
        b = min(a.batch, a.pictures - done)
        attack(model, x.repeat(b, 1, 1, 1), a.steps, clock=clock)
        done += b
    sync()
    out = {"seconds": time.perf_counter() - start, "pictures": a.pictures, "steps": a.steps, "batch": a.batch}
    if a.profile:
        out["phases"] = clock.phases
    print(json.dumps(out))


if __name__ == "__main__":
    main()
