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

from compliance.logparse import load_run, parse_text_log
from conftest import ROOT
from records.__main__ import main as records_main
from records.check import check_path
from records.pack import PackOptions, Refusal, pack
from records.wrap import decode_wrapper, make_wrapper

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
                out_root=str(root / "records"), top_json=str(root / "submission.json"), skip_audit=True)
    base.update(over)
    return PackOptions(**base)


def fake_auditor(report=None, crash=False):
    """A stand-in for the compliance auditor: (script, settings) -> `report`; it records what it was asked."""
    def auditor(script, settings):
        auditor.calls.append((Path(script), dict(settings)))
        if crash:
            raise RuntimeError("boom: auditor crashed")
        return report
    auditor.calls = []
    return auditor


def written(root):
    """Everything pack may have written."""
    out = []
    if (root / "records").exists():
        out += [p for p in (root / "records").rglob("*")]
    if (root / "submission.json").exists():
        out.append(root / "submission.json")
    return out


def cli(argv) -> int:
    """records' command line in process; argparse's own exits become the return value."""
    try:
        return records_main(argv)
    except SystemExit as exc:
        return exc.code


def eval_only_log(root, seed=2025):
    """The seed's logs rewritten as an EVAL_ONLY run of its artifact: no step lines, EVAL_ONLY in the config."""
    txt, js = root / "logs" / f"vr_ga_seed{seed}.txt", root / "logs" / f"vr_ga_seed{seed}.json"
    art = f"artifacts/vr_ga_seed{seed}.ptz"
    lines = []
    for line in txt.read_text().splitlines(True):
        if line.startswith("config:"):
            cfg = json.loads(line[len("config:"):])
            line = "config:" + json.dumps({**cfg, "EVAL_ONLY": art}) + "\n"
        if not line.startswith(("step:", "stopping_early")):
            lines.append(line)
    txt.write_text("".join(lines))
    obj = json.loads(js.read_text())
    obj["config"]["EVAL_ONLY"] = art
    for k in ("steps", "train_time_ms", "step_avg_ms", "stopped_early"):
        obj.pop(k, None)
    js.write_text(json.dumps(obj))
    return js


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


# (log text, the problem the parser reports): a malformed line gives no value at all, never a made-up one
GARBAGE = [
    ("", None), ("\x00\xff" * 50, "hold binary data"),
    ("final_int6_sliding_window_exact val_loss:abc val_bpb:", None), ("config:{not json", None),
    ("config:[1,2]", None), ("step:x/y train_loss:1", None), ("Total submission size: many bytes", None),
    ("device:cuda gpu: world_size:", None), ("seed:forty-two\nrun_id:\n", None),
]


@pytest.mark.parametrize("text,problem", GARBAGE)
def test_parse_takes_no_value_from_garbage(text, problem):
    run = parse_text_log(text)
    fields = ("final", "config", "steps", "artifact_bytes", "model_bytes", "device", "world_size", "seed", "run_id",
              "code_sha256", "train_time_ms")
    assert {f: getattr(run, f) for f in fields} == dict.fromkeys(fields)
    assert not run.recognised and not run.has_training_lines and not run.complete
    assert [p for p in run.problems if problem and problem in p] or (problem is None and run.problems == [])


def test_parse_keeps_a_non_finite_score_for_the_refusal():
    """A final line that says nan is read as nan (so that pack and check can say so), never as a number."""
    run = parse_text_log("final_x_exact val_loss:nan val_bpb:nan\n" * 3)
    assert run.final.metric == "final_x_exact" and math.isnan(run.final.val_loss) and math.isnan(run.final.val_bpb)


# ---------------------------------------------------------------- statistics

LOSSES = [2.03814236, 2.03981507, 2.03702995]
REF = [2.0727, 2.0719, 2.0741, 2.0733]


# The statistics themselves (sample std, the one-sample and Welch record tests against scipy, the degenerate cases)
# are kitlib.stats, tested in test_kitlib.py; here: that pack uses them as documented.


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


