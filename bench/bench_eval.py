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

import argparse
import ast
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BenchError  # noqa: E402


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = ap.parse_args(argv)

    import numpy as np
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    names = {f[0] for f in kit.FLAGS}
    state = None
    if a.artifact:
        art = Path(a.artifact)
        if not art.is_file():
            raise BenchError(f"--artifact {a.artifact} does not exist")
        try:
            state, meta = kit.unpack_artifact(art.read_bytes(), str(art))
        except kit.ConfigError as err:
            raise BenchError(str(err)) from None
        cfg = meta.get("config", {})
        env = {k: common.fmt(v) for k, v in cfg.items() if k in names and k not in ("RUN_ID", "EVAL_ONLY")}
        env.update(common.parse_overrides(a.env))
    else:
        env = common.base_env(a, kit)
    hp0 = common.kit_args(kit, env)
    seq_len = a.seq_len or hp0.eval_seq_len
    stride = a.stride or (16 if a.tiny else hp0.eval_stride)
    batch_seqs = a.batch_seqs or hp0.eval_batch_seqs
    if not 0 < stride <= seq_len:
        raise BenchError(f"--stride {stride} must be in 1..--seq-len {seq_len}")
    max_tokens = a.max_tokens if a.max_tokens is not None else (20_000 if a.tiny else 2_000_000)
    if a.rounds < 1:
        raise BenchError("--rounds must be >= 1")
    hp = common.kit_args(kit, {**env, "EVAL_SEQ_LEN": str(seq_len), "EVAL_STRIDE": str(stride),
                               "EVAL_BATCH_SEQS": str(batch_seqs)})
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    hp.data_path, hp.tokenizer_path = str(data), str(tok)

    device = common.pick_device(a.device)
    attention = common.setup_device(kit, device)
    model = kit.build_model(hp)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise BenchError(f"--artifact {a.artifact} does not fit the model built from its config: "
                             f"{str(err).splitlines()[0]}") from None
        source = f"artifact {a.artifact}"
    else:
        if not a.no_perturb:
            common.perturb(model, hp.seed)
        source = f"random init (seed {hp.seed}{'' if a.no_perturb else ', +N(0, 1/fan_in) on matrices'})"
    model = model.to(device).eval()
    compiled = a.compile == "on" or (a.compile == "auto" and device.type == "cuda")
    if compiled:  # as train_gpt.py's final evaluation: the forward up to the head, fixed shapes
        model.hidden = torch.compile(model.hidden, dynamic=False, mode=hp.compile_mode)

    try:
        sp = kit.load_tokenizer(hp)
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None
    val_np = common.load_val(kit, data, max_tokens)
    if int(val_np.max()) >= hp.vocab_size:
        raise BenchError(f"val tokens reach id {int(val_np.max())} >= VOCAB_SIZE={hp.vocab_size}")
    tables = kit.byte_tables(sp)
    tokens = torch.from_numpy(val_np.astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(kit.target_bytes(val_np, tables)).to(device)
    luts = (torch.from_numpy(tables[0]).to(device), torch.from_numpy(tables[1]).to(device),
            torch.from_numpy(tables[2]).to(device))
    n_targets = tokens.numel() - 1
    dev_name = common.device_name(device, threads=a.threads if device.type == "cpu" else None)
    autocast_on = device.type == "cuda"

    def kit_eval(t, vb):
        pos, nll = kit.sliding_eval(model, t, hp, 0, 1, kit.windows(t.numel(), seq_len, stride))
        return kit.reduce_score(pos, nll, vb)

    def ref_eval(t, vb):
        return reference_eval(model, t, luts, seq_len, stride, batch_seqs, kit.autocast(device), a.ref_head,
                              a.ref_style)
    evaluators = [("kit", kit_eval), ("reference", ref_eval)]

    print(f"device: {dev_name}  attention: {attention}  autocast bf16: {'on' if autocast_on else 'off (float32)'}  "
          f"compile: {hp.compile_mode if compiled else 'off'}")
    print(f"model: {source}; {sum(p.numel() for p in model.parameters()):,} params, {hp.num_layers} layers x "
          f"{hp.model_dim}")
    print(f"data: {data}  ({n_targets:,} targets scored{' = all val' if not max_tokens else ''})")
    print(f"windows: seq_len {seq_len}, stride {stride}, {batch_seqs} per batch, "
          f"{len(kit.windows(tokens.numel(), seq_len, stride)):,} windows; reference head {a.ref_head}, "
          f"style {a.ref_style}")
    other_note = other_script_note(Path(a.other_script)) if a.other_script else None
    if other_note:
        print(other_note)

    warm = min(tokens.numel(), seq_len + stride * batch_seqs + 1)  # first call: kernels, allocator, autotuning
    if compiled:  # a whole untimed pass, so that every batch shape (the reference's last one too) is compiled
        warm = tokens.numel()
    for _, fn in evaluators:
        fn(tokens[:warm], val_bytes[:warm - 1])
    common.sync(device)

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

    print()
    print(common.table(["evaluator", "round", "seconds", "tokens/s", "peak MiB", "val_bpb"],
                       [(x["evaluator"], x["round"], f"{x['seconds']:.3f}", f"{x['tokens_per_s']:,.0f}",
                         None if x["peak_mib"] is None else f"{x['peak_mib']:,.0f}", f"{x['val_bpb']:.8f}")
                        for x in runs]))
    summ = {}
    for name, _ in evaluators:
        mine = [x for x in runs if x["evaluator"] == name]
        summ[name] = {"tokens_per_s": common.median([x["tokens_per_s"] for x in mine]),
                      "seconds": common.median([x["seconds"] for x in mine]), "val_bpb": mine[-1]["val_bpb"],
                      "val_loss": mine[-1]["val_loss"],
                      "full_val_seconds": common.OFFICIAL_VAL_TOKENS / common.median(
                          [x["tokens_per_s"] for x in mine])}
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
    if not agree:
        if not autocast_on:
            print("error: the two evaluators disagree on val_bpb in float32: one of them scores different "
                  "targets or contexts", file=sys.stderr)
            status = 3
        else:
            print("warning: under bf16 autocast the two evaluators' arithmetic differs slightly (GEMM shapes"
                  + (", bf16 head" if a.ref_head == "autocast" else "") + "); the float32 CPU check is the exact one")
    summary = {**summ, "ratio_kit_over_reference": ratio, "ratios": ratios, "bpb_difference": diff,
               "agree": agree, "tol": a.tol}
    if a.json:
        common.write_json(a.json, {
            "benchmark": "eval", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "attention": attention, "autocast": autocast_on, "compile": hp.compile_mode if compiled else None,
            "kit": str(kit_path),
            "kit_sha256": common.file_sha(kit_path), "model": source, "config": hp.as_dict(), "seq_len": seq_len,
            "stride": stride, "batch_seqs": batch_seqs, "targets": n_targets, "ref_head": a.ref_head,
            "ref_style": a.ref_style, "other_script_note": other_note, "runs": runs, "summary": summary})
    if a.record:
        figures = (f"kit {summ['kit']['tokens_per_s']:,.0f} tok/s, reference {summ['reference']['tokens_per_s']:,.0f}"
                   f" tok/s, kit/reference {ratio:.3f}x; bpb diff {diff:+.1e}; seq {seq_len} stride {stride}, "
                   f"{n_targets:,} targets, {a.rounds} rounds; compile {hp.compile_mode if compiled else 'off'}; "
                   f"{source}")
        common.record(a.results, "eval", dev_name, figures, kit_path)
    return status


if __name__ == "__main__":
    sys.exit(main())
