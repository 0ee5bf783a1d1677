"""compliance/logparse.py: the one log parser the auditor (compliance) and the record tool (records) share.

The kit's own format (docs/CONTRACT.md), upstream variants (timestamps, ``train_time: 9.8m``, ``legal_ttt_exact``),
a kit text log with its JSON run file, and input that is not a log at all.
"""
import json

import pytest

from compliance.logparse import find_runs, load_run, load_text_log, parse_text_log

SHA = "3bc690f2d6da09fbae155d320b224a2e480063d7b43c731df2ea7d92f9297a33"

# A kit log in CONTRACT.md's line formats and order (the lines of a real CPU run, shortened).
KIT_LOG = f"""run_id:demo_seed7
code_sha256:{SHA} code_bytes:77546
versions: python:3.11.7 torch:2.13.0+cpu numpy:2.4.6 sentencepiece:0.2.3 zstandard:0.25.0
device:cpu gpu:none world_size:2 grad_accum_steps:4 attention:sdpa compile:none
config:{{"RUN_ID": "demo_seed7", "SEED": 7, "NUM_LAYERS": 4, "VALUE_RESIDUAL": true, "ITERATIONS": 200}}
val_tokens:99258 val_bytes:250395 train_shards:1
model_params:592144
step:0/200 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.00ms
step:100/200 train_loss:3.6220 train_time:41826ms step_avg:418.26ms
step:200/200 val_loss:3.2001 val_bpb:1.8302 train_time:83651ms step_avg:418.26ms
peak memory allocated: 0 MiB
final_float_sliding_window_exact val_loss:3.23456724 val_bpb:1.84980613
eval_phase:float_sliding_window time:3895ms
Serialized model int6+zstd: 985428 bytes
Code size: 77546 bytes
Total submission size int6+zstd: 1062974 bytes
final_int6_sliding_window_exact val_loss:3.23502194 val_bpb:1.85006617
eval_phase:sliding_window time:3987ms
quant_gap_bpb:0.000260
eval_time_total:3987ms
"""

UPSTREAM_LOG = """Hyperparameters:
  seed: 1337
  ttt_enabled: False

RUN_CONFIG: NUM_LAYERS=11 XSA_LAST_N=4
1/20000 train_loss: 6.9312 train_time: 0.0m tok/s: 812345
5500/20000 train_loss: 2.2102 train_time: 9.8m tok/s: 7812345
Serialized model int6+brotli: 15,912,345 bytes
Code size (compressed): 21000 bytes
Total submission size int6+brotli: 15,933,345 bytes
quantized_sliding_window val_loss:2.34727563 val_bpb:1.07254371 eval_time:91781ms
total_eval_time:91.8s
"""

LEGAL_TTT_LOG = """import os
def main(): pass
====================================================================================================
step:100/9000 train_loss:3.1000 train_time:8000ms step_avg:80.00ms
stopping_early: wallclock_cap train_time:600128ms step:7179/9000
Serialized model: 105000000 bytes
Serialized model int6+zstd: 15900000 bytes
Code size: 60000 bytes
Total submission size int6+zstd: 15960000 bytes
DIAGNOSTIC pre-quantization post-ema val_loss:1.9500 val_bpb:1.1550 eval_time:6000ms
final_int6_roundtrip val_loss:1.9216 val_bpb:1.1381 eval_time:7093ms
final_int6_sliding_window val_loss:1.8816 val_bpb:1.1144 stride:64 eval_time:77178ms
legal_ttt_exact val_loss:1.87000000 val_bpb:1.10500000 eval_time:410000ms
"""


def stamped(text, fmt):
    """The log with a timestamp before every line, as some upstream runs write it."""
    return "\n".join(fmt.format(i) + line for i, line in enumerate(text.splitlines()))


