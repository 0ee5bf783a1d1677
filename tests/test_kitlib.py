"""kitlib: the atomic writer, the record-significance test and seed statistics, process groups, scripts by path."""
import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from conftest import ROOT
from kitlib import fileio, procs, scripts, stats


# ---------------------------------------------------------------- fileio

def test_write_atomic_writes_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "out.bin"
    assert fileio.write_atomic(p, b"ab", b"cd") == p and p.read_bytes() == b"abcd"
    fileio.write_atomic(p, b"new")
    assert p.read_bytes() == b"new" and oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(x.name for x in p.parent.iterdir()) == ["out.bin"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(TypeError):
        fileio.write_atomic(p, b"half", "not bytes")  # fails after the first chunk was written
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(ValueError):
        fileio.write_json_atomic(p, {"x": math.nan})  # NaN is not JSON
    assert p.read_text() == "old"
    fileio.write_json_atomic(p, {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1} and p.read_text().endswith("\n")


def test_write_atomic_killed_mid_write_leaves_old_or_new(tmp_path):
    """kill -9 while a writer rewrites a 4 MB file in a loop: the file is always one whole version."""
    p = tmp_path / "big.bin"
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from kitlib.fileio import write_atomic
        i = 0
        while True:
            write_atomic({str(p)!r}, bytes([i % 251]) * (4 << 20))
            i += 1
            if i == 2:
                print("writing", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = p.read_bytes()
    assert len(data) == 4 << 20 and data.count(data[:1]) == len(data)


def test_unwritable_says_why_without_creating_anything(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert fileio.unwritable(tmp_path / "new" / "deeper" / "out.png") is None
    assert fileio.unwritable(f) is None and fileio.unwritable(tmp_path, folder=True) is None
    assert "is a folder" in fileio.unwritable(tmp_path)
    assert "is not a folder" in fileio.unwritable(f, folder=True)
    assert "is not a folder" in fileio.unwritable(f / "out.png")
    assert "is not a folder" in fileio.unwritable(f / "a" / "b", folder=True)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file.txt"]


# ---------------------------------------------------------------- stats

LOSSES = [2.03814236, 2.03981507, 2.03702995]
REF = [2.0727, 2.0719, 2.0741, 2.0733]
A = [1.0, 2.0, 3.0, 4.0]
B = [2.0, 4.0, 6.0]


def test_mean_and_sample_std():
    assert stats.sample_std(LOSSES) == pytest.approx(np.std(LOSSES, ddof=1), rel=1e-12)
    assert stats.sample_std(LOSSES) != pytest.approx(np.std(LOSSES, ddof=0), rel=1e-6)
    assert stats.sample_std([1.0]) is None and stats.mean(LOSSES) == pytest.approx(np.mean(LOSSES), rel=1e-15)
    assert stats.mean_std([1.0, 2.0, 4.0]) == (3, pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)))
    assert stats.mean_std([]) == (0, None, None)
    with pytest.raises(ValueError):
        stats.mean([])


def test_welch_by_hand_and_against_scipy():
    # v1 = var(A)/4 = 5/12, v2 = var(B)/3 = 4/3; df = (7/4)^2 / ((5/12)^2/3 + (4/3)^2/2) = 1323/409
    w = stats.welch(A, B)
    assert w["t"] == pytest.approx(-1.5 / math.sqrt(7 / 4), rel=1e-12)
    assert w["df"] == pytest.approx(1323 / 409, rel=1e-12)
    assert w["p"] == pytest.approx(2 * sps.t.sf(1.5 / math.sqrt(7 / 4), 1323 / 409), rel=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.normal(1.2, 0.01, size=3), rng.normal(1.19, 0.02, size=5)
        ref = sps.ttest_ind(a, b, equal_var=False)
        w = stats.welch(a, b)
        assert (w["t"], w["p"], w["df"]) == pytest.approx((ref.statistic, ref.pvalue, ref.df), rel=1e-12)
    assert stats.welch([1.0], [1.0, 2.0]) is None and stats.welch([1.0, 1.0], [2.0, 2.0]) is None


def test_paired_needs_matching_seeds():
    x, y = {1: 1.20, 2: 1.25, 3: 1.22}, {1: 1.21, 2: 1.27, 3: 1.22}
    ref = sps.ttest_rel([1.20, 1.25, 1.22], [1.21, 1.27, 1.22])
    p = stats.paired(x, y)
    assert (p["t"], p["p"], p["df"]) == (pytest.approx(ref.statistic, rel=1e-12), pytest.approx(ref.pvalue), 2)
    assert stats.paired(x, {1: 1.2, 2: 1.2, 4: 1.2}) is None and stats.paired({1: 1.0}, {1: 2.0}) is None


def test_record_test_one_sample_is_scipys_one_sided():
    ref = 2.0727
    r = stats.record_test(LOSSES, ref_loss=ref)
    want = sps.ttest_1samp(LOSSES, ref - 0.005, alternative="less")
    assert r["test"] == "one-sample" and r["df"] == 2 and r["n_reference"] == 1
    assert r["t"] == pytest.approx(want.statistic, rel=1e-10) and r["p_value"] == pytest.approx(want.pvalue, rel=1e-9)
    n, m, s = len(LOSSES), np.mean(LOSSES), np.std(LOSSES, ddof=1)
    assert r["t"] == pytest.approx((m - (ref - 0.005)) / (s / np.sqrt(n)), rel=1e-12) and r["t"] < 0
    assert r["improvement_nats"] == pytest.approx(ref - m) and r["meets_record_bar"]
    assert stats.record_test(LOSSES, ref_losses=[ref]) == r  # one reference value is a number, not a sample


def test_record_test_welch_is_scipys_one_sided():
    r = stats.record_test(LOSSES, ref_losses=REF)
    want = sps.ttest_ind(LOSSES, np.array(REF) - 0.005, equal_var=False, alternative="less")
    assert r["test"] == "welch" and r["n_reference"] == 4 and r["reference_loss"] == pytest.approx(np.mean(REF))
    assert (r["t"], r["p_value"], r["df"]) == pytest.approx((want.statistic, want.pvalue, want.df), rel=1e-9)
    assert r["meets_record_bar"] and "Welch" in r["description"]


def test_record_test_direction_margin_and_degenerate_cases():
    above = stats.record_test(LOSSES, ref_loss=2.0)  # the entry is worse than the reference: p > 0.5
    assert above["p_value"] > 0.5 and not above["meets_record_bar"] and above["improvement_nats"] < 0
    close = stats.record_test(LOSSES, ref_loss=stats.mean(LOSSES) + 0.003)  # 0.003 nats better: never a record
    assert not close["meets_record_bar"] and close["p_value"] > 0.5
    flat = stats.record_test([2.0, 2.0, 2.0], ref_loss=2.1)  # no spread: the sign decides
    assert (flat["t"], flat["p_value"], flat["meets_record_bar"]) == (-math.inf, 0.0, True)
    assert stats.record_test([2.0, 2.0], ref_loss=2.004)["p_value"] == 1.0
    assert stats.record_test([2.0, 2.0], ref_losses=[2.1, 2.1])["p_value"] == 0.0
    one = stats.record_test([2.0], ref_loss=2.1)
    assert (one["t"], one["df"], one["p_value"], one["meets_record_bar"]) == (None, None, None, False)
    with pytest.raises(ValueError):
        stats.record_test(LOSSES)
    with pytest.raises(ValueError):
        stats.record_test([], ref_loss=2.0)


def test_bpb_to_nats_uses_the_entrys_ratio():
    assert stats.bpb_to_nats(1.2, 2.0, 1.0) == pytest.approx(2.4)


# ---------------------------------------------------------------- procs

def test_stop_ends_the_whole_group(tmp_path, gone):
    """A launcher whose child ignores nothing special: stop() ends both (a torchrun and its workers)."""
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(120)\n")
    proc = procs.start([sys.executable, "-c", code], cwd=tmp_path)
    child = int(proc.stdout.readline())
    procs.stop(proc, grace=5)
    assert proc.poll() is not None and gone(child), "the launcher's child survived stop()"
    procs.stop(proc)  # twice is harmless


def test_deadline_and_output(tmp_path):
    proc = procs.start([sys.executable, "-c", "import sys, time; print('hi'); print('err', file=sys.stderr); "
                                              "sys.stdout.flush(); sys.stderr.flush(); time.sleep(60)"])
    with procs.Deadline(proc, 1.0) as d:
        lines = [x.strip() for x in proc.stdout]
    proc.wait()
    assert d.expired and sorted(lines) == ["err", "hi"] and proc.returncode != 0
    quick = procs.start([sys.executable, "-c", "print('done')"])
    with procs.Deadline(quick, 60) as d:
        assert quick.stdout.read().strip() == "done"
    assert quick.wait() == 0 and not d.expired
    with pytest.raises(OSError):
        procs.start(["/nonexistent/python"])


def test_script_command_is_python_or_torchrun():
    """One process: the interpreter runs the script; several: torchrun's module, standalone, one worker per process
    (the command bench/ and ablations/ start their runs with)."""
    assert procs.script_command(Path("t.py")) == [sys.executable, "t.py"]
    assert procs.script_command("t.py", 1, "py") == ["py", "t.py"]
    assert procs.script_command("t.py", 4, "py") == ["py", "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node=4", "t.py"]


# ---------------------------------------------------------------- scripts

@pytest.mark.parametrize("source,message", [
    (None, "does not exist"),
    ("raise RuntimeError('broken on purpose')\n", "failed: RuntimeError: broken on purpose"),
    ("import sys\nsys.exit(3)\n", "called sys.exit(3)"),
    ("def f(:\n", "failed: SyntaxError"),
    ("x = 1\x00\n", "failed:"),
])
def test_load_script_errors_are_one_line(tmp_path, source, message):
    p = tmp_path / "train_gpt.py"
    if source is not None:
        p.write_text(source)
    before = list(sys.path)
    with pytest.raises(scripts.ScriptError) as err:
        scripts.load_script(p)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert sys.path == before and scripts.module_name(p) not in sys.modules


def test_load_script_registers_imports_siblings_and_caches(tmp_path):
    (tmp_path / "helper_mod_for_kitlib.py").write_text("VALUE = 41\n")
    p = tmp_path / "train_gpt.py"
    p.write_text("import dataclasses, helper_mod_for_kitlib\n"
                 "@dataclasses.dataclass\nclass H:\n    x: int = helper_mod_for_kitlib.VALUE + 1\n"
                 "if __name__ == '__main__':\n    raise SystemExit('main ran')\n")
    before = list(sys.path)
    mod = scripts.load_script(p)
    assert mod.H().x == 42 and sys.modules[scripts.module_name(p)] is mod and sys.path == before
    assert scripts.load_script(p) is mod
    named = scripts.load_script(p, "kitlib_test_named")
    assert named is not mod and sys.modules["kitlib_test_named"] is named
    assert scripts.module_name(p) != scripts.module_name(tmp_path / "other" / "train_gpt.py")
    bare = tmp_path / "train_gpt"  # any file name: a wrapper or a record's script need not end in .py
    bare.write_text("VALUE = 7\n")
    assert scripts.load_script(bare).VALUE == 7


# ---------------------------------------------------------------- cli

def test_argument_errors_are_one_line(capsys):
    from kitlib.cli import ArgumentParser
    ap = ArgumentParser(prog="python -m tool")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)
    sub.add_parser("run").add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["run", "--n", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err == "tool run: error: argument --n: invalid int value: 'x' (see python -m tool run --help)\n"
