#!/usr/bin/env python3
"""Convert dlib's dlib_face_recognition_resnet_model_v1.dat to safetensors.

Usage: convert_dlib.py SRC.dat OUT.safetensors [--sha256 HEX]

Reads dlib's DNN serialisation format (dlib/serialize.h, dlib/dnn/core.h,
dlib/dnn/layers.h, dlib/dnn/tensor.h, dlib/dnn/input.h, dlib/dnn/loss.h) and
extracts the weights only; the network graph is fixed (see
scripts/reference/dlib_resnet29.py). Output tensors are float32 in PyTorch
conventions: conv weight [out, in, kh, kw], linear weight [out, in].

Format summary (verified against dlib's source):
  * integers: one control byte (low 4 bits = byte count, 0x80 = negative),
    then that many little-endian magnitude bytes; 0 is written as 01 00.
  * bool: one ASCII byte '0' or '1'.
  * string: packed-int length, then raw bytes.
  * float/double: float_details = packed int64 mantissa, packed int16
    exponent; value = mantissa * 2**exponent.
  * tensor (resizable_tensor, version 2): packed version, num_samples, k, nr,
    nc, then num_samples*k*nr*nc raw little-endian float32.
  * alias_tensor (version 1): packed version, num_samples, k, nr, nc.
  * add_loss_layer (v1): version, loss details, subnet.
  * add_layer (v2):      version, subnet, details, 3 bools, x_grad,
                         cached_output, params_grad tensors.
  * add_layer over the input layer (v3): version, input layer, details,
                         3 bools, x_grad, cached_output, grad_final tensors,
                         sample_expansion_factor int.
  * add_tag_layer / add_skip_layer (v1): version, subnet.
  Because every add_layer writes its subnet before its own details, the
  layer details appear in forward order (input first, fc last).

Only numpy, safetensors and the standard library are used.
"""

import argparse
import hashlib
import math
import os
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file

MODEL_ID = "dlib_resnet29_150"
EXPECTED_PARAMS = 5_614_592
# Output channels of the 14 residual blocks in forward order; True = downsampling.
BLOCKS = [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + \
         [(128, True)] + [(128, False)] * 2 + [(256, True)] + [(256, False)] * 2 + \
         [(256, True)]


class FormatError(Exception):
    """Raised for any malformed or unexpected content in the source file."""


class Reader:
    """Sequential reader over the bytes of a dlib serialised object."""

    def __init__(self, data, path):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, msg):
        raise FormatError(f"{self.path}: offset {self.pos}: {msg}")

    def take(self, n):
        # Return the next n raw bytes.
        if self.pos + n > len(self.data):
            self.fail(f"unexpected end of file (wanted {n} bytes)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self):
        # dlib packed integer: control byte (size | 0x80 if negative) + LE bytes.
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            self.pos -= 1
            self.fail(f"bad integer control byte 0x{ctrl:02x}")
        val = int.from_bytes(self.take(size), "little")
        return -val if ctrl & 0x80 else val

    def bool(self):
        # dlib writes bools as the ASCII characters '0' / '1'.
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            self.pos -= 1
            self.fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def string(self):
        n = self.int()
        if not 0 <= n <= 1 << 16:
            self.fail(f"implausible string length {n}")
        return self.take(n).decode("latin-1")

    def peek_string(self):
        # Return the string at the cursor without consuming it (None if not one).
        save = self.pos
        try:
            return self.string()
        except FormatError:
            return None
        finally:
            self.pos = save

    def real(self):
        # float_details: int64 mantissa, int16 exponent (value = m * 2**e).
        mant, exp = self.int(), self.int()
        if exp in (32000, 32001, 32002):
            return {32000: math.inf, 32001: -math.inf, 32002: math.nan}[exp]
        return math.ldexp(mant, exp)

    def tensor(self):
        # resizable_tensor version 2: dims then raw float32 little-endian.
        ver = self.int()
        if ver != 2:
            self.fail(f"unsupported tensor version {ver} (expected 2)")
        dims = tuple(self.int() for _ in range(4))  # num_samples, k, nr, nc
        if min(dims) < 0:
            self.fail(f"negative tensor dims {dims}")
        count = math.prod(dims)
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self):
        # alias_tensor version 1: dims only.
        ver = self.int()
        if ver != 1:
            self.fail(f"unsupported alias_tensor version {ver}")
        return tuple(self.int() for _ in range(4))


# ---------------------------------------------------------------------------
# Layer "details" readers, keyed by the version string each one writes.

