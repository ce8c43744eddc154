"""Quantized causal-LM reference adapters (spec 001): runtime torchao, quanto and bitsandbytes.

Each loads a checkpoint through transformers with its backend's quantization config (a
checkpoint that already carries a ``quantization_config`` of its backend is loaded as it is),
leaves device placement to the backend (never ``.to()``), describes the *logical* structure
(the full-precision widths and parameter count, never the packed ones) plus what was quantized,
and snapshots every leaf the forward reads (:mod:`pytest_invarlock.hf_adapter.leaves`), restored
in place. The facts behind each choice are measured in ``research/quantized-backends-cpu.md``.

hf_hqq (quant_hqq.py), hf_ct (quant_ct.py), hf_gptq and hf_awq (quant_gptq.py) build on the same
base; all seven are registered and run in the quantized lanes.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import torch
from torch import nn

from pytest_invarlock.adapters import quantization
from pytest_invarlock.adapters.base import guard_remote_code, local_only, resolve_device
from pytest_invarlock.adapters.roles import HFCausalAdapter, refuse_seq2seq

#: auxiliary tensors of quantized linears: scales and indices, not logical parameters
AUXILIARY = frozenset({"weight_scale", "weight_shape", "weight_zero_point", "SCB", "absmax",
                       "scales", "qzeros", "g_idx", "input_scale", "output_scale",
                       "weight_global_scale", "input_global_scale", "input_zero_point",
                       "output_zero_point"})
#: what a quantized linear stores its weight as (counted as in*out, never by numel):
#: ``weight`` (bitsandbytes, torchao, quanto), ``W_q`` (HQQ, whose linears have no ``weight``),
#: ``weight_packed`` (compressed-tensors until decompressed, int32 holding 32/bits values each)
PACKED_WEIGHT = frozenset({"weight", "W_q", "weight_packed"})
SNAPSHOT_FORMAT = "pytest-invarlock-leaves-v1"
CHUNKED_FORMAT = "pytest-invarlock-leaves-chunked-v1"
DEFAULT_CHUNK_BYTES = 256 << 20
MANIFEST = "manifest.json"


class SnapshotError(ValueError):
    """A leaf snapshot does not fit the model: nothing was written."""


class HFQuantizedAdapter(HFCausalAdapter):
    """A causal LM quantized by one backend; subclasses name it and build its config."""

    quantized: ClassVar[bool] = True
    #: ``quantization_config.quant_method`` of this backend's models
    quant_method: ClassVar[str] = ""
    #: the module the backend's package provides (checked before loading)
    backend_module: ClassVar[str] = ""

    #: the pip extra that installs the backend (spec 001's ``required_extra``)
    extra: ClassVar[str] = ""
    #: whether load_model quantizes a full-precision checkpoint (else: pre-quantized ones only)
    runtime: ClassVar[bool] = True
    #: model_type -> why the backend cannot quantize it usefully (declined at planning)
    declined_families: ClassVar[dict[str, str]] = {
        "gpt2": "leaves GPT-2's Conv1D layers unquantized: the model would not be quantized at all",
    }

    @property
    def capabilities(self) -> dict[str, Any] | None:
        """Return the contract entry of this adapter, else of its backend's reference adapter.

        A subclass (another name, the same backend) inherits the backend's claims: the device
        placement and the snapshot guarantees come from the backend, not the name.
        """
        from pytest_invarlock.hf_adapter.capabilities import contract

        found = contract()
        return found.get(self.name) or found.get(
            quantization.QUANT_METHODS.get(self.quant_method, ""))

    @classmethod
    def unavailable(cls) -> str | None:
        """Return why the adapter cannot load anything here (its backend is missing), or None."""
        import importlib.util

        try:
            found = importlib.util.find_spec(cls.backend_module) is not None
        except ModuleNotFoundError:  # a missing parent package of a dotted module
            found = False
        return None if found else (f"{cls.name} needs {cls.backend_module}: pip install "
                                   f"'pytest-invarlock[{cls.extra}]'")

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Return why this backend does not take a checkpoint, from its config alone."""
        method = quantization.quant_method(config)
        if method is not None and method != cls.quant_method:
            owner = quantization.QUANT_METHODS.get(method, "another adapter")
            return f"a {method}-quantized checkpoint: {cls.name} loads {cls.quant_method} ({owner} loads it)"
        if method is None and not cls.runtime:
            return (f"a full-precision checkpoint: {cls.name} loads pre-quantized "
                    f"{cls.quant_method} checkpoints only")
        family = getattr(config, "model_type", None)
        if method is None and family in cls.declined_families:
            return f"{cls.backend_module} {cls.declined_families[family]}"
        return super().declines_config(config)

    def quantization_config(self) -> Any:
        """Return the transformers quantization config applied to a full-precision checkpoint."""
        raise NotImplementedError

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load ``model_id`` quantized; the backend places it (on ``device`` via ``device_map``)."""
        import transformers

        missing = self.unavailable()
        if missing:
            raise ImportError(missing)
        guard_remote_code(str(model_id), hf_kwargs)
        refuse_seq2seq(model_id, **hf_kwargs)
        method = quantization.checkpoint_method(model_id, **hf_kwargs)
        if method is not None and method != self.quant_method:
            raise quantization_error(self.name, model_id, method)
        if method is None and not self.runtime and hf_kwargs.get("quantization_config") is None:
            raise ValueError(f"{os.path.join(os.fspath(model_id), 'config.json')} has no "
                             f"quantization_config: {self.name} loads pre-quantized "
                             f"{self.quant_method} checkpoints only")
        if method is None:
            hf_kwargs.setdefault("quantization_config", self.quantization_config())
        if hf_kwargs.get("device_map") is None:
            hf_kwargs["device_map"] = {"": str(resolve_device(device))}
        model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_id), **local_only(model_id, hf_kwargs))
        return model.eval()

    def can_handle(self, model: Any) -> bool:
        """Return whether ``model`` is a causal LM this backend quantized (a module at least, X5)."""
        owner = quantization.QUANT_METHODS.get(self.quant_method)
        family = getattr(getattr(model, "config", None), "model_type", None)
        return (super().can_handle(model) and quantization.model_adapter(model) == owner
                and bool(quantized_modules(model)) and family not in self.declined_families)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Describe the logical structure (as its full-precision source) and the quantization."""
        out = super().describe(model)
        out["total_params"] = logical_params(model)
        out["quantization"] = {"method": self.quant_method, **self.settings(model),
                               "quantized_modules": quantized_modules(model)}
        return out

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return the backend's bits and group size (None where it has none)."""
        return {"bits": None, "group_size": None}

    def snapshot(self, model: nn.Module) -> memoryview:
        """Return every leaf the forward reads as one safetensors buffer (no pickle)."""
        return memoryview(snapshot_leaves(model))

    def restore(self, model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
        """Write a :meth:`snapshot` back in place, or raise and leave the model untouched."""
        restore_leaves(model, bytes(blob))

    def snapshot_chunked(self, model: nn.Module, *, prefix: str = "invarlock-snap-",
                         directory: str | None = None,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
        """Write the leaves as safetensors chunks of at most ``chunk_bytes`` plus a manifest."""
        return snapshot_leaves_chunked(model, prefix=prefix, directory=directory,
                                       chunk_bytes=chunk_bytes)

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        """Check every file of a :meth:`snapshot_chunked` directory, then restore in place."""
        restore_leaves_chunked(model, path)


class HFTorchAoAdapter(HFQuantizedAdapter):
    """torchao int8 weight-only (the backend's CPU path; its int4 has none)."""

    name: ClassVar[str] = "hf_torchao"
    quant_method: ClassVar[str] = "torchao"
    backend_module: ClassVar[str] = "torchao"
    extra: ClassVar[str] = "torchao"
    declined_families: ClassVar[dict[str, str]] = {
        **HFQuantizedAdapter.declined_families,
        "falcon": "cannot run Falcon: FalconLinear's forward reads weight.T, which torchao's "
                  "Int8Tensor does not implement (aten.permute)",
    }

    def quantization_config(self) -> Any:
        """Return int8 weight-only (config objects: transformers 5 rejects string types)."""
        import transformers
        from torchao.quantization import Int8WeightOnlyConfig

        return transformers.TorchAoConfig(Int8WeightOnlyConfig())

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return 8 bits, per row."""
        return {"bits": 8, "group_size": None}


class HFQuantoAdapter(HFQuantizedAdapter):
    """optimum-quanto int8 weights (int4 needs a C++ toolchain on first use)."""

    name: ClassVar[str] = "hf_quanto"
    quant_method: ClassVar[str] = "quanto"
    backend_module: ClassVar[str] = "optimum.quanto"
    extra: ClassVar[str] = "quanto"

    def quantization_config(self) -> Any:
        """Return int8 weights."""
        import transformers

        return transformers.QuantoConfig(weights="int8")

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return 8 bits, per channel."""
        return {"bits": 8, "group_size": None}


class HFBnbAdapter(HFQuantizedAdapter):
    """bitsandbytes LLM.int8() (a pre-quantized bitsandbytes checkpoint, 8- or 4-bit, loads as it is)."""

    name: ClassVar[str] = "hf_bnb"
    quant_method: ClassVar[str] = "bitsandbytes"
    backend_module: ClassVar[str] = "bitsandbytes"
    extra: ClassVar[str] = "bnb"
    #: bitsandbytes replaces GPT-2's Conv1D by (transposed) Linear8bitLt, but not FalconLinear
    declined_families: ClassVar[dict[str, str]] = {
        "falcon": "leaves Falcon's FalconLinear layers unquantized: the model would not be "
                  "quantized at all",
    }

    def quantization_config(self) -> Any:
        """Return LLM.int8()."""
        import transformers

        return transformers.BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load as the base class does, then honour ``dtype`` and settle the 4-bit layout.

        Two facts of transformers 5 / bitsandbytes 0.50 on a pre-quantized checkpoint:

        - ``dtype`` is ignored for its unquantized weights (embeddings, norms, lm_head): the
          4-bit and 8-bit deserializers claim every ``*.weight`` key, and transformers then
          keeps the stored dtype. They are cast here as ``from_pretrained`` casts those of a
          full-precision checkpoint (``_keep_in_fp32_modules`` kept), so both load alike.
        - the first CPU forward of a ``Linear4bit`` repacks its weight and ``absmax`` in place
          (research, trap X1); a snapshot taken straight after loading would no longer fit the
          model after its first evaluation. Each 4-bit layer is run once here, so the model
          is returned in the layout every later forward keeps.
        """
        model = super().load_model(model_id, device, **hf_kwargs)
        dtype = _as_dtype(hf_kwargs.get("dtype", hf_kwargs.get("torch_dtype")))
        if dtype is not None and quantization.checkpoint_method(model_id) == self.quant_method:
            _cast_unquantized(model, dtype)
        _settle_4bit(model)
        return model

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return 8 bits, or 4 with the block size the 4-bit weights were quantized with.

        The block size is read from the weights' ``quant_state`` (a checkpoint carries its own;
        transformers quantizes with 64), one int when all layers agree, else the sorted sizes.
        """
        sizes = sorted({int(m.weight.quant_state.blocksize) for m in _bnb_4bit_linears(model)})
        if not sizes:
            return {"bits": 8, "group_size": None}
        return {"bits": 4, "group_size": sizes[0] if len(sizes) == 1 else sizes}


def _bnb_4bit_linears(model: nn.Module) -> list[Any]:
    """Return the bitsandbytes 4-bit linears (``Linear4bit`` and its subclasses) of ``model``."""
    return [m for m in model.modules() if any(c.__name__ == "Linear4bit" for c in type(m).__mro__)
            and getattr(getattr(m, "weight", None), "quant_state", None) is not None]


def _settle_4bit(model: nn.Module) -> None:
    """Run every 4-bit linear once on zeros, so a CPU repack happens now, not in a later forward.

    The input has the model's floating dtype, the one hidden states reach the layer with, so
    bitsandbytes decides (repack or not, compute dtype) exactly as the model's first forward
    would; the output is discarded.
    """
    linears = _bnb_4bit_linears(model)
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = floating[0] if floating else torch.float32
    with torch.no_grad():
        for module in linears:
            module(torch.zeros(1, int(module.in_features), dtype=dtype,
                               device=module.weight.device))


def _as_dtype(value: Any) -> torch.dtype | None:
    """Return ``value`` as a torch dtype (``"bfloat16"`` included), None for "auto" or none."""
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, value, None) if isinstance(value, str) else None
    return found if isinstance(found, torch.dtype) else None


def _cast_unquantized(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast plain floating parameters to ``dtype`` as ``from_pretrained`` would have.

    Modules transformers keeps in float32 at that dtype stay as they are; tied parameters are
    one object, so they stay tied.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or [])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (type(param) is nn.Parameter and param.is_floating_point()
                    and param.dtype != dtype and not keep & set(name.split("."))):
                param.data = param.data.to(dtype)


def quantization_error(name: str, model_id: str | os.PathLike[str], method: str) -> ValueError:
    """Return the error for a checkpoint quantized by another backend than the adapter's."""
    from pytest_invarlock.adapters.base import QuantizedCheckpoint

    owner = quantization.QUANT_METHODS.get(method, "another adapter")
    return QuantizedCheckpoint(f"{os.path.join(os.fspath(model_id), 'config.json')} has "
                               f"quantization_config quant_method {method!r}: {name} does not load "
                               f"it; load it with {owner}")


# --------------------------------------------------------------------------- logical structure


def _is_quantized_linear(module: nn.Module) -> bool:
    """Return whether ``module`` is a linear layer whose weights a backend replaced or packed."""
    if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
        return False
    if getattr(getattr(module, "quantization_scheme", None), "weights", None) is not None:
        return True  # compressed-tensors: packed, or decompressed in place to a float weight
    weight = getattr(module, "weight", None)
    if weight is None:
        return True  # HQQ, gptqmodel: quantized buffers, no weight at all
    return type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point()


def quantized_modules(model: nn.Module) -> list[str]:
    """Return the names of the linear modules a backend quantized (sorted)."""
    return sorted(name for name, m in model.named_modules() if _is_quantized_linear(m))


def logical_params(model: nn.Module) -> int:
    """Count parameters as the full-precision model has them: in*out per quantized linear.

    Packed weights (bitsandbytes 4-bit stores in*out/2 bytes, HQQ's ``W_q``) and auxiliary
    scales, zeros and indices are not parameters of the model the quantization approximates; a
    quantized linear's bias is, also where the backend keeps it as a plain attribute (HQQ) or as
    a buffer (gptqmodel: a float16 ``bias`` buffer).
    """
    seen: set[int] = set()
    total = 0
    for _, module in model.named_modules():
        quantized = _is_quantized_linear(module)
        if quantized:
            total += int(module.in_features) * int(module.out_features)
            bias = vars(module).get("bias")  # registered parameters never live in __dict__
            if not isinstance(bias, torch.Tensor):
                bias = module._buffers.get("bias")
            total += bias.numel() if isinstance(bias, torch.Tensor) else 0
        for leaf, p in module.named_parameters(recurse=False):
            if id(p) in seen or leaf in AUXILIARY or (quantized and leaf in PACKED_WEIGHT):
                continue
            seen.add(id(p))
            total += p.numel()
    return total


# --------------------------------------------------------------------------- leaf snapshots


def snapshot_leaves(model: nn.Module) -> bytes:
    """Serialize every leaf (each storage once, aliases in the metadata) as safetensors."""
    from safetensors.torch import save

    stored, aliases = _unique_leaves(model)
    digests = {name: _digest(t) for name, t in stored.items()}
    return save(stored, metadata={"format": SNAPSHOT_FORMAT, "aliases": json.dumps(aliases),
                                  "sha256": json.dumps(digests)})


def _digest(t: torch.Tensor) -> str:
    """Return the sha256 of a tensor's raw bytes."""
    import hashlib

    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def restore_leaves(model: nn.Module, blob: bytes) -> None:
    """Check a :func:`snapshot_leaves` blob against every leaf, then copy it in place."""
    from safetensors import SafetensorError
    from safetensors.torch import load


    try:
        stored = load(blob)
        header_len = int.from_bytes(blob[:8], "little")  # the metadata lives in the header
        meta = json.loads(blob[8:8 + header_len]).get("__metadata__", {})
        aliases: dict[str, str] = json.loads(meta.get("aliases", "{}"))
        digests: dict[str, str] = json.loads(meta.get("sha256", "{}"))
        if not (isinstance(aliases, dict) and isinstance(digests, dict)):
            raise ValueError("aliases and sha256 must be JSON objects")
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"not a leaf snapshot: {exc}") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not a leaf snapshot: format {meta.get('format')!r}, expected "
                            f"{SNAPSHOT_FORMAT!r}")
    damaged = sorted(n for n, t in stored.items() if digests.get(n) != _digest(t))
    if damaged:
        raise SnapshotError(f"the snapshot is damaged: {damaged[:3]} do not match their sha256")
    _write_leaves(model, stored, aliases)


