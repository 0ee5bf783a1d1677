"""Export v2: GPTQ against rounding on a known Hessian, LQER, the container for every compressor, calibration on
training shards only and inside the time cap, the code counted as it ships, --plan."""
import hashlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_ENV, data_env, run_script, start_script, tiny_args

# A tiny shape whose token embedding (1024 x 128) and MLP matrices (640 x 128) are large enough to be quantised.
QUANT_ENV = {**TINY_ENV, "MODEL_DIM": "128", "MLP_MULT": "5", "ITERATIONS": "4", "EVAL_STRIDE": "64",
             "QUANT_METHOD": "gptq", "GPTQ_CALIBRATION_BATCHES": "2", "EMBED_BITS": "7", "LQER_ENABLED": "1",
             "LQER_TOP_K": "2", "FLOAT_EVAL": "0"}


def args_for(tg, **over):
    return tiny_args(tg, QUANT_ENV, **over)


def correlated_hessian(cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * cols, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    return x.T @ x


def weighted_error(w, q, s, H) -> float:
    d = w - q.float() * s.float()[:, None]
    return float(torch.trace(d @ H @ d.T))


def test_gptq_reduces_hessian_weighted_error_at_the_same_scale(tg):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 256, generator=g) * 0.02
    H = correlated_hessian(256)
    H[5], H[:, 5] = 0, 0  # a dead input column
    for bits, k in ((6, 12.85), (7, 14.0), (5, 10.0)):
        q, s = tg.gptq_rows(w, H, k, bits)
        q0, s0 = tg.gptq_rows(w, None, k, bits)  # plain rounding with the same SD-clip scale
        assert torch.equal(s, s0) and q.abs().max() <= 2 ** (bits - 1) - 1
        assert weighted_error(w, q, s, H) < 0.8 * weighted_error(w, q0, s0, H)
        assert torch.all(q[:, 5] == 0)


def test_lqer_reduces_error_and_its_factors_roundtrip(tg):
    for asym in (1, 0):
        args = args_for(tg, LQER_ASYM_ENABLED=asym, LQER_RANK=4)
        g = torch.Generator().manual_seed(2)
        w = torch.randn(320, 128, generator=g) * 0.02
        w[:, :3] *= 25  # three outlier columns, clipped by the SD scale: a low-rank error LQER can take back
        q, s = tg.gptq_rows(w, None, 4.0, 5)
        E = w - q.float() * s.float()[:, None]
        arrays = {"q": q, "scale": s, **tg.lqer_factors(E, args)}
        assert arrays["lqA"].dtype == torch.int8 and arrays["lqB"].shape == (4, 128)
        if asym:
            assert arrays["lqA"].min() >= -2 and arrays["lqA"].max() <= 1 and arrays["lqBs"].numel() == 4 * 128 // 64
        fixed = tg.dequantize(arrays)
        assert (w - fixed).norm() < 0.8 * E.norm()
        blob = tg.encode_artifact({"w": arrays}, {}, "zstd")
        back, _ = tg.unpack_artifact(blob)
        assert torch.equal(back["w"], fixed)