def read_input_rgb_image_sized(r):
    return {"mean_rgb": (r.real(), r.real(), r.real()), "nr": r.int(), "nc": r.int()}


def read_con(r):
    d = {"params": r.tensor(), "num_filters": r.int(), "nr": r.int(), "nc": r.int(),
         "stride": (r.int(), r.int()), "padding": (r.int(), r.int()),
         "filters": r.alias(), "biases": r.alias()}
    d["multipliers"] = [r.real() for _ in range(4)]
    return d


def read_affine(r):
    d = {"params": r.tensor(), "gamma": r.alias(), "beta": r.alias()}
    d["mode"] = r.int()  # 0 = CONV_MODE (per channel), 1 = FC_MODE
    return d


def read_pool(r):
    return {"nr": r.int(), "nc": r.int(), "stride": (r.int(), r.int()),
            "padding": (r.int(), r.int())}


def read_fc(r):
    d = {"num_outputs": r.int(), "num_inputs": r.int(), "params": r.tensor(),
         "weights": r.alias(), "biases": r.alias(), "bias_mode": r.int()}
    d["multipliers"] = [r.real() for _ in range(4)]
    return d


DETAIL_READERS = {
    "input_rgb_image_sized": read_input_rgb_image_sized,
    "con_4": read_con,
    "affine_": read_affine,
    "relu_": lambda r: {},
    "max_pool_2": read_pool,
    "avg_pool_2": read_pool,
    "add_prev_": lambda r: {},
    "fc_2": read_fc,
}


def read_details(r, layers):
    # Read one layer's details (version string + fields) and record it.
    at = r.pos
    name = r.string()
    if name not in DETAIL_READERS:
        r.pos = at
        r.fail(f"unsupported layer type {name!r}")
    d = DETAIL_READERS[name](r)
    d["type"] = name
    layers.append(d)


def read_subnet(r, layers):
    # One add_layer / add_tag_layer / add_skip_layer, recursing into its subnet.
    at = r.pos
    ver = r.int()
    if ver == 1:  # add_tag_layer or add_skip_layer: just wraps a subnet
        read_subnet(r, layers)
    elif ver in (2, 3) and (r.peek_string() or "").startswith("input"):
        read_details(r, layers)          # the input layer
        read_details(r, layers)          # the first computational layer
        for _ in range(3):
            r.bool()
        for _ in range(3):               # x_grad, cached_output, grad_final
            r.tensor()
        if ver == 3:
            r.int()                      # _sample_expansion_factor
    elif ver == 2:
        read_subnet(r, layers)
        read_details(r, layers)
        for _ in range(3):
            r.bool()
        for _ in range(3):               # x_grad, cached_output, params_grad
            r.tensor()
    else:
        r.pos = at
        r.fail(f"unsupported layer wrapper version {ver}")


def parse_dat(data, path):
    """Parse the whole file; return the layer details in forward order."""
    r = Reader(data, path)
    if r.int() != 1:
        r.fail("expected add_loss_layer version 1")
    loss = r.string()
    if loss != "loss_metric_2":
        r.fail(f"expected loss_metric_2, found {loss!r}")
    loss_params = {"margin": r.real(), "dist_thresh": r.real()}
    layers = []
    read_subnet(r, layers)
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} trailing bytes after the network")
    return loss_params, layers


# ---------------------------------------------------------------------------
# Mapping the parsed layers onto tensor names.

def expect(cond, path, msg):
    if not cond:
        raise FormatError(f"{path}: {msg}")


def conv_tensors(d, in_ch, out_ch, k, stride, path):
    # con_ params = filters [out,in,kh,kw] (row-major) followed by biases [out].
    expect(d["type"] == "con_4", path, f"expected con_4, found {d['type']}")
    expect(d["filters"] == (out_ch, in_ch, k, k) and d["biases"] == (1, out_ch, 1, 1),
           path, f"unexpected con shapes {d['filters']} {d['biases']}")
    expect(d["stride"] == (stride, stride), path, f"unexpected stride {d['stride']}")
    flat = d["params"].reshape(-1)
    nw = out_ch * in_ch * k * k
    expect(flat.size == nw + out_ch, path, "con params size mismatch")
    return flat[:nw].reshape(out_ch, in_ch, k, k).copy(), flat[nw:].copy()


