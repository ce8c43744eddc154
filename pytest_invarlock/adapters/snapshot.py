"""Snapshot and restore every parameter and buffer of a module, in the safetensors format.

A bytes snapshot is one safetensors buffer; a chunked snapshot is a directory holding
``manifest.json`` and safetensors chunk files. Both are loadable by the ``safetensors`` library,
never use pickle, store each tied group once (the other names are listed as aliases), and are
validated in full (names, shapes, dtypes, checksums) before the model is touched.

Checksums are xxh3_128 (the ``xxhash`` library): per tensor in a bytes snapshot's metadata, per
chunk file in a chunked snapshot's manifest, each recorded under its algorithm's name. Snapshots
written before the switch (crc32 per tensor, sha256 per chunk) still restore.

Data is copied straight between the model's tensors and the destination memory (a preallocated
buffer, or a file through ``write``/``readinto``), so the extra memory is the snapshot itself for
bytes snapshots and about one tensor for chunked ones. A chunked restore opens each chunk file
once, verifies it through that handle and copies from the same handle, so a chunk file replaced
after it was verified is never read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import xxhash
from torch import nn

from pytest_invarlock.errors import SnapshotError

T = TypeVar("T")

FORMAT = "invarlock-snapshot-v1"
CHUNKED_FORMAT = "invarlock-chunked-snapshot-v1"
MANIFEST = "manifest.json"
DEFAULT_CHUNK_BYTES = 512 * 1024 * 1024
_ALIGN = 8
_HEADER_LIMIT = 100 * 1024 * 1024
_CHUNK_NAME = re.compile(r"^chunk-[0-9]{5}\.safetensors$")
#: Bytes hashed per read (verifying) or write (snapshotting) of a chunk: small enough to stay in
#: the CPU cache between the hash and the copy, large enough to keep system calls few.
_HASH_BLOCK = 1024 * 1024
#: The most bytes one read/pread call is asked for (Linux caps a call just under 2 GiB).
_MAX_READ = 1 << 30


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


#: The checksum written now: xxh3_128 runs at memory speed and releases the GIL.
CHECKSUM = "xxh3_128"
#: Chunk checksums a manifest may carry, preferred first (sha256: snapshots from before xxh3).
_CHUNK_HASHES: dict[str, Callable[[], _Hasher]] = {"xxh3_128": xxhash.xxh3_128,
                                                    "sha256": hashlib.sha256}
#: Per-tensor checksums a bytes snapshot may carry, preferred first (crc32: before xxh3).
_TENSOR_HASHES: dict[str, Callable[[memoryview], str]] = {
    "xxh3_128": xxhash.xxh3_128_hexdigest,
    "crc32": lambda data: f"{zlib.crc32(data):08x}",
}

_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_DTYPES: dict[str, torch.dtype] = {code: dtype for dtype, code in _CODES.items()}


@dataclass(frozen=True)
class Spec:
    """Where one tensor lies in a snapshot and what it must match in the model."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Return the size of the tensor's data in bytes."""
        return self.end - self.begin


@dataclass(frozen=True)
class Slot:
    """A named tensor of the live model and whether it is a parameter or a buffer."""

    name: str
    tensor: torch.Tensor
    is_parameter: bool


# --------------------------------------------------------------------------- model side


def model_slots(model: nn.Module) -> dict[str, Slot]:
    """Return every parameter and buffer of ``model`` by name, tied names included."""
    slots = {n: Slot(n, p, True) for n, p in model.named_parameters(remove_duplicate=False)}
    for name, buf in model.named_buffers(remove_duplicate=False):
        slots.setdefault(name, Slot(name, buf, False))
    return slots


def _storage_key(t: torch.Tensor) -> tuple[object, ...]:
    if t.numel() == 0:
        return ("empty", id(t))
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype,
            tuple(t.shape), t.stride())


def unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the tensors to store (first name of each shared storage) and alias -> stored name."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[object, ...], str] = {}
    for name, slot in model_slots(model).items():
        key = _storage_key(slot.tensor)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            stored[name] = slot.tensor
    return stored, aliases


def _code(t: torch.Tensor, name: str) -> str:
    try:
        return _CODES[t.dtype]
    except KeyError:
        raise SnapshotError(f"tensor {name!r} has dtype {t.dtype}, which snapshots cannot hold") from None


# --------------------------------------------------------------------------- layout


