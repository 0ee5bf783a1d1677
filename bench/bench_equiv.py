"""Equivalence of the kit's frontier flags with the 1.0611 record's own train_gpt.py, on the CPU in fp32.

    python bench/bench_equiv.py --other PATH/TO/records/.../2026-04-27_..._1.0611/train_gpt.py [--record]

PATH is a local copy of the record's script (openai/parameter-golf; never committed here). bench/record_cpu.py
loads it with only what cannot run on a CPU replaced (FA3 -> SDPA with the same masks, Triton kernels -> their
eager formulas, torch.compile -> eager, CUDA streams -> no-ops). Both scripts read the same environment (SMALL: an
11-layer model of width 128 with every frontier flag on, in the record's own variable names). Then:

1. build the record's GPT, add noise to every parameter (zero-initialised projections and gates would hide most of
   the computation), copy the weights into the kit's model through NAME_MAP (the record keeps its matrices in four
   banks: qo_bank[i] = Q of layer i, qo_bank[L+i] = its output projection; kv_bank[i] = K, kv_bank[L+i] = V;
   mlp_up_bank[i], mlp_down_bank[i]);
2. one packed batch of several documents (one continued from the previous batch, one longer than TRAIN_SEQ_LEN,
   a one-token document), cu_seqlens from each script's own code (they must be equal);
3. compare logits, loss, gradients (mapped back through NAME_MAP), and the weights after one optimiser step (the
   record's own step_fn: Muon on the banks + AdamW, momentum warm-up, clip; the kit's train_step);
4. the LR multiplier over a wallclock grid (the record's own lr_mul/training_frac, rebuilt from train_model) and the
   step at which looping switches on.
Steps 1-3 run twice: looping on (the record's state after ENABLE_LOOPING_AT and at evaluation) and off.

Precision: fp32 everywhere. The record's Muon casts its momentum and Newton-Schulz iterate to bf16 (on any device);
the comparison maps those two casts to fp32 (Tensor.bfloat16 -> float while its optimiser steps) so that it
measures the algorithm; `step_native_max_abs_diff` is the same step with the record's bf16 left in, for scale.
The last line is `equivalence logits_max_abs_diff=X loss_abs_diff=Y step_max_abs_diff=Z`; the exit status is 1
when any figure is over its tolerance (TOLERANCE).
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_equiv.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import contextlib
import os
import sys
import warnings

import torch

from bench import common, record_cpu

# The comparison configuration, in the record's variable names (the kit reads them as aliases or as its own).
SMALL = {
    "VOCAB_SIZE": "512", "NUM_LAYERS": "11", "MODEL_DIM": "128", "NUM_HEADS": "8", "NUM_KV_HEADS": "4",
    "MLP_MULT": "4", "TIE_EMBEDDINGS": "1", "LOGIT_SOFTCAP": "30", "ROPE_BASE": "10000", "ROPE_DIMS": "8",
    "LN_SCALE": "1", "QK_GAIN_INIT": "5.0", "XSA_LAST_N": "11", "SKIP_GATES_ENABLED": "1", "NUM_LOOPS": "2",
    "LOOP_START": "3", "LOOP_END": "5", "ENABLE_LOOPING_AT": "0.35", "PARALLEL_START_LAYER": "8",
    "PARALLEL_FINAL_LANE": "mean", "GATE_WINDOW": "12", "SMEAR_GATE_ENABLED": "1", "SPARSE_ATTN_GATE_ENABLED": "1",
    "SPARSE_ATTN_GATE_SCALE": "0.5", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "3584",
    "ITERATIONS": "20000", "MAX_WALLCLOCK_SECONDS": "600", "GPTQ_RESERVE_SECONDS": "0", "WARMDOWN_FRAC": "0.85",
    "MIN_LR": "0.1", "MATRIX_LR": "0.026", "TIED_EMBED_LR": "0.03", "SCALAR_LR": "0.02", "MUON_MOMENTUM": "0.97",
    "MUON_MOMENTUM_WARMUP_START": "0.92", "MUON_MOMENTUM_WARMUP_STEPS": "1500", "MUON_BACKEND_STEPS": "5",
    "MUON_ROW_NORMALIZE": "1", "MUON_WD": "0.095", "EMBED_WD": "0.085", "ADAM_WD": "0.02", "BETA1": "0.9",
    "BETA2": "0.99", "ADAM_EPS": "1e-8", "GRAD_CLIP_NORM": "0.3", "FUSED_CE_ENABLED": "1",
}
# Kit settings with no record counterpart that the record's computation implies (the record has no switch for them).
KIT_ONLY = {"MLP_ACT": "leaky_relu2", "MLP_LEAKY_SLOPE": "0.5", "VARLEN_ATTN": "1", "MUON_NS": "polar",
            "ORTHO_INIT": "1", "WARMUP_STEPS": "0"}
TOLERANCE = {"logits": 1e-5, "loss": 1e-5, "grad": 1e-5, "step": 1e-5, "lr": 1e-12, "switch_ms": 0.0}
# The optimiser step compared: step 700 (Muon momentum 0.92 -> 0.97 under way), 120 s into the 600 s cap (frac 0.2:
# LR multiplier 0.8 / 0.85, looping not yet due): each script's own schedule code sets momentum and LR.
STEP, ELAPSED_MS = 700, 120_000.0
BATCH_DOCS = (23, 3 * 64 + 17, 1, 41, 90, 64, 20)  # 448 = TRAIN_BATCH_TOKENS / 8; the first continues a document (no BOS); one is cut 4 times


def name_map(L: int) -> dict:
    """record state name -> (kit state name, index into the record tensor or None)."""
    m = {"tok_emb.weight": ("tok_emb.weight", None), "skip_weights": ("skip_weights", None),
         "skip_gates": ("skip_gates", None), "parallel_post_lambdas": ("lanes.post", None),
         "parallel_resid_lambdas": ("lanes.resid", None), "smear_gate.weight": ("content_smear.gate.weight", None),
         "smear_lambda": ("content_smear.lam", None)}
    for i in range(L):
        b = f"blocks.{i}."
        m.update({f"qo_bank/{i}": (b + "attn.c_q.weight", ("qo_bank", i)),
                  f"qo_bank/{L + i}": (b + "attn.proj.weight", ("qo_bank", L + i)),
                  f"kv_bank/{i}": (b + "attn.c_k.weight", ("kv_bank", i)),
                  f"kv_bank/{L + i}": (b + "attn.c_v.weight", ("kv_bank", L + i)),
                  f"mlp_up_bank/{i}": (b + "mlp.fc.weight", ("mlp_up_bank", i)),
                  f"mlp_down_bank/{i}": (b + "mlp.proj.weight", ("mlp_down_bank", i)),
                  b + "attn.attn_gate_w": (b + "attn.out_gate.w", None)})
        for n in ("attn_scale", "mlp_scale", "resid_mix", "attn.q_gain"):
            m[b + n] = (b + n, None)
    return m


def record_tensors(tensors: dict, L: int) -> dict:
    """{kit name: tensor} from a {record name: tensor} dict (parameters or gradients), banks sliced."""
    out = {}
    for rec, (kit, where) in name_map(L).items():
        src = tensors.get(where[0] if where else rec)
        if src is not None:
            out[kit] = src[where[1]] if where else src
    return out


def packed_batch(vocab: int, seed: int = 0):
    """(x, y) of shape (1, N): documents of BATCH_DOCS lengths laid end to end, each but the first from a BOS."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for i, n in enumerate(BATCH_DOCS):
        doc = torch.randint(2, vocab, (n,), generator=g)
        if i:
            doc[0] = 1
        parts.append(doc)
    t = torch.cat(parts + [torch.tensor([1])])
    return t[None, :-1], t[None, 1:]


