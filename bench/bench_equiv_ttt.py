"""Equivalence of the kit's TTT_MODE=lora_phased with the 1.0611 record's phased LoRA TTT, on the CPU in fp32.

    python bench/bench_equiv_ttt.py --other PATH/TO/records/.../2026-04-27_..._1.0611/train_gpt.py [--record]

PATH is a local copy of the record's script (openai/parameter-golf; never committed here), loaded by
bench/record_cpu.py (only what cannot run on a CPU replaced). Both scripts read the same environment: bench_equiv's
SMALL model (11 layers of width 128, every frontier flag on: loops 3-5 three times, two lanes from layer 8, gates,
SmearGate) plus TTT, in the record's own variable names. The record's GPT is built and perturbed, its weights copied
into the kit's (bench_equiv.RecordSide / KitSide, looping on as at evaluation). Then:

1. per-document TTT: a val stream of documents (DOC_LENGTHS: one longer than TTT_EVAL_SEQ_LEN, short ones, two
   full batches) scored by the record's own eval_val_ttt_phased without phases, through a forward_ttt wrapper that
   keeps every per-token loss (mapped to stream positions with the record's own _build_ttt_global_batches and
   _compute_chunk_window), and by the kit's ttt_score_nll with the same settings. Same init: torch's generator is
   seeded with the kit's lora_generator(SEED, 0) seed before the record draws its adapters, in the same order
   (head, then Q, V, K, MLP, O of every block pass). Same order: both take the batches longest first.
   Figures: max abs NLL difference over every scored target (and per document), |val_loss difference|.
2. one phase: the record's train_val_ttt_global_sgd_distributed and the kit's global_sgd on the same documents laid
   end to end, from the same weights: max abs weight difference after (both pack a step's sequences into one row
   cut at BOS and every TTT_EVAL_SEQ_LEN tokens: the record's GLOBAL_TTT_RESPECT_DOC_BOUNDARIES=1, the kit's
   VARLEN_ATTN=1; the kit's global_sgd is given the documents' BOS -> BOS pairs as targets here, as the record
   trains on them; a run leaves them out).
Precision: fp32 (the figures are rounding that Adam's first steps amplify: --float64 runs both scripts in float64
but for the record's own float32 casts, and the differences shrink about 40-fold). `--sensitivity`: each TTT setting
changed on the kit's side alone must leave the tolerance. The last line is `equivalence_ttt nll_max_abs_diff=X
val_loss_abs_diff=Y phase_weights_max_abs_diff=Z`; exit status 1 when a figure is over its tolerance (TOLERANCE).
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_equiv_ttt.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import os
import sys
import types
import warnings

import torch

from bench import bench_equiv, common

TTT = {"TTT_ENABLED": "1", "PHASED_TTT_ENABLED": "1", "TTT_LORA_RANK": "8", "TTT_LORA_ALPHA": "144",
       "TTT_LORA_LR": "0.003", "TTT_CHUNK_SIZE": "16", "TTT_EVAL_SEQ_LEN": "64", "TTT_BATCH_SIZE": "3",
       "TTT_GRAD_STEPS": "1", "TTT_WEIGHT_DECAY": "0.5", "TTT_BETA1": "0", "TTT_BETA2": "0.99",
       "TTT_WARM_START_A": "1", "TTT_K_LORA": "1", "TTT_MLP_LORA": "1", "TTT_O_LORA": "1",
       "PHASED_TTT_PREFIX_DOCS": "0", "PHASED_TTT_NUM_PHASES": "1", "GLOBAL_TTT_LR": "0.003",
       "GLOBAL_TTT_MOMENTUM": "0.9", "GLOBAL_TTT_EPOCHS": "1", "GLOBAL_TTT_CHUNK_TOKENS": "256",
       "GLOBAL_TTT_BATCH_SEQS": "4", "GLOBAL_TTT_GRAD_CLIP": "1.0", "SEED": "1337"}
DOC_LENGTHS = (150, 40, 23, 17, 90, 64)  # tokens incl. the next BOS (the last: to the end); 2 batches of 3
TOLERANCE = {"nll": 1e-4, "val_loss": 1e-5, "phase": 1e-6}
# One TTT setting changed on the kit's side alone: the NLLs must leave their tolerance, or the comparison would not
# notice that setting (TTT_DOC_ORDER=stream: the last chunk's window of a document longer than TTT_EVAL_SEQ_LEN).
SENSITIVITY = ("TTT_LORA_ALPHA=72", "TTT_WARM_START_A=0", "TTT_K_LORA=0", "TTT_O_LORA=0", "TTT_MLP_LORA=0",
               "TTT_BETA2=0.999", "TTT_WEIGHT_DECAY=0", "TTT_CHUNK_SIZE=12", "TTT_DOC_ORDER=stream", "SEED=1")


def stream(vocab: int, seed: int) -> torch.Tensor:
    """Documents of DOC_LENGTHS laid end to end: each starts at a BOS, the next BOS is its last target."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(2, vocab, (n - 1 if i < len(DOC_LENGTHS) - 1 else n,), generator=g)
             for i, n in enumerate(DOC_LENGTHS)]
    for part in parts:
        part[0] = 1
    return torch.cat(parts)