def test_kit_log():
    run = parse_text_log(KIT_LOG, "logs/demo_seed7.txt")
    assert (run.run_id, run.seed, run.code_sha256, run.code_bytes, run.code_line) == ("demo_seed7", 7, SHA, 77546, 2)
    assert run.torch_version == "2.13.0+cpu" and run.versions["zstandard"] == "0.25.0"
    assert (run.device, run.gpu_name, run.world_size, run.grad_accum_steps) == ("cpu", None, 2, 4)
    assert (run.attention, run.compile_mode, run.num_params) == ("sdpa", "none", 592144)
    assert run.config["NUM_LAYERS"] == 4 and run.env["VALUE_RESIDUAL"] == "1" and run.env["SEED"] == "7"
    assert (run.steps, run.iterations, run.train_time_ms, run.train_line) == (200, 200, 83651.0, 10)
    assert run.step_avg_ms == 418.26 and not run.stopped_early and run.has_training_lines
    assert (run.model_bytes, run.artifact_bytes, run.artifact_line) == (985428, 1062974, 16)
    assert run.final[:4] == ("final_int6_sliding_window_exact", 3.23502194, 1.85006617, 17)
    assert run.final.exact and run.final.val_bpb == 1.85006617 and run.complete
    assert run.pre_quant.metric == "final_float_sliding_window_exact" and run.pre_quant.val_loss == 3.23456724
    assert [s.metric for s in run.scores] == ["final_float_sliding_window_exact", "final_int6_sliding_window_exact"]
    assert (run.eval_time_ms, run.eval_total_line, run.eval_phases) == (3987.0, 20, [])
    assert run.line(20) == "eval_time_total:3987ms" and run.name == "demo_seed7.txt"
    assert run.problems == [] and run.conflicts == [] and run.recognised


@pytest.mark.parametrize("stamp", ["", "1776142360.{:03d} ", "[2026-04-14 04:52:{:02d}] "])
def test_upstream_log_with_timestamps_and_minutes(tmp_path, stamp):
    text = stamped(UPSTREAM_LOG, stamp) if stamp else UPSTREAM_LOG
    run = parse_text_log(text, tmp_path / "train.log", display="train.log")
    assert run.seed == 1337 and run.attrs["ttt_enabled"] is False and run.attrs["seed"] == 1337
    assert run.env["NUM_LAYERS"] == "11" and run.env["XSA_LAST_N"] == "4"
    assert (run.steps, run.iterations, run.train_line) == (5500, 20000, 7)
    assert run.train_time_ms == pytest.approx(9.8 * 60_000) and run.step_avg_ms is None
    assert (run.model_bytes, run.code_compressed, run.code_bytes, run.code_line) == (15912345, 21000, None, 9)
    assert (run.artifact_bytes, run.artifact_line) == (15933345, 10)
    assert run.final[:4] == ("quantized_sliding_window", 2.34727563, 1.07254371, 11) and not run.final.exact
    assert not run.complete and run.pre_quant is None
    assert run.eval_phases == [("quantized_sliding_window", 91781.0, 11)]
    assert run.eval_total_ms == pytest.approx(91_800.0) and run.eval_time_s == pytest.approx(91.8)
    assert run.code_sha256 is None and run.config is None and run.problems == [] and run.name == "train.log"


def test_legal_ttt_exact_is_the_score(tmp_path):
    p = tmp_path / "train_seed42.log"
    p.write_text(LEGAL_TTT_LOG)
    run = load_text_log(p, "train_seed42.log")
    assert run.final[:4] == ("legal_ttt_exact", 1.87, 1.105, 13) and run.final.exact and run.complete
    assert run.seed == 42  # from the file name: the log states none
    assert run.stopped_early and (run.train_time_ms, run.train_line) == (600128.0, 5)
    assert (run.steps, run.iterations, run.step_avg_ms) == (7179, 9000, 80.0)
    assert (run.model_bytes, run.code_bytes, run.artifact_bytes) == (15900000, 60000, 15960000)
    # the script above the ===== rule is not read; the diagnostic eval is no eval phase
    assert run.eval_phases == [("final_int6_roundtrip", 7093.0, 11), ("final_int6_sliding_window", 77178.0, 12),
                               ("legal_ttt_exact", 410000.0, 13)]
    assert run.eval_total_ms is None and run.eval_time_ms == 7093 + 77178 + 410000
    assert run.pre_quant[:4] == ("DIAGNOSTIC pre-quantization post-ema", 1.95, 1.155, 10) and not run.pre_quant.exact


def kit_json(**over):
    """The JSON run file the kit writes beside KIT_LOG (CONTRACT.md's keys), with ``over`` changed."""
    obj = {"run_id": "demo_seed7", "seed": 7, "code_sha256": SHA, "code_bytes": 77546, "model_bytes": 985428,
           "artifact_bytes": 1062974, "config": {"RUN_ID": "demo_seed7", "SEED": 7, "NUM_LAYERS": 4,
                                                 "VALUE_RESIDUAL": True, "ITERATIONS": 200},
           "world_size": 2, "device": "cpu", "gpu_name": "none", "attention_kernel": "sdpa", "compile_mode": "none",
           "steps": 200, "iterations": 200, "stopped_early": False, "train_time_ms": 83651.4,
           "step_avg_ms": 418.257, "eval_phases_ms": {"float_sliding_window": 3895.2, "sliding_window": 3986.9},
           "eval_time_ms": 3986.9, "scores": {"float_sliding_window": {"val_loss": 3.234567241, "val_bpb": 1.8498}},
           "final": {"metric": "sliding_window", "line": "final_int6_sliding_window_exact",
                     "val_loss": 3.235021937328001, "val_bpb": 1.8500661677994443}, "status": "complete"}
    obj.update(over)
    return obj


