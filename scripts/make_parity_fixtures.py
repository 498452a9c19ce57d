#!/usr/bin/env python3
"""PyTorch parity fixtures for rnn-dp's numerics.

Run (from anywhere; needs torch and safetensors):

    python3 scripts/make_parity_fixtures.py

It (re)writes Tests/RNNTests/Fixtures/parity/*.safetensors. Those files are committed; the Swift
test suite (Tests/RNNTests/PyTorchParityTests.swift) only reads them, so running the tests needs
neither Python nor torch. Regenerate only when a fixture's definition below changes; the output is
deterministic (fixed seeds, CPU, one thread, float32): with the same torch version a rerun writes
byte-identical files. Total size about 420 KB (items 1-6 about 200 KB, 7. about 215 KB).

What is stored (every tensor little-endian; config strings in the safetensors "__metadata__"):

1. grad_<cell>_<loss>_<output>.safetensors -- one forward/backward of a 2-layer model
   (`nn.RNN`/`nn.LSTM`/`nn.GRU` named `rnn`, time-major, plus `nn.Linear` named `head`):
     <param name>          F32  the weights (uniform in [-0.5, 0.5])
     input.tokens          I32  (T, B) token ids (fed to torch as one-hot floats), or
     input.features        F32  (T, B, I)
     target.classes        I32  (T, B) or (B), or
     target.values         F32  (T, B, O) or (B, O)
     loss                  F32  ()  CrossEntropyLoss() / MSELoss() with the default mean reduction
     grad.<param name>     F32  d loss / d param
   every_step fixtures (loss = mean over the T*B terms) correspond to rnn-dp's
   average_over_time = true, last_step ones (mean over the B samples) to false.
2. optim_<variant>.safetensors -- an LSTM (2 layers, dense input, MSE, every_step) trained for
   3 steps on one fixed batch with one torch.optim optimizer (foreach=False, i.e. the single-tensor
   rules), some variants with clip_grad_norm_ / clip_grad_value_ before each step:
     init.<param>, final.<param>, input.features, target.values, losses (F32 (3,): loss before
     each step).
3. schedules.safetensors -- learning rates (F64) of each schedule over N steps: lr.<schedule>[s] is
   the rate the update of 0-based step s uses (torch: the optimizer's lr after s scheduler.step()
   calls); for plateau, lr.plateau[i] is the rate after observing plateau.metrics[0...i].
4. sched_sgd.safetensors -- the optimizer-fixture model after 3 SGD(momentum) steps under StepLR.
5. grad_<cell>_embedding_cross_entropy_<output>.safetensors -- as 1., with token input through
   `nn.Embedding(VOCAB, EMBEDDING)` named `embedding` (tensor embedding.weight, its gradient
   grad.embedding.weight; metadata "embedding"); grad_<cell>_tied_... with the head tied to it.
6. grad_<cell>_bidirectional_mse_<output>.safetensors -- as 1. with bidirectional=True (tensors
   ..._reverse); last_step feeds the head torch.cat((h_n[-2], h_n[-1]), dim=1).
   `--only embedding` writes just 5. and 6.
7. packed_<cell>_l<layers>_<uni|bi>_<output>.safetensors -- variable-length sequences through
   pack_padded_sequence(..., enforce_sorted=False): `nn.RNN`(tanh)/`nn.LSTM`/`nn.GRU` named `rnn`
   with 1 or 2 layers, uni- or bidirectional, dense input, plus `nn.Linear(D*H, O)` named `head`;
   T_MAX = 6 steps, B_PACKED = 4 samples, lengths unsorted and always including T_MAX and 1:
     input.features        F32  (T_MAX, B, I) padded; the padding (t >= lengths[b]) is random too
     input.lengths         I32  (B,) (also metadata "lengths", e.g. "4,6,1,5")
     target.values         F32  (T_MAX, B, O) (padding random too) or (B, O)
     output                F32  the head's outputs, (T_MAX, B, O) with zeros at padding, or (B, O)
     loss                  F32  () every_step: MSE over the valid positions only (mean over them and
                                the O outputs); last_step: MSE of the head on each sample's state at
                                its own length (h_n[-1], or torch.cat((h_n[-2], h_n[-1]), dim=1))
     <param>, grad.<param> F32  the weights (uniform in [-0.5, 0.5]) and d loss / d param
     init.<param>, final.<param>, losses (F32 (3,): loss before each step) -- 3 steps of
                                torch.optim.SGD(lr=0.1, momentum=0.9, foreach=False) on the same batch.
   `--only packed` writes just 7.
"""

