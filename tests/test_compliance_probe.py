"""Dynamic probes: an honest implementation of the CONTRACT.md scoring functions passes, and each leak in the
leaking twin is caught by the probe made for it."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.cli import main as cli  # noqa: E402
from compliance.probe import Ledger, ProbeError, run_probes  # noqa: E402

PROBE_DIR = ROOT / "tests" / "fixtures" / "compliance" / "probe"
HONEST = PROBE_DIR / "fake_kit_honest.py"
LEAKY = PROBE_DIR / "fake_kit_leaky.py"
SMALL = dict(n_tokens=48, seq_len=16, stride=4)


def statuses(result):
    return {r["probe"]: r["status"] for r in result["probes"]}


def test_honest_fake_kit_passes():
    res = run_probes(str(HONEST), {}, **SMALL)
    st = statuses(res)
    assert res["verdict"] == "pass", res["probes"]
    assert res["dtype"] == "float64"
    for probe in ("future-suffix invariance (network)", "answer-mask invariance (network)", "normalisation (network)",
                  "gold consistency (network)", "future-suffix invariance (PPM)", "answer-mask invariance (PPM)",
                  "normalisation (PPM)", "gold consistency (PPM)", "normalisation (mixture)", "TTT ledger",
                  "future-suffix invariance (TTT)"):
        assert st[probe] == "pass", probe


@pytest.mark.parametrize("leak, caught_by", [
    ("future", ["future-suffix invariance (network)", "answer-mask invariance (network)"]),
    ("answer", ["answer-mask invariance (PPM)"]),
    ("norm", ["normalisation (PPM)", "normalisation (mixture)"]),
    ("gold", ["gold consistency (network)"]),
    ("hashgold", ["gold consistency (PPM)"]),
    ("ttt", ["TTT ledger", "future-suffix invariance (TTT)"]),
    ("twice", ["TTT ledger"]),
])
def test_each_leak_is_caught(leak, caught_by):
    res = run_probes(str(LEAKY), {"LEAK": leak}, **SMALL)
    st = statuses(res)
    assert res["verdict"] == "fail"
    for probe in caught_by:
        assert st[probe] == "fail", (probe, res["probes"])


def test_ledger_checks():
    ok = Ledger()
    ok.scored([1, 2, 3])
    ok.trained([1, 2])
    ok.scored([4])
    assert ok.check(5)[0]
    bad = Ledger()
    bad.trained([1])
    bad.scored([1, 2, 3, 4])
    bad.scored([2])
    good, detail = bad.check(5)
    assert not good and "before being scored" in detail and "scored twice" in detail


def test_probe_cli_exit_codes(capsys):
    assert cli(["probe", "--script", str(LEAKY), "--tokens", "48", "--seq-len", "16", "--stride", "4"]) == 1
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and "future-suffix invariance (network)" in out
    assert cli(["probe", "--script", str(PROBE_DIR / "missing.py")]) == 2
    assert cli(["probe", "--script", str(HONEST), "BAD"]) == 2


def test_probe_refuses_scripts_without_the_contract(tmp_path):
    p = tmp_path / "not_a_kit.py"
    p.write_text("x = 1\n")
    with pytest.raises(ProbeError):
        run_probes(str(p), {}, **SMALL)


@pytest.mark.parametrize("env", [{"PPMC": "1", "TTT": "1"},
                                 {"PPMC": "1", "TTT": "1", "PPMC_RESET": "doc", "VALUE_RESIDUAL": "1",
                                  "GATED_ATTENTION": "1", "SMEAR_GATE": "1", "BIGRAM_HASH": "1", "XSA_LAST_N": "1"}])
def test_kit_train_gpt_passes_every_probe(env):
    res = run_probes(str(ROOT / "train_gpt.py"), env)
    assert res["verdict"] == "pass", [r for r in res["probes"] if r["status"] != "pass"]
    assert {"TTT ledger", "normalisation (mixture)", "future-suffix invariance (TTT)"} <= set(statuses(res))


@pytest.mark.parametrize("args, message", [
    (["--stride", "0"], "--stride must be between 1 and --seq-len"),
    (["--stride", "33"], "--stride must be between 1 and --seq-len"),
    (["--tokens", "0"], "--tokens must be between 4"),
    (["--tokens", "1"], "--tokens must be between 4"),
    (["--tokens", "-5"], "--tokens must be between 4"),
    (["--seq-len", "0"], "--seq-len must be at least 2"),
    (["--seq-len", "1", "--stride", "1"], "--seq-len must be at least 2"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_probe_refuses_bad_sizes_as_usage_errors(args, message, capsys):
    assert cli(["probe", "--script", str(HONEST), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
