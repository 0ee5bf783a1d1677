"""TTT_MODE=lora_phased (per-document LoRA TTT with global-SGD phases, the 1.0611 record's scored evaluation) and
EVAL_MODE=doc: the document split, batching and phase plan, a ledger of every scored and trained target, causality
(TTT_DOC_ORDER=stream) and its absence in the record's length order, the auditor on the kit and on a deliberately
broken copy (train before score), and the settings. End-to-end runs (two processes, PPMC) are in
test_eval_methods.py. Tiny float64 models on a few hundred tokens: each test takes seconds."""
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compliance.audit import audit
from compliance.probe import run_probes
from conftest import ROOT, TINY_ENV, random_weights, strs

FRONTIER = dict(NUM_LAYERS=5, NUM_LOOPS=1, LOOP_START=1, LOOP_END=2, PARALLEL_START_LAYER=3, SKIP_GATES=1,
                VARLEN_ATTN=1, SMEAR_GATE=2, GATED_ATTENTION=2, GATE_WINDOW=8)  # loops, lanes, varlen phases
LORA = dict(VOCAB_SIZE=512, EVAL_SEQ_LEN=32, EVAL_STRIDE=8, TTT=1, TTT_MODE="lora_phased", TTT_CHUNK_SIZE=8,
            TTT_BATCH_SIZE=3, TTT_LORA_RANK=4, TTT_LORA_LR=0.01, PHASED_TTT_PREFIX_DOCS=5, PHASED_TTT_NUM_PHASES=2,
            GLOBAL_TTT_CHUNK_TOKENS=64, GLOBAL_TTT_BATCH_SEQS=2, GLOBAL_TTT_LR=0.01)


pytestmark = pytest.mark.usefixtures("one_thread")


def lora_args(tg, **over):
    env = {**TINY_ENV, **strs({**LORA, **over})}
    args = tg.Hyperparameters.from_env(env)
    tg.check_config(args, 1)
    return args