def affine_tensors(d, ch, path):
    # affine_ params = gamma [ch] followed by beta [ch]; y = x*gamma + beta.
    expect(d["type"] == "affine_", path, f"expected affine_, found {d['type']}")
    expect(d["mode"] == 0 and d["gamma"] == (1, ch, 1, 1) and d["beta"] == (1, ch, 1, 1),
           path, f"unexpected affine layout {d['gamma']} mode {d['mode']}")
    flat = d["params"].reshape(-1)
    expect(flat.size == 2 * ch, path, "affine params size mismatch")
    return flat[:ch].copy(), flat[ch:].copy()


def build_tensors(layers, path):
    """Walk the forward-order layer list and return {name: float32 array}."""
    it = iter(layers)

    def nxt(kind):
        d = next(it, None)
        expect(d is not None, path, f"network ends early (wanted {kind})")
        expect(d["type"] == kind, path, f"expected {kind}, found {d['type']}")
        return d

    out = {}
    inp = nxt("input_rgb_image_sized")
    expect((inp["nr"], inp["nc"]) == (150, 150), path, "input size is not 150x150")
    out["conv1.weight"], out["conv1.bias"] = conv_tensors(nxt("con_4"), 3, 32, 7, 2, path)
    out["bn1.weight"], out["bn1.bias"] = affine_tensors(nxt("affine_"), 32, path)
    nxt("relu_")
    mp = nxt("max_pool_2")
    expect((mp["nr"], mp["nc"], mp["stride"]) == (3, 3, (2, 2)), path, "unexpected max_pool")
    in_ch = 32
    for i, (ch, down) in enumerate(BLOCKS):
        p = f"layers.{i}."
        stride = 2 if down else 1
        out[p + "conv1.weight"], out[p + "conv1.bias"] = \
            conv_tensors(nxt("con_4"), in_ch, ch, 3, stride, path)
        out[p + "bn1.weight"], out[p + "bn1.bias"] = affine_tensors(nxt("affine_"), ch, path)
        nxt("relu_")
        out[p + "conv2.weight"], out[p + "conv2.bias"] = \
            conv_tensors(nxt("con_4"), ch, ch, 3, 1, path)
        out[p + "bn2.weight"], out[p + "bn2.bias"] = affine_tensors(nxt("affine_"), ch, path)
        if down:
            ap = nxt("avg_pool_2")
            expect((ap["nr"], ap["nc"], ap["stride"]) == (2, 2, (2, 2)), path,
                   "unexpected residual avg_pool")
        nxt("add_prev_")
        nxt("relu_")
        in_ch = ch
    gp = nxt("avg_pool_2")
    expect((gp["nr"], gp["nc"]) == (0, 0), path, "expected avg_pool_everything")
    fc = nxt("fc_2")
    expect(fc["bias_mode"] == 1 and fc["num_inputs"] == 256 and fc["num_outputs"] == 128
           and fc["weights"] == (256, 128, 1, 1), path, "unexpected fc_no_bias layout")
    # fc_ params are [num_inputs, num_outputs] (y = x @ W); PyTorch wants [out, in].
    out["fc.weight"] = np.ascontiguousarray(fc["params"].reshape(256, 128).T)
    expect(next(it, None) is None, path, "extra layers after fc")
    return out


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(tensors, metadata, out_path):
    # Write to a temp file in the destination directory, then rename over.
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".convert_dlib.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; use normal perms
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def convert(src, out_path, want_sha=None):
    """Convert src (.dat) to out_path (.safetensors); return the tensor dict."""
    digest = sha256_of(src)
    if want_sha and digest.lower() != want_sha.lower():
        raise FormatError(f"{src}: sha256 {digest} does not match expected {want_sha}")
    with open(src, "rb") as f:
        data = f.read()
    _, layers = parse_dat(data, src)
    tensors = build_tensors(layers, src)
    total = sum(int(t.size) for t in tensors.values())
    expect(total == EXPECTED_PARAMS, src, f"parameter count {total} != {EXPECTED_PARAMS}")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    write_atomic(tensors, {"model_id": MODEL_ID, "source_sha256": digest}, out_path)
    return tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="dlib_face_recognition_resnet_model_v1.dat")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--sha256", help="expected sha256 of SRC (hex)")
    args = ap.parse_args(argv)
    try:
        tensors = convert(args.src, args.out, args.sha256)
    except (OSError, FormatError) as e:
        print(f"convert_dlib: error: {e}", file=sys.stderr)
        return 1
    total = sum(int(t.size) for t in tensors.values())
    print(f"wrote {args.out}: {len(tensors)} tensors, {total} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
