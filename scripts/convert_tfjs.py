"""Extracts the weights of a TF.js graph model into safetensors under their graph names.

Usage: convert_tfjs.py MODEL.json WEIGHTS.bin OUT.safetensors

Reads the JSON's weightsManifest (names, shapes, dtypes, float16/uint8 quantisation), slices
the .bin, and writes every float weight as float32 with '/' in names replaced by '.'.
Layouts move to PyTorch's: a Conv2D filter HWIO -> OIHW, a depthwise filter HWC1 -> C1HW
(which one a weight is comes from the node that reads it). Integer constants (paddings,
shapes, axes) are checked, not written: every Pad must be 1 pixel on each side, every clip of
a ReLU6 must be [0, 6], as the Rust modules assume. Heads that are not part of the face
descriptor (age, gender, the 256-unit feats layer) are left out.
"""
import json
import os
import sys

import numpy as np
from convert_common import finish

# Parameters up to each model's descriptor (MODELS.md).
EXPECTED_PARAMETERS = {"faceres.json": 3_201_046, "mobileface.json": 545_692}
SKIPPED_PREFIXES = ("age_pred", "gender_pred", "feats")


def read_weights(manifest, data):
    """name -> numpy array, dequantised, in manifest order."""
    out, offset = {}, 0
    for group in manifest:
        for w in group["weights"]:
            shape, n = w["shape"], int(np.prod(w["shape"], dtype=np.int64))
            q = w.get("quantization")
            dtype = q["dtype"] if q else w["dtype"]
            itemsize = {"float32": 4, "int32": 4, "float16": 2, "uint8": 1, "uint16": 2}[dtype]
            raw = data[offset: offset + n * itemsize]
            if len(raw) != n * itemsize:
                raise ValueError(f"weights file too short for {w['name']}")
            offset += n * itemsize
            if dtype == "float16":
                v = np.frombuffer(raw, "<f2").astype(np.float32)
            elif dtype in ("uint8", "uint16"):
                v = np.frombuffer(raw, "<u1" if dtype == "uint8" else "<u2").astype(np.float32) * q["scale"] + q["min"]
            else:
                v = np.frombuffer(raw, "<f4" if dtype == "float32" else "<i4")
            out[w["name"]] = v.reshape(shape)
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes of the weights file are not in the manifest")
    return out


def check_constants(nodes, weights):
    for n in nodes:
        if n["op"] == "Pad":
            pads = weights[n["input"][1]].tolist()
            if pads != [[0, 0], [1, 1], [1, 1], [0, 0]]:
                raise ValueError(f"{n['name']}: paddings {pads}, expected 1 pixel on each side")
        if n["op"] == "Minimum" and n["name"].endswith("clip_by_value/Minimum"):
            if float(weights[n["input"][1]]) != 6.0:
                raise ValueError(f"{n['name']}: ReLU6 clip is not 6")


def convert(model_path, weights_path):
    with open(model_path) as f:
        model = json.load(f)
    with open(weights_path, "rb") as f:
        weights = read_weights(model["weightsManifest"], f.read())
    nodes = model["modelTopology"]["node"]
    check_constants(nodes, weights)
    role = {}
    for n in nodes:
        if n["op"] in ("Conv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative", "_FusedConv2D"):
            role[n["input"][1]] = "depthwise" if "Depthwise" in n["op"] else "conv"
    out = {}
    for name, v in weights.items():
        if v.dtype != np.float32 or name.startswith(SKIPPED_PREFIXES):
            continue
        if role.get(name) == "conv":
            v = v.transpose(3, 2, 0, 1)
        elif role.get(name) == "depthwise":
            v = v.transpose(2, 3, 0, 1)
        out[name.replace("/", ".")] = np.ascontiguousarray(v)
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    model_path, weights_path, out = sys.argv[1:]
    try:
        tensors = convert(model_path, weights_path)
    except Exception as e:  # noqa: BLE001 - name the files whatever went wrong
        sys.exit(f"{model_path} + {weights_path}: cannot convert: {e}")
    finish(model_path, tensors, out, EXPECTED_PARAMETERS.get(os.path.basename(model_path)))


if __name__ == "__main__":
    main()