def perturb(model, seed: int) -> None:
    """Noise on every parameter: N(0, 1/fan_in) on matrices (the last dim is fan_in, banks included), N(0, 0.1)
    on vectors and scalars, so that every gate, lane and zero-initialised projection takes part."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p.shape[-1] ** -0.5 if p.ndim >= 2 else 0.1
            p.add_(torch.randn(p.shape, generator=g) * std)


@contextlib.contextmanager
def environment(env: dict):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def max_diff(a: dict, b: dict, strict: bool = True) -> float:
    """Max abs difference over the tensors of both dicts (all of them must be on both sides when strict)."""
    if strict and set(a) ^ set(b):
        raise RuntimeError(f"tensors on one side only: {sorted(set(a) ^ set(b))}")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in set(a) & set(b))


class RecordSide:
    """The record's model and its own training step, at the configuration of its environment."""

    def __init__(self, path: str, env: dict):
        with environment(env):
            self.mod = record_cpu.load(path)
        self.h = self.mod.Hyperparameters()
        self.h.grad_accum_steps = 1  # one packed micro-batch per step (the record: 8 // WORLD_SIZE)

    def model(self, looping: bool, seed: int):
        torch.manual_seed(seed)
        m = self.mod.GPT(self.h)
        perturb(m, seed)
        m.looping_active = looping
        return m

    def cu_seqlens(self, x):
        bos = (x[0] == 1).nonzero().flatten().tolist()
        return self.mod._build_cu_seqlens(bos, x.size(1), x.device, self.h.train_seq_len, 64)[0]

    def forward(self, m, x, y):
        cu = self.cu_seqlens(x)
        logits = m.forward_logits(x, cu_seqlens=cu, max_seqlen=self.h.train_seq_len)
        return logits, m(x, y, cu_seqlens=cu, max_seqlen=self.h.train_seq_len)

    def step(self, m, x, y, step: int, elapsed_ms: float, fp32: bool) -> None:
        """The record's step_fn (forward, backward, momentum warm-up, LR, clip, Optimizers.step) on (x, y), with
        the LR multiplier of its own lr_mul(training_frac(step, elapsed_ms))."""
        scale = self.schedule()[0](step, elapsed_ms)
        loader = type("Loader", (), {"next_batch": lambda _s, *_a: (x, y, self.cu_seqlens(x), self.h.train_seq_len)})
        with record_cpu.cpu_streams(), (record_cpu.bfloat16_as_float32() if fp32 else contextlib.nullcontext()):
            opts = self.mod.Optimizers(self.h, m)
            fn = record_cpu.closure(self.mod, "train_model", "step_fn", h=self.h, model=m, optimizers=opts,
                                    train_loader=loader(), device=x.device,
                                    _clip_params=[p for p in m.parameters() if p.requires_grad])
            fn(step, scale)

    def schedule(self):
        """(lr_mul(training_frac(step, elapsed_ms)), looping condition) with the record's own two functions."""
        cap = 1e3 * self.h.max_wallclock_seconds - 1e3 * self.h.gptq_reserve_seconds \
            if self.h.max_wallclock_seconds > 0 else None
        frac = record_cpu.closure(self.mod, "train_model", "training_frac", h=self.h, max_wallclock_ms=cap)
        lr_mul = record_cpu.closure(self.mod, "train_model", "lr_mul", h=self.h)
        # the switch, as train_model's loop writes it: num_loops > 0 and frac >= enable_looping_at
        return (lambda s, ms: lr_mul(frac(s, ms)),
                lambda s, ms: self.h.num_loops > 0 and frac(s, ms) >= self.h.enable_looping_at)


