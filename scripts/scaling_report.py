#!/usr/bin/env python3
"""Aggregate a scaling sweep written by scripts/scaling.sh and project it to many ranks.

    python3 scripts/scaling_report.py OUT [--alpha A --beta B] [--network-name NAME]
        [--buckets "0 1 4 16"] [--max-ranks 4096] [--backward-fraction 0.6667]
        [--strong-batch "measured 4096"]

Reads OUT/raw/ (bench-<mode>-np<N>-r<R>.out, allreduce-np<N>.out, settings.txt) and writes
  OUT/scaling.csv      one row per (mode, case, ranks): medians over the repeats
  OUT/scaling.json     the same rows, alpha/beta, the allreduce points and every raw run
  OUT/projection.csv   predicted step time and efficiency for N = 1, 2, 4, ..., max-ranks
  OUT/compare.csv      measured against predicted step time at the measured N
and prints the tables. --alpha/--beta (seconds, seconds per byte; "1/12.5e9" is accepted) add a
second network to the projection besides the measured one (default: InfiniBand-like,
alpha = 2 us, beta = 1 / 12.5 GB/s).

The model (docs/SCALING.md):
  ring allreduce of n bytes on p ranks  T(n, p) = 2 (p - 1) alpha + 2 (p - 1) / p * n * beta
      (Thakur, Rabenseifner & Gropp 2005; identical to AllreduceModel.time in
       Sources/RNNTrain/ScalingModel.swift)
  compute per rank    C(N) = c * (samples per rank), c = compute_s / samples per rank at N = 1
  bucket 0            step = C + T(n, p)  (one blocking allreduce after the backward pass;
                      AllreduceModel.project with overlap 0)
  buckets of s MiB    cut like GradientExchange (from the end of the gradient, the remainder
                      last); bucket i is ready when the backward pass has produced its bytes,
                      uniformly over a window W = f_b * C (f_b: backward fraction of compute);
                      buckets are reduced one at a time, each costing T(n_i, p);
                      exposed = finish of the last bucket - W.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import statistics
import sys
from fractions import Fraction

MIB = 1 << 20
CSV_COLUMNS = [
    "mode", "case", "ranks", "step_s", "tokens_per_s", "speedup", "efficiency", "compute_s", "comm_s",
    "exposed_comm_s", "bytes_per_step", "allreduce_gbps", "global_batch", "repeats", "step_s_min", "step_s_max",
    "sgemm_gflops", "loadavg_max",
]
PROJECTION_COLUMNS = [
    "network", "alpha", "beta", "mode", "case", "bucket_mb", "buckets", "ranks", "global_batch", "per_rank_batch",
    "compute_s", "comm_s", "exposed_comm_s", "step_s", "speedup", "efficiency",
]
COMPARE_COLUMNS = [
    "mode", "case", "ranks", "bucket_mb", "oversubscribed", "measured_step_s", "predicted_step_s", "measured_over_predicted",
    "measured_compute_s", "predicted_compute_s", "measured_exposed_comm_s", "predicted_exposed_comm_s",
    "measured_comm_s", "predicted_comm_s", "predicted_step_with_measured_compute_s",
]
DEFAULT_ALPHA = 2e-6            # s: an InfiniBand-class MPI latency
DEFAULT_BETA = 1 / 12.5e9       # s/B: 100 Gb/s = 12.5 GB/s
DEFAULT_BACKWARD_FRACTION = 2 / 3  # backward = 2 of the 3 matrix products per weight (Bench.flops)


# ---------------------------------------------------------------------------------------------
# The model


def allreduce_time(n, p, alpha, beta):
    """Ring allreduce of n bytes on p ranks; AllreduceModel.time (ScalingModel.swift)."""
    if p <= 1:
        return 0.0
    q = float(p)
    return 2 * (q - 1) * alpha + 2 * (q - 1) / q * n * beta


def swift_project(compute, n, p, alpha, beta, overlap=0.0):
    """AllreduceModel.project (ScalingModel.swift), for checking: (step, efficiency)."""
    comm = allreduce_time(n, p, alpha, beta)
    exposed = max(comm * (1 - overlap), comm - compute)
    step = compute + max(exposed, 0)
    return step, compute / step


def bucket_sizes(n, bucket_mb):
    """Bytes of each bucket in the order GradientExchange starts them: cut from the end of the
    float32 gradient in pieces of bucket_mb MiB, so the remainder (containing offset 0) is last.
    bucket_mb = 0: one piece (one blocking allreduce)."""
    floats = max(1, int(round(n / 4)))
    if bucket_mb <= 0:
        return [floats * 4]
    per = max(1, int(bucket_mb * MIB) // 4)
    out, hi = [], floats
    while hi > 0:
        lo = max(0, hi - per)
        out.append((hi - lo) * 4)
        hi = lo
    return out


def step_time(compute, n, p, alpha, beta, bucket_mb=0.0, backward_fraction=DEFAULT_BACKWARD_FRACTION):
    """Predicted (step, comm, exposed, buckets) for one step at p ranks.

    bucket_mb = 0: step = compute + T(n, p), exactly AllreduceModel.project(overlap: 0).
    bucket_mb > 0: the buckets' allreduces run one after another as the backward pass (the last
    W = backward_fraction * compute seconds of the step) produces their bytes at a constant rate;
    whatever is still running when the backward pass ends is exposed.
    """
    sizes = bucket_sizes(n, bucket_mb)
    if p <= 1:
        return compute, 0.0, 0.0, len(sizes)
    costs = [allreduce_time(s, p, alpha, beta) for s in sizes]
    comm = sum(costs)
    if bucket_mb <= 0 or len(sizes) == 1:
        return compute + comm, comm, comm, len(sizes)
    window = backward_fraction * compute
    total = float(sum(sizes))
    finish, produced = 0.0, 0.0
    for s, c in zip(sizes, costs):
        produced += s
        ready = window * produced / total
        finish = max(finish, ready) + c
    exposed = max(0.0, finish - window)
    return compute + exposed, comm, exposed, len(sizes)


def projection_ranks(max_ranks):
    out, p = [], 1
    while p <= max_ranks:
        out.append(p)
        p *= 2
    return out


# ---------------------------------------------------------------------------------------------
# Reading a sweep


def parse_number(text):
    """A float, or a fraction like 1/12.5e9."""
    text = str(text).strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(Fraction(a.strip())) / float(Fraction(b.strip()))
    return float(text)


def json_lines(path):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def read_settings(raw):
    settings = {}
    path = os.path.join(raw, "settings.txt")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    settings[key] = value
    return settings


def read_runs(raw):
    runs = []
    for path in sorted(glob.glob(os.path.join(raw, "bench-*-np*-r*.out"))):
        m = re.search(r"bench-(\w+)-np(\d+)-r(\d+)\.out$", path)
        if not m:
            continue
        load = idle = None
        try:
            with open(path + ".load") as f:
                fields = f.read().split()
            load = float(fields[0])
            idle = float(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            pass
        for r in json_lines(path):
            if "case" in r and "step_s" in r:
                r = dict(r)
                r["repeat"] = int(m.group(3))
                r["loadavg_before"] = load
                if idle is not None:
                    r["idle_percent_before"] = idle
                r.setdefault("scaling", m.group(1))
                runs.append(r)
    return runs


def read_allreduce(raw, settings):
    """Every bench-allreduce fit, and the one the projection uses: the largest rank count, except
    that an oversubscribed sweep uses the largest count that fits the cores (an oversubscribed
    allreduce measures the scheduler, not the interconnect)."""
    fits = []
    for path in glob.glob(os.path.join(raw, "allreduce-np*.out")):
        rows = json_lines(path)
        points = [r for r in rows if "bytes" in r and "seconds" in r]
        fit = [r for r in rows if "alpha" in r and "beta" in r]
        if fit:
            fits.append({"ranks": int(fit[-1].get("ranks", 0)), "alpha": fit[-1]["alpha"], "beta": fit[-1]["beta"],
                         "points": points, "file": os.path.basename(path)})
    if not fits:
        return None, []
    fits.sort(key=lambda f: f["ranks"])
    cores = int(settings["cores"]) if settings.get("cores", "").isdigit() else None
    chosen = fits[-1]
    if settings.get("oversubscribe") == "1" and cores:
        fitting = [f for f in fits if f["ranks"] <= cores]
        chosen = fitting[-1] if fitting else chosen
    return chosen, fits


def aggregate(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["scaling"], r["case"], int(r["ranks"])), []).append(r)
    rows = []
    for (mode, case, ranks), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "strong", kv[0][1], kv[0][2])):
        med = lambda key: statistics.median(float(r[key]) for r in rs)  # noqa: E731
        rows.append({
            "mode": mode, "case": case, "ranks": ranks,
            "step_s": med("step_s"), "tokens_per_s": med("tokens_per_s"),
            "compute_s": med("compute_s"), "comm_s": med("comm_s"), "exposed_comm_s": med("exposed_comm_s"),
            "bytes_per_step": int(med("bytes_per_step")), "allreduce_gbps": med("allreduce_gbps"),
            "global_batch": int(med("global_batch")), "repeats": len(rs),
            "step_s_min": min(float(r["step_s"]) for r in rs), "step_s_max": max(float(r["step_s"]) for r in rs),
            "bucket_mb": med("bucket_mb") if all("bucket_mb" in r for r in rs) else None,
            "sgemm_gflops": med("sgemm_gflops") if all("sgemm_gflops" in r for r in rs) else None,
            "loadavg_max": max((r["loadavg_before"] for r in rs if r.get("loadavg_before") is not None), default=None),
        })
    for row in rows:
        base = next((b for b in rows if b["mode"] == row["mode"] and b["case"] == row["case"] and b["ranks"] == 1), None)
        if base is None:
            row["speedup"] = row["efficiency"] = float("nan")
            continue
        if row["mode"] == "strong":
            speedup = base["step_s"] / row["step_s"]
        else:
            speedup = row["tokens_per_s"] / base["tokens_per_s"]
        row["speedup"] = 1.0 if row["ranks"] == 1 else speedup
        row["efficiency"] = row["speedup"] / row["ranks"]
    return rows


# ---------------------------------------------------------------------------------------------
# Projection and comparison


def compute_per_sample(rows, mode, case):
    """compute_s / samples per rank at N = 1 of this mode (the other mode's N = 1 if missing)."""
    for m in (mode, "weak", "strong"):
        base = next((r for r in rows if r["mode"] == m and r["case"] == case and r["ranks"] == 1), None)
        if base:
            return base["compute_s"] / base["global_batch"], base
    return None, None


def project(rows, networks, buckets, max_ranks, backward_fraction, strong_batches):
    out = []
    cases = sorted({r["case"] for r in rows})
    modes = [m for m in ("weak", "strong") if any(r["mode"] == m for r in rows)]
    for net in networks:
        for mode in modes:
            for case in cases:
                c, base = compute_per_sample(rows, mode, case)
                if c is None:
                    continue
                n = base["bytes_per_step"]
                batches = [base["global_batch"]] if mode == "weak" else sorted({
                    base["global_batch"] if b == "measured" else int(b) for b in strong_batches})
                for gb in batches:
                    for bucket in buckets:
                        for p in projection_ranks(max_ranks):
                            if mode == "weak":
                                per_rank, global_batch = gb, gb * p
                            else:
                                if p > gb:
                                    break
                                per_rank, global_batch = gb / p, gb
                            compute = c * per_rank
                            step, comm, exposed, k = step_time(compute, n, p, net["alpha"], net["beta"], bucket,
                                                               backward_fraction)
                            eff = compute / step
                            out.append({
                                "network": net["name"], "alpha": net["alpha"], "beta": net["beta"], "mode": mode,
                                "case": case, "bucket_mb": bucket, "buckets": k, "ranks": p,
                                "global_batch": global_batch, "per_rank_batch": per_rank, "compute_s": compute,
                                "comm_s": comm, "exposed_comm_s": exposed, "step_s": step, "speedup": eff * p,
                                "efficiency": eff,
                            })
    return out


def compare(rows, net, backward_fraction, cores):
    out = []
    for row in rows:
        c, _ = compute_per_sample(rows, row["mode"], row["case"])
        if c is None:
            continue
        p = row["ranks"]
        per_rank = row["global_batch"] / p
        bucket = row["bucket_mb"] if row["bucket_mb"] is not None else 4.0
        compute = c * per_rank
        step, comm, exposed, _ = step_time(compute, row["bytes_per_step"], p, net["alpha"], net["beta"], bucket,
                                           backward_fraction)
        step_mc, _, _, _ = step_time(row["compute_s"], row["bytes_per_step"], p, net["alpha"], net["beta"], bucket,
                                     backward_fraction)
        out.append({
            "mode": row["mode"], "case": row["case"], "ranks": p, "bucket_mb": bucket,
            "oversubscribed": int(cores is not None and p > cores),
            "measured_step_s": row["step_s"], "predicted_step_s": step,
            "measured_over_predicted": row["step_s"] / step,
            "measured_compute_s": row["compute_s"], "predicted_compute_s": compute,
            "measured_exposed_comm_s": row["exposed_comm_s"], "predicted_exposed_comm_s": exposed,
            "measured_comm_s": row["comm_s"], "predicted_comm_s": comm,
            "predicted_step_with_measured_compute_s": step_mc,
        })
    return out


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v):
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.6g}"
    return "" if v is None else str(v)