import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "RNNTests", "Fixtures", "parity")

T, B, H, LAYERS = 5, 3, 4, 2
VOCAB, CE_CLASSES = 5, 6  # token input width, cross-entropy classes (distinct sizes catch mix-ups)
FEATURES, MSE_OUT = 3, 2  # dense input width, MSE outputs
EMBEDDING = 3  # embedding width (differs from H and VOCAB)


def common_metadata(kind):
    return {
        "fixture": kind,
        "generator": "scripts/make_parity_fixtures.py",
        "torch_version": torch.__version__.split("+")[0],
    }


def make_model(cell, activation, in_width, out_width, dtype=torch.float32):
    if cell == "rnn":
        rnn = nn.RNN(in_width, H, LAYERS, nonlinearity=activation)
    elif cell == "lstm":
        rnn = nn.LSTM(in_width, H, LAYERS)
    else:
        rnn = nn.GRU(in_width, H, LAYERS)
    model = nn.ModuleDict({"rnn": rnn, "head": nn.Linear(H, out_width)})
    return model.to(dtype)


def randomize(model, gen):
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float32) - 0.5)


def make_data(loss, output, gen, out_width):
    """(inputs dict for the fixture, x for torch (T, B, width) float32, targets dict, torch target)."""
    data = {}
    if loss == "cross_entropy":
        tokens = torch.randint(0, VOCAB, (T, B), generator=gen, dtype=torch.int64)
        data["input.tokens"] = tokens.to(torch.int32)
        x = F.one_hot(tokens, VOCAB).to(torch.float32)
        rows = (T, B) if output == "every_step" else (B,)
        target = torch.randint(0, out_width, rows, generator=gen, dtype=torch.int64)
        data["target.classes"] = target.to(torch.int32)
    else:
        x = torch.rand((T, B, FEATURES), generator=gen, dtype=torch.float32) * 2 - 1
        data["input.features"] = x.clone()
        rows = (T, B, out_width) if output == "every_step" else (B, out_width)
        target = torch.rand(rows, generator=gen, dtype=torch.float32) * 2 - 1
        data["target.values"] = target.clone()
    return data, x, target


def objective(model, x, target, loss, output):
    y, _ = model["rnn"](x)  # (T, B, H)
    if output == "last_step":
        y = y[-1]  # (B, H)
    y = model["head"](y)  # (T, B, O) or (B, O)
    if loss == "cross_entropy":
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1))
    return F.mse_loss(y, target)


DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int32: "I32", torch.int64: "I64"}