@pytest.mark.parametrize("compressor", ["zstd", "brotli", "lzma"])
def test_container_roundtrip_and_damage_for_every_compressor(tg, compressor):
    args = args_for(tg, COMPRESSOR=compressor, GATED_ATTN_QUANT_GATE=1)
    model = tg.build_model(args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    state = model.state_dict()
    roles = tg.param_roles(model)
    entries = tg.quantize_state(state, roles, args, {})
    blob = tg.pack_artifact(state, args, {"config": args.as_dict()}, roles)
    loaded, meta = tg.unpack_artifact(blob)
    assert meta["config"]["COMPRESSOR"] == compressor and set(loaded) == set(state)
    for name, t in state.items():
        assert loaded[name].shape == t.shape and torch.equal(loaded[name], tg.dequantize(entries[name])), name
    for bad in (blob[:-1], blob[:len(blob) // 2], blob[:20] + bytes([blob[20] ^ 1]) + blob[21:],
                blob[:-5] + bytes([blob[-5] ^ 0x40]) + blob[-4:], blob[:8] + b"\x09" + blob[9:], blob + b"\0"):
        with pytest.raises(tg.ConfigError, match="truncated or corrupted") as err:
            tg.unpack_artifact(bad, "x.ptz")
        assert "\n" not in str(err.value)


def log_value(text: str, key: str) -> str:
    m = re.search(rf"\b{key}:(\S+)", text)
    assert m, f"no {key}: in the log"
    return m.group(1)


def test_calibration_reads_only_training_shards(short_dataset, tmp_path):
    """The same run with the val shard poisoned (same length, other tokens): the artifact is byte-identical."""
    data_path, tok = short_dataset
    procs = {}
    for name in ("clean", "poisoned"):  # the two runs side by side
        data = tmp_path / name / "data"  # the same DATA_PATH string in both runs: the artifact records it
        data.mkdir(parents=True)
        for f in data_path.glob("fineweb_*.bin"):
            (data / f.name).write_bytes(f.read_bytes())
        if name == "poisoned":
            val = data / "fineweb_val_000000.bin"
            raw = val.read_bytes()
            tokens = np.random.default_rng(0).integers(4, 1024, (len(raw) - 1024) // 2).astype("<u2")
            val.write_bytes(raw[:1024] + tokens.tobytes())
        procs[name] = start_script({**data_env(short_dataset, "cal", QUANT_ENV), "DATA_PATH": "data"}, tmp_path / name)
    digests = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        assert log_value(out, "gptq_calibration batches") == "2/2"
        digests.append(hashlib.sha256((tmp_path / name / "artifacts/cal.ptz").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_reserve_is_taken_off_the_training_cap(tg, dataset):
    assert tg.train_cap_seconds(args_for(tg, MAX_WALLCLOCK_SECONDS=600, GPTQ_RESERVE_SECONDS=8)) == 592
    assert tg.train_cap_seconds(args_for(tg, MAX_WALLCLOCK_SECONDS=600, QUANT_METHOD="rtn")) == 600
    assert tg.train_cap_seconds(args_for(tg, MAX_WALLCLOCK_SECONDS=0)) == 0
    args = args_for(tg, GPTQ_CALIBRATION_BATCHES=5, DATA_PATH=dataset[0])
    model = tg.build_model(args)
    names = tg.quantised_names(model.state_dict())
    loader = tg.TokenLoader(tg.shard_files(str(dataset[0]), "train"), 0, 1, torch.device("cpu"), 1024)
    hs, n = tg.collect_hessians(model, names, loader, args, 1, None, torch.device("cpu"))
    assert n == 5 and set(hs) == names and "tok_emb.weight" in names
    _, n = tg.collect_hessians(model, names, loader, args, 1, 1e-9, torch.device("cpu"))
    assert n == 1  # no time left: one batch, then stop


def test_counted_code_is_the_shipped_form(tg, tmp_path):
    source = (ROOT / "train_gpt.py").read_bytes()
    assert tg.shipped_code(source, "raw") == source
    for form in ("wrapped", "minified"):
        shipped = tg.shipped_code(source, form)
        assert len(shipped) < len(source) and tg.shipped_code(shipped, form) == shipped  # a wrapper ships as is
        from records.wrap import decode_wrapper  # the auditors read it without running it
        assert decode_wrapper(shipped) is not None


def test_wrapped_minified_script_trains_calibrates_inside_the_cap_and_exports(tg, short_dataset, tmp_path):
    """The minified wrapper, run under torchrun with 2 processes and a 20 s cap of which GPTQ_RESERVE_SECONDS=17 are
    kept for the calibration: it trains ~3 s, calibrates, exports, counts itself, and its log shows
    training + calibration inside the cap."""
    script = tmp_path / "train_gpt.py"
    script.write_bytes(tg.shipped_code((ROOT / "train_gpt.py").read_bytes(), "minified"))
    env = data_env(short_dataset, "wrapped", QUANT_ENV, CODE_FORM="minified", ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=20,
                   GPTQ_RESERVE_SECONDS=17, WARMDOWN_ITERS=0, TRAIN_LOG_EVERY=0)
    res = run_script(env, tmp_path, nproc=2, script=script, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    size = script.stat().st_size
    assert f"code_form:minified counted_bytes:{size} " in res.stdout
    assert re.search(rf"^Code size \(compressed, CODE_FORM=minified\): {size} bytes$", res.stdout, re.M)
    model = int(re.search(r"^Serialized model \S+: (\d+) bytes$", res.stdout, re.M).group(1))
    assert re.search(rf"^Total submission size \S+: {model + size} bytes$", res.stdout, re.M)
    assert (tmp_path / "artifacts/wrapped.ptz").stat().st_size == model
    assert "stopping_early: wallclock_cap" in res.stdout
    line = re.search(r"^gptq_calibration .*$", res.stdout, re.M).group(0)
    ms = {k: float(v) for k, v in re.findall(r"(\w+):([\d.]+)ms", line)}
    assert ms["train_cap"] == 3000 and ms["cap"] == 20000
    assert ms["train_time"] < 17000 and ms["train_plus_calibration"] <= 20000, line


def test_plan_prints_the_estimate_last(tmp_path):
    frontier = {"NUM_LAYERS": "11", "MODEL_DIM": "512", "MLP_MULT": "4", "VOCAB_SIZE": "8192", "QUANT_METHOD": "gptq",
                "EMBED_BITS": "7", "LQER_ENABLED": "1", "CODE_FORM": "minified"}
    full = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py"), "--plan"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**full, "OMP_NUM_THREADS": "1", **env})  # side by side
             for env in (frontier, {**frontier, "NUM_LAYERS": "20"})]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        last = out.strip().splitlines()[-1]
        m = re.fullmatch(r"artifact_estimate bytes:(\d+) model:(\d+) code:(\d+)", last)
        assert m and int(m.group(1)) == int(m.group(2)) + int(m.group(3)), last
        results.append((out, int(m.group(1))))
    (out, total), (out20, total20) = results
    assert 14_000_000 < total < 17_000_000 and "code" in out
    assert total20 > 16_000_000 and "over the 16000000-byte limit" in out20


def test_bench_quant_side_by_side_and_pessimistic(tg, dataset, tmp_path):
    """bench_quant on tiny float weights: one row per method with its bytes and gap, and the pessimistic line."""
    data_path, tok = dataset
    over = {k: QUANT_ENV[k] for k in ("NUM_LAYERS", "MODEL_DIM", "NUM_HEADS", "NUM_KV_HEADS", "MLP_MULT",
                                      "TRAIN_SEQ_LEN", "TRAIN_BATCH_TOKENS", "EVAL_SEQ_LEN", "EVAL_STRIDE")}
    model = tg.build_model(tg.Hyperparameters.from_env({**over, "VOCAB_SIZE": "1024"}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.03)
    torch.save(model.state_dict(), tmp_path / "f.pt")
    env = [x for k, v in over.items() for x in ("--env", f"{k}={v}")] + ["--data-path", str(data_path),
                                                                         "--tokenizer-path", str(tok)]
    full = {**os.environ, "OMP_NUM_THREADS": "1"}
    bench = [sys.executable, str(ROOT / "bench" / "bench_quant.py")]
    res = subprocess.run(bench + ["--float", str(tmp_path / "f.pt"), "--sigmas", "0.5", "--max-tokens", "3000",
                                  "--json", str(tmp_path / "q.json"), "--plot", str(tmp_path / "q.png")] + env,
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=full)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "q.json").read_text())["rows"]}
    assert set(rows) == {"float", "rtn", "gptq", "gptq+lqer", "gptq k x0.5"} and (tmp_path / "q.png").stat().st_size
    assert rows["gptq k x0.5"]["bytes"] > rows["gptq"]["bytes"] and all(math.isfinite(r["gap"]) for r in rows.values())
    res = subprocess.run(bench + ["--pessimistic"] + env, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=full)
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.fullmatch(r"artifact_estimate bytes:\d+ model:\d+ code:\d+", res.stdout.strip().splitlines()[-1])
