"""What every weight converter does last: check the parameter count, write safetensors atomically."""
import os
import sys
import tempfile

from safetensors.numpy import save_file


def finish(source, tensors, out, expected=None):
    """Checks the parameter count of the non-scalar tensors against `expected` (if known), writes
    `out` through a temporary file in the same folder (never a half-written file), and prints a
    one-line summary. Exits with a message naming `source` on a count mismatch."""
    n = sum(t.size for t in tensors.values() if t.ndim > 0)
    if expected is not None and n != expected:
        sys.exit(f"{source}: {n} parameters, expected {expected}")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".part")
    os.close(fd)
    save_file(tensors, tmp, metadata={"source": os.path.basename(source)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(tensors)} tensors, {n} parameters")
