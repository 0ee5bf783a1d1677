"""`python -m compliance run`: the dynamic audit runs an entry's own evaluation in a sandbox on CPU shims, passes an
honest entry (with score-first TTT), catches each violation of the fixture entry with the probe made for it, keeps
the entry off the network and the file system, and the probes' arithmetic holds on hand-made score records."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.cli import main as cli  # noqa: E402
from compliance.recorder import StreamIndex  # noqa: E402
from compliance.run import (EXIT_FAIL, EXIT_INCOMPLETE, EXIT_PASS, audit, coverage, exit_code,  # noqa: E402
                            future_suffix, self_influence)
from compliance.sandbox import Limits, check  # noqa: E402

RUN_DIR = ROOT / "tests" / "fixtures" / "compliance" / "run"
ENTRY = RUN_DIR / "tiny_entry.py"
ESCAPE = RUN_DIR / "escape" / "train_gpt.py"


def statuses(rep):
    return {p["probe"]: p["status"] for p in rep["probes"]}


# ---- the stream index ------------------------------------------------------------------------------------------

def test_index_places_overlapping_windows_and_ignores_other_tokens():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 500, size=400)
    idx = StreamIndex(s)
    # sliding windows of 32 targets with stride 8, flattened as an entry hands them to cross_entropy
    wins = [np.arange(a, a + 32) for a in range(1, 360, 8)]
    flat = np.concatenate([s[w] for w in wins])
    assert (idx.locate(flat) == np.concatenate(wins)).all()
    other = rng.integers(500, 900, size=64)  # training tokens: never validation positions
    assert (idx.locate(other) == -1).all()
    assert (idx.locate(s[390:393]) == -1).all()  # too short to place
    # a window that ends where the next one's first target happens to equal the following stream token
    s2 = s.copy()
    s2[201] = s2[141]
    idx2 = StreamIndex(s2)
    flat2 = np.concatenate([s2[101:201], s2[141:181]])
    assert (idx2.locate(flat2) == np.concatenate([np.arange(101, 201), np.arange(141, 181)])).all()


def test_recorder_keeps_scores_and_drops_training():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from compliance.recorder import Recorder

    rec_ = Recorder()

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            rec_(func, args, kwargs or {}, out)
            return out

    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 50, (200,), generator=g)
    w = torch.randn(50, 50, generator=g, requires_grad=True)
    rec_.start(s.numpy(), watch=[199])
    with Mode():
        with torch.no_grad():                                     # 1. a score under no_grad, reduction none
            F.cross_entropy(w[s[0:40]], s[1:41], reduction="none")
        loss = F.cross_entropy(w[s[40:80]], s[41:81])             # 2. training: back-propagated, never read
        loss.backward()
        nll = F.cross_entropy(w[s[80:120]], s[81:121], reduction="none").view(5, 8)  # 3. scored, then trained on
        with torch.no_grad():
            total = nll[:, :].sum()
        nll.mean().backward()
        logp = torch.log_softmax(w[s[159:199]], dim=-1)           # 4. log_softmax + gather, with a full row at 199
        (-logp.gather(-1, s[160:200, None])).sum()
        F.cross_entropy(w[torch.arange(30)], torch.arange(1, 31))  # 5. targets that are not validation tokens
    out = rec_.finish()
    assert total > 0
    assert out["trained_calls"] == 2 and out["score_calls"] == 3
    assert sorted(out["pos"]) == list(range(1, 41)) + list(range(81, 121)) + list(range(160, 200))
    ref = -torch.log_softmax(w.detach()[s[159:199]].double(), -1).gather(-1, s[160:200, None]).squeeze(1)
    got = dict(zip(out["pos"], out["val"]))
    assert max(abs(got[160 + i] - float(ref[i])) for i in range(40)) < 1e-6
    assert len(out["rows"]["199"]) == 1 and len(out["rows"]["199"][0]) == 50


def test_streams_change_every_token_after_the_cut_and_keep_documents_in_the_prefix(tmp_path):
    from compliance import synth
    ordinary = np.arange(4, 300)
    s = synth.val_stream(ordinary, bos=1, n=1025)
    assert set(np.nonzero(s == 1)[0]) <= set(range(0, 1025 // 3)) and (s == 1).sum() == synth.DOCS
    t = synth.replace_from(s, 128, ordinary, seed=3)
    assert (t[:128] == s[:128]).all() and (t[128:] != s[128:]).all() and np.isin(t[128:], ordinary).all()
    # an entry folder is copied without hidden folders, links to folders (a repository's .venv) or logs
    (tmp_path / "e" / ".git").mkdir(parents=True)
    (tmp_path / "e" / "train_gpt.py").write_text("x = 1\n")
    (tmp_path / "e" / "train.log").write_text("log\n")
    (tmp_path / "e" / "venv").symlink_to(tmp_path / "e" / ".git")
    assert synth._skip(str(tmp_path / "e"), [".git", "train_gpt.py", "train.log", "venv"]) == {".git", "train.log",
                                                                                                  "venv"}


# ---- probe arithmetic ------------------------------------------------------------------------------------------

def rec(pos, val, rows=None, call=None):
    pos = list(pos)
    return {"pos": pos, "val": list(val), "rows": rows or {}, "call": call or [0] * len(pos), "score_calls": 1,
            "trained_calls": 0}


def test_future_suffix_flags_changed_prefix_scores_and_counts():
    base = rec(range(1, 11), [1.0] * 10)
    same = rec(range(1, 11), [1.0] * 5 + [9.0] * 5)          # only positions >= 6 change
    leak = rec(range(1, 11), [1.0, 1.0, 1.5, 1.0, 1.0] + [9.0] * 5)  # position 3 changed with a cut at 6
    missing = rec(range(1, 11), [1.0, 1.0, 1.0, 1.0] + [9.0] * 6)
    missing["pos"], missing["val"], missing["call"] = missing["pos"][1:], missing["val"][1:], missing["call"][1:]
    assert future_suffix(base, [(6, same, "cut@6")])["status"] == "pass"
    bad = future_suffix(base, [(6, leak, "cut@6")])
    assert bad["status"] == "fail" and bad["positions"] == [3] and abs(bad["effect"] - 0.5) < 1e-12
    assert future_suffix(base, [(6, missing, "cut@6")])["status"] == "fail"
    assert future_suffix(rec([], []), [(6, same, "c")])["status"] == "could-not-run"


def test_future_suffix_ignores_recomputations_after_the_cut_was_scored_but_not_new_passes():
    # two windows per pass: positions 1-6, then 3-8 (positions 3-5 recomputed and thrown away); two passes
    pos = [1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8] * 2
    call = [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    base = rec(pos, [1.0] * 24, call=call)
    ttt = rec(pos, [1.0] * 6 + [2.0] * 6 + [1.0] * 6 + [2.0] * 6, call=call)  # window 2 after training on 5..6
    assert future_suffix(base, [(5, ttt, "cut@5")])["status"] == "pass"
    # the second pass (e.g. after training on everything) changes a first score of position 2: caught
    rescore = rec(pos, [1.0] * 12 + [1.0, 1.5] + [1.0] * 10, call=call)
    r = future_suffix(base, [(5, rescore, "cut@5")])
    assert r["status"] == "fail" and r["positions"] == [2]
    # a recomputation before the pass reached the cut must not change either
    early = rec(pos, [1.0] * 6 + [1.2] + [1.0] * 17, call=call)
    assert future_suffix(base, [(7, early, "cut@7")])["status"] == "fail"


def test_self_influence_sum_and_moving_distribution():
    V, last = 4, 9
    p = np.array([0.4, 0.3, 0.2, 0.1])
    rows = {str(last): [np.log(p).tolist()]}
    honest = [(v, rec([last], [-math.log(p[v])], rows)) for v in range(V)]
    r = self_influence(honest, last)[0]
    assert r["status"] == "pass" and abs(r["effect"] - 1.0) < 1e-12
    # a target-keyed lookup: whichever token is the answer gets p = 0.5
    leak = [(v, rec([last], [-math.log(0.5)], rows)) for v in range(V)]
    r = self_influence(leak, last)[0]
    assert r["status"] == "fail" and abs(r["effect"] - 2.0) < 1e-12
    # a small boost that keeps the sum under 1 still moves the distribution with the answer
    moved = [(v, rec([last], [-math.log(p[v] * 1.1)], {str(last): [(np.log(p) + 0.1 * (np.arange(V) == v)).tolist()]}))
             for v in range(2)]
    assert self_influence(moved, last)[0]["status"] == "fail"
    assert self_influence([(0, rec([1], [1.0])), (1, rec([1], [1.0]))], last)[0]["status"] == "could-not-run"


def test_coverage_ties_the_reported_score_to_the_recorded_one():
    last = 4
    base = rec([1, 2, 3, 4, 4], [1.0, 1.0, 1.0, 2.0, 5.0])   # position 4 scored by two evaluations
    runs = [{"name": f"answer@{i}", "scores": rec([1, 2, 3, 4, 4], [1.0, 1.0, 1.0, x, 5.0 + d])}
            for i, x, d in ((1, 3.0, 0.5), (2, 4.0, 3.0))]

    def st(res):
        return [r["status"] for r in res]

    # the reported mean follows the first evaluation's score of position 4
    res = coverage(base, [(runs[0], (1.5, 8)), (runs[1], (1.75, 8))], (1.25, 8), last)
    assert st(res) == ["pass", "pass"] and "recorded score #1" in res[0]["detail"]
    # ... or the second one's
    assert st(coverage(base, [(runs[0], (2.125, 8)), (runs[1], (2.75, 8))], (2.0, 8), last)) == ["pass", "pass"]
    # it follows neither (a mixture computed outside torch)
    assert st(coverage(base, [(runs[0], (1.3, 8)), (runs[1], (1.9, 8))], (1.25, 8), last)) == ["could-not-run"] * 2
    # it follows the first one, but the mean is over half as many scores
    half = coverage(base, [(runs[0], (1.75, 8)), (runs[1], (2.25, 8))], (1.25, 8), last)
    assert st(half) == ["pass", "warn"] and "over about 2 scores of 4 targets" in half[1]["detail"]
    # it follows the sum of both evaluations' scores: the position is counted twice (the tail of sliding windows)
    both = coverage(base, [(runs[0], (1.25 + 1.5 / 6, 8)), (runs[1], (1.25 + 5.0 / 6, 8))], (1.25, 8), last)
    assert st(both) == ["pass", "warn"] and "counted 2 times" in both[1]["detail"]  # accounting: a warning
    assert st(coverage(base, [(runs[0], (1.5, 8))], None, last)) == ["could-not-run"] * 2


# ---- the shims, in a process of their own (they change torch globally) -----------------------------------------

SHIM_CHECK = r"""
import json, torch, torch.nn.functional as F
from compliance import shim
mode = shim.install("missing")
from flash_attn_interface import flash_attn_func, flash_attn_varlen_func
torch.manual_seed(0)
out = {}
q, k, v = torch.randn(2, 10, 4, 8), torch.randn(2, 10, 2, 8), torch.randn(2, 10, 2, 8)
ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(2, 1),
                                     v.transpose(1, 2).repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
