"""The sandboxed side of ``compliance run``: ``python -m compliance.worker SPEC.json``.

Builds the sandbox (:func:`compliance.sandbox.enter`) before anything else, installs the CPU shims, then runs the
entry's script as ``__main__`` once per validation stream of the spec, each time in a fresh namespace and working
directory, with the recorder watching every score. Writes ``result.json`` beside the spec (temporary name, then
rename). Exit status 0 whatever the entry did (its failures are in the result); :data:`sandbox.REFUSED` when the
sandbox could not be built.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from compliance import sandbox


def _failure(exc: BaseException, script: Path) -> dict:
    """What stopped a run, in one line, plus where in the entry it happened."""
    from compliance.shim import ShimRefusal
    tb = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in tb if f.filename.startswith(str(script.parent))]
    where = f"{Path(mine[-1].filename).name}:{mine[-1].lineno} in {mine[-1].name}" if mine else ""
    kind = "error"
    if isinstance(exc, ShimRefusal):
        kind = "refused"
    elif isinstance(exc, ModuleNotFoundError):
        kind = "missing-module"
    elif isinstance(exc, SyntaxError):
        kind = "syntax"
    elif isinstance(exc, MemoryError):
        kind = "memory"
    msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:400] if str(exc) else type(exc).__name__
    return {"kind": kind, "message": msg, "where": where, "module": getattr(exc, "name", None),
            "trace": "".join(traceback.format_exception(exc))[-3000:]}


def _purge_modules(root: str) -> None:
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if f.startswith(root):
            del sys.modules[name]


def run_once(script: Path, cwd: Path, env: dict, mode, recorder, stream, watch, log: Path) -> dict:
    """One run of the entry as ``__main__`` on ``stream``; returns status, recorded scores and its output tail."""
    import random
    import runpy

    import numpy as np
    import torch

    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    base = dict(os.environ)
    os.environ.update(env)
    sys.argv = [str(script)]
    sys.path.insert(0, str(script.parent))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    recorder.start(stream, watch)
    t0 = time.time()
    status, failure = "ok", None
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            with mode, torch.random.fork_rng(devices=[]):
                runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                status, failure = "failed", {"kind": "exit", "message": f"the script exited with status {exc.code}",
                                             "where": "", "module": None, "trace": ""}
        except BaseException as exc:  # noqa: BLE001 - whatever the entry raises is reported, not propagated
            status, failure = "failed", _failure(exc, script)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    os.environ.clear()
    os.environ.update(base)
    scores = recorder.finish()
    if sys.path and sys.path[0] == str(script.parent):
        sys.path.pop(0)
    _purge_modules(str(script.parent))
    text = log.read_text(errors="replace")
    return {"status": status, "failure": failure, "seconds": round(time.time() - t0, 2), "scores": scores,
            "log": text[-200_000:]}


def main(spec_path: str) -> int:
    spec_file = Path(spec_path).resolve()
    spec = json.loads(spec_file.read_text())
    tmp = Path(spec["tmp"])
    try:
        sandbox.enter(tmp, sandbox.Limits(**spec["limits"]))
    except (sandbox.SandboxError, OSError) as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return sandbox.REFUSED
    from compliance import shim
    from compliance.recorder import Recorder
    from data.shards import write_shard
    from kitlib.fileio import write_text_atomic  # scores may be NaN: Python's JSON round-trips them

    mode = shim.install(triton=spec.get("triton", "missing"), float32=spec.get("float32", True))
    recorder = Recorder()
    mode.hooks.append(recorder)
    script = Path(spec["script"])
    val_paths = [Path(p) for p in spec["val_paths"]]
    results = []
    for run in spec["runs"]:
        for val_path in val_paths:
            write_shard(val_path, run["stream"])
        res = run_once(script, tmp / "runs" / run["name"], spec["env"], mode, recorder, run["stream"],
                       run.get("watch", []), tmp / "runs" / f"{run['name']}.log")
        res["name"] = run["name"]
        results.append(res)
        write_text_atomic(spec_file.with_name("result.json"), json.dumps({"runs": results}))
        if res["status"] != "ok" and spec.get("stop_on_failure", True):
            break
    write_text_atomic(spec_file.with_name("result.json"), json.dumps({"runs": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
