"""Adapters broken on purpose for the loading and chunked checks, one realistic bug each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import broken_adapters as broken
import safetensors.torch
import torch
from torch import nn

from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.adapters.roles import HFCausalAdapter


class LeavesLockFile(HFCausalAdapter):
    """Takes a lock file beside the snapshot directory (to guard concurrent writers), never removes it."""

    def snapshot_chunked(self, model: nn.Module, *, prefix: str = "invarlock-snap-",
                         directory: str | None = None,
                         chunk_bytes: int = snap.DEFAULT_CHUNK_BYTES) -> str:
        path = super().snapshot_chunked(model, prefix=prefix, directory=directory,
                                        chunk_bytes=chunk_bytes)
        Path(f"{path}.lock").write_text(str(os.getpid()))
        return path


class IgnoresChunkSize(HFCausalAdapter):
    """Accepts chunk_bytes for compatibility but always writes one chunk."""

    def snapshot_chunked(self, model: nn.Module, *, prefix: str = "invarlock-snap-",
                         directory: str | None = None,
                         chunk_bytes: int = snap.DEFAULT_CHUNK_BYTES) -> str:
        return super().snapshot_chunked(model, prefix=prefix, directory=directory)


class FirstChunkOnly(HFCausalAdapter):
    """Restores a multi-file snapshot from its first chunk only (one shard assumed)."""

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        if len(manifest["chunks"]) == 1:  # the case its author tested
            super().restore_chunked(model, path)
            return
        first = manifest["chunks"][0]["file"]
        tensors = safetensors.torch.load_file(str(Path(path) / first))
        slots = snap.model_slots(model)
        with torch.no_grad():
            for name, value in tensors.items():
                slots[name].tensor.copy_(value)


class RestoresOnce(HFCausalAdapter):
    """Skips restoring a snapshot directory it restored last ('the model already holds it')."""

    def __init__(self) -> None:
        self._restored: str | None = None

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        if str(path) == self._restored:
            return
        super().restore_chunked(model, path)
        self._restored = str(path)


class AllowListsHfKwargs(HFCausalAdapter):
    """Forwards only the from_pretrained arguments it knows, silently dropping the others."""

    known = ("dtype", "device_map", "low_cpu_mem_usage", "revision", "trust_remote_code")

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        return super().load_model(model_id, device, **{k: v for k, v in kw.items()
                                                       if k in self.known})


class HandlesAnythingWithConfig(HFCausalAdapter):
    """Says yes to any transformers model, but describes decoder-only layouts only."""

    def can_handle(self, model: Any) -> bool:
        return isinstance(model, nn.Module) and hasattr(model, "config")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        layers = model.model.layers if hasattr(model, "model") else model.transformer.h
        return {**super().describe(model), "n_layer": len(layers)}


class PeeksWithRemoteConfig(HFCausalAdapter):
    """Reads the config with trust_remote_code=True to pick a model class, then refuses to load."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        import transformers

        transformers.AutoConfig.from_pretrained(model_id, trust_remote_code=True)
        return super().load_model(model_id, device, **kw)


class TrustsRemoteCodeForCustomModels(HFCausalAdapter):
    """Turns trust_remote_code on when config.json has an auto_map ('custom architecture')."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        import transformers

        config = Path(model_id) / "config.json"
        if config.is_file() and "auto_map" in json.loads(config.read_text()):
            return transformers.AutoModelForCausalLM.from_pretrained(
                model_id, trust_remote_code=True).eval()
        return super().load_model(model_id, device, **kw)


# (broken adapter, fixture, reference?, the one failing check, words its message must contain)
CASES = [
    (broken.HandlesEverything, "gpt2", False, "check_can_handle_rejects_foreign_models",
     ["can_handle(Linear) is True", "return False"]),
    (HandlesAnythingWithConfig, "gpt2", False, "check_can_handle_rejects_foreign_models",
     ["can_handle(BertForMaskedLM) is True", "describe(BertForMaskedLM) raised",
      "T5ForConditionalGeneration", "LlavaForConditionalGeneration", "promise"]),
    (AllowListsHfKwargs, "gpt2", False, "check_load_model_passes_hf_arguments",
     ["2 problems", "attn_implementation='eager') did not pass attn_implementation",
      "cache_dir=", "did not pass cache_dir", "through"]),
    (broken.TrustsRemoteCode, "gpt2", False, "check_load_model_refuses_remote_code",
     ["trust_remote_code=True", "executed the checkpoint's own Python code",
      "INVARLOCK_ALLOW_REMOTE_CODE=1"]),
    (PeeksWithRemoteConfig, "gpt2", False, "check_load_model_refuses_remote_code",
     ["2 problems", "configuration_probe.py", "before failing", "INVARLOCK_ALLOW_REMOTE_CODE=1"]),
    (TrustsRemoteCodeForCustomModels, "gpt2", False, "check_load_model_refuses_remote_code",
     ["2 problems", "load_model(<remote-code probe>)", "executed", "trust_remote_code=False"]),
    (LeavesLockFile, "gpt2", False, "check_chunked_snapshot_stays_in_its_directory",
     ["snapshot_chunked() wrote", ".lock'", "beside the snapshot directory",
      "only inside the one directory"]),
    (IgnoresChunkSize, "llama-gqa", False, "check_chunked_roundtrip_multi_chunk",
     ["snapshot_chunked(prefix='invarlock-check-', chunk_bytes=", "1 data file(s)",
      "the chunk_bytes keyword was ignored"]),
    (FirstChunkOnly, "llama-gqa", False, "check_chunked_roundtrip_multi_chunk",
     ["restore_chunked() #1", "restore_chunked() #2", "not bit-identical", "differs",
      "every chunk the manifest lists"]),
    (RestoresOnce, "gpt2", False, "check_chunked_roundtrip_multi_chunk",
     ["restore_chunked() #2", "not bit-identical", "never skip"]),
]
