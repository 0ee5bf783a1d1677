"""Random, truncated and syntactically broken Python: the auditor always returns a report, never a traceback."""

import json
import random
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.audit import audit  # noqa: E402
from compliance.cli import main as cli  # noqa: E402
from compliance.source import InputError  # noqa: E402

SOURCES = [p.read_text() for p in sorted((ROOT / "tests" / "fixtures" / "compliance" / "rules").rglob("*.py"))]
TOKENS = ["def f(", "):", "\n    ", "for i in range(", "val_tokens[", "]", " = ", ".backward()", "opt.step()",
          "loss_sum += ", "if ", "else:", "\n", "lambda x:", "yield", "(", ")", "[", "{", "}", "'", '"', "\\",
          "exec(", "lzma.decompress(", "os.environ.get('X', '0')", "with torch.no_grad():", "class A:", "return",
          "np.add.at(t, k, 1)", "^", "*", "% m", "x[1:]", "@", "async ", "await ", "global g", "nonlocal n",
          "try:", "except:", "match x:", "case 1:", "f'{x!r:>{w}}'", "*args", "**kw", ":=", "del x", "...", "#"]


def check(text, tmp_path):
    p = tmp_path / "fuzz.py"
    p.write_text(text, encoding="utf-8", errors="replace")
    try:
        rep = audit(p)
    except InputError:
        return                                   # a clear one-line refusal (e.g. binary content) is fine
    obj = json.loads(rep.to_json())
    assert obj["verdict"] in ("clean", "flagged", "needs-ruling", "incomplete")
    assert isinstance(rep.to_text(), str)
    assert not rep.incomplete or rep.verdict != "clean"   # fails closed


fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(st.text(max_size=400))
def test_random_text(tmp_path, text):
    check(text, tmp_path)


@fuzz
@given(st.lists(st.sampled_from(TOKENS), max_size=80))
def test_random_python_tokens(tmp_path, toks):
    check("".join(toks), tmp_path)


@fuzz
@given(st.integers(0, len(SOURCES) - 1), st.floats(0, 1), st.integers(0, 2 ** 32 - 1))
def test_truncated_and_mutated_fixtures(tmp_path, which, frac, seed):
    src = SOURCES[which]
    rng = random.Random(seed)
    cut = src[: int(len(src) * frac)]
    chars = list(cut)
    for _ in range(rng.randint(0, 6)):            # drop, duplicate or corrupt a few characters
        if not chars:
            break
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            del chars[i]
        elif op < 0.7:
            chars.insert(i, rng.choice("()[]{}:'\"\\\n\t #"))
        else:
            chars[i] = rng.choice("x(:\n")
    check("".join(chars), tmp_path)


def test_cli_never_tracebacks_on_garbage(tmp_path, capsys):
    p = tmp_path / "g.py"
    for text in ["def f(:\n  return", "(((((((((((((((((((", "x = " + "(" * 300 + ")" * 300, "\x00\x01" * 5 + "import os",
                 "if True:\n" + "    " * 150 + "pass", "class A(\n", "exec(lzma.decompress(b'\\xfd7zXZ'))"]:
        p.write_text(text)
        code = cli(["audit", str(p), "--json"])
        out = capsys.readouterr()
        assert code in (0, 1, 2, 3)
        assert "Traceback" not in out.err
        if code != 2:
            json.loads(out.out)
