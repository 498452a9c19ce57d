#!/usr/bin/env python3
"""Report of scripts/cluster/scaling-shaped.sh: medians over repeats, alpha-beta fits per link
profile, the model against the measured points, and a projection to 4096 ranks per link.

    python3 scripts/cluster/scaling_shaped_report.py OUT

Reads OUT/raw/bench-<profile>-np<N>-<exchange>-r<repeat>.json and
OUT/raw/allreduce-<profile>-np<N>.json; writes OUT/shaped.csv, OUT/fits.csv, OUT/compare.csv,
OUT/projection.csv and prints Markdown tables. The allreduce model is scaling_report.py's ring
T(n, p) = 2(p-1)a + 2(p-1)/p n b; buckets use its step_time (backward pass = 2/3 of compute).
Compression halves the bytes; local SGD with k pays one parameter average (the gradient's size)
every k steps.
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import scaling_report as sr  # noqa: E402


def lines(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def large_beta(sizes, p, alpha):
    """beta that fits messages of 1 MiB and more, alpha kept: the median over those sizes of
    (t - 2(p-1)alpha) / (2(p-1)/p n). bench-allreduce's fit weighs every size's relative error
    equally, so the many small sizes set beta too; gradients of MiBs need this one."""
    q = float(p)
    bs = [(t - 2 * (q - 1) * alpha) / (2 * (q - 1) / q * n) for n, t in sizes.items() if n >= 1 << 20]
    return statistics.median(bs) if bs else None


def predicted_exposed(ex, nbytes, p, a, b, compute, bucket_mb):
    if p <= 1:
        return 0.0
    if ex == "blocking":
        return sr.allreduce_time(nbytes, p, a, b)
    if ex in ("bf16", "fp16"):
        return sr.allreduce_time(nbytes / 2, p, a, b)
    if ex.startswith("local"):
        return sr.allreduce_time(nbytes, p, a, b) / int(ex[5:])
    if ex == "buckets":
        step, comm, exposed, k = sr.step_time(compute, nbytes, p, a, b, bucket_mb=bucket_mb)
        return exposed
    raise ValueError(ex)


def main(argv):
    out = argv[1] if len(argv) > 1 else "runs/scaling-shaped"
    raw = os.path.join(out, "raw")
    settings = {}
    if os.path.exists(os.path.join(raw, "settings.txt")):
        for line in open(os.path.join(raw, "settings.txt")):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                settings[k] = v
    bucket_mb = float(settings.get("bucket_mb", "1"))
    profiles = settings.get("profiles", "").split()

    # ---- bench runs
    runs = {}  # (profile, case, N, exchange) -> list of run dicts
    pat = re.compile(r"bench-(.+)-np(\d+)-([a-z0-9]+)-r(\d+)\.json$")
    for path in sorted(glob.glob(os.path.join(raw, "bench-*.json"))):
        m = pat.search(os.path.basename(path))
        if not m:
            continue
        prof, n, ex = m.group(1), int(m.group(2)), m.group(3)
        load = None
        try:
            load = float(open(path + ".load").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        for o in lines(path):
            if "case" in o and "step_s" in o:
                o["load"] = load
                runs.setdefault((prof, o["case"], n, ex), []).append(o)
    if not runs:
        sys.exit(f"scaling_shaped_report: no bench output in {raw}")
    if not profiles:
        profiles = sorted({k[0] for k in runs})

    # ---- fits
    fits = {}  # (profile, N) -> (alpha, beta, sizes): bench-allreduce's own fit
    big = {}   # (profile, N) -> beta from messages >= 1 MiB (alpha kept): the gradient's sizes
    fpat = re.compile(r"allreduce-(.+)-np(\d+)\.json$")
    for path in sorted(glob.glob(os.path.join(raw, "allreduce-*.json"))):
        m = fpat.search(os.path.basename(path))
        if not m:
            continue
        objs = lines(path)
        fit = [o for o in objs if "alpha" in o]
        sizes = {o["bytes"]: o["seconds"] for o in objs if "bytes" in o and "seconds" in o}
        if fit:
            fits[(m.group(1), int(m.group(2)))] = (fit[-1]["alpha"], fit[-1]["beta"], sizes)
            big[(m.group(1), int(m.group(2)))] = large_beta(sizes, int(m.group(2)), fit[-1]["alpha"])

    rows = []
    for (prof, case, n, ex), rs in sorted(runs.items(), key=lambda kv: (profiles.index(kv[0][0]) if kv[0][0] in profiles else 99, kv[0][1], kv[0][2], kv[0][3])):
        steps = [r["step_s"] for r in rs]
        rows.append(dict(profile=prof, case=case, ranks=n, exchange=ex, repeats=len(rs),
                         step_ms=1e3 * med(steps), step_min_ms=1e3 * min(steps), step_max_ms=1e3 * max(steps),
                         compute_ms=1e3 * med([r.get("compute_s") for r in rs]),
                         exposed_ms=1e3 * med([r.get("exposed_comm_s") for r in rs]),
                         comm_ms=1e3 * med([r.get("comm_s") for r in rs]),
                         bytes=rs[0].get("bytes_per_step"), load=med([r.get("load") for r in rs])))
    base = {(r["profile"], r["case"]): r for r in rows if r["ranks"] == 1}
    for r in rows:
        b = base.get((r["profile"], r["case"]))
        r["efficiency"] = b["step_ms"] / r["step_ms"] if b else float("nan")

    # ---- model against measurement
    comp = []
    for r in rows:
        if r["ranks"] < 2 or (r["profile"], r["ranks"]) not in fits:
            continue
        a, b0, _ = fits[(r["profile"], r["ranks"])]
        b = big.get((r["profile"], r["ranks"])) or b0
        c1 = base[(r["profile"], r["case"])]["compute_ms"] / 1e3
        cn = r["compute_ms"] / 1e3
        pe0 = predicted_exposed(r["exchange"], r["bytes"], r["ranks"], a, b0, cn, bucket_mb)
        pe = predicted_exposed(r["exchange"], r["bytes"], r["ranks"], a, b, cn, bucket_mb)
        comp.append(dict(profile=r["profile"], case=r["case"], ranks=r["ranks"], exchange=r["exchange"],
                         measured_step_ms=r["step_ms"], measured_compute_ms=r["compute_ms"],
                         measured_exposed_ms=r["exposed_ms"], predicted_exposed_allsizes_fit_ms=1e3 * pe0,
                         ratio_allsizes_fit=r["step_ms"] / (1e3 * (cn + pe0)), predicted_exposed_ms=1e3 * pe,
                         predicted_step_ms=1e3 * (cn + pe), ratio=r["step_ms"] / (1e3 * (cn + pe)),
                         model_only_step_ms=1e3 * (c1 + predicted_exposed(r["exchange"], r["bytes"], r["ranks"], a, b, c1, bucket_mb))))

    # ---- projection: weak scaling, compute of one rank, each link's fit at N = 2
    proj = []
    shown = (2, 4, 8, 64, 512, 4096)
    for prof in profiles:
        if (prof, 2) not in fits:
            continue
        a, b, _ = fits[(prof, 2)]
        b = big.get((prof, 2)) or b
        for case in sorted({r["case"] for r in rows}):
            if (prof, case) not in base:
                continue
            c1 = base[(prof, case)]["compute_ms"] / 1e3
            nbytes = base[(prof, case)]["bytes"]
            for ex in ("blocking", "buckets", "bf16", "local16"):
                for p in shown:
                    e = predicted_exposed(ex, nbytes, p, a, b, c1, bucket_mb)
                    proj.append(dict(profile=prof, case=case, exchange=ex, ranks=p, step_ms=1e3 * (c1 + e),
                                     efficiency=c1 / (c1 + e)))

    def write(name, data):
        if not data:
            return
        with open(os.path.join(out, name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0].keys()))
            w.writeheader()
            for d in data:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})

    fitrows = []
    for (prof, n), (a, b, sizes) in sorted(fits.items()):
        bl = big.get((prof, n))
        d = dict(profile=prof, ranks=n, alpha_us=a * 1e6, beta_ns_per_byte=b * 1e9, bandwidth_gbs=1 / b / 1e9,
                 large_beta_ns_per_byte=bl * 1e9 if bl else float("nan"), large_bandwidth_gbs=1 / bl / 1e9 if bl else float("nan"))
        for s in (4, 65536, 1048576, 4194304, 16777216):
            if s in sizes:
                d[f"measured_us_{s}"] = sizes[s] * 1e6
                d[f"model_us_{s}"] = sr.allreduce_time(s, n, a, b) * 1e6
        fitrows.append(d)
    write("shaped.csv", rows)
    write("fits.csv", fitrows)
    write("compare.csv", comp)
    write("projection.csv", proj)

    # ---- Markdown
    print("\n### alpha-beta fits (bench-allreduce, ring model)\n")
    print("| link | N | alpha (us) | 1/beta, all sizes (GB/s) | 1/beta, >= 1 MiB (GB/s) | 4 B measured / model (us) | 1 MiB measured / model (us) | 16 MiB measured / model (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for d in fitrows:
        def pair(s, scale, fmt):
            m, p = d.get(f"measured_us_{s}"), d.get(f"model_us_{s}")
            return "–" if m is None else (fmt % (m / scale)) + " / " + (fmt % (p / scale))
        print(f"| {d['profile']} | {d['ranks']} | {d['alpha_us']:.1f} | {d['bandwidth_gbs']:.3f} | {d['large_bandwidth_gbs']:.3f} | {pair(4, 1, '%.0f')} | "
              f"{pair(1048576, 1, '%.0f')} | {pair(16777216, 1000, '%.1f')} |")
    print("\n### step time (median over repeats; weak scaling, one rank per host)\n")
    print("| link | case | N | exchange | step (ms) | min–max | compute (ms) | exposed comm (ms) | comm (ms) | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['profile']} | {r['case']} | {r['ranks']} | {r['exchange'] if r['ranks'] > 1 else '–'} | {r['step_ms']:.1f} | "
              f"{r['step_min_ms']:.1f}–{r['step_max_ms']:.1f} | {r['compute_ms']:.1f} | {r['exposed_ms']:.2f} | "
              f"{r['comm_ms']:.2f} | {100 * r['efficiency']:.0f}% |")
    print("\n### measured against the model (same link and N; measured compute + predicted exposed; alpha and the >= 1 MiB beta)\n")
    print("| link | case | N | exchange | measured step | predicted step | measured/predicted | (all-sizes beta) | measured exposed | predicted exposed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in comp:
        print(f"| {c['profile']} | {c['case']} | {c['ranks']} | {c['exchange']} | {c['measured_step_ms']:.1f} | "
              f"{c['predicted_step_ms']:.1f} | {c['ratio']:.2f} | {c['ratio_allsizes_fit']:.2f} | {c['measured_exposed_ms']:.2f} | {c['predicted_exposed_ms']:.2f} |")
    print("\n### projection, weak scaling (efficiency; each link's N = 2 alpha and >= 1 MiB beta)\n")
    print("| link | case | exchange | " + " | ".join(f"N = {p}" for p in shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    keyed = {}
    for d in proj:
        keyed.setdefault((d["profile"], d["case"], d["exchange"]), {})[d["ranks"]] = d["efficiency"]
    for (prof, case, ex), e in keyed.items():
        print(f"| {prof} | {case} | {ex} | " + " | ".join(f"{100 * e[p]:.1f}%" for p in shown) + " |")


if __name__ == "__main__":
    main(sys.argv)
