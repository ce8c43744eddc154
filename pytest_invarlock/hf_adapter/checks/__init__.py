"""The HF adapter profile's check library: ``check_<behaviour>(adapter, model, ctx)`` functions.

The check type, levels, context and problem lists are the core's
(:mod:`pytest_invarlock.checking`), re-exported here for the check modules. ``MODULES`` lists
the check modules in the order their checks run and are reported.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_invarlock.checking import (
    LEVELS,
    MUST,
    SHOULD,
    SHOWN,
    Check,
    CheckContext,
    Problems,
    check,
    level_of,
    mutates,
    summarize,
)

__all__ = ["LEVELS", "MODULES", "MUST", "SHOULD", "SHOWN", "Check", "CheckContext", "Problems",
           "all_checks", "check", "discard_snapshot", "fresh_instance", "level_of",
           "module_checks", "mutates", "summarize"]

#: Check modules, in the order their checks run and are reported.
MODULES: tuple[str, ...] = ("loading", "claims", "describe", "quantized", "tying", "roundtrip",
                            "values", "preservation", "chunked", "rejection")


def module_checks(module_name: str) -> list[Check[Any]]:
    """Return the checks of one module of this package, in definition order."""
    module = importlib.import_module(f"{__name__}.{module_name}")
    return list(module.CHECKS)


def all_checks() -> list[Check[Any]]:
    """Return every check of every module in ``MODULES``."""
    return [c for name in MODULES for c in module_checks(name)]


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