def save(name, tensors, metadata):
    """Writes a safetensors file with sorted keys, so the same fixtures give the same bytes
    (safetensors.torch.save_file orders __metadata__ differently from run to run)."""
    path = os.path.join(OUT, name)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())}
    header, blobs, offset = {}, [], 0
    for k, v in tensors.items():
        data = v.numpy().astype(v.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[k] = {"dtype": DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {k: str(v) for k, v in sorted(metadata.items())}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    os.replace(path + ".tmp", path)
    back = load_file(path)  # the reference reader must read back exactly what was meant
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors), name
    return path


def weights_and_gradients(model):
    """Every parameter under its name and its gradient under grad.<name>."""
    out = {}
    for n, p in model.named_parameters():
        out[n] = p.detach().clone()
        out["grad." + n] = p.grad.detach().clone()
    return out


def max_rel_dev(a, b):
    """max |a - b| / max|b| over a tensor: the fixture's own float32 error, as a fraction of scale."""
    scale = b.abs().max().item()
    return (a.double() - b.double()).abs().max().item() / max(scale, 1e-30)


# --------------------------------------------------------------------------- gradients

def gradient_fixtures(seed):
    names = []
    cells = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
    worst = 0.0
    for ci, (cell, act) in enumerate(cells):
        for li, loss in enumerate(["cross_entropy", "mse"]):
            for oi, output in enumerate(["every_step", "last_step"]):
                gen = torch.Generator().manual_seed(seed + 100 * ci + 10 * li + oi)
                in_width = VOCAB if loss == "cross_entropy" else FEATURES
                out_width = CE_CLASSES if loss == "cross_entropy" else MSE_OUT
                model = make_model(cell, act, in_width, out_width)
                randomize(model, gen)
                data, x, target = make_data(loss, output, gen, out_width)
                model.zero_grad()
                value = objective(model, x, target, loss, output)
                value.backward()

                # The same computation in float64 from the same float32 numbers: how far the
                # float32 fixture itself is from exact (reported; must be far below 1e-5).
                m64 = make_model(cell, act, in_width, out_width, torch.float64)
                m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
                v64 = objective(m64, x.double(), target.double() if loss == "mse" else target, loss, output)
                v64.backward()
                dev = abs(value.item() - v64.item()) / abs(v64.item())
                for (n, p), (_, p64) in zip(model.named_parameters(), m64.named_parameters()):
                    dev = max(dev, max_rel_dev(p.grad, p64.grad))
                worst = max(worst, dev)

                tensors = dict(data)
                tensors["loss"] = value.detach().reshape(())
                tensors.update(weights_and_gradients(model))
                cell_name = cell if cell != "rnn" else "rnn_" + act
                meta = common_metadata("gradient")
                meta.update({
                    "cell": cell, "activation": act,
                    "input": "tokens" if loss == "cross_entropy" else "dense", "input_width": in_width,
                    "hidden": H, "layers": LAYERS, "outputs": out_width, "output": output, "loss": loss,
                    "average_over_time": "true" if output == "every_step" else "false",
                    "steps": T, "batch": B,
                })
                name = f"grad_{cell_name}_{loss}_{output}.safetensors"
                save(name, tensors, meta)
                names.append(name)
    print(f"gradient fixtures: {len(names)}; worst float32-vs-float64 deviation "
          f"(fraction of each tensor's max-abs) {worst:.2e}")
    assert worst < 1e-5, worst
    return names


def embedding_fixtures(seed):
    """Token input through nn.Embedding, then the 2-layer recurrent model and the head."""
    names = []
    for ci, (cell, act) in enumerate([("rnn", "tanh"), ("lstm", "tanh"), ("gru", "tanh")]):
        for oi, output in enumerate(["every_step", "last_step"]):
            gen = torch.Generator().manual_seed(seed + 10 * ci + oi)
            model = make_model(cell, act, EMBEDDING, CE_CLASSES)
            model["embedding"] = nn.Embedding(VOCAB, EMBEDDING)
            randomize(model, gen)
            tokens = torch.randint(0, VOCAB, (T, B), generator=gen, dtype=torch.int64)
            rows = (T, B) if output == "every_step" else (B,)
            target = torch.randint(0, CE_CLASSES, rows, generator=gen, dtype=torch.int64)
            model.zero_grad()
            value = objective(model, model["embedding"](tokens), target, "cross_entropy", output)
            value.backward()
            tensors = {"input.tokens": tokens.to(torch.int32), "target.classes": target.to(torch.int32),
                       "loss": value.detach().reshape(())}
            tensors.update(weights_and_gradients(model))
            meta = common_metadata("gradient")
            meta.update({
                "cell": cell, "activation": act, "input": "tokens", "input_width": VOCAB, "embedding": EMBEDDING,
                "hidden": H, "layers": LAYERS, "outputs": CE_CLASSES, "output": output, "loss": "cross_entropy",
                "average_over_time": "true" if output == "every_step" else "false", "steps": T, "batch": B,
            })
            name = f"grad_{cell}_embedding_cross_entropy_{output}.safetensors"
            save(name, tensors, meta)
            names.append(name)
    # Tied weights (Press and Wolf 2017): head.weight is embedding.weight, so E = H and the head
    # predicts the VOCAB tokens; named_parameters lists the shared tensor once, as embedding.weight.
    for ci, cell in enumerate(["lstm", "gru"]):
        gen = torch.Generator().manual_seed(seed + 100 + ci)
        rnn = make_model(cell, "tanh", H, VOCAB)
        model = nn.ModuleDict({"embedding": nn.Embedding(VOCAB, H), "rnn": rnn["rnn"], "head": rnn["head"]})
        model["head"].weight = model["embedding"].weight
        randomize(model, gen)
        tokens = torch.randint(0, VOCAB, (T, B), generator=gen, dtype=torch.int64)
        target = torch.randint(0, VOCAB, (T, B), generator=gen, dtype=torch.int64)
        model.zero_grad()
        value = objective(model, model["embedding"](tokens), target, "cross_entropy", "every_step")
        value.backward()
        tensors = {"input.tokens": tokens.to(torch.int32), "target.classes": target.to(torch.int32),
                   "loss": value.detach().reshape(())}
        tensors.update(weights_and_gradients(model))
        assert "head.weight" not in tensors and "embedding.weight" in tensors
        meta = common_metadata("gradient")
        meta.update({
            "cell": cell, "activation": "tanh", "input": "tokens", "input_width": VOCAB, "embedding": H, "tie_weights": "true",
            "hidden": H, "layers": LAYERS, "outputs": VOCAB, "output": "every_step", "loss": "cross_entropy",
            "average_over_time": "true", "steps": T, "batch": B,
        })
        name = f"grad_{cell}_tied_cross_entropy_every_step.safetensors"
        save(name, tensors, meta)
        names.append(name)
    # Bidirectional layers, dense input and MSE: the head reads [forward | backward] at each step,
    # or for last_step PyTorch's h_n (forward after step T-1, backward after step 0).
    for ci, (cell, act) in enumerate([("rnn", "tanh"), ("lstm", "tanh"), ("gru", "tanh")]):
        for oi, output in enumerate(["every_step", "last_step"]):
            gen = torch.Generator().manual_seed(seed + 200 + 10 * ci + oi)
            rnn = {"rnn": nn.RNN(FEATURES, H, LAYERS, nonlinearity=act, bidirectional=True),
                   "lstm": nn.LSTM(FEATURES, H, LAYERS, bidirectional=True),
                   "gru": nn.GRU(FEATURES, H, LAYERS, bidirectional=True)}[cell]
            model = nn.ModuleDict({"rnn": rnn, "head": nn.Linear(2 * H, MSE_OUT)})
            randomize(model, gen)
            x = torch.rand((T, B, FEATURES), generator=gen, dtype=torch.float32) * 2 - 1
            rows = (T, B, MSE_OUT) if output == "every_step" else (B, MSE_OUT)
            target = torch.rand(rows, generator=gen, dtype=torch.float32) * 2 - 1
            model.zero_grad()
            y, h_n = model["rnn"](x)
            if output == "last_step":
                h = h_n[0] if cell == "lstm" else h_n
                y = torch.cat((h[-2], h[-1]), dim=1)
            value = F.mse_loss(model["head"](y), target)
            value.backward()
            tensors = {"input.features": x.clone(), "target.values": target.clone(), "loss": value.detach().reshape(())}
            tensors.update(weights_and_gradients(model))
            meta = common_metadata("gradient")
            meta.update({
                "cell": cell, "activation": act, "input": "dense", "input_width": FEATURES, "bidirectional": "true",
                "hidden": H, "layers": LAYERS, "outputs": MSE_OUT, "output": output, "loss": "mse",
                "average_over_time": "true" if output == "every_step" else "false", "steps": T, "batch": B,
            })
            name = f"grad_{cell}_bidirectional_mse_{output}.safetensors"
            save(name, tensors, meta)
            names.append(name)
    print(f"embedding, tied and bidirectional fixtures: {len(names)}")
    return names


# --------------------------------------------------------------------------- variable lengths

T_MAX, B_PACKED = 6, 4  # padded steps and batch of the packed fixtures
PACKED_LR, PACKED_MOMENTUM, PACKED_STEPS = 0.1, 0.9, 3


def packed_lengths(gen):
    """(B_PACKED,) lengths: T_MAX, 1 and two in 2...T_MAX-1, in an order that is neither ascending
    nor descending (so enforce_sorted=False really has to sort)."""
    while True:
        middle = torch.randint(2, T_MAX, (2,), generator=gen).tolist()
        lengths = [T_MAX, 1] + middle
        order = torch.randperm(B_PACKED, generator=gen).tolist()
        lengths = [lengths[i] for i in order]
        if lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True):
            return torch.tensor(lengths, dtype=torch.int64)


