"""Golden LPIPS-AlexNet distances from the original `lpips` package, for tests/it/lpips.rs.

Usage: lpips_golden.py OUT_DIR

ImageNet AlexNet weights cannot be installed here, so the trunk is torchvision's AlexNet with a
seeded random initialisation (lpips' own `pnet_rand=True`); the linear layers are the real
v0.1 weights shipped in the lpips wheel. Writes OUT_DIR/lpips_alex.safetensors (through
convert_lpips.py, so the converter is checked too) and OUT_DIR/cases.safetensors: pictures `a`
and `b` ([N, 3, H, W], RGB 0..255) and lpips' distance between each pair.
"""
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import convert_lpips  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)  # torchvision's `pretrained=` deprecation
import lpips  # noqa: E402


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    # lpips keeps AlexNet's layers in slices (slice1.0 = features.0, ...): undo that naming.
    trunk = {"features." + k.split(".", 1)[1]: v for k, v in net.net.state_dict().items()}
    lin = {k: v for k, v in net.state_dict().items() if k.startswith("lin")}
    convert_lpips.save(convert_lpips.convert(trunk, lin), os.path.join(out, "lpips_alex.safetensors"), "golden: random trunk")

    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 96, 112, generator=g) * 255
    b = (a + torch.randn(4, 3, 96, 112, generator=g) * torch.tensor([0.0, 4.0, 16.0, 64.0]).view(4, 1, 1, 1)).clamp(0, 255)
    b[0] = a[0]  # identical pictures: distance 0
    with torch.no_grad():
        d = net(a / 127.5 - 1, b / 127.5 - 1).flatten()
    save_file({"a": a.contiguous(), "b": b.contiguous(), "distance": d.contiguous()}, os.path.join(out, "cases.safetensors"))
    print("lpips distances:", [round(x, 6) for x in d.tolist()])


if __name__ == "__main__":
    main()
