#!/usr/bin/env python3
"""Markdown tables from bench_products output (one TSV file per ISA level)."""
import math
import statistics
import sys
from collections import defaultdict

ORDER = ["openblas", "mkl-sgemm", "mkl-packed", "dnnl", "dnnl-3", "libxsmm", "own-packed"]
PACKERS = ["mkl-packed", "dnnl", "dnnl-3", "libxsmm", "own-packed"]


def load(path, second):
    runs = defaultdict(list)   # (isa, dir, G, B, H, opt) -> [(gflops, pack_s, total_s)]
    info, peak, verify = [], [], []
    for line in open(path, errors="replace"):
        f = line.rstrip("\n").split("\t")
        if f[0] == "R":
            _, isa, d, G, B, H, T, opt, r, tt, pk, gf = f
            if second and opt == "openblas":
                opt = "openblas#2"  # the reference measured in the second binary's own rounds
            runs[(isa, d, int(G), int(B), int(H), opt)].append((float(gf), float(pk), float(tt)))
        elif f[0] == "I":
            info.append((f[1], f[2]))
        elif f[0] == "P":
            peak.append((f[1], f[2], float(f[3]), float(f[4])))
        elif f[0] == "V":
            verify.append((f[1], f[2], int(f[3]), int(f[4]), int(f[5]), f[6], float(f[7]), float(f[8])))
    return runs, info, peak, verify


def main(paths):
    runs, info, peak, verify = {}, [], [], []
    second_isas = set()
    for p in paths:
        # a file whose options include dnnl-3 comes from the second binary (oneDNN 3.x cannot be
        # linked beside Debian's oneDNN 2.x); its OpenBLAS rounds are kept apart as openblas#2
        text = open(p, errors="replace").read()
        second = "\tdnnl-3\t" in text
        r, i, pk, v = load(p, second)
        runs.update(r); info += i; verify += v
        peak += [x for x in pk if not second]
    isas = []
    for k in runs:
        if k[0] not in isas:
            isas.append(k[0])
    opts = [o for o in ORDER if any(k[5] == o for k in runs)]
    nrounds = min(len(v) for v in runs.values())

    print("Libraries:")
    seen = set()
    for k, v in info:
        if k in ("openblas", "mkl", "dnnl", "libxsmm", "mkl-path", "own") and (k, v) not in seen:
            seen.add((k, v))
            print(f"- {k}: {v.strip()}")
    impls = defaultdict(set)
    for k, v in info:
        if k == "dnnl-impl":
            isa = v.split()[0]
            impls[isa].add(v.split(": ", 1)[1])
    for isa in isas:
        if impls[isa]:
            print(f"- oneDNN matmul implementation at {isa}: {'; '.join(sorted(impls[isa]))}")
    print()
    print("Single-thread sgemm 1024^3 (GFLOP/s, median / best of 5):")
    print()
    print("| ISA level | library | median | best |")
    print("|---|---|---|---|")
    for isa, lib, med, best in peak:
        print(f"| {isa} | {lib} | {med:.1f} | {best:.1f} |")
    print()

    cases = sorted({k[1:5] for k in runs}, key=lambda c: (c[0] != "fwd", -c[1], c[3], c[2]))
    speed = defaultdict(list)  # (isa, opt, dir) -> [ratio to openblas]
    for isa in isas:
        print(f"### {isa} level: GFLOP/s including the pack, median of {nrounds} rounds "
              f"(T steps per sequence; pack ms = median time of the one pack per sequence)")
        print()
        head = "| dir | G | B | H | " + " | ".join(opts) + " | best / openblas | " + \
               " | ".join(f"pack ms {o}" for o in opts if o in PACKERS) + " |"
        print(head)
        print("|" + "---|" * (4 + len(opts) + 1 + len([o for o in opts if o in PACKERS])))
        for c in cases:
            d, G, B, H = c
            med = {}
            pk = {}
            for o in opts:
                v = runs.get((isa, d, G, B, H, o))
                if v:
                    med[o] = statistics.median(x[0] for x in v)
                    pk[o] = statistics.median(x[1] for x in v) * 1e3
            if not med:
                continue
            best = max(med, key=med.get)
            cells = []
            for o in opts:
                if o in med:
                    s = f"{med[o]:.1f}"
                    cells.append(f"**{s}**" if o == best else s)
                else:
                    cells.append("-")
            ratio = med[best] / med["openblas"] if "openblas" in med else float("nan")
            base2 = runs.get((isa, d, G, B, H, "openblas#2"))
            for o in opts:
                if o in med and o != "openblas":
                    if o == "dnnl-3" and base2:
                        speed[(isa, o, d)].append(med[o] / statistics.median(x[0] for x in base2))
                    else:
                        speed[(isa, o, d)].append(med[o] / med["openblas"])
            packs = [f"{pk[o]:.2f}" if o in pk else "-" for o in opts if o in PACKERS]
            print(f"| {d} | {G} | {B} | {H} | " + " | ".join(cells) + f" | {ratio:.2f}x ({best}) | " + " | ".join(packs) + " |")
        print()

    print("Geometric mean over the cases of each option's rate / OpenBLAS's rate"
          + (" (dnnl-3 against the OpenBLAS rounds of its own process):" if any(k[5] == "openblas#2" for k in runs) else ":"))
    print()
    print("| ISA level | direction | " + " | ".join(o for o in opts if o != "openblas") + " |")
    print("|---|---|" + "---|" * (len(opts) - 1))
    for isa in isas:
        for d in ("fwd", "bwd"):
            cells = []
            for o in opts:
                if o == "openblas":
                    continue
                v = speed.get((isa, o, d))
                cells.append(f"{math.exp(sum(map(math.log, v)) / len(v)):.2f}" if v else "-")
            print(f"| {isa} | {d} | " + " | ".join(cells) + " |")
    print()
    print("Verification: max |C - C_openblas| over all T steps and cases (max |C_openblas| in brackets):")
    print()
    worst = {}
    for isa, d, G, B, H, o, md, mref in verify:
        k = (isa, o)
        if k not in worst or md > worst[k][0] or md != md:
            worst[k] = (md, mref)
    for (isa, o), (md, mref) in sorted(worst.items()):
        print(f"- {isa} {o}: {md:.3g} ({mref:.3g})")


if __name__ == "__main__":
    main(sys.argv[1:])
