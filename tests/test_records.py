"""records: pack finished runs into a leaderboard folder, check folders (ours and upstream's).

Runs on the hand-made fixture logs in tests/fixtures/records/ (three 8xH100 seeds written to
CONTRACT.md's formats, produced by the stand-in kit/train_gpt.py whose sha256 they record).
Real tiny CPU runs of the kit's train_gpt.py are exercised in test_records_realrun.py.
"""
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.logparse import load_run, parse_text_log  # noqa: E402
from records import stats  # noqa: E402
from records.__main__ import main as records_main  # noqa: E402
from records.check import check_path  # noqa: E402
from records.pack import PackOptions, Refusal, pack  # noqa: E402
from records.wrap import decode_wrapper, make_wrapper  # noqa: E402

FX = Path(__file__).resolve().parent / "fixtures" / "records"
SEEDS = (42, 1337, 2025)


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def kit(tmp_path, monkeypatch):
    """A scratch kit: the stand-in script, requirements, the three fixture runs; cwd = its root."""
    root = tmp_path / "kit"
    shutil.copytree(FX / "kit", root)
    shutil.copytree(FX / "logs", root / "logs")
    monkeypatch.chdir(root)
    return root


def run_paths(root, kind="json"):
    return [str(root / "logs" / f"vr_ga_seed{s}.{kind}") for s in SEEDS]


def options(root, **over):
    base = dict(runs=run_paths(root), name="Value Residual + Gated Attention", author="Kit Tester",
                github_id="kit-tester", date="2026-05-02", script=str(root / "train_gpt.py"),
                out_root=str(root / "records"), top_json=str(root / "submission.json"),
                audit_search=[root / "no-auditor-here"])
    base.update(over)
    return PackOptions(**base)


def fake_auditor(root, report=None, crash=False):
    """A stand-in `compliance` package that prints `report` as its --json verdict."""
    pkg = root / "fakeaudit" / "compliance"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if crash:
        (pkg / "__main__.py").write_text("raise SystemExit('boom: auditor crashed')\n")
    else:
        (pkg / "__main__.py").write_text(
            "import json, sys\n"
            "assert sys.argv[1:2] == ['audit'] and '--json' in sys.argv, sys.argv\n"
            f"print(json.dumps({json.dumps(report)}))\n"
            "sys.exit(0 if json.loads(" + repr(json.dumps(report)) + ")['verdict'] == 'clean' else 1)\n")
    return pkg.parent


def written(root):
    """Everything pack may have written."""
    out = []
    if (root / "records").exists():
        out += [p for p in (root / "records").rglob("*")]
    if (root / "submission.json").exists():
        out.append(root / "submission.json")
    return out


def refuse(root, capsys, argv_extra=(), runs=None):
    """Run the CLI expecting a refusal; return its one-line reason."""
    argv = ["pack", "--name", "X", "--author", "A", "--github-id", "g", "--date", "2026-05-02",
            "--script", str(root / "train_gpt.py"), "--out-root", str(root / "records"),
            "--top-json", str(root / "submission.json"), "--skip-audit", *argv_extra,
            *(runs if runs is not None else run_paths(root))]
    rc = records_main(argv)
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("records pack: refused: "), err
    assert written(root) == [], "a refusal must write nothing"
    return lines[0]


def edit_text(path: Path, old: str, new: str, count: int = 1):
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new, count))


def text_only(root, seed):
    """Drop the JSON sibling so a hand-edited text log is the whole record of the run."""
    (root / "logs" / f"vr_ga_seed{seed}.json").unlink()
    return root / "logs" / f"vr_ga_seed{seed}.txt"


def packed(root, **over):
    res = pack(options(root, **over))
    return res, res.folder


# ---------------------------------------------------------------- the fixtures themselves

def test_fixture_logs_match_the_stand_in_script():
    sha = hashlib.sha256((FX / "kit" / "train_gpt.py").read_bytes()).hexdigest()
    for s in SEEDS:
        run = load_run(FX / "logs" / f"vr_ga_seed{s}.json")
        assert run.code_sha256 == sha, "kit/train_gpt.py was edited: regenerate the fixture logs' code_sha256"
        assert run.complete and not run.conflicts and not run.problems
        assert run.seed == s and run.world_size == 8 and run.device == "cuda"


