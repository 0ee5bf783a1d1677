"""Rule fixtures: every violator is found with the expected status, every legal look-alike stays clean, and the rule
registry is complete (every rule id has violating and legal fixtures and a README row).

Script fixtures live in tests/fixtures/compliance/rules/<class>/ and state what the auditor must report in their
header: ``# expect: RULE status`` (one line per expected finding) or ``# expect: clean``, and optionally
``# expect-verdict: ...``. Folder fixtures in tests/fixtures/compliance/folders/ carry an expect.json
({"verdict", "findings": [[rule, status, file]], "args": {...}}). Run with -s to see the recall / false-positive
table per class.
"""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.audit import audit  # noqa: E402
from compliance.rules import REGISTRY, rule_ids  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "compliance"
RULE_FILES = sorted((FIXTURES / "rules").rglob("*.py"))
FOLDERS = sorted(p for p in (FIXTURES / "folders").iterdir() if (p / "expect.json").is_file())
LIVE = ("active", "needs-ruling")


def expectations(path: Path):
    """(expected [(rule, status)], expected verdict) from a script fixture's header."""
    exp, verdict = [], None
    for line in path.read_text().splitlines()[:8]:
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


def fixture_class(path: Path) -> str:
    """The detector class a fixture exercises: its `# class:` header, else its folder."""
    if path.is_file():
        for line in path.read_text().splitlines()[:8]:
            if line.startswith("# class:"):
                return line.split(":", 1)[1].strip()
        return path.parent.name
    return "logs and data" if path.parent.name == "folders" else path.parent.name


def folder_expectations(folder: Path):
    exp = json.loads((folder / "expect.json").read_text())
    return [tuple(x[:2]) for x in exp["findings"]], exp["verdict"]


_RESULTS = {}


def _run(path: Path):
    if path not in _RESULTS:
        args = {}
        if path.is_dir():
            args = dict(json.loads((path / "expect.json").read_text()).get("args", {}))
            if "data" in args:
                args["data_dir"] = path / args.pop("data")
        _RESULTS[path] = audit(path, **args)
    return _RESULTS[path]


def _rel(p: Path) -> str:
    return str(p.relative_to(FIXTURES))


@pytest.mark.parametrize("path", RULE_FILES, ids=[_rel(p) for p in RULE_FILES])
def test_rule_fixture(path):
    exp, verdict = expectations(path)
    rep = _run(path)
    got = {(f.rule, f.status) for f in rep.findings}
    for rule, status in exp:
        assert (rule, status) in got, f"{_rel(path)}: expected {rule} {status}, got {sorted(got)}"
    unexpected = [(f.rule, f.status, f.line) for f in rep.findings
                  if f.status in LIVE and (f.rule, f.status) not in exp]
    assert not unexpected, f"{_rel(path)}: unexpected live findings {unexpected}"
    assert rep.verdict == verdict, f"{_rel(path)}: verdict {rep.verdict}, expected {verdict} {rep.incomplete}"
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


def _fixtures_of(rule) -> list[Path]:
    out = []
    for d in rule.fixtures:
        p = FIXTURES / d
        out += sorted(p.rglob("*.py")) if d.startswith("rules/") else [p]
    return out


def _expected(p: Path):
    return folder_expectations(p) if p.is_dir() else expectations(p)


def test_registry_every_rule_has_violating_and_legal_fixtures_and_a_readme_row():
    readme = (ROOT / "compliance" / "README.md").read_text()
    claimed = set()
    for rid in rule_ids():
        fixtures = [p for r in REGISTRY if r.id == rid for p in _fixtures_of(r)]
        for r in REGISTRY:
            if r.id == rid:
                for d in r.fixtures:
                    assert (FIXTURES / d).exists(), f"{rid}: registered fixture {d} does not exist"
        violating = [p for p in fixtures if any(rule == rid for rule, _ in _expected(p)[0])]
        legal = [p for p in fixtures if not any(rule == rid for rule, _ in _expected(p)[0])]
        assert violating, f"{rid}: no violating fixture"
        assert legal, f"{rid}: no legal look-alike fixture"
        assert re.search(rf"^\| {re.escape(rid)} \|", readme, re.M), f"{rid}: no row in compliance/README.md"
        claimed |= set(fixtures)
    cross = ("common", "reach")       # classes that cut across rules: wrappers, reachability
    orphans = [_rel(p) for p in RULE_FILES if p not in claimed and p.parent.name not in cross]
    assert not orphans, f"fixtures no registered rule claims: {orphans}"


def test_recall_and_false_positive_table():
    """Recall over every expected (rule, status) and false positives over everything, per fixture class."""
    per_class: dict[str, list[int]] = {}
    rows = []
    for path in RULE_FILES + FOLDERS:
        exp, verdict = _expected(path)
        rep = _run(path)
        cls = fixture_class(path)
        d = per_class.setdefault(cls, [0, 0, 0, 0, 0])    # expected, found, violating files, legal files, false+
        got = {(f.rule, f.status) for f in rep.findings}
        hits = sum((r, s) in got for r, s in exp)
        extra = [f for f in rep.findings if f.status in LIVE and (f.rule, f.status) not in exp]
        d[0] += len(exp)
        d[1] += hits
        d[2] += verdict != "clean"      # a fixture whose expected verdict is clean is a legal one
        d[3] += verdict == "clean"
        d[4] += len(extra)
        rows.append((_rel(path), ",".join(f"{r} {s}" for r, s in exp) or "clean", rep.verdict, len(extra)))
    width = max(len(r[0]) for r in rows)
    print("\n" + f"{'fixture':<{width}}  {'expected':<30}  {'verdict':<12}  false+")
    for name, expected, verdict, fp in rows:
        print(f"{name:<{width}}  {expected:<30}  {verdict:<12}  {fp}")
    print(f"\n{'class':<34} {'violating':>9} {'legal':>6} {'expected':>8} {'found':>6} {'recall':>7} {'false+':>7}")
    tot = [0, 0, 0, 0, 0]
    for cls in sorted(per_class):
        e, h, v, lg, fp = per_class[cls]
        tot = [a + b for a, b in zip(tot, per_class[cls])]
        rec = f"{100 * h / e:.0f}%" if e else "-"
        print(f"{cls:<34} {v:>9} {lg:>6} {e:>8} {h:>6} {rec:>7} {fp:>7}")
    print(f"{'all':<34} {tot[2]:>9} {tot[3]:>6} {tot[0]:>8} {tot[1]:>6} {100 * tot[1] / tot[0]:>6.0f}% {tot[4]:>7}")
    assert tot[1] == tot[0], "recall below 100% on the fixtures"
    assert tot[4] == 0, "false positives on the fixtures"
