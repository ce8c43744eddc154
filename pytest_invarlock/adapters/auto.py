"""``hf_auto``: pick the concrete adapter for a checkpoint or model, then delegate everything to it.

Selection follows spec 000/001: a quantized checkpoint first (``quantization_config.quant_method``,
then ``load_in_8bit``/``load_in_4bit``, then model attributes, then module types), then the role
from ``model_type`` / ``architectures`` / ``is_encoder_decoder``; name heuristics only for remote
ids, defaulting to ``hf_causal``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from pytest_invarlock.adapters import roles
from pytest_invarlock.adapters.quantization import (
    QUANT_CONFIG_CLASSES,
    QUANT_METHODS,
    QUANT_MODULES,
    model_adapter,
    quant_adapter,
)

__all__ = ["QUANT_ADAPTERS", "QUANT_CONFIG_CLASSES", "QUANT_METHODS", "QUANT_MODULES",
           "ROLE_ADAPTERS", "AdapterUnavailable", "HFAutoAdapter", "concrete", "quant_adapter",
           "role_adapter", "select_for_config", "select_for_id", "select_for_model"]

#: quantized adapter -> its class, imported only when selected (the backend may be absent).
QUANT_ADAPTERS: dict[str, str] = {
    "hf_bnb": "pytest_invarlock.adapters.quantized:HFBnbAdapter",
    "hf_torchao": "pytest_invarlock.adapters.quantized:HFTorchAoAdapter",
    "hf_quanto": "pytest_invarlock.adapters.quantized:HFQuantoAdapter",
    "hf_ct": "pytest_invarlock.adapters.quant_ct:HFCTAdapter",
    "hf_hqq": "pytest_invarlock.adapters.quant_hqq:HFHqqAdapter",
    "hf_gptq": "pytest_invarlock.adapters.quant_gptq:HFGPTQAdapter",
    "hf_awq": "pytest_invarlock.adapters.quant_gptq:HFAWQAdapter",
}
ROLE_ADAPTERS: dict[str, type[roles.HFRoleAdapter]] = {
    "hf_causal": roles.HFCausalAdapter, "hf_mlm": roles.HFMLMAdapter,
    "hf_seq2seq": roles.HFSeq2SeqAdapter, "hf_multimodal": roles.HFMultimodalAdapter,
}
_NAME_HINTS = (("hf_mlm", ("bert", "roberta", "electra", "minilm", "mpnet")),
               ("hf_seq2seq", ("t5", "bart", "pegasus", "marian")),
               ("hf_multimodal", ("llava", "-vl", "vision", "paligemma")))


class AdapterUnavailable(LookupError):
    """hf_auto selected an adapter that pytest-invarlock does not provide."""


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def role_adapter(config: Any) -> str:
    """Return the role adapter for a config (a dict from config.json, or a config object)."""
    model_type = str(_get(config, "model_type") or "")
    archs = [str(a) for a in _get(config, "architectures") or []]
    if _get(config, "vision_config") is not None:
        return "hf_multimodal"
    if _get(config, "is_decoder") and not _get(config, "is_encoder_decoder"):
        return "hf_causal"  # a decoder-only variant (BartForCausalLM, a BERT decoder)
    if _get(config, "is_encoder_decoder") or model_type in roles.SEQ2SEQ_FAMILIES:
        return "hf_seq2seq"
    if model_type in roles.MLM_FAMILIES or any(a.endswith("ForMaskedLM") for a in archs):
        return "hf_mlm"
    return "hf_causal"


def select_for_config(config: Any) -> str:
    """Return the adapter name for a config: quantized adapters first, then the role."""
    return quant_adapter(config) or role_adapter(config)


def select_for_model(model: nn.Module) -> str:
    """Return the adapter name for a loaded model (all four quantization detection steps)."""
    config = getattr(model, "config", None)
    return model_adapter(model) or (role_adapter(config) if config is not None else "hf_causal")


def select_for_id(model_id: str | os.PathLike[str]) -> str:
    """Return the adapter name for a local checkpoint (its config.json) or a remote id (its name)."""
    config_file = Path(model_id) / "config.json"
    if config_file.is_file():
        return select_for_config(json.loads(config_file.read_text(encoding="utf-8")))
    lowered = str(model_id).lower()
    for adapter, hints in _NAME_HINTS:
        if any(h in lowered for h in hints):
            return adapter
    return "hf_causal"


def concrete(name: str) -> roles.HFRoleAdapter:
    """Return an instance of the adapter called ``name``, or raise :class:`AdapterUnavailable`."""
    if name in ROLE_ADAPTERS:
        return ROLE_ADAPTERS[name]()
    if name in QUANT_ADAPTERS:
        import importlib

        module, _, cls = QUANT_ADAPTERS[name].partition(":")
        adapter: roles.HFRoleAdapter = getattr(importlib.import_module(module), cls)()
        return adapter
    raise AdapterUnavailable(
        f"hf_auto selected {name}, which pytest-invarlock does not provide (its backend does "
        "not run here); pass --invarlock-adapter with an adapter that supports this checkpoint")


class HFAutoAdapter:
    """Select the concrete adapter from the checkpoint or model, and delegate every call to it."""

    name: ClassVar[str] = "hf_auto"

    @property
    def capabilities(self) -> dict[str, Any] | None:
        """Return this adapter's entry of contracts/adapter_capabilities.json (None: unlisted)."""
        from pytest_invarlock.hf_adapter.capabilities import contract

        return contract().get(self.name)

    def delegate(self, model: nn.Module) -> roles.HFRoleAdapter:
        """Return the concrete adapter for ``model``."""
        return concrete(select_for_model(model))

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Return why no adapter hf_auto selects takes a checkpoint, from its config alone."""
        try:
            return concrete(select_for_config(config)).declines_config(config)
        except AdapterUnavailable as exc:
            return str(exc)

    def can_handle(self, model: Any) -> bool:
        """Return whether the adapter selected for ``model`` handles it."""
        if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
            return False
        try:
            return self.delegate(model).can_handle(model)
        except AdapterUnavailable:
            return False

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load with the adapter selected from the checkpoint's config.json (or its name)."""
        return concrete(select_for_id(model_id)).load_model(model_id, device, **hf_kwargs)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Describe ``model`` through the selected adapter."""
        return self.delegate(model).describe(model)

    def snapshot(self, model: nn.Module) -> memoryview:
        """Snapshot ``model`` through the selected adapter."""
        return self.delegate(model).snapshot(model)

    def restore(self, model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
        """Restore ``model`` through the selected adapter."""
        self.delegate(model).restore(model, blob)

    def snapshot_chunked(self, model: nn.Module, **kwargs: Any) -> str:
        """Write a chunked snapshot through the selected adapter."""
        return self.delegate(model).snapshot_chunked(model, **kwargs)

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        """Restore a chunked snapshot through the selected adapter."""
        self.delegate(model).restore_chunked(model, path)