def finite_or_none(x):
    """NaN and infinities become null, so scaling.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_none(v) for v in x]
    return x


def write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([fmt(r.get(c)) for c in columns])


def print_tables(rows, proj, comp, networks, ranks_shown=(8, 64, 512, 4096)):
    print(f"{'mode':<7}{'case':<13}{'N':>4}{'step ms':>10}{'tokens/s':>11}{'speedup':>9}{'eff':>7}"
          f"{'compute ms':>12}{'exposed ms':>12}{'comm ms':>10}{'rep':>5}")
    for r in rows:
        print(f"{r['mode']:<7}{r['case']:<13}{r['ranks']:>4}{r['step_s'] * 1e3:10.2f}{r['tokens_per_s']:11.0f}"
              f"{r['speedup']:9.3f}{r['efficiency']:7.1%}{r['compute_s'] * 1e3:12.2f}{r['exposed_comm_s'] * 1e3:12.2f}"
              f"{r['comm_s'] * 1e3:10.2f}{r['repeats']:>5}")
    print()
    for net in networks:
        print(f"projected efficiency, network {net['name']} (alpha {net['alpha']:.3g} s, beta {net['beta']:.3g} s/B"
              f" = {1 / net['beta'] / 1e9:.3g} GB/s)")
        print(f"{'mode':<7}{'case':<13}{'batch':>6}{'bucket MiB':>11}" + "".join(f"{'N=' + str(n):>9}" for n in ranks_shown))
        keys = sorted({(p['mode'], p['case'], p['global_batch'] if p['mode'] == 'strong' else p['per_rank_batch'],
                        p['bucket_mb']) for p in proj if p['network'] == net['name']},
                      key=lambda k: (k[0] != "weak", k[1], k[2], k[3]))
        for mode, case, batch, bucket in keys:
            cells = []
            for n in ranks_shown:
                hit = [p for p in proj if p['network'] == net['name'] and p['mode'] == mode and p['case'] == case
                       and p['bucket_mb'] == bucket and p['ranks'] == n
                       and (p['global_batch'] if mode == 'strong' else p['per_rank_batch']) == batch]
                cells.append(f"{hit[0]['efficiency']:9.1%}" if hit else f"{'-':>9}")
            print(f"{mode:<7}{case:<13}{batch:>6}{bucket:>11g}" + "".join(cells))
        print()
    print("measured vs predicted step time (ms)")
    print(f"{'mode':<7}{'case':<13}{'N':>4}{'measured':>10}{'predicted':>10}{'ratio':>7}"
          f"{'exp. meas':>10}{'exp. pred':>10}")
    for c in comp:
        print(f"{c['mode']:<7}{c['case']:<13}{c['ranks']:>4}{c['measured_step_s'] * 1e3:10.2f}"
              f"{c['predicted_step_s'] * 1e3:10.2f}{c['measured_over_predicted']:7.2f}"
              f"{c['measured_exposed_comm_s'] * 1e3:10.3f}{c['predicted_exposed_comm_s'] * 1e3:10.3f}"
              + ("  (oversubscribed)" if c["oversubscribed"] else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the sweep's output directory (holding raw/)")
    ap.add_argument("--alpha", default=str(DEFAULT_ALPHA), help="latency of the given network, s (default 2e-6)")
    ap.add_argument("--beta", default="1/12.5e9", help="time per byte of the given network, s/B (default 1/12.5e9)")
    ap.add_argument("--network-name", default="infiniband-100g", help="name of the given network")
    ap.add_argument("--buckets", default="0 1 4 16", help="bucket sizes in MiB to project (0: one allreduce)")
    ap.add_argument("--max-ranks", type=int, default=4096)
    ap.add_argument("--backward-fraction", type=float, default=DEFAULT_BACKWARD_FRACTION,
                    help="fraction of compute time that is the backward pass (the overlap window)")
    ap.add_argument("--strong-batch", default="measured 4096",
                    help="global batches for the strong-scaling projection ('measured' = the swept one)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    raw = os.path.join(a.out, "raw")
    settings = read_settings(raw)
    runs = read_runs(raw)
    if not runs:
        sys.exit(f"scaling_report: no bench results under {raw}")
    rows = aggregate(runs)
    allreduce, fits = read_allreduce(raw, settings)
    networks = []
    if allreduce and allreduce["alpha"] > 0 and allreduce["beta"] > 0:
        networks.append({"name": "measured", "alpha": allreduce["alpha"], "beta": allreduce["beta"]})
    elif allreduce:
        print(f"scaling_report: the measured fit is not usable (alpha {allreduce['alpha']:.3g}, beta "
              f"{allreduce['beta']:.3g}); projecting with the given network only", file=sys.stderr)
    given = {"name": a.network_name, "alpha": parse_number(a.alpha), "beta": parse_number(a.beta)}
    networks.append(given)
    buckets = [parse_number(b) for b in a.buckets.split()]
    cores = int(settings["cores"]) if settings.get("cores", "").isdigit() else None
    proj = project(rows, networks, buckets, a.max_ranks, a.backward_fraction, a.strong_batch.split())
    comp = compare(rows, networks[0], a.backward_fraction, cores)

    write_csv(os.path.join(a.out, "scaling.csv"), CSV_COLUMNS, rows)
    write_csv(os.path.join(a.out, "projection.csv"), PROJECTION_COLUMNS, proj)
    write_csv(os.path.join(a.out, "compare.csv"), COMPARE_COLUMNS, comp)
    doc = {
        "settings": settings,
        "model": {"backward_fraction": a.backward_fraction, "buckets_mb": buckets, "max_ranks": a.max_ranks,
                  "compare_network": networks[0]["name"]},
        "alpha": allreduce["alpha"] if allreduce else None,
        "beta": allreduce["beta"] if allreduce else None,
        "allreduce": allreduce,
        "allreduce_fits": [{k: v for k, v in f.items() if k != "points"} for f in fits],
        "networks": networks,
        "rows": rows,
        "compare": comp,
        "runs": runs,
    }
    with open(os.path.join(a.out, "scaling.json"), "w") as f:
        json.dump(finite_or_none(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    if not a.quiet:
        if allreduce:
            print(f"alpha/beta from bench-allreduce at np={allreduce['ranks']}: alpha {allreduce['alpha']:.3g} s, "
                  f"beta {allreduce['beta']:.3g} s/B" + (f" (fits: " + ", ".join(
                      f"np={f['ranks']} {f['alpha']:.3g}/{f['beta']:.3g}" for f in fits) + ")" if len(fits) > 1 else ""))
        print_tables(rows, proj, comp, networks)
        print(f"\nwrote {a.out}/scaling.csv, scaling.json, projection.csv, compare.csv")


if __name__ == "__main__":
    main()
