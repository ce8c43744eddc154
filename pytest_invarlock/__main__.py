"""``python -m pytest_invarlock``: run the shipped conformance suite, or list adapters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pytest_invarlock.resources import data_path

LISTING_FORMAT = "invarlock-adapter-listing-v1"


def run(pytest_args: list[str]) -> int:
    """Run the conformance modules shipped with this package, passing pytest arguments through."""
    import pytest

    return int(pytest.main([str(data_path("conformance")), *pytest_args]))


def listing() -> dict[str, Any]:
    """Return every discovered adapter with its origin, readiness and capability claims.

    ``name`` is the selector: the plain name, or ``DIST:NAME`` when several distributions
    register that name.
    """
    from pytest_invarlock.hf_adapter import capabilities
    from pytest_invarlock.registry import AdapterError, discover

    found = discover()
    items = []
    for name, spec in sorted(found.adapters.items()):
        item: dict[str, Any] = {"name": name, "module": spec.target.partition(":")[0],
                                "entry_point": spec.target, "origin": spec.origin,
                                "distribution": spec.distribution, "version": spec.version}
        try:
            if name in found.problems:
                raise AdapterError(found.problems[name])
            adapter = spec.instantiate()
            item.update(status="ready", backend="transformers" if spec.origin == "builtin"
                        else None, capabilities=capabilities.declared(adapter), problem=None)
        except AdapterError as exc:
            item.update(status=_status(exc, spec.target), backend=None, capabilities=None,
                        problem=str(exc))
        items.append(item)
    return {"format_version": LISTING_FORMAT, "adapters": items}


def _status(exc: Exception, target: str) -> str:
    """Return ``needs_extra`` when a dependency of the adapter's module is missing."""
    missing = exc.__cause__
    own = target.partition(":")[0].partition(".")[0]
    if isinstance(missing, ModuleNotFoundError) and missing.name and (
            missing.name.partition(".")[0] != own):
        return "needs_extra"
    return "unsupported"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``run`` and ``adapters``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["run"]:
        return run(args[1:])
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the conformance suite (pytest arguments follow)")
    adapters = sub.add_parser("adapters", help="list discovered adapters and their readiness")
    adapters.add_argument("--json", action="store_true", help="print the listing as JSON")
    parsed = parser.parse_args(args)
    data = listing()
    if parsed.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    width = max([16, *(len(item["name"]) + 1 for item in data["adapters"])])
    for item in data["adapters"]:
        claim = (item["capabilities"] or {}).get("snapshot_restore", "-")
        print(f"{item['name']:{width}} {item['status']:12} {item['origin']:12} snapshot={claim:12} "
              f"{item['entry_point']}" + (f"\n    {item['problem']}" if item["problem"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