def _write_leaves(model: nn.Module, stored: dict[str, torch.Tensor],
                  aliases: dict[str, str]) -> None:
    """Check ``stored`` fits every leaf of ``model`` (names, dtypes, shapes), then copy it in."""
    from pytest_invarlock.hf_adapter import leaves

    now = {name: leaf.tensor for name, leaf in leaves.leaves(model).items()}
    named = {**{n: n for n in stored}, **aliases}
    values = {name: stored[source] for name, source in named.items() if source in stored}
    wrong = leaves.misfits(now, values)
    if wrong:
        raise SnapshotError(f"the snapshot does not fit the model: {wrong[:3]} (missing, unknown, "
                            "or of another dtype or shape)")
    leaves.write_in_place(now, values)
    _retie(model, aliases)


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make parameters that shared one tensor at snapshot time share it again (an edit untied)."""
    from pytest_invarlock.hf_adapter import state

    held = state.registered(model)
    for name, source in aliases.items():
        if not (name in held and source in held and held[name][1] and held[source][1]):
            continue
        if state.storage_key(held[name][0]) != state.storage_key(held[source][0]):
            path, _, leaf = name.rpartition(".")
            owner = model.get_submodule(path) if path else model
            owner._parameters[leaf] = held[source][0]  # type: ignore[assignment]

def _unique_leaves(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return each storage's first leaf (copied to the CPU) and the aliases of the others."""
    from pytest_invarlock.hf_adapter import leaves, state

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[object, ...], str] = {}
    for name, leaf in leaves.leaves(model).items():
        key = state.storage_key(leaf.tensor)
        if key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        stored[name] = leaf.tensor.detach().to("cpu").contiguous().clone()
    return stored, aliases


