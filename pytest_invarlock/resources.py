"""Locate the project's data (contracts, fixture catalog, conformance modules) installed or not."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent


def data_path(*parts: str) -> Path:
    """Return the path of a data file: inside the wheel (``_data``) or in the source checkout."""
    shipped = _PACKAGE.joinpath("_data", *parts)
    return shipped if shipped.exists() else _PACKAGE.parent.joinpath(*parts)


@cache
def load_json(*parts: str) -> Any:
    """Return a data file parsed as JSON (cached: these files never change during a run)."""
    return json.loads(data_path(*parts).read_text(encoding="utf-8"))


def schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema ``contracts/schemas/<name>.schema.json``."""
    found: dict[str, Any] = load_json("contracts", "schemas", f"{name}.schema.json")
    return found


@cache
def _validator(name: str) -> Any:
    """Return a validator for schema ``name`` that resolves references to our other schemas."""
    import jsonschema
    from referencing import Registry, Resource

    schemas = [schema(p.name.removesuffix(".schema.json"))
               for p in sorted(data_path("contracts", "schemas").glob("*.schema.json"))]
    registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas)
    return jsonschema.Draft202012Validator(schema(name), registry=registry)


def validate(instance: object, name: str) -> list[str]:
    """Return readable JSON Schema errors of ``instance`` against schema ``name`` (none = valid)."""
    validator = _validator(name)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
