"""Checks of ``can_handle`` and ``load_model``: recognition, dtype, and refusing remote code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_invarlock.checks import CheckContext, check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable

ALLOW_ENV = "INVARLOCK_ALLOW_REMOTE_CODE"
MARKER_ENV = "INVARLOCK_REMOTE_CODE_MARKER"


@check()
def check_can_handle_own_model(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """can_handle() is True for a model the adapter itself loaded."""
    if adapter.can_handle(model) is not True:
        raise CheckFailed(f"can_handle({type(model).__name__}) is not True for a model this "
                          "adapter loaded; accept the model classes and model_types load_model "
                          "returns")


@check()
def check_can_handle_rejects_foreign_module(adapter: Any, model: nn.Module,
                                            ctx: CheckContext) -> None:
    """can_handle() is False (and does not raise) for modules that are no language model."""
    for foreign in (nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())):
        try:
            answer = adapter.can_handle(foreign)
        except Exception as exc:
            raise CheckFailed(f"can_handle({type(foreign).__name__}) raised {exc!r}; return False "
                              "for modules the adapter does not understand") from None
        if answer is not False:
            raise CheckFailed(f"can_handle({type(foreign).__name__}) is {answer!r}; return False "
                              "for modules without a transformers config of a supported family")


def _load(adapter: Any, ctx: CheckContext, path: str | Path, **kwargs: Any) -> nn.Module:
    if not hasattr(adapter, "load_model"):
        raise CheckNotApplicable("adapter has no load_model()")
    return adapter.load_model(str(path), device=ctx.device, **kwargs)


@check()
def check_load_model_honours_dtype(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """load_model(path, dtype=...) returns a model whose floating parameters have that dtype."""
    if ctx.model_path is None:
        raise CheckNotApplicable("the model was not loaded from a path")
    current = next(model.parameters()).dtype
    want = torch.bfloat16 if current != torch.bfloat16 else torch.float16
    loaded = _load(adapter, ctx, ctx.model_path, dtype=want)
    wrong = [(n, p.dtype) for n, p in loaded.named_parameters()
             if p.is_floating_point() and p.dtype != want]
    if wrong:
        name, dtype = wrong[0]
        raise CheckFailed(f"load_model(..., dtype={want}) left {len(wrong)} parameters in another "
                          f"dtype, e.g. {name!r} is {dtype}; pass dtype through to "
                          "from_pretrained and do not cast afterwards")


@check()
def check_load_model_refuses_remote_code(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """load_model refuses trust_remote_code without INVARLOCK_ALLOW_REMOTE_CODE=1 and runs no code."""
    from pytest_invarlock.fixtures import probe_path

    probe = probe_path("remote-code")
    saved = {k: os.environ.get(k) for k in (ALLOW_ENV, MARKER_ENV)}
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "executed"
        os.environ.pop(ALLOW_ENV, None)
        os.environ[MARKER_ENV] = str(marker)
        try:
            for kwargs in ({"trust_remote_code": True}, {}):
                _expect_refusal(adapter, ctx, probe, kwargs, marker)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _expect_refusal(adapter: Any, ctx: CheckContext, probe: Path, kwargs: dict[str, Any],
                    marker: Path) -> None:
    call = f"load_model({probe.name!r}, {', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        _load(adapter, ctx, probe, **kwargs)
    except CheckNotApplicable:
        raise
    except Exception:
        pass
    else:
        raise CheckFailed(f"{call} loaded a checkpoint whose model code ships with it, without "
                          f"{ALLOW_ENV}=1; refuse trust_remote_code unless the caller opts in")
    if marker.exists():
        raise CheckFailed(f"{call} executed the checkpoint's own Python code ({marker.read_text()!r}"
                          f"); pass trust_remote_code=False to from_pretrained unless "
                          f"{ALLOW_ENV}=1")


CHECKS = (
    check_can_handle_own_model,
    check_can_handle_rejects_foreign_module,
    check_load_model_honours_dtype,
    check_load_model_refuses_remote_code,
)