class KitSide:
    def __init__(self, kit_path, env: dict, strict: bool = True):
        self.kit = common.import_kit(kit_path) if kit_path else common.import_kit()
        self.args, self.strict = common.kit_args(self.kit, env), strict

    def model(self, record_state: dict, looping: bool):
        m = self.kit.build_model(self.args)
        state = record_tensors(record_state, self.args.num_layers)
        own = m.state_dict()
        extra, missing = set(state) - set(own), set(own) - set(state)
        if self.strict and (extra or missing):
            raise RuntimeError(f"NAME_MAP does not cover the kit's model: kit only {sorted(missing)}, "
                               f"record only {sorted(extra)}")
        m.load_state_dict({k: v.clone() for k, v in state.items() if k in own}, strict=False)
        m.looping = looping
        return m

    def forward(self, m, x, y):
        cu = self.kit.doc_bounds(x, self.args.train_seq_len)
        return m(x, cu_seqlens=cu), m(x, y, cu_seqlens=cu), cu

    def step(self, m, x, y, step: int, elapsed_ms: float, grads: dict | None) -> None:
        """The kit's Trainer: set_schedule(step, elapsed_ms) and optimizer_step, after its own backward pass or with
        `grads` (kit names) in its place."""
        run = self.kit.Run(self.args, 0, 1, torch.device("cpu"), False, "none", b"", None)
        trainer = self.kit.Trainer(run, m, m, [], None)
        trainer.set_schedule(step, elapsed_ms)
        if grads is None:
            m(x, y, cu_seqlens=self.kit.doc_bounds(x, self.args.train_seq_len)).backward()
        else:
            for n, p in m.named_parameters():
                p.grad = grads[n].clone() if n in grads else None
        trainer.optimizer_step()


