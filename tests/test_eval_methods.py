"""Evaluation-time methods of train_gpt.py as integrated into the kit: PPMC mixing (normalisation, gold
consistency, the alpha limits, causality, the logged score recomputed from the artifact), legal score-first TTT
(a ledger of every scored and trained position, the untouched first chunk, the rank split, two processes), and
EVAL_ONLY (exact reproduction, refusals, the version warning). The PPM-C algorithm itself is checked against a
pure-Python reference in test_ppmc.py; here it is only used through the functions main() calls.

Runtime: a validation shard cut to ~4,000 tokens (whole documents) keeps every end-to-end run to seconds; the
runs that only need an artifact call main() in-process with EVAL_ONLY (no torch start-up per run)."""
import json
import math
import re
import socket
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import (cut_val, data_env, finish_script, random_weights, reload_artifact, set_run_env, short_data,
                      start_script, tiny_args)

VAL_TOKENS = 4000  # the small validation shard: whole documents up to the first BOS at or after this index
LINE = r"^{name} val_loss:(\d+\.\d{{8}}) val_bpb:(\d+\.\d{{8}})$"  # 8 decimals, exactly


def random_model(tg, args, std=0.05, seed=0):
    """A float64 model with every parameter random (zero-initialised projections would hide context use)."""
    return random_weights(tg.build_model(args).double(), std, seed).eval()


def find_line(log: str, name: str):
    m = re.search(LINE.format(name=re.escape(name)), log, re.M)
    assert m, f"no line {name!r} with 8 decimals in the log"
    return m


def bpb(tg, val: np.ndarray, nll: torch.Tensor, tables) -> float:
    return nll.sum().item() / math.log(2) / tg.target_bytes(val, tables).sum()


# ---------------------------------------------------------------- shared data and runs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(tg, dataset, tmp_path_factory):
    """Folders with the embedded dataset's validation shard cut to whole documents (~VAL_TOKENS tokens):
    'train' also holds the train shard, 'valonly' holds nothing else (EVAL_ONLY must not need training data)."""
    data_path, tok = dataset
    val = cut_val(data_path, VAL_TOKENS, whole_docs=True)
    root = tmp_path_factory.mktemp("small")
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    return {"train": short_data(data_path, root / "train", val),
            "valonly": short_data(data_path, root / "valonly", val, train=False), "tok": tok, "val": val,
            "tables": tg.byte_tables(sp)}


def run_env(small, run_id, data="train", **over):
    return data_env((small[data], small["tok"]), run_id, **{"FLOAT_EVAL": 0, "TTT_CHUNK_TOKENS": 1024, "TTT_LR": 0.01,
                                                           "TTT_EPOCHS": 2, **over})


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory):
    """One real training run with PPMC=1 and TTT=1: its log, JSON summary and artifact."""
    cwd = tmp_path_factory.mktemp("trained")
    res = finish_script(start_script(run_env(small, "tr", PPMC=1, TTT=1), cwd))
    assert res.returncode == 0, res.stderr[-3000:]
    return {"cwd": cwd, "log": (cwd / "logs/tr.txt").read_text(),
            "summary": json.loads((cwd / "logs/tr.json").read_text()), "artifact": cwd / "artifacts/tr.ptz"}


def main_in_process(tg, monkeypatch, cwd: Path, env: dict):
    """main() in this process (no interpreter start-up): returns (exit code, log text, summary or None)."""
    set_run_env(tg, monkeypatch, cwd, env)
    rc = tg.main()
    name = env["RUN_ID"] + ("_eval" if env.get("EVAL_ONLY") else "")  # an EVAL_ONLY run has its own log names
    summary = cwd / "logs" / f"{name}.json"
    return rc, (cwd / "logs" / f"{name}.txt").read_text(), (
        json.loads(summary.read_text()) if summary.exists() else None)


# ---------------------------------------------------------------- PPMC: the mixed distribution

@pytest.fixture(scope="module")
def net(tg, small):
    """A random tiny model's scores on the first 1,000 validation tokens: per-target NLL and, at sampled positions
    (the first targets, window edges, just after BOS tokens, the last target), the full log-distribution."""
    val = small["val"][:1000]
    tokens = torch.from_numpy(val.astype(np.int64))
    model = random_model(tg, tiny_args(tg))
    bos = np.flatnonzero(val == 1)
    repeats = np.flatnonzero(val[1:] == val[:-1]) + 1  # target = previous token: where a target leak would show
    positions = sorted({1, 2, 3, 63, 64, 65, 97, int(bos[1]), int(bos[1]) + 1, int(bos[2]) + 2, 700, len(val) - 1,
                        *map(int, repeats[:3])})
    return {"val": val, "model": model, "nll": tg.score_nll(model, tokens, 64, 32), "positions": positions,
            "logp": tg.score_distribution(model, tokens, positions, 64, 32)}


