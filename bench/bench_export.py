"""Export cost and quality: pack (quantise + compress) seconds, unpack seconds, bytes, and the roundtrip gap in bpb.

    python bench/bench_export.py --random                         # random model of the baseline shape
    python bench/bench_export.py --artifact artifacts/RUN.ptz     # an artifact from a kit run
    python bench/bench_export.py --tiny --save /tmp/tiny.ptz      # CPU smoke test (implies --random)

--random builds the configuration's model (the kit's init plus N(0, 1/fan_in) noise on every matrix, so that the
rows are not trivially zero and the context matters), packs it with train_gpt.pack_artifact, unpacks it, and scores
both the float model and the reloaded one with the kit's scorer (score_nll: sliding windows, EVAL_SEQ_LEN /
EVAL_STRIDE of the configuration) on the first --max-tokens val tokens: the gap is bpb(reloaded) - bpb(float).
--artifact unpacks an existing artifact (its configuration comes with it), times unpacking and re-packing its
(dequantised) weights, and scores the reloaded model; there is no float state, hence no gap.
Pack time is split into quantisation (the rest) and compression (COMPRESSOR, timed again on the decompressed
payload as one stream).
--other PATH exports the same state with another script's format too, alternating with the kit in every round:
upstream's int8 + zlib (its quantize_state_dict_int8, torch.save, zlib level 9; back with zlib, torch.load and its
dequantize_state_dict_int8, as its main() does) or a kit-like script's pack_artifact / unpack_artifact; its
reloaded model is scored by the same scorer, and the bytes and seconds of both are printed with their ratios.
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_export.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import math
import sys
import time
from pathlib import Path

from bench import common
from bench.common import BenchError
from kitlib.fileio import write_atomic


def score_bpb(kit, model, tokens, val_bytes, seq_len: int, stride: int, batch_seqs: int) -> tuple[float, float]:
    """(val_loss, val_bpb) of `model` on `tokens` with the kit's sliding-window scorer."""
    nll = kit.score_nll(model, tokens, seq_len, stride, batch_seqs)
    loss = nll.mean().item()
    return loss, nll.sum().item() / math.log(2) / val_bytes.sum().item()


def other_exporter(path: Path, env: dict):
    """(format name, pack(state) -> bytes, unpack(bytes) -> state) of another script's export format."""
    import io
    import zlib

    import torch
    mod = common.import_other(path)
    if all(hasattr(mod, n) for n in ("pack_artifact", "unpack_artifact", "Hyperparameters")):
        ohp = mod.Hyperparameters.from_env(env)
        return ("pack_artifact (kit-like)", lambda st: mod.pack_artifact(st, ohp, {}),
                lambda b: mod.unpack_artifact(b)[0])
    if not all(hasattr(mod, n) for n in ("quantize_state_dict_int8", "dequantize_state_dict_int8")):
        raise BenchError(f"--other {path} defines neither pack_artifact/unpack_artifact nor "
                         "quantize_state_dict_int8/dequantize_state_dict_int8")

    def pack(state) -> bytes:
        buf = io.BytesIO()
        torch.save(mod.quantize_state_dict_int8(state)[0], buf)
        return zlib.compress(buf.getvalue(), level=9)

    def unpack(blob: bytes):
        return mod.dequantize_state_dict_int8(torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu"))
    return "int8 + zlib (upstream)", pack, unpack


def parser() -> argparse.ArgumentParser:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_config_args(ap)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--artifact", default=None, help="a kit artifact (.ptz) to unpack, re-pack and score")
    src.add_argument("--random", action="store_true", help="a random model of the configuration (float state "
                                                           "available: the roundtrip gap is measured)")
    ap.add_argument("--kit", default=str(common.KIT), help="the kit's train_gpt.py (default: this checkout's)")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="val tokens scored (default 1,000,000; 8,000 with --tiny; 0: all)")
    ap.add_argument("--seq-len", type=int, default=None, help="scoring window (default: the config's EVAL_SEQ_LEN)")
    ap.add_argument("--stride", type=int, default=None, help="scoring stride (default: the config's EVAL_STRIDE)")
    ap.add_argument("--rounds", type=int, default=1, help="timed pack/unpack repetitions, median (default 1)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="device of the scoring")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--save", default=None, metavar="PATH", help="write the packed artifact here")
    ap.add_argument("--other", default=None, metavar="PATH",
                    help="another train_gpt.py whose export format to compare (upstream's int8 + zlib, or kit-like)")
    return ap


