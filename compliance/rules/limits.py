"""LIMITS (static part): network access in the submitted code. Evaluation must run offline; the time, size and
code-byte limits are checked on the logs and submission.json (limits_logs.py).

A call reaches the network when what it calls is, once import aliases are followed, a function of a network
module (urllib.request, http.client, requests, httpx, socket connections, torch.hub downloads, huggingface_hub
and datasets downloads, ...), including modules obtained at run time (`importlib.import_module("urllib.request")`,
`__import__(NAME)` with NAME a constant), or when it runs a program that downloads (`curl`, `wget`, `git clone`,
`huggingface-cli download`, ... through subprocess or os.system, as an argument list, a string or an f-string).
"""

from __future__ import annotations

import ast

from ..astutil import assigned_calls, call_name, walk
from .base import Context, Rule
from .registry import register

_NET_MODULES = ("urllib.request", "urllib2", "urllib3", "requests", "http.client", "httpx", "aiohttp", "ftplib",
                "smtplib", "websocket", "websockets", "wget", "pycurl", "gdown", "boto3", "botocore", "paramiko")
_NET_EXACT = {"urllib.request.urlopen", "urlopen", "urlretrieve", "urllib.urlopen", "hf_hub_download",
              "snapshot_download", "huggingface_hub.hf_hub_download", "huggingface_hub.snapshot_download",
              "huggingface_hub.HfApi", "datasets.load_dataset", "load_dataset", "torch.hub.load",
              "torch.hub.download_url_to_file", "torch.hub.load_state_dict_from_url", "download_url_to_file",
              "load_state_dict_from_url", "socket.create_connection", "socket.socket"}
_NOT_NET = {"socket.gethostname", "socket.getfqdn", "socket.gethostbyname"}
_RUNNERS = {"system", "popen", "run", "Popen", "call", "check_output", "check_call", "getoutput", "getstatusoutput",
            "spawnlp", "execvp", "create_subprocess_exec", "create_subprocess_shell"}
_NET_TOOLS = {"curl", "wget", "scp", "rsync", "nc", "ncat", "aria2c", "ftp", "sftp", "gsutil", "gdown"}
_NET_SUBCOMMANDS = {("git", "clone"), ("git", "fetch"), ("git", "pull"), ("huggingface-cli", "download"),
                    ("hf", "download"), ("pip", "install"), ("pip3", "install"), ("aws", "s3"), ("wget", "")}


@register
class NetworkAtEval(Rule):
    id = "LIMITS"
    title = "network access in the submitted code"
    fixtures = ("rules/limits",)

    def check(self, ctx: Context):
        out = []
        for f in ctx.prog.funcs:
            aliases = dict(ctx.prog.aliases.get(id(f.unit), {}))
            dynamic = _dynamic_modules(ctx, f)
            for st in f.stmts:
                for n in st.nodes:
                    if not isinstance(n, ast.Call):
                        continue
                    full = _qualify(n.func, aliases, dynamic, ctx, f)
                    what = None
                    if full in _NOT_NET:
                        continue
                    if full in _NET_EXACT or any(full == m or full.startswith(m + ".") for m in _NET_MODULES) \
                            or full.startswith("torch.hub."):
                        what = full
                    elif full.split(".")[-1] in _RUNNERS and _downloads(n, ctx, f):
                        what = f"{full} (runs a download)"
                    if what is None:
                        continue
                    expl = (f"{f.name if not f.is_module else 'module code'} calls {what} (line {st.line}): "
                            "network access from the submitted script; evaluation must run offline.")
                    out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
        return out


def _const_str(node, ctx: Context, f) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        v = ctx.base.ev.ev(node, f)
        return v if isinstance(v, str) else None
    return None


def _dynamic_modules(ctx: Context, f) -> dict:
    """Names bound to a module imported at run time: m = importlib.import_module("x"), m = __import__(NAME)."""
    out = {}
    for t, call in assigned_calls(f.stmts):
        if isinstance(t, ast.Name):
            mod = _imported(call, ctx, f)
            if mod:
                out[t.id] = mod
    return out


def _imported(call: ast.Call, ctx: Context, f) -> str | None:
    name = call_name(call)
    if name in ("import_module", "__import__") and call.args:
        return _const_str(call.args[0], ctx, f)
    return None


def _qualify(node, aliases, dynamic, ctx: Context, f) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(dynamic.get(node.id) or aliases.get(node.id, node.id))
    elif isinstance(node, ast.Call):
        mod = _imported(node, ctx, f)
        if not mod:
            return ""
        parts.append(mod)
    else:
        return ""
    return ".".join(reversed(parts))


def _downloads(call: ast.Call, ctx: Context, f) -> bool:
    """Does the command a subprocess / os.system call runs download something?"""
    if not call.args:
        return False
    cmd = call.args[0]
    words: list[str] = []
    if isinstance(cmd, (ast.List, ast.Tuple)):
        for e in cmd.elts[:2]:
            s = _const_str(e, ctx, f)
            words.append(s if s is not None else "")
    else:
        text = ""
        if isinstance(cmd, ast.JoinedStr):
            for v in cmd.values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    text += v.value
                else:
                    text += " ? "
        else:
            text = _const_str(cmd, ctx, f) or ""
            if not text:
                for n in walk(cmd):
                    if isinstance(n, ast.Constant) and isinstance(n.value, str):
                        text += n.value + " "
        for part in text.replace("&&", ";").replace("|", ";").split(";"):
            ws = part.split()
            if ws:
                words = ws[:2]
                if _tool(words):
                    return True
        return False
    return _tool(words)


def _tool(words: list[str]) -> bool:
    if not words or not words[0]:
        return False
    prog = words[0].rsplit("/", 1)[-1]
    sub = words[1] if len(words) > 1 else ""
    return prog in _NET_TOOLS or (prog, sub) in _NET_SUBCOMMANDS
