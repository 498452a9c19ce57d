#!/usr/bin/env python3
"""Reads an rnn-dp file (model.safetensors or a checkpoint) with the reference `safetensors`
package and prints a JSON summary, so a test can check that other tools read rnn-dp's files as
rnn-dp itself does.

    python3 Tests/interop/read_with_safetensors.py FILE [--bits]

Needs `pip install safetensors numpy` (scripts/test.sh installs them). Output (one JSON object):

    {"tensors":  {NAME: [SHAPE, SUM, FIRST], ...},
     "dtypes":   {NAME: "float32", ...},
     "metadata": {KEY: VALUE, ...},             # the "__metadata__" strings, via safe_open
     "bits":     {NAME: [U32, ...], ...}}       # only with --bits: every value's IEEE bit pattern

SUM is the float64 sum of the values (numpy, pairwise); FIRST is the first value in row-major
order, exactly (a float32 widened to float64 and printed with repr, so it parses back to the same
float32), or null for an empty tensor; non-finite values are the strings "nan", "inf", "-inf".
Exit status 1 (message on stderr) if the package refuses the file.
"""

import json
import math
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def number(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1:
        print("usage: read_with_safetensors.py FILE [--bits]", file=sys.stderr)
        return 2
    path = args[0]
    try:
        arrays = load_file(path)
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
    except Exception as e:  # SafetensorError, OSError, ...
        print(f"read_with_safetensors: {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    assert sorted(names) == sorted(arrays), "safe_open and load_file disagree on the tensor names"
    out = {"tensors": {}, "dtypes": {}, "metadata": metadata}
    if "--bits" in argv:
        out["bits"] = {}
    for name in sorted(arrays):
        a = arrays[name]
        flat = a.reshape(-1)
        out["tensors"][name] = [list(a.shape), number(flat.astype(np.float64).sum()),
                                number(flat[0]) if flat.size else None]
        out["dtypes"][name] = str(a.dtype)
        if "bits" in out:
            if a.dtype != np.float32:
                raise SystemExit(f"read_with_safetensors: {path}: {name} is {a.dtype}, --bits needs float32")
            out["bits"][name] = [int(b) for b in np.ascontiguousarray(flat).view("<u4")]
    json.dump(out, sys.stdout, sort_keys=True, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
