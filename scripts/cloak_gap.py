"""How far a cloak moves a protected user's training pictures, as each trainer's model sees it.

    .venv/bin/python scripts/cloak_gap.py runs/adaptive_lowkey_lfw

Reads a run's `splits` and the embeddings of its fraction-0 and fraction-1 cells (the baseline's
`embeddings-<cloak>-{0,1}-<model>` and every other trainer's `<trainer>_embeddings-<cloak>-{0,1}...`,
such as `adaptive_embeddings-<cloak>-{0,1}-<schedule>`), and prints for each trainer, over the
protected users (cosine similarity):

- `same picture`: a training picture cloaked against the same picture clean (1 = the cloak moved
  nothing in this model's eyes);
- `own, clean` / `own, cloaked`: a clean test picture against its most similar training picture
  of the same user, clean (fraction 0) and cloaked (fraction 1);
- `nearest other`: a clean test picture against its most similar training picture of anyone else
  (clean): where another person's pictures begin.

Each is averaged over a user's test pictures, then over the users. 1-NN recognises a test
picture when its nearest own picture is nearer than its nearest other, so a trainer beats a
cloak when `own, cloaked` comes back above `nearest other`.
"""

import glob
import os
import re
import sys

import numpy as np
import polars as pl


def embeddings(path):
    table = pl.read_parquet(path)
    matrix = np.array(table["embedding"].to_list(), dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return {image_id: i for i, image_id in enumerate(table["image_id"])}, matrix


def pairs(run):
    """(cell, fraction-0 file, fraction-1 file) for every pair of cells the run has: the baseline's
    `embeddings-*` and every other trainer's `<trainer>_embeddings-*` (`adaptive_embeddings-*`,
    `adaptive_facenet_embeddings-*`)."""
    found = []
    for zero in sorted(glob.glob(os.path.join(run, "*embeddings-*.parquet"))):
        prefix, cell = os.path.basename(zero)[: -len(".parquet")].split("embeddings-", 1)
        match = re.fullmatch(r"(.+?)-0(-.+)?", cell)
        if prefix == "clean_" or not match:
            continue
        trainer = prefix.rstrip("_") or "baseline"
        cloak, rest = match.group(1), match.group(2) or ""
        one = os.path.join(run, f"{prefix}embeddings-{cloak}-1{rest}.parquet")
        if os.path.exists(one):
            found.append((f"{cloak}, {trainer}{rest.replace('-', ' ', 1)[:40]}", zero, one))
    return found


def gap(splits, zero, one):
    (index0, clean), (index1, scraped) = embeddings(zero), embeddings(one)
    train = splits.filter(pl.col("split") == "train")
    protected = splits.filter(pl.col("protected"))
    rows = {"same": [], "own_clean": [], "own_cloaked": [], "other": []}
    for user in sorted(protected["identity"].unique().to_list()):
        mine = protected.filter(pl.col("identity") == user)
        tr = [index0[i] for i in mine.filter(pl.col("split") == "train")["image_id"]]
        tr1 = [index1[i] for i in mine.filter(pl.col("split") == "train")["image_id"]]
        te = [index0[i] for i in mine.filter(pl.col("split") == "test")["image_id"]]
        others = [index0[i] for i in train.filter(pl.col("identity") != user)["image_id"] if i in index0]
        rows["same"] += list(np.sum(clean[tr] * scraped[tr1], axis=1))
        rows["own_clean"].append(float(np.mean(np.max(clean[te] @ clean[tr].T, axis=1))))
        rows["own_cloaked"].append(float(np.mean(np.max(clean[te] @ scraped[tr1].T, axis=1))))
        rows["other"].append(float(np.mean(np.max(clean[te] @ clean[others].T, axis=1))))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def main():
    run = sys.argv[1] if len(sys.argv) > 1 else "runs/adaptive_lowkey_lfw"
    splits = pl.read_parquet(os.path.join(run, "splits.parquet"))
    print(f"{'cell':<56} {'same picture':>12} {'own, clean':>11} {'own, cloaked':>13} {'nearest other':>14}")
    for name, zero, one in pairs(run):
        g = gap(splits, zero, one)
        print(f"{name:<56} {g['same']:>12.3f} {g['own_clean']:>11.3f} {g['own_cloaked']:>13.3f} {g['other']:>14.3f}")


if __name__ == "__main__":
    main()
