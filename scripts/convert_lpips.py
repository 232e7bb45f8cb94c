"""Converts LPIPS-AlexNet (lpips v0.1) into one safetensors file for cloakbench's LowKey budget.

Usage: convert_lpips.py ALEXNET.pth LPIPS_LIN.pth OUT.safetensors

ALEXNET.pth is torchvision's ImageNet AlexNet state dict (alexnet-owt-7be5be79.pth, from
download.pytorch.org: the one file no registry reachable here ships); LPIPS_LIN.pth is the `lpips`
wheel's weights/v0.1/alex.pth (its five linear layers). Writes `features.{0,3,6,8,10}.{weight,bias}`
(torchvision's names; the classifier is dropped) and `lin.{0..4}` (lpips' `linK.model.1.weight`),
as src/models/lpips.rs reads them. Loaded with weights_only=True: no pickled code runs.
"""
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file

TRUNK = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
LIN_CHANNELS = [64, 192, 384, 256, 256]


def load(path, what):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file by name
        sys.exit(f"{path}: not a readable PyTorch state dict ({what}): {e}")


def convert(trunk, lin):
    """The tensors cloakbench loads, from an AlexNet state dict and an lpips linear-layer one."""
    out = {}
    for i, shape in TRUNK.items():
        w, b = trunk.get(f"features.{i}.weight"), trunk.get(f"features.{i}.bias")
        if w is None or tuple(w.shape) != shape or b is None:
            raise ValueError(f"features.{i}: expected an AlexNet convolution of shape {shape}")
        out[f"features.{i}.weight"], out[f"features.{i}.bias"] = w, b
    for k, c in enumerate(LIN_CHANNELS):
        w = lin.get(f"lin{k}.model.1.weight")
        if w is None or tuple(w.shape) != (1, c, 1, 1):
            raise ValueError(f"lin{k}.model.1.weight: expected shape (1, {c}, 1, 1)")
        out[f"lin.{k}"] = w
    return {k: v.float().contiguous() for k, v in out.items()}


def save(tensors, out, source):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".part")
    os.close(fd)
    save_file(tensors, tmp, metadata={"model_id": "lpips_alex", "source": source})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    alexnet, lin, out = sys.argv[1:]
    try:
        tensors = convert(load(alexnet, "torchvision AlexNet"), load(lin, "lpips linear layers"))
    except ValueError as e:
        sys.exit(f"{alexnet} / {lin}: {e}")
    save(tensors, out, f"{os.path.basename(alexnet)} + lpips==0.1.4 weights/v0.1/alex.pth")
    print(f"wrote {out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} parameters")


if __name__ == "__main__":
    main()
