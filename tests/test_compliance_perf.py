"""Long and large entries are audited whole: a generated 3,000-line entry audits clean and completely, and the
analysis cost grows with the size of the code, not faster. How long it takes is a benchmark, not a test:
`python bench/bench_audit.py synthetic --mb 1 5` (figures in bench/RESULTS.md)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_audit import make_script, make_table_script  # noqa: E402

from compliance.audit import audit  # noqa: E402
from compliance.source import load_program  # noqa: E402
from compliance.taint import LabelPass  # noqa: E402


def test_3000_line_script_audits_clean_and_whole(tmp_path):
    src = make_script(3000)
    assert 2950 <= src.count("\n") <= 3200
    p = tmp_path / "big_train_gpt.py"
    p.write_text(src)
    rep = audit(p)
    assert rep.verdict == "clean" and rep.incomplete == []
    # the TTT behind its default-off flag is seen (dormant), not skipped
    ttt = [f for f in rep.findings if f.rule == "TTT-PRE"]
    assert ttt == [] or all(f.status == "dormant" for f in ttt)


def test_label_passes_grow_linearly(tmp_path, monkeypatch):
    """Statements labelled per statement of code stays bounded as the script grows (no per-function rescans of
    the whole program): counted, not timed."""
    calls = {"n": 0}
    orig = LabelPass._stmt

    def counting(self, st):
        calls["n"] += 1
        return orig(self, st)
    monkeypatch.setattr(LabelPass, "_stmt", counting)
    ratios = []
    for lines in (600, 2400):
        p = tmp_path / f"s{lines}.py"
        p.write_text(make_script(lines))
        calls["n"] = 0
        rep = audit(p)
        n_stmts = sum(1 for u in load_program(p).units for _ in u.nodes)
        assert rep.verdict == "clean"
        ratios.append(calls["n"] / n_stmts)
    assert ratios[1] <= ratios[0] * 1.25


def test_long_expression_chains_cost_linear_work(tmp_path, monkeypatch):
    """A 4x longer `a + b + ...` chain (module constants, a hash mix) costs at most ~4x the node visits: no rule asks
    a question of every level of a chain that walks the rest of it (counted, not timed)."""
    from compliance import astutil
    visits = {"n": 0}
    orig = astutil._fields_of

    def counting(n):
        visits["n"] += 1
        return orig(n)
    monkeypatch.setattr(astutil, "_fields_of", counting)
    base = (ROOT / "tests/fixtures/compliance/rules/ttt_pre/ttt_pre_quant_adamw.py").read_text()
    counts = []
    for n in (1000, 4000):
        extra = ("W = " + " + ".join(f"w{i % 7}" for i in range(n)) + "\n"
                 "B = " + " + ".join(repr("ab") for _ in range(n)) + "\n"
                 "def mix(h, y):\n    return " + " ^ ".join(["h"] * n) + " ^ (y * 31)\n")
        p = tmp_path / f"chain{n}.py"
        p.write_text(base.replace("def main():", extra + "\n\ndef main():", 1))
        visits["n"] = 0
        assert audit(p).verdict == "flagged"
        counts.append(visits["n"])
    assert counts[1] <= counts[0] * 4 * 1.5


def test_a_data_table_is_audited_without_entering_its_elements(tmp_path):
    p = tmp_path / "table.py"
    p.write_text(make_table_script(200_000))
    rep = audit(p)
    assert rep.verdict == "clean" and rep.incomplete == []


def test_bench_audit_checks_its_arguments_first(tmp_path):
    import subprocess
    for args, words in [(["synthetic", "--mb", "0"], "--mb takes positive sizes"),
                        (["synthetic", "--other", str(tmp_path)], "holds no compliance/ package"),
                        (["records", str(tmp_path / "missing")], "not a folder")]:
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_audit.py"), *args], capture_output=True,
                           text=True)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1 and words in p.stderr
