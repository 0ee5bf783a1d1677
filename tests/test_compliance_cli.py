"""The command line and the non-rule parts of an audit: JSON shape, exit statuses, logs and submission.json,
the significance test, data provenance, configurations from logs and --set, wrappers and dispatching folders."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.audit import audit  # noqa: E402
from compliance.cli import main as cli  # noqa: E402
from compliance.logparse import load_text_log as parse_text_log  # noqa: E402
from compliance.rules.stats import significance  # noqa: E402
from compliance.source import decode_payloads, load_program, tolerant_parse  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "compliance"
RULES = FIX / "rules"
FOLDERS = FIX / "folders"


def run_cli(args, capsys):
    code = cli(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_shape_and_exit_codes(capsys):
    code, out, _ = run_cli(["audit", str(RULES / "ttt_pre" / "ttt_pre_quant_adamw.py"), "--json"], capsys)
    obj = json.loads(out)
    assert code == 1 and obj["verdict"] == "flagged"
    assert set(obj) >= {"path", "verdict", "findings", "limits", "warnings"}
    f = obj["findings"][0]
    assert set(f) >= {"rule", "status", "file", "line", "evidence", "explanation", "ruling"}
    assert f["rule"] == "TTT-PRE" and f["status"] == "active" and "#402" in f["ruling"]
    code, out, _ = run_cli(["audit", str(RULES / "ttt_pre" / "legal_ttt_score_first.py"), "--json"], capsys)
    assert code == 0 and json.loads(out)["verdict"] == "clean"
    code, out, _ = run_cli(["audit", str(RULES / "slot" / "slot_context_only.py"), "--json"], capsys)
    assert code == 1 and json.loads(out)["verdict"] == "needs-ruling"


def test_text_report(capsys):
    code, out, _ = run_cli(["audit", str(RULES / "ttt_pre" / "dormant_prequant_ttt_flag.py")], capsys)
    assert code == 0
    assert "verdict: CLEAN" in out and "[TTT-PRE] dormant (activated by TTT_ENABLED=1)" in out and "ruling:" in out


def test_usage_and_unreadable_input(tmp_path, capsys):
    code, _, err = run_cli(["audit", str(tmp_path / "missing.py")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such file" in err
    binary = tmp_path / "blob.py"
    binary.write_bytes(bytes(range(256)) * 64)
    code, _, err = run_cli(["audit", str(binary)], capsys)
    assert code == 2 and "binary" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["audit", str(empty)], capsys)
    assert code == 2 and "no Python script" in err
    with pytest.raises(SystemExit) as exc:
        cli(["audit", "x.py", "--reference-bpb", "1.1", "--reference-loss", "1.9"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli(["frobnicate"])
    assert exc.value.code == 2
    code, _, err = run_cli(["audit", str(RULES / "ttt_pre" / "legal_ttt_single_pass.py"), "--set", "NOEQUALS"], capsys)
    assert code == 2 and "NAME=VALUE" in err


def test_subprocess_entry_point():
    p = subprocess.run([sys.executable, "-m", "compliance", "audit", str(RULES / "ngram_target" / "ngram_target_in_key.py"), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["findings"][0]["rule"] == "NGRAM-TARGET"
    p = subprocess.run([sys.executable, "-m", "compliance"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2


def test_set_switches_a_dormant_finding_on():
    rep = audit(RULES / "ttt_pre" / "dormant_prequant_ttt_flag.py", settings={"TTT_ENABLED": "1"})
    assert rep.verdict == "flagged" and rep.findings[0].status == "active"
    rep = audit(RULES / "ttt_pre" / "legal_ttt_score_first.py", settings={"TTT_ENABLED": "0"})
    assert rep.verdict == "clean"


def test_dormant_finding_names_flag_for_records_audit():
    rep = audit(RULES / "ttt_pre" / "dormant_prequant_ttt_flag.py")
    d = rep.findings[0].as_dict()
    assert d["status"] == "dormant" and d["flag"] == "TTT_ENABLED=1"


def test_wrappers_decode_without_executing(tmp_path):
    # a payload that would create a file if it ran: decoding must not run it
    import base64
    import lzma
    marker = tmp_path / "ran.txt"
    inner = f"open({str(marker)!r}, 'w').write('x')\nimport urllib.request\nurllib.request.urlopen('http://x')\n"
    src = f"import lzma, base64\nexec(lzma.decompress(base64.b85decode({base64.b85encode(lzma.compress(inner.encode())).decode()!r})))\n"
    p = tmp_path / "wrapped.py"
    p.write_text(src)
    rep = audit(p)
    assert not marker.exists()
    assert any(f.rule == "LIMITS" and f.decoded for f in rep.findings)
    tree, _, _ = tolerant_parse((RULES / "common" / "wrapper_nested.py").read_text())
    (inner1, chain, _), = decode_payloads(tree)
    assert chain == "zlib+a85" and "lzma.decompress" in inner1
    units = load_program(RULES / "common" / "wrapper_nested.py").units
    assert [u.decoded for u in units] == ["", "zlib+a85", "lzma+hex>zlib+a85"]


def test_dispatching_folders():
    rep = audit(FOLDERS / "dispatch_exec")
    assert any(u.endswith("train_gpt_decode.py") for u in rep.files)
    assert rep.verdict == "flagged"
    rep = audit(FOLDERS / "dispatch_import")
    assert [f.file for f in rep.findings if f.status == "active"] == ["trainer.py"]


def test_logged_run_activates_dormant_code():
    rep = audit(FOLDERS / "log_activated")
    f = [f for f in rep.findings if f.rule == "TTT-PRE"][0]
    assert f.status == "active" and f.runs == ["train_seed1337.log"] and "switched it on" in f.explanation


def test_limits_from_logs_and_submission():
    rep = audit(FOLDERS / "limits_logs")
    ex = [f.explanation for f in rep.findings if f.rule == "LIMITS"]
    assert any("Training took 624.1 s" in e for e in ex)
    assert any("Evaluation took 620.6 s" in e for e in ex)
    assert any("16,101,000 bytes" in e for e in ex)
    w = " | ".join(rep.warnings)
    assert "does not match the logs" in w and "no log found for seed(s) 2" in w
    runs = rep.limits["runs"]
    assert runs["train_seed0.log"]["eval_phases_ms"] == {"quantized_sliding_window": 91781.0,
                                                         "quantized_ttt_phased": 528785.0}


def test_non_record_track_allows_long_runs(tmp_path):
    d = tmp_path / "records" / "track_non_record_16mb" / "2026-05-01_long"
    shutil.copytree(FOLDERS / "limits_logs", d)
    rep = audit(d)
    ex = [f.explanation for f in rep.findings]
    assert not any("Training took" in e or "Evaluation took" in e for e in ex)
    assert any("16,101,000" in e for e in ex)                 # the size cap still applies
    assert any("non-record track" in w for w in rep.warnings)


def test_kit_logs_and_significance(capsys):
    code, out, _ = run_cli(["audit", str(FOLDERS / "kit_record"), "--json", "--reference-loss", "1.90"], capsys)
    obj = json.loads(out)
    assert code == 0 and obj["verdict"] == "clean"
    st = obj["limits"]["stats"]
    assert st["seeds"] == 3 and st["significant"] and st["p_value"] < 0.01
    assert len(obj["limits"]["runs"]) == 3
    code, out, _ = run_cli(["audit", str(FOLDERS / "kit_record"), "--json", "--reference-bpb", "1.1160"], capsys)
    obj = json.loads(out)
    st = obj["limits"]["stats"]
    assert not st["significant"] and code == 0 and obj["verdict"] == "clean"      # STATS warns, never flags
    (weak,) = [f for f in obj["findings"] if f["rule"] == "STATS"]
    assert weak["status"] == "warning" and weak["explanation"].startswith("Not a significant record")
    assert abs(st["reference_loss"] - 1.1160 * st["nats_per_bpb"]) < 1e-12


def test_significance_matches_scipy():
    from scipy import stats
    losses = [1.8801, 1.8811, 1.8795]
    info, _ = significance(losses, [1.11] * 3, 1.89, None)
    ref = stats.ttest_1samp(losses, 1.89 - 0.005, alternative="less")
    assert abs(info["p_value"] - ref.pvalue) < 1e-12
    info, warns = significance([1.88], [1.11], 1.95, None)
    assert info["p_value"] is None and "one seed" in warns[0]


def test_upstream_log_formats(tmp_path):
    p = tmp_path / "train_seed7.log"
    p.write_text("\n".join([
        "import os", "def main(): pass", "=" * 100, "Running Python 3.11",
        "=" * 100,
        "Hyperparameters:", "  ttt_enabled: True", "  seed: 7", "",
        "step:100/9000 train_loss:3.1000 train_time:8000ms step_avg:80.00ms",
        "stopping_early: wallclock_cap train_time:600128ms step:7179/9000",
        "Serialized model: 105000000 bytes", "Serialized model int6+zstd: 15900000 bytes",
        "Code size: 60000 bytes", "Total submission size int6+zstd: 15960000 bytes",
        "final_int6_roundtrip val_loss:1.9216 val_bpb:1.1381 eval_time:7093ms",
        "final_int6_sliding_window val_loss:1.8816 val_bpb:1.1144 stride:64 eval_time:77178ms",
        "legal_ttt_exact val_loss:1.87000000 val_bpb:1.10500000 eval_time:410000ms",
    ]))
    lg = parse_text_log(p, p.name)
    assert lg.seed == 7 and lg.train_time_ms == 600128 and lg.model_bytes == 15900000
    assert lg.final[0] == "legal_ttt_exact" and lg.final[1] == 1.87
    assert sum(ms for _, ms, _ in lg.eval_phases) == 7093 + 77178 + 410000
    assert lg.attrs["ttt_enabled"] is True and lg.attrs["seed"] == 7


def test_data_shards_hash(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, 4)
    blob = header.tobytes() + np.arange(4, dtype="<u2").tobytes()
    (d / "fineweb_val_000000.bin").write_bytes(blob)
    (d / "fineweb_train_000000.bin").write_bytes(blob)
    (d / "fineweb_train_000001.bin").write_bytes(blob[:-2] + b"\x09\x00")
    code, out, _ = run_cli(["audit", str(RULES / "ttt_pre" / "legal_ttt_single_pass.py"), "--json", "--data", str(d)], capsys)
    obj = json.loads(out)
    assert code == 1
    hits = [f for f in obj["findings"] if f["rule"] == "VAL-TRAIN"]
    assert len(hits) == 1 and hits[0]["file"] == "fineweb_train_000000.bin"
    assert obj["limits"]["data"]["train_shards"] == 2
    code, _, err = run_cli(["audit", str(RULES / "ttt_pre" / "legal_ttt_single_pass.py"), "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and "--data" in err


def test_broken_syntax_is_repaired_and_still_audited(tmp_path):
    """A line no parser reads is blanked so the rest is audited; the blanked lines are named as not analysed."""
    src = (RULES / "ttt_pre" / "ttt_pre_quant_adamw.py").read_text().replace("def main():", "def main(:\n    x = f'{'a'}{", 1)
    p = tmp_path / "broken.py"
    p.write_text(src)
    rep = audit(p)
    assert any(f.rule == "TTT-PRE" and f.status == "active" for f in rep.findings)
    assert rep.verdict == "flagged" and any("not analysed" in x and "line(s)" in x for x in rep.incomplete)


def test_kit_train_gpt_audits_clean():
    rep = audit(ROOT / "train_gpt.py")
    assert rep.verdict == "clean" and [f.as_dict() for f in rep.findings] == []  # not even a dormant finding


def test_gptq_reserve_set_to_zero_is_a_calibration_after_the_budget(capsys):
    """The 1.0611-shaped script is clean with its default reserve (4 s taken off the 600 s cap) and flagged when
    run with GPTQ_RESERVE_SECONDS=0 (--set, or a log that says so: folders/calib_reserve_zero_logged)."""
    script = RULES / "calib_val" / "legal_calib_gptq_reserve.py"
    assert audit(script).verdict == "clean"
    code, out, _ = run_cli(["audit", str(script), "--json", "--set", "GPTQ_RESERVE_SECONDS=0"], capsys)
    obj = json.loads(out)
    assert code == 1 and [f["rule"] for f in obj["findings"] if f["status"] == "active"] == ["CALIB-VAL"]
    assert "600 s" in obj["findings"][0]["explanation"]
    assert audit(script, settings={"GPTQ_RESERVE_SECONDS": "12", "MAX_WALLCLOCK_SECONDS": "600"}).verdict == "clean"


def test_kit_settings_and_its_gptq_reserve_are_read():
    """The kit declares its settings as `x: T = S(default, doc)` and keeps GPTQ_RESERVE_SECONDS back from the loop's
    cap only with QUANT_METHOD=gptq (train_cap_seconds, self.cap_ms): its presets audit clean and without a warning
    about an unreadable cap; a zero reserve is dormant behind QUANT_METHOD=gptq and active with it."""
    kit = ROOT / "train_gpt.py"
    for preset in ("record", "frontier"):
        env_file = ROOT / "presets" / f"{preset}.env"
        if not env_file.exists():
            continue
        env = dict(x.strip().split("=", 1) for x in env_file.read_text().splitlines()
                   if "=" in x and not x.lstrip().startswith("#"))
        rep = audit(kit, settings=env)
        assert rep.verdict == "clean" and not any("could not be read" in w for w in rep.warnings), preset
    rep = audit(kit, settings={"GPTQ_RESERVE_SECONDS": "0"})
    assert [(f.rule, f.status, f.flag) for f in rep.findings] == [("CALIB-VAL", "dormant", "QUANT_METHOD=gptq")]
    rep = audit(kit, settings={"GPTQ_RESERVE_SECONDS": "0", "QUANT_METHOD": "gptq"})
    assert rep.verdict == "flagged" and [f.rule for f in rep.findings] == ["CALIB-VAL"]
