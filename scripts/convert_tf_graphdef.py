"""Extracts the weights of a frozen TensorFlow GraphDef (.pb) into safetensors.

Usage: convert_tf_graphdef.py MODEL.pb OUT.safetensors [--list]

A small reader of the protobuf wire format, enough for GraphDef: NodeDef (name, op, inputs,
attrs), AttrValue and TensorProto (dtype, shape, tensor_content or float_val). TensorFlow
itself is not needed. Every float Const becomes a tensor named after its node ('/' -> '.');
a Const read by a Conv2D as its filter goes HWIO -> OIHW. `--list` prints the graph's
operations instead, to see the arithmetic to reproduce.
"""
import os
import struct
import sys

import numpy as np
from convert_common import finish

EXPECTED_PARAMETERS = {"graph_final.pb": 23_469_382}
DTYPES = {1: "<f4", 3: "<i4", 9: "<i8", 10: "?"}  # DT_FLOAT, DT_INT32, DT_INT64, DT_BOOL


def fields(buf):
    """Yields (field number, wire type, value) of one protobuf message."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire} at byte {pos}")
        yield number, wire, value


def varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def tensor(buf):
    dtype, shape, content, floats = None, [], None, []
    for number, wire, value in fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = [next(v for k, _, v in fields(dim) if k == 1) if any(k == 1 for k, _, _ in fields(dim)) else 0
                     for k, _, dim in fields(value) if k == 2]
        elif number == 4:
            content = value
        elif number == 5:
            floats.extend(struct.unpack(f"<{len(value) // 4}f", value) if wire == 2 else struct.unpack("<f", value))
    if dtype not in DTYPES:
        return None
    if content is not None:
        array = np.frombuffer(content, DTYPES[dtype])
    elif dtype == 1:
        array = np.array(floats, np.float32)
        count = int(np.prod(shape)) if shape else 1
        if array.size == 1 and count > 1:
            array = np.full(count, array[0], np.float32)
    else:
        return None
    return array.reshape(shape) if shape else array.reshape(())


def attrs(entries):
    out = {}
    for entry in entries:
        key = value = None
        for number, _, v in fields(entry):
            if number == 1:
                key = v.decode()
            elif number == 2:
                value = v
        out[key] = value
    return out


def nodes(graph):
    for number, _, node in fields(graph):
        if number != 1:
            continue
        name = op = ""
        inputs, attr_entries = [], []
        for k, _, v in fields(node):
            if k == 1:
                name = v.decode()
            elif k == 2:
                op = v.decode()
            elif k == 3:
                inputs.append(v.decode())
            elif k == 5:
                attr_entries.append(v)
        yield name, op, inputs, attrs(attr_entries)


def attr_summary(a):
    """strides / padding of a conv or pool node, for --list."""
    out = {}
    for key in ("strides", "ksize"):
        if key in a:
            lst = next(v for k, _, v in fields(a[key]) if k == 1)
            ints = [i for k, w, v in fields(lst) if k == 3 for i in ([v] if w == 0 else unpack_varints(v))]
            out[key] = ints
    if "padding" in a:
        out["padding"] = next(v for k, _, v in fields(a["padding"]) if k == 2).decode()
    return out


def unpack_varints(buf):
    pos, out = 0, []
    while pos < len(buf):
        v, pos = varint(buf, pos)
        out.append(v)
    return out


def convert(path, listing):
    with open(path, "rb") as f:
        graph = f.read()
    all_nodes = list(nodes(graph))
    conv_filters = {inputs[1].split(":")[0] for _, op, inputs, _ in all_nodes if op == "Conv2D"}
    consts, out = {}, {}
    for name, op, inputs, a in all_nodes:
        if op == "Const" and "value" in a:
            value = next((v for k, _, v in fields(a["value"]) if k == 8), None)
            t = tensor(value) if value is not None else None
            if t is not None:
                consts[name] = t
        elif listing:
            print(op, name, [i if i.split(':')[0] not in consts else f"{i}{list(consts[i.split(':')[0]].shape)}" for i in inputs], attr_summary(a))
    for name, t in consts.items():
        if t.dtype != np.float32:
            continue
        if name in conv_filters:
            t = t.transpose(3, 2, 0, 1)
        out[name.replace("/", ".")] = np.ascontiguousarray(t)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "--list"]
    listing = "--list" in sys.argv
    if len(args) != (1 if listing else 2):
        sys.exit(__doc__)
    try:
        tensors = convert(args[0], listing)
    except Exception as e:  # noqa: BLE001 - name the file whatever went wrong
        sys.exit(f"{args[0]}: cannot read the GraphDef: {e}")
    if listing:
        return
    finish(args[0], tensors, args[1], EXPECTED_PARAMETERS.get(os.path.basename(args[0])))


if __name__ == "__main__":
    main()
