"""records on real runs: three tiny CPU runs of the kit's train_gpt.py, packed and checked.

`make_runs(tmpdir, seeds)` trains the tiny configuration once per seed (in parallel) and
returns the runs' JSON paths; it skips, with the reason, when train_gpt.py or the prepared
data is missing. The module-scoped `real_runs` fixture calls it once for every test here.
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from compliance.logparse import load_run
from conftest import ROOT, data_env, run_script, start_script
from records.check import check_path
from records.pack import PackOptions, Refusal, pack
from records.wrap import decode_wrapper, make_wrapper

SCRIPT = ROOT / "train_gpt.py"
DATA_PATH = ROOT / "data" / "datasets" / "wiki_sp1024"
TOKENIZER_PATH = ROOT / "data" / "tokenizers" / "wiki_1024_bpe.model"
SEEDS = (1, 2, 3)
TINY_RUN_ENV = {
    "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "ITERATIONS": "5",
    "TRAIN_BATCH_TOKENS": "4096", "TRAIN_SEQ_LEN": "128", "VAL_LOSS_EVERY": "0", "EVAL_STRIDE": "64",
    "EVAL_SEQ_LEN": "128", "WARMUP_STEPS": "0",
    # no wallclock cap: under a cap the LR warmdown follows elapsed time, so runs would depend on machine load
    "MAX_WALLCLOCK_SECONDS": "0",
}


def _check_inputs(script, data_path, tokenizer_path):
    if not Path(script).is_file():
        pytest.skip(f"{script} does not exist yet: no real runs to pack")
    missing = [p for p in (Path(data_path), Path(tokenizer_path)) if not Path(p).exists()]
    if missing:
        pytest.skip(f"prepared data missing ({', '.join(map(str, missing))}); run `python -m data.prepare`")


def _start_runs(tmpdir, seeds, script, data_path, tokenizer_path, run_prefix, extra_env):
    procs = []
    for seed in seeds:
        run_id = f"{run_prefix}_seed{seed}"
        env = {**data_env((data_path, tokenizer_path), run_id, TINY_RUN_ENV, SEED=seed), **(extra_env or {})}
        procs.append((Path(tmpdir) / "logs" / f"{run_id}.json", start_script(env, tmpdir, script=script)))
    return procs


def _finish_runs(procs, timeout):
    out = []
    for json_path, proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{json_path.stem}: train_gpt.py ran past {timeout} s")
        if proc.returncode != 0:
            pytest.fail(f"{json_path.stem}: train_gpt.py exited {proc.returncode}: {err[-2000:]}")
        out.append(json_path)
    return out


def make_runs(tmpdir, seeds, script=SCRIPT, data_path=DATA_PATH, tokenizer_path=TOKENIZER_PATH,
              run_prefix="rec", extra_env=None, timeout=300):
    """Train the tiny configuration once per seed with `python <script>` in `tmpdir` (in parallel).

    Returns [tmpdir/logs/<run_prefix>_seed<N>.json]. Skips when the script or the data is missing
    (the data comes from `python -m data.prepare`); fails with the run's stderr if a run fails.
    """
    _check_inputs(script, data_path, tokenizer_path)
    return _finish_runs(_start_runs(tmpdir, seeds, script, data_path, tokenizer_path, run_prefix, extra_env),
                        timeout)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, request):
    """Three tiny CPU runs of the kit's train_gpt.py, plus seed 1 again through its lzma wrapper.

    The wrapped run starts alongside the others (same wall time). Returns a dict: work, runs (json
    paths), wrapper (path), wrapped (json path), data_path, tokenizer_path.
    """
    data_path, tokenizer_path = DATA_PATH, TOKENIZER_PATH
    if SCRIPT.is_file():
        try:  # conftest's session dataset (built by data.prepare into a temp dir), its val split cut short
            data_path, tokenizer_path = request.getfixturevalue("short_dataset")
        except pytest.FixtureLookupError:
            pass
    _check_inputs(SCRIPT, data_path, tokenizer_path)
    work = tmp_path_factory.mktemp("records_real")
    source = SCRIPT.read_bytes()  # the lead may edit train_gpt.py meanwhile: run exactly these bytes
    script = work / "train_gpt.py"
    script.write_bytes(source)
    wrapped_dir = work / "wrapped_run"
    wrapped_dir.mkdir()
    wrapper = wrapped_dir / "train_gpt.py"
    wrapper.write_bytes(make_wrapper(source))
    readable = _start_runs(work, SEEDS, script, data_path, tokenizer_path, "rec", None)
    wrapped = _start_runs(wrapped_dir, SEEDS[:1], wrapper, data_path, tokenizer_path, "wrapped", None)
    runs = _finish_runs(readable, 300)
    (wrapped_json,) = _finish_runs(wrapped, 300)
    return {"work": work, "script": script, "runs": runs, "wrapper": wrapper, "wrapped": wrapped_json,
            "data_path": data_path, "tokenizer_path": tokenizer_path}


def _options(rr, **over):
    work = rr["work"]
    base = dict(runs=[str(p) for p in rr["runs"]], name="Tiny CPU check", author="Kit Tests",
                github_id="kit-tests", date="2026-05-02", script=str(rr["script"]), out_root=str(work / "records"),
                top_json=str(work / "submission.json"), requirements=str(ROOT / "requirements.txt"))
    base.update(over)
    return PackOptions(**base)


def test_real_runs_pack_and_check(real_runs):
    rr = real_runs
    script_bytes = rr["script"].read_bytes()
    for p in rr["runs"]:
        run = load_run(p)
        assert run.complete and not run.conflicts, (p, run.problems, run.conflicts)
        assert run.code_sha256 == hashlib.sha256(script_bytes).hexdigest()
    res = pack(_options(rr, skip_audit=True))  # the auditor has its own test below
    folder, sub = res.folder, res.submission
    assert res.track == "track_non_record_16mb" and "ran on 1x cpu" in res.readme
    assert sub["seeds"] == list(SEEDS) and sub["compliance"]["three_seeds"]
    assert sub["compliance"]["auditor_verdict"] == "not-run" and "skipped with --skip-audit" in res.readme
    assert (folder / "train_gpt.py").read_bytes() == script_bytes
    assert (folder / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    assert "`NUM_LAYERS=2` (default 9)" in res.readme and "python records/track_non_record_16mb/" in res.readme
    assert (rr["work"] / "submission.json").read_bytes() == (folder / "submission.json").read_bytes()
    out = subprocess.run([sys.executable, "-m", "records", "check", str(folder), "--json"], cwd=ROOT,
                         capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["verdict"] == "consistent", report["findings"]
    assert report["summary"]["logs"] == 3


def test_real_wrapped_script_runs_like_the_readable_one(real_runs):
    rr = real_runs
    res = pack(_options(rr, wrap=True, name="Tiny CPU wrapped", top_json=None, skip_audit=True))
    packed_wrapper = res.folder / "train_gpt.py"
    assert packed_wrapper.read_bytes() == rr["wrapper"].read_bytes()  # the wrapper is deterministic
    assert decode_wrapper(packed_wrapper.read_bytes()) == rr["script"].read_bytes()
    assert res.submission["bytes_code"] == packed_wrapper.stat().st_size < rr["script"].stat().st_size
    assert check_path(res.folder).verdict == "consistent"
    # Seed 1 through the wrapper: same training and score; the wrapper reports its own hash and size.
    readable = json.loads(rr["runs"][0].read_text())
    got = json.loads(rr["wrapped"].read_text())
    assert got["code_sha256"] == hashlib.sha256(packed_wrapper.read_bytes()).hexdigest()
    assert got["code_bytes"] == packed_wrapper.stat().st_size
    assert got["num_params"] == readable["num_params"] and got["steps"] == readable["steps"]
    assert got["final"]["val_loss"] == pytest.approx(readable["final"]["val_loss"], abs=1e-6)
    assert got["final"]["val_bpb"] == pytest.approx(readable["final"]["val_bpb"], abs=1e-6)


def test_real_eval_only_run_is_not_a_seed(real_runs):
    """A real EVAL_ONLY run of seed 3's artifact (no training in it) is refused as a seed of the submission."""
    rr = real_runs
    work = rr["work"]
    env = data_env((rr["data_path"], rr["tokenizer_path"]), "rec_eval_seed3", TINY_RUN_ENV, SEED=3,
                   EVAL_ONLY=work / "artifacts" / "rec_seed3.ptz")
    proc = run_script(env, work, script=rr["script"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = sorted((work / "logs").glob("*eval*seed3*.json"))
    assert len(evaluated) == 1, sorted(p.name for p in (work / "logs").iterdir())
    with pytest.raises(Refusal, match=r"is not a seed of a submission: an EVAL_ONLY run \(it scored the artifact "):
        pack(_options(rr, runs=[str(p) for p in rr["runs"][:2]] + [str(evaluated[0])], name="Eval only",
                      top_json=None, skip_audit=True))
    assert not (work / "records" / "track_non_record_16mb" / "2026-05-02_Eval_only").exists()


def test_real_runs_pass_the_compliance_auditor(real_runs):
    """pack calls the compliance auditor (in process) on the kit's script under each run's settings and refuses on
    an active violation: the kit's own default configuration must pass."""
    rr = real_runs
    try:
        res = pack(_options(rr, name="Tiny CPU audited", top_json=None))
    except Refusal as exc:
        pytest.fail(f"pack refused the kit's own runs: {exc}")
    verdict = res.submission["compliance"]["auditor_verdict"]
    assert verdict in ("clean", "needs-ruling"), verdict
    assert res.submission["compliance"]["no_slot"] in (True, None)

