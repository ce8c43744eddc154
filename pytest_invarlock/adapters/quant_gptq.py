"""Pre-quantized GPTQ and AWQ causal LMs (spec 001): ``hf_gptq`` and ``hf_awq``, backed by gptqmodel.

transformers loads both through gptqmodel (GPTQ also through ``optimum.gptq``); on a CPU the
linears become gptqmodel's ``TorchAtenLinear`` / ``TorchAtenAwqLinear``. Neither quantizes a
full-precision checkpoint here: the checkpoints are made beforehand (for the tests, by
:mod:`pytest_invarlock.hf_adapter.gptq_build`). What shapes the adapters, measured with
gptqmodel 7.6.0 and transformers 5.24 (see also ``research/quantized-backends-cpu.md``):

- the quantized weights are *buffers* (``qweight``, ``qzeros``, ``scales``, ``g_idx``) with no
  ``.weight``: the logical structure comes from ``in_features``/``out_features``
  (:func:`pytest_invarlock.adapters.quantized.logical_params`);
- the first forward in eval mode without gradients repacks ``qweight`` (int32 -> uint8 int4pack),
  turns ``qzeros``/``scales`` into bfloat16 offsets and scales, and creates the unregistered
  caches ``scales_and_zeros`` (and GPTQ's ``ret_idx``) that every later forward reads; a first
  forward *with* gradients instead locks the layer into a dequantizing path for good, whose
  logits differ (by 0.0021 on llama-gqa GPTQ, 0.0018 AWQ). :meth:`load_model` therefore runs one
  no-grad forward, so every model it returns is already in the layout it keeps, whatever the
  caller runs first: a snapshot is the same before and after any later forward;
- a model loaded elsewhere and not run yet has other leaves (int32 ``qweight``, no caches): a
  snapshot of it does not fit the model after its first forward, and the reverse, and restore
  refuses both with :class:`~pytest_invarlock.adapters.quantized.SnapshotError`, naming the
  repack.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import nn

from pytest_invarlock.adapters.quantized import (
    HFQuantizedAdapter,
    SnapshotError,
    restore_leaves,
    restore_leaves_chunked,
)

#: the unregistered cache gptqmodel's CPU kernels create on the first forward (leaves.py names it)
REPACKED = ".scales_and_zeros"


class HFGptqmodelAdapter(HFQuantizedAdapter):
    """A pre-quantized checkpoint loaded through transformers and gptqmodel (GPTQ or AWQ)."""

    backend_module: ClassVar[str] = "gptqmodel"
    runtime: ClassVar[bool] = False
    #: modules besides ``backend_module`` that transformers needs to load this method
    also_needs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable(cls) -> str | None:
        """Return why the adapter cannot load anything here (gptqmodel, or optimum, is missing)."""
        import importlib.util

        missing = super().unavailable()
        if missing:
            return missing
        for module in cls.also_needs:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # ``optimum`` absent, or only optimum-quanto's namespace
                found = False
            if not found:
                return f"{cls.name} needs {module}: pip install 'pytest-invarlock[{cls.extra}]'"
        return None

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load the checkpoint, then run one no-grad forward so its kernels take their final layout.

        See the module docstring: without it, the leaves change on the caller's first forward
        and the kernel path depends on whether that forward tracked gradients.
        """
        model = super().load_model(model_id, device, **hf_kwargs)
        settle(model)
        return model

    def restore(self, model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
        """Write a :meth:`snapshot` back in place, or raise and leave the model untouched.

        A snapshot from the other side of the first forward's repack is refused, saying so.
        """
        data = bytes(blob)
        try:
            restore_leaves(model, data)
        except SnapshotError as exc:
            raise _stale(exc, _blob_names(data), model) from None

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        """Check every file of a chunked snapshot, then restore in place (refusals as restore)."""
        try:
            restore_leaves_chunked(model, path)
        except SnapshotError as exc:
            raise _stale(exc, _manifest_names(path), model) from None

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return the checkpoint's ``quantization_config`` bits and group size."""
        quant = getattr(model.config, "quantization_config", None)

        def get(key: str) -> Any:
            return quant.get(key) if isinstance(quant, dict) else getattr(quant, key, None)

        return {"bits": get("bits"), "group_size": get("group_size")}


def settle(model: nn.Module) -> None:
    """Run one token through ``model`` without gradients, in eval mode, on its own device."""
    config: Any = getattr(model, "config", None)
    token = getattr(config, "bos_token_id", None)
    token = token if isinstance(token, int) else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[token]], device=device))
    finally:
        model.train(was_training)


def _stale(exc: SnapshotError, names: list[str], model: nn.Module) -> SnapshotError:
    """Return ``exc``, or a refusal naming the repack when snapshot and model straddle it."""
    from pytest_invarlock.hf_adapter import leaves

    taken = any(n.endswith(REPACKED) for n in names)
    now = any(n.endswith(REPACKED) for n in leaves.leaves(model))
    if not names or taken == now:
        return exc
    when = ("after the first forward, and the model has not run one" if taken else
            "before the first forward, and the model has run one since")
    return SnapshotError(f"the snapshot was taken {when}: gptqmodel's CPU kernels repack the "
                         "weights then (qweight int32 -> uint8, new caches scales_and_zeros); "
                         "models from load_model are repacked at load, so their snapshots always "
                         f"fit; {exc}")


def _blob_names(blob: bytes) -> list[str]:
    """Return the tensor names a safetensors blob holds (empty when it is unreadable)."""
    import json

    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + size])
    except (ValueError, UnicodeDecodeError):
        return []
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


def _manifest_names(path: str | os.PathLike[str]) -> list[str]:
    """Return the tensor names a chunked snapshot's manifest lists (empty when unreadable)."""
    import json

    try:
        with open(os.path.join(os.fspath(path), "manifest.json"), encoding="utf-8") as handle:
            files = json.load(handle)["files"]
        return [str(n) for entry in files for n in entry["tensors"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


class HFGPTQAdapter(HFGptqmodelAdapter):
    """GPTQ checkpoints (``quant_method: gptq``); transformers loads them through optimum.gptq."""

    name: ClassVar[str] = "hf_gptq"
    quant_method: ClassVar[str] = "gptq"
    extra: ClassVar[str] = "gptq"
    also_needs: ClassVar[tuple[str, ...]] = ("optimum.gptq",)


class HFAWQAdapter(HFGptqmodelAdapter):
    """AWQ checkpoints (``quant_method: awq``, GEMM format); transformers loads them through gptqmodel."""

    name: ClassVar[str] = "hf_awq"
    quant_method: ClassVar[str] = "awq"
    extra: ClassVar[str] = "awq"
