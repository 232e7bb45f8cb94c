"""Converts facenet-pytorch's MTCNN weights (three PyTorch state dicts) into one safetensors file.

Usage: convert_mtcnn.py PNET.pt RNET.pt ONET.pt OUT.safetensors

Names are prefixed `pnet.`, `rnet.`, `onet.`; nothing else changes (the Rust modules in
src/detect/mtcnn.rs use facenet-pytorch's layer names). Loaded with weights_only=True: plain
tensors, no pickled code runs.
"""
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file

EXPECTED = {"pnet": 6632, "rnet": 100178, "onet": 389040}


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    *sources, out = sys.argv[1:]
    tensors = {}
    for net, path in zip(EXPECTED, sources):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unreadable file by name
            sys.exit(f"{path}: not a readable PyTorch state dict: {e}")
        n = sum(t.numel() for t in state.values())
        if n != EXPECTED[net]:
            sys.exit(f"{path}: {n} parameters, expected {EXPECTED[net]} for {net}")
        tensors.update({f"{net}.{k}": v.float().contiguous() for k, v in state.items()})
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".part")
    os.close(fd)
    save_file(tensors, tmp, metadata={"model_id": "mtcnn", "source": "facenet-pytorch==2.6.0"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} parameters")


if __name__ == "__main__":
    main()
