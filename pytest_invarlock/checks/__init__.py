"""The check library: pure functions ``check_<behaviour>(adapter, model, ctx)``.

A check raises :class:`~pytest_invarlock.errors.CheckFailed` with a message naming the key at fault
and the fix, raises :class:`~pytest_invarlock.errors.CheckNotApplicable` when it does not apply,
and returns ``None`` when the adapter conforms. Checks never load the model under test, write
reports or read the command line. A new adapter protocol is a new module listed in ``MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

Check = Callable[[Any, Any, "CheckContext"], None]
F = TypeVar("F", bound=Callable[..., None])

#: Check modules, in the order their checks run and are reported.
MODULES: tuple[str, ...] = ("loading", "claims", "describe", "tying", "roundtrip", "rejection")


@dataclass(frozen=True)
class CheckContext:
    """What a check may know besides the adapter and the model."""

    adapter_name: str
    model_label: str
    model_path: str | None = None
    device: str = "cpu"
    workdir: Path = field(default_factory=Path.cwd)
    #: Reference adapters owe more than third-party ones (e.g. ``gqa_config`` for GQA models).
    reference: bool = False


def check(*, mutates: bool = False) -> Callable[[F], F]:
    """Mark a function as a check; ``mutates`` says it changes the model (the runner resets it)."""

    def mark(func: F) -> F:
        func.mutates = mutates  # type: ignore[attr-defined]
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
