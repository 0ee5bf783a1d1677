"""Sliding-window evaluation throughput: the kit's sliding_eval against the common public evaluator, same model.

    python bench/bench_eval.py                                   # random model, baseline shape, seq 1024 stride 64
    python bench/bench_eval.py --artifact artifacts/RUN.ptz --max-tokens 0 --rounds 2 --json out.json
    python bench/bench_eval.py --tiny                            # CPU smoke test (seq 64, stride 16)

Both evaluators score every target of the first --max-tokens val tokens exactly once with windows of --seq-len
tokens starting every --stride tokens (each window after the first scores its last `stride` targets), on the same
model object, in the same process, on the same device, alternating, with the tokens already on the device:

  kit        train_gpt.sliding_eval + reduce_score: batches of windows as one index tensor, only the scored
             positions go through the output head, one log_softmax + gather.
  reference  the pattern most public entries used (eval_val_sliding): per batch, windows copied row by row, the
             full forward gives logits for ALL positions, cross_entropy(reduction="none") over all of them, and a
             per-window Python loop keeps the last `stride` NLLs (first window: all) and adds up their bytes from
             the tokenizer tables (the same byte accounting as the kit). The tail, which no full window reaches, is
             scored by one last full-length window ending at the last token, as the kit does; so both score the same
             targets with the same contexts and their val_bpb agree (asserted to --tol on the CPU, in float32).

--compile (default on CUDA) compiles the model's forward (GPT.hidden) once, as train_gpt.py does for its final
evaluation; both evaluators then run that compiled forward (the kit with one padded batch shape, the reference
with its own shapes, its last batch being smaller); the warm-up is then one whole untimed pass of each, so every
shape is compiled before the timed rounds and the ratio measures the evaluators, not compilation.

Reported: seconds, tokens scored per second, peak memory (CUDA), val_bpb of each, the kit/reference speed ratio,
and the time the whole official val set (62,021,632 tokens) would take at that rate. A random model (the kit's init
plus small noise on every matrix, so that attention and hence the context matter) unless --artifact.
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_eval.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import ast
import math
import sys
import time
from pathlib import Path

from bench import common
from bench.common import BenchError


def reference_windows(n_tokens: int, seq_len: int, stride: int) -> tuple[list[int], list[int]]:
    """(window starts, targets kept per window) of the public pattern: windows of L = min(seq_len, N - 1) input
    tokens at 0, stride, 2*stride, ... while they fit; the first keeps all L targets, the others their last
    `stride`; a final window ending at the last token keeps what no full window reached."""
    total = n_tokens - 1  # targets 1..total
    if total < 1:
        return [], []
    L = min(seq_len, total)
    starts = list(range(0, total - L + 1, stride))
    keep = [L] + [stride] * (len(starts) - 1)
    reached = starts[-1] + L
    if reached < total:
        starts.append(total - L)
        keep.append(total - reached)
    return starts, keep


def reference_eval(model, tokens, luts, seq_len: int, stride: int, batch_seqs: int, autocast,
                   head: str = "match", style: str = "loop") -> tuple[float, float]:
    """The public-style sliding evaluator (see the module doc). Returns (val_loss, val_bpb).
    head: "match" runs the output head outside autocast like the kit (same precision); "autocast" runs the whole
    forward under autocast as public entries did (bf16 head on CUDA; identical on the CPU).
    style: "loop" (per-window Python loops, as published) or "vectorized" (masks; isolates the head's cost)."""
    import torch
    import torch.nn.functional as F
    base, space, boundary = luts
    device = tokens.device
    starts, keep = reference_windows(tokens.numel(), seq_len, stride)
    L = min(seq_len, tokens.numel() - 1)
    ar = torch.arange(L, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    byte_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(starts), batch_seqs):
            ws_b, keep_b = starts[i:i + batch_seqs], keep[i:i + batch_seqs]
            B = len(ws_b)
            if style == "loop":
                x = torch.empty((B, L), dtype=torch.int64, device=device)
                y = torch.empty((B, L), dtype=torch.int64, device=device)
                for j, ws in enumerate(ws_b):
                    chunk = tokens[ws:ws + L + 1]
                    x[j], y[j] = chunk[:-1], chunk[1:]
            else:
                idx = torch.tensor(ws_b, device=device)[:, None] + ar
                x, y = tokens[idx], tokens[idx + 1]
            if head == "autocast":
                with autocast:
                    logits = model(x)
            else:
                with autocast:
                    h = model.hidden(x)
                logits = model.logits(h)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                  reduction="none").view(B, L)
            if style == "loop":
                for j, k in enumerate(keep_b):
                    s = L - k
                    loss_sum += nll[j, s:].to(torch.float64).sum()
                    tgt, prev = y[j, s:], x[j, s:]
                    byte_sum += (base[tgt] + (space[tgt] & ~boundary[prev])).to(torch.float64).sum()
                    count += k
            else:
                m = ar[None, :] >= (L - torch.tensor(keep_b, device=device))[:, None]
                loss_sum += nll[m].to(torch.float64).sum()
                byte_sum += (base[y] + (space[y] & ~boundary[x]))[m].to(torch.float64).sum()
                count += int(sum(keep_b))
    loss = (loss_sum / count).item()
    return loss, loss / math.log(2) * count / byte_sum.item()