out["causal_gqa"] = float((flash_attn_func(q, k, v, causal=True) - ref).abs().max())
cu = torch.tensor([0, 3, 10], dtype=torch.int32)
qp, kp, vp = q[0], k[0], v[0]
var = flash_attn_varlen_func(qp, kp, vp, cu, cu, 7, 7, causal=True)
seg = torch.cat([flash_attn_func(qp[None, a:b], kp[None, a:b], vp[None, a:b], causal=True)[0] for a, b in ((0, 3), (3, 10))])
out["varlen"] = float((var - seg).abs().max())
win = flash_attn_func(q, k, v, causal=True, window_size=(2, 0))
i = torch.arange(10)
mask = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - 2)
refw = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(2, 1),
                                      v.transpose(1, 2).repeat_interleave(2, 1), attn_mask=mask).transpose(1, 2)
out["window"] = float((win - refw).abs().max())
with mode:
    x = torch.zeros(3, device="cuda")
    y = torch.ones(2).cuda().to("cuda:0", non_blocking=True).pin_memory()
    m = torch.nn.Linear(2, 2).cuda().bfloat16()
out["devices"] = [str(x.device), str(y.device), str(m.weight.device), str(m.weight.dtype)]
out["compile"] = torch.compile(m, fullgraph=True) is m and torch.compile(mode="max-autotune")(len) is len
import torch.distributed as dist
dist.init_process_group("nccl")
t = torch.ones(3)
dist.all_reduce(t)
gathered = [torch.zeros(3)]
dist.all_gather(gathered, t)
out["dist"] = [dist.is_initialized(), dist.get_world_size(), t.tolist(), gathered[0].tolist()]
out["cuda"] = [torch.cuda.is_available(), torch.cuda.get_device_capability(), torch.cuda.max_memory_allocated()]
try:
    import triton
    out["triton"] = "imported"