def test_parse_contract_text_log():
    run = parse_text_log((FX / "logs" / "vr_ga_seed42.txt").read_text(), FX / "logs" / "vr_ga_seed42.txt")
    assert run.run_id == "vr_ga_seed42" and run.seed == 42
    assert run.final.metric == "final_int6_sliding_window_exact" and run.final.exact
    assert run.final.val_loss == 2.03981507 and run.final.val_bpb == 1.20494063
    assert run.pre_quant.metric == "final_float_sliding_window_exact"
    assert run.artifact_bytes == 15790795 and run.model_bytes == 15788467 and run.code_bytes == 2328
    assert run.train_time_ms == 599998 and run.steps == 13398 and run.stopped_early
    assert run.eval_time_ms == 74890 and run.gpu_name == "NVIDIA_H100_80GB_HBM3" and run.torch_version == "2.13.0+cu128"
    assert run.config["VALUE_RESIDUAL"] == 1 and run.config["SEED"] == 42


def test_parse_never_crashes_on_garbage():
    for text in ["", "\x00\xff" * 50, "final_int6_sliding_window_exact val_loss:abc val_bpb:",
                 "config:{not json", "config:[1,2]", "step:x/y train_loss:1", "Total submission size: many bytes",
                 "device:cuda gpu: world_size:", "final_x_exact val_loss:nan val_bpb:nan\n" * 3]:
        run = parse_text_log(text)
        assert run.final is None or run.final.exact


# ---------------------------------------------------------------- statistics

LOSSES = [2.03814236, 2.03981507, 2.03702995]
REF = [2.0727, 2.0719, 2.0741, 2.0733]


def test_std_is_sample_std_ddof1():
    assert stats.sample_std(LOSSES) == pytest.approx(np.std(LOSSES, ddof=1), rel=1e-12)
    assert stats.sample_std(LOSSES) != pytest.approx(np.std(LOSSES, ddof=0), rel=1e-6)
    assert stats.sample_std([1.0]) is None
    assert stats.mean(LOSSES) == pytest.approx(np.mean(LOSSES), rel=1e-15)


def test_one_sample_test_agrees_with_scipy():
    ref = 2.0427
    got = stats.ttest_1samp_less(LOSSES, ref - 0.005)
    want = sps.ttest_1samp(LOSSES, ref - 0.005, alternative="less")
    assert got["t"] == pytest.approx(want.statistic, rel=1e-10)
    assert got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert got["df"] == 2


def test_welch_test_agrees_with_scipy():
    got = stats.welch_less(LOSSES, [r - 0.005 for r in REF])
    want = sps.ttest_ind(LOSSES, np.array(REF) - 0.005, equal_var=False, alternative="less")
    assert got["t"] == pytest.approx(want.statistic, rel=1e-10)
    assert got["p"] == pytest.approx(want.pvalue, rel=1e-9)
    assert got["df"] == pytest.approx(want.df, rel=1e-10)


def test_tests_are_one_sided_below_and_degenerate_cases():
    """H1 is "mean below": an entry above the bar gets p > 0.5; the t statistic is the textbook one; no spread at
    all decides by the sign alone (scipy alone would give nan)."""
    n, m, s = len(LOSSES), np.mean(LOSSES), np.std(LOSSES, ddof=1)
    got = stats.ttest_1samp_less(LOSSES, 2.0)
    assert got["t"] == pytest.approx((m - 2.0) / (s / np.sqrt(n)), rel=1e-12) and got["p"] > 0.5
    assert stats.ttest_1samp_less(LOSSES, 2.1)["p"] < 0.01
    assert stats.ttest_1samp_less([2.0, 2.0, 2.0], 2.1) == {"t": -math.inf, "df": 2.0, "p": 0.0}
    assert stats.ttest_1samp_less([2.0, 2.0], 1.9)["p"] == 1.0
    assert stats.welch_less([2.0, 2.0], [2.1, 2.1])["p"] == 0.0
    assert stats.ttest_1samp_less([2.0], 2.1) == {"t": None, "df": None, "p": None}


