"""Checks of chunked snapshots beyond one round-trip: multi-chunk, repeated restores, hygiene."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pytest_invarlock.errors import CheckNotApplicable, ClaimNote
from pytest_invarlock.hf_adapter import capabilities, state
from pytest_invarlock.hf_adapter.checks import MUST, SHOULD, CheckContext, Problems, check, discard_snapshot
from pytest_invarlock.hf_adapter.checks.roundtrip import roundtrip

PREFIX = "invarlock-check-"
#: Keyword names that say "chunk size in bytes" (anything matching _SIZE_NAME also counts).
SIZE_KEYWORDS = ("chunk_bytes", "chunk_size", "max_chunk_bytes", "max_chunk_size",
                 "max_shard_size", "shard_size", "max_bytes_per_chunk", "chunk_size_bytes")
_SIZE_NAME = re.compile(r"(chunk|shard).*(size|bytes)|(size|bytes).*(chunk|shard)")
_OTHER_UNIT = re.compile(r"_(k|m|g)i?b$")


def _need_chunked(adapter: Any) -> None:
    if not hasattr(adapter, "snapshot_chunked"):
        raise CheckNotApplicable("adapter has no snapshot_chunked()")
    if not hasattr(adapter, "restore_chunked"):
        raise CheckNotApplicable("adapter has snapshot_chunked() but no restore_chunked()")


# --------------------------------------------------------------------------- hygiene


def _tree(root: Path) -> set[str]:
    """Return every path under ``root`` (files, directories, links), relative, without following links."""
    found: set[str] = set()
    for current, dirs, files in os.walk(root):
        rel = Path(current).relative_to(root)
        found.update(str(rel / name) for name in dirs + files)
    return found


def _entries(root: Path) -> set[str]:
    return set(os.listdir(root))


def _few(names: set[str] | list[str]) -> str:
    shown = sorted(names)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return ", ".join(repr(n) for n in shown[:5]) + more


@contextmanager
def _temp_dir_at(directory: Path) -> Iterator[None]:
    """Make ``directory`` the process's temporary directory (tempfile.tempdir and TMPDIR)."""
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(directory)
    os.environ["TMPDIR"] = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _removable(path: Path) -> bool:
    """Return whether the suite may delete ``path`` (a directory holding no cwd and no home)."""
    return (path.is_dir() and not _inside(Path.cwd().resolve(), path)
            and not _inside(Path.home().resolve(), path))


class _Watch:
    """The working directory's entries, to name what an adapter call added to it."""

    def __init__(self) -> None:
        self.cwd = Path.cwd()
        self.seen = _entries(self.cwd)

    def new(self, call: str, problems: Problems) -> None:
        added = _entries(self.cwd) - self.seen
        if added:
            problems.add(f"{call} wrote {_few(added)} into the working directory {self.cwd}")
            self.seen |= added
        if os.getcwd() != str(self.cwd):
            problems.add(f"{call} changed the working directory to {os.getcwd()!r}")
            os.chdir(self.cwd)


def _snapshot_in(adapter: Any, model: nn.Module, temp: Path, claim: str, watch: _Watch,
                 problems: Problems, reported: set[str]) -> Path | str:
    """Snapshot with ``temp`` as the temporary directory; return its path, or why it refused.

    ``reported`` receives the entries of ``temp`` named in a problem.
    """
    try:
        path = Path(adapter.snapshot_chunked(model, prefix=PREFIX)).resolve()
    except Exception as exc:
        if claim == "full":
            raise
        left = _tree(temp)
        if left:
            problems.add(f"snapshot_chunked() refused but left {_few(left)} in the temporary "
                         f"directory {temp}")
        watch.new("snapshot_chunked()", problems)
        return f"snapshot_chunked() refuses ({exc}), as snapshot_restore={claim!r} allows"
    home = path.relative_to(temp).parts[0] if _inside(path, temp) and path != temp else None
    if home is None:
        problems.add(f"snapshot_chunked() returned {str(path)!r}, outside tempfile.gettempdir() "
                     f"({temp}, also $TMPDIR); create the snapshot directory with "
                     "tempfile.mkdtemp()")
    beside = _entries(temp) - {home}
    if beside:
        problems.add(f"snapshot_chunked() wrote {_few(beside)} beside the snapshot directory it "
                     f"returned ({path.name!r}) in {temp}")
        reported |= beside
    watch.new("snapshot_chunked()", problems)
    return path


