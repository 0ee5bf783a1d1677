"""The kit's compliance auditor on a submitted script: its verdict, read into the submission's fields.

records imports the ``compliance`` package (as it does for the log parser, ``compliance.logparse``) and calls its
audit in process: ``compliance.audit.audit(script, settings=<the run's config>)``, read as the same JSON object that
``python -m compliance audit <script> --json --set K=V ...`` prints ({"verdict": "clean|flagged|needs-ruling|incomplete",
"findings": [{"rule", "status", ...}], ...}). This module never decides compliance itself; an auditor that fails is
verdict "error", which pack refuses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from .settings import same_value

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
    verdict: str  # clean | flagged | needs-ruling | incomplete | not-run | error
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


def compliance_audit(script: Path, settings: dict[str, str]) -> dict:
    """The compliance auditor's JSON object for ``script`` with reachability resolved under ``settings``."""
    from compliance.audit import audit

    return audit(Path(script), settings=settings or None).as_dict()


def run_audit(script: Path, config: dict | None, auditor: Callable[[Path, dict], dict] = compliance_audit) -> Audit:
    """Audit ``script`` under the run's settings, as the run saw them (so that reachability is resolved for this
    run); any failure of the auditor is verdict "error" with the reason in ``note``."""
    settings = {k: "1" if v is True else "0" if v is False else str(v) for k, v in (config or {}).items()
                if isinstance(k, str) and k.isupper() and v not in (None, "")}
    try:
        obj = auditor(Path(script), settings)
    except RecursionError:
        return Audit("error", [], ran=False, note=f"{Path(script).name} is nested too deeply for the auditor")
    except Exception as exc:  # noqa: BLE001 - the auditor's failure is a refusal with its reason, never a crash
        first = (str(exc).strip().splitlines() or [""])[0]
        return Audit("error", [], ran=False, note=f"{type(exc).__name__}: {first[:200]}")
    if not isinstance(obj, dict) or not isinstance(obj.get("verdict"), str):
        return Audit("error", [], ran=False, note="the auditor gave no verdict")
    findings = [f for f in obj.get("findings") or [] if isinstance(f, dict)] if isinstance(
        obj.get("findings"), list) else []
    return Audit(obj["verdict"], findings, ran=True, note=f"compliance audit of {Path(script).name}", raw=obj)
