"""Brings a face model you have (ONNX, or a PyTorch module and its checkpoint) into cloakbench.

cloakbench runs users' models as TorchScript modules that take float32 NCHW RGB pixels in
0..255 at the card's input size and return [N, dim] embeddings. This script wraps your network
with its input preprocessing (channel order, mean, scale), checks the output dimension, and
writes `<id>.pt` and the card `<id>.toml` into the models folder:

  # an ArcFace/MagFace-style ONNX file (needs the onnx2torch package, installed by make setup):
  python scripts/import_model.py onnx glintr100.onnx --id arcface_r100 \\
      --input-size 112 112 --alignment arcface --mean 127.5 --scale 127.5 \\
      --year 2021 --training-set "Glint360K"

  # a PyTorch checkpoint and the module class that defines the network:
  python scripts/import_model.py pytorch magface_iresnet.py:iresnet100 magface_epoch_00025.pth \\
      --id magface_r100 --input-size 112 112 --alignment arcface --mean 0 --scale 255 --bgr \\
      --state-dict-key state_dict --strip-prefix features.module.

Options: `--bgr` feeds the network BGR (MagFace and insightface models trained on BGR);
`--mean M` and `--scale S` make its input (x - M) / S with x in 0..255; `--per-picture` runs
the network one picture at a time (ONNX files exported with a fixed batch of 1, as many are).
The models folder is $CLOAKBENCH_MODELS, else $CLOAKBENCH_HOME/models, else
~/.cache/cloakbench/models; `cloakbench models list` then shows the model, and
`--set embed.model=<id>` uses it (gradients flow through it, so cloaks can use it too).
"""
import argparse
import importlib.util
import os
import pathlib
import sys

import torch


class Wrapped(torch.nn.Module):
    """cloakbench's contract around a network: RGB 0..255 in, [N, dim] embeddings out."""

    def __init__(self, net, mean: float, scale: float, bgr: bool, per_picture: bool):
        super().__init__()
        self.net = net
        self.mean = mean
        self.scale = scale
        self.bgr = bgr
        self.per_picture = per_picture

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flip(1) if self.bgr else pixels
        x = (x - self.mean) / self.scale
        if self.per_picture:
            out = [self.net(x[i:i + 1]).reshape(1, -1) for i in range(x.shape[0])]
            return torch.cat(out, 0)
        return self.net(x).reshape(x.shape[0], -1)


def load_onnx(path):
    from onnx2torch import convert
    return convert(path).eval()


def load_pytorch(spec, weights, key, strip):
    module_path, _, name = spec.partition(":")
    loaded = importlib.util.spec_from_file_location("user_network", module_path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    net = getattr(module, name)()
    state = torch.load(weights, map_location="cpu", weights_only=False)
    if key:
        state = state[key]
    if strip:
        state = {k[len(strip):] if k.startswith(strip) else k: v for k, v in state.items()}
    net.load_state_dict(state)
    return net.eval()


def models_dir():
    if os.environ.get("CLOAKBENCH_MODELS"):
        return pathlib.Path(os.environ["CLOAKBENCH_MODELS"])
    home = os.environ.get("CLOAKBENCH_HOME") or os.path.expanduser("~/.cache/cloakbench")
    return pathlib.Path(home) / "models"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("format", choices=["onnx", "pytorch"])
    ap.add_argument("source", help="the .onnx file, or module.py:Class for a PyTorch network")
    ap.add_argument("weights", nargs="?", help="the PyTorch checkpoint (pytorch only)")
    ap.add_argument("--id", required=True)
    ap.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"))
    ap.add_argument("--alignment", required=True, choices=["arcface", "dlib_chip", "facenet_crop", "loose_box"])
    ap.add_argument("--mean", type=float, default=127.5)
    ap.add_argument("--scale", type=float, default=128.0)
    ap.add_argument("--bgr", action="store_true")
    ap.add_argument("--per-picture", action="store_true")
    ap.add_argument("--state-dict-key", default=None)
    ap.add_argument("--strip-prefix", default=None)
    ap.add_argument("--year", type=int, default=None)
    ap.add_argument("--training-set", default="")
    ap.add_argument("--licence", default="")
    ap.add_argument("--out", default=None, help="models folder (default: cloakbench's)")
    args = ap.parse_args()

    if args.format == "onnx":
        net = load_onnx(args.source)
    else:
        if not args.weights:
            sys.exit("a PyTorch network needs its checkpoint")
        net = load_pytorch(args.source, args.weights, args.state_dict_key, args.strip_prefix)
    h, w = args.input_size
    example = torch.rand(1, 3, h, w) * 255
    # Trace the network itself (ONNX graphs are not scriptable), script the wrapper around it.
    traced = torch.jit.trace(net, ((example - args.mean) / args.scale,), check_trace=False)
    wrapped = torch.jit.script(Wrapped(traced, args.mean, args.scale, args.bgr, args.per_picture).eval())
    with torch.no_grad():
        dim = wrapped(torch.rand(2, 3, h, w) * 255).shape[1]
    out = pathlib.Path(args.out) if args.out else models_dir()
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save(str(out / f"{args.id}.pt"))
    year = f"year = {args.year}\n" if args.year else ""
    (out / f"{args.id}.toml").write_text(
        f'id = "{args.id}"\nformat = "torchscript"\nweights = "{args.id}.pt"\n'
        f"input_size = [{h}, {w}]\noutput_dim = {dim}\nalignment = \"{args.alignment}\"\n"
        f'architecture = "imported from {pathlib.Path(args.source).name} by scripts/import_model.py"\n'
        f'{year}training_set = "{args.training_set}"\nlicence = "{args.licence}"\n')
    print(f"wrote {out / (args.id + '.pt')} and its card: {dim}-d embeddings of {h}x{w} RGB faces ({args.alignment})")


if __name__ == "__main__":
    main()
