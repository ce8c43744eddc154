"""The compressed-tensors reference adapter (``hf_ct``): pre-quantized checkpoints only.

compressed-tensors has no CPU kernels for its packed formats, and quantizing is llmcompressor's
job, not transformers': this adapter loads checkpoints that already carry a compressed-tensors
``quantization_config`` (``hf_adapter/ct_build.py`` makes tiny ones offline) and declines every
other, from the config alone.

The trap it settles (research ``quantized-backends-cpu.md``, trap X1): transformers loads such a
checkpoint *compressed* (per quantized linear ``weight_packed`` int32, ``weight_scale``,
``weight_shape``, no ``weight``) and a forward pre-hook decompresses the whole model in place on
the first forward (``weight`` appears, ``weight_packed`` disappears). A snapshot taken before
that forward cannot describe the model after it. Two more effects of that hook, measured with
transformers 5.24 and compressed-tensors 0.20 on the CPU: it first converts the model to
compressed-tensors offloading, which replaces every module's ``_parameters`` and ``_buffers``
with an ``OffloadCache`` (assigning a new Parameter then *copies into the old tensor* instead
of rebinding it, so an untied head cannot be untied) and wraps every ``forward``.

:meth:`HFCTAdapter.load_model` therefore decompresses at load, with compressed-tensors' own
``decompress_module`` (the function the hook runs, so the weights and logits are bit-identical
to those after a first forward) and removes the hook; on a model placed on one device it skips
the offloading conversion, which only serves models accelerate offloads. Its models then never
change on a forward, and snapshots are exact whichever comes first. A snapshot of a model still
compressed (loaded elsewhere) is refused, with the reason, once the model has decompressed.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from torch import nn

from pytest_invarlock.adapters import quantization
from pytest_invarlock.adapters.base import guard_remote_code, local_only, resolve_device
from pytest_invarlock.adapters.quantized import HFQuantizedAdapter, SnapshotError, restore_leaves

METHOD = "compressed-tensors"


class HFCTAdapter(HFQuantizedAdapter):
    """A causal LM from a compressed-tensors checkpoint, decompressed in place at load."""

    name: ClassVar[str] = "hf_ct"
    quant_method: ClassVar[str] = METHOD
    backend_module: ClassVar[str] = "compressed_tensors"
    extra: ClassVar[str] = "ct"
    runtime: ClassVar[bool] = False

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Decline a checkpoint whose config has no compressed-tensors ``quantization_config``.

        Read from the config (a dict in ``config.json``), never by building a config class
        (trap X9: those raise ImportError when the backend is missing).
        """
        method = config_method(getattr(config, "quantization_config", None))
        if method != METHOD:
            found = "no quantization_config" if method is None else f"quant_method {method!r}"
            return (f"{cls.name} loads only pre-quantized compressed-tensors checkpoints; this "
                    f"config has {found} (pytest_invarlock.hf_adapter.ct_build.build_ct makes one "
                    "from a full-precision checkpoint)")
        return super().declines_config(config)

    def quantization_config(self) -> Any:
        """Refuse: this adapter quantizes nothing itself (llmcompressor's job, not a load's)."""
        raise TypeError(f"{self.name} loads pre-quantized compressed-tensors checkpoints only; "
                        "it has no quantization config to apply to a full-precision one")

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load a compressed-tensors checkpoint as it is, then decompress it in place (see above).

        No quantization config of its own is passed: the checkpoint's is the only one.
        """
        import transformers

        missing = self.unavailable()
        if missing:
            raise ImportError(missing)
        guard_remote_code(str(model_id), hf_kwargs)
        method = quantization.checkpoint_method(model_id)
        if os.path.isdir(str(model_id)) and method != METHOD:
            raise ValueError(f"{model_id} is not a compressed-tensors checkpoint: its config.json "
                             f"has quant_method {method!r}; {self.name} loads pre-quantized "
                             "checkpoints only")
        if hf_kwargs.get("device_map") is None:
            hf_kwargs["device_map"] = {"": str(resolve_device(device))}
        model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_id), **local_only(model_id, hf_kwargs))
        if not self.can_handle(model):
            raise ValueError(f"{model_id} did not load as a compressed-tensors model (its config "
                             f"has quant_method "
                             f"{config_method(getattr(model.config, 'quantization_config', None))!r})")
        settle(model)
        return model.eval()

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return the weights' bits and group size from the checkpoint's config_groups.

        One value each when every group agrees (the sorted bit widths of a mixed scheme; None
        for a group size when quantized per channel); every group's own settings are listed
        under ``config_groups``.
        """
        groups = config_groups(getattr(model.config, "quantization_config", None))
        bits = {g["bits"] for g in groups.values()}
        sizes = {g["group_size"] for g in groups.values()}
        return {"bits": bits.pop() if len(bits) == 1 else sorted(bits),
                "group_size": sizes.pop() if len(sizes) == 1 else None,
                "config_groups": groups}

    def restore(self, model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
        """Write a :meth:`snapshot` back in place, or raise and leave the model untouched.

        A snapshot of the compressed model does not fit it once decompressed: refused, saying so.
        """
        data = bytes(blob)
        try:
            restore_leaves(model, data)
        except SnapshotError as exc:
            if _packed_names(data) and not _packed_names(model):
                raise SnapshotError(
                    "the snapshot holds compressed weights (weight_packed) and the model has "
                    "been decompressed since: compressed-tensors decompresses in place on the "
                    f"first forward ({self.name}.load_model does it at load, so that snapshots "
                    f"of its models never go stale); {exc}") from None
            raise


def config_method(quant: Any) -> str | None:
    """Return the ``quant_method`` of a quantization config (a dict or a config object)."""
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(
        quant, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def config_groups(quant: Any) -> dict[str, dict[str, Any]]:
    """Return each config group's weight bits, group size, strategy and targets."""
    if quant is not None and not isinstance(quant, dict):
        quant = quant.to_dict()
    out: dict[str, dict[str, Any]] = {}
    for name, group in sorted(((quant or {}).get("config_groups") or {}).items()):
        weights = group.get("weights") or {}
        strategy = weights.get("strategy")
        strategy = None if strategy is None else str(getattr(strategy, "value", strategy))
        out[str(name)] = {"bits": weights.get("num_bits"),
                          "group_size": weights.get("group_size") if strategy == "group" else None,
                          "strategy": strategy, "targets": list(group.get("targets") or [])}
    return out


def settle(model: nn.Module) -> None:
    """Decompress a compressed model in place now, as its first forward would, and drop the hook.

    ``decompress_module`` is what ``ModelCompressor.decompress_model`` (the hook) runs per
    module; the hook first converts the model to compressed-tensors offloading, which only a
    model accelerate offloads needs, so that conversion (and the library's own path) is kept
    for those alone.
    """
    hook = getattr(model, "ct_decompress_hook", None)
    if hook is None:
        return  # never compressed, or already decompressed
    compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
    if compressor is not None and any(hasattr(m, "_hf_hook") for m in model.modules()):
        compressor.decompress_model(model)  # offloaded by accelerate: the library's own path
        return
    from compressed_tensors.compressors.base import decompress_module
    from compressed_tensors.quantization import QuantizationStatus

    for module in model.modules():
        if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
            decompress_module(module)
    if compressor is not None and compressor.quantization_config is not None:
        compressor.quantization_config.quantization_status = QuantizationStatus.DECOMPRESSED
    hook.remove()
    del model.ct_decompress_hook


def _packed_names(source: nn.Module | bytes) -> list[str]:
    """Return the ``weight_packed`` names of a model, or of a leaf snapshot's header."""
    if isinstance(source, nn.Module):
        names = [n for n, _ in source.named_parameters()]
    else:
        try:
            size = int.from_bytes(source[:8], "little")
            names = list(json.loads(source[8:8 + size]))
        except (ValueError, UnicodeDecodeError):
            return []
    return [n for n in names if n.endswith(".weight_packed")]
