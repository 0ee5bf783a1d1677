"""Quantisers side by side on the same float weights: bytes and roundtrip gap (bpb, the kit's exact scorer).

    python bench/bench_quant.py --train 150 --save /tmp/f.pt --env NUM_LAYERS=2 ...   # train a float model (CPU)
    python bench/bench_quant.py --float /tmp/f.pt --env NUM_LAYERS=2 ... [--other RECORD/train_gpt.py] [--plot P]
    python bench/bench_quant.py --pessimistic --preset presets/frontier.env           # random weights: does it fit?

--float scores the float model, then for each method (rtn = QUANT_METHOD=rtn; gptq; gptq+lqer; gptq at each
--sigmas multiplier of every clip) packs the weights with the kit's pack_artifact (Hessians from the training
shards, GPTQ_CALIBRATION_BATCHES batches, computed once), unpacks and scores the reloaded model on the first
--max-tokens val tokens. --other PATH runs a record's own gptq_mixed_quantize + dequantize_mixed on the same
weights and the same Hessians, compressed as its serialize() does (torch.save + its _compress, COMPRESSOR brotli
unless --other-compressor; its per-group lrzip path needs the lrzip binary); the record's script is loaded by path
with flash_attn_interface and triton stubbed and torch.compile as the identity (nothing else replaced).
--pessimistic packs a random model (every tensor N(0, std) with the trained-like std of its group) and prints
`artifact_estimate bytes:N model:M code:C` with --plan's prediction beside it.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
import types
from pathlib import Path

if not __package__:  # run as `python bench/bench_quant.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

from bench import common  # noqa: E402
from bench.common import BenchError  # noqa: E402

# std per group of --pessimistic's random weights (typical trained magnitudes, assumed, not measured): only the
# tensors stored as floats depend on it; the SD-clipped and clip-searched codes are the same at any std.
TRAINED_STD = {"tok_emb": 0.05, "attn": 0.035, "mlp": 0.03, "other": 0.5}


def load_record(path: Path):
    """The record's train_gpt.py as a module, loaded as bench/record_cpu.py imports it on a CPU (GPU-only imports
    stubbed, torch.compile the identity while it loads); the quantiser and serialiser run unchanged."""
    from bench import record_cpu
    mod = record_cpu.import_on_cpu(path)
    for need in ("gptq_mixed_quantize", "dequantize_mixed", "_compress", "_decompress"):
        if not hasattr(mod, need):
            raise BenchError(f"--other {path} has no {need}(): not a GPTQ record script")
    mod.log = lambda *a, **k: None
    return mod


def record_export(rec, state, hessians, hp, compressor: str):
    """(bytes, reloaded float state) of the record's own quantise + compress on `state` with `hessians`."""
    import torch
    h = types.SimpleNamespace(
        matrix_bits=hp.quant_bits, embed_bits=hp.quant_embed_bits, matrix_clip_sigmas=hp.matrix_clip_sigmas,
        attn_clip_sigmas=hp.attn_clip_sigmas, mlp_clip_sigmas=hp.mlp_clip_sigmas,
        embed_clip_sigmas=hp.embed_clip_sigmas, gated_attn_quant_gate=bool(hp.gated_attn_quant_gate),
        lqer_enabled=bool(hp.lqer_enabled), lqer_rank=hp.lqer_rank, lqer_top_k=hp.lqer_top_k,
        lqer_factor_bits=hp.lqer_factor_bits, lqer_asym_enabled=bool(hp.lqer_asym_enabled),
        lqer_asym_group=hp.lqer_asym_group, compressor=compressor)
    result, meta = rec.gptq_mixed_quantize(state, hessians, h)
    buf = io.BytesIO()
    torch.save({"w": result, "m": meta}, buf)
    blob = rec._compress(buf.getvalue(), compressor)
    back = torch.load(io.BytesIO(rec._decompress(blob, compressor)), map_location="cpu")
    return len(blob), {k: v.float() for k, v in rec.dequantize_mixed(back["w"], back["m"], state).items()}


def score(kit, hp, state, tokens, val_bytes) -> float:
    """bpb of `state` loaded into the configuration's model, with the kit's exact scorer."""
    model = kit.build_model(hp)
    model.load_state_dict(state)
    nll = kit.score_nll(model.eval(), tokens, hp.eval_seq_len, hp.eval_stride, hp.eval_batch_seqs)
    return nll.sum().item() / math.log(2) / val_bytes.sum().item()