def plan(a) -> dict:
    """Every argument, the configuration (the artifact's, or preset + --env), the other exporter, the data and
    the tokenizer, checked before anything is packed."""
    if not a.artifact and not a.random and not a.tiny:
        raise BenchError("give --artifact PATH or --random (or --tiny)")
    common.check_args(a, at_least={"max_tokens": 0, "seq_len": 1, "stride": 1, "rounds": 1, "threads": 1},
                      writable=("json", "save"))
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    common.check_settings(kit, common.parse_overrides(a.env), "--env")
    state_q, env = common.artifact_env(kit, a.artifact, a.env) if a.artifact else (None, common.base_env(a, kit))
    hp = common.kit_args(kit, env)
    seq_len, stride = a.seq_len or hp.eval_seq_len, a.stride or hp.eval_stride
    if not 0 < stride <= seq_len:
        raise BenchError(f"--stride {stride} must be in 1..--seq-len {seq_len}")
    hp = common.kit_args(kit, {**env, "EVAL_SEQ_LEN": str(seq_len), "EVAL_STRIDE": str(stride)})
    max_tokens = a.max_tokens if a.max_tokens is not None else (8_000 if a.tiny else 1_000_000)
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    hp.data_path, hp.tokenizer_path = str(data), str(tok)
    other = other_exporter(Path(a.other).resolve(), env) if a.other else None
    sp = common.load_tokenizer(kit, hp)
    return {"kit": kit, "kit_path": kit_path, "state_q": state_q, "hp": hp, "env": env, "seq_len": seq_len,
            "stride": stride, "data": data, "sp": sp, "other": other,
            "val_np": common.load_val(kit, data, max_tokens, hp.vocab_size),
            "file_bytes": Path(a.artifact).stat().st_size if a.artifact else None}


def time_formats(formats: dict, state, rounds: int) -> tuple[dict, dict, dict]:
    """Pack and unpack with every format, alternating, `rounds` times: (seconds, last blobs, last states)."""
    times = {name: {"pack": [], "unpack": []} for name in formats}
    blobs, states = {}, {}
    for _ in range(rounds):
        for name, (pack, unpack) in formats.items():
            t0 = time.perf_counter()
            blobs[name] = pack(state)
            times[name]["pack"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            states[name] = unpack(blobs[name])
            times[name]["unpack"].append(time.perf_counter() - t0)
    return times, blobs, states


def score_all(a, p: dict, model, reloaded, other_state, device) -> dict:
    """val_bpb of the reloaded (and float, and other) model with the kit's scorer on the same tokens."""
    import numpy as np
    import torch
    kit, hp, args = p["kit"], p["hp"], (p["seq_len"], p["stride"], p["hp"].eval_batch_seqs)
    tokens = torch.from_numpy(p["val_np"].astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(common.val_target_bytes(kit, hp, p["sp"], p["val_np"], p["data"])).to(device)
    out = {"targets": tokens.numel() - 1, "val_loss_float": None, "val_bpb_float": None, "val_bpb_other": None}
    model_q = kit.build_model(hp, device)
    model_q.load_state_dict(reloaded)
    t0 = time.perf_counter()
    out["val_loss_reloaded"], out["val_bpb_reloaded"] = score_bpb(kit, model_q.to(device), tokens, val_bytes, *args)
    out["score_s"] = time.perf_counter() - t0
    if p["state_q"] is None:  # the float model, with the device's attention kernel like the others
        model_f = kit.build_model(hp, device)
        model_f.load_state_dict(model.state_dict())
        out["val_loss_float"], out["val_bpb_float"] = score_bpb(kit, model_f.to(device), tokens, val_bytes, *args)
    if other_state is not None:
        model_o = kit.build_model(hp, device)
        try:
            model_o.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in other_state.items()})
        except RuntimeError as err:
            raise BenchError(f"--other {a.other}: its unpacked state does not fit the model: "
                             f"{str(err).splitlines()[0]}") from None
        out["val_bpb_other"] = score_bpb(kit, model_o.to(device), tokens, val_bytes, *args)[1]
    return out