@pytest.mark.parametrize("order,exclusion,reset", [(2, True, False), (2, False, False), (2, True, True),
                                                    (3, False, True), (1, True, False)])
def test_mixed_distribution_is_normalised_and_matches_the_scored_nll(tg, net, order, exclusion, reset):
    """At sampled positions alpha * softmax_net + (1 - alpha) * p_ppm sums to 1 over the whole vocabulary and its
    target entry is exp(-mix_nll) of the score main() uses (score_nll + ppm_target_probs + mix_nll)."""
    val, nll = net["val"], net["nll"]
    p_ppm = torch.from_numpy(tg.ppm_target_probs(val, 1024, order, exclusion, reset))
    gold = [tg.ppm_distribution(val, t, 1024, order, exclusion, reset)[val[t]] for t in range(1, len(val))]
    np.testing.assert_allclose(p_ppm.numpy(), gold, rtol=1e-12, atol=0)  # every position: the PPM part's gold
    for alpha in (0.95, 0.5, 0.0, 1.0):
        mixed_nll = tg.mix_nll(nll, p_ppm, alpha)
        for i, t in enumerate(net["positions"]):
            p_full = tg.ppm_distribution(val, t, 1024, order, exclusion, reset)
            mixed = alpha * net["logp"][i].exp() + (1 - alpha) * torch.from_numpy(p_full)
            assert abs(mixed.sum().item() - 1) < 1e-9, (alpha, t)
            assert (mixed > 0).all(), (alpha, t)  # every token keeps some probability: finite loss
            assert mixed[val[t]].item() == pytest.approx(math.exp(-mixed_nll[t - 1].item()), rel=1e-9, abs=0), \
                (alpha, t)


def test_mix_nll_limits_and_elementwise(tg):
    """alpha = 0 is PPM alone, alpha = 1 the network alone; alpha is one constant, applied position by position
    (the target never enters: the same (nll, p) gives the same mixed score whatever the token was)."""
    g = torch.Generator().manual_seed(0)
    nll = torch.rand(1000, generator=g, dtype=torch.float64) * 12
    p = torch.rand(1000, generator=g, dtype=torch.float64).clamp_min(1e-12)
    torch.testing.assert_close(tg.mix_nll(nll, p, 0.0), -torch.log(p), rtol=0, atol=1e-12)
    torch.testing.assert_close(tg.mix_nll(nll, p, 1.0), nll, rtol=0, atol=1e-12)
    mixed = tg.mix_nll(nll, p, 0.95)
    torch.testing.assert_close(mixed, -torch.log(0.95 * torch.exp(-nll) + 0.05 * p), rtol=0, atol=1e-12)
    perm = torch.randperm(1000, generator=g)
    torch.testing.assert_close(tg.mix_nll(nll[perm], p[perm], 0.95), mixed[perm], rtol=0, atol=0)
    assert torch.all(tg.mix_nll(nll, p, 0.95) <= -torch.log(torch.tensor(0.95, dtype=torch.float64)) + nll + 1e-12)


def test_mixed_score_is_causal(tg, net):
    """Future-suffix invariance (COMPLIANCE.md): replacing every token from c onward (BOS tokens included, so
    PPMC_RESET=doc boundaries move too) leaves every mixed score before c unchanged, bit for bit."""
    val, model = net["val"][:600].astype(np.int64), net["model"]
    rng = np.random.default_rng(0)

    def mixed(v, reset):
        nll = tg.score_nll(model, torch.from_numpy(v), 64, 32)
        return tg.mix_nll(nll, torch.from_numpy(tg.ppm_target_probs(v, 1024, 2, True, reset)), 0.9)

    for c, reset in ((2, True), (65, False), (300, True), (599, True)):
        v = val.copy()
        v[c:] = rng.integers(0, 1024, len(v) - c)
        v[c:][rng.random(len(v) - c) < 0.05] = 1
        assert torch.equal(mixed(v, reset)[:c - 1], mixed(val, reset)[:c - 1]), c


