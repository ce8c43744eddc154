"""Capability claims (adapter-capabilities-v1): what an adapter says it can do, as data.

An adapter declares ``capabilities`` (a dict of the fields below); the suite derives what to test
from the claim. Adapters that declare nothing are held to the strictest claim (``full``).
"""

from __future__ import annotations

from typing import Any

from pytest_invarlock.resources import load_json, validate

FORMAT = "adapter-capabilities-v1"
FIELDS = ("snapshot_restore", "guard_coverage", "platform_support", "runtime_constraints",
          "required_extra", "degraded_modes")
BACKEND_MOVES_DEVICES = "device_movement_managed_by_backend"


def declared(adapter: object) -> dict[str, Any] | None:
    """Return the adapter's declared capabilities, or None when it declares none."""
    claims = getattr(adapter, "capabilities", None)
    return dict(claims) if isinstance(claims, dict) else None


def snapshot_claim(adapter: object) -> str:
    """Return the ``snapshot_restore`` claim (``full`` when undeclared: the strictest)."""
    return str((declared(adapter) or {}).get("snapshot_restore", "full"))


def backend_moves_devices(adapter: object) -> bool:
    """Return whether the adapter forbids ``.to()`` on its models (quantized backends)."""
    return BACKEND_MOVES_DEVICES in (declared(adapter) or {}).get("runtime_constraints", [])


def forbids_moves(adapter: object, model: Any) -> bool:
    """Return whether the suite must not move or cast ``model``: claimed, or a quantized model.

    A quantized model is placed by its backend whatever the adapter declares: bitsandbytes,
    quanto and GPTQ refuse ``.to(dtype)``, torchao and HQQ corrupt silently; moving it to test
    something else would judge the backend, not the adapter.
    """
    from pytest_invarlock.hf_adapter.checks.quantized import is_quantized_model

    return backend_moves_devices(adapter) or is_quantized_model(model)


def problems(claims: dict[str, Any]) -> list[str]:
    """Return schema errors of one adapter's claims (``adapter`` key optional)."""
    entry = {"adapter": "-", **claims}
    return validate({"format_version": FORMAT, "adapters": [entry]}, "adapter_capabilities")


def contract() -> dict[str, dict[str, Any]]:
    """Return the committed contracts/adapter_capabilities.json entries by adapter name."""
    return {e["adapter"]: {k: e[k] for k in FIELDS}
            for e in load_json("contracts", "adapter_capabilities.json")["adapters"]}
