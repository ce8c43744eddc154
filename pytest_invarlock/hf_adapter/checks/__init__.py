"""The check library: pure functions ``check_<behaviour>(adapter, model, ctx)``.

A check raises :class:`~pytest_invarlock.errors.CheckFailed` with a message naming the key at fault
and the fix, raises :class:`~pytest_invarlock.errors.CheckNotApplicable` when it does not apply,
and returns ``None`` when the adapter conforms. Checks never load the model under test, write
reports or read the command line. A new adapter protocol is a new module listed in ``MODULES``.

Every check carries a requirement level (RFC 2119): ``MUST`` checks a promise of the adapter
protocol (a failure is a defect), ``SHOULD`` checks hardening beyond it (a failure is a finding,
shown but not failing the run unless ``--invarlock-strict``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_invarlock.errors import CheckFailed

Check = Callable[[Any, Any, "CheckContext"], None]
F = TypeVar("F", bound=Callable[..., None])

MUST = "MUST"
SHOULD = "SHOULD"
LEVELS = (MUST, SHOULD)

#: Check modules, in the order their checks run and are reported.
MODULES: tuple[str, ...] = ("loading", "claims", "describe", "tying", "roundtrip", "values",
                            "preservation", "chunked", "rejection")


@dataclass(frozen=True)
class CheckContext:
    """What a check may know besides the adapter and the model."""

    adapter_name: str
    model_label: str
    model_path: str | None = None
    device: str = "cpu"
    workdir: Path = field(default_factory=Path.cwd)
    #: A reference adapter of this package (it must declare its capabilities in the contract).
    reference: bool = False
    #: How the adapter was selected (``name`` or ``module:Class``): re-creates it elsewhere.
    selector: str | None = None


def check(*, level: str = MUST, mutates: bool = False, why: str = "") -> Callable[[F], F]:
    """Mark a function as a check of ``level``; ``mutates`` says it changes the model.

    ``why`` says why the level is what it is (shown in docs/checks.md).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")

    def mark(func: F) -> F:
        func.mutates = mutates  # type: ignore[attr-defined]
        func.level = level  # type: ignore[attr-defined]
        func.why = why  # type: ignore[attr-defined]
        return func

    return mark


def module_checks(module_name: str) -> list[Check]:
    """Return the checks of one module of this package, in definition order."""
    module = importlib.import_module(f"{__name__}.{module_name}")
    return list(module.CHECKS)


def all_checks() -> list[Check]:
    """Return every check of every module in ``MODULES``."""
    return [c for name in MODULES for c in module_checks(name)]


def mutates(func: Check) -> bool:
    """Return whether ``func`` changes the model it is given."""
    return bool(getattr(func, "mutates", False))


def level_of(func: Check) -> str:
    """Return the requirement level of ``func`` (``MUST`` unless declared otherwise)."""
    return str(getattr(func, "level", MUST))


#: How many problems one failure message lists before it says "and N more".
SHOWN = 8


def summarize(problems: Iterable[str], limit: int = SHOWN, sep: str = "; ") -> str:
    """Join problems into one readable paragraph: the first ``limit``, then how many more."""
    items = list(problems)
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


class Problems:
    """Collect every problem a check finds, so one defect never hides another.

    ``add`` records a problem; ``raise_if_any`` fails the check with all of them (counted, the
    first :data:`SHOWN` listed) followed by the fix.
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, problem: str) -> None:
        """Record one problem (a sentence naming the object at fault)."""
        self.items.append(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, fix: str = "") -> None:
        """Raise :class:`CheckFailed` listing every problem, then ``fix``; do nothing if none."""
        if not self.items:
            return
        lead = "" if len(self.items) == 1 else f"{len(self.items)} problems: "
        tail = f". {fix}" if fix else ""
        raise CheckFailed(f"{lead}{summarize(self.items)}{tail}")


def discard_snapshot(path: str | os.PathLike[str]) -> None:
    """Remove a chunked snapshot directory an adapter returned, and never anything else.

    Only a directory strictly inside the temporary directory (where snapshot_chunked() makes
    its snapshots) that holds neither the working nor the home directory is removed, so an
    adapter that returns its store's root, ``"."`` or the temporary directory itself loses
    nothing to the suite's clean-up.
    """
    target = Path(path).resolve()
    temp = Path(tempfile.gettempdir()).resolve()
    protected = (Path.cwd().resolve(), Path.home().resolve())
    if (target.is_dir() and temp in target.parents
            and not any(p == target or target in p.parents for p in protected)):
        shutil.rmtree(target, ignore_errors=True)


def fresh_instance(adapter: Any) -> Any:
    """Return a new ``type(adapter)()``, or None for an adapter configured by arguments.

    Frameworks create one adapter per model; an adapter may keep per-model state (a chosen
    delegate), so a model other than the subject's is given to a new instance.
    """
    try:
        return type(adapter)()
    except TypeError:
        return None