def test_ppmc_settings_are_checked(tg):
    for over, msg in [(dict(PPMC_ALPHA=1.5), "PPMC_ALPHA"), (dict(PPMC_ALPHA=-0.1), "PPMC_ALPHA"),
                      (dict(PPMC_ORDER=-1), "PPMC_ORDER"), (dict(PPMC_RESET="always"), "PPMC_RESET")]:
        with pytest.raises(tg.ConfigError, match=msg):
            tg.check_config(tiny_args(tg, PPMC=1, **over), 1)
    for over in (dict(PPMC_ALPHA=0), dict(PPMC_ALPHA=1), dict(PPMC_RESET="doc"), dict(PPMC_ORDER=0)):
        tg.check_config(tiny_args(tg, PPMC=1, **over), 1)


# ---------------------------------------------------------------- TTT: the ledger of scored and trained positions

def ttt_args(tg, **over):
    base = dict(VOCAB_SIZE=512, EVAL_SEQ_LEN=32, EVAL_STRIDE=16, EVAL_BATCH_SEQS=8, TTT_CHUNK_TOKENS=100,
                TTT_LR=0.05, TTT_EPOCHS=2, TTT_MOMENTUM=0.9, TTT_GRAD_CLIP=1.0)
    return tiny_args(tg, **{**base, **over})


CROSS_ENTROPY = torch.nn.functional.cross_entropy


