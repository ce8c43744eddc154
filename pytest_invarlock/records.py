"""Records: one per (adapter, model, check), built from test reports, and the lane results file."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import pytest

FORMAT = "invarlock-lane-results-v1"
PROPERTY = "invarlock"
#: The user property the plugin's report hook adds when an exception decides the outcome.
VERDICT = "invarlock_verdict"
#: The packages every run's provenance names; each profile adds its own (``Profile.packages``).
PACKAGES = ("pytest-invarlock", "pytest", "pytest-xdist")
_RANK = {"passed": 0, "skipped": 1, "declined": 1, "unjudged": 1, "xfailed": 1, "finding": 2, "xpassed": 2,
         "failed": 3, "error": 4}


@dataclass(frozen=True, eq=True)
class Record:
    """The verdict of one check for one adapter on one model.

    ``outcome`` is one of passed, failed, error, finding (a SHOULD check failed, not strict),
    unjudged (the suite has no truth for the model), skipped, xfailed, xpassed; ``level`` is
    the check's requirement level (MUST or SHOULD).
    """

    adapter: str
    model: str
    check: str
    outcome: str
    message: str
    family: str | None = None
    role: str | None = None
    nodeid: str = ""
    level: str | None = None
    #: the profile of the implementation, and the support-matrix lane the record counts towards
    profile: str | None = None
    lane_id: str | None = None
    #: the subject's labels (family, role, quant method...) and where its checkpoint comes from:
    #: ``fixture``, ``package`` or ``path``, with the checkpoint's content hash
    labels: dict[str, str] | None = None
    source: str | None = None
    digest: str | None = None


def identity(report: pytest.TestReport) -> dict[str, Any] | None:
    """Return the (adapter, model, check) a report is about, or None for other tests."""
    for key, value in report.user_properties:
        if key == PROPERTY:
            return dict(cast("dict[str, Any]", value))
    return _from_nodeid(report.nodeid)


def _from_nodeid(nodeid: str) -> dict[str, Any] | None:
    """Recover the identity from a test id ``...[adapter-model-check_x]``.

    Only reports xdist makes up for a crashed worker lack the tagged properties; an adapter
    label has no hyphen after its last colon (the model label may have some), and the check
    must be one of the suite's, so an unrelated test's id is never taken for a record.
    """
    params = nodeid.rpartition("[")[2].removesuffix("]") if nodeid.endswith("]") else ""
    case, _, check = params.rpartition("-")
    adapter, _, model = case.partition("-")
    if ":" in case:  # DIST:NAME or module:Class labels may hold hyphens before the colon
        head, _, rest = case.rpartition(":")
        name, _, model = rest.partition("-")
        adapter = f"{head}:{name}"
    if not check.startswith("check_"):  # not a conformance test: never look profiles up
        return None
    if not (adapter and model and _level(check)):
        return None
    return {"adapter": adapter, "model": model, "check": check, "family": None, "role": None,
            "level": _level(check)}


def _level(check: str) -> str | None:
    """Return the level of the check named ``check`` (None when the suite has no such check)."""
    from pytest_invarlock.checking import level_of
    from pytest_invarlock.profile import all_checks

    return next((level_of(c) for c in all_checks() if c.__name__ == check), None)


def verdict_of(report: pytest.TestReport) -> dict[str, Any]:
    """Return what the plugin's report hook decided for this report (empty when nothing)."""
    for key, value in report.user_properties:
        if key == VERDICT:
            return dict(cast("dict[str, Any]", value))
    return {}


def outcome_of(report: pytest.TestReport) -> str | None:
    """Map one phase report to a record outcome (None: this phase decides nothing)."""
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.skipped:
            return "xfailed" if xfail else "skipped"
        if report.passed:
            return "xpassed" if xfail else "passed"
        return "failed"
    if report.failed:
        return "error"
    if report.skipped:
        return "xfailed" if xfail else "skipped"
    return None


def message_of(report: pytest.TestReport) -> str:
    """Return the reason or failure message of a report, one paragraph."""
    if report.passed and not hasattr(report, "wasxfail"):
        return ""
    if hasattr(report, "wasxfail") and report.wasxfail:
        return str(report.wasxfail)
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(getattr(longrepr, "reprcrash", None), "message", None)
    text = str(crash) if crash else (report.longreprtext.strip().splitlines() or [""])[-1]
    return text.removeprefix("Failed: ")


class Collector:
    """Gather records from the reports the controller sees (xdist replays workers' reports)."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.notes: dict[str, str] = {}

    def note(self, nodeid: str, text: str) -> None:
        """Keep a passed check's finding (an :class:`InvarlockNote` warning) for its record."""
        self.notes[nodeid] = text
        if nodeid in self.records and not self.records[nodeid].message:
            self.records[nodeid] = replace(self.records[nodeid], message=text)

    def add(self, report: pytest.TestReport) -> None:
        """Fold one phase report into the record of its test."""
        ident, outcome = identity(report), outcome_of(report)
        if ident is None or outcome is None:
            return
        verdict = verdict_of(report)
        if verdict.get("drop"):  # another test of a declined pair: the decline is said once
            return
        outcome = verdict.get("outcome", outcome)
        old = self.records.get(report.nodeid)
        if old and _RANK[old.outcome] >= _RANK[outcome]:
            return
        message = verdict.get("message") or message_of(report) or self.notes.get(
            report.nodeid, "")
        self.records[report.nodeid] = Record(outcome=outcome, message=message,
                                             nodeid=report.nodeid, **ident)

    def sorted(self) -> list[Record]:
        """Return the records in a stable order.

        A pair declined at run time keeps one record, the ``declined`` one of its first test,
        however the pair's tests were spread over workers.
        """
        records = sorted(self.records.values(), key=lambda r: (r.adapter, r.model, r.nodeid))
        declined: dict[tuple[str, str], Record] = {}
        for r in records:
            if r.outcome == "declined":
                declined.setdefault((r.adapter, r.model), r)
        kept = [r for r in records if declined.get((r.adapter, r.model), r) is r]
        return sorted(kept, key=lambda r: (r.adapter, r.model, r.check, r.nodeid))


def provenance(device: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return what was tested on: Python, platform, package versions and the device.

    ``extra`` are the profiles' packages (torch, transformers... for the HF adapter profile).
    """
    packages: dict[str, str | None] = {}
    for name in dict.fromkeys((*PACKAGES, *extra)):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": sys.platform,
            "machine": platform.machine(), "packages": packages, "device": _device(device),
            "commit": _commit()}


def _commit() -> str | None:
    """Return the git commit of the working directory, when it is a checkout."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _device(lane_device: str) -> dict[str, Any]:
    """Return the device the lane's checks actually ran on (CPU when no CUDA device is usable)."""
    info: dict[str, Any] = {"type": "cpu", "name": None}
    if lane_device == "cuda":
        import torch

        if torch.cuda.is_available():
            info = {"type": "cuda", "name": torch.cuda.get_device_name()}
    return info


def write_report(path: Path, lane: str, device: str, adapters: list[dict[str, Any]],
                 records: list[Record], *, not_run: str | None = None,
                 packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the lane results file (sorted keys, no timestamps) and return its content.

    A lane that could not run here (``not_run``: why) is written with status ``not_run`` and
    no records, so it can never be read as evidence.
    """
    payload = {"format_version": FORMAT, "lane": lane, "status": "not_run" if not_run else "ran",
               "reason": not_run, "provenance": provenance(device, packages), "adapters": adapters,
               "records": [] if not_run else [asdict(r) for r in records]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return payload