STEP_KINDS = ("step", "step_native", "step_e2e")


def compare(rec: RecordSide, kit: KitSide, looping: bool, seed: int, steps=STEP_KINDS) -> dict:
    x, y = packed_batch(int(rec.h.vocab_size), seed)
    r_model = rec.model(looping, seed)
    k_model = kit.model(r_model.state_dict(), looping)
    out = {}
    r_logits, r_loss = rec.forward(r_model, x, y)
    k_logits, k_loss, k_cu = kit.forward(k_model, x, y)
    if not torch.equal(rec.cu_seqlens(x).long(), k_cu.long()):
        raise RuntimeError(f"cu_seqlens differ: record {rec.cu_seqlens(x).tolist()} kit {k_cu.tolist()}")
    out["logits"] = (r_logits.double() - k_logits.double()).abs().max().item()
    out["loss"] = abs(r_loss.item() - k_loss.item())
    r_loss.backward()
    k_loss.backward()
    r_grads = record_tensors({n: p.grad for n, p in r_model.named_parameters()}, kit.args.num_layers)
    out["grad"] = max_diff(r_grads, {n: p.grad for n, p in k_model.named_parameters()}, kit.strict)
    # step: the record's step_fn vs the kit's optimizer_step given the record's gradients (the optimisers alone);
    # step_native: the same with the record's bf16 Muon left in; step_e2e: each side with its own gradients.
    for key, fp32, grads in (("step", True, r_grads), ("step_native", False, r_grads), ("step_e2e", True, None)):
        if key not in steps:
            continue
        r_m = rec.model(looping, seed)
        k_m = kit.model(r_m.state_dict(), looping)
        rec.step(r_m, x, y, STEP, ELAPSED_MS, fp32)
        kit.step(k_m, x, y, STEP, ELAPSED_MS, grads)
        out[key] = max_diff(record_tensors(dict(r_m.named_parameters()), kit.args.num_layers),
                            dict(k_m.named_parameters()), kit.strict)
    return out


def schedule_grid(rec: RecordSide, kit: KitSide, points: int = 6001) -> dict:
    """LR multiplier and loop switch over elapsed 0..1.05 x cap (one step per 100 ms), record vs kit."""
    lr_rec, loop_rec = rec.schedule()
    cap_ms = 1e3 * kit.args.max_wallclock_seconds
    grid = [(int(ms / 100), ms) for ms in (cap_ms * 1.05 * i / (points - 1) for i in range(points))]
    lr_diff = max(abs(lr_rec(s, ms) - kit.kit.lr_multiplier(kit.args, s, ms)) for s, ms in grid)
    first = [next((ms for s, ms in grid if f(s, ms)), None) for f in
             (loop_rec, lambda s, ms: kit.kit.looping_due(kit.args, s, ms))]
    switch = abs(first[0] - first[1]) if None not in first else (0.0 if first[0] == first[1] else float("inf"))
    return {"lr": lr_diff, "switch_ms": switch, "switch_at_ms": first[0]}