def test_pack_skip_audit_leaves_the_rule_fields_open(kit):
    res, folder = packed(kit)
    c = res.submission["compliance"]
    assert c["auditor_verdict"] == "not-run" and c["no_slot"] is None and c["score_first_ttt"] is None
    assert "skipped with --skip-audit" in res.readme


def test_pack_runs_the_real_auditor_in_process_with_the_runs_settings(kit, monkeypatch):
    """Without --skip-audit, pack calls compliance.audit.audit on the script with the run's config as settings
    (no subprocess: records imports compliance, as it does for the log parser)."""
    import compliance.audit

    seen = []
    real = compliance.audit.audit
    monkeypatch.setattr(compliance.audit, "audit", lambda path, **kw: seen.append((path, kw)) or real(path, **kw))
    res, _ = packed(kit, skip_audit=False)
    assert len(seen) == 1 and seen[0][0] == kit / "train_gpt.py"
    settings = seen[0][1]["settings"]
    assert settings["VALUE_RESIDUAL"] == "1" and settings["NUM_LAYERS"] == "10" and settings["SEED"] == "42"
    assert res.submission["compliance"]["auditor_verdict"] in ("clean", "needs-ruling")


def test_pack_with_a_clean_audit(kit):
    aud = fake_auditor({"verdict": "clean", "findings": [
        {"rule": "TTT-PRE", "status": "dormant", "flag": "TTT", "message": "behind TTT=0"}]})
    res, folder = packed(kit, auditor=aud, skip_audit=False)
    c = res.submission["compliance"]
    assert c["auditor_verdict"] == "clean"
    assert c["no_slot"] is True and c["no_pre_quant_ttt"] is True and c["no_ngram_cache"] is True
    assert "TTT-PRE (dormant)" in res.readme


def test_pack_needs_ruling_leaves_the_field_open(kit):
    aud = fake_auditor({"verdict": "needs-ruling", "findings": [
        {"rule": "SLOT", "status": "needs-ruling", "message": "context-only delta"}]})
    res, _ = packed(kit, auditor=aud, skip_audit=False)
    assert res.submission["compliance"]["no_slot"] is None
    assert res.submission["compliance"]["auditor_verdict"] == "needs-ruling"


def test_refuse_active_violation(kit, capsys):
    aud = fake_auditor({"verdict": "flagged", "findings": [
        {"rule": "SLOT", "status": "active", "message": "delta optimised on scored targets"}]})
    with pytest.raises(Refusal, match="active violation: SLOT"):
        pack(options(kit, auditor=aud, skip_audit=False))
    assert written(kit) == []


def test_refuse_incomplete_audit(kit):
    """The auditor could not read all of the code (exit 3, verdict incomplete): never packed as if clean."""
    aud = fake_auditor({"verdict": "incomplete", "findings": [], "incomplete": ["train_gpt.py:40-41: unparseable"]})
    with pytest.raises(Refusal, match=r"could not analyse all of train_gpt.py .*unparseable"):
        pack(options(kit, auditor=aud, skip_audit=False))
    assert written(kit) == []


@pytest.mark.parametrize("flag", ["VALUE_RESIDUAL", "VALUE_RESIDUAL=1", "NUM_LAYERS=10"])
def test_refuse_dormant_violation_that_the_run_enabled(kit, flag):
    aud = fake_auditor({"verdict": "clean", "findings": [
        {"rule": "NGRAM-TARGET", "status": "dormant", "flag": flag, "file": "train_gpt.py", "line": 12,
         "explanation": "key built from the target"}]})
    with pytest.raises(Refusal, match=r"NGRAM-TARGET .*train_gpt.py:12: key built from the target"):
        pack(options(kit, auditor=aud, skip_audit=False))
    assert written(kit) == []