def _restore_twice(adapter: Any, model: nn.Module, path: Path, temp: Path, claim: str,
                   watch: _Watch, problems: Problems, reported: set[str]) -> None:
    """Restore ``path`` twice; name whatever that created in ``temp`` or the working directory."""
    before = _tree(temp)
    for _ in range(2):
        try:
            adapter.restore_chunked(model, str(path))
        except Exception:
            if claim == "full":
                raise  # a failed restore is the round-trip checks' business, not hygiene's
    created = _tree(temp) - before
    if created:
        problems.add(f"restore_chunked() (twice) created {_few(created)} in {temp}; read the "
                     "snapshot, never write beside or into it")
        reported |= {Path(c).parts[0] for c in created}
    watch.new("restore_chunked()", problems)


@check(level=SHOULD, mutates=True, why="hygiene beyond the protocol: stray files pile up in the "
       "temporary directory, but every snapshot still restores")
def check_chunked_snapshot_stays_in_its_directory(adapter: Any, model: nn.Module,
                                                  ctx: CheckContext) -> None:
    """snapshot_chunked() writes only inside the directory it returns, restore_chunked() writes nothing, and removing that directory leaves nothing behind."""  # noqa: E501
    _need_chunked(adapter)
    claim = capabilities.snapshot_claim(adapter)
    problems = Problems()
    outside = Path(tempfile.mkdtemp(prefix="invarlock-hygiene-")).resolve()
    temp = outside / "tmp"
    temp.mkdir()
    watch = _Watch()  # after mkdtemp: the working directory may be the temporary one
    taken: Path | str = "snapshot_chunked() was not called"
    reported: set[str] = set()
    try:
        with _temp_dir_at(temp):
            taken = _snapshot_in(adapter, model, temp, claim, watch, problems, reported)
            if isinstance(taken, Path):
                _restore_twice(adapter, model, taken, temp, claim, watch, problems, reported)
                if _removable(taken):
                    shutil.rmtree(taken)
                left = _entries(temp) - reported
                if left:
                    problems.add(f"after removing the snapshot directory {taken.name!r}, "
                                 f"{_few(left)} is still in {temp}")
    finally:
        if isinstance(taken, Path) and not _inside(taken, outside) and _removable(taken):
            shutil.rmtree(taken, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
    problems.raise_if_any("Write a chunked snapshot only inside the one directory it returns "
                          "(lock, temporary and index files included), so that removing that "
                          "directory removes everything")
    if isinstance(taken, str):
        raise CheckNotApplicable(taken)


# --------------------------------------------------------------------------- multi-chunk


def _parameters(adapter: Any) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(adapter.snapshot_chunked).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a C function): nothing to force
        return []


def size_keyword(adapter: Any) -> str | None:
    """Return the name of snapshot_chunked()'s chunk-size keyword (bytes), None if it has none."""
    named = [p.name for p in _parameters(adapter)
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "model"]
    for name in SIZE_KEYWORDS:
        if name in named:
            return name
    for name in named:
        if _SIZE_NAME.search(name.lower()) and not _OTHER_UNIT.search(name.lower()):
            return name
    return None


