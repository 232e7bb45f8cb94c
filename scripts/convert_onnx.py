"""Extracts the weights of an ONNX face model into safetensors, named by layer order.

Usage: convert_onnx.py MODEL.onnx OUT.safetensors

Walks the graph's nodes in order and names each Conv's initializers `conv.<i>.weight` and
`conv.<i>.bias`, and each PRelu slope `prelu.<j>.weight` (flattened to one value per channel),
counting Convs and PRelus separately from 0. The Rust module (src/models/faceplugin_mbf.rs)
creates its layers in the same order, so the names line up. Only weights leave this script:
the network itself is written in Rust. Uses the maintained `onnx` reader.
"""
import os
import sys

import numpy as np
import onnx
from convert_common import finish
from onnx import numpy_helper

EXPECTED_PARAMETERS = {"fr_feature.onnx": 1_190_336}


def named_weights(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out, n_conv, n_prelu = {}, 0, 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out[f"conv.{n_conv}.weight"] = inits[node.input[1]]
            if len(node.input) > 2:
                out[f"conv.{n_conv}.bias"] = inits[node.input[2]]
            n_conv += 1
        elif node.op_type == "PRelu":
            out[f"prelu.{n_prelu}.weight"] = inits[node.input[1]].reshape(-1)
            n_prelu += 1
        elif node.op_type not in ("Add", "Reshape"):
            raise ValueError(f"unexpected operator {node.op_type} ({node.name})")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1:]
    try:
        tensors = named_weights(onnx.load(src))
    except Exception as e:  # noqa: BLE001 - name the file whatever went wrong
        sys.exit(f"{src}: cannot read the ONNX model: {e}")
    finish(src, tensors, out, EXPECTED_PARAMETERS.get(os.path.basename(src)))


if __name__ == "__main__":
    main()
