"""The audit fails closed: whatever it could not analyse makes the verdict `incomplete` (exit 3, naming what), never
`clean`; and what real entries contain (Python 3.12 syntax, very long expressions) is analysed, not skipped."""

import ast
import base64
import json
import lzma
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance import source  # noqa: E402
from compliance.audit import audit  # noqa: E402
from compliance.cli import main as cli  # noqa: E402
from compliance.pysyntax import modernize, parse_modern  # noqa: E402
from compliance.rules import REGISTRY  # noqa: E402

RULES = ROOT / "tests" / "fixtures" / "compliance" / "rules"
PREQUANT = (RULES / "ttt_pre" / "ttt_pre_quant_adamw.py").read_text()
LEGAL = (RULES / "ttt_pre" / "legal_ttt_score_first.py").read_text()


def run_cli(args, capsys):
    code = cli(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unreadable_line_makes_a_clean_script_incomplete(tmp_path, capsys):
    p = tmp_path / "entry.py"
    p.write_text(LEGAL.replace("def main():", "def helper(:\n    return 1\n\n\ndef main():", 1))
    code, out, _ = run_cli(["audit", str(p), "--json"], capsys)
    obj = json.loads(out)
    assert code == 3 and obj["verdict"] == "incomplete"
    assert any("line(s)" in x and "not analysed" in x for x in obj["incomplete"])
    code, out, _ = run_cli(["audit", str(p)], capsys)
    assert code == 3 and "verdict: INCOMPLETE" in out and "not analysed" in out


def test_python312_fstrings_and_type_parameters_are_analysed(tmp_path):
    """PEP 701 f-strings on the line that adapts on validation data (as in the April records' main line) and PEP
    695 syntax elsewhere: parsed whole, the violation found, nothing left unanalysed."""
    src = PREQUANT.replace(
        "    prequant_adapt(args, model, val_tokens, device)\n",
        '    log = print; log(f"val: {", ".join(str(x) for x in [1, 2])}"); prequant_adapt(args, model, val_tokens, '
        'device); log(f"{"done"!r:>{8}}")\n', 1)
    src += "\n\ntype Table = dict[str, int]\n\n\ndef first[T](xs: list[T]) -> T:\n    return xs[0]\n"
    p = tmp_path / "entry.py"
    p.write_text(src)
    with pytest.raises(SyntaxError):
        ast.parse(src)                     # this interpreter's parser cannot read it
    rep = audit(p)
    assert rep.incomplete == []
    assert any(f.rule == "TTT-PRE" and f.status == "active" for f in rep.findings)
    assert any("3.12" in n for n in rep.notes)


@pytest.mark.parametrize("src,expected", [
    ('x = f"{", ".join(a)}"', "x = f\"{', '.join(a)}\""),
    ('x = f"{d["k"]!r:>{w}} {y=}"', "x = f\"{d['k']!r:>{w}} y={y!r}\""),
    ('x = (f"a {b}"\n     f"c {d["e"]}"  # note\n     "f")', "x = f\"a {b}c {d['e']}f\""),
    ('x = f"{f"{f"{1}"}"}"', 'x = f"""{f"{f' + "'{1}'" + '}"}"""'),
    ('x = f"""{a +\n b # comment\n}"""', "x = f'{a + b}'"),
    ('x = f"{a != b} {c == d} {{lit}} {"q"} \\N{BULLET}"', "x = f\"{a != b} {c == d} {{lit}} {'q'} \u2022\""),
    ("def f[T: int](x: T) -> T:\n    return x", "def f(x: T) -> T:\n    return x"),
    ("class C[T](B):\n    type A[K] = dict[K, T]", "class C(B):\n    A = dict[K, T]"),
])
def test_modernize_gives_the_312_tree_and_keeps_lines(src, expected):
    tree, rewritten = parse_modern(src)
    assert rewritten and ast.unparse(tree) == expected
    assert modernize(src).count("\n") == src.count("\n")


def test_very_long_expressions_are_analysed(tmp_path):
    n = 20_000
    extra = ("WEIGHTS = " + " + ".join(f"w{i % 7}" for i in range(n)) + "\n"
             "def mix(h, y):\n    return " + " ^ ".join(["h"] * n) + " ^ (y * 31)\n"
             "BLOB = " + " + ".join(repr("ab") for _ in range(n)) + "\n"
             "OK = " + " and ".join(f"(a{i} > 0)" for i in range(n)) + "\n"
             "CHAIN = x" + ".y" * n + "\n"
             "TABLE = [" + ", ".join(str(i) for i in range(n)) + "]\n")
    p = tmp_path / "deep.py"
    p.write_text(PREQUANT.replace("def main():", extra + "\n\ndef main():", 1))
    rep = audit(p)
    assert rep.incomplete == []
    assert any(f.rule == "TTT-PRE" and f.status == "active" for f in rep.findings)


def test_exec_of_code_it_cannot_decode_is_incomplete(tmp_path):
    p = tmp_path / "entry.py"
    p.write_text(LEGAL + "\nimport marshal, os\nexec(marshal.loads(open(os.environ['BLOB'], 'rb').read()))\n")
    rep = audit(p)
    assert rep.verdict == "incomplete" and any("exec() of code the auditor cannot decode" in x for x in rep.incomplete)
    # exec of a literal, of a decodable wrapper, and of a sibling file read by the loader are all seen
    q = tmp_path / "literal.py"
    q.write_text(LEGAL + "\nexec('y = 1')\n")
    assert audit(q).verdict == "clean"


def test_payload_past_the_size_cap_is_incomplete(tmp_path, monkeypatch):
    inner = LEGAL.encode()
    blob = base64.b85encode(lzma.compress(inner)).decode()
    p = tmp_path / "wrapped.py"
    p.write_text(f"import lzma, base64\nexec(lzma.decompress(base64.b85decode({blob!r})))\n")
    assert audit(p).verdict == "clean"
    monkeypatch.setattr(source, "MAX_DECODED", 1000)
    rep = audit(p)
    assert rep.verdict == "incomplete" and any("cap" in x for x in rep.incomplete)


def test_a_failing_rule_and_the_time_budget_are_incomplete(tmp_path, monkeypatch):
    p = tmp_path / "entry.py"
    p.write_text(LEGAL)
    rule = next(r for r in REGISTRY if r.id == "NGRAM-TARGET")

    def boom(ctx):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(rule, "check", boom)
    rep = audit(p)
    assert rep.verdict == "incomplete" and any("rule NGRAM-TARGET" in x for x in rep.incomplete)
    monkeypatch.undo()
    rep = audit(p, time_budget=1e-9)
    assert rep.verdict == "incomplete" and any("time budget" in x for x in rep.incomplete)


def test_empty_and_special_files_are_refused(tmp_path, capsys):
    empty = tmp_path / "empty.py"
    empty.write_text("")
    comments = tmp_path / "comments.py"
    comments.write_text("# nothing here\n\n   \n")
    for path, words in [(empty, "empty"), ("/dev/null", "not a regular file"), (comments, "no Python statements")]:
        code, out, err = run_cli(["audit", str(path)], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and words in err
    code, _, err = run_cli(["audit", str(empty), "--time-budget", "0"], capsys)
    assert code == 2 and "--time-budget" in err


def test_a_folder_without_its_code_is_incomplete(tmp_path, capsys):
    """A record folder whose train_gpt.py is 0 bytes (one published record is), or that holds only logs, is not clean:
    its code was not there to audit."""
    empty = tmp_path / "empty_entry"
    empty.mkdir()
    (empty / "train_gpt.py").write_text("")
    (empty / "submission.json").write_text('{"val_bpb": 1.3}')
    code, out, _ = run_cli(["audit", str(empty)], capsys)
    assert code == 3 and "train_gpt.py is empty" in out
    logs_only = tmp_path / "logs_only"
    logs_only.mkdir()
    (logs_only / "train.log").write_text("step:1/1 val_loss:2.0 val_bpb:1.2\n")
    rep = audit(logs_only)
    assert rep.verdict == "incomplete" and "no Python script" in rep.incomplete[0]