def show(a, p: dict, result: dict, source: str, dev_name: str, attention: str) -> None:
    hp, r, o = p["hp"], result, result["other"]
    print(f"model: {source}; {r['params']:,} params, {hp.num_layers} layers x {hp.model_dim}; QUANT_BITS="
          f"{hp.quant_bits} QUANT_EMBED_BITS={hp.quant_embed_bits} QUANT_METHOD={hp.quant_method} "
          f"COMPRESSOR={hp.compressor}")
    print(f"scoring device: {dev_name} (attention {attention}); {r['targets']:,} targets, seq_len {p['seq_len']}, "
          f"stride {p['stride']}")
    rows = [("pack seconds (quantise + compress)", f"{r['pack_s']:.3f}"),
            (f"  of which {hp.compressor} compression", f"{r['compress_s']:.3f}"),
            ("  of which quantisation (rest)", f"{r['quantise_s']:.3f}"), ("unpack seconds", f"{r['unpack_s']:.3f}"),
            (f"artifact bytes (int{hp.quant_bits}+{hp.compressor})", f"{r['artifact_bytes']:,}")]
    if r["given_file_bytes"] is not None:
        rows.append(("bytes of the given artifact file", f"{r['given_file_bytes']:,}"))
    rows += [("raw payload bytes (before compression)", f"{r['payload_bytes']:,}"),
             ("code bytes (train_gpt.py)", f"{r['code_bytes']:,}"),
             ("total submission bytes", f"{r['total_bytes']:,} ({p['kit'].ARTIFACT_LIMIT - r['total_bytes']:+,} to "
                                        "the 16,000,000 cap)")]
    if r["val_bpb_float"] is not None:
        rows.append(("val_bpb float model", f"{r['val_bpb_float']:.8f}"))
    rows.append(("val_bpb reloaded artifact", f"{r['val_bpb_reloaded']:.8f}"))
    if r["gap_bpb"] is not None:
        rows.append(("roundtrip gap (reloaded - float)", f"{r['gap_bpb']:+.6f} bpb"))
    rows.append(("scoring seconds (reloaded)", f"{r['score_s']:.2f}"))
    if o is not None:
        rows += [(f"other: {o['format']} pack seconds", f"{o['pack_s']:.3f}"),
                 ("other: unpack seconds", f"{o['unpack_s']:.3f}"),
                 ("other: artifact bytes", f"{o['bytes']:,} ({o['bytes_ratio_other_over_kit']:.3f}x the kit's)"),
                 ("other: val_bpb reloaded", f"{o['val_bpb_reloaded']:.8f}")]
        if o["gap_bpb"] is not None:
            rows.append(("other: roundtrip gap (reloaded - float)", f"{o['gap_bpb']:+.6f} bpb"))
    print()
    print(common.table(["figure", "value"], rows))
    if a.save:
        print(f"saved the packed artifact to {a.save} ({r['artifact_bytes']:,} bytes)")


