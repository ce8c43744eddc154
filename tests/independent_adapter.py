"""A causal-LM adapter written independently, from the pytest-invarlock documentation alone.

``IndependentCausalAdapter`` implements the ``ModelAdapter`` protocol the way a third-party author
would: it loads decoder-only causal language models with transformers, describes their structure
from the module tree and the weights, and snapshots every parameter and buffer in safetensors
format (bytes, or a directory of size-bounded chunks with a manifest). It declares no capabilities,
so the suite holds it to ``snapshot_restore='full'``.

Snapshots carry no checksums: the protocol does not promise corruption detection, only that a
restore either fully succeeds or raises and leaves the model untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

#: The environment variable that must be "1" before remote (checkpoint-shipped) code may run.
ALLOW_REMOTE_CODE_ENV = "INVARLOCK_ALLOW_REMOTE_CODE"

BYTES_FORMAT = "independent-causal-snapshot-v1"
CHUNKED_FORMAT = "independent-causal-chunked-v1"
MANIFEST_NAME = "manifest.json"
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
#: Upper bound on a manifest we are willing to parse (names and sizes only, never tensor data).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK_NAME = re.compile(r"^chunk-[0-9]{5,}\.safetensors$")

StorageKey = tuple[object, ...]


class SnapshotError(ValueError):
    """A snapshot that cannot be restored into the given model (nothing was written)."""


# --------------------------------------------------------------------------------------------
# The model's tensors and their storage identity
# --------------------------------------------------------------------------------------------


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return every parameter and buffer (persistent or not) by name, tied names included."""
    found: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    for name, buf in model.named_buffers(remove_duplicate=False):
        found.setdefault(name, buf)
    return found


def storage_key(tensor: torch.Tensor) -> StorageKey:
    """Return what identifies the exact memory a tensor views (equal keys mean one tensor)."""
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return ("unique", id(tensor))
    return (str(tensor.device), tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tensor.stride(), tensor.dtype)


