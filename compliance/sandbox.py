"""The sandbox in which an entry's code runs: its own process (group), a temporary directory, no network, nothing
writable outside the temporary directory, and CPU-time, memory, file-size and wall-clock limits.

The parent calls :func:`spawn`; the child (``python -m compliance.worker``) calls :func:`enter` first thing, before it
imports or runs anything of the entry's. ``enter`` creates new network and mount namespaces (``unshare(2)`` through
the C library: as root directly, otherwise inside a new user namespace), checks that no network interface but a
down loopback is left, makes every mount read-only except a bind mount of the temporary directory, and sets the
resource limits. When any of that is not possible it refuses (exit status :data:`REFUSED`, the reason on stderr):
an entry never runs with network access or a writable file system outside its directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

REFUSED = 86          # the child could not build the sandbox: nothing of the entry ran

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
_MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                "noatime": 0x400, "nodiratime": 0x800, "relatime": 0x200000}


@dataclasses.dataclass
class Limits:
    wall_s: float = 900.0        # whole worker, all runs
    cpu_s: int = 1800            # RLIMIT_CPU of the worker
    memory_bytes: int = 16 * 2**30   # RLIMIT_AS
    file_bytes: int = 2 * 2**30      # RLIMIT_FSIZE: the largest file it may write


class SandboxError(RuntimeError):
    """The sandbox could not be built; the entry is not run."""


def _libc():
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.unshare.argtypes = [ctypes.c_int]
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _unshare(lib) -> None:
    uid, gid = os.getuid(), os.getgid()
    if lib.unshare(CLONE_NEWNET | CLONE_NEWNS) == 0:
        return
    first = os.strerror(ctypes.get_errno())
    if lib.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        raise SandboxError(f"cannot create a network namespace ({first}; in a user namespace: "
                           f"{os.strerror(ctypes.get_errno())}); the dynamic audit refuses to run untrusted code "
                           "with network access")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mounts() -> list[tuple[str, int]]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        point = parts[4].encode().decode("unicode_escape")
        flags = 0
        for opt in parts[5].split(","):
            flags |= _MOUNT_FLAGS.get(opt, 0)
        out.append((point, flags))
    return out


def _read_only_except(lib, writable: Path) -> None:
    _check(lib.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    w = str(writable).encode()
    _check(lib.mount(w, w, None, MS_BIND | MS_REC, None), f"bind-mounting {writable}")
    for point, flags in sorted(_mounts(), key=lambda m: len(m[0])):
        if point == str(writable) or point.startswith(str(writable) + "/"):
            continue
        rc = lib.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
        if rc != 0 and point in ("/", "/tmp", "/work", "/root", "/home", "/var", "/dev/shm", "/run"):
            _check(rc, f"making {point} read-only")
    probe = Path(os.path.dirname(str(writable))) / f".compliance-write-probe-{os.getpid()}"
    try:
        probe.write_text("x")
    except OSError:
        pass
    else:
        probe.unlink()
        raise SandboxError(f"{probe.parent} is still writable inside the sandbox")


def _no_network() -> None:
    names = [n for _, n in socket.if_nameindex()]
    if names != ["lo"]:
        raise SandboxError(f"network interfaces still visible inside the sandbox: {names}")
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1).close()
    except OSError:
        return
    raise SandboxError("an outside address is still reachable inside the sandbox")


def enter(writable: Path, limits: Limits) -> None:
    """Called by the child before anything of the entry's runs; raises SandboxError if it cannot isolate."""
    writable = Path(writable).resolve()
    lib = _libc()
    _unshare(lib)
    _read_only_except(lib, writable)
    _no_network()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def check() -> str | None:
    """None when this machine can build the sandbox, else the reason (a throwaway child tries it)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="compliance-sandbox-check-") as d:
        code = ("import sys; from pathlib import Path; from compliance import sandbox\n"
                "try:\n    sandbox.enter(Path(sys.argv[1]), sandbox.Limits())\n"
                "except (sandbox.SandboxError, OSError) as e:\n    print(e); sys.exit(sandbox.REFUSED)\n")
        res = subprocess.run([sys.executable, "-c", code, d], env=child_env(Path(d)), capture_output=True, text=True,
                             timeout=60)
    return None if res.returncode == 0 else (res.stdout.strip() or res.stderr.strip()[-300:] or "unknown")


def child_env(tmp: Path) -> dict[str, str]:
    """The environment the worker starts with: only what Python needs, caches and HOME inside the temp dir."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "PYTHONHASHSEED") if k in os.environ}
    home = tmp / "home"
    (home / "bin").mkdir(parents=True, exist_ok=True)
    smi = home / "bin" / "nvidia-smi"   # entries log `nvidia-smi` output: answer that there is no GPU
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI: no GPU (compliance run: CPU shim)'\n")
    smi.chmod(0o755)
    mini = home / "bin" / "pyminify"   # entries measure their minified code size: the source, unminified
    mini.write_text("#!/bin/sh\nfor a; do last=$a; done\n[ \"$last\" = - ] || [ -z \"$last\" ] && exec cat\nexec cat \"$last\"\n")
    mini.chmod(0o755)
    keep["PATH"] = f"{home / 'bin'}:{keep.get('PATH', '/usr/bin:/bin')}"
    keep.update({"HOME": str(home), "TMPDIR": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                 "TRITON_CACHE_DIR": str(home / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"),
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                 "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONHASHSEED": "0"})
    return keep


def spawn(tmp: Path, spec: Path, limits: Limits, log) -> tuple[int, bool]:
    """Run ``python -m compliance.worker SPEC`` in its own process group; kill the group at the wall-clock limit.

    Returns (exit status, timed out)."""
    cmd = [sys.executable, "-m", "compliance.worker", str(spec)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(tmp), env=child_env(tmp), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=limits.wall_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return proc.returncode, True
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