def write_pair(folder, obj):
    (folder / "logs").mkdir()
    (folder / "logs" / "demo_seed7.txt").write_text(KIT_LOG)
    (folder / "logs" / "demo_seed7.json").write_text(json.dumps(obj))
    return folder / "logs" / "demo_seed7.txt"


def test_kit_text_and_json_that_agree(tmp_path):
    txt = write_pair(tmp_path, kit_json())
    run = load_run(txt.with_suffix(".json"))  # either file of the pair finds the other
    assert run.text_path == txt and run.json_path == txt.with_suffix(".json")
    assert run.conflicts == [] and run.problems == [] and run.complete and run.status == "complete"
    # the JSON's unrounded numbers win; the score keeps the text line it came from
    assert run.final[:4] == ("final_int6_sliding_window_exact", 3.235021937328001, 1.8500661677994443, 17)
    assert (run.train_time_ms, run.eval_time_ms, run.step_avg_ms) == (83651.4, 3986.9, 418.257)
    assert run.eval_phases == [] and run.line(run.train_line).startswith("step:200/200 val_loss:3.2001")


def test_kit_text_and_json_that_disagree(tmp_path):
    obj = kit_json(seed=8, code_bytes=77999, gpu_name="NVIDIA H100 80GB HBM3",
                   config={"RUN_ID": "demo_seed7", "SEED": 8, "NUM_LAYERS": 6},
                   final={"metric": "sliding_window", "line": "final_int6_sliding_window_exact",
                          "val_loss": 3.2, "val_bpb": 1.83})
    run = load_run(write_pair(tmp_path, obj))
    assert run.conflicts == ["seed: text log says 7, JSON says 8", "code_bytes: text log says 77546, JSON says 77999",
                             "config: text log and JSON differ",
                             "final score: text log says 3.23502194/1.85006617, JSON says 3.2/1.83"]
    assert (run.seed, run.code_bytes, run.gpu_name, run.final.val_loss) == (8, 77999, "NVIDIA H100 80GB HBM3", 3.2)
    assert run.env["NUM_LAYERS"] == "4"  # settings the text logged keep precedence for the auditor
    (found,) = find_runs(tmp_path)
    assert found.name == "logs/demo_seed7.txt" and found.conflicts == run.conflicts and found.kit_json


def test_a_json_cannot_hide_what_its_text_log_shows(tmp_path):
    """Text log: 700 s of training and an eval total over the cap; the JSON beside it claims less. The larger values
    count, the disagreement is recorded, and the auditor reports the overrun and warns about the pair."""
    from compliance.logs import check_logs
    text = KIT_LOG.replace("train_time:83651ms", "train_time:700000ms").replace("eval_time_total:3987ms",
                                                                                "eval_time_total:650000ms")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "r.txt").write_text(text)
    (tmp_path / "logs" / "r.json").write_text(json.dumps(kit_json(train_time_ms=500000.0, eval_time_ms=3986.9)))
    (run,) = find_runs(tmp_path)
    assert (run.train_time_ms, run.eval_time_ms) == (700000.0, 650000.0)
    assert run.conflicts == ["train_time_ms: text log says 700000.0, JSON says 500000.0",
                             "eval_total_ms: text log says 650000.0, JSON says 3986.9"]
    warnings, limits = [], {}
    findings = check_logs([run], None, "train_gpt.py", None, "", limits, warnings)
    assert sorted(f.explanation.split(" took ")[0] for f in findings) == ["Evaluation", "Training"]
    assert sum("disagree" in w for w in warnings) == 2
    # within the text's rounding (whole ms) nothing is a disagreement
    (tmp_path / "logs" / "r.json").write_text(json.dumps(kit_json(train_time_ms=700000.4, eval_time_ms=649999.6)))
    (run,) = find_runs(tmp_path)
    assert run.conflicts == [] and (run.train_time_ms, run.eval_time_ms) == (700000.4, 649999.6)


