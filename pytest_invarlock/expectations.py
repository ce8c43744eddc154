"""The expected-failures manifest: known failures, with reasons, applied as xfail."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_invarlock.resources import validate


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Expected:
    """One manifest entry: (adapter, check[, model][, lane]) is known to fail, because reason."""

    adapter: str
    check: str
    reason: str
    model: str | None = None
    lane: str | None = None
    strict: bool = False

    def matches(self, adapter: str, model: str, check: str, lane: str) -> bool:
        """Return whether this entry covers one test."""
        return (self.adapter, self.check) == (adapter, check) and self.model in (None, model) \
            and self.lane in (None, lane)

    def describe(self) -> str:
        """Return the entry as the manifest would spell it."""
        scope = "".join(f", {k}={v!r}" for k, v in (("model", self.model), ("lane", self.lane)) if v)
        return f"adapter={self.adapter!r}, check={self.check!r}{scope}"


def load(path: str | Path) -> list[Expected]:
    """Read and validate a manifest file."""
    try:
        payload: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"--invarlock-xfail={path}: cannot read it as JSON ({exc})") from None
    errors = validate(payload, "expected_failures")
    if errors:
        raise ManifestError(f"--invarlock-xfail={path}: {'; '.join(errors[:3])} (see "
                            "contracts/schemas/expected_failures.schema.json)")
    return [Expected(**entry) for entry in payload["expected_failures"]]


def canonical(path: str | Path, entries: list[Expected],
              adapters: dict[str, str]) -> list[Expected]:
    """Return the entries with adapter names as records spell them; unknown names are errors.

    ``adapters`` maps every name this run knows (plain, ``DIST:NAME``, ``module:Class``) to
    its label. A misspelt check or adapter would otherwise only show as a stale entry while
    the failure it meant to excuse fails the run.
    """
    from pytest_invarlock.profile import all_checks

    checks = sorted(c.__name__ for c in all_checks())
    problems = []
    for i, entry in enumerate(entries):
        if entry.check not in checks:
            problems.append(f"entry {i}: unknown check {entry.check!r}{_did_you_mean(entry.check, checks)}")
        if entry.adapter not in adapters:
            problems.append(f"entry {i}: unknown adapter {entry.adapter!r}"
                            f"{_did_you_mean(entry.adapter, sorted(adapters))}")
    if problems:
        raise ManifestError(f"--invarlock-xfail={path}: {'; '.join(problems)}")
    return [replace(e, adapter=adapters[e.adapter]) for e in entries]


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else (
        f" (known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''})")


def find(entries: list[Expected], adapter: str, model: str, check: str,
         lane: str) -> Expected | None:
    """Return the first entry covering a test."""
    return next((e for e in entries if e.matches(adapter, model, check, lane)), None)


def stale(entries: list[Expected], seen: list[tuple[str, str, str]], lane: str) -> list[Expected]:
    """Return the entries of this lane that matched none of the (adapter, model, check) run."""
    return [e for e in entries if e.lane in (None, lane)
            and not any(e.matches(a, m, c, lane) for a, m, c in seen)]
