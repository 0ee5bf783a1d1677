"""Running the kit's compliance auditor (``python -m compliance audit <script> --json``).

The auditor is a separate package. This module only runs it and reads its JSON
({"verdict": "clean|flagged|needs-ruling", "findings": [{"rule", "status", ...}], ...});
it never decides compliance itself. Without the package the verdict is "not-run" and the
rule-derived compliance fields stay null.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

# Finding statuses that mean "this violation is live in the submitted configuration".
ACTIVE_STATUSES = {"active", "violation", "fail", "failed", "error-active"}
RULING_STATUSES = {"needs-ruling", "needs_ruling", "ruling", "open", "unclear"}

# compliance key -> the auditor rules that speak to it (COMPLIANCE.md ids)
RULES_FOR_KEY = {
    "no_slot": ("SLOT",),
    "no_pre_quant_ttt": ("TTT-PRE",),
    "no_ngram_cache": ("NGRAM-TARGET", "RESCORE"),
    "score_first_ttt": ("TTT-PRE", "RESCORE"),
}


def norm_rule(rule: object) -> str:
    return str(rule or "").strip().upper().replace("_", "-")


def norm_status(status: object) -> str:
    return str(status or "").strip().lower()


@dataclasses.dataclass
class Audit:
    verdict: str  # clean | flagged | needs-ruling | not-run | error
    findings: list
    ran: bool
    note: str = ""
    raw: dict | None = None

    def active(self, config: dict | None = None) -> list[dict]:
        """Findings that are live for this run: status active, or dormant behind a flag the run turned on."""
        out = []
        for f in self.findings:
            if norm_rule(f.get("rule")) == "STATS":
                continue  # COMPLIANCE.md: a weak record claim is a warning, never a refusal
            st = norm_status(f.get("status"))
            if st in ACTIVE_STATUSES:
                out.append(f)
            elif st == "dormant" and config and _flag_enabled(f, config):
                out.append(dict(f, status="active (flag enabled in this run)"))
        if not out and self.verdict == "flagged" and not any(
            norm_status(f.get("status")) in ("dormant", "needs-ruling", "needs_ruling", "info", "ok", "pass", "clean")
            for f in self.findings
        ):
            out.append({"rule": "?", "status": "active", "message": "auditor verdict is 'flagged'"})
        return out

    def needs_ruling(self) -> list[dict]:
        return [f for f in self.findings if norm_status(f.get("status")) in RULING_STATUSES]

    def compliance_fields(self, config: dict | None = None) -> dict:
        """no_slot, no_pre_quant_ttt, no_ngram_cache, score_first_ttt from the findings.

        True: the auditor ran and reports no live violation of the rule(s); False: a live one;
        None: not run, or a finding that needs a ruling.
        """
        out = {}
        active = self.active(config)
        ruling = self.needs_ruling()
        for key, rules in RULES_FOR_KEY.items():
            if not self.ran:
                out[key] = None
            elif any(norm_rule(f.get("rule")) in rules for f in active):
                out[key] = False
            elif any(norm_rule(f.get("rule")) in rules for f in ruling):
                out[key] = None
            else:
                out[key] = True
        return out


def _flag_enabled(finding: dict, config: dict) -> bool:
    """Does the run's config set the flag that activates a dormant finding?

    The auditor names it as ``"flag": "NAME=value"`` (or just ``NAME``: any truthy value).
    """
    from .flags import same_value

    names = []
    for key in ("flag", "flags", "gate", "env", "setting"):
        v = finding.get(key)
        if isinstance(v, str):
            names.append(v)
        elif isinstance(v, list):
            names += [x for x in v if isinstance(x, str)]
    for n in names:
        name, _, want = n.partition("=")
        name = name.strip().upper()
        if name not in config:
            continue
        v = config[name]
        if want.strip():
            if same_value(v, want.strip()):
                return True
        elif isinstance(v, str):
            if v.strip().lower() not in ("", "0", "false", "none", "off"):
                return True
        elif v:
            return True
    return False


def describe_finding(f: dict) -> str:
    """One line for README / refusals from an auditor finding."""
    where = f.get("where") or f.get("location") or ""
    if not where and f.get("file"):
        where = f"{f.get('file')}:{f.get('line')}" if f.get("line") else str(f.get("file"))
    msg = f.get("explanation") or f.get("message") or f.get("detail") or f.get("evidence") or ""
    flag = f" [{f['flag']}]" if isinstance(f.get("flag"), str) else ""
    return (f"{f.get('rule', '?')} ({f.get('status', '?')}){flag}" + (f" at {where}" if where else "")
            + (f": {str(msg).strip()[:200]}" if msg else ""))


def find_compliance(search: list[Path]) -> tuple[Path | None, str]:
    """(directory holding the ``compliance`` package with a command line, note)."""
    seen = set()
    partial = None
    for d in search:
        try:
            d = Path(d).resolve()
        except OSError:
            continue
        if d in seen:
            continue
        seen.add(d)
        pkg = d / "compliance"
        if (pkg / "__main__.py").is_file():
            return d, ""
        if pkg.is_dir() and partial is None:
            partial = pkg
    if partial is not None:
        return None, f"the compliance package at {partial} has no command line yet (compliance/__main__.py)"
    return None, "the compliance package is not installed in this kit"


def run_audit(script: Path, config: dict | None, search: list[Path], timeout: float = 600.0) -> Audit:
    root, why = find_compliance(search)
    if root is None:
        return Audit("not-run", [], ran=False, note=why)
    # The run's settings, as the run saw them, so that reachability is resolved for this run (`--set NAME=VALUE`).
    sets = [f"{k}={'1' if v is True else '0' if v is False else v}" for k, v in (config or {}).items()
            if isinstance(k, str) and k.isupper() and v not in (None, "")]
    cmd = [sys.executable, "-m", "compliance", "audit", str(Path(script).resolve()), "--json"]
    cmd += [arg for kv in sets for arg in ("--set", kv)]
    try:
        proc = subprocess.run(cmd, cwd=str(root), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Audit("error", [], ran=False, note=f"auditor did not finish: {exc}")
    obj = _last_json_object(proc.stdout)
    if obj is None or not isinstance(obj.get("verdict"), str):
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        return Audit("error", [], ran=False, note=f"auditor exit {proc.returncode}, no JSON verdict: {tail[:200]}")
    findings = [f for f in obj.get("findings", []) if isinstance(f, dict)] if isinstance(obj.get("findings"), list) else []
    return Audit(obj["verdict"], findings, ran=True, note=f"python -m compliance audit {Path(script).name} --json",
                 raw=obj)


def _last_json_object(text: str) -> dict | None:
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    # Tolerate log lines before the JSON document: take the last line that starts an object.
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("{"):
            try:
                obj = json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
            return obj if isinstance(obj, dict) else None
    return None
