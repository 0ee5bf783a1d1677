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

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BenchError  # noqa: E402


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = ap.parse_args(argv)
    if not a.artifact and not a.random and not a.tiny:
        raise BenchError("give --artifact PATH or --random (or --tiny)")
    if a.rounds < 1:
        raise BenchError("--rounds must be >= 1")

    import numpy as np
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    names = {f[0] for f in kit.FLAGS}
    code = kit_path.read_bytes()
    code_sha = common.file_sha(kit_path)

    file_bytes, state_q = None, None
    if a.artifact:
        art = Path(a.artifact)
        if not art.is_file():
            raise BenchError(f"--artifact {a.artifact} does not exist")
        blob0 = art.read_bytes()
        file_bytes = len(blob0)
        try:
            state_q, meta = kit.unpack_artifact(blob0, str(art))
        except kit.ConfigError as err:
            raise BenchError(str(err)) from None
        env = {k: common.fmt(v) for k, v in meta.get("config", {}).items()
               if k in names and k not in ("RUN_ID", "EVAL_ONLY")}
        env.update(common.parse_overrides(a.env))
        source = f"artifact {a.artifact}"
    else:
        env = common.base_env(a, kit)
    hp = common.kit_args(kit, env)
    seq_len = a.seq_len or hp.eval_seq_len
    stride = a.stride or hp.eval_stride
    if not 0 < stride <= seq_len:
        raise BenchError(f"--stride {stride} must be in 1..--seq-len {seq_len}")
    hp = common.kit_args(kit, {**env, "EVAL_SEQ_LEN": str(seq_len), "EVAL_STRIDE": str(stride)})
    max_tokens = a.max_tokens if a.max_tokens is not None else (8_000 if a.tiny else 1_000_000)
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    hp.data_path, hp.tokenizer_path = str(data), str(tok)

    model = kit.build_model(hp)
    if state_q is not None:
        try:
            model.load_state_dict(state_q)
        except RuntimeError as err:
            raise BenchError(f"--artifact {a.artifact} does not fit the model built from its config: "
                             f"{str(err).splitlines()[0]}") from None
    else:
        common.perturb(model, hp.seed)
        source = f"random init (seed {hp.seed}, +N(0, 1/fan_in) on matrices)"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"config": hp.as_dict(), "code_sha256": code_sha}

    # Timing on the CPU, as in the kit's main(): pack = quantise + zstd; unpack = zstd + dequantise. With --other,
    # its format alternates with the kit's in every round.
    formats = {"kit": (lambda st: kit.pack_artifact(st, hp, meta), lambda b: kit.unpack_artifact(b)[0])}
    other_name = None
    if a.other:
        other_name, *other_fns = other_exporter(Path(a.other).resolve(), env)
        formats["other"] = tuple(other_fns)
    times = {name: {"pack": [], "unpack": []} for name in formats}
    blobs, states = {}, {}
    for _ in range(a.rounds):
        for name, (pack, unpack) in formats.items():
            t0 = time.perf_counter()
            blobs[name] = pack(state)
            times[name]["pack"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            states[name] = unpack(blobs[name])
            times[name]["unpack"].append(time.perf_counter() - t0)
    blob, reloaded = blobs["kit"], states["kit"]
    pack_s, unpack_s = times["kit"]["pack"], times["kit"]["unpack"]
    payload = kit.artifact_payload(blob)
    t0 = time.perf_counter()
    kit.compress(payload, hp.compressor, hp.zstd_level)
    compress_s = time.perf_counter() - t0
    pack_med, unpack_med = common.median(pack_s), common.median(unpack_s)
    if a.save:
        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        Path(a.save).write_bytes(blob)

    # Scoring: float (when there is one) and reloaded, with the kit's scorer on the same tokens.
    device = common.pick_device(a.device)
    attention = common.setup_device(kit, device)
    try:
        sp = kit.load_tokenizer(hp)
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None
    val_np = common.load_val(kit, data, max_tokens)
    if int(val_np.max()) >= hp.vocab_size:
        raise BenchError(f"val tokens reach id {int(val_np.max())} >= VOCAB_SIZE={hp.vocab_size}")
    tokens = torch.from_numpy(val_np.astype(np.int64)).to(device)
    val_bytes = torch.from_numpy(kit.target_bytes(val_np, kit.byte_tables(sp))).to(device)
    model_q = kit.build_model(hp)
    model_q.load_state_dict(reloaded)
    model_q = model_q.to(device)
    t0 = time.perf_counter()
    loss_q, bpb_q = score_bpb(kit, model_q, tokens, val_bytes, seq_len, stride, hp.eval_batch_seqs)
    score_s = time.perf_counter() - t0
    loss_f = bpb_f = gap = None
    if state_q is None:
        loss_f, bpb_f = score_bpb(kit, model.to(device), tokens, val_bytes, seq_len, stride, hp.eval_batch_seqs)
        gap = bpb_q - bpb_f
    other = None
    if a.other:
        model_o = kit.build_model(hp)
        try:
            model_o.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in states["other"].items()})
        except RuntimeError as err:
            raise BenchError(f"--other {a.other}: its unpacked state does not fit the model: "
                             f"{str(err).splitlines()[0]}") from None
        _, bpb_o = score_bpb(kit, model_o.to(device), tokens, val_bytes, seq_len, stride, hp.eval_batch_seqs)
        other = {"script": str(Path(a.other).resolve()), "format": other_name, "bytes": len(blobs["other"]),
                 "pack_s": common.median(times["other"]["pack"]), "unpack_s": common.median(times["other"]["unpack"]),
                 "pack_s_all": times["other"]["pack"], "unpack_s_all": times["other"]["unpack"],
                 "val_bpb_reloaded": bpb_o, "gap_bpb": None if bpb_f is None else bpb_o - bpb_f,
                 "bytes_ratio_other_over_kit": len(blobs["other"]) / len(blob)}

    dev_name = common.device_name(device, threads=a.threads if device.type == "cpu" else None)
    total = len(blob) + len(code)
    qname = f"int{hp.quant_bits}"
    print(f"model: {source}; {sum(p.numel() for p in model.parameters()):,} params, {hp.num_layers} layers x "
          f"{hp.model_dim}; QUANT_BITS={hp.quant_bits} QUANT_EMBED_BITS={hp.quant_embed_bits} "
          f"QUANT_METHOD={hp.quant_method} COMPRESSOR={hp.compressor}")
    print(f"scoring device: {dev_name} (attention {attention}); {tokens.numel() - 1:,} targets, seq_len {seq_len}, "
          f"stride {stride}")
    rows = [("pack seconds (quantise + compress)", f"{pack_med:.3f}"),
            (f"  of which {hp.compressor} compression", f"{compress_s:.3f}"),
            ("  of which quantisation (rest)", f"{max(pack_med - compress_s, 0.0):.3f}"),
            ("unpack seconds", f"{unpack_med:.3f}"),
            (f"artifact bytes ({qname}+{hp.compressor})", f"{len(blob):,}")]
    if file_bytes is not None:
        rows.append(("bytes of the given artifact file", f"{file_bytes:,}"))
    rows += [("raw payload bytes (before compression)", f"{len(payload):,}"),
             ("code bytes (train_gpt.py)", f"{len(code):,}"),
             ("total submission bytes", f"{total:,} ({kit.ARTIFACT_LIMIT - total:+,} to the 16,000,000 cap)")]
    if bpb_f is not None:
        rows.append(("val_bpb float model", f"{bpb_f:.8f}"))
    rows.append(("val_bpb reloaded artifact", f"{bpb_q:.8f}"))
    if gap is not None:
        rows.append(("roundtrip gap (reloaded - float)", f"{gap:+.6f} bpb"))
    rows.append(("scoring seconds (reloaded)", f"{score_s:.2f}"))
    if other is not None:
        rows += [(f"other: {other['format']} pack seconds", f"{other['pack_s']:.3f}"),
                 ("other: unpack seconds", f"{other['unpack_s']:.3f}"),
                 ("other: artifact bytes",
                  f"{other['bytes']:,} ({other['bytes_ratio_other_over_kit']:.3f}x the kit's)"),
                 ("other: val_bpb reloaded", f"{other['val_bpb_reloaded']:.8f}")]
        if other["gap_bpb"] is not None:
            rows.append(("other: roundtrip gap (reloaded - float)", f"{other['gap_bpb']:+.6f} bpb"))
    print()
    print(common.table(["figure", "value"], rows))
    if a.save:
        print(f"saved the packed artifact to {a.save} ({len(blob):,} bytes)")
    result = {"pack_s": pack_med, "pack_s_all": pack_s, "compress_s": compress_s,
              "quantise_s": max(pack_med - compress_s, 0.0), "unpack_s": unpack_med, "unpack_s_all": unpack_s,
              "artifact_bytes": len(blob), "given_file_bytes": file_bytes, "payload_bytes": len(payload),
              "code_bytes": len(code), "total_bytes": total, "over_budget": total > kit.ARTIFACT_LIMIT,
              "val_loss_float": loss_f, "val_bpb_float": bpb_f, "val_loss_reloaded": loss_q,
              "val_bpb_reloaded": bpb_q, "gap_bpb": gap, "score_s": score_s, "targets": tokens.numel() - 1,
              "other": other}
    if a.json:
        common.write_json(a.json, {
            "benchmark": "export", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "kit": str(kit_path), "kit_sha256": code_sha, "model": source, "config": hp.as_dict(),
            "seq_len": seq_len, "stride": stride, "rounds": a.rounds, "saved": a.save, "result": result})
    if a.record:
        figures = (f"pack {pack_med:.2f} s ({hp.compressor} {compress_s:.2f} s), unpack {unpack_med:.2f} s, {len(blob):,} bytes "
                   f"({total:,} with code)" + (f", gap {gap:+.5f} bpb" if gap is not None else "")
                   + f", bpb {bpb_q:.5f} on {tokens.numel() - 1:,} targets; {source}"
                   + (f"; other ({other['format']}): {other['bytes']:,} bytes, pack {other['pack_s']:.2f} s, bpb "
                      f"{other['val_bpb_reloaded']:.5f}" if other else ""))
        common.record(a.results, "export", dev_name, figures, kit_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