def packed_model(cell, layers, bidirectional, dtype=torch.float32):
    rnn = {"rnn": lambda: nn.RNN(FEATURES, H, layers, nonlinearity="tanh", bidirectional=bidirectional),
           "lstm": lambda: nn.LSTM(FEATURES, H, layers, bidirectional=bidirectional),
           "gru": lambda: nn.GRU(FEATURES, H, layers, bidirectional=bidirectional)}[cell]()
    d = 2 if bidirectional else 1
    return nn.ModuleDict({"rnn": rnn, "head": nn.Linear(d * H, MSE_OUT)}).to(dtype)


def packed_objective(model, x, lengths, target, output, bidirectional):
    """(loss, head outputs with zeros at padding for every_step) for padded time-major x."""
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, h_n = model["rnn"](packed)
    if output == "every_step":
        y, _ = pad_packed_sequence(y, total_length=T_MAX)  # (T_MAX, B, D*H), original sample order
        mask = torch.arange(T_MAX).unsqueeze(1) < lengths.unsqueeze(0)  # (T_MAX, B)
        out = model["head"](y)
        value = F.mse_loss(out[mask], target[mask])
        return value, out * mask.unsqueeze(2).to(out.dtype)
    h = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h_n, c_n)
    y = torch.cat((h[-2], h[-1]), dim=1) if bidirectional else h[-1]  # (B, D*H)
    out = model["head"](y)
    return F.mse_loss(out, target), out