def group_by_storage(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Return the names grouped by shared storage, in first-seen order (singletons included)."""
    groups: dict[StorageKey, list[str]] = {}
    for name, tensor in named:
        groups.setdefault(storage_key(tensor), []).append(name)
    return list(groups.values())


def alias_map(groups: Iterable[list[str]]) -> dict[str, str]:
    """Map every name after the first of each group to the group's first name."""
    return {alias: group[0] for group in groups for alias in group[1:]}


# --------------------------------------------------------------------------------------------
# Structure (describe)
# --------------------------------------------------------------------------------------------

_ATTENTION_NAMES = ("self_attn", "self_attention", "attn", "attention")
_QUERY_NAMES = ("q_proj", "query", "q", "q_lin", "wq")
_FUSED_QKV_NAMES = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv", "wqkv")
_MLP_CONTAINER_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
_UP_NAMES = ("up_proj", "c_fc", "fc1", "dense_h_to_4h", "fc_in", "w1", "wi", "lin1")
_FUSED_UP_NAMES = ("gate_up_proj",)


def text_config(model: nn.Module) -> Any:
    """Return the language-model config of ``model`` (the config itself for text-only models)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no transformers config")
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _param_count(module: nn.Module) -> int:
    """Return the number of parameters of ``module``, shared storage counted once."""
    seen = {storage_key(p): p.numel() for _, p in module.named_parameters(remove_duplicate=False)}
    return sum(seen.values())


def find_layer_list(model: nn.Module) -> nn.ModuleList | None:
    """Return the transformer block list: the outermost, largest ModuleList of same-class blocks."""
    best: tuple[int, nn.ModuleList] | None = None
    taken: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f"{outer}.") for outer in taken):
            continue  # e.g. a list of experts inside a block
        if len({type(block) for block in module}) != 1:
            continue
        taken.append(name)
        size = _param_count(module)
        if size > 0 and (best is None or size > best[0]):
            best = (size, module)
    return best[1] if best else None


def _child(module: nn.Module, names: Iterable[str]) -> nn.Module | None:
    """Return the first direct child of ``module`` called one of ``names``."""
    children = dict(module.named_children())
    return next((children[n] for n in names if n in children), None)


def _int_attr(obj: object, names: Iterable[str]) -> int | None:
    """Return the first positive ``int`` attribute of ``obj`` among ``names``."""
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def out_width(module: nn.Module) -> int:
    """Return a projection's output width read off its weight (Conv1D stores ``(in, out)``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{type(module).__name__} has no 2-D weight to read a width from")
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: weight is (in, out)
        return int(weight.shape[1])
    return int(weight.shape[0])


def attention_module(layer: nn.Module) -> nn.Module:
    """Return the self-attention module of a transformer block."""
    found = _child(layer, _ATTENTION_NAMES)
    if found is not None:
        return found
    for _, module in layer.named_modules():
        if module is not layer and "attention" in type(module).__name__.lower():
            return module
    raise ValueError(f"{type(layer).__name__} has no attention module")


def _fused_query_heads(attn: nn.Module, total: int) -> int:
    """Return the query heads of a fused QKV projection holding ``total`` heads of Q, K and V."""
    kv = _int_attr(attn, ("num_key_value_heads", "num_kv_heads"))
    if kv is not None:
        return total - 2 * kv
    groups = _int_attr(attn, ("num_key_value_groups",))
    if groups is not None:  # heads = groups * kv, total = heads + 2 * kv
        return total * groups // (groups + 2)
    return total // 3  # plain multi-head attention


def query_heads(layer: nn.Module, config: Any) -> int:
    """Return the number of query heads of one block (module attributes, weights, then config)."""
    attn = attention_module(layer)
    heads = _int_attr(attn, ("num_heads", "num_attention_heads", "n_head", "n_heads"))
    if heads is not None:
        return heads
    head_dim = _int_attr(attn, ("head_dim", "head_size", "attention_head_size"))
    query = _child(attn, _QUERY_NAMES)
    if head_dim is not None and query is not None:
        return out_width(query) // head_dim
    fused = _child(attn, _FUSED_QKV_NAMES)
    if head_dim is not None and fused is not None:
        return _fused_query_heads(attn, out_width(fused) // head_dim)
    heads = _int_attr(config, ("num_attention_heads", "n_head", "num_heads"))
    if heads is None:
        raise ValueError(f"cannot tell the query heads of {type(attn).__name__}")
    return heads


def hidden_size(model: nn.Module) -> int:
    """Return the model width (the input embedding's dimension, else the config's)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    value = _int_attr(text_config(model), ("hidden_size", "n_embd", "d_model"))
    if value is None:
        raise ValueError(f"cannot tell the hidden size of {type(model).__name__}")
    return value


def _expert_width(experts: nn.Module, hidden: int) -> int:
    """Return the per-expert MLP width of an experts module (a list or fused 3-D weights)."""
    if isinstance(experts, nn.ModuleList):
        return block_mlp_width(experts[0], hidden)
    params = dict(experts.named_parameters(recurse=False))
    for name, fused in (("gate_up_proj", True), ("up_proj", False), ("w1", False)):
        weight = params.get(name)
        if weight is None or weight.dim() != 3:
            continue
        others = [int(d) for d in weight.shape[1:] if d != hidden]
        width = others[0] if len(others) == 1 else int(weight.shape[1])
        return width // 2 if fused else width
    raise ValueError(f"{type(experts).__name__} holds no expert up-projection weight")


def block_mlp_width(block: nn.Module, hidden: int) -> int:
    """Return the MLP hidden width of an MLP (or of a block holding its projections directly)."""
    experts = _child(block, ("experts",))
    if experts is not None:
        return _expert_width(experts, hidden)
    up = _child(block, _UP_NAMES)
    if up is not None:
        return out_width(up)
    fused = _child(block, _FUSED_UP_NAMES)
    if fused is not None:
        return out_width(fused) // 2
    raise ValueError(f"{type(block).__name__} has no recognisable MLP up-projection")


def mlp_width(layer: nn.Module, hidden: int) -> int:
    """Return the MLP hidden width of one transformer block (per expert for MoE blocks)."""
    container = _child(layer, _MLP_CONTAINER_NAMES)
    return block_mlp_width(container if container is not None else layer, hidden)


def parameter_ties(model: nn.Module) -> dict[str, str]:
    """Map each tied parameter name to the first name sharing its storage."""
    return alias_map(group_by_storage(model.named_parameters(remove_duplicate=False)))


def total_params(model: nn.Module) -> int:
    """Return the number of parameters, shared storage counted once."""
    return _param_count(model)


def model_device(model: nn.Module) -> str:
    """Return the device of the model's first parameter (``cpu`` for a model without any)."""
    first = next(iter(model.parameters()), None)
    return str(first.device) if first is not None else "cpu"


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------

_MULTIMODAL_CONFIG_FIELDS = ("vision_config", "audio_config", "speech_config", "vision_tower")


def _causal_class_names(transformers: Any) -> set[str]:
    """Return the class names transformers registers as causal language models."""
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    names: set[str] = set()
    for value in mapping.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def is_decoder_only_causal_lm(model: object) -> bool:
    """Return whether ``model`` is a transformers decoder-only causal LM with a block list."""
    transformers = sys.modules.get("transformers")  # a transformers model implies it is imported
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return False
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if any(getattr(config, field, None) is not None for field in _MULTIMODAL_CONFIG_FIELDS):
        return False
    name = type(model).__name__
    if not (name.endswith("ForCausalLM") or name in _causal_class_names(transformers)):
        return False
    layers = find_layer_list(model)
    if model.get_output_embeddings() is None or layers is None:
        return False
    return all(self_attention_is_causal(layer) for layer in layers)


def self_attention_is_causal(layer: nn.Module) -> bool:
    """Return False when a block's self-attention declares itself bidirectional.

    transformers attention modules carry ``is_causal``; encoder families that also ship a
    ``...ForCausalLM`` head (BERT, RoBERTa, ELECTRA) are bidirectional unless configured as
    decoders, which their ``is_causal = False`` reveals. No flag at all is taken as causal.
    """
    attn = attention_module(layer)
    flags = [m.is_causal for _, m in attn.named_modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return all(flags)


# --------------------------------------------------------------------------------------------
# Snapshot content and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """What a snapshot holds: one tensor per storage group, and the other names as aliases."""

    tensors: dict[str, torch.Tensor]
    aliases: dict[str, str]


def capture(model: nn.Module) -> Content:
    """Copy every parameter and buffer to the CPU, each shared storage once."""
    named = named_tensors(model)
    groups = group_by_storage(named.items())
    tensors: dict[str, torch.Tensor] = {}
    for group in groups:
        tensor = named[group[0]]
        if tensor.device.type == "meta":
            raise SnapshotError(f"{group[0]!r} is on the meta device and holds no data to save")
        tensors[group[0]] = tensor.detach().to("cpu", copy=True).contiguous()
    return Content(tensors, alias_map(groups))


def _few(names: Iterable[str], limit: int = 5) -> str:
    items = sorted(names)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(repr, items[:limit])) + more


def _check_aliases(content: Content) -> None:
    """Refuse aliases that point nowhere or collide with stored names."""
    dangling = {a for a, c in content.aliases.items() if c not in content.tensors}
    if dangling:
        raise SnapshotError(f"the snapshot aliases {_few(dangling)} to tensors it does not hold")
    clash = set(content.aliases) & set(content.tensors)
    if clash:
        raise SnapshotError(f"the snapshot stores {_few(clash)} both as tensors and as aliases")


def _check_names(content: Content, named: dict[str, torch.Tensor]) -> None:
    """Refuse a snapshot whose names are not exactly the model's parameters and buffers."""
    have = set(content.tensors) | set(content.aliases)
    missing, extra = set(named) - have, have - set(named)
    if missing or extra:
        parts = [f"missing {_few(missing)}"] if missing else []
        parts += [f"unexpected {_few(extra)}"] if extra else []
        raise SnapshotError(f"the snapshot does not match this model ({'; '.join(parts)}); it was "
                            "taken from a different architecture or configuration")


def _check_tensor(name: str, source: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse a stored tensor whose dtype or shape differs from the model's tensor."""
    if source.dtype != target.dtype:
        raise SnapshotError(f"{name!r} is {source.dtype} in the snapshot but {target.dtype} in the "
                            "model; restore into a model of the same dtypes")
    if tuple(source.shape) != tuple(target.shape):
        raise SnapshotError(f"{name!r} has shape {list(source.shape)} in the snapshot but "
                            f"{list(target.shape)} in the model")


def _check_model_ties(content: Content, named: dict[str, torch.Tensor]) -> None:
    """Refuse when names sharing storage in the model are stored separately in the snapshot."""
    for group in group_by_storage(named.items()):
        sources = {content.aliases.get(name, name) for name in group}
        if len(sources) > 1:
            raise SnapshotError(f"{_few(group)} share storage in the model but the snapshot holds "
                                "them as separate tensors; it was taken from a differently tied model")


@dataclass(frozen=True)
class Plan:
    """A validated restore: staged sources per model tensor, then the names to re-tie."""

    copies: list[tuple[torch.Tensor, torch.Tensor]]
    rebinds: list[tuple[str, str]]


def plan_restore(model: nn.Module, content: Content) -> Plan:
    """Validate ``content`` against ``model`` completely and stage every copy; write nothing."""
    named = named_tensors(model)
    _check_aliases(content)
    _check_names(content, named)
    for name, target in named.items():
        _check_tensor(name, content.tensors[content.aliases.get(name, name)], target)
    _check_model_ties(content, named)
    copies = [(named[name], source.to(named[name].device, copy=True))
              for name, source in content.tensors.items()]
    return Plan(copies, sorted(content.aliases.items()))


def _rebind(model: nn.Module, alias: str, canonical: str) -> None:
    """Make ``alias`` refer to the very tensor object behind ``canonical`` (re-tie)."""
    named = named_tensors(model)
    head, current = named[canonical], named[alias]
    if storage_key(head) == storage_key(current):
        return
    path, _, leaf = alias.rpartition(".")
    owner = model.get_submodule(path) if path else model
    if leaf in owner._parameters and isinstance(head, nn.Parameter):
        owner._parameters[leaf] = head
    elif leaf in owner._buffers and not isinstance(current, nn.Parameter):
        owner._buffers[leaf] = head
    else:  # a parameter tied to a plain buffer: keep the slot's type, copy the values
        with torch.no_grad():
            current.copy_(head)


def apply_plan(model: nn.Module, plan: Plan) -> None:
    """Copy the staged values into the model's own tensors in place, then re-tie aliases."""
    with torch.no_grad():
        for target, source in plan.copies:
            target.copy_(source)
    for alias, canonical in plan.rebinds:
        _rebind(model, alias, canonical)


# --------------------------------------------------------------------------------------------
# safetensors encoding
# --------------------------------------------------------------------------------------------


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Return ``tensors`` as one safetensors buffer with ``metadata``."""
    return safetensors.torch.save(tensors, metadata=metadata)


def read_header(blob: bytes, what: str) -> dict[str, Any]:
    """Return the JSON header of a safetensors buffer, refusing anything that is not one."""
    if len(blob) < 8:
        raise SnapshotError(f"{what} is {len(blob)} bytes, too short to be a safetensors snapshot")
    size = int.from_bytes(blob[:8], "little")
    if size < 2 or 8 + size > len(blob):
        raise SnapshotError(f"{what} is not a complete safetensors buffer (header of {size} bytes "
                            f"in {len(blob)}); it is truncated or not a snapshot (never unpickled)")
    try:
        header = json.loads(blob[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{what} has an unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise SnapshotError(f"{what} has a safetensors header that is not a JSON object")
    return header


def decode(blob: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the tensors and metadata of a safetensors buffer; refuse a malformed one."""
    header = read_header(blob, what)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise SnapshotError(f"{what} has malformed safetensors metadata")
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as exc:
        raise SnapshotError(f"{what} is not a valid safetensors buffer: {exc}") from None
    return tensors, metadata


def check_alias_map(aliases: object, what: str) -> dict[str, str]:
    """Return ``aliases`` if it is a JSON object of strings to strings; refuse it otherwise."""
    if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise SnapshotError(f"{what} has no valid alias map")
    return aliases


def parse_alias_map(text: object, what: str) -> dict[str, str]:
    """Return an alias map from its JSON text (safetensors metadata values are strings)."""
    try:
        aliases = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        aliases = None
    return check_alias_map(aliases, what)


def content_from_bytes(blob: bytes) -> Content:
    """Return the content of a bytes snapshot taken by this adapter."""
    tensors, metadata = decode(blob, "the snapshot")
    if metadata.get("format") != BYTES_FORMAT:
        raise SnapshotError(f"the snapshot's format is {metadata.get('format')!r}, expected "
                            f"{BYTES_FORMAT!r}; it was not written by IndependentCausalAdapter")
    return Content(tensors, parse_alias_map(metadata.get("aliases"), "the snapshot"))


def as_bytes(blob: object) -> bytes:
    """Return a bytes-like ``blob`` as ``bytes``; refuse anything else."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return bytes(blob)
    raise TypeError(f"restore() takes a bytes-like snapshot, got {type(blob).__name__}")


# --------------------------------------------------------------------------------------------
# Chunked snapshots on disk
# --------------------------------------------------------------------------------------------


def split_by_size(tensors: dict[str, torch.Tensor], chunk_bytes: int) -> list[list[str]]:
    """Split names into consecutive chunks of at most ``chunk_bytes`` (one tensor at least)."""
    chunks: list[list[str]] = [[]]
    used = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if chunks[-1] and used + size > chunk_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    return chunks


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that must not exist yet."""
    with open(path, "xb") as handle:
        handle.write(data)


def write_chunks(root: Path, content: Content, chunk_bytes: int) -> None:
    """Write ``content`` under ``root`` as safetensors chunks plus ``manifest.json``."""
    files = []
    for index, names in enumerate(split_by_size(content.tensors, chunk_bytes)):
        name = f"chunk-{index:05d}.safetensors"
        data = encode({n: content.tensors[n] for n in names}, {"format": CHUNKED_FORMAT})
        _write_new(root / name, data)
        files.append({"name": name, "bytes": len(data), "tensors": names})
    manifest = {"format": CHUNKED_FORMAT, "aliases": content.aliases, "files": files}
    _write_new(root / MANIFEST_NAME, json.dumps(manifest, indent=1).encode("utf-8"))


def read_regular_file(path: Path, what: str, limit: int | None = None) -> bytes:
    """Read a regular file inside the snapshot, refusing symlinks, missing and oversize files."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise SnapshotError(f"{what} is missing from the chunked snapshot") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise SnapshotError(f"{what} is a symlink or not a regular file; refusing to follow it")
    if limit is not None and info.st_size > limit:
        raise SnapshotError(f"{what} is {info.st_size} bytes, more than the {limit} allowed")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _check_file_entry(entry: object, seen: set[str]) -> dict[str, Any]:
    """Validate one manifest file entry: a plain chunk name, a size and a list of tensor names."""
    if not isinstance(entry, dict):
        raise SnapshotError("manifest.json lists a file entry that is not an object")
    name, size, names = entry.get("name"), entry.get("bytes"), entry.get("tensors")
    if not isinstance(name, str) or not _CHUNK_NAME.match(name) or name in seen:
        raise SnapshotError(f"manifest.json names the file {name!r}; only distinct plain names "
                            "like 'chunk-00000.safetensors' (no directories or path separators) "
                            "are accepted")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SnapshotError(f"manifest.json gives {name!r} the size {size!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SnapshotError(f"manifest.json lists no tensor names for {name!r}")
    seen.add(name)
    return entry


def read_manifest(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Return the validated file entries and aliases of a chunked snapshot's manifest."""
    raw = read_regular_file(root / MANIFEST_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHUNKED_FORMAT:
        raise SnapshotError(f"manifest.json is not a {CHUNKED_FORMAT!r} manifest")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise SnapshotError("manifest.json lists no chunk files")
    seen: set[str] = set()
    entries = [_check_file_entry(entry, seen) for entry in files]
    return entries, check_alias_map(manifest.get("aliases"), "manifest.json")


def read_chunk(root: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read and check one chunk: the manifest's size and exactly the manifest's tensor names."""
    name = entry["name"]
    data = read_regular_file(root / name, name, entry["bytes"])
    if len(data) != entry["bytes"]:
        raise SnapshotError(f"{name} is {len(data)} bytes, the manifest says {entry['bytes']}; "
                            "it is truncated or was replaced")
    tensors, metadata = decode(data, name)
    if metadata.get("format") != CHUNKED_FORMAT:
        raise SnapshotError(f"{name} is not a chunk of a {CHUNKED_FORMAT!r} snapshot")
    if set(tensors) != set(entry["tensors"]) or len(tensors) != len(entry["tensors"]):
        raise SnapshotError(f"{name} holds {_few(tensors)}, not the tensors the manifest lists")
    return tensors


def content_from_directory(path: str | os.PathLike[str]) -> Content:
    """Return the content of a chunked snapshot directory, validating every file first."""
    root = Path(path)
    if root.is_symlink() or not root.is_dir():
        raise SnapshotError(f"{str(root)!r} is not a snapshot directory (or is a symlink)")
    entries, aliases = read_manifest(root)
    tensors: dict[str, torch.Tensor] = {}
    for entry in entries:
        chunk = read_chunk(root, entry)
        repeated = set(chunk) & set(tensors)
        if repeated:
            raise SnapshotError(f"{entry['name']} repeats {_few(repeated)} from another chunk")
        tensors.update(chunk)
    return Content(tensors, aliases)


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    """Return where to put a freshly loaded model (``auto``: CUDA when usable, else CPU)."""
    if device is None:
        return None
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _remote_code_flag(requested: object) -> bool:
    """Return the trust_remote_code to pass on, refusing it unless the environment opts in."""
    if not requested:
        return False
    if os.environ.get(ALLOW_REMOTE_CODE_ENV) != "1":
        raise PermissionError(f"trust_remote_code=True would run Python code shipped with the "
                              f"checkpoint; set {ALLOW_REMOTE_CODE_ENV}=1 to allow it")
    return True


class IndependentCausalAdapter:
    """Adapter for transformers decoder-only causal language models (see the module docstring)."""

    name = "independent_causal"

    def load_model(self, model_id: str, device: str | torch.device | None = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load ``model_id`` with ``AutoModelForCausalLM``, passing every keyword through.

        ``trust_remote_code=True`` is refused unless ``INVARLOCK_ALLOW_REMOTE_CODE=1``; otherwise
        ``trust_remote_code=False`` is always passed. The model moves to ``device`` unless a
        ``device_map`` places it, and is returned in eval mode.
        """
        from transformers import AutoModelForCausalLM

        kwargs = dict(hf_kwargs)
        kwargs["trust_remote_code"] = _remote_code_flag(kwargs.pop("trust_remote_code", False))
        model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
        target = _resolve_device(device)
        if kwargs.get("device_map") is None and target is not None:
            model.to(target)
        model.eval()
        return model

    def can_handle(self, model: Any) -> bool:
        """Return whether ``model`` is a decoder-only causal LM; never raises."""
        try:
            return is_decoder_only_causal_lm(model)
        except Exception:
            return False

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Return the structure of ``model``, read off its module tree, weights and storage."""
        layers = find_layer_list(model)
        if layers is None:
            raise ValueError(f"{type(model).__name__} has no list of transformer blocks")
        config = text_config(model)
        hidden = hidden_size(model)
        return {
            "n_layer": len(layers),
            "heads_per_layer": [query_heads(layer, config) for layer in layers],
            "mlp_dims": [mlp_width(layer, hidden) for layer in layers],
            "tying": parameter_ties(model),
            "model_type": str(config.model_type),
            "model_class": type(model).__name__,
            "total_params": total_params(model),
            "device": model_device(model),
        }

    def snapshot(self, model: nn.Module) -> bytes:
        """Return every parameter and buffer as one safetensors buffer (ties stored once)."""
        content = capture(model)
        metadata = {"format": BYTES_FORMAT, "aliases": json.dumps(content.aliases, sort_keys=True)}
        return encode(content.tensors, metadata)

    def restore(self, model: nn.Module, blob: bytes) -> None:
        """Validate ``blob`` against ``model`` completely, then copy it in place; all or nothing."""
        plan = plan_restore(model, content_from_bytes(as_bytes(blob)))
        apply_plan(model, plan)

    def snapshot_chunked(self, model: nn.Module, *, prefix: str = "independent-",
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
        """Write a chunked snapshot into a new temporary directory and return its path."""
        if os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ValueError(f"prefix {prefix!r} must not contain a path separator")
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        content = capture(model)
        root = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            write_chunks(root, content, chunk_bytes)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return str(root)

    def restore_chunked(self, model: nn.Module, path: str | os.PathLike[str]) -> None:
        """Validate the chunked snapshot at ``path`` completely, then copy it in; all or nothing."""
        plan = plan_restore(model, content_from_directory(path))
        apply_plan(model, plan)
