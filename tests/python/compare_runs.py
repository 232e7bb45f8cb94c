"""Compares two runs' outputs: every table row for row and value for value (Polars), every other
output file (cloaked pictures) byte for byte.

Usage: compare_runs.py RUN_A RUN_B

Paths inside a run (a cloaked picture's uri) are compared relative to their run. Bookkeeping is left out (_state/, _work/, _run.json, _lock, report/), and so are the columns
that measure wall time (`seconds` of the cloaks table). Prints a JSON summary; exits non-zero
naming the first difference.
"""
import json
import pathlib
import sys

import polars as pl

BOOKKEEPING = {"_state", "_work", "_run.json", "_lock", "report"}
TIMING_COLUMNS = {"seconds"}


def outputs(run):
    files = {}
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run)
        if f.is_file() and rel.parts[0] not in BOOKKEEPING and not f.name.startswith("."):
            files[rel.as_posix()] = f
    return files


def relative(df, run):
    """The table with `run`'s own path in its text columns written as RUN."""
    prefix = str(run.resolve())
    return df.with_columns(pl.col(c).str.replace(prefix, "RUN", literal=True) for c, t in df.schema.items() if t == pl.String)


def main():
    a, b = (pathlib.Path(p) for p in sys.argv[1:3])
    fa, fb = outputs(a), outputs(b)
    if fa.keys() != fb.keys():
        sys.exit(f"different files: only in {a}: {sorted(fa.keys() - fb.keys())}; only in {b}: {sorted(fb.keys() - fa.keys())}")
    tables = rows = 0
    for rel in fa:
        if rel.endswith(".parquet"):
            da, db = (pl.read_parquet(f[rel]) for f in (fa, fb))
            drop = [c for c in da.columns if c in TIMING_COLUMNS]
            da, db = relative(da.drop(drop), a), relative(db.drop(drop), b)
            if not da.equals(db):
                differ = [c for c in da.columns if not da[c].equals(db[c])] if da.shape == db.shape else "shape"
                sys.exit(f"{rel}: tables differ in {differ}:\n{da}\n{db}")
            tables += 1
            rows += da.height
        elif fa[rel].read_bytes() != fb[rel].read_bytes():
            sys.exit(f"{rel}: files differ")
    print(json.dumps({"files": len(fa), "tables": tables, "rows": rows}))


if __name__ == "__main__":
    main()
