"""Say in one line what is wrong with a checkpoint directory, without loading it.

When ``--invarlock-model`` points at a broken checkpoint, the loader's own error is often
misleading (a truncated ``model.safetensors`` surfaces as a missing-weights warning, a header
error, or a failure deep inside an adapter). :func:`diagnose` reads only ``config.json``, the
``*.safetensors.index.json`` files and the *headers* of the ``*.safetensors`` files, so it is
cheap enough to run on every load failure, and it reports only what is certain to break loading:
a defect that ``json`` or the ``safetensors`` library itself would refuse. Anything it does not
understand (``.bin`` or GGUF weights, a missing ``config.json``, unknown dtypes, extra files) is
left to the loader, because a third-party adapter may load formats this module does not know.

This module never imports torch or transformers and never reads tensor data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["diagnose", "one_line"]

# safetensors refuses headers larger than this (``MAX_HEADER_SIZE`` in safetensors/src/tensor.rs).
_MAX_HEADER_BYTES = 100_000_000
_LENGTH_PREFIX_BYTES = 8

# Bytes per element of the safetensors dtypes whose size is a whole number of bytes. Sub-byte
# dtypes (F4, F6_*, packed ints) and dtypes added by later safetensors releases are absent on
# purpose: their size rules vary between releases, so their tensors are not size-checked.
_DTYPE_BYTES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1,
    "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

_MAX_LINE = 300
_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"

# A JSON document that could not be judged (too deep, absurd numbers): neither valid nor broken.
_UNJUDGED: Any = object()


def diagnose(path: str | os.PathLike[str]) -> str | None:
    """Return ``"<file>: <cause>"`` for the first definite defect of checkpoint ``path``, else None.

    None means "nothing is certainly wrong", not "the checkpoint loads": the caller still shows
    the loader's error. Files are checked in a fixed order (``config.json``, the safetensors index
    files, the safetensors files, each group by name) so the answer is reproducible. A path that
    is not a directory gives None: the caller reports that itself, more clearly.
    """
    root = Path(path)
    if not root.is_dir():
        return None
    for name, check in _planned_checks(root):
        problem = check(root / name)
        if problem is not None:
            return f"{_show(name)}: {problem}"
    return None


def one_line(exc: BaseException) -> str:
    """Return ``"TypeName: first non-empty line of the message"``, at most ~300 characters.

    Error messages that quote a loader's exception must stay one line: a traceback or a chained
    ``__cause__`` would bury the finding it is meant to support, so both are left out.
    """
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the original error
        text = ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{name}: {first}" if first else name
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 1] + _ELLIPSIS


def _planned_checks(root: Path) -> Iterator[tuple[str, Callable[[Path], str | None]]]:
    """Yield (file name, check) pairs in the order their defects are reported."""
    names = _top_level_files(root)
    if "config.json" in names:
        yield "config.json", _config_problem
    for name in sorted(names):
        if name.endswith(".safetensors.index.json"):
            yield name, _index_problem
    for name in sorted(names):
        if name.endswith(".safetensors"):
            yield name, _safetensors_problem


def _top_level_files(root: Path) -> set[str]:
    """Return the regular files directly in ``root``, hidden ones excluded.

    Hidden files (macOS ``._model.safetensors`` resource forks, editor backups) are never loaded,
    so a defect in them says nothing about the checkpoint. FIFOs and sockets are skipped because
    reading them could block. An unlistable directory gives an empty set: the loader will say so.
    """
    try:
        with os.scandir(root) as entries:
            return {entry.name for entry in entries if not entry.name.startswith(".") and _is_file(entry)}
    except OSError:
        return set()


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Return whether a directory entry is (or links to) a regular file, False when unsure."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _config_problem(file: Path) -> str | None:
    """Return why ``config.json`` cannot be read as a JSON object, or None."""
    problem, document = _load_json(file)
    if problem is not None:
        return problem
    if document is not _UNJUDGED and not isinstance(document, dict):
        return f"not a JSON object (top level is {_json_kind(document)})"
    return None


def _index_problem(file: Path) -> str | None:
    """Return why a ``*.safetensors.index.json`` cannot serve its shards, or None.

    Loaders read ``weight_map`` (tensor name -> shard file, relative to the checkpoint) and open
    every shard it names, so a shard named there but absent is certain to fail the load.
    """
    problem, document = _load_json(file)
    if problem is not None or document is _UNJUDGED:
        return problem
    if not isinstance(document, dict):
        return f"not a JSON object (top level is {_json_kind(document)})"
    weight_map = document.get("weight_map")
    if not isinstance(weight_map, dict):
        return "has no weight_map object"
    shards = sorted({shard for shard in weight_map.values() if isinstance(shard, str)})
    for shard in shards:
        target = file.parent / shard
        if not target.is_file():
            state = "is not a file" if target.exists() else "does not exist"
            return f"weight_map names {_show(shard)}, which {state}"
    return None


def _load_json(file: Path) -> tuple[str | None, Any]:
    """Read ``file`` as UTF-8 JSON: return (problem, None) or (None, document).

    The document is ``_UNJUDGED`` when Python's parser gave up for reasons that say nothing
    certain about the file (nesting too deep, integers too long to convert).
    """
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return f"unreadable ({_os_reason(exc)})", None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc.reason} at byte {exc.start})", None
    if not text.strip():
        return "empty file", None
    try:
        return None, json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})", None
    except (ValueError, RecursionError):
        return None, _UNJUDGED


def _safetensors_problem(file: Path) -> str | None:
    """Return why safetensors would refuse ``file``, or None; reads the header only.

    A safetensors file is an 8-byte little-endian header length N, N bytes of JSON header, then
    the tensor data, which must be exactly as long as the header's offsets say.
    """
    try:
        with file.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size < _LENGTH_PREFIX_BYTES:
                return f"file is {size} bytes, too short for the 8-byte header length"
            (length,) = struct.unpack("<Q", stream.read(_LENGTH_PREFIX_BYTES))
            problem = _header_length_problem(length, size)
            if problem is not None:
                return problem
            raw = stream.read(length)
    except OSError as exc:
        return f"unreadable ({_os_reason(exc)})"
    if len(raw) != length:  # the file shrank while we read it: nothing certain to say
        return None
    return _header_problem(raw, data_size=size - _LENGTH_PREFIX_BYTES - length)


def _header_length_problem(length: int, size: int) -> str | None:
    """Return why the announced header length is impossible for a file of ``size`` bytes."""
    rest = size - _LENGTH_PREFIX_BYTES
    if length > rest:
        return f"header length {length} is larger than the {rest} bytes that follow it (truncated?)"
    if length > _MAX_HEADER_BYTES:
        return f"header of {length} bytes is larger than safetensors accepts ({_MAX_HEADER_BYTES})"
    return None


def _header_problem(raw: bytes, data_size: int) -> str | None:
    """Return why a safetensors header is unusable or disagrees with the data size, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"header is not UTF-8 ({exc.reason} at byte {_LENGTH_PREFIX_BYTES + exc.start})"
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"header is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return f"header is not a JSON object (top level is {_json_kind(header)})"
    problem = _metadata_problem(header.get("__metadata__"))
    if problem is not None:
        return problem
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    return _entries_problem(tensors) or _layout_problem(tensors, data_size)