def test_record_test_and_bpb_conversion():
    mean_loss, mean_bpb = stats.mean(LOSSES), 1.20406287
    ref_nats = stats.bpb_to_nats(1.2243657, mean_loss, mean_bpb)
    assert ref_nats == pytest.approx(1.2243657 * mean_loss / mean_bpb)
    r = stats.record_test(LOSSES, ref_loss=ref_nats)
    assert r["improvement_nats"] == pytest.approx(ref_nats - mean_loss)
    assert r["p_value"] == pytest.approx(sps.ttest_1samp(LOSSES, ref_nats - 0.005, alternative="less").pvalue, rel=1e-9)
    assert r["meets_record_bar"] and r["test_kind"] == "one-sample"
    # 0.003 nats better is not a record whatever the p-value
    close = stats.record_test(LOSSES, ref_loss=mean_loss + 0.003)
    assert not close["meets_record_bar"] and close["p_value"] > 0.5
    w = stats.record_test(LOSSES, ref_losses=REF)
    assert w["test_kind"] == "welch" and w["reference_val_loss"] == pytest.approx(np.mean(REF))


# ---------------------------------------------------------------- pack

def test_pack_writes_the_folder(kit, capsys):
    rc = records_main(["pack", "--name", "Value Residual + Gated Attention", "--author", "Kit Tester",
                       "--github-id", "kit-tester", "--date", "2026-05-02", "--script", "train_gpt.py",
                       "--reference-bpb", "1.2243657", "--skip-audit", *run_paths(kit)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    folder = kit / "records" / "track_10min_16mb" / "2026-05-02_Value_Residual_Gated_Attention"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "requirements.txt", "submission.json", "train_gpt.py",
        "train_seed1337.log", "train_seed2025.log", "train_seed42.log"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temp dir left behind"
    assert (folder / "train_gpt.py").read_bytes() == (kit / "train_gpt.py").read_bytes()
    assert (folder / "requirements.txt").read_bytes() == (kit / "requirements.txt").read_bytes()
    for s in SEEDS:
        assert (folder / f"train_seed{s}.log").read_bytes() == (kit / "logs" / f"vr_ga_seed{s}.txt").read_bytes()
    sub = json.loads((folder / "submission.json").read_text())
    assert (kit / "submission.json").read_bytes() == (folder / "submission.json").read_bytes()
    for key in ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total", "bytes_code",
                "track", "seeds", "seed_results", "val_bpb_std", "val_loss_mean_nats", "hardware", "pytorch_version",
                "pre_quant_val_bpb", "eval_time_seconds", "technique_summary", "compliance"):
        assert key in sub, key
    bpbs = [1.20494063, 1.20395254, 1.20329543]
    assert sub["val_bpb"] == pytest.approx(np.mean(bpbs), abs=1e-8)
    assert sub["val_loss"] == pytest.approx(np.mean(LOSSES), abs=1e-8) == sub["val_loss_mean_nats"]
    assert sub["val_bpb_std"] == pytest.approx(np.std(bpbs, ddof=1), abs=1e-8)
    assert sub["seeds"] == [42, 1337, 2025] and set(sub["seed_results"]) == {"42", "1337", "2025"}
    assert sub["seed_results"]["42"] == {**sub["seed_results"]["42"], "val_bpb": 1.20494063, "val_loss": 2.03981507,
                                         "artifact_bytes": 15790795, "steps": 13398, "step_avg_ms": 44.78}
    assert sub["bytes_code"] == (kit / "train_gpt.py").stat().st_size
    assert sub["bytes_total"] == 15791840 + sub["bytes_code"]  # the largest seed's artifact
    assert sub["track"] == "track_10min_16mb" and sub["hardware"] == "8x NVIDIA H100 80GB HBM3"
    assert sub["date"] == "2026-05-02" and sub["pytorch_version"] == "2.13.0+cu128"
    c = sub["compliance"]
    assert c["auditor_verdict"] == "not-run" and c["no_slot"] is None and c["score_first_ttt"] is None
    assert c["train_under_600s"] and c["eval_under_600s"] and c["artifact_under_16mb"] and c["three_seeds"]
    ref = sub["reference"]
    want = sps.ttest_1samp(LOSSES, 1.2243657 * np.mean(LOSSES) / np.mean(bpbs) - 0.005, alternative="less")
    assert ref["p_value"] == pytest.approx(want.pvalue, rel=1e-6) and ref["meets_record_bar"]
    readme = (folder / "README.md").read_text()
    for s in SEEDS:
        assert re.search(rf"^\| {s} \| 1\.20\d+ \| 2\.03\d+ \| 1\.20\d+ \| 15,79\d,\d+ \| 13\d\d\d \| 44\.\d\d \|", readme, re.M)
    assert "`VALUE_RESIDUAL=1` (default 0)" in readme and "`GATED_ATTENTION=1` (default 0)" in readme
    assert "`NUM_LAYERS=10` (default 9)" in readme and "MODEL_DIM" not in readme.split("## Results")[0]
    assert "ddof=1" in readme and "one-sample t-test" in readme and "p = " in readme
    assert "not installed" in readme or "skipped" in readme
    cmd = ("SEED=1337 GATED_ATTENTION=1 NUM_LAYERS=10 VALUE_RESIDUAL=1 WARMDOWN_ITERS=3000 torchrun --standalone "
           "--nproc_per_node=8 records/track_10min_16mb/2026-05-02_Value_Residual_Gated_Attention/train_gpt.py")
    assert cmd in readme
    assert "wrote" in out
    assert check_path(folder).verdict == "consistent"


def test_pack_accepts_text_logs_and_finds_the_json(kit):
    res, folder = packed(kit, runs=run_paths(kit, "txt"))
    assert res.submission["seed_results"]["1337"]["step_avg_ms"] == 44.74
    assert res.submission["compliance"]["three_seeds"]


def test_pack_from_text_only_logs(kit):
    for s in SEEDS:
        text_only(kit, s)
    res, folder = packed(kit, runs=run_paths(kit, "txt"))
    assert res.track == "track_10min_16mb"
    assert check_path(folder).verdict == "consistent"


def test_pack_without_compliance_package_says_so(kit):
    res, folder = packed(kit)
    assert res.submission["compliance"]["auditor_verdict"] == "not-run"
    assert "compliance package is not installed" in res.readme


def test_pack_with_a_clean_audit(kit):
    aud = fake_auditor(kit, {"verdict": "clean", "findings": [
        {"rule": "TTT-PRE", "status": "dormant", "flag": "TTT", "message": "behind TTT=0"}]})
    res, folder = packed(kit, audit_search=[aud])
    c = res.submission["compliance"]
    assert c["auditor_verdict"] == "clean"
    assert c["no_slot"] is True and c["no_pre_quant_ttt"] is True and c["no_ngram_cache"] is True
    assert "TTT-PRE (dormant)" in res.readme


def test_pack_needs_ruling_leaves_the_field_open(kit):
    aud = fake_auditor(kit, {"verdict": "needs-ruling", "findings": [
        {"rule": "SLOT", "status": "needs-ruling", "message": "context-only delta"}]})
    res, _ = packed(kit, audit_search=[aud])
    assert res.submission["compliance"]["no_slot"] is None
    assert res.submission["compliance"]["auditor_verdict"] == "needs-ruling"


def test_refuse_active_violation(kit, capsys):
    aud = fake_auditor(kit, {"verdict": "flagged", "findings": [
        {"rule": "SLOT", "status": "active", "message": "delta optimised on scored targets"}]})
    with pytest.raises(Refusal, match="active violation: SLOT"):
        pack(options(kit, audit_search=[aud]))
    assert written(kit) == []


@pytest.mark.parametrize("flag", ["VALUE_RESIDUAL", "VALUE_RESIDUAL=1", "NUM_LAYERS=10"])
def test_refuse_dormant_violation_that_the_run_enabled(kit, flag):
    aud = fake_auditor(kit, {"verdict": "clean", "findings": [
        {"rule": "NGRAM-TARGET", "status": "dormant", "flag": flag, "file": "train_gpt.py", "line": 12,
         "explanation": "key built from the target"}]})
    with pytest.raises(Refusal, match=r"NGRAM-TARGET .*train_gpt.py:12: key built from the target"):
        pack(options(kit, audit_search=[aud]))
    assert written(kit) == []


@pytest.mark.parametrize("flag", ["PPMC", "PPMC=1", "NUM_LAYERS=11"])
def test_dormant_violation_the_run_did_not_enable(kit, flag):
    aud = fake_auditor(kit, {"verdict": "clean", "findings": [
        {"rule": "NGRAM-TARGET", "status": "dormant", "flag": flag, "explanation": "behind a flag"}]})
    res, _ = packed(kit, audit_search=[aud])
    assert res.submission["compliance"]["no_ngram_cache"] is True


def test_refuse_when_the_auditor_crashes(kit):
    aud = fake_auditor(kit, crash=True)
    with pytest.raises(Refusal, match="auditor failed"):
        pack(options(kit, audit_search=[aud]))
    assert written(kit) == []


def test_refuse_artifact_over_16mb(kit, capsys):
    log = text_only(kit, 42)
    edit_text(log, "Serialized model int6+zstd: 15788467 bytes", "Serialized model int6+zstd: 15997700 bytes")
    edit_text(log, "Total submission size int6+zstd: 15790795 bytes", "Total submission size int6+zstd: 16000028 bytes")
    line = refuse(kit, capsys, runs=[str(log)] + run_paths(kit)[1:])
    assert "16,000,028 bytes is over the 16,000,000-byte limit" in line


def test_refuse_runs_with_different_config(kit, capsys):
    log = text_only(kit, 2025)
    edit_text(log, '"NUM_LAYERS": 10', '"NUM_LAYERS": 11')
    line = refuse(kit, capsys, runs=run_paths(kit)[:2] + [str(log)])
    assert "disagree on config" in line and "NUM_LAYERS" in line


def test_refuse_runs_with_different_code(kit, capsys):
    log = text_only(kit, 2025)
    text = log.read_text()
    log.write_text(re.sub(r"code_sha256:[0-9a-f]{64}", "code_sha256:" + "ab" * 32, text))
    line = refuse(kit, capsys, runs=run_paths(kit)[:2] + [str(log)])
    assert "runs disagree" in line and "code" in line


def test_refuse_incomplete_log(kit, capsys):
    log = text_only(kit, 1337)
    text = log.read_text()
    log.write_text(text[: text.index("final_float_sliding_window_exact")])
    line = refuse(kit, capsys, runs=[run_paths(kit)[0], str(log), run_paths(kit)[2]])
    assert "incomplete log" in line and "vr_ga_seed1337.txt" in line


def test_refuse_incomplete_json_status(kit, capsys):
    js = kit / "logs" / "vr_ga_seed1337.json"
    obj = json.loads(js.read_text())
    obj["status"] = "running"
    js.write_text(json.dumps(obj))
    line = refuse(kit, capsys)
    assert "status is 'running'" in line


def test_refuse_shared_seed(kit, capsys):
    src = kit / "logs" / "vr_ga_seed42.txt"
    twin = kit / "logs" / "vr_ga_seed42_again.txt"
    twin.write_text(src.read_text().replace("run_id:vr_ga_seed42", "run_id:vr_ga_seed42_again"))
    line = refuse(kit, capsys, runs=run_paths(kit) + [str(twin)])
    assert "share seed 42" in line


def test_refuse_script_that_did_not_run(kit, capsys):
    (kit / "train_gpt.py").write_bytes((kit / "train_gpt.py").read_bytes() + b"# edited after the runs\n")
    line = refuse(kit, capsys)
    assert "is not the script that ran" in line


def test_refuse_existing_destination_and_force_replaces(kit, capsys):
    res, folder = packed(kit)
    (kit / "submission.json").unlink()
    snapshot = sorted(p.name for p in folder.iterdir())
    with pytest.raises(Refusal, match="already exists"):
        pack(options(kit))
    assert not (kit / "submission.json").exists() and sorted(p.name for p in folder.iterdir()) == snapshot
    res2 = pack(options(kit, force=True, blurb="second"))
    assert json.loads((folder / "submission.json").read_text())["blurb"] == "second"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_refuse_bad_date_and_double_wrap(kit, capsys):
    assert "is not YYYY-MM-DD" in refuse(kit, capsys, argv_extra=("--date", "02/05/2026"))
    (kit / "train_gpt.py").write_bytes(make_wrapper((kit / "train_gpt.py").read_bytes()))
    for s in SEEDS:
        log = text_only(kit, s)
        text = log.read_text()
        sha = hashlib.sha256((kit / "train_gpt.py").read_bytes()).hexdigest()
        log.write_text(re.sub(r"code_sha256:[0-9a-f]{64}", f"code_sha256:{sha}", text))
    assert "already a self-extracting wrapper" in refuse(kit, capsys, argv_extra=("--wrap",),
                                                         runs=run_paths(kit, "txt"))


def test_non_record_track_says_why(kit):
    for s in SEEDS:
        log = text_only(kit, s)
        edit_text(log, "device:cuda gpu:NVIDIA_H100_80GB_HBM3 world_size:8 grad_accum_steps:1",
                  "device:cuda gpu:NVIDIA_H100_80GB_HBM3 world_size:1 grad_accum_steps:8")
    log = kit / "logs" / "vr_ga_seed2025.txt"
    edit_text(log, "eval_time_total:74201ms", "eval_time_total:612345ms")
    res, folder = packed(kit, runs=run_paths(kit, "txt"))
    assert res.track == "track_non_record_16mb" and folder.parent.name == "track_non_record_16mb"
    assert "ran on 1x cuda (the record track needs 8x cuda)" in res.readme
    assert "seed 2025 evaluated for 612.3 s (limit 600 s)" in res.readme
    assert res.submission["compliance"]["eval_under_600s"] is False
    assert "--nproc_per_node=1" in res.readme
    assert check_path(folder).verdict == "consistent"


def test_training_past_the_grace_is_not_record(kit):
    log = text_only(kit, 42)
    log.write_text(log.read_text().replace("train_time:599998ms", "train_time:601500ms"))
    res, _ = packed(kit, runs=[str(log)] + run_paths(kit)[1:])
    assert res.track == "track_non_record_16mb" and "seed 42 trained 601.500 s" in res.readme
    assert res.submission["compliance"]["train_under_600s"] is False


def test_reference_folder_uses_welch(kit):
    ref = kit / "ref"
    ref.mkdir()
    (ref / "submission.json").write_text(json.dumps({
        "val_loss": float(np.mean(REF)), "val_bpb": 1.2244,
        "seed_results": {str(i): {"val_loss": v} for i, v in enumerate(REF)}}))
    res, _ = packed(kit, reference=str(ref))
    r = res.submission["reference"]
    want = sps.ttest_ind(LOSSES, np.array(REF) - 0.005, equal_var=False, alternative="less")
    assert r["test_kind"] == "welch" and r["p_value"] == pytest.approx(want.pvalue, rel=1e-6)
    assert "Welch" in res.readme


def test_reference_record_folder_compares_bpb_in_our_nats(kit):
    old = FX / "upstream" / "track_10min_16mb" / "2026-03-20_OldStyle"
    res, _ = packed(kit, reference=str(old))
    r = res.submission["reference"]
    bpbs = [1.20494063, 1.20395254, 1.20329543]
    ratio = np.mean(LOSSES) / np.mean(bpbs)
    ref = np.array([1.21691234, 1.21809494]) * ratio  # the reference's per-seed bpb in this entry's nats
    want = sps.ttest_ind(LOSSES, ref - 0.005, equal_var=False, alternative="less")
    assert r["test_kind"] == "welch" and r["p_value"] == pytest.approx(want.pvalue, rel=1e-6)
    assert r["improvement_nats"] == pytest.approx(ref.mean() - np.mean(LOSSES), abs=1e-9)
    assert "converted to nats" in r["reference_source"]


def test_reference_options_are_exclusive(kit, capsys):
    with pytest.raises(SystemExit):
        records_main(["pack", "--name", "x", "--author", "a", "--github-id", "g", "--reference-bpb", "1.2",
                      "--reference-loss", "2.0", *run_paths(kit)])
    capsys.readouterr()


# ---------------------------------------------------------------- wrap

PROBE = '''"""Probe docstring."""
from __future__ import annotations
import hashlib, inspect, sys, traceback

def probe(x: int) -> int:
    return x * 2

class Thing:
    pass

def main() -> None:
    code = open(__file__, "rb").read()
    print("name", __name__)
    print("doc", __doc__)
    print("argv", sys.argv[1:])
    print("source", inspect.getsource(probe).splitlines()[0])
    print("module", Thing.__module__, probe(21))
    print("globals", sorted(k for k in globals() if not k.startswith("__")))
    try:
        1 / 0
    except ZeroDivisionError:
        print("traceback", [l.strip() for l in traceback.format_exc().splitlines()][-3:-1])
    print("code_sha256", hashlib.sha256(code).hexdigest(), len(code))

if __name__ == "__main__":
    main()
'''


def test_wrapper_behaves_like_the_readable_script(tmp_path):
    human = tmp_path / "human.py"
    human.write_text(PROBE)
    wrapper = tmp_path / "wrapped.py"
    wrapper.write_bytes(make_wrapper(human.read_bytes()))
    assert wrapper.stat().st_size < 1200
    assert decode_wrapper(wrapper.read_bytes()) == human.read_bytes()

    def run(path):
        out = subprocess.run([sys.executable, str(path), "a", "b c"], capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    a, b = run(human), run(wrapper)
    assert a[:-1] == b[:-1]  # name, doc, argv, source, module, globals, traceback lines
    assert a[0] == "name __main__" and a[5].startswith("globals ['Thing', 'annotations', 'hashlib'")
    assert "1 / 0" in a[6]
    # __file__ is the wrapper: code hashing reports the submitted (wrapper) bytes
    assert a[-1] == f"code_sha256 {hashlib.sha256(human.read_bytes()).hexdigest()} {human.stat().st_size}"
    assert b[-1] == f"code_sha256 {hashlib.sha256(wrapper.read_bytes()).hexdigest()} {wrapper.stat().st_size}"
    # imported, it does not run main() and exposes the same API
    imp = subprocess.run([sys.executable, "-c", "import wrapped as w; print(w.__name__, w.probe(4), w.__doc__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert imp.strip() == "wrapped 8 Probe docstring."


def test_decode_wrapper_static():
    assert decode_wrapper(b"print('hello')\n") is None
    assert decode_wrapper(b"not python (") is None
    import base64
    import lzma
    src = b"print('upstream style')\n"
    blob = base64.b85encode(lzma.compress(src, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])).decode()
    upstream = (f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{blob}"),format=L.FORMAT_RAW,'
                f'filters=[{{"id":L.FILTER_LZMA2}}]))\n').encode()
    assert decode_wrapper(upstream) == src


def test_pack_wrap(kit):
    res, folder = packed(kit, wrap=True)
    human, wrapper = (folder / "train_gpt_human.py").read_bytes(), (folder / "train_gpt.py").read_bytes()
    assert human == (kit / "train_gpt.py").read_bytes()
    assert decode_wrapper(wrapper) == human
    sub = res.submission
    assert sub["bytes_code"] == len(wrapper) < len(human) and sub["wrapped"]
    assert sub["bytes_total"] == 15791840 + len(wrapper)
    assert f"{len(wrapper):,} bytes" in res.readme and f"{len(human):,} bytes" in res.readme
    assert "reports the wrapper's sha256" in res.readme
    assert check_path(folder).verdict == "consistent"
    # the stand-in hashes its own file like the kit's script: run from the wrapper it reports the wrapper
    out = subprocess.run([sys.executable, str(folder / "train_gpt.py")], capture_output=True, text=True, check=True)
    assert f"code_sha256:{hashlib.sha256(wrapper).hexdigest()} code_bytes:{len(wrapper)}" in out.stdout
    ran = subprocess.run([sys.executable, str(folder / "train_gpt_human.py")], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[1:] == ran.stdout.splitlines()[1:]


# ---------------------------------------------------------------- check

@pytest.fixture
def good(kit):
    _, folder = packed(kit)
    return folder


def findings(res):
    return {f.field: f.message for f in res.findings}


def test_check_good_folder_and_top_level_json(good, kit, capsys):
    assert records_main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "consistent" in out
    assert records_main(["check", str(kit / "submission.json"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == "consistent" and obj["findings"] == [] and obj["path"].endswith("submission.json")
    assert obj["summary"]["logs"] == 3


def test_check_missing_key(good, capsys):
    p = good / "submission.json"
    sub = json.loads(p.read_text())
    del sub["author"]
    p.write_text(json.dumps(sub))
    assert records_main(["check", str(good), "--json"]) == 1
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == "inconsistent"
    assert {"field": "author", "message": "required key missing"} in obj["findings"]


def test_check_val_bpb_disagrees_with_logs(good):
    p = good / "submission.json"
    sub = json.loads(p.read_text())
    sub["val_bpb"] = round(sub["val_bpb"] - 0.002, 8)
    sub["seed_results"]["42"]["val_bpb"] = 1.2011
    p.write_text(json.dumps(sub))
    f = findings(check_path(good))
    assert "disagrees with the mean of the 3 log(s)" in f["val_bpb"]
    assert "train_seed42.log says 1.20494063" in f["seed_results.42.val_bpb"]


def test_check_code_differs_from_logged_hash(good):
    (good / "train_gpt.py").write_bytes((good / "train_gpt.py").read_bytes() + b"# tweak\n")
    res = check_path(good)
    assert res.exit_code == 1
    f = findings(res)
    assert "is not the code_sha256" in f["train_gpt.py"] and "bytes_code" in f


def test_check_log_without_final_line(good):
    log = good / "train_seed42.log"
    text = log.read_text()
    log.write_text(text[: text.index("final_float_sliding_window_exact")])
    res = check_path(good)
    f = findings(res)
    assert "no final score line" in f["log:train_seed42.log"]
    assert "no log for seed(s) [42]" in f["seeds"]
    assert "disagrees with the mean of the 2 log(s)" in f["val_bpb"]


def test_check_track_limits_from_logs(good):
    log = good / "train_seed2025.log"
    log.write_text(log.read_text().replace("eval_time_total:74201ms", "eval_time_total:654321ms"))
    f = findings(check_path(good))
    assert "over the 600 s limit" in f["log:train_seed2025.log"]
    assert "compliance.eval_under_600s" in f


def test_check_bytes_total_mismatch(good):
    p = good / "submission.json"
    sub = json.loads(p.read_text())
    sub["bytes_total"] = 15000000
    p.write_text(json.dumps(sub))
    assert "matches no log" in findings(check_path(good))["bytes_total"]


def test_check_upstream_style_folder():
    res = check_path(FX / "upstream" / "track_10min_16mb" / "2026-03-20_OldStyle")
    f = findings(res)
    assert res.exit_code == 1 and list(f) == ["val_bpb"] and "mean_val_bpb" in f["val_bpb"]
    assert any("no code hash" in n.message for n in res.notes)
    assert res.summary["logs"] == 2


@pytest.mark.parametrize("content,code", [
    ("{not json", 2), ("[1, 2, 3]", 2), ("", 2), ('{"val_bpb": "fast"}', 1),
    ('{"author": 3, "date": "yesterday", "val_bpb": -1, "bytes_total": 1.5, "seeds": "all",'
     ' "seed_results": [], "compliance": {"no_slot": "yes"}}', 1),
])
def test_check_malformed_json_never_crashes(tmp_path, capsys, content, code):
    p = tmp_path / "submission.json"
    p.write_text(content)
    assert records_main(["check", str(p), "--json"]) == code
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == ("unreadable" if code == 2 else "inconsistent")
    assert obj["findings"] and all(set(f) == {"field", "message"} for f in obj["findings"])
    assert not any(f["field"] == "internal" for f in obj["findings"])


def test_check_malformed_logs_never_crash(good):
    (good / "train_seed42.log").write_bytes(b"\x00\xff\xfe garbage \x80" * 100 + b"\nstep:1/2 train_loss:6.93 train_time:40ms step_avg:40.00ms\n")
    (good / "train_seed9.log").write_text("config:{oops\nfinal_int6_sliding_window_exact val_loss:nan val_bpb:nan\n")
    res = check_path(good)
    assert res.exit_code == 1
    assert not any(f.field == "internal" for f in res.findings)
    assert "log:train_seed42.log" in findings(res)


def test_check_unreadable_paths(tmp_path):
    assert check_path(tmp_path / "nope").exit_code == 2
    assert check_path(tmp_path).exit_code == 2  # a folder without submission.json


def test_cli_as_module(good):
    out = subprocess.run([sys.executable, "-m", "records", "check", str(good)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "consistent" in out.stdout
