#!/usr/bin/env python3
"""facenet-pytorch 2.6.0's MTCNN (the original runtime of cloakbench's detector, same
weights): the reference that `cloakbench bench detect` times our detector against.

Usage: mtcnn_detect.py --threads T [--device cpu|cuda|cuda:N] FILE...

Decodes every file first (Pillow, EXIF orientation applied, as cloakbench decodes), then times
`MTCNN.detect` picture by picture with the default settings (min face 20, factor 0.709,
thresholds 0.6, 0.7, 0.7). Prints one JSON line: {"seconds": detection time, "pictures": N,
"faces": faces found}.
"""
import argparse
import importlib.util
import json
import sys
import time
import types

import numpy as np
import torch
from PIL import Image, ImageOps


def import_mtcnn():
    # The package's __init__ also imports its recognition model, which needs `requests`;
    # registering the package as a bare namespace imports the detector alone.
    spec = importlib.util.find_spec("facenet_pytorch")
    package = types.ModuleType("facenet_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["facenet_pytorch"] = package
    from facenet_pytorch.models.mtcnn import MTCNN
    return MTCNN


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("files", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mtcnn = import_mtcnn()(keep_all=True, device=a.device)
    pictures = [np.asarray(ImageOps.exif_transpose(Image.open(f)).convert("RGB")) for f in a.files]
    mtcnn.detect(pictures[0])  # warm-up
    faces = 0
    start = time.perf_counter()
    for rgb in pictures:
        boxes, _ = mtcnn.detect(rgb)
        faces += 0 if boxes is None else len(boxes)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(json.dumps({"seconds": time.perf_counter() - start, "pictures": len(pictures), "faces": faces}))


if __name__ == "__main__":
    main()