@pytest.mark.parametrize("flag", ["PPMC", "PPMC=1", "NUM_LAYERS=11"])
def test_dormant_violation_the_run_did_not_enable(kit, flag):
    aud = fake_auditor({"verdict": "clean", "findings": [
        {"rule": "NGRAM-TARGET", "status": "dormant", "flag": flag, "explanation": "behind a flag"}]})
    res, _ = packed(kit, auditor=aud, skip_audit=False)
    assert res.submission["compliance"]["no_ngram_cache"] is True


def test_refuse_when_the_auditor_crashes(kit):
    aud = fake_auditor(crash=True)
    with pytest.raises(Refusal, match="auditor failed"):
        pack(options(kit, auditor=aud, skip_audit=False))
    assert written(kit) == []


def _over_16mb(root):
    log = text_only(root, 42)
    edit_text(log, "Serialized model int6+zstd: 15788467 bytes", "Serialized model int6+zstd: 15997700 bytes")
    edit_text(log, "Total submission size int6+zstd: 15790795 bytes", "Total submission size int6+zstd: 16000028 bytes")
    return [], [str(log)] + run_paths(root)[1:]


def _other_config(root):
    log = text_only(root, 2025)
    edit_text(log, '"NUM_LAYERS": 10', '"NUM_LAYERS": 11')
    return [], run_paths(root)[:2] + [str(log)]


def _other_code(root):
    log = text_only(root, 2025)
    log.write_text(re.sub(r"code_sha256:[0-9a-f]{64}", "code_sha256:" + "ab" * 32, log.read_text()))
    return [], run_paths(root)[:2] + [str(log)]


def _incomplete_log(root):
    log = text_only(root, 1337)
    text = log.read_text()
    log.write_text(text[: text.index("final_float_sliding_window_exact")])
    return [], [run_paths(root)[0], str(log), run_paths(root)[2]]


def _json_status(root):
    js = root / "logs" / "vr_ga_seed1337.json"
    js.write_text(json.dumps({**json.loads(js.read_text()), "status": "running"}))
    return [], None


def _nan_score(root):
    log = text_only(root, 1337)
    log.write_text(re.sub(r"(final_int6_sliding_window_exact) val_loss:\S+ val_bpb:\S+", r"\1 val_loss:nan val_bpb:nan",
                          log.read_text()))
    return [], [run_paths(root)[0], str(log), run_paths(root)[2]]


def _shared_seed(root):
    src, twin = root / "logs" / "vr_ga_seed42.txt", root / "logs" / "vr_ga_seed42_again.txt"
    twin.write_text(src.read_text().replace("run_id:vr_ga_seed42", "run_id:vr_ga_seed42_again"))
    return [], run_paths(root) + [str(twin)]


def _edited_script(root):
    (root / "train_gpt.py").write_bytes((root / "train_gpt.py").read_bytes() + b"# edited after the runs\n")
    return [], None


def _double_wrap(root):
    (root / "train_gpt.py").write_bytes(make_wrapper((root / "train_gpt.py").read_bytes()))
    sha = hashlib.sha256((root / "train_gpt.py").read_bytes()).hexdigest()
    for s in SEEDS:
        log = text_only(root, s)
        log.write_text(re.sub(r"code_sha256:[0-9a-f]{64}", f"code_sha256:{sha}", log.read_text()))
    return ["--wrap"], run_paths(root, "txt")


def _file_at(root, name):
    (root / name).write_text("a file, not a folder\n")
    return root / name