def _metadata_problem(metadata: Any) -> str | None:
    """Return why ``__metadata__`` is refused: safetensors wants null or a str -> str object."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        return "header __metadata__ is not an object of strings"
    return None


def _entries_problem(tensors: dict[str, Any]) -> str | None:
    """Return the first tensor entry safetensors cannot deserialize, or None."""
    for name in sorted(tensors):
        reason = _entry_reason(tensors[name])
        if reason is not None:
            return f"header entry for tensor {name!r} is malformed ({reason})"
    return None


def _entry_reason(info: Any) -> str | None:
    """Return what is wrong with one tensor entry ``{dtype, shape, data_offsets}``, or None.

    Mirrors safetensors' serde schema: unknown extra keys are allowed, and ``dtype`` may be a
    string or (serde's other enum spelling) an object; unknown dtype names are allowed here
    because newer safetensors releases add dtypes.
    """
    if not isinstance(info, dict):
        return f"{_json_kind(info)} instead of an object"
    if not isinstance(info.get("dtype"), str | dict):
        return "dtype missing or not a string"
    if not _naturals(info.get("shape")):
        return "shape must be a list of non-negative integers"
    if not _naturals(info.get("data_offsets"), length=2):
        return "data_offsets must be a list of two non-negative integers"
    return None


def _naturals(value: Any, length: int | None = None) -> bool:
    """Return whether ``value`` is a list of non-negative JSON integers (booleans excluded)."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return False
    return all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value)


def _layout_problem(tensors: dict[str, Any], data_size: int) -> str | None:
    """Return where the tensors' offsets break safetensors' layout rules, or None.

    As safetensors does: sorted by offsets, each tensor starts where the previous ends, spans
    dtype size x element count bytes, and the last one ends exactly at the end of the file.
    """
    end = 0
    for begin, stop, name in sorted((*tensors[name]["data_offsets"], name) for name in tensors):
        if begin != end or stop < begin:
            return (f"tensor {name!r} has data_offsets [{begin}, {stop}], "
                    f"but the previous tensor data ends at byte {end}")
        end = stop
        problem = _size_problem(name, tensors[name], stop - begin)
        if problem is not None:
            return problem
    if end == data_size:
        return None
    announced = f"header announces {end} bytes of tensor data, file has {data_size}"
    if end > data_size:
        return f"truncated ({announced})"
    extra = data_size - end
    return f"{extra} extra byte{'' if extra == 1 else 's'} after the tensor data ({announced})"


def _size_problem(name: str, info: dict[str, Any], span: int) -> str | None:
    """Return why a tensor's byte span differs from dtype size x element count, or None."""
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        return None
    needed = _DTYPE_BYTES[dtype]
    for dim in info["shape"]:
        needed *= dim
    if needed == span:
        return None
    return (f"tensor {name!r} ({dtype}, shape {info['shape']}) needs {needed} bytes, "
            f"its data_offsets span {span}")


def _json_kind(value: Any) -> str:
    """Name the JSON type of a parsed value, for messages."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
        ((int, float), "a number"),
    ]
    return next((kind for types, kind in kinds if isinstance(value, types)), "null")


def _os_reason(exc: OSError) -> str:
    """Return the human part of an OSError (``Permission denied``), without the path."""
    return exc.strerror or type(exc).__name__


def _show(name: str) -> str:
    """Return a file name as is, or quoted when it could break the one-line message."""
    return name if name.isprintable() else repr(name)