def measure(a, p: dict) -> tuple[dict, str, str, str]:
    """Pack, unpack, score: (result, model description, device name, attention kernel)."""
    import torch
    kit, hp, code_sha = p["kit"], p["hp"], common.file_sha(p["kit_path"])
    model = common.model_from(kit, hp, p["state_q"], a.artifact)
    source = f"artifact {a.artifact}" if p["state_q"] is not None else (
        f"random init (seed {hp.seed}, +N(0, 1/fan_in) on matrices)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"config": hp.as_dict(), "code_sha256": code_sha}
    # Timing on the CPU, as in the kit's main(): pack = quantise + compress; unpack = decompress + dequantise.
    formats = {"kit": (lambda st: kit.pack_artifact(st, hp, meta), lambda b: kit.unpack_artifact(b)[0])}
    if p["other"] is not None:
        formats["other"] = tuple(p["other"][1:])
    times, blobs, states = time_formats(formats, state, a.rounds)
    blob = blobs["kit"]
    payload = kit.artifact_payload(blob)
    t0 = time.perf_counter()
    kit.compress(payload, hp.compressor, hp.zstd_level)
    compress_s = time.perf_counter() - t0
    if a.save:
        write_atomic(a.save, blob)
    device = common.pick_device(a.device)
    attention = common.setup_device(kit, device)
    sc = score_all(a, p, model, states["kit"], states.get("other"), device)
    pack_med, code = common.median(times["kit"]["pack"]), p["kit_path"].read_bytes()
    gap = None if sc["val_bpb_float"] is None else sc["val_bpb_reloaded"] - sc["val_bpb_float"]
    other = None
    if p["other"] is not None:
        o_bpb = sc["val_bpb_other"]
        other = {"script": str(Path(a.other).resolve()), "format": p["other"][0], "bytes": len(blobs["other"]),
                 "pack_s": common.median(times["other"]["pack"]), "unpack_s": common.median(times["other"]["unpack"]),
                 "pack_s_all": times["other"]["pack"], "unpack_s_all": times["other"]["unpack"],
                 "val_bpb_reloaded": o_bpb,
                 "gap_bpb": None if sc["val_bpb_float"] is None else o_bpb - sc["val_bpb_float"],
                 "bytes_ratio_other_over_kit": len(blobs["other"]) / len(blob)}
    result = {"pack_s": pack_med, "pack_s_all": times["kit"]["pack"], "compress_s": compress_s,
              "quantise_s": max(pack_med - compress_s, 0.0), "unpack_s": common.median(times["kit"]["unpack"]),
              "unpack_s_all": times["kit"]["unpack"], "artifact_bytes": len(blob), "given_file_bytes": p["file_bytes"],
              "payload_bytes": len(payload), "code_bytes": len(code), "total_bytes": len(blob) + len(code),
              "over_budget": len(blob) + len(code) > kit.ARTIFACT_LIMIT, "val_loss_float": sc["val_loss_float"],
              "val_bpb_float": sc["val_bpb_float"], "val_loss_reloaded": sc["val_loss_reloaded"],
              "val_bpb_reloaded": sc["val_bpb_reloaded"], "gap_bpb": gap, "score_s": sc["score_s"],
              "targets": sc["targets"], "other": other, "params": sum(x.numel() for x in model.parameters())}
    dev_name = common.device_name(device, threads=a.threads if device.type == "cpu" else None)
    return result, source, dev_name, attention


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    import torch
    p = plan(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    result, source, dev_name, attention = measure(a, p)
    show(a, p, result, source, dev_name, attention)
    hp, r, o = p["hp"], result, result["other"]
    if a.json:
        common.write_json(a.json, {
            "benchmark": "export", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "kit": str(p["kit_path"]), "kit_sha256": common.file_sha(p["kit_path"]), "model": source,
            "config": hp.as_dict(), "seq_len": p["seq_len"], "stride": p["stride"], "rounds": a.rounds,
            "saved": a.save, "result": {k: v for k, v in r.items() if k != "params"}})
    if a.record:
        figures = (f"pack {r['pack_s']:.2f} s ({hp.compressor} {r['compress_s']:.2f} s), unpack {r['unpack_s']:.2f} s, "
                   f"{r['artifact_bytes']:,} bytes ({r['total_bytes']:,} with code)"
                   + (f", gap {r['gap_bpb']:+.5f} bpb" if r["gap_bpb"] is not None else "")
                   + f", bpb {r['val_bpb_reloaded']:.5f} on {r['targets']:,} targets; {source}"
                   + (f"; other ({o['format']}): {o['bytes']:,} bytes, pack {o['pack_s']:.2f} s, bpb "
                      f"{o['val_bpb_reloaded']:.5f}" if o else ""))
        common.record(a.results, "export", dev_name, figures, p["kit_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