# (id, setup(root) -> (extra arguments, runs or None for the three fixture runs), text of the one stderr line, exit)
PACK_BAD = [
    ("over-16mb", _over_16mb, "refused: vr_ga_seed42.txt: artifact 16,000,028 bytes is over the 16,000,000-byte", 1),
    ("other-config", _other_config, "refused: runs disagree on config apart from SEED/RUN_ID", 1),
    ("other-code", _other_code, "refused: runs disagree: vr_ga_seed2025.txt ran code abababababab", 1),
    ("incomplete-log", _incomplete_log, "refused: vr_ga_seed1337.txt: incomplete log", 1),
    ("json-status", _json_status, "refused: vr_ga_seed1337.txt: incomplete run (JSON status is 'running'", 1),
    ("nan-score", _nan_score, "refused: vr_ga_seed1337.txt: final score is not a finite number", 1),
    ("shared-seed", _shared_seed, "refused: two runs share seed 42", 1),
    ("edited-script", _edited_script, "is not the script that ran", 1),
    ("double-wrap", _double_wrap, "refused: --wrap:", 1),
    ("eval-only", lambda r: (eval_only_log(r), [], None)[1:],
     "refused: vr_ga_seed2025.txt is not a seed of a submission: an EVAL_ONLY run (it scored the artifact "
     "artifacts/vr_ga_seed2025.ptz; no training in it)", 1),
    ("bad-date", lambda r: (["--date", "02/05/2026"], None), "error: --date '02/05/2026' is not YYYY-MM-DD", 2),
    ("empty-name", lambda r: (["--name", " "], None), "error: --name is empty", 2),
    ("missing-run", lambda r: ([], run_paths(r)[:2] + [str(r / "logs" / "nope.json")]), "nope.json: no such file", 2),
    ("run-is-folder", lambda r: ([], run_paths(r)[:2] + [str(r / "logs")]), "logs is not a file", 2),
    ("missing-script", lambda r: (["--script", str(r / "nope.py")], None), "error: script", 2),
    ("missing-requirements", lambda r: (["--requirements", "nope.txt"], None), "error: --requirements nope.txt", 2),
    ("missing-reference", lambda r: (["--reference", "nope"], None), "error: --reference nope: no such", 2),
    ("zero-reference-bpb", lambda r: (["--reference-bpb", "0"], None), "--reference-bpb 0.0 is not a positive", 2),
    ("nan-reference-loss", lambda r: (["--reference-loss", "nan"], None), "error: --reference-loss nan is not", 2),
    ("out-root-is-a-file", lambda r: (["--out-root", str(_file_at(r, "records_file"))], None),
     "error: --out-root", 2),
    ("top-json-in-a-file", lambda r: (["--top-json", str(_file_at(r, "f") / "s.json")], None),
     "error: --top-json", 2),
    ("two-references", lambda r: (["--reference-bpb", "1.2", "--reference-loss", "2.0"], None),
     "error: argument --reference-loss: not allowed with argument --reference-bpb", 2),
    ("unknown-option", lambda r: (["--nproc", "8"], None), "error: unrecognized arguments: --nproc", 2),
]


