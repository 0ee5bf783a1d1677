"""Tests of ablations/: statistics, report, plots, grid parsing, the resumable runner.

The runner's end-to-end tests use a tiny fake training script written here (it follows the
contract's logs/<RUN_ID>.json); one test runs the real train_gpt.py and skips when it or the
data is absent.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from ablations import report
from ablations.cli import main as cli_main
from ablations.grid import GridError, load_grid, parse_grid
from ablations.runner import RESULT_COLUMNS, match_model_dim, resolve_matches, run_grid

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "ablations" / "grids"


# ---------------------------------------------------------------- statistics

# The statistics themselves (Welch, paired, the record test) are kitlib.stats, tested in test_kitlib.py; here: that
# the report applies them to the right columns, in the right direction.


# ---------------------------------------------------------------- report

HAND_CSV = """\
size,cfg,s,loss,nats,params
small,base,1,1.30,2.20,100
small,base,2,1.32,2.23,100
small,base,3,1.31,2.21,100
small,new,1,1.28,2.17,120
small,new,2,1.29,2.19,120
small,new,3,1.27,2.16,120
large,base,1,1.20,2.03,400
large,base,2,1.21,2.05,400
large,new,1,1.19,2.01,450
large,new,2,1.17,1.98,450
large,new,3,,,450
"""


@pytest.fixture
def hand_csv(tmp_path):
    p = tmp_path / "hand.csv"
    p.write_text(HAND_CSV)
    return p


def _report(capsys, *args):
    rc = cli_main(["report", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_report_json_on_hand_csv(hand_csv, capsys):
    rc, out, err = _report(capsys, hand_csv, "--metric", "loss", "--control", "base", "--group", "size",
                           "--config-column", "cfg", "--seed-column", "s", "--json", "--record-test",
                           "--record-column", "nats")
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["group"], r["config"]) for r in rows] == [("small", "base"), ("small", "new"),
                                                          ("large", "base"), ("large", "new")]
    for r in rows:
        assert {"group", "config", "control", "n", "mean", "std", "control_mean", "delta", "welch_t", "welch_df",
                "welch_p", "paired_p"} <= set(r)
    small_new = rows[1]
    a, b = [1.28, 1.29, 1.27], [1.30, 1.32, 1.31]
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert small_new["n"] == 3
    assert small_new["mean"] == pytest.approx(np.mean(a))
    assert small_new["std"] == pytest.approx(np.std(a, ddof=1))
    assert small_new["control_mean"] == pytest.approx(np.mean(b))
    assert small_new["delta"] == pytest.approx(np.mean(a) - np.mean(b))
    assert small_new["welch_t"] == pytest.approx(float(ref.statistic))
    assert small_new["welch_df"] == pytest.approx(float(ref.df))
    assert small_new["welch_p"] == pytest.approx(float(ref.pvalue))
    assert small_new["paired_p"] == pytest.approx(float(sps.ttest_rel(a, b).pvalue))
    # the record test: the configuration's per-seed nats against the control's minus 0.005, one-sided Welch
    rec = sps.ttest_ind([2.17, 2.19, 2.16], np.array([2.20, 2.23, 2.21]) - 0.005, equal_var=False, alternative="less")
    r = small_new["record"]
    assert r["test"] == "welch" and r["p_value"] == pytest.approx(float(rec.pvalue), rel=1e-9)
    assert r["t"] == pytest.approx(float(rec.statistic), rel=1e-9) and r["t"] < 0
    assert r["improvement_nats"] == pytest.approx(np.mean([2.20, 2.23, 2.21]) - np.mean([2.17, 2.19, 2.16]))
    assert r["meets_record_bar"] is False and rows[0]["record"] is None  # p = 0.024: not below 0.01
    # large: the empty row is skipped; seeds {1,2} vs {1,2} pair up
    large_new = rows[3]
    assert large_new["n"] == 2 and large_new["paired_p"] is not None
    assert "skipped" in err
    base = rows[0]
    assert base["delta"] == 0.0 and base["welch_p"] is None


def test_report_markdown_and_defaults(tmp_path, capsys):
    p = tmp_path / "r.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "config", "seed", "val_bpb", "val_loss"])
        for cfg, off in (("control", 0.0), ("ga", -0.01), ("vr", -0.004)):
            for seed, e in ((1, 0.0005), (2, -0.0008), (3, 0.0004)):
                w.writerow(["", cfg, seed, 1.25 + off + e, 2.1 + off + e])
    rc, out, err = _report(capsys, p, "--record-test")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("metric: val_bpb; control: control")
    assert lines[2].startswith("| config | n | mean |")  # no group column for an empty group
    body = [ln for ln in lines if ln.startswith("| ga") or ln.startswith("| control") or ln.startswith("| vr")]
    assert len(body) == 3
    assert "control (control)" in body[0]
    assert "-0.010000" in body[1]
    assert body[1].rstrip(" |").endswith("pass")  # 0.01 nats better with tiny noise
    assert body[2].rstrip(" |").endswith("fail")  # 0.004 < 0.005 margin


@pytest.mark.parametrize("args, message", [
    (["--metric", "nope"], "missing metric column 'nope'"),
    (["--control", "zzz"], "unknown control 'zzz'"),
    (["--seed-column", "seed"], "missing seed column 'seed'"),
    (["--group", "nogroup"], "missing group column 'nogroup'"),
])
def test_report_errors(hand_csv, capsys, args, message):
    base = ["--metric", "loss", "--config-column", "cfg", "--seed-column", "s"]
    merged = base + args
    rc, out, err = _report(capsys, hand_csv, *merged)
    assert rc == 2
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and message in errors[0]


def test_report_bad_csv(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("config,seed,val_bpb\ncontrol,1,1.2\ncontrol,2,abc\n")
    rc, _, err = _report(capsys, bad)
    assert rc == 2 and "row 3" in err and "'abc' is not a number" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    rc, _, err = _report(capsys, empty)
    assert rc == 2 and "bad CSV" in err
    rc, _, err = _report(capsys, tmp_path / "missing.csv")
    assert rc == 2 and "not found" in err


def test_report_module_entry_point(hand_csv):
    r = subprocess.run([sys.executable, "-m", "ablations", "report", str(hand_csv), "--metric", "nope"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("ablations report: error:") and len(r.stderr.strip().splitlines()) == 1


def test_plots_written(hand_csv, tmp_path, capsys):
    out = tmp_path / "plots" / "scaling.png"
    rc, _, err = _report(capsys, hand_csv, "--metric", "loss", "--group", "size", "--config-column", "cfg",
                         "--seed-column", "s", "--plot", out, "--x", "params")
    assert rc == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flat = tmp_path / "flat.csv"
    flat.write_text("config,seed,val_bpb\ncontrol,1,1.2\ncontrol,2,1.21\nga,1,1.19\nga,2,1.195\n")
    out2 = tmp_path / "bars.png"
    rc, _, err = _report(capsys, flat, "--plot", out2)
    assert rc == 0, err
    assert out2.stat().st_size > 1000


# ---------------------------------------------------------------- grid parsing

GOOD = {"seeds": [1, 2], "budget": {"ITERATIONS": 5}, "configs": {"control": {}, "ga": {"GATED_ATTENTION": 1}}}


def test_grid_expansion_and_precedence():
    g = parse_grid({**GOOD, "base": {"NUM_LAYERS": 4, "LR": 0.5, "FLAG": True},
                    "groups": {"small": {"MODEL_DIM": 64}, "big": {"MODEL_DIM": 128, "ITERATIONS": 9}}}, name="t")
    runs = g.runs()
    assert len(runs) == 2 * 2 * 2
    assert [r.run_id for r in runs[:4]] == ["t_small_control_s1", "t_small_ga_s1", "t_small_control_s2",
                                            "t_small_ga_s2"]
    r = runs[-1]
    assert r.env == {"NUM_LAYERS": "4", "LR": "0.5", "FLAG": "1", "ITERATIONS": "9", "MODEL_DIM": "128",
                     "GATED_ATTENTION": "1"}
    assert parse_grid(GOOD).runs()[0].run_id == "grid_control_s1"


@pytest.mark.parametrize("patch, message", [
    ({"seeds": []}, "non-empty list"),
    ({"seeds": [1, 1]}, "duplicates"),
    ({"seeds": None}, "missing 'seeds'"),
    ({"budget": None}, "missing [budget]"),
    ({"budget": {"STEPS": 3}}, "unknown key(s) STEPS"),
    ({"budget": {"ITERATIONS": 0}}, "positive number"),
    ({"configs": {}}, "[configs] is empty"),
    ({"configs": {"control": {"num_layers": 2}}}, "not an environment variable name"),
    ({"configs": {"control": {"SEED": 2}}}, "set by the runner"),
    ({"configs": {"control": {"X": [1, 2]}}}, "must be a string, number or boolean"),
    ({"configs": {"bad name": {}}}, "names may use"),
    ({"configs": {"a": {"MATCH_PARAMS_OF": "zz"}}}, "is not a configuration"),
    ({"configs": {"a": {"MATCH_PARAMS_OF": "a"}}}, "names itself"),
    ({"configs": {"a": {}, "b": {"MATCH_PARAMS_OF": "a"}, "c": {"MATCH_PARAMS_OF": "b"}}}, "itself parameter-matched"),
    ({"base": {"ITERATIONS": 3}}, "belongs in [budget]"),
    ({"groups": {"g": {"MATCH_PARAMS_OF": "control"}}}, "only allowed in a configuration"),
    ({"nproc": 0}, "'nproc' must be a positive integer"),
    ({"extra": 1}, "unknown top-level key(s) extra"),
])
def test_grid_errors(patch, message):
    data = {**GOOD, **patch}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(GridError) as e:
        parse_grid(data)
    assert message in str(e.value)


def test_grid_file_errors(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("seeds = [1,\n")
    with pytest.raises(GridError, match="TOML syntax error"):
        load_grid(p)
    assert cli_main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "ablations run: error:" in capsys.readouterr().err
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "none.toml")


def test_shipped_grids_parse():
    names = sorted(p.name for p in GRIDS.glob("*.toml"))
    for need in ("seed_table.toml", "review_scaling.toml", "ppmc.toml"):
        assert need in names
    for p in GRIDS.glob("*.toml"):
        g = load_grid(p)
        assert len(g.seeds) >= 3 and g.runs()
    st = load_grid(GRIDS / "seed_table.toml")
    assert list(st.configs) == ["control", "ga", "vr", "ga_vr"]
    rs = load_grid(GRIDS / "review_scaling.toml")
    assert len(rs.groups) >= 2
    assert {rs.match_target(c) for c in rs.configs} == {None, "review"}


# ---------------------------------------------------------------- fake training script

FAKE = textwrap.dedent('''
    """Fake train_gpt.py for the runner tests: follows the contract's logs/<RUN_ID>.json."""
    import hashlib, json, os, sys, time
    from pathlib import Path

    class Hyperparameters:
        def __init__(self, env):
            self.model_dim = int(env.get("MODEL_DIM", 64))
            self.num_heads = int(env.get("NUM_HEADS", 4))
            self.num_layers = int(env.get("NUM_LAYERS", 2))

        @classmethod
        def from_env(cls, env):
            return cls(env)

    def count_params(env):
        h = Hyperparameters.from_env(env)
        d, L = h.model_dim, h.num_layers
        if (d // h.num_heads) % 2 or d % h.num_heads:
            raise ValueError("head dim must be even")
        n = 1024 * d + L * 12 * d * d
        if env.get("REVIEW_RESIDUAL") == "1":
            n += L * 2 * (2 * d * d + d)
        if env.get("HIGHWAY") == "1":
            n += L * 2 * (d * d + d)
        return n

    def main():
        env = os.environ
        rid, seed = env["RUN_ID"], int(env["SEED"])
        rank = int(env.get("RANK", "0"))
        if env.get("FAKE_LEDGER"):
            with open(env["FAKE_LEDGER"], "a") as f:
                f.write(rid + ("" if rank == 0 else f"@rank{rank}") + "\\n")
        if rank != 0:
            return
        if env.get("FAKE_PIDS"):
            with open(env["FAKE_PIDS"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        Path("logs").mkdir(exist_ok=True)
        log = open(f"logs/{rid}.txt", "w")
        def say(s):
            print(s, flush=True)
            log.write(s + "\\n"); log.flush()
        say(f"run_id:{rid}")
        code = Path(__file__).read_bytes()
        sha = hashlib.sha256(code).hexdigest()
        say(f"code_sha256:{sha} code_bytes:{len(code)}")
        n = count_params(env)
        say(f"model_params:{n}")
        if env.get("FAKE_SLEEP_ON") == rid:
            time.sleep(float(env.get("FAKE_SLEEP", "60")))
        if env.get("FAKE_FAIL") == rid:
            raise RuntimeError("fake failure for " + rid)
        iters = int(env.get("ITERATIONS", "3"))
        for s in range(1, iters + 1):
            say(f"step:{s}/{iters} train_loss:{3.0 - s * 0.1:.4f} train_time:{s}ms step_avg:1.00ms")
        noise = (seed % 7) * 0.001
        bpb = 1.30 + noise - (0.02 if env.get("GATED_ATTENTION") == "1" else 0.0)
        loss = bpb * 1.7
        scores = {"float_sliding_window": {"val_loss": loss - 0.01, "val_bpb": bpb - 0.005},
                  "sliding_window": {"val_loss": loss, "val_bpb": bpb}}
        say(f"final_int6_sliding_window_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}")
        js = {"run_id": rid, "seed": seed, "code_sha256": sha, "code_bytes": len(code), "model_bytes": 1000,
              "artifact_bytes": 1000 + len(code), "artifact_path": f"artifacts/{rid}.ptz", "over_budget": False,
              "config": {"MODEL_DIM": int(env.get("MODEL_DIM", 64)), "SEED": seed}, "world_size": 1,
              "device": "cpu", "gpu_name": "none", "num_params": n, "steps": iters, "iterations": iters,
              "stopped_early": False, "train_time_ms": 12.5, "step_avg_ms": 1.0, "tokens_per_step": 2048,
              "eval_phases_ms": {"float_sliding_window": 3.0, "sliding_window": 4.0}, "eval_time_ms": 4.0,
              "scores": scores, "final": {"metric": "sliding_window", "line": "final_int6_sliding_window_exact",
                                           "val_loss": loss, "val_bpb": bpb},
              "unigram_val_bpb": 3.0, "status": "complete"}
        tmp = f"logs/{rid}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(js, f)
        os.replace(tmp, f"logs/{rid}.json")

    if __name__ == "__main__":
        main()
''')

TINY_GRID = """\
name = "tiny"
seeds = [1, 2]
[budget]
ITERATIONS = 3
[base]
NUM_LAYERS = 2
[configs]
control = {}
ga = {GATED_ATTENTION = 1}
"""


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_train_gpt.py"
    script.write_text(FAKE)
    grid = tmp_path / "tiny.toml"
    grid.write_text(TINY_GRID)
    return script, grid


def _ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_run_fail_then_resume(fake, tmp_path, monkeypatch):
    script, grid = fake
    out = tmp_path / "out"
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("FAKE_FAIL", "tiny_ga_s1")
    msgs = []
    rc = run_grid(grid, out_dir=out, script=script, log=msgs.append)
    assert rc == 1
    assert _ledger(ledger) == ["tiny_control_s1", "tiny_ga_s1", "tiny_control_s2", "tiny_ga_s2"]
    failed = out / "logs" / "tiny_ga_s1.failed-1.txt"
    assert failed.is_file() and "fake failure for tiny_ga_s1" in failed.read_text()
    assert not (out / "logs" / "tiny_ga_s1.json").exists()
    rows = _rows(out / "results.csv")
    assert [r["run_id"] for r in rows] == ["tiny_control_s1", "tiny_control_s2", "tiny_ga_s2"]
    assert (out / "grid.toml").read_text() == TINY_GRID
    assert any(m.startswith("[ablations] 1/4 done, 1 failed; now tiny_control_s2 (3 of 4 to run)") and "ETA" in m
               for m in msgs), msgs
    assert any("FAILED tiny_ga_s1 (exit status 1: RuntimeError: fake failure for tiny_ga_s1)" in m for m in msgs), msgs

    monkeypatch.delenv("FAKE_FAIL")
    rc = run_grid(grid, out_dir=out, script=script, log=msgs.append)
    assert rc == 0
    assert _ledger(ledger)[4:] == ["tiny_ga_s1"]  # only the failed run reran
    rows = _rows(out / "results.csv")
    assert len(rows) == 4 and list(rows[0]) == RESULT_COLUMNS
    r = {x["run_id"]: x for x in rows}["tiny_ga_s1"]
    assert float(r["val_bpb"]) == pytest.approx(1.30 + 0.001 - 0.02)
    assert float(r["sw_val_bpb"]) == pytest.approx(float(r["val_bpb"]))
    assert float(r["float_val_bpb"]) == pytest.approx(float(r["val_bpb"]) - 0.005)
    assert r["steps"] == "3" and r["num_params"] and len(r["code_sha256"]) == 64
    assert r["log_path"] == "logs/tiny_ga_s1.txt" and (out / r["log_path"]).is_file()
    assert float(r["train_seconds"]) == pytest.approx(0.0125)
    assert json.loads(r["overrides"])["GATED_ATTENTION"] == "1"

    # a third call does nothing
    rc = run_grid(grid, out_dir=out, script=script, log=msgs.append)
    assert rc == 0 and len(_ledger(ledger)) == 5

    # the report reads the runner's CSV
    table = report.read_csv(out / "results.csv")
    summary = report.summarize(table, metric="val_bpb")
    assert [s["config"] for s in summary] == ["control", "ga"]
    assert summary[1]["delta"] == pytest.approx(-0.02)


def test_run_recovers_and_reruns_stale(fake, tmp_path, monkeypatch):
    script, grid = fake
    out = tmp_path / "out"
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    assert run_grid(grid, out_dir=out, script=script, log=lambda m: None) == 0
    rows = _rows(out / "results.csv")
    # lose one row (runner killed after the run) and one JSON (row without a finished run)
    from ablations.runner import write_results
    write_results(out / "results.csv", [r for r in rows if r["run_id"] != "tiny_control_s2"])
    (out / "logs" / "tiny_ga_s2.json").unlink()
    assert run_grid(grid, out_dir=out, script=script, log=lambda m: None) == 0
    assert _ledger(ledger)[4:] == ["tiny_ga_s2"]
    rows = _rows(out / "results.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(
        ["tiny_control_s1", "tiny_ga_s1", "tiny_control_s2", "tiny_ga_s2"])
    # a different grid in the same directory is refused
    grid2 = tmp_path / "tiny.toml"
    grid2.write_text(TINY_GRID.replace("ITERATIONS = 3", "ITERATIONS = 4"))
    assert cli_main(["run", str(grid2), "--out", str(out), "--script", str(script)]) == 2


def test_run_interrupted_and_resumed(fake, tmp_path):
    script, grid = fake
    out = tmp_path / "out"
    ledger = tmp_path / "ledger.txt"
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "FAKE_LEDGER": str(ledger), "FAKE_PIDS": str(pids), "FAKE_SLEEP_ON": "tiny_control_s2",
           "FAKE_SLEEP": "120", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ablations", "run", str(grid), "--out", str(out), "--script", str(script)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while len(_ledger(ledger)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert _ledger(ledger) == ["tiny_control_s1", "tiny_ga_s1", "tiny_control_s2"]
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out_text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out_text
    assert "interrupted" in out_text
    child = int(pids.read_text().split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the training process was ended with the runner
    assert len(_rows(out / "results.csv")) == 2
    kept = out / "logs" / "tiny_control_s2.failed-1.txt"
    assert kept.is_file() and "interrupted" in kept.read_text()

    env.pop("FAKE_SLEEP_ON")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _ledger(ledger)[3:] == ["tiny_control_s2", "tiny_ga_s2"]  # finished runs were not redone
    rows = _rows(out / "results.csv")
    assert [x["run_id"] for x in rows] == ["tiny_control_s1", "tiny_ga_s1", "tiny_control_s2", "tiny_ga_s2"]
    assert "2 already done" in r.stderr


def test_run_torchrun_nproc2(fake, tmp_path, monkeypatch):
    script, _ = fake
    g = tmp_path / "two.toml"
    g.write_text('seeds = [5]\nnproc = 2\n[budget]\nITERATIONS = 2\n[configs]\ncontrol = {}\n')
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    msgs = []
    assert run_grid(g, out_dir=tmp_path / "out", script=script, log=msgs.append) == 0, msgs
    assert sorted(_ledger(ledger)) == ["two_control_s5", "two_control_s5@rank1"]
    console = (tmp_path / "out" / "logs" / "two_control_s5.console.txt").read_text()
    assert "torch.distributed.run --standalone --nproc_per_node=2" in console


def test_run_timeout_counts_as_failed(fake, tmp_path, monkeypatch):
    script, grid = fake
    monkeypatch.setenv("FAKE_SLEEP_ON", "tiny_ga_s1")
    monkeypatch.setenv("FAKE_SLEEP", "30")
    out = tmp_path / "out"
    msgs = []
    t0 = time.time()
    rc = run_grid(grid, out_dir=out, script=script, log=msgs.append, run_timeout=1.5)
    assert rc == 1 and time.time() - t0 < 20
    assert any("FAILED tiny_ga_s1 (timed out after 1.5 s)" in m for m in msgs), msgs
    assert "per-run timeout" in (out / "logs" / "tiny_ga_s1.failed-1.txt").read_text()
    assert len(_rows(out / "results.csv")) == 3


MATCH_GRID = """\
name = "rs"
seeds = [7]
[budget]
ITERATIONS = 2
[base]
NUM_LAYERS = 2
NUM_HEADS = 4
MODEL_DIM = 64
[configs]
review = {REVIEW_RESIDUAL = 1}
highway = {HIGHWAY = 1, MATCH_PARAMS_OF = "review"}
plain = {MATCH_PARAMS_OF = "review"}
[groups]
d64 = {MODEL_DIM = 64}
d96 = {MODEL_DIM = 96}
"""


def test_param_matching(fake, tmp_path):
    script, _ = fake
    ns = {}
    exec(compile(FAKE, "fake", "exec"), ns)
    count = ns["count_params"]
    g = tmp_path / "rs.toml"
    g.write_text(MATCH_GRID)
    grid = load_grid(g)
    runs = grid.runs()
    resolve_matches(grid, runs, script, log=lambda m: None)
    for r in runs:
        if r.config == "review":
            assert "MODEL_DIM" in r.env and r.matched_to is None
            continue
        target = count({**r.env, "MODEL_DIM": grid.groups[r.group]["MODEL_DIM"], "REVIEW_RESIDUAL": "1",
                        "HIGHWAY": "0"})
        d = int(r.env["MODEL_DIM"])
        assert r.matched_to == "review" and r.match_target_params == target
        assert d % 4 == 0 and (d // 4) % 2 == 0
        assert count(r.env) >= target
        # no smaller valid width (multiple of the heads) reaches the target
        for smaller in range(4, d, 4):
            try:
                assert count({**r.env, "MODEL_DIM": str(smaller)}) < target
            except ValueError:
                pass
        assert d > int(grid.groups[r.group]["MODEL_DIM"])
    # the search also narrows when the start is already wider than needed
    dim, n = match_model_dim(count, {"NUM_LAYERS": "2", "NUM_HEADS": "4"}, count({"MODEL_DIM": "64"}), 4, 256)
    assert dim == 64 and n == count({"MODEL_DIM": "64"})
    # the rows record the chosen width
    out = tmp_path / "out"
    assert run_grid(g, out_dir=out, script=script, log=lambda m: None) == 0
    rows = {r["run_id"]: r for r in _rows(out / "results.csv")}
    hw = rows["rs_d96_highway_s7"]
    assert hw["matched_to"] == "review" and int(hw["model_dim"]) > 96
    assert int(hw["num_params"]) >= int(hw["match_target_params"]) == int(rows["rs_d96_review_s7"]["num_params"])


def test_dry_run_lists_runs(fake, tmp_path, capsys):
    script, grid = fake
    rc = cli_main(["run", str(grid), "--dry-run", "--script", str(script), "--out", str(tmp_path / "o")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "4 runs" in err and "tiny_ga_s2: NUM_LAYERS=2 ITERATIONS=3 GATED_ATTENTION=1" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the real train_gpt.py

REAL_SCRIPT = REPO / "train_gpt.py"


def test_real_train_gpt_tiny_run(tmp_path, short_dataset):
    DATA, TOKENIZER = short_dataset  # the embedded corpus, built once per session by conftest
    g = tmp_path / "real.toml"
    g.write_text(textwrap.dedent(f"""\
        name = "real"
        seeds = [1337]
        [budget]
        ITERATIONS = 3
        MAX_WALLCLOCK_SECONDS = 0
        [base]
        WARMUP_STEPS = 0
        WARMDOWN_ITERS = 2
        TRAIN_LOG_EVERY = 1
        EVAL_BATCH_SEQS = 256
        FLOAT_EVAL = 0
        NUM_LAYERS = 2
        MODEL_DIM = 64
        NUM_HEADS = 4
        NUM_KV_HEADS = 2
        TRAIN_BATCH_TOKENS = 2048
        TRAIN_SEQ_LEN = 64
        EVAL_SEQ_LEN = 64
        EVAL_STRIDE = 32
        VAL_LOSS_EVERY = 0
        DATA_PATH = "{DATA}"
        TOKENIZER_PATH = "{TOKENIZER}"
        [configs]
        control = {{}}
        """))
    out = tmp_path / "out"
    msgs = []
    rc = run_grid(g, out_dir=out, script=REAL_SCRIPT, log=msgs.append)
    if rc != 0:
        logs = sorted((out / "logs").glob("*.failed-*.txt"))
        pytest.fail("real run failed:\n" + (logs[-1].read_text()[-3000:] if logs else "\n".join(msgs)))
    (row,) = _rows(out / "results.csv")
    assert float(row["val_bpb"]) > 0 and float(row["val_loss"]) > 0
    assert int(row["steps"]) == 3 and int(row["num_params"]) > 0 and int(row["artifact_bytes"]) > 0
    assert len(row["code_sha256"]) == 64
    assert (out / "logs" / "real_control_s1337.txt").is_file()


def test_real_count_params_matching(tmp_path):
    g = tmp_path / "m.toml"
    g.write_text(MATCH_GRID)
    grid = load_grid(g)
    runs = grid.runs()
    resolve_matches(grid, runs, REAL_SCRIPT, log=lambda m: None)
    from ablations.runner import import_script, param_match
    tg = import_script(REAL_SCRIPT)
    for r in runs:
        if r.matched_to:
            assert r.matched_params >= r.match_target_params
            assert int(r.env["MODEL_DIM"]) >= int(grid.groups[r.group]["MODEL_DIM"])
            env = {k: v for k, v in grid.overrides(r.group, "review").items()}  # `ablations match` agrees
            assert int(r.env["MODEL_DIM"]) == param_match(tg, env)[r.config]["MODEL_DIM"]


def test_match_cli():
    """`python -m ablations match KEY=VAL ...` prints the matched widths as JSON; a bad setting is one error line."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "ablations", "match", *args, "--script", str(REAL_SCRIPT)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    proc = run("NUM_LAYERS=2", "MODEL_DIM=64", "NUM_HEADS=4", "NUM_KV_HEADS=2", "REVIEW_GATE=scalar")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["review"]["MODEL_DIM"] == 64 and out["highway"]["MODEL_DIM"] == out["plain"]["MODEL_DIM"] == 72
    assert out["plain"]["params"] >= out["review"]["params"] <= out["highway"]["params"]
    proc = run("NUM_LAYERS=x")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "NUM_LAYERS='x' is not a valid int" in proc.stderr


@pytest.mark.parametrize("name", ["seed_table", "ppmc", "review_scaling", "ttt"])
def test_committed_results_are_what_the_report_says(name):
    """ablations/results/NAME.md is exactly what `python -m ablations report` prints for the committed NAME.csv
    (with the control and record test named in its first line), and the README quotes its table unchanged."""
    folder = REPO / "ablations" / "results"
    md = (folder / f"{name}.md").read_text()
    head = md.splitlines()[0]
    args = [str(folder / f"{name}.csv"), "--control", head.split("control: ")[1].split(";")[0]]
    if "record test" in head:
        args.append("--record-test")
    proc = subprocess.run([sys.executable, "-m", "ablations", "report", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == md
    table = md.split("\n\n", 1)[1].strip()
    assert table in (REPO / "README.md").read_text()  # the README quotes it as it is


# ---------------------------------------------------------------- results.csv: whole rows, verified on resume

def _finished(fake, tmp_path, monkeypatch):
    script, grid = fake
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_LEDGER", str(tmp_path / "ledger.txt"))
    assert run_grid(grid, out_dir=out, script=script, log=lambda m: None) == 0
    return script, grid, out, (out / "results.csv").read_text()


def _cut(text, run_id):
    """The file as the old appending runner left it when killed inside `run_id`'s row (then one more append)."""
    head, tail = text.split(run_id, 1)
    return head + run_id[:6]


@pytest.mark.parametrize("damage, dropped", [
    # a row cut inside its run id (no end of line)
    (lambda t, rows: _cut(t, "tiny_ga_s2"), ["cut off"]),
    # the old appender's failure: a cut row with the next row glued onto it
    (lambda t, rows: _cut(t, "tiny_ga_s2") + t.splitlines(True)[-1], ["fields where the header has"]),
    # a row whose score is not its run's
    (lambda t, rows: t.replace(rows[1]["val_bpb"], "1.0"), ["but logs/tiny_ga_s1.json says"]),
    # a row repeated
    (lambda t, rows: t + t.splitlines(True)[1], ["a second row for the same run"]),
    # NUL bytes and a row of another run under this run's key
    (lambda t, rows: t.replace("tiny_control_s2,", "tiny_control_s9,", 1) + "\x00\x00\n", ["is not the planned",
                                                                                           "fields where"]),
])
def test_resume_verifies_every_row(fake, tmp_path, monkeypatch, damage, dropped):
    """A damaged results.csv is repaired on resume from the runs' JSON, without rerunning finished runs; every
    dropped line is named; the report then reads the file."""
    script, grid, out, text = _finished(fake, tmp_path, monkeypatch)
    good = _rows(out / "results.csv")
    (out / "results.csv").write_text(damage(text, good))
    msgs = []
    assert run_grid(grid, out_dir=out, script=script, log=msgs.append) == 0
    assert len(_ledger(tmp_path / "ledger.txt")) == 4, "a finished run was redone"
    for d in dropped:
        assert any("results.csv line" in m and d in m and "dropped" in m for m in msgs), (d, msgs)
    rows = _rows(out / "results.csv")
    assert sorted((r["run_id"], r["val_bpb"]) for r in rows) == sorted((r["run_id"], r["val_bpb"]) for r in good)
    assert (out / "results.csv").read_text().endswith("\n") and list(rows[0]) == RESULT_COLUMNS
    summary = report.summarize(report.read_csv(out / "results.csv"), metric="val_bpb", warn=pytest.fail)
    assert [s["n"] for s in summary] == [2, 2]


def test_runner_killed_with_sigkill_resumes_and_verifies(fake, tmp_path, gone):
    """kill -9 of the runner in the middle of a run: the training process dies with it, results.csv holds whole
    rows only, and the next run redoes only the interrupted run."""
    script, grid = fake
    out, ledger, pids = tmp_path / "out", tmp_path / "ledger.txt", tmp_path / "pids.txt"
    env = {**os.environ, "FAKE_LEDGER": str(ledger), "FAKE_PIDS": str(pids), "FAKE_SLEEP_ON": "tiny_control_s2",
           "FAKE_SLEEP": "120", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ablations", "run", str(grid), "--out", str(out), "--script", str(script)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(_ledger(ledger)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert _ledger(ledger) == ["tiny_control_s1", "tiny_ga_s1", "tiny_control_s2"]
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    child = int(pids.read_text().split()[-1])
    assert gone(child), "the training process outlived the killed runner (it gets SIGTERM when its parent dies)"
    assert [r["run_id"] for r in _rows(out / "results.csv")] == ["tiny_control_s1", "tiny_ga_s1"]
    assert not list(out.glob(".results.csv.*"))
    env.pop("FAKE_SLEEP_ON")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _ledger(ledger)[3:] == ["tiny_control_s2", "tiny_ga_s2"]
    assert [x["run_id"] for x in _rows(out / "results.csv")] == [
        "tiny_control_s1", "tiny_ga_s1", "tiny_control_s2", "tiny_ga_s2"]


# ---------------------------------------------------------------- bad input: one line, exit 2, before any work

def _grid_file(tmp_path, text):
    p = tmp_path / "g.toml"
    p.write_text(text)
    return p


def _a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x\n")
    return f


# (id, argv after `run` given tmp_path and the fake script/grid, expected text of the one stderr line)
RUN_BAD = [
    ("python-missing", lambda t, s, g: [g, "--script", s, "--python", "/nonexistent/python"],
     "ablations run: error: --python /nonexistent/python: no such executable"),
    ("python-not-python", lambda t, s, g: [g, "--script", s, "--python", "/bin/true"],
     "ablations run: error: --python /bin/true is not a Python 3 interpreter"),
    ("out-is-a-file", lambda t, s, g: [g, "--script", s, "--out", _a_file(t)],
     "ablations run: error: --out"),
    ("out-under-a-file", lambda t, s, g: [g, "--script", s, "--out", _a_file(t) / "sub"],
     "is not a folder"),
    ("script-missing", lambda t, s, g: [g, "--script", t / "nope.py"], "training script not found"),
    ("script-broken", lambda t, s, g: [g, "--script", _a_file(t)],
     "ablations run: error: training script: importing"),
    ("grid-missing", lambda t, s, g: [t / "nope.toml", "--script", s], "grid file not found"),
    ("grid-not-toml", lambda t, s, g: [_grid_file(t, "seeds = [1,"), "--script", s], "TOML syntax error"),
    ("max-runs-0", lambda t, s, g: [g, "--script", s, "--max-runs", "0"], "--max-runs 0 must be at least 1"),
    ("timeout-0", lambda t, s, g: [g, "--script", s, "--timeout", "0"], "--timeout 0.0 must be a positive"),
    ("timeout-nan", lambda t, s, g: [g, "--script", s, "--timeout", "nan"], "--timeout nan must be a positive"),
    ("max-runs-text", lambda t, s, g: [g, "--script", s, "--max-runs", "two"],
     "ablations run: error: argument --max-runs: invalid int value: 'two'"),
    ("nproc-3-real-script", lambda t, s, g: [_grid_file(t, TINY_GRID.replace("seeds", "nproc = 3\nseeds")),
                                             "--script", REAL_SCRIPT],
     "tiny_control_s1 (nproc 3): the training script refuses this configuration: WORLD_SIZE=3 must divide 8"),
    ("bad-setting-real-script", lambda t, s, g: [_grid_file(t, TINY_GRID.replace("ga = {GATED_ATTENTION = 1}",
                                                                                 "ga = {NUM_HEADS = 3}")),
                                                 "--script", REAL_SCRIPT],
     "tiny_ga_s1 (nproc 1): the training script refuses this configuration: MODEL_DIM=512, NUM_HEADS=3"),
]


@pytest.mark.parametrize("argv", [row[1] for row in RUN_BAD], ids=[row[0] for row in RUN_BAD])
def test_run_bad_input_is_one_line_before_any_work(fake, tmp_path, capsys, monkeypatch, argv):
    script, grid = fake
    expected = {row[1]: row[2] for row in RUN_BAD}[argv]
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(x) for x in argv(tmp_path, script, grid)]
    made = sorted(p.name for p in tmp_path.iterdir())  # what the row itself set up
    try:
        rc = cli_main(["run", *args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expected in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == made and "runs" not in made, "bad input must create nothing"
    assert set(before) <= set(made)


REPORT_BAD = [
    ("plot-dir", lambda t: ["--plot", t], "is a folder; give a file name"),
    ("plot-no-extension", lambda t: ["--plot", t / "bars"], "no extension; give a file name ending in .png"),
    ("plot-jpeg", lambda t: ["--plot", t / "bars.jpg"], "extension .jpg; give a file name ending in .png"),
    ("plot-under-a-file", lambda t: ["--plot", _a_file(t) / "bars.png"], "is not a folder"),
    ("x-without-plot", lambda t: ["--x", "params"], "--x sets the plot's x axis: give --plot OUT.png too"),
    ("x-missing-column", lambda t: ["--plot", t / "p.png", "--x", "nope"], "missing x column 'nope'"),
]


@pytest.mark.parametrize("extra", [row[1] for row in REPORT_BAD], ids=[row[0] for row in REPORT_BAD])
def test_report_bad_input_is_one_line_before_the_table(hand_csv, tmp_path, capsys, extra):
    expected = {row[1]: row[2] for row in REPORT_BAD}[extra]
    rc, out, err = _report(capsys, hand_csv, "--metric", "loss", "--group", "size", "--config-column", "cfg",
                           "--seed-column", "s", *extra(tmp_path))
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert err.startswith("ablations report: error: ") and expected in err, err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("bars*"))


def test_report_plot_is_written_where_it_says(hand_csv, tmp_path, capsys):
    for name in ("bars.png", "bars.PDF", "bars.svg"):
        rc, _, err = _report(capsys, hand_csv, "--metric", "loss", "--group", "size", "--config-column", "cfg",
                             "--seed-column", "s", "--plot", tmp_path / name)
        assert rc == 0 and f"plot written to {tmp_path / name}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.PDF", "bars.png", "bars.svg", "hand.csv"]
    assert (tmp_path / "bars.PDF").read_bytes()[:4] == b"%PDF" and b"<svg" in (tmp_path / "bars.svg").read_bytes()


def test_report_counts_a_repeated_row_once_and_says_so(tmp_path, capsys):
    p = tmp_path / "dup.csv"
    p.write_text("config,seed,val_bpb\ncontrol,1,1.20\ncontrol,2,1.22\ncontrol,2,1.22\nga,1,1.19\nga,2,1.18\n"
                 "ga,2,1.17\n")
    rc, out, err = _report(capsys, p, "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["n"] for r in rows] == [2, 3]
    assert rows[0]["mean"] == pytest.approx(1.21)
    assert "1 row(s) repeat an earlier row exactly (line(s) 4): each counted once" in err
    assert "1 row(s) share a config and seed with an earlier row but differ (e.g. lines 6 and 7)" in err
