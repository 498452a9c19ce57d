#!/usr/bin/env python3
"""The rnn-dp bench configurations in PyTorch (CPU), for side-by-side comparison.

    python3 scripts/bench_pytorch.py [--case NAME ...] [--steps 20] [--warmup 3] [--threads 1] [--json]

Character model, V = 65, softmax cross-entropy at every step, Adam, time-major nn.RNN / nn.LSTM /
nn.GRU + nn.Linear: the same computation as `rnn-dp bench`. For each case it times both one-hot
input (F.one_hot(...).float() into the recurrent layer) and an nn.Embedding(V, V) in front of it,
and reports the faster. Needs torch (pip install torch); not used by the test suite.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CASES = {
    "rnn-h128": ("rnn", 128, 1, 64, 32),
    "lstm-h256x2": ("lstm", 256, 2, 64, 32),
    "gru-h512": ("gru", 512, 1, 64, 64),
    "lstm-h1024": ("lstm", 1024, 1, 32, 64),
}
V = 65


class Model(nn.Module):
    def __init__(self, cell, hidden, layers, embedding):
        super().__init__()
        self.embedding = nn.Embedding(V, V) if embedding else None
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = kind(V, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, V)

    def forward(self, tokens):  # (T, B) int64
        x = self.embedding(tokens) if self.embedding is not None else F.one_hot(tokens, V).float()
        return self.head(self.rnn(x)[0])


def time_case(name, steps, warmup, embedding):
    cell, hidden, layers, T, B = CASES[name]
    torch.manual_seed(1)
    model = Model(cell, hidden, layers, embedding)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (T, B), generator=g)
    targets = torch.randint(0, V, (T, B), generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(T * B, V), targets.reshape(T * B))
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
    return statistics.median(times), T * B


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", default=[], choices=sorted(CASES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    names = a.case or list(CASES)
    if not a.json:
        print(f"PyTorch {torch.__version__}, {a.threads} thread(s), {a.steps} steps after {a.warmup} warm-up")
        print("case          input      step ms  tokens/s")
    for name in names:
        best = None
        for embedding in (False, True):
            step, tokens = time_case(name, a.steps, a.warmup, embedding)
            if best is None or step < best[0]:
                best = (step, tokens, "embedding" if embedding else "one-hot")
        step, tokens, how = best
        if a.json:
            print(json.dumps({"case": name, "step_s": step, "tokens_per_s": tokens / step, "input": how,
                              "threads": a.threads, "torch": torch.__version__}))
        else:
            print(f"{name:<13} {how:<10} {step * 1000:8.2f} {tokens / step:9.0f}")


if __name__ == "__main__":
    main()