@pytest.mark.parametrize("setup,expected,code", [row[1:] for row in PACK_BAD], ids=[row[0] for row in PACK_BAD])
def test_pack_bad_input_is_one_line_and_writes_nothing(kit, capsys, setup, expected, code):
    extra, runs = setup(kit)
    argv = ["pack", "--name", "X", "--author", "A", "--github-id", "g", "--date", "2026-05-02",
            "--script", str(kit / "train_gpt.py"), "--out-root", str(kit / "records"),
            "--top-json", str(kit / "submission.json"), "--skip-audit", *extra,
            *(runs if runs is not None else run_paths(kit))]
    rc = cli(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert (rc, len(lines)) == (code, 1), (out, err)
    assert lines[0].startswith("records") and expected in lines[0], lines[0]
    assert written(kit) == [], "bad input must write nothing"


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
    assert r["test"] == "welch" and r["p_value"] == pytest.approx(want.pvalue, rel=1e-6)
    assert "Welch" in res.readme


def test_reference_record_folder_compares_bpb_in_our_nats(kit):
    old = FX / "upstream" / "track_10min_16mb" / "2026-03-20_OldStyle"
    res, _ = packed(kit, reference=str(old))
    r = res.submission["reference"]
    bpbs = [1.20494063, 1.20395254, 1.20329543]
    ratio = np.mean(LOSSES) / np.mean(bpbs)
    ref = np.array([1.21691234, 1.21809494]) * ratio  # the reference's per-seed bpb in this entry's nats
    want = sps.ttest_ind(LOSSES, ref - 0.005, equal_var=False, alternative="less")
    assert r["test"] == "welch" and r["p_value"] == pytest.approx(want.pvalue, rel=1e-6)
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


def test_check_flags_an_eval_only_log_as_a_seed(good):
    """A folder whose seed log is an EVAL_ONLY run (no training in it) is not consistent."""
    tmp = good.parent.parent.parent / "logs"
    eval_only_log(tmp.parent, 2025)
    (good / "train_seed2025.log").write_bytes((tmp / "vr_ga_seed2025.txt").read_bytes())
    res = check_path(good)
    f = findings(res)
    assert res.exit_code == 1 and "not a seed of this submission: an EVAL_ONLY run" in f["log:train_seed2025.log"]
    assert "no log for seed(s) [2025]" in f["seeds"]


def test_check_reads_a_single_submission_file_whatever_its_suffix(good, capsys):
    (good / "submission.json").rename(good / "submission_ternary.json")
    assert records_main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(": consistent; read submission_ternary.json")
    assert check_path(good).as_dict()["submission_file"] == "submission_ternary.json"
    (good / "submission_binary.json").write_text("{}")
    res = check_path(good)
    assert res.exit_code == 2 and "2 submission files" in findings(res)["submission.json"]
    assert "submission_binary.json, submission_ternary.json" in findings(res)["submission.json"]


def _finished_json(root):
    return json.loads((root / "logs" / "vr_ga_seed42.json").read_text())


# (id, what RUN.json holds (None: no such file; bytes: raw), text of the one stderr line): all exit 2, nothing written
DEMO_BAD = [
    ("missing", None, "records demo: error: cannot read"),
    ("not-json", b"{oops", "records demo: error: cannot read"),
    ("binary", b"\x00\xff\xfe", "records demo: error: cannot read"),
    ("a-list", [1, 2], "records demo: error: RUN.json holds a JSON list, not a run's logs/<RUN_ID>.json object"),
    ("eval-only", lambda r: {**_finished_json(r), "config": {**_finished_json(r)["config"], "EVAL_ONLY": "a.ptz"}},
     "records demo: error: RUN.json is an EVAL_ONLY run (it scored a.ptz)"),
    ("running", lambda r: {**_finished_json(r), "status": "running"}, "status is 'running', not 'complete'"),
    ("no-final", lambda r: {k: v for k, v in _finished_json(r).items() if k != "final"},
     "is not a finished training run's JSON (missing or wrong: final)"),
    ("string-steps", lambda r: {**_finished_json(r), "steps": "many"}, "(missing or wrong: steps)"),
]


@pytest.mark.parametrize("content,expected", [row[1:] for row in DEMO_BAD], ids=[row[0] for row in DEMO_BAD])
def test_demo_bad_input_is_one_line(kit, capsys, content, expected):
    run = kit / "RUN.json"
    if callable(content):
        content = content(kit)
    if isinstance(content, bytes):
        run.write_bytes(content)
    elif content is not None:
        run.write_text(json.dumps(content))
    assert cli(["demo", run.name]) == 2  # cwd is the kit root
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and expected in err and out == ""
    assert written(kit) == []


def test_minified_wrapper_is_recognised_as_the_human_source(tg):
    """records check/pack read a CODE_FORM=minified train_gpt.py as the minified form of train_gpt_human.py: the
    options records.wrap uses are those of the script's shipped_code (a drift fails here)."""
    from records.wrap import decode_wrapper, minified
    src = (ROOT / "train_gpt.py").read_bytes()
    shipped = tg.shipped_code(src, "minified")
    assert decode_wrapper(shipped) == minified(src) != src
    assert decode_wrapper(tg.shipped_code(src, "wrapped")) == src
