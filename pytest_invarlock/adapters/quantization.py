"""Which quantization a config, a checkpoint directory or a loaded model carries, and its adapter.

Detection follows spec 001's order: ``quantization_config.quant_method`` (the string, read from
config.json: constructing a backend's config class raises when the backend is missing), then
the config class, then ``load_in_8bit``/``load_in_4bit``, then model attributes, then module
types. Importing this module imports neither torch nor any backend.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: quant_method strings (transformers' QuantizationMethod values) -> adapter.
QUANT_METHODS: dict[str, str] = {
    "bitsandbytes": "hf_bnb", "awq": "hf_awq", "gptq": "hf_gptq", "torchao": "hf_torchao",
    "hqq": "hf_hqq", "quanto": "hf_quanto", "compressed-tensors": "hf_ct",
}
#: quantized adapter -> the pytest-invarlock extra that installs its backend.
EXTRAS: dict[str, str] = {"hf_bnb": "bnb", "hf_awq": "awq", "hf_gptq": "gptq",
                          "hf_torchao": "torchao", "hf_hqq": "hqq", "hf_quanto": "quanto",
                          "hf_ct": "ct"}
#: transformers quantization config classes -> adapter.
QUANT_CONFIG_CLASSES: dict[str, str] = {
    "BitsAndBytesConfig": "hf_bnb", "AwqConfig": "hf_awq", "GPTQConfig": "hf_gptq",
    "TorchAoConfig": "hf_torchao", "HqqConfig": "hf_hqq", "QuantoConfig": "hf_quanto",
    "CompressedTensorsConfig": "hf_ct",
}
#: module classes that mark a model quantized when its config says nothing (adapter by class).
QUANT_MODULES: dict[str, str] = {"Linear8bitLt": "hf_bnb", "Linear4bit": "hf_bnb",
                                 "HQQLinear": "hf_hqq", "QLinear": "hf_quanto"}


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def quant_adapter(config: Any) -> str | None:
    """Return the quantized adapter a config asks for (a dict from config.json or an object)."""
    if config is None:
        return None
    quant = _get(config, "quantization_config")
    if quant is not None and _get(quant, "dequantize") is True:
        return None  # transformers dequantizes at load: a dense model
    if quant is not None:
        by_class = QUANT_CONFIG_CLASSES.get(type(quant).__name__)
        method = _get(quant, "quant_method")
        method = str(getattr(method, "value", method))
        if by_class or method in QUANT_METHODS:
            return by_class or QUANT_METHODS[method]
        if _get(quant, "load_in_8bit") or _get(quant, "load_in_4bit"):
            return "hf_bnb"
    if _get(config, "load_in_8bit") or _get(config, "load_in_4bit"):
        return "hf_bnb"
    return None


def quant_method(config: Any) -> str | None:
    """Return the ``quant_method`` string a config carries (None: not quantized).

    A bitsandbytes config saved before ``quant_method`` existed says only ``load_in_8bit`` /
    ``load_in_4bit``; a config asking transformers to ``dequantize`` at load gives a dense model.
    """
    quant = _get(config, "quantization_config") if config is not None else None
    if quant is not None and _get(quant, "dequantize") is True:
        return None
    method = _get(quant, "quant_method") if quant is not None else None
    if method is not None:
        return str(getattr(method, "value", method))
    return "bitsandbytes" if quant_adapter(config) == "hf_bnb" else None


def checkpoint_config(model_id: str | os.PathLike[str],
                      **hub: Any) -> dict[str, Any] | None:
    """Return a checkpoint's config.json as a dict (None: none, or unreadable).

    A local directory is read directly; a Hub id through transformers' ``get_config_dict``
    (``hub``: ``revision``, ``cache_dir``, ``local_files_only``...), which builds no config
    class, so no backend is imported (trap X9).
    """
    path = os.path.join(os.fspath(model_id), "config.json")
    if os.path.isdir(os.fspath(model_id)):
        try:
            with open(path, encoding="utf-8") as handle:
                found = json.load(handle)
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None
    try:
        from transformers import PretrainedConfig

        wanted = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
        loaded, _ = PretrainedConfig.get_config_dict(
            os.fspath(model_id), **{k: v for k, v in hub.items() if k in wanted})
    except Exception:  # offline, unknown id: from_pretrained reports it
        return None
    return loaded if isinstance(loaded, dict) else None


def checkpoint_method(model_id: str | os.PathLike[str], **hub: Any) -> str | None:
    """Return a checkpoint's ``quant_method`` from its config.json (None: full precision)."""
    return quant_method(checkpoint_config(model_id, **hub))


def model_adapter(model: Any) -> str | None:
    """Return the quantized adapter a loaded model needs (None: a full-precision model)."""
    found = quant_adapter(getattr(model, "config", None))
    if found:
        return found
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return "hf_bnb"
    modules = getattr(model, "modules", None)
    for module in modules() if callable(modules) else ():
        if type(module).__name__ in QUANT_MODULES:
            return QUANT_MODULES[type(module).__name__]
    return None
