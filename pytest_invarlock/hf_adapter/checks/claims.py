"""Checks of capability claims (adapter-capabilities-v1): declared validly, and kept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import capabilities
from pytest_invarlock.hf_adapter.checks import CheckContext, Problems, check, summarize

CONTRACT = "contracts/adapter_capabilities.json"


@check(why="the suite derives what it demands from the claims; an invalid claim cannot be judged")
def check_capabilities_are_valid(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """The adapter's declared capabilities match the adapter-capabilities-v1 schema."""
    claims = capabilities.declared(adapter)
    if claims is None:
        if ctx.reference:
            raise CheckFailed(f"reference adapter {ctx.adapter_name!r} declares no capabilities; "
                              f"add its entry to {CONTRACT}")
        raise CheckNotApplicable("the adapter declares no capabilities, so it is held to "
                                 "snapshot_restore='full' (declare `capabilities` to say otherwise)")
    errors = capabilities.problems(claims)
    if errors:
        raise CheckFailed(f"capabilities do not match the adapter-capabilities-v1 schema: "
                          f"{summarize(errors)}. Declare {', '.join(capabilities.FIELDS)}")


class _Moved(Exception):
    pass


@contextmanager
def _forbid_moves(model: nn.Module) -> Iterator[list[str]]:
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def moved(*args: Any, **kwargs: Any) -> nn.Module:
            calls.append(f"model.{name}({', '.join(map(repr, args))})")
            raise _Moved(calls[-1])
        return moved

    for name in ("to", "cuda", "cpu"):
        setattr(model, name, refuse(name))
    try:
        yield calls
    finally:
        for name in ("to", "cuda", "cpu"):
            delattr(model, name)


@check(mutates=True, why="moving a backend-placed (quantized, sharded) model breaks it")
def check_backend_device_movement_is_respected(adapter: Any, model: nn.Module,
                                                ctx: CheckContext) -> None:
    """An adapter that claims device_movement_managed_by_backend never calls .to()/.cuda()/.cpu()."""
    if not capabilities.backend_moves_devices(adapter):
        raise CheckNotApplicable(f"the adapter does not claim "
                                 f"{capabilities.BACKEND_MOVES_DEVICES}")
    problems = Problems()
    with _forbid_moves(model) as calls:
        for step in ("describe", "snapshot", "restore"):
            calls.clear()
            try:
                if step == "restore":
                    adapter.restore(model, adapter.snapshot(model))
                else:
                    getattr(adapter, step)(model)
            except _Moved:
                pass
            except Exception:
                continue  # other checks judge a call that fails; this one only watches moves
            if calls:
                problems.add(f"{step}() called {calls[0]}")
    problems.raise_if_any(f"The adapter claims {capabilities.BACKEND_MOVES_DEVICES}: let the "
                          "backend place the model (device_map) and never move it")


CHECKS = (
    check_capabilities_are_valid,
    check_backend_device_movement_is_respected,
)
