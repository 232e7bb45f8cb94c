"""Extracts the weights of a TFLite face model into safetensors, named by layer order.

Usage: convert_tflite.py MODEL.tflite OUT.safetensors

Walks the operators in order and names each convolution's weights `conv.<i>.weight` (OHWI ->
OIHW; depthwise 1HWC -> C1HW) and `conv.<i>.bias`, and each PReLU slope `prelu.<j>.weight`,
counting separately from 0. TFLite (as converted from TensorFlow) spells PReLU as
relu(x) + s * (x - |x|): the MUL's constant `s` is stored as is, and the Rust module
(src/models/mobilefacenet_tflite.rs) computes the same expression. Uses the maintained
`tflite` flatbuffer reader; only weights leave this script.
"""
import os
import sys

import numpy as np
import tflite
from convert_common import finish

EXPECTED_PARAMETERS = {"MobileFaceNet.tflite": 1_292_992}
OPS = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}


def tensor(model, graph, index):
    t = graph.Tensors(index)
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if t.Type() != tflite.TensorType.FLOAT32:
        raise ValueError(f"tensor {t.Name().decode()} is not float32")
    return np.frombuffer(data.tobytes(), dtype="<f4").reshape(t.ShapeAsNumpy())


def named_weights(model):
    graph = model.Subgraphs(0)
    out, n_conv, n_prelu = {}, 0, 0
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = OPS.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        inputs = op.InputsAsNumpy()
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = tensor(model, graph, inputs[1])
            w = w.transpose(0, 3, 1, 2) if name == "CONV_2D" else w.transpose(3, 0, 1, 2)
            out[f"conv.{n_conv}.weight"] = w
            out[f"conv.{n_conv}.bias"] = tensor(model, graph, inputs[2])
            n_conv += 1
        elif name == "MUL":
            # relu(x) + s * (x - |x|): the constant operand is the slope term.
            const = [i for i in inputs if model.Buffers(graph.Tensors(i).Buffer()).DataLength() > 0]
            out[f"prelu.{n_prelu}.weight"] = tensor(model, graph, const[0]).reshape(-1)
            n_prelu += 1
        elif name not in ("RELU", "ABS", "SUB", "ADD", "RESHAPE"):
            raise ValueError(f"unexpected operator {name} at {k}")
    return {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in out.items()}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1:]
    try:
        with open(src, "rb") as f:
            tensors = named_weights(tflite.Model.GetRootAsModel(f.read(), 0))
    except Exception as e:  # noqa: BLE001 - name the file whatever went wrong
        sys.exit(f"{src}: cannot read the TFLite model: {e}")
    finish(src, tensors, out, EXPECTED_PARAMETERS.get(os.path.basename(src)))


if __name__ == "__main__":
    main()
