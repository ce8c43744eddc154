"""The shared base of the Hugging Face reference adapters: loading and snapshots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.errors import RemoteCodeRefused

ALLOW_REMOTE_CODE_ENV = "INVARLOCK_ALLOW_REMOTE_CODE"


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` into the best available device (CUDA > MPS > CPU); pass others through."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def guard_remote_code(model_id: str, hf_kwargs: dict[str, Any]) -> None:
    """Refuse ``trust_remote_code=True`` unless the environment opts in; default it to False."""
    if hf_kwargs.get("trust_remote_code") and os.environ.get(ALLOW_REMOTE_CODE_ENV) != "1":
        raise RemoteCodeRefused(
            f"load_model({model_id!r}, trust_remote_code=True) would execute Python code shipped "
            f"with the checkpoint; set {ALLOW_REMOTE_CODE_ENV}=1 to allow it for trusted models")
    hf_kwargs["trust_remote_code"] = bool(hf_kwargs.get("trust_remote_code"))


class QuantizedCheckpoint(ValueError):
    """A full-precision adapter was asked to load a quantized checkpoint."""


def refuse_quantized(name: str, model_id: str | os.PathLike[str], hf_kwargs: dict[str, Any],
                     causal: bool = True) -> None:
    """Refuse a quantized checkpoint (or a ``quantization_config`` argument) with its adapter.

    transformers applies a checkpoint's ``quantization_config`` by itself, so a full-precision
    adapter would return a quantized model and then snapshot and describe it as a dense one
    (packed widths, backend state missed): refused before anything is loaded.
    """
    from pytest_invarlock.adapters import quantization

    method = quantization.checkpoint_method(model_id, **hf_kwargs)
    asked = hf_kwargs.get("quantization_config")
    if method is None and (asked is None or quantization.quant_method(
            {"quantization_config": asked}) is None):
        return
    where = (f"{os.path.join(os.fspath(model_id), 'config.json')} has quantization_config "
             f"quant_method {method!r}" if method else
             f"quantization_config={type(asked).__name__} was passed")
    wanted = quantization.QUANT_METHODS.get(method or "") or quantization.quant_adapter(
        {"quantization_config": asked})
    if not causal:
        how = ("pytest-invarlock's quantized adapters take causal LMs only: pass an adapter of "
               "your own that declares quantized = True, or the full-precision checkpoint")
    elif wanted in quantization.EXTRAS:
        how = f"load it with {wanted} (pip install 'pytest-invarlock[{quantization.EXTRAS[wanted]}]')"
    else:
        how = (f"no quantized adapter of pytest-invarlock takes quant_method {method!r}: pass one "
               "of your own that declares quantized = True, or the full-precision checkpoint")
    raise QuantizedCheckpoint(f"{name} loads full-precision checkpoints only, and {where}: {how}")


class HFAdapterBase:
    """Load models with a transformers Auto class and snapshot them without pickle."""

    name: ClassVar[str] = "hf_base"
    #: The transformers Auto class used by :meth:`load_model`.
    auto_class: ClassVar[str] = "AutoModel"

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load ``model_id`` (hub id or local directory) with ``from_pretrained`` arguments.

        ``dtype``, ``device_map``, ``low_cpu_mem_usage``, ``revision`` and ``cache_dir`` are passed
        through unchanged. Without ``device_map`` the model is moved to ``device``.
        """
        guard_remote_code(str(model_id), hf_kwargs)
        return self._load(self.auto_class, model_id, device, hf_kwargs)

    def _load(self, auto_class: str, model_id: str | os.PathLike[str], device: str,
              hf_kwargs: dict[str, Any]) -> nn.Module:
        import transformers

        refuse_quantized(self.name, model_id, hf_kwargs,
                         causal=auto_class == "AutoModelForCausalLM")
        model_id = str(Path(model_id)) if isinstance(model_id, os.PathLike) else model_id
        model: nn.Module = getattr(transformers, auto_class).from_pretrained(
            model_id, **local_only(model_id, hf_kwargs))
        if hf_kwargs.get("device_map") is None:
            model = model.to(resolve_device(device))
        return model.eval()

    def snapshot(self, model: nn.Module) -> memoryview:
        """Return every parameter and buffer as one read-only safetensors buffer (no pickle)."""
        return snap.snapshot_bytes(model)

    def restore(self, model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
        """Restore a :meth:`snapshot` buffer in full, or raise and leave the model untouched."""
        snap.restore_bytes(model, blob)

    def snapshot_chunked(self, model: nn.Module, *, prefix: str = "invarlock-snap-",
                         directory: str | None = None,
                         chunk_bytes: int = snap.DEFAULT_CHUNK_BYTES) -> str:
        """Write a chunked snapshot directory (manifest + safetensors chunks); return its path."""
        return snap.snapshot_chunked(model, prefix=prefix, directory=directory,
                                     chunk_bytes=chunk_bytes)

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        """Restore a :meth:`snapshot_chunked` directory in full, or raise and touch nothing."""
        snap.restore_chunked(model, path)


def local_only(model_id: str | os.PathLike[str], hf_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``hf_kwargs`` with ``local_files_only=True`` when ``model_id`` is a local directory.

    A checkpoint directory never needs the Hub; saying so per call keeps loading offline
    without a process-wide ``HF_HUB_OFFLINE`` (which would change every other library's runs).
    An explicit ``local_files_only`` from the caller wins.
    """
    if Path(model_id).is_dir():
        return {"local_files_only": True, **hf_kwargs}
    return hf_kwargs