def record_ttt(rec, model, tokens: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """The record's eval_val_ttt_phased (one process, no phases): per-target NLL in stream order, val_loss."""
    mod, h, calls = rec.mod, rec.h, []
    V = int(h.vocab_size)
    val = types.SimpleNamespace(val_tokens=tokens, caseops_enabled=False, val_bytes=None,
                                base_bytes_lut=torch.ones(V), has_leading_space_lut=torch.zeros(V, dtype=torch.bool),
                                is_boundary_token_lut=torch.zeros(V, dtype=torch.bool))

    def forward(x, y, lora):
        out = model.forward_ttt(x, y, lora=lora)
        calls.append(out.detach().clone())
        return out
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    h.run_id = f"bench_equiv_ttt_{os.getpid()}"
    val_loss, _ = mod.eval_val_ttt_phased(h, model, torch.device("cpu"), val, forward)
    nll, C, L, k = torch.full((tokens.numel() - 1,), float("nan"), dtype=torch.float64), h.ttt_chunk_size, \
        h.ttt_eval_seq_len, 0
    for _, entries in mod._build_ttt_global_batches(list(enumerate(mod._find_docs(tokens))), h):
        docs = [d for _, d in entries]
        n_chunks = [(n - 1 + C - 1) // C for _, n in docs]
        for ci in range(max(n_chunks)):
            loss, k = calls[k], k + 1
            for b, ((start, n), nc) in enumerate(zip(docs, n_chunks)):
                if ci < nc:
                    ws, _, off, cnt = mod._compute_chunk_window(ci, n - 1, nc, C, L)
                    nll[start + ws + off:start + ws + off + cnt] = loss[b, off:off + cnt].double()
    if k != len(calls):
        raise RuntimeError(f"{len(calls)} forward_ttt calls, {k} expected")
    return nll, val_loss


def phase(rec, kit, r_model, k_model, tokens: torch.Tensor) -> float:
    """One global-SGD phase on all documents laid end to end (the record's layout: each with its closing BOS)."""
    starts, lengths = kit.kit.split_docs(tokens)
    src = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), lengths.tolist())])
    for p in r_model.parameters():
        p.requires_grad_(True)
    rec.mod.train_val_ttt_global_sgd_distributed(rec.h, torch.device("cpu"), None, r_model, tokens[src])
    kit.kit.global_sgd(k_model, tokens, src, src, kit.args, 0, 1, kit.kit.TTTLedger())
    return bench_equiv.max_diff(bench_equiv.record_tensors(dict(r_model.named_parameters()), kit.args.num_layers),
                                dict(k_model.named_parameters()), kit.strict)


