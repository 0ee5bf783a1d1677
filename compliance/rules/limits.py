"""LIMITS (static part): network access in the submitted code. Evaluation must run offline; the time, size and
code-byte limits are checked on the logs and submission.json (logs.py)."""

from __future__ import annotations

import ast

from ..astutil import walk

from .base import Context, Rule
from .registry import register

_NET_PREFIXES = ("urllib.request.", "urllib2.", "requests.", "http.client.", "httpx.", "aiohttp.", "urllib3.",
                 "ftplib.", "smtplib.", "socket.", "websocket.", "wget.", "pycurl.")
_NET_EXACT = {"urllib.request.urlopen", "urlopen", "urlretrieve", "urllib.urlopen", "hf_hub_download",
              "snapshot_download", "huggingface_hub.hf_hub_download", "huggingface_hub.snapshot_download",
              "datasets.load_dataset", "load_dataset", "torch.hub.load", "torch.hub.download_url_to_file",
              "download_url_to_file"}
_SHELL_NET = ("curl ", "wget ", "git clone", "scp ", "rsync ", "nc ", "aria2c", "huggingface-cli download")
_NOT_NET = {"socket.gethostname", "socket.getfqdn"}


@register
class NetworkAtEval(Rule):
    id = "LIMITS"
    title = "network access in the submitted code"
    fixtures = ("rules/limits",)

    def check(self, ctx: Context):
        out = []
        for f in ctx.prog.funcs:
            aliases = ctx.prog.aliases.get(id(f.unit), {})
            for st in f.stmts:
                for expr in (0,):
                    for n in st.nodes:
                        if not isinstance(n, ast.Call):
                            continue
                        full = _qualify(n.func, aliases)
                        what = None
                        if full in _NOT_NET:
                            continue
                        if full in _NET_EXACT or any(full.startswith(p) for p in _NET_PREFIXES):
                            what = full
                        elif full.split(".")[-1] in ("system", "popen", "run", "Popen", "call", "check_output",
                                                     "check_call") and _shell_net(n):
                            what = f"{full} (shell download)"
                        if what is None:
                            continue
                        expl = (f"{f.name if not f.is_module else 'module code'} calls {what} (line {st.line}): "
                                "network access from the submitted script; evaluation must run offline.")
                        out.append(ctx.finding(self.id, f, [(st, ())], st, expl, ctx.evidence(f.unit, [st.line])))
        return out


def _qualify(node, aliases) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(aliases.get(node.id, node.id))
    else:
        return ""
    return ".".join(reversed(parts))


def _shell_net(call: ast.Call) -> bool:
    for n in walk(call):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            v = n.value.strip() + " "
            if any(v.startswith(s) or f" {s}" in v or v.startswith(s.strip() + " ") for s in _SHELL_NET):
                return True
            if v.strip() in ("curl", "wget"):
                return True
    return False