def packed_fixtures(seed):
    names = []
    worst = 0.0
    for ci, (cell, cell_name) in enumerate([("rnn", "rnn_tanh"), ("lstm", "lstm"), ("gru", "gru")]):
        for li, layers in enumerate([1, 2]):
            for bi, bidirectional in enumerate([False, True]):
                for oi, output in enumerate(["every_step", "last_step"]):
                    gen = torch.Generator().manual_seed(seed + 100 * ci + 10 * li + 2 * bi + oi)
                    model = packed_model(cell, layers, bidirectional)
                    randomize(model, gen)
                    lengths = packed_lengths(gen)
                    x = torch.rand((T_MAX, B_PACKED, FEATURES), generator=gen, dtype=torch.float32) * 2 - 1
                    rows = (T_MAX, B_PACKED, MSE_OUT) if output == "every_step" else (B_PACKED, MSE_OUT)
                    target = torch.rand(rows, generator=gen, dtype=torch.float32) * 2 - 1
                    model.zero_grad()
                    value, out = packed_objective(model, x, lengths, target, output, bidirectional)
                    value.backward()

                    # Padding is never read: other values there give the same loss and gradients.
                    valid = torch.arange(T_MAX).unsqueeze(1) < lengths.unsqueeze(0)
                    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
                    probe = packed_model(cell, layers, bidirectional)
                    probe.load_state_dict(model.state_dict())
                    t_probe = target
                    if output == "every_step":
                        t_probe = torch.where(valid.unsqueeze(2), target, torch.zeros_like(target))
                    v_probe, o_probe = packed_objective(probe, torch.where(valid.unsqueeze(2), x, noise),
                                                        lengths, t_probe, output, bidirectional)
                    v_probe.backward()
                    assert torch.equal(v_probe, value) and torch.equal(o_probe, out), cell_name
                    for (_, p), (_, q) in zip(model.named_parameters(), probe.named_parameters()):
                        assert torch.equal(p.grad, q.grad), cell_name

                    # float64 from the same float32 numbers (reported; must be far below 1e-5).
                    m64 = packed_model(cell, layers, bidirectional, torch.float64)
                    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
                    v64, o64 = packed_objective(m64, x.double(), lengths, target.double(), output, bidirectional)
                    v64.backward()
                    dev = max(abs(value.item() - v64.item()) / abs(v64.item()), max_rel_dev(out, o64))
                    for (_, p), (_, p64) in zip(model.named_parameters(), m64.named_parameters()):
                        dev = max(dev, max_rel_dev(p.grad, p64.grad))
                    worst = max(worst, dev)

                    tensors = {"input.features": x.clone(), "input.lengths": lengths.to(torch.int32),
                               "target.values": target.clone(), "loss": value.detach().reshape(()),
                               "output": out.detach().clone()}
                    tensors.update(weights_and_gradients(model))

                    # SGD with momentum from the same initial weights on a fresh copy: an update
                    # linear in the gradient, so the comparison stays as well conditioned as the
                    # gradients' (Adam's rules are the optim_ fixtures'; its scale-free step turns
                    # the rounding of a gradient element that cancels to near zero into a
                    # visible weight difference).
                    trained = packed_model(cell, layers, bidirectional)
                    trained.load_state_dict(model.state_dict())
                    opt = torch.optim.SGD(trained.parameters(), lr=PACKED_LR, momentum=PACKED_MOMENTUM, foreach=False)
                    group = opt.param_groups[0]
                    losses = []
                    for _ in range(PACKED_STEPS):
                        opt.zero_grad()
                        step_value, _ = packed_objective(trained, x, lengths, target, output, bidirectional)
                        losses.append(step_value.item())
                        step_value.backward()
                        opt.step()
                    assert losses[0] == value.item()
                    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
                    for n, p in model.named_parameters():
                        tensors["init." + n] = p.detach().clone()
                    for n, p in trained.named_parameters():
                        tensors["final." + n] = p.detach().clone()

                    meta = common_metadata("packed")
                    meta.update({
                        "cell": cell, "activation": "tanh", "input": "dense", "input_width": FEATURES,
                        "hidden": H, "layers": layers, "outputs": MSE_OUT, "output": output, "loss": "mse",
                        "average_over_time": "true" if output == "every_step" else "false",
                        "steps": T_MAX, "batch": B_PACKED, "bidirectional": "true" if bidirectional else "false",
                        "lengths": ",".join(str(n) for n in lengths.tolist()),
                        "kind": "sgd", "lr": repr(float(group["lr"])), "momentum": repr(float(group["momentum"])),
                        "dampening": repr(float(group["dampening"])), "nesterov": "true" if group["nesterov"] else "false",
                        "weight_decay": repr(float(group["weight_decay"])),
                        "optimizer_steps": PACKED_STEPS,
                    })
                    name = f"packed_{cell_name}_l{layers}_{'bi' if bidirectional else 'uni'}_{output}.safetensors"
                    save(name, tensors, meta)
                    names.append(name)
    print(f"packed fixtures: {len(names)}; worst float32-vs-float64 deviation "
          f"(fraction of each tensor's max-abs) {worst:.2e}")
    assert worst < 1e-5, worst
    return names