def _layout(tensors: dict[str, torch.Tensor]) -> list[Spec]:
    """Order tensors by element size (keeps every offset aligned) then name, and place them."""
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    specs, offset = [], 0
    for name in order:
        t = tensors[name]
        _code(t, name)
        nbytes = t.numel() * t.element_size()
        specs.append(Spec(name, t.dtype, tuple(t.shape), offset, offset + nbytes))
        offset += nbytes
    return specs


def _header_bytes(specs: list[Spec], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    for s in specs:
        header[s.name] = {"dtype": _CODES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [s.begin, s.end]}
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return raw + b" " * (-(len(raw) + 8) % _ALIGN)


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    """Return the tensor's bytes as a flat uint8 CPU tensor (a view when already on the CPU)."""
    flat = t.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.contiguous().view(torch.uint8)


def _memory(t: torch.Tensor) -> memoryview:
    """Return the memory of a contiguous CPU tensor as a memoryview (``memoryview(t.numpy())``)."""
    return t.numpy().data


def _raw_bytes(t: torch.Tensor) -> memoryview | None:
    """Return a writable byte view of a contiguous CPU tensor's memory, else None."""
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg():
        return None
    return _memory(t.detach().reshape(-1).view(torch.uint8))


def _copy_into(dest: torch.Tensor, src: torch.Tensor | memoryview) -> None:
    """Copy ``src`` (a tensor, or raw bytes) into ``dest`` of the same shape and dtype.

    Between contiguous CPU memory this is one memcpy: ``Tensor.copy_`` fans out to OpenMP
    threads, which spin-wait and run several times slower when the cores are busy (pytest-xdist
    workers, CI neighbours).
    """
    out = _raw_bytes(dest)
    raw = src if isinstance(src, memoryview) else _raw_bytes(src)
    if out is not None and raw is not None:
        out[:] = raw
        return
    if isinstance(src, memoryview):
        src = _frombuffer(src, dest.dtype, dest.numel(), 0).view(dest.shape)
    with torch.no_grad():
        dest.copy_(src.detach())


def _frombuffer(buf: object, dtype: torch.dtype, count: int, offset: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only bytes: we only ever read them
        return torch.frombuffer(buf, dtype=dtype, count=count, offset=offset)


# --------------------------------------------------------------------------- bytes snapshots


def snapshot_bytes(model: nn.Module) -> memoryview:
    """Return ``model``'s parameters and buffers as one read-only safetensors buffer.

    The buffer is allocated uninitialised (``bytearray(n)`` would zero-fill, touching every page
    once more) and each tensor is copied straight into its slot, from any device.
    """
    tensors, aliases = unique_tensors(model)
    specs = _layout(tensors)
    digest = _TENSOR_HASHES[CHECKSUM]
    blank = "0" * len(digest(memoryview(b"")))
    header = _header_bytes(specs, _metadata(aliases, {s.name: blank for s in specs}))
    start = 8 + len(header)
    out = torch.empty(start + (specs[-1].end if specs else 0), dtype=torch.uint8)
    view = _memory(out)
    digests: dict[str, str] = {}
    for s in specs:
        if s.nbytes:
            _copy_into(out[start + s.begin:start + s.end].view(s.dtype).view(s.shape),
                       tensors[s.name])
        digests[s.name] = digest(view[start + s.begin:start + s.end])
    final = _header_bytes(specs, _metadata(aliases, digests))
    assert len(final) == len(header)
    view[:start] = len(final).to_bytes(8, "little") + final
    return view.toreadonly()


def _metadata(aliases: dict[str, str], digests: dict[str, str]) -> dict[str, str]:
    return {"format": FORMAT, "aliases": json.dumps(aliases, sort_keys=True),
            CHECKSUM: json.dumps(digests, sort_keys=True)}


def _parse_header(raw: bytes | memoryview, total: int, where: str) -> tuple[dict[str, str], list[Spec], int]:
    """Parse a safetensors header; return metadata, tensor specs and where the data begins."""
    if total < 8:
        raise SnapshotError(f"{where} is {total} bytes, too short to be a snapshot (truncated?)")
    n = int.from_bytes(raw[:8], "little")
    if n > min(total - 8, _HEADER_LIMIT):
        raise SnapshotError(f"{where} is not an invarlock snapshot: its first 8 bytes announce a "
                            f"{n}-byte header but only {total - 8} bytes follow (truncated, or "
                            "not a safetensors file; pickle files are never loaded)")
    try:
        header = json.loads(bytes(raw[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{where} has an unreadable header ({exc}); it is not a snapshot "
                            "written by this adapter") from None
    if not isinstance(header, dict):
        raise SnapshotError(f"{where} has a header that is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise SnapshotError(f"{where} has no __metadata__; it is not an invarlock snapshot")
    specs = [_spec(name, entry, where) for name, entry in header.items()]
    specs.sort(key=lambda s: s.begin)
    _check_tiling(specs, total - 8 - n, where)
    return meta, specs, 8 + n


def _spec(name: str, entry: object, where: str) -> Spec:
    fields: dict[str, object] = entry if isinstance(entry, dict) else {}
    code, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if not (isinstance(entry, dict) and code in _DTYPES
            and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)):
        raise SnapshotError(f"{where}: header entry for {name!r} is malformed: {entry!r}")
    dtype = _DTYPES[code]
    spec = Spec(name, dtype, tuple(shape), offsets[0], offsets[1])
    numel = 1
    for d in spec.shape:
        numel *= d
    if spec.nbytes != numel * dtype.itemsize or spec.begin < 0:
        raise SnapshotError(f"{where}: tensor {name!r} claims {spec.nbytes} bytes for shape "
                            f"{list(spec.shape)} of {dtype}; the header was tampered with")
    return spec


def _check_tiling(specs: list[Spec], data_len: int, where: str) -> None:
    offset = 0
    for s in specs:
        if s.begin != offset:
            raise SnapshotError(f"{where}: tensor {s.name!r} starts at byte {s.begin}, expected "
                                f"{offset}; the header was tampered with")
        offset = s.end
    if offset != data_len:
        raise SnapshotError(f"{where}: header describes {offset} bytes of data but {data_len} are "
                            "present (truncated or padded file)")


def _parse_meta(meta: dict[str, str], expected_format: str, where: str) -> tuple[
        dict[str, str], str, dict[str, str]]:
    """Return the aliases, the per-tensor checksum algorithm and its digests by tensor name."""
    if meta.get("format") != expected_format:
        raise SnapshotError(f"{where} has format {meta.get('format')!r}, expected "
                            f"{expected_format!r}; take snapshots with this adapter's snapshot()")
    algorithm = next((a for a in _TENSOR_HASHES if a in meta), None)
    if algorithm is None:
        raise SnapshotError(f"{where} carries no checksum table (one of {list(_TENSOR_HASHES)}); "
                            "it is not a snapshot written by this adapter")
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
        digests = json.loads(meta[algorithm])
    except json.JSONDecodeError:
        raise SnapshotError(f"{where}: unreadable alias or checksum table") from None
    if not (isinstance(aliases, dict) and isinstance(digests, dict)):
        raise SnapshotError(f"{where}: the alias and checksum tables must be JSON objects")
    return aliases, algorithm, digests


def restore_bytes(model: nn.Module, blob: bytes | bytearray | memoryview) -> None:
    """Restore a buffer written by :func:`snapshot_bytes`; validate everything first."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"restore() takes a bytes-like snapshot, got {type(blob).__name__}")
    where = "snapshot"
    meta, specs, start = _parse_header(memoryview(blob)[:_HEADER_LIMIT + 8], len(blob), where)
    aliases, algorithm, digests = _parse_meta(meta, FORMAT, where)
    digest = _TENSOR_HASHES[algorithm]
    view = memoryview(blob)
    for s in specs:
        got = digest(view[start + s.begin:start + s.end])
        if digests.get(s.name) != got:
            raise SnapshotError(f"snapshot tensor {s.name!r} fails its {algorithm} checksum "
                                f"({got} != {digests.get(s.name)!r}): the snapshot was corrupted "
                                "or tampered with; take a new snapshot")
    plan = _plan(model, specs, aliases, where)
    for spec, target in plan:
        if spec.nbytes:
            _copy_into(target, view[start + spec.begin:start + spec.end])
    _rebind_aliases(model, aliases)


# --------------------------------------------------------------------------- validation


def _plan(model: nn.Module, specs: list[Spec], aliases: dict[str, str],
          where: str) -> list[tuple[Spec, torch.Tensor]]:
    """Check the snapshot against the model and return (spec, destination) pairs; touch nothing."""
    slots = model_slots(model)
    by_name = {s.name: s for s in specs}
    _check_names(set(slots), set(by_name) | set(aliases), model, where)
    for alias, stored in aliases.items():
        if stored not in by_name:
            raise SnapshotError(f"{where}: alias {alias!r} points at {stored!r}, which the "
                                "snapshot does not hold; the snapshot was tampered with")
        _check_match(by_name[stored], slots[alias].tensor, where, alias)
    order = {name: i for i, name in enumerate(slots)}
    ordered = sorted(specs, key=lambda s: order[s.name])
    for spec in ordered:  # every check passes before anything below changes the model
        _check_match(spec, slots[spec.name].tensor, where, spec.name)
    plan, claimed = [], set()
    for spec in ordered:
        target = slots[spec.name].tensor
        key = _storage_key(target)
        if key in claimed:
            target = _untie(model, slots[spec.name])
        claimed.add(key)
        plan.append((spec, target))
    return plan


def _check_names(have: set[str], stored: set[str], model: nn.Module, where: str) -> None:
    extra, missing = sorted(stored - have), sorted(have - stored)
    if not (extra or missing):
        return
    parts = []
    if extra:
        parts.append(f"keys not in the model: {_few(extra)}")
    if missing:
        parts.append(f"model keys missing from the snapshot: {_few(missing)}")
    raise SnapshotError(f"{where} does not fit this {type(model).__name__}: {'; '.join(parts)}. "
                        "It was taken from a different architecture or configuration; restore "
                        "it only into the model it was taken from")


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_match(spec: Spec, target: torch.Tensor, where: str, name: str) -> None:
    if tuple(target.shape) != spec.shape:
        raise SnapshotError(f"{where}: key {name!r} has shape {list(spec.shape)} but the model's "
                            f"tensor has shape {list(target.shape)}; the snapshot was taken from "
                            "a different configuration")
    if target.dtype != spec.dtype:
        raise SnapshotError(f"{where}: key {name!r} is {spec.dtype} but the model's tensor is "
                            f"{target.dtype}; the model's dtype changed since the snapshot (e.g. "
                            f".half()): convert it back with model.to({spec.dtype}) and restore")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def _untie(model: nn.Module, slot: Slot) -> torch.Tensor:
    """Give ``slot`` its own storage (the snapshot stores it apart from the tensor it shares)."""
    owner, leaf = _owner(model, slot.name)
    fresh = torch.empty_like(slot.tensor)
    if slot.is_parameter:
        owner._parameters[leaf] = nn.Parameter(fresh, requires_grad=slot.tensor.requires_grad)
    else:
        owner._buffers[leaf] = fresh
    return fresh


def _rebind_aliases(model: nn.Module, aliases: dict[str, str]) -> None:
    """Point every alias at its stored tensor's object, so tied names share one storage again."""
    slots = model_slots(model)
    for alias, stored in aliases.items():
        owner, leaf = _owner(model, alias)
        target = slots[stored].tensor
        if slots[alias].is_parameter and isinstance(target, nn.Parameter):
            owner._parameters[leaf] = target
        else:
            owner._buffers[leaf] = target


# --------------------------------------------------------------------------- chunked snapshots


def snapshot_chunked(model: nn.Module, *, prefix: str = "invarlock-snap-",
                     directory: str | os.PathLike[str] | None = None,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """Write ``model`` to a new directory of safetensors chunks plus a manifest; return its path."""
    tensors, aliases = unique_tensors(model)
    out = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    chunks = []
    for index, group in enumerate(size_groups(_layout(tensors), lambda s: s.nbytes, chunk_bytes)):
        chunks.append(_write_chunk(out / f"chunk-{index:05d}.safetensors", group, tensors))
    manifest = {"format": CHUNKED_FORMAT, "aliases": aliases, "chunks": chunks}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
    return str(out)


def size_groups(items: list[T], nbytes: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Split ``items``, in order, into runs of at most ``limit`` bytes (one item may exceed it).

    No items give one empty run: a snapshot of nothing is still one (empty) chunk.
    """
    group: list[T] = []
    size = 0
    for item in items:
        if group and size + nbytes(item) > limit:
            yield group
            group, size = [], 0
        group.append(item)
        size += nbytes(item)
    if group or not items:
        yield group


def _write_chunk(path: Path, group: list[Spec], tensors: dict[str, torch.Tensor]) -> dict[
        str, object]:
    base = group[0].begin if group else 0
    local = [Spec(s.name, s.dtype, s.shape, s.begin - base, s.end - base) for s in group]
    header = _header_bytes(local, {"format": FORMAT + "-chunk"})
    digest = _CHUNK_HASHES[CHECKSUM]()
    with open(path, "xb", buffering=0) as f:
        for head in (len(header).to_bytes(8, "little"), header):
            _write_all(f, memoryview(head))
            digest.update(head)
        for s in local:
            data = _memory(_byte_view(tensors[s.name]))
            for at in range(0, len(data), _HASH_BLOCK):
                piece = data[at:at + _HASH_BLOCK]
                digest.update(piece)  # brings the piece into the cache for the write below
                _write_all(f, piece)
        size = f.tell()
    return {"file": path.name, CHECKSUM: digest.hexdigest(), "bytes": size,
            "tensors": [s.name for s in local]}


def _write_all(f: io.FileIO, data: memoryview) -> None:
    while data:
        written = f.write(data[:_MAX_READ])
        if not written:
            raise SnapshotError(f"{f.name}: the write made no progress (disk full?)")
        data = data[written:]


@dataclass(frozen=True)
class _Chunk:
    """A chunk file opened once and verified through that handle; ``specs`` are file offsets."""

    file: Path
    handle: io.FileIO
    specs: list[Spec]


def restore_chunked(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Restore a directory written by :func:`snapshot_chunked`; validate everything first.

    Each chunk file is opened exactly once. Its size, checksum and header are verified through
    that handle, and after every chunk and the whole plan (names, shapes, dtypes against the
    model) have passed, the tensors are read from the same handles straight into the model. A
    file swapped in under a chunk's name once it was opened is therefore never read.
    """
    root = Path(path)
    manifest = _read_manifest(root)
    aliases = manifest["aliases"]
    with ExitStack() as stack:
        chunks = [_open_chunk(root, entry, stack) for entry in manifest["chunks"]]
        located = [(chunk, spec) for chunk in chunks for spec in chunk.specs]
        names = [spec.name for _, spec in located]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise SnapshotError(f"{root}: tensors {_few(dup)} appear in more than one chunk")
        home = {spec.name: (index, chunk) for index, chunk in enumerate(chunks)
                for spec in chunk.specs}
        plan = _plan(model, [s for _, s in located], aliases, str(root))
        # Nothing above changed the model; from here on only reads of verified handles remain.
        plan.sort(key=lambda item: (home[item[0].name][0], item[0].begin))  # file order
        staging = _Staging()
        for spec, target in plan:
            _read_into(home[spec.name][1], spec, target, staging)
    _rebind_aliases(model, aliases)


def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    if not root.is_dir() or not file.is_file() or file.is_symlink():
        raise SnapshotError(f"{root} is not a chunked snapshot: {file} is missing (was the "
                            "snapshot interrupted, or is this the wrong directory?)")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{file} is not valid JSON ({exc})") from None
    if not (isinstance(manifest, dict) and manifest.get("format") == CHUNKED_FORMAT
            and isinstance(manifest.get("chunks"), list)
            and isinstance(manifest.get("aliases"), dict)):
        raise SnapshotError(f"{file} is not an {CHUNKED_FORMAT!r} manifest; take snapshots with "
                            "snapshot_chunked()")
    files = [c.get("file") if isinstance(c, dict) else None for c in manifest["chunks"]]
    for name in files:
        if not isinstance(name, str) or not _CHUNK_NAME.match(name):
            raise SnapshotError(f"{file}: chunk file name {name!r} is not allowed: only "
                                "'chunk-NNNNN.safetensors' inside the snapshot directory")
    if len(set(files)) != len(files):
        raise SnapshotError(f"{file}: a chunk file is listed twice")
    return manifest


_HAS_PREADV = hasattr(os, "preadv")
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _open_chunk(root: Path, entry: dict[str, Any], stack: ExitStack) -> _Chunk:
    """Open one chunk file (once), verify it through the handle and return the open chunk."""
    file = root / entry["file"]
    try:
        # O_NOFOLLOW refuses a symlink and O_NONBLOCK keeps a FIFO from blocking the open
        fd = os.open(file, _OPEN_FLAGS)
    except OSError as exc:
        raise SnapshotError(f"chunk {file} cannot be opened ({exc.strerror}): it is missing or "
                            "not a regular file; take a new snapshot") from None
    handle = stack.enter_context(io.FileIO(fd, "rb", closefd=True))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SnapshotError(f"chunk {file} is not a regular file")
    size = info.st_size
    if size != entry.get("bytes"):
        raise SnapshotError(f"chunk {file} is {size} bytes, the manifest says {entry.get('bytes')}"
                            " (truncated or replaced); take a new snapshot")
    algorithm = next((a for a in _CHUNK_HASHES if isinstance(entry.get(a), str)), None)
    if algorithm is None:
        raise SnapshotError(f"{root / MANIFEST}: chunk {entry['file']!r} records no checksum "
                            f"(one of {list(_CHUNK_HASHES)}); take a new snapshot")
    head = _pread_bytes(handle, min(size, 8), 0)
    n = int.from_bytes(head, "little") if len(head) == 8 else 0
    raw = head + _pread_bytes(handle, min(n, _HEADER_LIMIT, size - len(head)), len(head))
    digest = _CHUNK_HASHES[algorithm]()
    digest.update(raw)  # the header bytes parsed below are the very bytes hashed here
    _hash_range(handle, digest, len(raw), size, f"chunk {file}")
    if digest.hexdigest() != entry[algorithm]:
        raise SnapshotError(f"chunk {file} fails its {algorithm} checksum: it was corrupted or "
                            "tampered with; take a new snapshot")
    meta, specs, start = _parse_header(raw, size, f"chunk {file}")
    listed = entry.get("tensors")
    held = {s.name for s in specs}
    if meta.get("format") != FORMAT + "-chunk" or not isinstance(listed, list) or set(
            map(str, listed)) != held or len(listed) != len(held):
        raise SnapshotError(f"chunk {file} does not hold the tensors its manifest lists")
    return _Chunk(file, handle, [Spec(s.name, s.dtype, s.shape, start + s.begin, start + s.end)
                                 for s in specs])


def _pread_into(handle: io.FileIO, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` of the open file; return the bytes read (fewer at EOF)."""
    done = 0
    while done < len(view):
        piece = view[done:done + _MAX_READ]
        if _HAS_PREADV:
            got = os.preadv(handle.fileno(), [piece], offset + done)
        else:  # pragma: no cover - Windows has no pread
            handle.seek(offset + done)
            got = handle.readinto(piece) or 0
        if not got:
            break
        done += got
    return done


def _pread_bytes(handle: io.FileIO, count: int, offset: int) -> bytes:
    buf = bytearray(count)
    got = _pread_into(handle, memoryview(buf), offset)
    return bytes(buf[:got])


def _hash_range(handle: io.FileIO, digest: _Hasher, begin: int, end: int, where: str) -> None:
    """Feed bytes ``begin:end`` of the open file to ``digest`` through one cache-sized buffer."""
    block = memoryview(bytearray(_HASH_BLOCK))
    offset = begin
    while offset < end:
        got = _pread_into(handle, block[:min(_HASH_BLOCK, end - offset)], offset)
        if not got:
            raise SnapshotError(f"{where} ended at byte {offset} while being verified ({end} "
                                "expected): it was truncated; take a new snapshot")
        digest.update(block[:got])
        offset += got


class _Staging:
    """One reusable bounce buffer for targets that cannot be read into directly."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, nbytes: int) -> torch.Tensor:
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = None  # free the smaller one first: at most one tensor's worth is held
            self.buffer = torch.empty(nbytes, dtype=torch.uint8)
        return self.buffer[:nbytes]


def _read_into(chunk: _Chunk, spec: Spec, target: torch.Tensor, staging: _Staging) -> None:
    """Read one tensor's bytes from the verified handle straight into ``target``.

    CPU contiguous targets are read into directly; others go through one bounded staging buffer.
    """
    if not spec.nbytes:
        return
    direct = target.device.type == "cpu" and target.is_contiguous()
    dest = target.detach().view(-1).view(torch.uint8) if direct else staging.take(spec.nbytes)
    if _pread_into(chunk.handle, _memory(dest), spec.begin) != spec.nbytes:
        raise SnapshotError(f"chunk {chunk.file} was truncated in place after it was verified: "
                            f"tensor {spec.name!r} is short and the model is partly restored; "
                            "restore another snapshot or reload the model")
    if not direct:
        _copy_into(target, dest.view(spec.dtype).view(spec.shape))