class Events:
    """Every scored / trained call of the ledger, every target of every TTT loss and every optimiser step, in
    the order they happen. Tokens are all distinct, so a target's token id names its position."""

    def __init__(self, tg, tokens: torch.Tensor):
        self.log = []
        where = {int(t): i for i, t in enumerate(tokens.tolist())}
        assert len(where) == tokens.numel()
        events = self

        class Ledger(tg.TTTLedger):
            def scored(self, positions):
                events.log.append(("scored", positions.tolist()))

            def trained(self, positions):
                events.log.append(("trained", positions.tolist()))

        self.ledger = Ledger()

        def cross_entropy(logits, target, *a, **k):  # the loss's own targets, independent of the ledger
            events.log.append(("loss", [where[int(t)] for t in target.flatten().tolist()]))
            return CROSS_ENTROPY(logits, target, *a, **k)

        self.F = tg.F
        tg.F.cross_entropy = cross_entropy
        self.hook = register_optimizer_step_pre_hook(
            lambda *a: events.log.append(("step", None)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.F.cross_entropy = CROSS_ENTROPY
        self.hook.remove()

    def check(self, ranks_scored=None):
        """Score-first invariants; returns the per-chunk scored sets. ranks_scored: positions scored by the other
        ranks of the same chunk (a rank may train on what another rank scored in that chunk)."""
        scored_so_far, chunks, trained, losses, pending, steps_after = set(), [], [], [], [], 0
        for kind, pos in self.log:
            if kind == "scored":
                assert not scored_so_far & set(pos), "a position scored twice"
                chunk = set(pos) | (ranks_scored[len(chunks)] if ranks_scored else set())
                scored_so_far |= chunk
                chunks.append(chunk)
                trained.append(Counter())
                losses.append(Counter())
                steps_after = 0
            elif kind in ("trained", "loss"):
                assert chunks, "trained before anything was scored"
                assert set(pos) <= scored_so_far, f"{kind} on positions not yet scored: {set(pos) - scored_so_far}"
                (trained if kind == "trained" else losses)[-1].update(pos)
                pending.append((kind, sorted(pos)))
            else:  # an optimiser step uses exactly the targets of the losses since the last step
                assert any(k == "loss" for k, _ in pending) or ranks_scored, "a step without a loss"
                assert sorted(p for k, ps in pending if k == "loss" for p in ps) == \
                    sorted(p for k, ps in pending if k == "trained" for p in ps), "ledger differs from the loss"
                pending, steps_after = [], steps_after + 1
        assert not pending, "losses computed after the last optimiser step"
        assert steps_after == 0 and not trained[-1] and not losses[-1], "the last chunk was trained on"
        return chunks, trained, losses


def test_ttt_ledger_score_first(tg):
    """Every trained target was scored before; nothing is scored twice; every target 1..N-1 is scored exactly
    once; each chunk trains TTT_EPOCHS times on exactly its own scored targets; never on the last chunk."""
    args = ttt_args(tg)
    tokens = torch.randperm(512, generator=torch.Generator().manual_seed(1))[:450]
    model = random_model(tg, args)
    with Events(tg, tokens) as ev:
        nll = tg.ttt_score_nll(model, tokens, args, ev.ledger)
    chunks, trained, losses = ev.check()
    assert nll.shape == (449,) and torch.isfinite(nll).all()
    assert sorted(p for c in chunks for p in c) == list(range(1, 450))
    assert len(chunks) == len({(w[1] - 1) // 100 for w in tg.windows(450, 32, 16)}) == 5
    for c in range(len(chunks) - 1):
        want = Counter({p: args.ttt_epochs for p in chunks[c]})
        assert trained[c] == want and losses[c] == want, c
    assert sum(k == "step" for k, _ in ev.log) == args.ttt_epochs * (len(chunks) - 1)


def test_ttt_first_chunk_untouched_later_chunks_adapted(tg):
    """The first chunk is scored by the model as loaded (plain score_nll's scores); later chunks by the adapted
    model; with TTT_LR=0 every score is plain score_nll's."""
    args = ttt_args(tg)
    tokens = torch.randint(0, 512, (450,), generator=torch.Generator().manual_seed(2))
    plain = tg.score_nll(random_model(tg, args), tokens, args.eval_seq_len, args.eval_stride)
    nll = tg.ttt_score_nll(random_model(tg, args), tokens, args)
    first = [w for w in tg.windows(450, 32, 16) if (w[1] - 1) // 100 == 0][-1][2] - 1  # targets 1..first
    torch.testing.assert_close(nll[:first], plain[:first], rtol=0, atol=1e-12)
    assert (nll[first:] - plain[first:]).abs().max() > 1e-4  # the model changed after the first chunk
    frozen = tg.ttt_score_nll(random_model(tg, args), tokens, ttt_args(tg, TTT_LR=0))
    torch.testing.assert_close(frozen, plain, rtol=0, atol=1e-9)


def test_ttt_is_causal(tg):
    """Future-suffix invariance through the whole score-then-train loop: training happens only on scored chunks,
    so no earlier score may move when later tokens change."""
    args = ttt_args(tg)
    tokens = torch.randint(0, 512, (450,), generator=torch.Generator().manual_seed(3))
    ref = tg.ttt_score_nll(random_model(tg, args), tokens, args)
    for c in (101, 150, 333):
        t = tokens.clone()
        t[c:] = torch.randint(0, 512, (450 - c,), generator=torch.Generator().manual_seed(c))
        torch.testing.assert_close(tg.ttt_score_nll(random_model(tg, args), t, args)[:c - 1], ref[:c - 1],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [100, 16, 40])
def test_ttt_rank_split(tg, chunk):
    """ttt_eval's split for WORLD_SIZE=2, each rank run alone (no process group): the ranks score disjoint
    windows covering every target once; in every chunk they train together on exactly that chunk's scored targets
    (each rank only on positions some rank already scored) and take the same number of optimiser steps (so their
    gradient all-reduces pair up). chunk=16 = stride: one window per chunk, so rank 0 scores nothing there."""
    args = ttt_args(tg, TTT_CHUNK_TOKENS=chunk)
    tokens = torch.randperm(512, generator=torch.Generator().manual_seed(4))[:300]
    plain = tg.score_nll(random_model(tg, args), tokens, 32, 16)
    logs, outs = [], []
    for rank in (0, 1):
        with Events(tg, tokens) as ev:
            outs.append(tg.ttt_eval(random_model(tg, args), tokens, args, rank, 2, ev.ledger))
        logs.append(ev)
    scored = [[set(p) for k, p in ev.log if k == "scored"] for ev in logs]
    assert len(scored[0]) == len(scored[1]) == len({(w[1] - 1) // chunk for w in tg.windows(300, 32, 16)})
    for a, b in zip(*scored):
        assert not a & b
    assert sorted(p for s in scored for c in s for p in c) == list(range(1, 300))
    per_rank = []
    for r, ev in enumerate(logs):
        chunks, trained, losses = ev.check(ranks_scored=scored[1 - r])
        per_rank.append(trained)
        assert sum(k == "step" for k, _ in ev.log) == args.ttt_epochs * (len(chunks) - 1)
    for c in range(len(scored[0]) - 1):
        assert not set(per_rank[0][c]) & set(per_rank[1][c])
        assert per_rank[0][c] + per_rank[1][c] == Counter({p: args.ttt_epochs for p in scored[0][c] | scored[1][c]})
    for pos, nll in outs:  # the first chunk is scored by the untouched model on both ranks
        first = pos <= max(scored[0][0] | scored[1][0])
        torch.testing.assert_close(nll[first], plain[pos[first] - 1], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- end to end: PPMC and TTT in main()

def test_training_run_with_ppmc_and_ttt(tg, trained):
    log, s = trained["log"], trained["summary"]
    names = ["sliding_window", "sliding_window_ppmc", "ttt", "ttt_ppmc"]
    lines = {n: find_line(log, f"final_int6_{n}_exact") for n in names}
    assert list(s["scores"]) == names and s["final"]["metric"] == "ttt_ppmc"
    assert s["final"]["line"] == "final_int6_ttt_ppmc_exact"
    for n in names:
        assert float(lines[n].group(2)) == pytest.approx(s["scores"][n]["val_bpb"], abs=5e-9)
        assert float(lines[n].group(1)) == pytest.approx(s["scores"][n]["val_loss"], abs=5e-9)
        assert n in s["eval_phases_ms"] and re.search(rf"^eval_phase:{n} time:\d+ms$", log, re.M)
    m = re.search(r"^eval_time_total:(\d+)ms$", log, re.M)
    assert m and abs(int(m.group(1)) - sum(s["eval_phases_ms"].values())) <= 1
    assert s["eval_time_ms"] == pytest.approx(sum(s["eval_phases_ms"].values()))
    # TTT adapted the model (a different score) and PPM mixing is a different score again
    assert s["scores"]["ttt"]["val_bpb"] != s["scores"]["sliding_window"]["val_bpb"]
    assert s["scores"]["ttt_ppmc"]["val_bpb"] != s["scores"]["ttt"]["val_bpb"]
    # order of the evaluation: the artifact line, then sliding, PPMC, TTT, TTT+PPMC, then the total
    at = [log.index(x) for x in ("Total submission size", "final_int6_sliding_window_exact",
                                 "final_int6_sliding_window_ppmc_exact", "final_int6_ttt_exact",
                                 "final_int6_ttt_ppmc_exact", "eval_time_total")]
    assert at == sorted(at)


def test_ttt_score_recomputed_from_the_artifact(tg, small, trained):
    """The logged TTT and TTT+PPMC scores are score-first TTT (ttt_score_nll) of the reloaded artifact."""
    model, args, _ = reload_artifact(tg, trained["artifact"])
    val = small["val"]
    nll = tg.ttt_score_nll(model, torch.from_numpy(val.astype(np.int64)), args)
    assert bpb(tg, val, nll, small["tables"]) == pytest.approx(trained["summary"]["scores"]["ttt"]["val_bpb"],
                                                               abs=1e-6)
    mixed = tg.mix_nll(nll, torch.from_numpy(tg.ppm_target_probs(val, 1024, 2, True, False)), args.ppmc_alpha)
    assert bpb(tg, val, mixed, small["tables"]) == pytest.approx(
        trained["summary"]["scores"]["ttt_ppmc"]["val_bpb"], abs=1e-6)


def test_eval_only_reproduces_and_adds_ppmc(tg, small, trained, tmp_path):
    """EVAL_ONLY with the same shape, PPMC=1 and no training data at all: the same sliding line byte for byte,
    the PPMC line, final.metric sliding_window_ppmc; the PPMC score recomputed independently from the artifact
    (score_nll of the reloaded model + ppm_target_probs + mix_nll + byte totals) matches to 1e-7."""
    art = trained["artifact"]
    before = art.read_bytes()
    res = finish_script(start_script(run_env(small, "ev", data="valonly", PPMC=1, EVAL_ONLY=art), tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "logs/ev_eval.txt").read_text()
    s = json.loads((tmp_path / "logs/ev_eval.json").read_text())
    for n in ("sliding_window", "sliding_window_ppmc"):
        assert find_line(log, f"final_int6_{n}_exact").group(0) == \
            find_line(trained["log"], f"final_int6_{n}_exact").group(0)
    assert "final_int6_ttt" not in log
    made_by = tg.unpack_artifact(before)[1]["code_sha256"]  # no version warning unless train_gpt.py changed since
    assert ("warning:" in log) == (f"code_sha256:{made_by} " not in log)
    assert list(s["scores"]) == ["sliding_window", "sliding_window_ppmc"]
    assert s["final"]["metric"] == "sliding_window_ppmc" and s["final"]["line"] == "final_int6_sliding_window_ppmc_exact"
    assert s["model_bytes"] == len(before) and art.read_bytes() == before and s["unigram_val_bpb"] is None
    assert re.search(r"^eval_time_total:\d+ms$", log, re.M)
    assert not (tmp_path / "artifacts").exists()  # EVAL_ONLY writes no new artifact
    # independent recomputation
    model, args, _ = reload_artifact(tg, art)
    val = small["val"]
    nll = tg.score_nll(model, torch.from_numpy(val.astype(np.int64)), 64, 32, batch_seqs=256)
    p = torch.from_numpy(tg.ppm_target_probs(val, 1024, 2, True, False))
    sliding = bpb(tg, val, nll, small["tables"])
    mixed = bpb(tg, val, tg.mix_nll(nll, p, 0.95), small["tables"])
    assert sliding == pytest.approx(s["scores"]["sliding_window"]["val_bpb"], abs=1e-7)
    assert mixed == pytest.approx(float(find_line(log, "final_int6_sliding_window_ppmc_exact").group(2)), abs=1e-7)
    assert mixed == pytest.approx(s["final"]["val_bpb"], abs=1e-7)


@pytest.mark.parametrize("over", [dict(PPMC_ALPHA=0), dict(PPMC_RESET="doc"), dict(PPMC_EXCLUSION=0),
                                  dict(PPMC_ORDER=3, PPMC_ALPHA=0.5)])
def test_ppmc_variants_end_to_end(tg, small, trained, tmp_path, monkeypatch, over):
    """PPMC_ALPHA=0 (PPM alone), PPMC_RESET=doc, PPMC_EXCLUSION=0 and another order run through main() and
    report exactly the mix of the reloaded model's sliding score with that PPM configuration."""
    env = run_env(small, "var", data="valonly", PPMC=1, EVAL_ONLY=trained["artifact"], **over)
    rc, log, s = main_in_process(tg, monkeypatch, tmp_path, env)
    assert rc == 0 and s["final"]["metric"] == "sliding_window_ppmc"
    args = tg.Hyperparameters.from_env(env)
    model, _, _ = reload_artifact(tg, trained["artifact"])
    val = small["val"]
    nll = tg.score_nll(model, torch.from_numpy(val.astype(np.int64)), 64, 32, batch_seqs=256)
    p = tg.ppm_target_probs(val, 1024, args.ppmc_order, bool(args.ppmc_exclusion), args.ppmc_reset == "doc")
    mixed = tg.mix_nll(nll, torch.from_numpy(p), args.ppmc_alpha)
    logged = float(find_line(log, "final_int6_sliding_window_ppmc_exact").group(2))
    assert bpb(tg, val, mixed, small["tables"]) == pytest.approx(logged, abs=1e-7)
    if args.ppmc_alpha == 0:  # PPM alone: the network plays no part
        assert bpb(tg, val, torch.from_numpy(-np.log(p)), small["tables"]) == pytest.approx(logged, abs=1e-7)
    assert logged != trained["summary"]["scores"]["sliding_window_ppmc"]["val_bpb"]


def test_eval_only_ttt_alone(tg, small, trained, tmp_path, monkeypatch):
    env = run_env(small, "tt", data="valonly", TTT=1, EVAL_ONLY=trained["artifact"])
    rc, log, s = main_in_process(tg, monkeypatch, tmp_path, env)
    assert rc == 0
    assert list(s["scores"]) == ["sliding_window", "ttt"] and s["final"]["metric"] == "ttt"
    assert s["final"]["line"] == "final_int6_ttt_exact" and "ppmc" not in log
    assert set(s["eval_phases_ms"]) == {"deserialize", "sliding_window", "ttt"} and s["eval_phases_ms"]["ttt"] > 0
    assert re.search(r"^eval_time_total:\d+ms$", log, re.M)
    for n in ("sliding_window", "ttt"):
        assert float(find_line(log, f"final_int6_{n}_exact").group(2)) == pytest.approx(
            trained["summary"]["scores"][n]["val_bpb"], abs=1e-6)


def test_ttt_two_processes_match_one(tg, small, trained, tmp_path):
    """TTT=1 PPMC=1 with 2 CPU processes (gloo; launched the way torchrun launches them: RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT, without torchrun's own interpreter) gives the single-process TTT score of the same
    artifact and settings, and the single-process PPMC score (rank 0 computes the PPM pass and broadcasts it).
    Two chunks and one epoch keep the gradient all-reduces (slow on a busy CPU) few."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = run_env(small, "two", data="valonly", TTT=1, PPMC=1, EVAL_ONLY=trained["artifact"], TTT_CHUNK_TOKENS=2048,
                  TTT_EPOCHS=1, TTT_LR=0.02, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    procs = [start_script({**env, "RANK": str(r), "LOCAL_RANK": str(r)}, tmp_path) for r in (0, 1)]
    model, _, _ = reload_artifact(tg, trained["artifact"])  # the single-process reference, meanwhile
    val = small["val"]
    nll = tg.ttt_score_nll(model, torch.from_numpy(val.astype(np.int64)), tg.Hyperparameters.from_env(env))
    one = bpb(tg, val, nll, small["tables"])
    p_ppm = torch.from_numpy(tg.ppm_target_probs(val, 1024, 2, True, False))
    one_ppmc = bpb(tg, val, tg.mix_nll(nll, p_ppm, 0.95), small["tables"])
    results = [finish_script(p) for p in procs]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    assert results[1].stdout == ""  # only rank 0 logs
    s = json.loads((tmp_path / "logs/two_eval.json").read_text())
    assert s["world_size"] == 2 and s["final"]["metric"] == "ttt_ppmc"
    for name in ("sliding_window", "sliding_window_ppmc"):
        assert abs(s["scores"][name]["val_bpb"] - trained["summary"]["scores"][name]["val_bpb"]) < 1e-6
    assert abs(s["scores"]["ttt"]["val_bpb"] - one) < 1e-4
    assert abs(s["scores"]["ttt_ppmc"]["val_bpb"] - one_ppmc) < 1e-4
    assert abs(s["scores"]["ttt"]["val_bpb"] - s["scores"]["sliding_window"]["val_bpb"]) > 1e-4  # it trained


# ---------------------------------------------------------------- EVAL_ONLY refusals and the version warning

def test_eval_only_refusals(tg, small, trained, tmp_path, monkeypatch):
    """A different shape, a truncated file and a missing path are refused. The shape mismatch is found late
    (after the log has started), so it runs as a real process: one `error:` line on stderr, exit 2. The other two
    raise the same ConfigError that the script's entry point turns into that line and exit 2
    (test_train_gpt.py::test_config_errors pins that mapping); they run in-process to save two interpreter starts."""
    art = trained["artifact"]
    proc = start_script(run_env(small, "bad", data="valonly", EVAL_ONLY=art, MODEL_DIM=32), tmp_path)
    blob = art.read_bytes()
    (tmp_path / "trunc.ptz").write_bytes(blob[: len(blob) // 2])
    for path, message in ((tmp_path / "trunc.ptz", r"trunc\.ptz is truncated or corrupted"),
                          (tmp_path / "nope.ptz", r"^EVAL_ONLY=.*nope\.ptz is not a file")):
        with pytest.raises(tg.ConfigError, match=message) as err:
            main_in_process(tg, monkeypatch, tmp_path, run_env(small, "bad2", data="valonly", EVAL_ONLY=path))
        assert "\n" not in str(err.value)
    assert not (tmp_path / "logs/bad2.json").exists()
    res = finish_script(proc)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"^error: EVAL_ONLY=.*was made with a different model.*MODEL_DIM", lines[0])
    assert "Traceback" not in res.stdout and "final_" not in res.stdout
    assert not (tmp_path / "logs/bad.json").exists()


def patched_meta(tg, blob: bytes, **meta) -> bytes:
    """The same tensors, bit for bit, with some meta fields replaced (the header stream rewritten, the tensor
    streams kept byte for byte, a new checksum)."""
    comp, body = tg.COMPRESSORS[blob[8]], blob[17:]
    count = body[0]
    lengths = list(struct.unpack_from(f"<{count}I", body, 1))
    pos = 1 + 4 * count
    first = tg.decompress(body[pos:pos + lengths[0]], comp)
    (hlen,) = struct.unpack_from("<I", first)
    header = json.loads(first[4:4 + hlen])
    header["meta"].update(meta)
    h = json.dumps(header).encode()
    packed = tg.compress(struct.pack("<I", len(h)) + h + first[4 + hlen:], comp, 3)
    rest = body[pos + lengths[0]:]
    body = struct.pack(f"<B{count}I", count, len(packed), *lengths[1:]) + packed + rest
    return tg.ARTIFACT_MAGIC + blob[8:9] + tg.hashlib.sha256(body).digest()[:8] + body


def test_eval_only_other_script_version_warns_but_scores(tg, small, trained, tmp_path, monkeypatch):
    other = tmp_path / "other.ptz"
    other.write_bytes(patched_meta(tg, trained["artifact"].read_bytes(), code_sha256="0" * 64))
    state, meta = tg.unpack_artifact(other.read_bytes())
    ref, _ = tg.unpack_artifact(trained["artifact"].read_bytes())
    assert meta["code_sha256"] == "0" * 64 and all(torch.equal(state[k], ref[k]) for k in ref)
    rc, log, s = main_in_process(tg, monkeypatch, tmp_path, run_env(small, "old", data="valonly", EVAL_ONLY=other))
    assert rc == 0
    warnings = [x for x in log.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "different train_gpt.py" in warnings[0] and "000000000000" in warnings[0]
    assert float(find_line(log, "final_int6_sliding_window_exact").group(2)) == pytest.approx(
        trained["summary"]["scores"]["sliding_window"]["val_bpb"], abs=1e-7)
    assert s["final"]["metric"] == "sliding_window"


# ---------------------------------------------------------------- damaged or mismatched artifacts

def test_bit_flip_in_tensor_data_is_refused(tg, trained):
    blob = trained["artifact"].read_bytes()
    for at in range(len(blob) // 10, len(blob) - 100, len(blob) // 20):  # 18 places in the tensor data
        with pytest.raises(tg.ConfigError, match="corrupted"):
            tg.unpack_artifact(blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1:], "flip.ptz")


def test_eval_only_notices_a_different_architecture(tg, small, trained, tmp_path, monkeypatch):
    env = run_env(small, "arch", data="valonly", EVAL_ONLY=trained["artifact"], MLP_ACT="leaky_relu2")
    try:
        rc, log, s = main_in_process(tg, monkeypatch, tmp_path, env)
    except tg.ConfigError as err:  # refusing is fine
        assert "MLP_ACT" in str(err)
        return
    assert any(x.startswith("warning:") and "MLP_ACT" in x for x in log.splitlines())  # so is a warning


def test_lora_phased_two_processes_match_one(tg, small, trained, tmp_path):
    """TTT_MODE=lora_phased (phases on, TTT_WARM_START_A=0: every batch's adapters drawn from its own seed) with
    EVAL_MODE=doc and PPMC=1, under 2 CPU processes (gloo; batches claimed through the process group's store): the
    single-process scores of the same artifact (ttt_score_nll, doc windows, the PPM mixture); every eval phase on
    the artifact is logged with its time and eval_time_total is their sum."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = run_env(small, "lp", data="valonly", TTT=1, TTT_MODE="lora_phased", PPMC=1, EVAL_MODE="doc",
                  EVAL_ONLY=trained["artifact"], TTT_CHUNK_SIZE=32, TTT_BATCH_SIZE=4, TTT_LORA_RANK=4,
                  TTT_LORA_LR=0.003, TTT_WARM_START_A=0, PHASED_TTT_PREFIX_DOCS=6, PHASED_TTT_NUM_PHASES=2,
                  GLOBAL_TTT_CHUNK_TOKENS=512, GLOBAL_TTT_LR=0.01, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=port)
    procs = [start_script({**env, "RANK": str(r), "LOCAL_RANK": str(r)}, tmp_path) for r in (0, 1)]
    args = tg.Hyperparameters.from_env(env)
    model, _, _ = reload_artifact(tg, trained["artifact"])  # the single-process reference, meanwhile
    val = small["val"]
    tokens = torch.from_numpy(val.astype(np.int64))
    pos, nll = tg.sliding_eval(model, tokens, args, 0, 1)
    doc = bpb(tg, val, nll, small["tables"])
    nll = tg.ttt_score_nll(model, tokens, args)
    p_ppm = torch.from_numpy(tg.ppm_target_probs(val, 1024, 2, True, False))
    one, one_ppmc = bpb(tg, val, nll, small["tables"]), bpb(tg, val, tg.mix_nll(nll, p_ppm, 0.95), small["tables"])
    results = [finish_script(p) for p in procs]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    s, log = json.loads((tmp_path / "logs/lp_eval.json").read_text()), (tmp_path / "logs/lp_eval.txt").read_text()
    assert list(s["scores"]) == ["doc_window", "doc_window_ppmc", "ttt", "ttt_ppmc"]
    assert abs(s["scores"]["doc_window"]["val_bpb"] - doc) < 1e-7
    assert abs(s["scores"]["ttt"]["val_bpb"] - one) < 1e-6 and abs(s["scores"]["ttt_ppmc"]["val_bpb"] - one_ppmc) < 1e-6
    assert abs(one - doc) > 1e-4  # it trained
    assert log.count("then phase") == 2
    assert set(s["eval_phases_ms"]) == {"deserialize", "doc_window", "doc_window_ppmc", "ttt", "ttt_ppmc"}
    for name in s["eval_phases_ms"]:
        assert re.search(rf"^eval_phase:{name} time:\d+ms$", log, re.M)
    m = re.search(r"^eval_time_total:(\d+)ms$", log, re.M)
    assert m and abs(int(m.group(1)) - sum(s["eval_phases_ms"].values())) <= 1