def methods(a) -> list[tuple[str, dict]]:
    """(label, env overrides) of every export measured."""
    out = [("rtn", {"QUANT_METHOD": "rtn", "LQER_ENABLED": "0"}), ("gptq", {"QUANT_METHOD": "gptq", "LQER_ENABLED": "0"}),
           ("gptq+lqer", {"QUANT_METHOD": "gptq", "LQER_ENABLED": "1"})]
    for m in a.sigmas:
        over = {k: str(round(m * v, 3)) for k, v in a.base_sigmas.items()}
        out.append((f"gptq k x{m:g}", {"QUANT_METHOD": "gptq", "LQER_ENABLED": "0", **over}))
    return out


def train_float(kit, env: dict, steps: int, out: Path) -> None:
    """Train the configuration with the kit's own main() (CPU is fine) and save its float weights before export."""
    import os

    import torch
    pack = kit.pack_artifact

    def capture(state, *args, **kw):
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, out)
        print(f"saved the float weights to {out}", flush=True)
        return pack(state, *args, **kw)
    kit.pack_artifact = capture
    saved = dict(os.environ)
    os.environ.update({**env, "ITERATIONS": str(steps), "FLOAT_EVAL": "0", "VAL_LOSS_EVERY": "0"})
    try:
        kit.main()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        kit.pack_artifact = pack


def calibrate(kit, hp, model, data: Path):
    """The Hessians of every quantised tensor, from the training shards (as a run's export computes them)."""
    import torch
    names = kit.quantised_names(model.state_dict())
    loader = kit.TokenLoader(kit.shard_files(str(data), "train"), 0, 1, torch.device("cpu"), hp.vocab_size)
    return kit.collect_hessians(model, names, loader, hp, 1, None, torch.device("cpu"))[0]


