"""Commands in their own process group: started so that the whole group can be ended at once (a ``torchrun``
launcher and its workers), and so that they die with the process that started them (Linux).

    proc = start(script_command("train_gpt.py", 2), cwd=run_dir, env=env)  # torchrun; stdout+stderr as text lines
    with Deadline(proc, 3600) as deadline:                                   # ends the group after 3600 s
        for line in proc.stdout: ...
    deadline.expired                                                         # True if it had to
    stop(proc)                                                               # SIGTERM to the group, then SIGKILL
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def _die_with_parent() -> None:  # runs in the child before exec: SIGTERM when the parent dies (PR_SET_PDEATHSIG)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - not Linux / no libc: the child merely outlives a killed parent
        pass


def script_command(script, nproc: int = 1, python: str = sys.executable) -> list[str]:
    """The command line of a training script: ``python SCRIPT``, or with ``nproc`` > 1 torchrun's
    ``python -m torch.distributed.run --standalone --nproc_per_node=NPROC SCRIPT``."""
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    return [python, str(script)]


def start(cmd: list[str], *, cwd=None, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, stdout and stderr merged into ``proc.stdout`` (text,
    line-buffered, undecodable bytes replaced). Raises OSError when the program cannot be started."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace", start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def stop(proc: subprocess.Popen, grace: float = 15.0, kill_grace: float = 5.0) -> None:
    """End ``proc``'s whole process group: SIGTERM, up to ``grace`` s to exit, then SIGKILL. No-op when it has
    exited; safe to call twice."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_grace)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Deadline:
    """A context manager that ``stop``s ``proc`` (grace ``grace`` s) once ``seconds`` have passed; ``seconds`` None
    or 0: no deadline. ``expired`` says whether it fired."""

    def __init__(self, proc: subprocess.Popen, seconds: float | None, grace: float = 5.0):
        self.proc, self.seconds, self.grace = proc, seconds, grace
        self._fired = threading.Event()
        self._timer = None

    @property
    def expired(self) -> bool:
        return self._fired.is_set()

    def _fire(self) -> None:
        self._fired.set()
        stop(self.proc, grace=self.grace)

    def __enter__(self) -> "Deadline":
        if self.seconds:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