# Each frontier setting switched back on the kit's side alone: the figure it moves must leave its tolerance, or the
# comparison would not notice that setting.
SENSITIVITY = (("SKIP_GATES_ENABLED=0", "logits"), ("SMEAR_GATE_ENABLED=0", "logits"),
               ("SPARSE_ATTN_GATE_ENABLED=0", "logits"), ("SPARSE_ATTN_GATE_SCALE=1", "logits"),
               ("PARALLEL_START_LAYER=0", "logits"), ("PARALLEL_FINAL_LANE=attn", "logits"),
               ("VARLEN_ATTN=0 EVAL_SEQ_LEN=448", "logits"), ("XSA_LAST_N=10", "logits"),
               ("MUON_ROW_NORMALIZE=0", "step"), ("MUON_NS=classic", "step"), ("EMBED_WD=0.02", "step"),
               ("MIN_LR=0", "lr"), ("WARMDOWN_FRAC=0.75", "lr"), ("ENABLE_LOOPING_AT=0.5", "switch_ms"))


def sensitivity(rec: RecordSide, kit_path, env: dict, seed: int) -> list:
    """(change, figure, value, tolerance) for every SENSITIVITY row: the kit with that one change vs the record."""
    rows = []
    for change, key in SENSITIVITY:
        kit = KitSide(kit_path, {**env, **dict(kv.split("=") for kv in change.split())}, strict=False)
        got = schedule_grid(rec, kit) if key in ("lr", "switch_ms") else \
            compare(rec, kit, True, seed, steps=(key,))
        rows.append((change, key, got[key], TOLERANCE[key]))
    return rows


def report(rows: dict, grid: dict) -> dict:
    """Print the table; return the worst figure of each kind over both configurations."""
    keys = ("logits", "loss", "grad", *STEP_KINDS)
    print(common.table(["config", *keys], [[n, *(f"{r[k]:.3g}" for k in keys)] for n, r in rows.items()]))
    print(f"lr multiplier over the wallclock grid: max_abs_diff={grid['lr']:.3g}; looping switches on at "
          f"{grid['switch_at_ms']:.0f} ms (record), kit differs by {grid['switch_ms']:.3g} ms")
    return {**{k: max(r[k] for r in rows.values()) for k in keys}, "lr": grid["lr"], "switch_ms": grid["switch_ms"]}


def main(argv=None) -> int:
    ap = common.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", required=True, help="the 1.0611 record's train_gpt.py (a local copy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sensitivity", action="store_true",
                    help="also show that each frontier setting, changed on the kit's side alone, leaves tolerance")
    ap.add_argument("--record", action="store_true", help="append a row to bench/RESULTS.md")
    ap.add_argument("--kit", default=None, help=argparse.SUPPRESS)  # another kit file (development)
    ap.add_argument("--results", default=str(common.RESULTS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    env = {**SMALL, **KIT_ONLY}
    rec, kit = RecordSide(a.other, env), KitSide(a.kit, env)
    print(f"device: {common.device_name()}; record: {a.other}")
    rows = {name: compare(rec, kit, looping, a.seed) for name, looping in (("loops_on", True), ("loops_off", False))}
    worst = report(rows, schedule_grid(rec, kit))
    blind = []
    if a.sensitivity:
        sens = sensitivity(rec, a.kit, env, a.seed)
        print(common.table(["kit side changed", "figure", "value", "tolerance"],
                           [[c, k, f"{v:.3g}", f"{t:g}"] for c, k, v, t in sens]))
        blind = [c for c, _k, v, t in sens if v <= t]
    line = (f"equivalence logits_max_abs_diff={worst['logits']:.3g} loss_abs_diff={worst['loss']:.3g} "
            f"step_max_abs_diff={worst['step']:.3g}")
    if a.record:
        extra = " ".join(f"{k}_max_abs_diff={worst[k]:.3g}" for k in ("grad", "step_native", "step_e2e", "lr"))
        common.record(a.results, "bench_equiv", common.device_name(),
                      f"{line.removeprefix('equivalence ')} {extra} switch_diff_ms={worst['switch_ms']:.3g} "
                      f"(loops on and off{'; sensitivity: every change detected' if a.sensitivity and not blind else ''})")
    return common.verdict(line, worst, TOLERANCE, blind)


if __name__ == "__main__":
    sys.exit(main())
