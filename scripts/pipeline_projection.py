#!/usr/bin/env python3
"""The alpha-beta projection of docs/PARALLELISM.md: data parallelism against pipelines (and both)
for the bench case lstm-h512x4 (4 x LSTM H=512, T=64) at many ranks, from measured inputs.

    pipeline_projection.py RESULTS.jsonl FIT.json

RESULTS.jsonl holds `rnn-dp bench --json` lines labelled "one process b=B" (one rank's step at
batch B, in chunks of 8 steps, the compute C(B)); FIT.json the `bench-allreduce --json` fit
{"alpha", "beta"}. scripts/bench-pipeline.sh makes both.

The model, strong scaling at global batch B over N = D x S ranks (D replicas of an S-stage
pipeline, S in 1, 2, 4; D <= B):
  compute  C_s(b) = C(b) * (L/S) / L, the stage's share of one rank's step at batch b = B/D
           (balanced stages; C(b) measured for b <= 32, linear in b above);
  bubble   the stage's sweep takes (C + S - 1) / C of its compute (C = T/k chunks of k = 8 steps);
  messages 2 (S - 1) chunk messages on the critical path, each alpha + m beta with
           m = k * b * H * 4 bytes (the wavefront's fill and drain; the others overlap compute);
  allreduce the stage's gradient, 4 P / S bytes, over its D replicas: the ring,
           2 (D - 1) alpha + 2 (D - 1) / D * n * beta, not overlapped (an upper bound).
Step time = the sum. Tokens per second = B * T / step.
"""
import json
import sys

H, T, L, K = 512, 64, 4, 8
CHUNKS = T // K


def main():
    rows = [json.loads(l) for l in open(sys.argv[1])]
    fit = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
    compute = {}
    params = None
    for r in rows:
        if r["label"].startswith("one process b="):
            compute.setdefault(int(r["label"].split("=")[1]), []).append(r["step_s"])
            params = r["parameters"]
    compute = {b: sorted(v)[len(v) // 2] for b, v in compute.items()}
    top = max(compute)

    def C(b):
        return compute[b] if b in compute else compute[top] * b / top

    def ring(n, p, alpha, beta):
        return 0.0 if p == 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta

    def step(B, D, S, alpha, beta):
        b = B // D
        if b < 1 or B % D:
            return None
        stage = C(b) * (L // S) / L * (CHUNKS + S - 1) / CHUNKS
        messages = 2 * (S - 1) * (alpha + K * b * H * 4 * beta)
        return stage + messages + ring(4 * params / S, D, alpha, beta)

    networks = [("this machine (shared memory, bench-allreduce np=2 fit)", fit["alpha"], fit["beta"]),
                ("InfiniBand 100 Gb/s (alpha 2 us, beta 1/12.5 GB/s)", 2e-6, 1 / 12.5e9)]
    print(f"Inputs: P = {params} parameters; one process's step C(b) in chunks of {K} steps: "
          + ", ".join(f"b={b}: {1000 * compute[b]:.1f} ms" for b in sorted(compute)) + ".")
    for name, alpha, beta in networks:
        print()
        print(f"**{name}**: alpha = {alpha * 1e6:.2f} us, beta = {beta * 1e9:.3f} ns/B")
        print()
        print("| global batch B | ranks N | batch per rank, data parallel | data parallel tokens/s | D x 2 tokens/s | D x 4 tokens/s | best (D x S) |")
        print("|---|---|---|---|---|---|---|")
        for B in [32, 256, 2048]:
            for N in [2, 8, 32, 128, 512]:
                cells, best = [], None
                for S in [1, 2, 4]:
                    D = N // S
                    t = step(B, D, S, alpha, beta) if N % S == 0 and D >= 1 else None
                    if t is None:
                        cells.append("—")
                        continue
                    rate = B * T / t
                    cells.append(f"{rate:,.0f}")
                    if best is None or rate > best[0]:
                        best = (rate, f"{D} x {S}" if S > 1 else f"data parallel ({N})")
                if best is None:
                    continue
                print(f"| {B} | {N} | {B / N:g} | " + " | ".join(cells) + f" | {best[1]} |")


if __name__ == "__main__":
    main()