def side_by_side(a, kit, env: dict, data: Path, tokens, val_bytes, rec=None) -> list[dict]:
    """One row per method: bytes of the model file, val_bpb of the reloaded model and its gap to the float one;
    with ``rec`` (load_record of --other) the record's own export too."""
    import torch
    hp = common.kit_args(kit, env)
    model = kit.build_model(hp)
    model.load_state_dict(torch.load(a.float, map_location="cpu", weights_only=True))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    roles = kit.param_roles(model)
    t0 = time.perf_counter()
    hessians = calibrate(kit, hp, model, data)
    print(f"calibration: {len(hessians)} Hessians from {hp.gptq_calibration_batches} training batches in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    bpb_float = score(kit, hp, state, tokens, val_bytes)
    rows = [{"method": "float", "bytes": None, "val_bpb": bpb_float, "gap": 0.0}]
    for label, over in methods(a):
        mhp = common.kit_args(kit, {**env, **over})
        t0 = time.perf_counter()
        blob = kit.pack_artifact(state, mhp, {}, roles, hessians)
        pack_s = time.perf_counter() - t0
        bpb = score(kit, hp, kit.unpack_artifact(blob)[0], tokens, val_bytes)
        rows.append({"method": label, "bytes": len(blob), "val_bpb": bpb, "gap": bpb - bpb_float, "pack_s": pack_s})
        print(f"{label}: {len(blob):,} bytes, gap {bpb - bpb_float:+.5f} bpb ({pack_s:.1f} s)", flush=True)
    if rec is not None:
        for lq in (0, 1):
            rhp = common.kit_args(kit, {**env, "LQER_ENABLED": str(lq)})
            nbytes, back = record_export(rec, state, hessians, rhp, a.other_compressor)
            bpb = score(kit, hp, back, tokens, val_bytes)
            label = f"record gptq{'+lqer' if lq else ''} ({a.other_compressor})"
            rows.append({"method": label, "bytes": nbytes, "val_bpb": bpb, "gap": bpb - bpb_float})
            print(f"{label}: {nbytes:,} bytes, gap {bpb - bpb_float:+.5f} bpb", flush=True)
    return rows


def pareto_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["bytes"] is None:
            continue
        kind = "record" if r["method"].startswith("record") else "sigmas" if " k x" in r["method"] else "kit"
        ax.scatter(r["bytes"] / 1e6, r["gap"], marker={"record": "s", "sigmas": ".", "kit": "o"}[kind],
                   color={"record": "tab:red", "sigmas": "tab:blue", "kit": "tab:green"}[kind])
        ax.annotate(r["method"], (r["bytes"] / 1e6, r["gap"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("model bytes (MB)")
    ax.set_ylabel("roundtrip gap (bpb, reloaded - float)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def pessimistic(kit, env: dict) -> tuple[int, int, int, int]:
    """(model bytes of a random model packed for real, code bytes, --plan's model estimate, params)."""
    import torch
    hp = common.kit_args(kit, env)
    model = kit.build_model(hp)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            group = next((g for g in ("tok_emb", "attn", "mlp") if g in name), "other")
            p.normal_(0.0, TRAINED_STD[group], generator=gen)
    state, roles = model.state_dict(), kit.param_roles(model)
    blob = kit.pack_artifact(state, hp, {"config": hp.as_dict()}, roles)
    code = len(kit.shipped_code(Path(kit.__file__).read_bytes(), hp.code_form))
    plan = int(sum(kit.plan_model_bytes(hp, state).values()))
    return len(blob), code, plan, sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_config_args(ap)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--float", default=None, metavar="PT", help="float weights (torch.save of a state_dict)")
    mode.add_argument("--train", type=int, default=None, metavar="STEPS", help="train the configuration, --save")
    mode.add_argument("--pessimistic", action="store_true", help="pack a random model with trained-like stds")
    ap.add_argument("--save", default=None, metavar="PT", help="with --train: where to save the float weights")
    ap.add_argument("--other", default=None, metavar="PATH", help="a record's train_gpt.py (GPTQ quantiser)")
    ap.add_argument("--other-compressor", default="brotli", choices=("brotli", "lzma"))
    ap.add_argument("--sigmas", type=float, nargs="*", default=[0.7, 0.85, 1.15, 1.3],
                    help="multipliers of every *_CLIP_SIGMAS for the gptq sweep (default 0.7 0.85 1.15 1.3)")
    ap.add_argument("--max-tokens", type=int, default=20_000, help="val tokens scored (default 20,000; 0: all)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="Pareto plot of bytes vs gap")
    ap.add_argument("--kit", default=str(common.KIT), help="the kit's train_gpt.py (default: this checkout's)")
    a = ap.parse_args(argv)
    common.check_args(a, writable=("json", "plot", "save"))
    import numpy as np
    import torch
    kit = common.import_kit(Path(a.kit))
    env = common.base_env(a, kit)
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    env.update({"DATA_PATH": str(data), "TOKENIZER_PATH": str(tok), "DEVICE": "cpu"})
    hp = common.kit_args(kit, env)
    a.base_sigmas = {k: getattr(hp, k.lower()) for k in
                     ("MATRIX_CLIP_SIGMAS", "ATTN_CLIP_SIGMAS", "MLP_CLIP_SIGMAS", "EMBED_CLIP_SIGMAS")}
    dev = common.device_name(torch.device("cpu"))
    if a.train is not None:
        if not a.save:
            raise BenchError("--train needs --save PATH")
        train_float(kit, env, a.train, Path(a.save))
        return 0
    if a.pessimistic:
        model_b, code_b, plan_b, params = pessimistic(kit, env)
        print(f"{params:,} parameters; --plan predicted {plan_b:,} model bytes ({plan_b / model_b - 1:+.2%} vs packed)")
        line = f"artifact_estimate bytes:{model_b + code_b} model:{model_b} code:{code_b}"
        if a.record:
            common.record(a.results, "quant --pessimistic", dev, f"{line}; plan {plan_b:,}; {params:,} params")
        print(line)
        return 0
    if not Path(a.float).is_file():
        raise BenchError(f"--float {a.float} does not exist")
    rec = load_record(Path(a.other).resolve()) if a.other else None  # a bad --other: one error line, before any work
    common.setup_device(kit, torch.device("cpu"))
    sp = common.load_tokenizer(kit, hp)
    val_np = common.load_val(kit, data, a.max_tokens)
    tokens = torch.from_numpy(val_np.astype(np.int64))
    val_bytes = torch.from_numpy(common.val_target_bytes(kit, hp, sp, val_np, data))
    rows = side_by_side(a, kit, env, data, tokens, val_bytes, rec)
    print()
    print(common.table(["method", "model bytes", "val_bpb", "gap (bpb)"],
                       [(r["method"], f"{r['bytes']:,}" if r["bytes"] else "-", f"{r['val_bpb']:.5f}",
                         f"{r['gap']:+.5f}") for r in rows]))
    if a.plot:
        pareto_plot(rows, Path(a.plot), f"{hp.num_layers}x{hp.model_dim}, vocab {hp.vocab_size}, "
                    f"{tokens.numel() - 1:,} val targets ({dev})")
    if a.json:
        common.write_json(a.json, {"benchmark": "quant", "date": common.now_utc(), "command": common.command_line(),
                                   "device": dev, "config": hp.as_dict(), "rows": rows})
    if a.record:
        common.record(a.results, "quant", dev, "; ".join(
            f"{r['method']} {r['bytes'] or 0:,} B gap {r['gap']:+.5f}" for r in rows[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