def stream(n=400, docs=14, seed=0, vocab=512):
    """Random tokens with BOS (1) at `docs` random places and at 0: documents of very different lengths."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(2, vocab, (n,), generator=g)
    t[torch.randint(1, n, (docs,), generator=g)] = 1
    t[0] = 1
    return t


def model_of(tg, args, seed=0):
    """A float64 model with every parameter random (zero-initialised projections would hide context use), looping as
    at evaluation."""
    model = random_weights(tg.build_model(args).double(), 0.05, seed)
    model.looping = bool(args.num_loops)
    return model.eval()


def targets_of(tg, tokens):
    """{target position: document index} from split_docs."""
    starts, lengths = tg.split_docs(tokens)
    return {p: d for d, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())) for p in range(s + 1, s + n)}


# ---------------------------------------------------------------- documents, batches, phases

@pytest.mark.parametrize("case", ["bos first", "no bos first", "bos last", "bos bos", "no bos"])
def test_split_docs_covers_every_target_once(tg, case):
    t = stream(120, 9, seed=1)
    if case == "no bos first":
        t[0] = 7
    elif case == "bos last":
        t[-1] = 1
    elif case == "bos bos":
        t[50:53] = 1
    elif case == "no bos":
        t[t == 1] = 5
    starts, lengths = tg.split_docs(t)
    cover = Counter(p for s, n in zip(starts.tolist(), lengths.tolist()) for p in range(s + 1, s + n))
    assert cover == Counter(range(1, 120))  # every target once
    assert (lengths >= 2).all() and starts[0] == 0
    assert all(t[s] == 1 for s in starts[1:].tolist())  # a document starts at a BOS ...
    assert all(t[s + n - 1] == 1 for s, n in zip(starts[:-1].tolist(), lengths[:-1].tolist()))  # ... and ends at one


def test_doc_batches_record_order_and_stream_order(tg):
    lengths = torch.tensor([5, 9, 2, 9, 30, 4, 7, 12, 3, 9])
    batches = tg.doc_batches(lengths, lora_args(tg))  # TTT_BATCH_SIZE=3
    by_length = torch.sort(lengths, stable=True).indices.split(3)  # 2,8,5 | 0,6,1 | 3,9,7 | 4
    assert [b for b, _ in batches] == [3, 2, 1, 0]  # longest first
    for b, docs in batches:
        assert docs.tolist() == by_length[b].tolist()
    stream_order = tg.doc_batches(lengths, lora_args(tg, TTT_DOC_ORDER="stream"))
    assert [d.tolist() for _, d in stream_order] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_phase_plan(tg):
    """A phase follows the batch at which the scored documents reach each boundary, at most one per batch (the
    record's rule with one process: the boundary 4 is reached by the same batch as 2, its phase waits a batch); the
    last segment has none; PHASED_TTT_PREFIX_DOCS=0: no phase; a prefix beyond the documents is cut to them."""
    batches = [(b, torch.arange(n)) for b, n in enumerate([1, 3, 3, 3, 3])]  # 13 documents, in queue order
    assert tg.phase_plan(batches, lora_args(tg, PHASED_TTT_PREFIX_DOCS=6, PHASED_TTT_NUM_PHASES=3)) == \
        [(2, 2), (3, 4), (4, 6), (5, 0)]
    assert tg.phase_plan(batches, lora_args(tg, PHASED_TTT_PREFIX_DOCS=100, PHASED_TTT_NUM_PHASES=1)) == \
        [(5, 13), (5, 0)]
    assert tg.phase_plan(batches, lora_args(tg, PHASED_TTT_PREFIX_DOCS=0)) == [(5, 0)]


def test_adapters_reach_every_block_pass_through_loops_and_lanes(tg):
    """With depth recurrence and two residual lanes, one forward pass calls every pass's adapters once (a looped
    block has its own per pass, in both lanes' blocks): each slot of Q, K, V, O and the MLP, and the head, gets a
    gradient of its own."""
    args = lora_args(tg, NUM_LAYERS=5, NUM_LOOPS=1, LOOP_START=1, LOOP_END=2, PARALLEL_START_LAYER=3, SKIP_GATES=1)
    model = model_of(tg, args).float()
    ad, g = tg.Adapters(model, args), torch.Generator().manual_seed(0)
    ad.fresh(2, g)
    with torch.no_grad():
        for _, B in ad.cur.values():
            B.normal_(generator=g)
    with ad.hooked(model):
        ad.begin()
        h = model.hidden(torch.randint(0, 512, (2, 12), generator=g))
        model.logits(h, ad("head", 0, h)).square().sum().backward()
    assert ad.at == {"attn": 6, "mlp": 6}  # 7 block passes: 0, 1, 2, 1, 2, 3, 4
    for kind, (A, B) in ad.cur.items():
        assert A.shape[0] == (1 if kind == "head" else 7)
        assert (B.grad.flatten(1).abs().sum(1) > 0).all(), kind  # every pass's adapter moved the output


# ---------------------------------------------------------------- scoring: documents alone, score first

def test_doc_windows_score_each_document_alone(tg):
    """EVAL_MODE=doc scores each document as if it were the whole stream (its own score_nll, from its BOS); with
    TTT_LORA_LR=0 and no phase, lora_phased gives the same scores (chunks of 8 = stride 8)."""
    args = lora_args(tg, EVAL_MODE="doc", TTT_LORA_LR=0, PHASED_TTT_PREFIX_DOCS=0)
    tokens, model = stream(seed=2), model_of(tg, args)
    pos, nll = tg.sliding_eval(model, tokens, args, 0, 1)
    doc = torch.empty(tokens.numel() - 1, dtype=torch.float64).index_copy_(0, pos - 1, nll)
    starts, lengths = tg.split_docs(tokens)
    alone = torch.cat([tg.score_nll(model, tokens[s:s + n], 32, 8) for s, n in zip(starts.tolist(), lengths.tolist())])
    torch.testing.assert_close(doc, alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(tg.ttt_score_nll(model, tokens, args), doc, rtol=0, atol=1e-12)
    stream_nll = tg.score_nll(model, tokens, 32, 8)
    assert (stream_nll - doc).abs().max() > 1e-3  # the stream windows see across documents; these do not


def test_first_chunks_scored_by_the_artifact_later_chunks_adapted(tg):
    """Without phases every batch starts from B = 0: each document's first chunk is scored by the model as loaded
    (the document-window score), its later chunks by adapters trained on its earlier chunks."""
    args = lora_args(tg, EVAL_MODE="doc", PHASED_TTT_PREFIX_DOCS=0, TTT_LORA_LR=0.05)
    tokens = stream(seed=4)
    pos, nll = tg.sliding_eval(model_of(tg, args), tokens, args, 0, 1)
    plain = torch.empty(tokens.numel() - 1, dtype=torch.float64).index_copy_(0, pos - 1, nll)
    adapted = tg.ttt_score_nll(model_of(tg, args), tokens, args)
    starts, lengths = tg.split_docs(tokens)
    first = torch.cat([torch.arange(s + 1, s + 1 + min(8, n - 1)) for s, n in zip(starts.tolist(), lengths.tolist())])
    later = torch.ones(tokens.numel() - 1, dtype=torch.bool)
    later[first - 1] = False
    torch.testing.assert_close(adapted[first - 1], plain[first - 1], rtol=0, atol=1e-12)
    assert (adapted[later] - plain[later]).abs().max() > 1e-3


class Recorder:
    """Every scored / trained call of the ledger and every optimiser step (its class), in order."""

    def __init__(self, tg):
        self.log = []
        log = self.log

        class Ledger(tg.TTTLedger):
            def scored(self, positions):
                log.append(("scored", positions.flatten().tolist()))

            def trained(self, positions):
                log.append(("trained", positions.flatten().tolist()))
        self.ledger = Ledger()

    def __enter__(self):
        self.hook = register_optimizer_step_pre_hook(lambda opt, *a: self.log.append(("step", type(opt).__name__)))
        return self

    def __exit__(self, *exc):
        self.hook.remove()


@pytest.mark.parametrize("model", ["plain", "frontier"])
def test_lora_ledger_score_first(tg, model):
    """Every target 1..N-1 is scored exactly once; no step trains on a target not scored before it; each LoRA step
    (AdamW) trains on one chunk of the documents with a later chunk, every chunk but a document's last exactly
    TTT_GRAD_STEPS times; each phase step (SGD) only on documents whose every target is already scored."""
    args = lora_args(tg, TTT_GRAD_STEPS=2, **(FRONTIER if model == "frontier" else {}))
    tokens = stream(seed=5)
    doc_of = targets_of(tg, tokens)
    starts, lengths = tg.split_docs(tokens)
    with Recorder(tg) as rec:
        nll = tg.ttt_score_nll(model_of(tg, args), tokens, args, rec.ledger)
    assert nll.shape == (tokens.numel() - 1,) and torch.isfinite(nll).all()
    scored, pending, lora, steps = set(), [], Counter(), Counter()
    for kind, x in rec.log:
        if kind == "scored":
            assert not scored & set(x), "a target scored twice"
            scored |= set(x)
        elif kind == "trained":
            assert set(x) <= scored, f"trained before scored: {set(x) - scored}"
            pending += x
        else:
            assert pending, "an optimiser step without targets"
            steps[x] += 1
            if x == "AdamW":
                lora.update(pending)
            else:
                touched = {doc_of[p] for p in pending}
                assert all(set(range(s + 1, s + n)) <= scored for d, (s, n) in
                           enumerate(zip(starts.tolist(), lengths.tolist())) if d in touched)
            pending = []
    assert not pending and scored == set(range(1, tokens.numel()))
    want = Counter({p: 2 for s, n in zip(starts.tolist(), lengths.tolist())
                    for k in range((n - 2) // 8) for p in range(s + 1 + 8 * k, s + 9 + 8 * k)})
    assert lora == want
    assert steps["AdamW"] > 0 and steps["SGD"] > 0  # both kinds ran (two phases)


@pytest.mark.parametrize("order", ["stream", "length", "stream frontier"])
def test_stream_order_is_causal_the_records_length_order_is_not(tg, order):
    """Future-suffix invariance with warm-started A and two phases: in stream order no score before a cut moves
    when the tokens after it change; in the record's order (longest documents first, phases on them) scores of
    earlier documents depend on later ones."""
    args = lora_args(tg, TTT_DOC_ORDER=order.split()[0], **(FRONTIER if "frontier" in order else {}))
    tokens = stream(seed=6)
    ref = tg.ttt_score_nll(model_of(tg, args), tokens, args)
    worst = 0.0
    for c in (150, 260):
        t = tokens.clone()
        t[c:] = stream(tokens.numel() - c, 4, seed=c)
        worst = max(worst, float((tg.ttt_score_nll(model_of(tg, args), t, args)[:c - 1] - ref[:c - 1]).abs().max()))
    assert worst <= 1e-9 if order.startswith("stream") else worst > 1e-4


def test_a_rank_that_claims_no_batch_returns_nothing(tg, monkeypatch):
    """More ranks than batches: a rank whose every claim comes too late scores nothing and returns empty tensors
    (its totals are zero in the all-reduce)."""
    monkeypatch.setattr(tg, "batch_queue", lambda key, start: lambda: 1 << 40)
    args = lora_args(tg)
    pos, nll = tg.ttt_eval(model_of(tg, args), stream(seed=8), args, 1, 2)
    assert pos.shape == nll.shape == (0,) and pos.dtype == torch.long and nll.dtype == torch.float64


# ---------------------------------------------------------------- the auditor: the kit, and a broken copy

PROBE_ENV = {**strs(LORA), "VOCAB_SIZE": "16", "TTT_BATCH_SIZE": "2",
             "PHASED_TTT_PREFIX_DOCS": "3", "GLOBAL_TTT_CHUNK_TOKENS": "32"}
SCORE_LINE = "        nll = lora_nll(hidden, model, ad, x, sel, y)\n        out_pos.append(pos[real])"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """train_gpt.py with lora_phased made illegal: each chunk trained on (one AdamW step), then scored."""
    src = (ROOT / "train_gpt.py").read_text()
    assert src.count(SCORE_LINE) == 1
    path = tmp_path_factory.mktemp("broken") / "train_gpt.py"
    path.write_text(src.replace(SCORE_LINE, "        nll = lora_nll(hidden, model, ad, x, sel, y)\n"
                                "        opt.zero_grad(set_to_none=True)\n        nll.mean(1).sum().backward()\n"
                                "        ledger.trained(pos[real].flatten())\n        opt.step()\n" + SCORE_LINE))
    return path


def test_auditor_passes_the_kit_and_catches_train_before_score(tg, broken):
    """Static audit with TTT_MODE=lora_phased: the kit is clean, the broken copy is flagged TTT-PRE (active). The
    dynamic probes (TTT_DOC_ORDER=stream, warm-started A, phases) all pass on the kit; on the broken copy the TTT
    ledger and future-suffix invariance fail."""
    settings = {"TTT": "1", "TTT_MODE": "lora_phased"}
    assert audit(str(ROOT / "train_gpt.py"), settings=settings).as_dict()["findings"] == []
    flagged = audit(str(broken), settings=settings).as_dict()["findings"]
    assert [f["rule"] for f in flagged] == ["TTT-PRE"] and flagged[0]["status"] == "active"
    kit = run_probes(str(ROOT / "train_gpt.py"), {**PROBE_ENV, "TTT_DOC_ORDER": "stream"})
    assert kit["verdict"] == "pass", [r for r in kit["probes"] if r["status"] != "pass"]
    bad = {r["probe"]: r["status"] for r in run_probes(str(broken), {**PROBE_ENV, "TTT_DOC_ORDER": "stream"})["probes"]}
    assert bad["TTT ledger"] == "fail" and bad["future-suffix invariance (TTT)"] == "fail"


# ---------------------------------------------------------------- settings

def test_record_names_and_checks(tg):
    env = {**TINY_ENV, "TTT_ENABLED": "1", "PHASED_TTT_ENABLED": "1", "TTT_SHORT_SCORE_FIRST_STEPS": "256:8,2000:24",
           "TTT_EVAL_SEQ_LEN": "64", "TTT_LORA_RANK": "96", "GLOBAL_TTT_LR": "0.002"}
    args = tg.Hyperparameters.from_env(env)
    tg.check_config(args, 1)
    assert (args.ttt, args.ttt_mode, args.eval_seq_len, args.ttt_lora_rank, args.global_ttt_lr) == \
        (1, "lora_phased", 64, 96, 0.002)
    assert tg.short_chunks(args.ttt_short_chunks) == [(256, 8), (2000, 24)]
    for over, message in [(dict(TTT_MODE="lora_phased"), "needs TTT=1"),
                          (dict(TTT=1, TTT_SHORT_CHUNKS="256:8,2000"), "TTT_SHORT_CHUNKS"),
                          (dict(TTT=1, TTT_SHORT_CHUNKS="256:0"), "TTT_SHORT_CHUNKS")]:
        with pytest.raises(tg.ConfigError, match=message):
            tg.check_config(tg.Hyperparameters.from_env({**TINY_ENV, **{k: str(v) for k, v in over.items()}}), 1)
    with pytest.raises(tg.ConfigError, match="PHASED_TTT_ENABLED"):
        tg.Hyperparameters.from_env({**TINY_ENV, "PHASED_TTT_ENABLED": "2"})


def test_short_document_chunks(tg):
    """TTT_SHORT_CHUNKS: a batch whose longest document has at most LEN tokens uses chunks of CHUNK; one AdamW step
    per chunk that some document of the batch continues after."""
    tokens = stream(150, 20, seed=7)
    lengths = tg.split_docs(tokens)[1]
    for short, longest, chunk in (("", 0, 8), ("4:1,1000:3", 1000, 3)):
        args = lora_args(tg, TTT_SHORT_CHUNKS=short, PHASED_TTT_PREFIX_DOCS=0)
        with Recorder(tg) as rec:
            tg.ttt_score_nll(model_of(tg, args), tokens, args, rec.ledger)
        want = 0
        for _, docs in tg.doc_batches(lengths, args):
            n = lengths[docs]
            c = 1 if int(n.max()) <= 4 and short else chunk if int(n.max()) <= longest else 8
            want += int((n - 2).max()) // c
        assert sum(k == "step" for k, _ in rec.log) == want, short


# ---------------------------------------------------------------- bench/bench_equiv_ttt.py (the record's script is not here)

def test_bench_equiv_ttt_without_the_record_is_one_error_line(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_equiv_ttt.py"), "--other",
                          str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], lines


@pytest.mark.skipif(not os.environ.get("PG_RECORD_1_0611"), reason="set PG_RECORD_1_0611 to the record's train_gpt.py")
def test_bench_equiv_ttt_against_the_record():
    """~1 minute on 2 cores: per-document NLLs through LoRA TTT and one phase, within tolerance (exit 0)."""
    from bench import bench_equiv_ttt
    assert bench_equiv_ttt.main(["--other", os.environ["PG_RECORD_1_0611"]]) == 0


def test_ablation_rows_read_doc_window_scores():
    """ablations' results columns: EVAL_MODE=doc's doc_window scores fill sw_*/ppmc_*/float_* like the stream's."""
    from ablations.grid import RunSpec
    from ablations.runner import row_from_json
    run = RunSpec(group="", config="c", seed=1, run_id="r", env={})
    for win in ("sliding_window", "doc_window"):
        js = {"status": "complete", "final": {"metric": f"{win}_ppmc", "val_bpb": 2.0, "val_loss": 3.0},
              "scores": {f"float_{win}": {"val_bpb": 2.3, "val_loss": 3.3}, win: {"val_bpb": 2.2, "val_loss": 3.2},
                         f"{win}_ppmc": {"val_bpb": 2.0, "val_loss": 3.0}}}
        row = row_from_json(js, run, Path("."))
        assert (row["float_val_bpb"], row["sw_val_bpb"], row["ppmc_val_bpb"]) == (2.3, 2.2, 2.0), win
