"""Rule fixtures: every violator is found with the expected status, every legal look-alike stays clean.

Each script in tests/fixtures/compliance/rules/ states what the auditor must report in its header:
``# expect: RULE status`` (one line per expected finding) or ``# expect: clean``, and optionally
``# expect-verdict: ...``. Folders in tests/fixtures/compliance/folders/ carry an expect.json.
Run with -s to see the recall / false-positive table.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.audit import audit  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "compliance"
RULE_FILES = sorted((FIXTURES / "rules").glob("*.py"))
FOLDERS = sorted(p for p in (FIXTURES / "folders").iterdir() if (p / "expect.json").is_file())
LIVE = ("active", "needs-ruling")


def expectations(path: Path):
    exp, verdict = [], None
    for line in path.read_text().splitlines()[:6]:
        if line.startswith("# expect:"):
            spec = line.split(":", 1)[1].strip()
            if spec != "clean":
                rule, status = spec.split()
                exp.append((rule, status))
        elif line.startswith("# expect-verdict:"):
            verdict = line.split(":", 1)[1].strip()
    if verdict is None:
        live = [s for _, s in exp if s in LIVE]
        verdict = "flagged" if "active" in live else "needs-ruling" if live else "clean"
    return exp, verdict


_RESULTS = {}


def _run(path: Path):
    if path not in _RESULTS:
        _RESULTS[path] = audit(path)
    return _RESULTS[path]


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_rule_fixture(path):
    exp, verdict = expectations(path)
    rep = _run(path)
    got = {(f.rule, f.status) for f in rep.findings}
    for rule, status in exp:
        assert (rule, status) in got, f"{path.name}: expected {rule} {status}, got {sorted(got)}"
    unexpected = [(f.rule, f.status, f.line) for f in rep.findings
                  if f.status in LIVE and (f.rule, f.status) not in exp]
    assert not unexpected, f"{path.name}: unexpected live findings {unexpected}"
    assert rep.verdict == verdict, f"{path.name}: verdict {rep.verdict}, expected {verdict}"
    for f in rep.findings:   # every finding is complete
        assert f.rule and f.file and f.line > 0 and f.evidence and f.explanation and f.ruling


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_folder_fixture(folder):
    exp = json.loads((folder / "expect.json").read_text())
    rep = _run(folder)
    assert rep.verdict == exp["verdict"], [f.as_dict() for f in rep.findings]
    got = {(f.rule, f.status, Path(f.file).name) for f in rep.findings}
    for rule, status, file in exp["findings"]:
        assert (rule, status, file) in got, f"{folder.name}: expected {rule} {status} in {file}, got {sorted(got)}"
    for run in exp.get("runs", []):
        assert any(run in f.runs for f in rep.findings), f"{folder.name}: no finding switched on by {run}"
    if not exp["findings"]:
        assert not [f for f in rep.findings if f.status in LIVE]


def test_recall_and_false_positive_table():
    """Recall over every expected (rule, status) and false positives over everything, printed as a table."""
    rows = []
    per_rule = {}
    fp_total = 0
    for path in RULE_FILES:
        exp, verdict = expectations(path)
        rep = _run(path)
        got = {(f.rule, f.status) for f in rep.findings}
        for rule, status in exp:
            hit = (rule, status) in got
            d = per_rule.setdefault(rule, [0, 0, 0, 0])
            d[0] += 1
            d[1] += int(hit)
        extra = [f for f in rep.findings if f.status in LIVE and (f.rule, f.status) not in exp]
        fp_total += len(extra)
        for f in extra:
            per_rule.setdefault(f.rule, [0, 0, 0, 0])[2] += 1
        if not exp:
            per_rule.setdefault("(legal)", [0, 0, 0, 0])[3] += 1
        rows.append((path.stem, ",".join(f"{r} {s}" for r, s in exp) or "clean", rep.verdict, len(extra)))
    width = max(len(r[0]) for r in rows)
    print("\n" + f"{'fixture':<{width}}  {'expected':<26}  {'verdict':<12}  false+")
    for name, expected, verdict, fp in rows:
        print(f"{name:<{width}}  {expected:<26}  {verdict:<12}  {fp}")
    print(f"\n{'rule':<14} {'expected':>8} {'found':>6} {'recall':>7} {'false+':>7}")
    total_exp = total_hit = 0
    for rule in sorted(per_rule):
        n, hit, fp, legal = per_rule[rule]
        total_exp += n
        total_hit += hit
        rec = f"{100 * hit / n:.0f}%" if n else "-"
        label = f"{rule} ({legal} files)" if rule == "(legal)" else rule
        print(f"{label:<14} {n:>8} {hit:>6} {rec:>7} {fp:>7}")
    print(f"{'all':<14} {total_exp:>8} {total_hit:>6} {100 * total_hit / total_exp:>6.0f}% {fp_total:>7}")
    assert total_hit == total_exp, "recall below 100% on the fixtures"
    assert fp_total == 0, "false positives on the fixtures"
