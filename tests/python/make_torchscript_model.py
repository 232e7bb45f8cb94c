"""Exports a small face model to TorchScript with its card, as the README tells users to.

Usage: make_torchscript_model.py MODELS_DIR [SEED]
Writes MODELS_DIR/tiny_user_net.pt and MODELS_DIR/tiny_user_net.toml, and two broken models a
user could bring: tiny_fails_net, whose forward refuses batches of more than one picture, and
tiny_wide_net, whose card asks for a non-square input with a square alignment.
"""
import pathlib
import sys

import torch


class TinyNet(torch.nn.Module):
    """Stands in for a user's network: any module from pixels to embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.head = torch.nn.Linear(8 * 16, 32)

    def forward(self, x):
        return self.head(self.features(x))


class OneAtATime(torch.nn.Module):
    """A model whose forward fails on a batch: it passed the one-picture probe at load time."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        if pixels.shape[0] > 1:
            raise RuntimeError("this model takes one picture at a time")
        return self.net((pixels - 127.5) / 128.0)


class Wrapped(torch.nn.Module):
    """What cloakbench expects: float32 NCHW RGB 0..255 in, embeddings out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        return self.net((pixels - 127.5) / 128.0)


def card(model_id, weights, input_size, extra=""):
    """A model card as the README tells users to write one."""
    (out / f"{model_id}.toml").write_text(
        f'id = "{model_id}"\nformat = "torchscript"\nweights = "{weights}"\n'
        f'input_size = {input_size}\noutput_dim = 32\nalignment = "arcface"\n{extra}')


out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.jit.script(Wrapped(TinyNet()).eval()).save(str(out / "tiny_user_net.pt"))
card("tiny_user_net", "tiny_user_net.pt", [112, 112], 'architecture = "a tiny test network"\nlicence = "MIT"\n')
torch.jit.script(OneAtATime(TinyNet()).eval()).save(str(out / "tiny_fails_net.pt"))
card("tiny_fails_net", "tiny_fails_net.pt", [112, 112])
card("tiny_wide_net", "tiny_user_net.pt", [112, 96])