def _unique_bytes(model: nn.Module) -> int:
    seen: dict[tuple[object, ...], int] = {}
    for t, _ in state.named_tensors(model).values():
        seen[state.storage_key(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def data_files(root: Path) -> list[Path]:
    """Return the files of a chunked snapshot that hold data (not the JSON manifests)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".json")


@dataclass
class _Taken:
    """A multi-chunk snapshot attempt: where it is, how it was asked for, and what it forced."""

    path: Path
    call: str
    #: The chunk-size keyword passed, and whether snapshot_chunked() names it (a promise).
    keyword: str | None
    declared: bool
    #: Why no keyword could be passed (for the note), when none was.
    unforced: str


def _call(kwargs: dict[str, Any]) -> str:
    return f"snapshot_chunked({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def _take(adapter: Any, model: nn.Module) -> _Taken:
    """Take a snapshot asked to span several chunks (a quarter of the model's bytes each).

    A declared chunk-size keyword is a promise; through ``**kwargs`` the suite tries
    ``chunk_bytes`` and falls back to the default when it is refused.
    """
    size = max(1, _unique_bytes(model) // 4)
    keyword = size_keyword(adapter)
    if keyword:
        kwargs = {"prefix": PREFIX, keyword: size}
        return _Taken(Path(adapter.snapshot_chunked(model, **kwargs)), _call(kwargs), keyword,
                      True, "")
    unforced = f"snapshot_chunked() names no chunk-size keyword (e.g. {SIZE_KEYWORDS[0]})"
    if any(p.kind == p.VAR_KEYWORD for p in _parameters(adapter)):
        kwargs = {"prefix": PREFIX, SIZE_KEYWORDS[0]: size}
        try:
            return _Taken(Path(adapter.snapshot_chunked(model, **kwargs)), _call(kwargs),
                          SIZE_KEYWORDS[0], False, f"{unforced} and ignored it through **kwargs")
        except TypeError as exc:  # an unknown keyword: reported in the note, then the default
            unforced += f" and refused it through **kwargs ({exc})"
    kwargs = {"prefix": PREFIX}
    return _Taken(Path(adapter.snapshot_chunked(model, **kwargs)), _call(kwargs), None, False,
                  unforced)


def _precondition(adapter: Any, model: nn.Module) -> None:
    """Require one exact default round-trip; its failure is check_snapshot_roundtrip_chunked's."""
    before = state.capture(model)
    path = adapter.snapshot_chunked(model, prefix=PREFIX)
    try:
        state.perturb(model)
        adapter.restore_chunked(model, path)
    finally:
        discard_snapshot(path)
    if state.diff(model, before):
        state.reset(model, before)
        raise CheckNotApplicable("a single default snapshot_chunked()/restore_chunked() is not "
                                 "exact already; check_snapshot_roundtrip_chunked reports it")


def _chunk_count(taken: _Taken, model: nn.Module, problems: Problems) -> int:
    """Count the snapshot's data files; a declared chunk-size keyword that had no effect is a problem."""
    count = len(data_files(taken.path))
    if taken.declared and count < 2 and "bytes" in str(taken.keyword):  # the unit is certain
        problems.add(f"{taken.call} wrote {count} data file(s) for {_unique_bytes(model)} bytes "
                     f"of tensors: the {taken.keyword} keyword was ignored")
    return count


def _note(taken: _Taken, count: int) -> None:
    if count < 2 and not taken.declared:
        raise ClaimNote(f"multi-chunk not forced: {taken.unforced}, so the snapshot had {count} "
                        "data file; two restores of it were judged")
    if count < 2 and "bytes" not in str(taken.keyword):  # its unit may be tensors, not bytes
        raise ClaimNote(f"multi-chunk not forced: {taken.call} wrote {count} data file; "
                        f"{taken.keyword} may count something else than bytes; two restores of "
                        "it were judged")


FIX = ("Honour the chunk-size keyword, restore every chunk the manifest lists, and restore the "
       "same snapshot exactly as often as asked (never skip a restore as already done)")


@check(level=MUST, mutates=True, why="exact round-trips are the protocol's promise, for every "
       "chunk count and every restore")
def check_chunked_roundtrip_multi_chunk(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore_chunked() of a snapshot spanning several chunk files is bit-exact, twice in a row."""
    _need_chunked(adapter)
    claim = capabilities.snapshot_claim(adapter)
    if claim != "full":
        return _claimed(adapter, model, claim)
    _precondition(adapter, model)
    problems = Problems()
    before = state.capture(model)
    taken = _take(adapter, model)
    try:
        count = _chunk_count(taken, model, problems)
        for round_, seed in ((1, 0), (2, 1)):
            state.perturb(model, seed=seed)
            adapter.restore_chunked(model, str(taken.path))
            wrong = state.diff(model, before)
            if wrong:
                more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
                problems.add(f"restore_chunked() #{round_} of the {count}-file snapshot "
                             f"({taken.call}) left the model not bit-identical: "
                             f"{'; '.join(wrong[:3])}{more}")
    finally:
        discard_snapshot(taken.path)
    problems.raise_if_any(FIX)
    _note(taken, count)
    return None


def _claimed(adapter: Any, model: nn.Module, claim: str) -> None:
    """Two round-trips of one (multi-chunk) snapshot, judged by a non-``full`` claim."""
    taken: list[_Taken] = []

    def take() -> object:
        if not taken:
            taken.append(_take(adapter, model))
        return str(taken[0].path)

    problems = Problems()
    try:
        for round_ in (1, 2):
            call = _call({"prefix": PREFIX}) if not taken else taken[0].call
            roundtrip(model, take, lambda path: adapter.restore_chunked(model, path),
                      f"{call}/restore_chunked() #{round_}", claim)
        count = _chunk_count(taken[0], model, problems) if taken else None
    finally:
        for found in taken:
            discard_snapshot(found.path)
    problems.raise_if_any(FIX)
    if count is not None:
        _note(taken[0], count)


CHECKS = (
    check_chunked_snapshot_stays_in_its_directory,
    check_chunked_roundtrip_multi_chunk,
)