def other_script_note(path: Path) -> str:
    """Whether a script defines eval_val_sliding (as several public records do), without importing it."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (OSError, SyntaxError) as err:
        return f"--other-script {path}: could not be read/parsed ({err})"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "eval_val_sliding":
            params = ", ".join(a.arg for a in node.args.args + node.args.kwonlyargs)
            return (f"--other-script {path} defines eval_val_sliding({params}) at line {node.lineno}: the built-in "
                    "reference follows the same public pattern; its own function is not run (signatures differ "
                    "between records)")
    return f"--other-script {path} defines no eval_val_sliding function"


def parser() -> argparse.ArgumentParser:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_config_args(ap)
    ap.add_argument("--artifact", default=None, help="a kit artifact (.ptz); its configuration comes with it")
    ap.add_argument("--kit", default=str(common.KIT), help="the kit's train_gpt.py (default: this checkout's)")
    ap.add_argument("--seq-len", type=int, default=None, help="window length (default: the config's EVAL_SEQ_LEN, "
                                                              "1024 for the baseline)")
    ap.add_argument("--stride", type=int, default=None, help="stride (default: the config's EVAL_STRIDE, 64; "
                                                             "16 with --tiny)")
    ap.add_argument("--batch-seqs", type=int, default=None, help="windows per batch (default: EVAL_BATCH_SEQS, 32)")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="val tokens to score (default 2,000,000; 20,000 with --tiny; 0: all)")
    ap.add_argument("--rounds", type=int, default=3, help="kit/reference alternations (default 3)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--ref-head", choices=("match", "autocast"), default="match",
                    help="reference output head outside autocast like the kit (default; bpb comparable), or "
                         "inside it as public entries did (bf16 head on CUDA: faster, bpb differs ~1e-4)")
    ap.add_argument("--ref-style", choices=("loop", "vectorized"), default="loop",
                    help="reference per-window Python loops as published (default) or vectorized masks")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile the model's forward for both evaluators (auto: on CUDA only)")
    ap.add_argument("--no-perturb", action="store_true", help="random model: keep the kit's init exactly")
    ap.add_argument("--tol", type=float, default=1e-6, help="allowed |bpb(kit) - bpb(reference)| (default 1e-6)")
    ap.add_argument("--other-script", default=None, metavar="PATH",
                    help="note whether this script defines eval_val_sliding (not run)")
    return ap


def plan(a) -> dict:
    """Every argument, the configuration (the artifact's, or preset + --env), the data and the val tokens, checked
    before the model is built."""
    common.check_args(a, at_least={"seq_len": 1, "stride": 1, "batch_seqs": 1, "max_tokens": 0, "rounds": 1,
                                   "threads": 1, "tol": 0}, writable=("json",))
    if a.other_script and not Path(a.other_script).is_file():
        raise BenchError(f"--other-script {a.other_script}: no such file")
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    common.check_settings(kit, common.parse_overrides(a.env), "--env")
    state, env = common.artifact_env(kit, a.artifact, a.env) if a.artifact else (None, common.base_env(a, kit))
    hp0 = common.kit_args(kit, env)
    seq_len = a.seq_len or hp0.eval_seq_len
    stride = a.stride or (16 if a.tiny else hp0.eval_stride)
    batch_seqs = a.batch_seqs or hp0.eval_batch_seqs
    if not 0 < stride <= seq_len:
        raise BenchError(f"--stride {stride} must be in 1..--seq-len {seq_len}")
    max_tokens = a.max_tokens if a.max_tokens is not None else (20_000 if a.tiny else 2_000_000)
    hp = common.kit_args(kit, {**env, "EVAL_SEQ_LEN": str(seq_len), "EVAL_STRIDE": str(stride),
                               "EVAL_BATCH_SEQS": str(batch_seqs)})
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    hp.data_path, hp.tokenizer_path = str(data), str(tok)
    sp = common.load_tokenizer(kit, hp)
    val_np = common.load_val(kit, data, max_tokens, hp.vocab_size)
    return {"kit": kit, "kit_path": kit_path, "state": state, "hp": hp, "seq_len": seq_len, "stride": stride,
            "batch_seqs": batch_seqs, "max_tokens": max_tokens, "data": data, "sp": sp, "val_np": val_np}


def build(a, p: dict):
    """(model on the device, device, attention kernel name, model description)."""
    import torch
    kit, hp = p["kit"], p["hp"]
    device = common.pick_device(a.device)
    attention = common.setup_device(kit, device)
    model = common.model_from(kit, hp, p["state"], a.artifact, perturb_weights=not a.no_perturb, device=device)
    source = (f"artifact {a.artifact}" if p["state"] is not None else
              f"random init (seed {hp.seed}{'' if a.no_perturb else ', +N(0, 1/fan_in) on matrices'})")
    model = model.to(device).eval()
    if a.compile == "on" or (a.compile == "auto" and device.type == "cuda"):
        # as train_gpt.py's final evaluation: the forward up to the head, fixed shapes
        model.hidden = torch.compile(model.hidden, dynamic=False, mode=hp.compile_mode)
        p["compiled"] = hp.compile_mode
    return model, device, attention, source


def measure(a, evaluators, tokens, val_bytes, device, n_targets: int) -> list[dict]:
    import torch
    runs = []
    for r in range(1, a.rounds + 1):
        for name, fn in evaluators:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            common.sync(device)
            t0 = time.perf_counter()
            loss, bpb = fn(tokens, val_bytes)
            common.sync(device)
            dt = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            runs.append({"evaluator": name, "round": r, "seconds": dt, "tokens_per_s": n_targets / dt,
                         "val_loss": loss, "val_bpb": bpb, "peak_mib": peak})
            print(f"[round {r}/{a.rounds}] {name}: {dt:.3f} s, {n_targets / dt:,.0f} tokens/s, val_bpb {bpb:.8f}",
                  flush=True)
    return runs


def summarize(a, runs: list, evaluators, autocast_on: bool) -> tuple[dict, int]:
    """Print the table and the comparison; returns (summary, exit status: 3 when the bpb disagree in float32)."""
    print()
    print(common.table(["evaluator", "round", "seconds", "tokens/s", "peak MiB", "val_bpb"],
                       [(x["evaluator"], x["round"], f"{x['seconds']:.3f}", f"{x['tokens_per_s']:,.0f}",
                         None if x["peak_mib"] is None else f"{x['peak_mib']:,.0f}", f"{x['val_bpb']:.8f}")
                        for x in runs]))
    summ = {}
    for name, _ in evaluators:
        mine = [x for x in runs if x["evaluator"] == name]
        tps = common.median([x["tokens_per_s"] for x in mine])
        summ[name] = {"tokens_per_s": tps, "seconds": common.median([x["seconds"] for x in mine]),
                      "val_bpb": mine[-1]["val_bpb"], "val_loss": mine[-1]["val_loss"],
                      "full_val_seconds": common.OFFICIAL_VAL_TOKENS / tps}
    ratios = [rf["seconds"] / k["seconds"] for k, rf in zip(
        [x for x in runs if x["evaluator"] == "kit"], [x for x in runs if x["evaluator"] == "reference"])]
    ratio = common.median(ratios)
    diff = summ["kit"]["val_bpb"] - summ["reference"]["val_bpb"]
    agree = abs(diff) <= a.tol
    print()
    for name, s in summ.items():
        print(f"median {name}: {s['tokens_per_s']:,.0f} tokens/s; the official val set "
              f"({common.OFFICIAL_VAL_TOKENS:,} tokens) would take {s['full_val_seconds']:,.1f} s on this device")
    print(f"speed ratio kit/reference: {ratio:.3f}x (median of {', '.join(f'{x:.3f}' for x in ratios)})")
    print(f"val_bpb kit {summ['kit']['val_bpb']:.10f}  reference {summ['reference']['val_bpb']:.10f}  "
          f"difference {diff:+.3e} ({'agree' if agree else 'DISAGREE'} at tol {a.tol:g})")
    status = 0
    if not agree and not autocast_on:
        print("error: the two evaluators disagree on val_bpb in float32: one of them scores different "
              "targets or contexts", file=sys.stderr)
        status = 3
    elif not agree:
        print("warning: under bf16 autocast the two evaluators' arithmetic differs slightly (GEMM shapes"
              + (", bf16 head" if a.ref_head == "autocast" else "") + "); the float32 CPU check is the exact one")
    return {**summ, "ratio_kit_over_reference": ratio, "ratios": ratios, "bpb_difference": diff, "agree": agree,
            "tol": a.tol}, status


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    import numpy as np
    import torch
    p = plan(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    kit, hp, val_np, seq_len, stride = p["kit"], p["hp"], p["val_np"], p["seq_len"], p["stride"]
    model, device, attention, source = build(a, p)
    tables = kit.byte_tables(p["sp"])
    tokens = torch.from_numpy(val_np.astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(common.val_target_bytes(kit, hp, p["sp"], val_np, p["data"])).to(device)
    luts = tuple(torch.from_numpy(t).to(device) for t in tables[:3])
    n_targets = tokens.numel() - 1
    dev_name = common.device_name(device, threads=a.threads if device.type == "cpu" else None)
    autocast_on, compiled = device.type == "cuda", p.get("compiled")
    evaluators = [("kit", lambda t, vb: kit.reduce_score(*kit.sliding_eval(model, t, hp, 0, 1, seq_len, stride), vb)),
                  ("reference", lambda t, vb: reference_eval(model, t, luts, seq_len, stride, p["batch_seqs"],
                                                             kit.autocast(device), a.ref_head, a.ref_style))]
    print(f"device: {dev_name}  attention: {attention}  autocast bf16: {'on' if autocast_on else 'off (float32)'}  "
          f"compile: {compiled or 'off'}")
    print(f"model: {source}; {sum(x.numel() for x in model.parameters()):,} params, {hp.num_layers} layers x "
          f"{hp.model_dim}")
    print(f"data: {p['data']}  ({n_targets:,} targets scored{' = all val' if not p['max_tokens'] else ''})")
    print(f"windows: seq_len {seq_len}, stride {stride}, {p['batch_seqs']} per batch, "
          f"{len(kit.windows(tokens.numel(), seq_len, stride)):,} windows; reference head {a.ref_head}, "
          f"style {a.ref_style}")
    other_note = other_script_note(Path(a.other_script)) if a.other_script else None
    if other_note:
        print(other_note)
    # first call: kernels, allocator, autotuning; compiled: a whole untimed pass, so that every shape is compiled
    warm = tokens.numel() if compiled else min(tokens.numel(), seq_len + stride * p["batch_seqs"] + 1)
    for _, fn in evaluators:
        fn(tokens[:warm], val_bytes[:warm - 1])
    common.sync(device)
    runs = measure(a, evaluators, tokens, val_bytes, device, n_targets)
    summary, status = summarize(a, runs, evaluators, autocast_on)
    if a.json:
        common.write_json(a.json, {
            "benchmark": "eval", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "attention": attention, "autocast": autocast_on, "compile": compiled, "kit": str(p["kit_path"]),
            "kit_sha256": common.file_sha(p["kit_path"]), "model": source, "config": hp.as_dict(),
            "seq_len": seq_len, "stride": stride, "batch_seqs": p["batch_seqs"], "targets": n_targets,
            "ref_head": a.ref_head, "ref_style": a.ref_style, "other_script_note": other_note, "runs": runs,
            "summary": summary})
    if a.record:
        figures = (f"kit {summary['kit']['tokens_per_s']:,.0f} tok/s, reference "
                   f"{summary['reference']['tokens_per_s']:,.0f} tok/s, kit/reference "
                   f"{summary['ratio_kit_over_reference']:.3f}x; bpb diff {summary['bpb_difference']:+.1e}; seq "
                   f"{seq_len} stride {stride}, {n_targets:,} targets, {a.rounds} rounds; compile {compiled or 'off'}; "
                   f"{source}")
        common.record(a.results, "eval", dev_name, figures, p["kit_path"])
    return status


if __name__ == "__main__":
    sys.exit(main())