def test_several_runs_in_one_log_and_pre_quant_evals():
    """A log that holds two runs (a published record's train.log does): only the last run's evaluation counts; a
    pre-quantization diagnostic ("pre-quantization post-ema", spelled with a hyphen) is no eval phase."""
    one_run = ("step:100/200 train_loss:3.1000 train_time:8000ms step_avg:80.00ms\n"
               "stopping_early: wallclock_cap train_time:600044ms step:7000/20000\n"
               "pre-quantization post-ema val_loss:2.81 val_bpb:1.09 eval_time:{pre}ms\n"
               "Total submission size int6+zlib: 15353490 bytes\n"
               "final_int6_roundtrip val_loss:2.0203 val_bpb:1.1965 eval_time:{rt}ms\n"
               "final_int6_roundtrip_exact val_loss:2.02025601 val_bpb:1.19650941\n"
               "final_sliding_window_eval stride:64 val_loss:1.9637 val_bpb:1.1630 eval_time:{sw}ms\n"
               "final_sliding_window_eval_exact stride:64 val_loss:{loss} val_bpb:1.16301431\n")
    text = one_run.format(pre=6000, rt=2262, sw=304360, loss=1.99) + one_run.format(pre=6003, rt=1547, sw=72650,
                                                                                   loss=1.96369923)
    run = parse_text_log(text)
    assert [(name, ms) for name, ms, _ in run.eval_phases] == [("final_int6_roundtrip", 1547.0),
                                                                ("final_sliding_window_eval", 72650.0)]
    assert run.eval_time_ms == 1547 + 72650 and run.final.val_loss == 1.96369923 and run.eval_phases[0][2] == 13
    # the first run stopped at the cap, the second ran its 200 steps: the second's training time and steps count
    second = "step:200/200 val_loss:2.0 val_bpb:1.2 train_time:300000ms step_avg:1500.00ms\n"
    run = parse_text_log(one_run.format(pre=6000, rt=2262, sw=304360, loss=1.99) + second)
    assert (run.train_time_ms, run.steps, run.stopped_early) == (300000.0, 200, False)


def test_json_without_a_text_log(tmp_path):
    (tmp_path / "seed7.json").write_text(json.dumps(kit_json()))
    (tmp_path / "notes.json").write_text(json.dumps({"author": "x"}))  # not a run
    (tmp_path / "notes.txt").write_text("nothing a training run writes\n")
    (run,) = find_runs(tmp_path)
    assert run.name == "seed7.json" and run.text_path is None and run.seed == 7
    assert run.final[:4] == ("final_int6_sliding_window_exact", 3.235021937328001, 1.8500661677994443, 0)
    assert run.eval_phases == [("sliding_window", 3986.9, 0)] and run.line(0) == ""
    assert run.lines[0].startswith('{"run_id": "demo_seed7"')


def test_garbage_and_binary_input_never_raise(tmp_path):
    blob = tmp_path / "blob.log"
    blob.write_bytes(b"\x00\xff\xfe garbage \x80" * 100 + b"\nstep:1/2 train_loss:6.93 train_time:40ms\n\x00\x01")
    run = load_text_log(blob)
    assert run.problems == ["2 line(s) hold binary data (NUL bytes), the first is line 1"]
    assert run.has_training_lines and (run.steps, run.train_time_ms) == (1, 40.0) and run.final is None
    deep = "config:" + '{"a":' * 100_000 + "1" + "}" * 100_000
    run = parse_text_log("\n".join(["config:{not json}", deep, "final_x_exact val_loss:abc val_bpb:",
                                    "Total submission size: many bytes", "step:x/y train_loss:1"]))
    assert run.problems[0].startswith("config line is not JSON")
    assert run.problems[1].startswith("unreadable line 2 'config:{\"a\":") and len(run.problems) == 2
    assert run.final is None and run.scores == [] and run.artifact_bytes is None and not run.recognised
    missing = load_run(tmp_path / "missing.txt")
    assert missing.problems[0].startswith("cannot read") and not missing.recognised
    (tmp_path / "bad.txt").write_text(KIT_LOG)
    (tmp_path / "bad.json").write_text("[" * 100_000)
    run = load_run(tmp_path / "bad.txt")
    assert run.problems[0].startswith("cannot read run JSON bad.json") and run.status is None and not run.complete
    assert run.final.metric == "final_int6_sliding_window_exact"  # the text log is still read
