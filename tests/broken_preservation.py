"""Adapters broken on purpose for the preservation and value checks, one realistic bug each."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from typing import Any, ClassVar

import safetensors.torch
import torch
from torch import nn

from pytest_invarlock.adapters import snapshot as snap
from pytest_invarlock.adapters import structure
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.errors import SnapshotError
from pytest_invarlock.hf_adapter.fresh import HELPER_ENV


class ReplacesParameters(HFCausalAdapter):
    """Restores like load_state_dict(assign=True): new nn.Parameter objects, ties re-bound."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        super().restore(model, blob)
        fresh: dict[int, nn.Parameter] = {}
        for name, param in list(model.named_parameters(remove_duplicate=False)):
            if id(param) not in fresh:
                fresh[id(param)] = nn.Parameter(param.detach().clone())
            path, _, leaf = name.rpartition(".")
            owner = model.get_submodule(path) if path else model
            owner._parameters[leaf] = fresh[id(param)]


class RemembersSnapshotTargets(HFCausalAdapter):
    """Remembers the tensors each snapshot was taken from, and restores straight into them."""

    def __init__(self) -> None:
        self._targets: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = {}

    def snapshot(self, model: nn.Module) -> memoryview:
        blob = super().snapshot(model)
        tensors, aliases = snap.unique_tensors(model)
        self._targets[hashlib.sha256(blob).hexdigest()] = (
            {n: t.detach() for n, t in tensors.items()}, aliases)
        return blob

    def restore(self, model: nn.Module, blob: bytes) -> None:
        found = self._targets.get(hashlib.sha256(blob).hexdigest())
        if found is None:  # not one of ours: the full validating path
            super().restore(model, blob)
            return
        targets, aliases = found
        live = snap.model_slots(model)
        for name, t in targets.items():
            if name not in live or live[name].tensor.dtype != t.dtype or (
                    live[name].tensor.shape != t.shape):
                raise SnapshotError(f"snapshot does not match the model's {name!r}")
        tensors = safetensors.torch.load(bytes(blob))
        with torch.no_grad():
            for name, t in targets.items():
                t.copy_(tensors[name])
        snap._rebind_aliases(model, aliases)


def _probe(module: nn.Module, args: Any, output: Any) -> None:
    """Would record the layer's output width; never runs in these tests."""


class LeavesProbeHooks(HFCausalAdapter):
    """describe() hooks every layer to probe activation widths and never removes the hooks."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        for _, layers in structure.stacks(model):
            for layer in layers:
                layer.register_forward_hook(_probe)
        return super().describe(model)


class ZeroCopyRestore(HFCausalAdapter):
    """Restores without a copy: after validating, points each tensor at its bytes in the blob."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        super().restore(model, blob)  # validates, and re-binds ties
        view = memoryview(blob)
        n = int.from_bytes(view[:8], "little")
        header = json.loads(bytes(view[8:8 + n]))
        header.pop("__metadata__")
        slots = snap.model_slots(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the given buffer is not writable"
            for name, entry in header.items():
                begin, end = entry["data_offsets"]
                if begin == end:
                    continue
                t = slots[name].tensor
                data = torch.frombuffer(view, dtype=torch.uint8, count=end - begin,
                                        offset=8 + n + begin)
                t.data = data.view(t.dtype).view(t.shape)


class HoldsSnapshotsInProcess(HFCausalAdapter):
    """snapshot() keeps the data in a class-level store and returns a small handle to it."""

    _store: ClassVar[dict[int, bytes]] = {}
    _prefix: ClassVar[bytes] = b"invarlock-handle:"

    def snapshot(self, model: nn.Module) -> bytes:
        blob = bytes(super().snapshot(model))
        self._store[id(blob)] = blob
        return self._prefix + str(id(blob)).encode()

    def restore(self, model: nn.Module, blob: bytes) -> None:
        raw = bytes(blob)
        if not raw.startswith(self._prefix):
            super().restore(model, raw)
            return
        key = raw[len(self._prefix):]
        if not key.isdigit() or int(key) not in self._store:
            raise SnapshotError(f"unknown snapshot handle {raw!r}")
        super().restore(model, self._store[int(key)])


class CanonicalisesNaNs(HFCausalAdapter):
    """Normalises every NaN to the canonical quiet NaN before snapshotting ('stable checksums')."""

    def snapshot(self, model: nn.Module) -> memoryview:
        clean = copy.deepcopy(model)
        with torch.no_grad():
            for t in [*clean.parameters(), *clean.buffers()]:
                if t.is_floating_point():
                    t.copy_(torch.where(t.isnan(), torch.full_like(t, float("nan")), t))
        return super().snapshot(clean)


# (broken adapter, fixture, reference?, the one failing check, words its message must contain)
CASES = [
    (ReplacesParameters, "gpt2", False, "check_restore_preserves_objects",
     ["restore() replaced the Parameter object of 'lm_head.weight'", "requires_grad",
      "copy values into the model's existing tensors"]),
    (RemembersSnapshotTargets, "llama-gqa", False, "check_restore_writes_live_storage",
     ["after model._apply(lambda t: t.clone()) (what model.to() does to the storage) and restore()",
      "'model.embed_tokens.weight'",
      "no longer uses", "data_ptr()"]),
    (LeavesProbeHooks, "gpt2", False, "check_read_only_calls_leave_model_unchanged",
     ["describe() changed hooks", "transformer.h.0._forward_hooks (1 added)",
      "register hooks"]),
    (ZeroCopyRestore, "llama-gqa-tied", False, "check_snapshot_is_a_value",
     ["the bytes of snapshot A changed after restoring it and then editing the model",
      "shares memory", "restore(A) a second time raised SnapshotError"]),
    (HoldsSnapshotsInProcess, "gpt2", False, "check_snapshot_restores_in_a_fresh_process",
     ["in a fresh Python process, restore() of the snapshot file", "raised",
      "unknown snapshot handle", "not keys into the memory of the process"]),
    (CanonicalisesNaNs, "llama-gqa", False, "check_snapshot_roundtrip_special_values",
     ["after snapshot()/restore()", "NaN with payload 0x5 (0x7fc00005) came back as 0x7fc00000",
      "NaN canonicalisation"]),
]


# Not in CASES: the fresh-process helper itself failing (the check must say so, not hang).


class ExitsInFreshProcess(HFCausalAdapter):
    """restore() kills the process it runs in, when that is the suite's fresh-process helper."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        if os.environ.get(HELPER_ENV):
            os._exit(3)
        super().restore(model, blob)


class HangsInFreshProcess(HFCausalAdapter):
    """restore() never returns when it runs in the suite's fresh-process helper."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        if os.environ.get(HELPER_ENV):
            time.sleep(3600)
        super().restore(model, blob)


class PrintsWhileRestoring(HFCausalAdapter):
    """Correct, but chatty: prints to stdout (the helper's answers must not be disturbed)."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        print("restoring...")  # not JSON: on the answer channel it would break the protocol
        super().restore(model, blob)