def snapshot_leaves_chunked(model: nn.Module, *, prefix: str, directory: str | None,
                            chunk_bytes: int) -> str:
    """Write the leaves in chunk files of at most ``chunk_bytes`` (one tensor may exceed it)."""
    import hashlib
    import tempfile

    from safetensors.torch import save

    from pytest_invarlock.adapters.snapshot import size_groups

    stored, aliases = _unique_leaves(model)
    root = tempfile.mkdtemp(prefix=prefix, dir=directory)
    groups = size_groups(list(stored), lambda n: stored[n].numel() * stored[n].element_size(),
                         chunk_bytes)
    files = []
    for index, names in enumerate(groups):
        data = save({n: stored[n] for n in names})
        file = f"chunk-{index:05d}.safetensors"
        with open(os.path.join(root, file), "wb") as handle:
            handle.write(data)
        files.append({"file": file, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "tensors": names})
    with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"format": CHUNKED_FORMAT, "files": files, "aliases": aliases}, handle)
    return root


def restore_leaves_chunked(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Verify the manifest and every chunk (name, size, sha256), then copy the leaves in place."""
    import hashlib
    import re

    from safetensors.torch import load

    root = os.fspath(path)
    try:
        if os.path.islink(os.path.join(root, MANIFEST)):
            raise SnapshotError(f"{root}/{MANIFEST} is a symlink: nothing outside the snapshot "
                                "is read")
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise SnapshotError(f"{root}/{MANIFEST}: not a leaf snapshot manifest")
        if manifest.get("format") != CHUNKED_FORMAT:
            raise SnapshotError(f"{root}/{MANIFEST}: format {manifest.get('format')!r}, "
                                f"expected {CHUNKED_FORMAT!r}")
        stored: dict[str, torch.Tensor] = {}
        for entry in manifest["files"]:
            file = str(entry["file"])
            if not re.fullmatch(r"chunk-\d{5}\.safetensors", file):
                raise SnapshotError(f"{root}/{MANIFEST}: chunk name {file!r} is not one this "
                                    "format writes (no paths outside the snapshot)")
            where = os.path.join(root, file)
            if os.path.islink(where) or not os.path.isfile(where):
                raise SnapshotError(f"{where}: not a plain file of the snapshot (a symlink or "
                                    "missing); nothing outside the snapshot is read")
            with open(where, "rb") as handle:
                data = handle.read()
            if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise SnapshotError(f"{root}/{file}: size or sha256 differs from the manifest")
            chunk = load(data)
            if sorted(chunk) != sorted(entry["tensors"]) or set(chunk) & set(stored):
                raise SnapshotError(f"{root}/{file}: holds other tensors than the manifest lists "
                                    "for it")
            stored.update(chunk)
        aliases = {str(k): str(v) for k, v in manifest.get("aliases", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{root}: not a readable leaf snapshot ({exc})") from None
    _write_leaves(model, stored, aliases)