def main(argv=None) -> int:
    ap = common.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", required=True, help="the 1.0611 record's train_gpt.py (a local copy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sensitivity", action="store_true",
                    help="also show that each TTT setting, changed on the kit's side alone, leaves tolerance")
    ap.add_argument("--float64", action="store_true", help="both scripts in float64 (torch's default dtype), but for "
                    "the record's own casts to float32 (its cross-entropy): the fp32 figures are rounding")
    ap.add_argument("--record", action="store_true", help="append a row to bench/RESULTS.md")
    ap.add_argument("--kit", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(common.RESULTS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    torch.set_default_dtype(torch.float64 if a.float64 else torch.float32)
    env = {**bench_equiv.SMALL, **bench_equiv.KIT_ONLY, **TTT, "EVAL_SEQ_LEN": TTT["TTT_EVAL_SEQ_LEN"]}
    rec, kit = bench_equiv.RecordSide(a.other, env), bench_equiv.KitSide(a.kit, env)
    tokens = stream(int(rec.h.vocab_size), a.seed)
    r_model = rec.model(True, a.seed)
    k_model = kit.model(r_model.state_dict(), True)
    print(f"device: {common.device_name()}; record: {a.other}")
    r_nll, r_loss = record_ttt(rec, r_model, tokens, kit.kit.lora_generator(kit.args.seed, 0, torch.device("cpu"))
                               .initial_seed())
    k_nll = kit.kit.ttt_score_nll(k_model, tokens, kit.args)
    diff = (r_nll - k_nll.double()).abs()
    starts, lengths = kit.kit.split_docs(tokens)
    rows = [[i, n, f"{diff[s:s + n - 1].max().item():.3g}"] for i, (s, n) in
            enumerate(zip(starts.tolist(), lengths.tolist()))]
    print(common.table(["document", "tokens", "nll_max_abs_diff"], rows))
    worst = {"nll": diff.max().item(), "val_loss": abs(r_loss - k_nll.mean().item())}
    frozen = kit.kit.ttt_score_nll(kit.model(r_model.state_dict(), True), tokens,
                                   common.kit_args(kit.kit, {**env, "TTT_LORA_LR": "0"}))
    print(f"scale: TTT moves the NLLs by up to {(k_nll - frozen).abs().max().item():.3g} (TTT_LORA_LR=0 vs "
          f"{TTT['TTT_LORA_LR']})")
    blind = []
    for change in SENSITIVITY if a.sensitivity else ():
        other = bench_equiv.KitSide(a.kit, {**env, **dict([change.split("=")])})
        d = (r_nll - other.kit.ttt_score_nll(other.model(r_model.state_dict(), True), tokens, other.args).double())
        print(f"kit side with {change}: nll_max_abs_diff={d.abs().max().item():.3g}")
        blind += [change] if d.abs().max().item() <= TOLERANCE["nll"] else []
    r_model = rec.model(True, a.seed)
    worst["phase"] = phase(rec, kit, r_model, kit.model(r_model.state_dict(), True), tokens)
    line = (f"equivalence_ttt nll_max_abs_diff={worst['nll']:.3g} val_loss_abs_diff={worst['val_loss']:.3g} "
            f"phase_weights_max_abs_diff={worst['phase']:.3g}")
    if a.record:
        common.record(a.results, "bench_equiv_ttt", common.device_name(),
                      f"{line.removeprefix('equivalence_ttt ')} ({len(DOC_LENGTHS)} documents, "
                      f"{int(torch.isfinite(r_nll).sum())} targets, loops and lanes on, "
                      f"{'float64' if a.float64 else 'fp32'}"
                      f"{'; sensitivity: every change detected' if a.sensitivity and not blind else ''})")
    return common.verdict(line, worst, TOLERANCE, blind)


if __name__ == "__main__":
    sys.exit(main())
