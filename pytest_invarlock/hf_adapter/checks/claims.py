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


#: nn.Module methods that move or cast a whole model
_MOVES = ("to", "cuda", "cpu", "half", "float", "bfloat16", "double")
#: packages whose calls are the framework's or the backend's placing, not the adapter's moves
_LIBRARIES = frozenset({"torch", "transformers", "accelerate", "safetensors", "huggingface_hub",
                        "bitsandbytes", "torchao", "optimum", "hqq", "compressed_tensors",
                        "gptqmodel", "peft"})


def _model_bases() -> list[type]:
    """Return transformers' model base class when loaded: it overrides .to(), .half() and more."""
    import sys

    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    return [base] if isinstance(base, type) else []


def _moves_during_load(adapter: Any, ctx: CheckContext) -> list[str]:
    """Return the moves and casts load_model() made on the model it returned or its modules.

    Spied class-wide while load_model runs; a call made from torch, transformers, accelerate
    or a quantization backend is theirs (hqq moves the modules it keeps), any other is the
    adapter's.
    """
    seen: list[tuple[nn.Module, str]] = []
    owners = [nn.Module, *_model_bases()]
    originals = {(owner, name): vars(owner)[name] for owner in owners for name in _MOVES
                 if name in vars(owner)}

    def spy(original: Any, name: str) -> Any:
        def watched(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            import sys

            caller = str(sys._getframe(1).f_globals.get("__name__", ""))
            if caller.partition(".")[0] not in _LIBRARIES:  # the adapter's own call
                shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
                seen.append((self, f".{name}({', '.join(shown)})"))
            return original(self, *args, **kwargs)
        return watched

    for (owner, name), original in originals.items():
        setattr(owner, name, spy(original, name))
    try:
        loaded = adapter.load_model(ctx.model_path, device=ctx.device)
    except Exception:
        return []  # other checks judge a load that fails; this one only watches moves
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
    inside = {id(m): path or "model" for path, m in loaded.named_modules()} if isinstance(
        loaded, nn.Module) else {}
    return [f"{inside[id(receiver)]}{call}" for receiver, call in seen if id(receiver) in inside]


@check(mutates=True, why="moving a backend-placed (quantized, sharded) model breaks it")
def check_backend_device_movement_is_respected(adapter: Any, model: nn.Module,
                                                ctx: CheckContext) -> None:
    """An adapter that claims device_movement_managed_by_backend never moves its model (load included)."""
    if not capabilities.backend_moves_devices(adapter):
        raise CheckNotApplicable(f"the adapter does not claim "
                                 f"{capabilities.BACKEND_MOVES_DEVICES}")
    problems = Problems()
    if ctx.model_path is not None and hasattr(adapter, "load_model"):
        moved = _moves_during_load(adapter, ctx)
        if moved:
            problems.add(f"load_model() called {moved[0]} on the model it returned")
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
