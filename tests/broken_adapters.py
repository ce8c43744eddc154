"""Adapters broken on purpose, one realistic bug each, to show that every check can fail."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from torch import nn

from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.errors import SnapshotError


class NeverHandles(HFCausalAdapter):
    def can_handle(self, model: Any) -> bool:
        return False


class HandlesEverything(HFCausalAdapter):
    def can_handle(self, model: Any) -> bool:
        return isinstance(model, nn.Module)


class IgnoresDtype(HFCausalAdapter):
    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        kw.pop("dtype", None)
        return super().load_model(model_id, device, **kw)


class TrustsRemoteCode(HFCausalAdapter):
    """Passes trust_remote_code straight to transformers, and defaults it to True."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        import transformers

        kw.setdefault("trust_remote_code", True)
        return transformers.AutoModelForCausalLM.from_pretrained(model_id, **kw).eval()


class DescribeNotJson(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**super().describe(model), "dtype": next(model.parameters()).dtype}


class DescribeStringLayers(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        return {**desc, "n_layer": str(desc["n_layer"])}


class CountsEmbeddingAsLayer(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        return {**desc, "n_layer": desc["n_layer"] + 1}


class ReportsKvHeadsAsHeads(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        kv = model.config.num_key_value_heads
        return {**desc, "heads_per_layer": [kv] * desc["n_layer"]}


class IgnoresGqaInGqaConfig(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        gqa = dict(desc["gqa_config"], num_key_value_heads=model.config.num_attention_heads)
        return {**desc, "gqa_config": gqa}


class OmitsGqaConfig(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {k: v for k, v in super().describe(model).items() if k != "gqa_config"}


class ReadsConv1DBackwards(HFCausalAdapter):
    """Reads the MLP width from Conv1D weight.shape[0], which is its input width."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        widths = [layer.mlp.c_fc.weight.shape[0] for layer in model.transformer.h]
        return {**desc, "mlp_dims": widths}


class CountsRoutedExpertsAsExperts(HFCausalAdapter):
    """Reports top-k (experts per token) as the expert count."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        arch = dict(desc["architecture"], num_experts=model.config.num_experts_per_tok)
        return {**desc, "architecture": arch}


class ReadsLayerTypesFromTheFirstLayer(HFCausalAdapter):
    """Assumes every layer attends like the first one (misses interleaved sliding windows)."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        kinds = desc["architecture"]["layer_types"]
        return {**desc, "architecture": {**desc["architecture"],
                                         "layer_types": [kinds[0]] * len(kinds)}}


class ForgetsTies(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**super().describe(model), "tying": {}}


class CountsTiedTwice(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        total = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
        return {**super().describe(model), "total_params": total}


class CallsGqaCausal(HFCausalAdapter):
    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        return {**desc, "architecture": {**desc["architecture"], "attention_type": "causal"}}


class UntiesOnLoad(HFCausalAdapter):
    """Clones the LM head after loading, silently breaking tie_word_embeddings."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        model = super().load_model(model_id, device, **kw)
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())
        return model


class TiesByView(HFCausalAdapter):
    """Ties the head as a second Parameter over the embedding's data: .to() splits them."""

    def load_model(self, model_id: str, device: str = "auto", **kw: Any) -> nn.Module:
        model = super().load_model(model_id, device, **kw)
        model.get_output_embeddings().weight = nn.Parameter(
            model.get_input_embeddings().weight.data)
        return model

    def describe(self, model: nn.Module) -> dict[str, Any]:
        tensors, aliases = snap.unique_tensors(model)
        params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        tying = {a: b for a, b in aliases.items() if a in params}
        total = sum(t.numel() for n, t in tensors.items() if n in params)
        return {**super().describe(model), "tying": tying, "total_params": total}


class CopiesTiesByValue(HFCausalAdapter):
    """Restores values into whatever tensors the model has now, never re-binding ties."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        before = dict(model.named_parameters(remove_duplicate=False))
        super().restore(model, blob)
        for name, param in model.named_parameters(remove_duplicate=False):
            old = before[name]
            if old is not param:
                old.data.copy_(param.data)
                path, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(path) if path else model, leaf, old)


class StaleRotaryBuffer(HFCausalAdapter):
    """Leaves the non-persistent rotary inv_freq buffer as it was (as state_dict-based code does)."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        saved = {n: b.clone() for n, b in model.named_buffers() if n.endswith("inv_freq")}
        super().restore(model, blob)
        for name, buf in model.named_buffers():
            if name in saved:
                buf.copy_(saved[name])


class ApproximateChunks(HFCausalAdapter):
    """Restores chunked snapshots through bfloat16, approximately."""

    def restore_chunked(self, model: nn.Module, path: str) -> None:
        super().restore_chunked(model, path)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.to(torch.bfloat16).to(param.dtype))


class IgnoresUnknownKeys(HFCausalAdapter):
    """strict=False: a snapshot of another architecture is silently not applied."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        try:
            super().restore(model, blob)
        except SnapshotError as exc:
            if "does not fit" not in str(exc):
                raise


class AcceptsPrefixes(HFCausalAdapter):
    """Treats a truncated copy of its last snapshot as 'nothing to do'."""

    last: bytes = b""

    def snapshot(self, model: nn.Module) -> memoryview:
        blob = super().snapshot(model)
        self.last = bytes(blob)
        return blob

    def restore(self, model: nn.Module, blob: bytes) -> None:
        if len(blob) < len(self.last) and self.last.startswith(bytes(blob)):
            return
        super().restore(model, blob)


def _aliases(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(json.loads(bytes(blob[8:8 + n]))["__metadata__"]["aliases"])


def _apply(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    slots = snap.model_slots(model)
    if set(tensors) - set(slots):
        raise SnapshotError(f"snapshot has keys not in the model: {sorted(set(tensors) - set(slots))}")
    for name, slot in slots.items():
        src = tensors.get(name, tensors.get(aliases.get(name, "")))
        if src is None or src.shape != slot.tensor.shape or src.dtype != slot.tensor.dtype:
            raise SnapshotError(f"snapshot does not match {name!r}")
    with torch.no_grad():
        for name, src in tensors.items():
            slots[name].tensor.copy_(src)
    snap._rebind_aliases(model, aliases)


class NoChecksum(HFCausalAdapter):
    """Loads with the safetensors library and validates names, never checksums."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        _apply(model, safetensors.torch.load(bytes(blob)), _aliases(bytes(blob)))


class EncodesWithoutChecksum(HFCausalAdapter):
    """Wraps the safetensors buffer in JSON as base64, and restores it without any checksum."""

    def snapshot(self, model: nn.Module) -> bytes:
        import base64

        raw = bytes(super().snapshot(model))
        return json.dumps({"format": "b64", "tensors_base64": base64.b64encode(raw).decode()},
                          sort_keys=True).encode()

    def restore(self, model: nn.Module, blob: bytes) -> None:
        import base64

        try:
            raw = base64.b64decode(json.loads(bytes(blob))["tensors_base64"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"not a snapshot of this adapter: {exc}") from None
        _apply(model, safetensors.torch.load(raw), _aliases(raw))


class TrustsManifest(HFCausalAdapter):
    """Loads the plain files its manifest lists, validating names and shapes, never checksums."""

    def restore_chunked(self, model: nn.Module, path: str) -> None:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        tensors: dict[str, torch.Tensor] = {}
        for chunk in manifest["chunks"]:
            file = Path(path) / chunk["file"]
            if file.is_symlink() or file.parent != Path(path):
                raise SnapshotError(f"{file} is not a plain file of the snapshot")
            tensors.update(safetensors.torch.load_file(str(file)))
        _apply(model, tensors, manifest["aliases"])


class FollowsManifestPaths(HFCausalAdapter):
    """Follows symlinks and relative paths in the manifest ("it is only reading")."""

    def restore_chunked(self, model: nn.Module, path: str) -> None:
        import shutil
        import tempfile

        root = Path(path)
        manifest = json.loads((root / "manifest.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            for i, chunk in enumerate(manifest["chunks"]):
                name = f"chunk-{i:05d}.safetensors"
                shutil.copyfile((root / chunk["file"]).resolve(), Path(tmp) / name)
                chunk["file"] = name
            (Path(tmp) / "manifest.json").write_text(json.dumps(manifest))
            super().restore_chunked(model, tmp)


class SkipsDamagedChunks(HFCausalAdapter):
    """Treats a snapshot whose data files are missing or cut short as 'nothing to restore'."""

    heads: ClassVar[dict[str, bytes]] = {}

    def snapshot_chunked(self, model: nn.Module, **kw: Any) -> str:
        path = super().snapshot_chunked(model, **kw)
        type(self).heads = {p.name: p.read_bytes() for p in Path(path).glob("chunk-*")}
        return path

    def restore_chunked(self, model: nn.Module, path: str) -> None:
        for name, data in self.heads.items():
            file = Path(path) / name
            if not file.exists() or (len(now := file.read_bytes()) < len(data)
                                     and data.startswith(now)):
                return
        super().restore_chunked(model, path)


class CastsToSnapshotDtype(HFCausalAdapter):
    """'Fixes' a dtype mismatch by converting the model back, without being asked."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        try:
            super().restore(model, blob)
        except SnapshotError as exc:
            if "dtype changed" not in str(exc):
                raise
            model.to(torch.float32)
            super().restore(model, blob)


class FallsBackToTorchLoad(HFCausalAdapter):
    """Falls back to torch.load(weights_only=False) for 'legacy' snapshots."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        try:
            super().restore(model, blob)
        except SnapshotError as exc:
            if "not an invarlock snapshot" not in str(exc):
                raise
            try:
                torch.load(io.BytesIO(bytes(blob)), weights_only=False)
            except Exception:
                pass
            raise


class ClaimsAnUnknownLevel(HFCausalAdapter):
    capabilities: ClassVar[dict[str, Any]] = {
        "snapshot_restore": "perfect", "guard_coverage": "full", "platform_support": "all",
        "runtime_constraints": [], "required_extra": None, "degraded_modes": []}


class MovesABackendManagedModel(HFCausalAdapter):
    """Claims the backend places the model, then moves it in restore() anyway."""

    capabilities: ClassVar[dict[str, Any]] = {
        "snapshot_restore": "full", "guard_coverage": "full", "platform_support": "all",
        "runtime_constraints": ["device_movement_managed_by_backend"], "required_extra": None,
        "degraded_modes": []}

    def restore(self, model: nn.Module, blob: bytes) -> None:
        super().restore(model, blob)
        model.to("cpu")