# --------------------------------------------------------------------------- optimizers

OPT_CELL, OPT_LOSS, OPT_OUTPUT, OPT_STEPS = "lstm", "mse", "every_step", 3


def optimizer_model(seed):
    gen = torch.Generator().manual_seed(seed)
    model = make_model(OPT_CELL, "tanh", FEATURES, MSE_OUT)
    randomize(model, gen)
    data, x, target = make_data(OPT_LOSS, OPT_OUTPUT, gen, MSE_OUT)
    return model, data, x, target


def optimizer_metadata(kind):
    meta = common_metadata(kind)
    meta.update({
        "cell": OPT_CELL, "activation": "tanh", "input": "dense", "input_width": FEATURES,
        "hidden": H, "layers": LAYERS, "outputs": MSE_OUT, "output": OPT_OUTPUT, "loss": OPT_LOSS,
        "average_over_time": "true", "steps": T, "batch": B, "optimizer_steps": OPT_STEPS,
    })
    return meta


def grad_norm(model):
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()))


def optimizer_fixtures(seed):
    base, data, x, target = optimizer_model(seed)
    # Gradient at the initial weights, to choose clipping thresholds that really clip.
    base.zero_grad()
    objective(base, x, target, OPT_LOSS, OPT_OUTPUT).backward()
    norm0 = grad_norm(base)
    grads0 = torch.cat([p.grad.reshape(-1).abs() for p in base.parameters()])
    clip_norm = float(f"{0.5 * norm0:.2g}")
    clip_value = float(f"{grads0.median().item():.2g}")  # about half the elements get clamped
    base.zero_grad()

    # name -> (torch optimizer class, kwargs, extra metadata); kwargs keys are torch's names.
    variants = {
        "sgd": (torch.optim.SGD, dict(lr=0.1), {}),
        "sgd_clip_norm": (torch.optim.SGD, dict(lr=0.1), {"clip_norm": clip_norm}),
        "sgd_nesterov_wd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), {}),
        "sgd_momentum_dampening_clip_value": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.25),
                                              {"clip_value": clip_value}),
        "adam": (torch.optim.Adam, dict(lr=1e-2), {}),
        "adam_wd": (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1), {}),
        "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.01), {}),
        "rmsprop": (torch.optim.RMSprop, dict(lr=1e-2), {}),
        "rmsprop_momentum_centered": (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.9, centered=True), {}),
        "adagrad": (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.01), {}),
    }
    kinds = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw",
             torch.optim.RMSprop: "rmsprop", torch.optim.Adagrad: "adagrad"}
    names = []
    for vname, (cls, kwargs, extra) in variants.items():
        model = make_model(OPT_CELL, "tanh", FEATURES, MSE_OUT)
        model.load_state_dict(base.state_dict())
        opt = cls(model.parameters(), foreach=False, **kwargs)
        group = opt.param_groups[0]
        losses = []
        for _ in range(OPT_STEPS):
            opt.zero_grad()
            value = objective(model, x, target, OPT_LOSS, OPT_OUTPUT)
            losses.append(value.item())
            value.backward()
            if "clip_norm" in extra:
                before = torch.nn.utils.clip_grad_norm_(model.parameters(), extra["clip_norm"], foreach=False)
                assert before.item() > extra["clip_norm"], "clip_norm must clip at every step"
            if "clip_value" in extra:
                torch.nn.utils.clip_grad_value_(model.parameters(), extra["clip_value"], foreach=False)
            opt.step()
        tensors = dict(data)
        tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
        for n, p in base.named_parameters():
            tensors["init." + n] = p.detach().clone()
        for n, p in model.named_parameters():
            tensors["final." + n] = p.detach().clone()
        meta = optimizer_metadata("optimizer")
        # Every hyper-parameter torch actually used (its defaults included), in rnn-dp's names.
        meta.update({"variant": vname, "kind": kinds[cls], "lr": repr(float(group["lr"])),
                     "weight_decay": repr(float(group.get("weight_decay", 0)))})
        if cls is torch.optim.SGD:
            meta.update({"momentum": repr(float(group["momentum"])), "dampening": repr(float(group["dampening"])),
                         "nesterov": str(bool(group["nesterov"])).lower()})
        if cls in (torch.optim.Adam, torch.optim.AdamW):
            meta.update({"beta1": repr(float(group["betas"][0])), "beta2": repr(float(group["betas"][1])),
                         "eps": repr(float(group["eps"]))})
            assert not group["amsgrad"]
        if cls is torch.optim.RMSprop:
            meta.update({"alpha": repr(float(group["alpha"])), "eps": repr(float(group["eps"])),
                         "momentum": repr(float(group["momentum"])), "centered": str(bool(group["centered"])).lower()})
        if cls is torch.optim.Adagrad:
            meta.update({"lr_decay": repr(float(group["lr_decay"])), "eps": repr(float(group["eps"])),
                         "initial_accumulator": repr(float(group["initial_accumulator_value"]))})
        for k, v in extra.items():
            meta[k] = repr(float(v))
        name = f"optim_{vname}.safetensors"
        save(name, tensors, meta)
        names.append(name)
    print(f"optimizer fixtures: {len(names)} (initial grad norm {norm0:.4g}, clip_norm {clip_norm}, "
          f"clip_value {clip_value})")
    return names


