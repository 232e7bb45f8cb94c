"""Runs a TorchScript face model (as cloakbench loads users' models) on a golden folder's inputs
and prints the largest difference from the original runtime's embeddings, relative to their
largest value.

Usage: compare_golden.py MODEL.pt GOLDEN_DIR
"""
import json
import sys

import numpy as np
import torch
from PIL import Image


def main():
    model = torch.jit.load(sys.argv[1])
    folder = sys.argv[2]
    golden = json.load(open(f"{folder}/embeddings.json"))["embeddings"]
    worst = 0.0
    for name, want in golden.items():
        pixels = np.asarray(Image.open(f"{folder}/inputs/{name}").convert("RGB"), dtype=np.float32)
        got = model(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].detach().numpy()
        want = np.asarray(want)
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    print(json.dumps({"inputs": len(golden), "max_diff_ratio": worst}))


if __name__ == "__main__":
    main()
