"""Smoke tests of the benchmark harness (bench/) on the CPU at tiny sizes. No timing is asserted; the agreement of
the kit's sliding-window scorer and the benchmark's public-style reference evaluator is (it is correctness)."""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from bench import bench_eval, runs
from conftest import ROOT, cut_val, short_data
from data.shards import encode_shard

BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def small_data(dataset, tmp_path_factory):
    """The embedded dataset with its val split cut to 4,000 tokens (the runs' end-of-training validation and the
    evaluations stay short); the train shard is linked, not copied."""
    data_path, tok = dataset
    return short_data(data_path, tmp_path_factory.mktemp("bench_data"), cut_val(data_path, 4000)), tok


def bench(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_reference_windows_are_the_kits(tg):
    """The reference evaluator scores the same targets with the same contexts as train_gpt.windows."""
    for n in (2, 3, 10, 64, 65, 66, 100, 257):
        for seq_len in (1, 8, 64):
            for stride in sorted({1, max(1, seq_len // 4), seq_len // 2 or 1, seq_len}):
                kit = [(s, t) for s, a, e in tg.windows(n, seq_len, stride) for t in range(a, e)]
                starts, keep = bench_eval.reference_windows(n, seq_len, stride)
                L = min(seq_len, n - 1)
                ref = [(ws, t) for ws, k in zip(starts, keep) for t in range(ws + L - k + 1, ws + L + 1)]
                assert ref == kit, (n, seq_len, stride)
                assert [t for _, t in ref] == list(range(1, n))


def test_run_once_reads_upstream_log_and_stops_at_peak(tmp_path):
    """Upstream's spelling (peak ... reserved ...) is parsed, and a run is stopped once it logs peak memory."""
    fake = tmp_path / "fake_upstream.py"
    fake.write_text(textwrap.dedent("""
        import time
        print("logs/x.txt")
        print("model_params:17059912")
        t = 0.0
        for s in range(1, 21):
            t += 5000.0 if s == 1 else 100.0
            if s <= 10 or s % 5 == 0:
                print(f"step:{s}/20 train_loss:6.9000 train_time:{t:.0f}ms step_avg:{t / s:.2f}ms")
        print(f"step:20/20 val_loss:6.9 val_bpb:4.0 train_time:{t:.0f}ms step_avg:{t / 20:.2f}ms")
        print("peak memory allocated: 10184 MiB reserved: 10450 MiB", flush=True)
        time.sleep(120)
        print("final_int8_zlib_roundtrip_exact val_loss:6.9 val_bpb:4.0")
    """))
    t0 = time.perf_counter()
    out = runs.run_once([sys.executable, str(fake)], {"PYTHONUNBUFFERED": "1"}, tmp_path / "run", "peak",
                               60, False)
    assert out["killed"] and not out["timed_out"] and time.perf_counter() - t0 < 50
    parsed = runs.parse_log(out["lines"])
    assert parsed["params"] == 17059912 and parsed["peak_mib"] == 10184 and parsed["peak_reserved_mib"] == 10450
    ms, a, b = runs.steady_ms(parsed["steps"], 10)
    assert (a, b) == (10, 20) and ms == pytest.approx(100.0)
    assert runs.log_every(200) == 10 and 200 % runs.log_every(200) == 0


def test_bench_train_kit_against_itself(small_data, tmp_path):
    data, tok = small_data
    out, results = tmp_path / "train.json", tmp_path / "RESULTS.md"
    proc = bench("bench_train.py", "--tiny", "--other", ROOT / "train_gpt.py", "--rounds", "2", "--iterations", "3",
                 "--threads", "1", "--data-path", data, "--tokenizer-path", tok, "--json", out, "--record",
                 "--results", results)
    res = json.loads(out.read_text())
    assert [(r["role"], r["round"]) for r in res["runs"]] == [("kit", 1), ("other", 1), ("kit", 2), ("other", 2)]
    for r in res["runs"]:
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["measured_to"] == 3
        assert r["params"] == res["runs"][0]["params"] and r["stopped_by_bench"]
    assert res["summary"]["ratio_other_over_kit"] > 0 and len(res["summary"]["ratios"]) == 2
    assert "ms/step ratio other/kit" in proc.stdout
    assert "| train |" in results.read_text()


def test_bench_eval_reference_agrees_with_kit(small_data, tmp_path):
    data, tok = small_data
    other = tmp_path / "record_train_gpt.py"
    other.write_text("def eval_val_sliding(args, base_model, rank, world_size, device, val_tokens, stride=64):\n"
                     "    raise NotImplementedError\n")
    out = tmp_path / "eval.json"
    proc = bench("bench_eval.py", "--tiny", "--rounds", "2", "--max-tokens", "3000", "--threads", "1",
                 "--data-path", data, "--tokenizer-path", tok, "--other-script", other, "--json", out)
    res = json.loads(out.read_text())
    s = res["summary"]
    assert abs(s["kit"]["val_bpb"] - s["reference"]["val_bpb"]) <= 1e-6 and s["agree"]
    assert all(abs(r["val_bpb"] - s["kit"]["val_bpb"]) <= 1e-6 for r in res["runs"])
    assert res["targets"] == 2999 and res["stride"] < res["seq_len"]  # overlapping windows
    assert s["ratio_kit_over_reference"] > 0
    assert "defines eval_val_sliding(args, base_model" in proc.stdout


def test_bench_export_roundtrip_then_eval_the_artifact(small_data, tmp_path, tg):
    data, tok = small_data
    art, out = tmp_path / "tiny.ptz", tmp_path / "export.json"
    bench("bench_export.py", "--tiny", "--max-tokens", "3000", "--threads", "1", "--data-path", data,
          "--tokenizer-path", tok, "--save", art, "--json", out)
    r = json.loads(out.read_text())["result"]
    assert art.stat().st_size == r["artifact_bytes"] > 0 and r["pack_s"] > 0 and r["unpack_s"] > 0
    assert np.isfinite(r["gap_bpb"]) and abs(r["gap_bpb"]) < 0.05
    assert r["total_bytes"] == r["artifact_bytes"] + len((ROOT / "train_gpt.py").read_bytes())
    state, meta = tg.unpack_artifact(art.read_bytes())  # a real kit artifact, EVAL_ONLY-loadable
    assert meta["config"]["NUM_LAYERS"] == 2
    out2 = tmp_path / "eval.json"
    bench("bench_eval.py", "--artifact", art, "--rounds", "1", "--max-tokens", "2000", "--stride", "16",
          "--threads", "1", "--data-path", data, "--tokenizer-path", tok, "--json", out2)
    s = json.loads(out2.read_text())["summary"]
    assert s["agree"] and abs(s["kit"]["val_bpb"] - s["reference"]["val_bpb"]) <= 1e-6


def test_bench_flags_runs_each_configuration_against_the_baseline(small_data, tmp_path):
    """Two flags on the tiny model: every configuration trains (its own parameter count: SMEAR_GATE adds one vector
    of MODEL_DIM, VALUE_RESIDUAL two scalars per layer), the baseline row comes first, the record row lands."""
    data, tok = small_data
    out, results = tmp_path / "flags.json", tmp_path / "RESULTS.md"
    proc = bench("bench_flags.py", "--tiny", "--iterations", "3", "--threads", "1", "--only", "SMEAR_GATE=1",
                 "--only", "VALUE_RESIDUAL=1 GATED_ATTENTION=1", "--data-path", data, "--tokenizer-path", tok,
                 "--json", out, "--record", "--results", results)
    s = json.loads(out.read_text())["summary"]
    assert list(s) == ["baseline", "SMEAR_GATE=1", "VALUE_RESIDUAL=1 GATED_ATTENTION=1"]
    assert s["SMEAR_GATE=1"]["params"] == s["baseline"]["params"] + 64
    gated = 2 * (64 * 4 + 4)  # per layer: gate W (heads x d) and b (heads)
    assert s["VALUE_RESIDUAL=1 GATED_ATTENTION=1"]["params"] == s["baseline"]["params"] + 2 * 2 + gated
    assert all(v["ms_per_step"] > 0 and float(v["train_loss_last"]) > 0 for v in s.values())
    assert s["baseline"]["vs_baseline_pct"] == 0
    assert "vs baseline" in proc.stdout and "| flags |" in results.read_text()


def test_bench_flags_refuses_a_bad_configuration_before_running(small_data):
    data, tok = small_data
    proc = subprocess.run([sys.executable, str(BENCH / "bench_flags.py"), "--tiny", "--only", "XSA_LAST_N=9",
                           "--data-path", str(data), "--tokenizer-path", str(tok)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "configuration 'XSA_LAST_N=9'" in proc.stderr and "[round" not in proc.stdout


def test_bench_ppmc_measures_and_compares_another_script(tmp_path):
    """--script measures another train_gpt.py's function; --other alternates a second one and compares: a copy of
    the kit gives the same probabilities."""
    copy = tmp_path / "train_gpt.py"
    copy.write_bytes((ROOT / "train_gpt.py").read_bytes())
    proc = bench("bench_ppmc.py", "--tokens", "20000", "--script", copy)
    assert f"run 1 {copy}: " in proc.stdout and "peak resident memory" in proc.stdout
    proc = bench("bench_ppmc.py", "--tokens", "20000", "--repeat", "2", "--other", copy)
    runs = [line for line in proc.stdout.splitlines() if line.startswith("run ")]
    assert [r.split(":")[0] for r in runs] == [f"run 1 {ROOT / 'train_gpt.py'}", f"run 1 {copy}",
                                               f"run 2 {ROOT / 'train_gpt.py'}", f"run 2 {copy}"]
    assert len({r.split("mean -log2 p = ")[1] for r in runs}) == 1
    assert "ratio other/script" in proc.stdout and "probabilities identical" in proc.stdout


UPSTREAM_STYLE_EXPORT = '''
import torch


def quantize_state_dict_int8(state):
    """Per-tensor symmetric int8, the interface of upstream's export (not its code)."""
    out = {}
    for name, t in state.items():
        scale = t.float().abs().amax().clamp_min(1e-12) / 127
        out[name] = ((t.float() / scale).round().to(torch.int8), scale)
    return {"q": out}, {"tensors": len(out)}


def dequantize_state_dict_int8(obj):
    return {name: q.float() * scale for name, (q, scale) in obj["q"].items()}
'''


@pytest.mark.parametrize("other", ["upstream_style", "kit_copy"])
def test_bench_export_compares_another_scripts_format(small_data, tmp_path, other):
    """--other: an upstream-style int8 + zlib exporter, or a kit-like script (a copy of the kit: then both formats
    give the same reloaded model and score)."""
    data, tok = small_data
    script = tmp_path / "train_gpt.py"
    if other == "upstream_style":
        script.write_text(UPSTREAM_STYLE_EXPORT)
    else:
        script.write_bytes((ROOT / "train_gpt.py").read_bytes())
    out = tmp_path / "export.json"
    proc = bench("bench_export.py", "--tiny", "--max-tokens", "2000", "--threads", "1", "--rounds", "2",
                 "--other", script, "--data-path", data, "--tokenizer-path", tok, "--json", out)
    r = json.loads(out.read_text())["result"]
    o = r["other"]
    assert len(o["pack_s_all"]) == len(r["pack_s_all"]) == 2 and o["bytes"] > 0
    assert o["bytes_ratio_other_over_kit"] == pytest.approx(o["bytes"] / r["artifact_bytes"])
    assert np.isfinite(o["gap_bpb"]) and abs(o["gap_bpb"]) < 0.05
    if other == "kit_copy":
        assert o["format"] == "pack_artifact (kit-like)" and o["val_bpb_reloaded"] == r["val_bpb_reloaded"]
    else:
        assert o["format"] == "int8 + zlib (upstream)" and o["val_bpb_reloaded"] != r["val_bpb_reloaded"]
    assert "other: artifact bytes" in proc.stdout


def test_bench_export_other_without_an_export_is_one_error_line(small_data, tmp_path):
    data, tok = small_data
    script = tmp_path / "train_gpt.py"
    script.write_text("x = 1\n")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_export.py"), "--tiny", "--other", str(script),
                           "--data-path", str(data), "--tokenizer-path", str(tok)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "defines neither pack_artifact/unpack_artifact nor quantize_state_dict_int8" in proc.stderr


def test_bench_ppmc_other_that_is_not_there_or_fails_to_import(tmp_path):
    """A missing --other, or one whose import raises, is one error line and exit status 2, before any work."""
    broken = tmp_path / "train_gpt.py"
    broken.write_text("raise RuntimeError('broken on purpose')\n")
    for other, message in ((tmp_path / "nope.py", "does not exist"),
                           (broken, "failed: RuntimeError: broken on purpose")):
        proc = subprocess.run([sys.executable, str(BENCH / "bench_ppmc.py"), "--tokens", "1000", "--other", str(other)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr
        assert "run 1" not in proc.stdout


# ---------------------------------------------------------------- bad input: one line, exit 2, before any work

def _file(tmp, name, data=b"x\n"):
    p = tmp / name
    p.write_bytes(data)
    return p


def _bad_data(tmp, small_data, val: bytes):
    """A data folder whose val shard is `val` (the train shard and tokenizer are the good ones)."""
    data, tok = small_data
    d = tmp / "bad_data"
    d.mkdir()
    for f in data.glob("fineweb_train_*.bin"):
        (d / f.name).symlink_to(f.resolve())
    (d / "fineweb_val_000000.bin").write_bytes(val)
    return ["--data-path", d, "--tokenizer-path", tok]


# (script, extra arguments given (tmp, small_data), text of the one stderr line); every row exits 2
BAD = [
    ("export", lambda t, d: ["--tiny", "--save", _file(t, "f") / "a.ptz"], "error: --save"),
    ("export", lambda t, d: ["--tiny", "--save", t], "is a folder"),
    ("export", lambda t, d: ["--tiny", "--json", _file(t, "f") / "a.json"], "error: --json"),
    ("export", lambda t, d: ["--tiny"] + _bad_data(t, d, b""), "is 0 bytes, shorter than its 1024-byte header"),
    ("export", lambda t, d: ["--tiny"] + _bad_data(t, d, encode_shard([])), " 0 token"),
    ("export", lambda t, d: ["--tiny"] + _bad_data(t, d, b"\x01" * 3000), "has magic 16843009"),
    ("export", lambda t, d: ["--tiny", "--max-tokens", "-1"], "error: --max-tokens -1 must be at least 0"),
    ("export", lambda t, d: ["--artifact", t / "nope.ptz"], "error: --artifact"),
    ("export", lambda t, d: ["--artifact", _file(t, "junk.ptz", b"\x00junk" * 100)], "error: "),
    ("export", lambda t, d: ["--tiny", "--env", "NOTAFLAG=1"], "error: --env: NOTAFLAG is not a setting"),
    ("export", lambda t, d: ["--random", "--preset", _file(t, "bin.env", b"\x00\xff\xfe" * 50)],
     "is not a text file of KEY=VALUE lines"),
    ("export", lambda t, d: ["--random", "--preset", t / "nope.env"], "error: preset"),
    ("export", lambda t, d: ["--tiny", "--stride", "0"], "error: --stride 0 must be at least 1"),
    ("export", lambda t, d: ["--tiny", "--rounds", "0"], "error: --rounds 0 must be at least 1"),
    ("export", lambda t, d: ["--tiny", "--rounds", "x"], "argument --rounds: invalid int value"),
    ("eval", lambda t, d: ["--tiny", "--tol", "-1"], "error: --tol -1.0 must be at least 0"),
    ("eval", lambda t, d: ["--tiny", "--batch-seqs", "0"], "error: --batch-seqs 0 must be at least 1"),
    ("eval", lambda t, d: ["--tiny", "--other-script", t / "nope.py"], "error: --other-script"),
    ("eval", lambda t, d: ["--tiny", "--stride", "99", "--seq-len", "64"], "--stride 99 must be in 1..--seq-len"),
    ("eval", lambda t, d: ["--tiny"] + _bad_data(t, d, b""), "is 0 bytes, shorter than its 1024-byte header"),
    ("train", lambda t, d: ["--tiny", "--other", t / "nope.py"], "error: --other"),
    ("train", lambda t, d: ["--tiny", "--other", ROOT / "train_gpt.py", "--other-python", "/nonexistent/python"],
     "error: --other-python /nonexistent/python: no such executable"),
    ("train", lambda t, d: ["--tiny", "--iterations", "1"], "error: --iterations 1 must be at least 2"),
    ("train", lambda t, d: ["--tiny", "--nproc", "0"], "error: --nproc 0 must be at least 1"),
    ("train", lambda t, d: ["--tiny", "--nproc", "3"], "error: the kit rejects this configuration: WORLD_SIZE=3"),
    ("train", lambda t, d: ["--tiny", "--workdir", _file(t, "f")], "error: --workdir"),
    ("train", lambda t, d: ["--tiny", "--env", "NUM_LAYER=3"], "NUM_LAYER"),
    ("train", lambda t, d: ["--tiny", "--record", "--results", _file(t, "f") / "R.md"], "error: --record:"),
    ("flags", lambda t, d: ["--tiny", "--only", "NOTAFLAG=1"], "configuration 'NOTAFLAG=1': NOTAFLAG is not a setting"),
    ("flags", lambda t, d: ["--tiny", "--only", "SMEAR_GATE"], "error: --only 'SMEAR_GATE': expected KEY=VALUE"),
    ("flags", lambda t, d: ["--tiny", "--only", " "], "error: --only '': give at least one KEY=VALUE"),
    ("flags", lambda t, d: ["--tiny", "--only", "XSA_LAST_N=9"], "configuration 'XSA_LAST_N=9'"),
    ("flags", lambda t, d: ["--tiny", "--timeout", "0"], "error: --timeout 0.0 must be at least 1"),
    ("ppmc", lambda t, d: ["--tokens", "0"], "error: --tokens 0 must be at least 2"),
    ("ppmc", lambda t, d: ["--tokens", "-5"], "error: --tokens -5 must be at least 2"),
    ("ppmc", lambda t, d: ["--order", "-1"], "error: --order -1 must be at least 0"),
    ("ppmc", lambda t, d: ["--vocab", "0"], "error: --vocab 0 must be in 3..65536"),
    ("ppmc", lambda t, d: ["--repeat", "0"], "error: --repeat 0 must be at least 1"),
    ("ppmc", lambda t, d: ["--shard", t / "nope.bin"], "error: --shard"),
    ("ppmc", lambda t, d: ["--shard", _file(t, "empty.bin", b"")], "is 0 bytes, shorter than its 1024-byte header"),
    ("ppmc", lambda t, d: ["--shard", ROOT / "README.md"], "has magic"),
    ("ppmc", lambda t, d: ["--shard", _file(t, "zero.bin", encode_shard([]))], " 0 token"),
    ("ppmc", lambda t, d: ["--shard", d[0] / "fineweb_val_000000.bin", "--vocab", "3"], ">= --vocab 3"),
    ("ppmc", lambda t, d: ["--script", t / "nope.py"], "error: --script"),
]


@pytest.mark.parametrize("script,extra,expected", BAD, ids=[f"{r[0]}-{i}" for i, r in enumerate(BAD)])
def test_bench_bad_input_is_one_line_before_any_work(small_data, tmp_path, capsys, script, extra, expected):
    import importlib
    mod = importlib.import_module(f"bench.bench_{script}")
    data, tok = small_data
    args = [str(x) for x in extra(tmp_path, small_data)]
    if script != "ppmc" and "--data-path" not in args:
        args += ["--data-path", str(data), "--tokenizer-path", str(tok)]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        rc = mod.main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert (rc, len(lines)) == (2, 1), (out, err)
    assert expected in lines[0], lines[0]
    assert "[round" not in out and "run 1" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "bad input must write nothing"


def test_bench_runs_as_a_module_and_as_a_file_from_anywhere(tmp_path):
    """`python -m bench.X` from the root and `python bench/X.py` from another folder both work (one bootstrap)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    as_module = subprocess.run([sys.executable, "-m", "bench.bench_ppmc", "--tokens", "3000"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120, env=env)
    as_file = subprocess.run([sys.executable, str(BENCH / "bench_ppmc.py"), "--tokens", "3000"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env=env)
    for proc in (as_module, as_file):
        assert proc.returncode == 0, proc.stderr
        assert "run 1" in proc.stdout and "peak resident memory" in proc.stdout