# --------------------------------------------------------------------------- schedules

SCHEDULE_STEPS = 14
SCHEDULES = {
    # name -> parameters, in rnn-dp's names (Schedule.swift); base_lr is LearningRateSchedule.base.
    "constant": {"base_lr": 0.1},
    "step": {"base_lr": 0.1, "step_size": 3, "gamma": 0.5},
    "exponential": {"base_lr": 0.1, "gamma": 0.8},
    # 3 warmup steps, cosine to min_lr at step 10, then held at min_lr (steps 10..13).
    "cosine": {"base_lr": 0.1, "warmup": 3, "total": 10, "min_lr": 0.001},
    # 3 steps up, 3 down, and the next cycle: 0..13 covers two cycles and a bit.
    "triangular": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3},
    "plateau": {"base_lr": 0.1, "factor": 0.5, "patience": 1, "threshold": 0.01, "cooldown": 1, "min_lr": 0.02},
}
# Validation losses for plateau: improvements, an "improvement" smaller than the 1% threshold
# (0.895 vs best 0.9 counts as bad), cooldown, reductions down to min_lr, and reductions past it
# (no change).
PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.895, 0.96, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86,
                   0.87, 0.88]


def cosine_lr(p, s):
    """Schedule.swift's cosine: LinearLR warmup from base/warmup, then CosineAnnealingLR, clamped."""
    base, warmup, total, min_lr = p["base_lr"], p["warmup"], p["total"], p["min_lr"]
    if s < warmup:
        return base * (s + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((s - warmup) / span, 1.0)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def run_scheduler(make_scheduler, base_lr, steps):
    """Rates used by updates 0..steps-1 with a real torch scheduler on a one-parameter SGD."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def schedule_fixture():
    S = SCHEDULES
    n = SCHEDULE_STEPS
    lrs = {}
    lrs["constant"] = run_scheduler(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0),
                                    S["constant"]["base_lr"], n)
    lrs["step"] = run_scheduler(lambda o: torch.optim.lr_scheduler.StepLR(
        o, step_size=S["step"]["step_size"], gamma=S["step"]["gamma"]), S["step"]["base_lr"], n)
    lrs["exponential"] = run_scheduler(lambda o: torch.optim.lr_scheduler.ExponentialLR(
        o, gamma=S["exponential"]["gamma"]), S["exponential"]["base_lr"], n)
    c = S["cosine"]
    lrs["cosine"] = run_scheduler(lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda s: cosine_lr(c, s) / c["base_lr"]), c["base_lr"], n)
    # Cross-check of that formula against torch's own chain up to `total` (beyond it
    # CosineAnnealingLR would rise again; rnn-dp holds min_lr).
    chain = run_scheduler(lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
        torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / c["warmup"], end_factor=1.0,
                                          total_iters=c["warmup"] - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=c["total"] - c["warmup"], eta_min=c["min_lr"]),
    ], milestones=[c["warmup"]]), c["base_lr"], c["total"] + 1)
    for s, (a, b) in enumerate(zip(chain, lrs["cosine"])):
        assert abs(a - b) <= 1e-12 * abs(b), f"cosine step {s}: SequentialLR {a} vs formula {b}"
    t = S["triangular"]
    lrs["triangular"] = run_scheduler(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=t["base_lr"], max_lr=t["max_lr"], step_size_up=t["step_size_up"], mode="triangular",
        cycle_momentum=False), t["base_lr"], n)
    pl = S["plateau"]
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=pl["base_lr"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=pl["factor"], patience=pl["patience"], threshold=pl["threshold"],
        threshold_mode="rel", cooldown=pl["cooldown"], min_lr=pl["min_lr"])
    lrs["plateau"] = []
    for m in PLATEAU_METRICS:
        opt.step()
        sched.step(m)
        lrs["plateau"].append(opt.param_groups[0]["lr"])
    distinct = sorted(set(lrs["plateau"]), reverse=True)
    assert distinct[-1] == pl["min_lr"] and len(distinct) >= 4, lrs["plateau"]

    tensors = {"lr." + k: torch.tensor(v, dtype=torch.float64) for k, v in lrs.items()}
    tensors["plateau.metrics"] = torch.tensor(PLATEAU_METRICS, dtype=torch.float64)
    meta = common_metadata("schedule")
    meta["schedules"] = ",".join(SCHEDULES)
    for k, params in SCHEDULES.items():
        for pk, pv in params.items():
            meta[f"{k}.{pk}"] = repr(pv)
    save("schedules.safetensors", tensors, meta)
    for k, v in lrs.items():
        print(f"  lr.{k}: " + " ".join(f"{x:.4g}" for x in v))
    return ["schedules.safetensors"]


def scheduled_sgd_fixture(seed):
    base, data, x, target = optimizer_model(seed)
    model = make_model(OPT_CELL, "tanh", FEATURES, MSE_OUT)
    model.load_state_dict(base.state_dict())
    params = {"base_lr": 0.1, "step_size": 1, "gamma": 0.5}
    opt = torch.optim.SGD(model.parameters(), lr=params["base_lr"], momentum=0.9, foreach=False)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=params["step_size"], gamma=params["gamma"])
    losses, lrs = [], []
    for _ in range(OPT_STEPS):
        opt.zero_grad()
        value = objective(model, x, target, OPT_LOSS, OPT_OUTPUT)
        losses.append(value.item())
        value.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(lrs)) == OPT_STEPS, lrs
    tensors = dict(data)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    for n, p in base.named_parameters():
        tensors["init." + n] = p.detach().clone()
    for n, p in model.named_parameters():
        tensors["final." + n] = p.detach().clone()
    meta = optimizer_metadata("scheduled_sgd")
    meta.update({"kind": "sgd", "momentum": "0.9", "dampening": "0.0", "nesterov": "false",
                 "weight_decay": "0.0", "schedule": "step"})
    for pk, pv in params.items():
        meta[f"step.{pk}"] = repr(pv)
    save("sched_sgd.safetensors", tensors, meta)
    return ["sched_sgd.safetensors"]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    only = {"embedding": lambda: embedding_fixtures(seed=31), "packed": lambda: packed_fixtures(seed=41)}
    if len(sys.argv) == 3 and sys.argv[1] == "--only" and sys.argv[2] in only:
        names = only[sys.argv[2]]()
        print(f"wrote {len(names)} files to {os.path.relpath(OUT, os.getcwd())}")
        return 0
    if sys.argv[1:]:
        print(f"usage: {sys.argv[0]} [--only {'|'.join(only)}]", file=sys.stderr)
        return 2
    for f in os.listdir(OUT):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(OUT, f))
    names = gradient_fixtures(seed=20240601)
    names += optimizer_fixtures(seed=7)
    names += schedule_fixture()
    names += scheduled_sgd_fixture(seed=7)
    names += embedding_fixtures(seed=31)
    names += packed_fixtures(seed=41)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in names)
    print(f"wrote {len(names)} files, {total} bytes, to {os.path.relpath(OUT, os.getcwd())}")


if __name__ == "__main__":
    sys.exit(main())