except ImportError:
    out["triton"] = "missing"
print(json.dumps(out))
"""


def test_shims_compute_what_the_gpu_code_computes():
    res = subprocess.run([sys.executable, "-c", SHIM_CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["causal_gqa"] < 1e-5 and out["varlen"] < 1e-6 and out["window"] < 1e-5
    assert out["devices"] == ["cpu", "cpu", "cpu", "torch.float32"]
    assert out["compile"] is True
    assert out["dist"] == [True, 1, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert out["cuda"] == [True, [9, 0], 0]
    assert out["triton"] == "missing"


# ---- end to end, sandboxed -------------------------------------------------------------------------------------

FAST = dict(answers=2, limits=Limits(wall_s=300, cpu_s=600))
SMALL = {"MODEL_DIM": "64"}   # the fixture at a smaller width: the probes do not depend on it
_WHY = check()
sandboxed = pytest.mark.skipif(_WHY is not None, reason=f"this machine cannot build the sandbox: {_WHY}")


@sandboxed
def test_kit_train_gpt_passes_with_score_first_ttt():
    rep = audit(ROOT / "train_gpt.py", {"TTT": "1", "TTT_CHUNK_TOKENS": "256", "MODEL_DIM": "64", "NUM_LAYERS": "2"},
                answers=2,
                limits=Limits(wall_s=400, cpu_s=800))
    assert rep["verdict"] == "pass", (rep.get("blocked"), rep["probes"])
    assert all(r["trained_calls"] > 0 for r in rep["runs"])  # TTT trained on validation chunks after scoring them


@sandboxed
def test_honest_entry_with_score_first_ttt_passes():
    rep = audit(ENTRY, {**SMALL, "LEAK": "legal_ttt"}, **FAST)
    assert rep["verdict"] == "pass", (rep.get("blocked"), rep["probes"])
    assert exit_code(rep) == EXIT_PASS
    assert set(statuses(rep)) == {"future-suffix invariance", "self-influence (answer mask)", "score coverage",
                                  "scored once"}
    assert all(r["trained_calls"] > 0 for r in rep["runs"])  # the TTT steps were seen, and not taken for scores


@sandboxed
@pytest.mark.parametrize("leak, caught_by", [
    ("adapt", ["future-suffix invariance", "self-influence (answer mask)"]),
    ("cache", ["future-suffix invariance", "self-influence (answer mask)"]),
    ("slot", ["future-suffix invariance", "self-influence (answer mask)"]),
    ("valtrain", ["future-suffix invariance"]),
])
def test_each_violation_is_caught(leak, caught_by):
    rep = audit(ENTRY, {**SMALL, "LEAK": leak}, **FAST)
    assert rep["verdict"] == "fail" and exit_code(rep) == EXIT_FAIL, (rep.get("blocked"), rep["probes"])
    st = statuses(rep)
    for probe in caught_by:
        assert st[probe] == "fail", (probe, rep["probes"])
    fs = next(p for p in rep["probes"] if p["probe"] == "future-suffix invariance")
    if fs["status"] == "fail":
        assert fs["positions"] and fs["effect"] > 1e-4


@sandboxed
def test_sandbox_keeps_the_entry_off_the_network_and_the_file_system(tmp_path):
    marker = tmp_path / "escaped.txt"
    keep = tmp_path / "kept"
    rep = audit(ESCAPE, {"ESCAPE": "net,write", "ESCAPE_TARGET": str(marker)}, answers=1, keep=keep,
                limits=Limits(wall_s=120, cpu_s=240))
    log = (keep / "runs" / "base.log").read_text()
    assert "escape:net 127.0.0.1 blocked" in log and "escape:net 1.1.1.1 blocked" in log, log
    assert f"escape:write {marker} blocked" in log, log
    assert not marker.exists()
    assert rep["verdict"] == "incomplete" and exit_code(rep) == EXIT_INCOMPLETE


@sandboxed
def test_wall_clock_limit_stops_a_hanging_entry():
    rep = audit(ESCAPE, {"ESCAPE": "hang"}, answers=1, limits=Limits(wall_s=8, cpu_s=60))
    assert rep["verdict"] == "incomplete" and "wall-clock limit" in rep["blocked"]


# ---- command line ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["run", str(RUN_DIR / "missing.py")], "no such file"),
    (["run", str(RUN_DIR)], None),  # a folder whose script is found: not a usage error (not run here)
    (["run", str(ENTRY), "--set", "NOEQUALS"], "is not NAME=VALUE"),
    (["run", str(ENTRY), "--timeout", "0"], "--timeout"),
    (["run", str(ENTRY), "--answers", "0"], "--answers"),
    (["run", str(ROOT / "README.md")], "not a Python script"),
])
def test_run_refuses_bad_arguments(argv, message, capsys):
    if message is None:
        from compliance.run import resolve_script
        assert resolve_script(RUN_DIR).name in ("tiny_entry.py",)
        return
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
