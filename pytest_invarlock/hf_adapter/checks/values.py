"""Checks that a snapshot is a value: self-contained, portable across processes, bit-exact.

Bit-exact for every floating-point bit pattern too: NaN payloads, infinities, -0.0, subnormals.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import capabilities, fresh, state
from pytest_invarlock.hf_adapter.checks import (
    CheckContext,
    Problems,
    check,
    discard_snapshot,
    fresh_instance,
    summarize,
)
from pytest_invarlock.hf_adapter.checks.roundtrip import _check_bytes_like, _clean_refusal

# --------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True)
class Way:
    """One way to snapshot and restore a model: bytes, or a chunked directory."""

    how: str
    take: Callable[[], object]
    put: Callable[[object], None]


def bytes_way(adapter: Any, model: nn.Module) -> Way:
    """Return the bytes way: snapshot() and restore()."""
    return Way("snapshot()/restore()", lambda: adapter.snapshot(model),
               lambda blob: adapter.restore(model, blob))


@contextmanager
def snapshot_ways(adapter: Any, model: nn.Module) -> Iterator[list[Way]]:
    """Yield the bytes way and, when the adapter has it, the chunked way (directories removed)."""
    paths: list[str] = []

    def take_chunked() -> object:
        paths.append(adapter.snapshot_chunked(model, prefix="invarlock-check-"))
        return paths[-1]

    found = [bytes_way(adapter, model)]
    if hasattr(adapter, "snapshot_chunked"):
        found.append(Way("snapshot_chunked()/restore_chunked()", take_chunked,
                         lambda path: adapter.restore_chunked(model, path)))
    try:
        yield found
    finally:
        for path in paths:
            discard_snapshot(path)


def cycle(adapter: Any, model: nn.Module, way: Way,
          before_put: Callable[[], None] | None = None) -> bool:
    """Snapshot, perturb every tensor, run ``before_put``, restore; return whether it restored.

    Under ``snapshot_restore='full'`` every step must succeed (an error propagates). Under any
    other claim a refusal is accepted when it is clean (judged by ``roundtrip._clean_refusal``:
    an error with a message, the model untouched) and False says so: nothing more to judge.
    The restored values are the caller's to judge (see :func:`baseline`).
    """
    claim = capabilities.snapshot_claim(adapter)
    if claim == "full":
        taken = way.take()
        state.perturb(model)
        if before_put is not None:
            before_put()
        way.put(taken)
        return True
    before = state.capture(model)
    try:
        taken = way.take()
    except Exception as exc:
        _clean_refusal(model, before, exc, way.how, claim)
        return False
    state.perturb(model)
    if before_put is not None:
        before_put()
    perturbed = state.capture(model)
    try:
        way.put(taken)
    except Exception as exc:
        _clean_refusal(model, perturbed, exc, way.how, claim)
        return False
    return True


def about(problem: str, names: Iterable[str | None]) -> bool:
    """Return whether a ``state.diff`` problem is about one of ``names`` (or ties, for None)."""
    return any(problem.startswith(f"{n!r} ") if n else problem.startswith("tied groups")
               for n in names)


@dataclass(frozen=True)
class Baseline:
    """What a plain round-trip of one way fails to restore.

    check_snapshot_roundtrip_* reports those failures, so a check built on a round-trip judges
    everything else: one bug fails one check. ``None`` in ``names`` stands for the tied groups.
    """

    names: frozenset[str | None]
    everything: bool

    def keep(self, problems: list[str]) -> list[str]:
        """Return the ``state.diff`` problems that the plain round-trip does not have."""
        return [p for p in problems if not about(p, self.names)]

    def note(self) -> str:
        """Say what was left out of the judgement, for failure messages."""
        count = len(self.names - {None})
        return (f" (not judged: {count} tensor(s) that a plain round-trip already fails to "
                "restore, reported by check_snapshot_roundtrip_*)") if count else ""


def baseline(adapter: Any, model: nn.Module, way: Way) -> Baseline:
    """Round-trip ``way`` plainly and return what it fails to restore; reset the model after.

    Called only once a check has found problems (a passing adapter pays nothing for it), from
    the state the check started its own round-trip in: a lossy restore can be exact on a state
    it produced itself. A clean refusal (allowed by the claim) explains nothing.
    """
    before = state.capture(model)
    if not cycle(adapter, model, way):
        return Baseline(frozenset(), everything=False)
    problems = state.diff(model, before)
    if problems:
        state.reset(model, before)
    names: set[str | None] = {n for n in [*before.tensors, None]
                              if any(about(p, [n]) for p in problems)}
    filled = {n for n, (t, _) in state.named_tensors(model).items() if t.numel()}
    return Baseline(frozenset(names), everything=bool(filled) and filled <= names)


def refused(adapter: Any, way: Way) -> str:
    """Say why a way is not judged when the adapter refuses it, as its claim allows."""
    return f"{way.how} refuses, as snapshot_restore={capabilities.snapshot_claim(adapter)!r} allows"


def not_judged(way: Way) -> str:
    """Say why a way cannot be judged when a plain round-trip already fails every tensor."""
    return (f"a plain {way.how} already fails to restore every tensor "
            "(check_snapshot_roundtrip_* reports it)")


def take_snapshot(adapter: Any, model: nn.Module) -> Any:
    """Return a bytes snapshot; a refusal allowed by the adapter's claim makes the check not apply."""
    try:
        blob = adapter.snapshot(model)
    except Exception as exc:
        if capabilities.snapshot_claim(adapter) == "full":
            raise
        raise CheckNotApplicable(f"snapshot() refuses ({exc}), as snapshot_restore="
                                 f"{capabilities.snapshot_claim(adapter)!r} allows") from None
    _check_bytes_like(blob)
    return blob


def _first_difference(now: bytes, then: bytes) -> str:
    if len(now) != len(then):
        return f"its length went from {len(then)} to {len(now)} bytes"
    differ = (np.frombuffer(now, np.uint8) != np.frombuffer(then, np.uint8)).nonzero()[0]
    return f"{len(differ)} of {len(now)} bytes differ, the first at offset {differ[0]}"


# --------------------------------------------------------------------------- a snapshot is a value


@check(mutates=True, why="restore(snapshot) promises the state at snapshot time, whatever "
       "happened since and whoever restores it")
def check_snapshot_is_a_value(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """A bytes snapshot is a self-contained value: later edits, restores and instances keep it."""
    claim = capabilities.snapshot_claim(adapter)
    problems = Problems()
    kept: dict[str, tuple[Any, bytes]] = {}
    spoiled: set[str] = set()
    wrong: list[tuple[str, str, list[str]]] = []  # judged at the end, against a plain round-trip

    def unchanged(label: str, after: str) -> None:
        blob, copy = kept[label]
        now = bytes(blob)
        if label not in spoiled and now != copy:
            spoiled.add(label)
            problems.add(f"the bytes of snapshot {label} changed after {after} "
                         f"({_first_difference(now, copy)}): the snapshot shares memory with the "
                         "model")

    def restore(what: str, who: Any, label: str, expected: state.State) -> None:
        before = state.capture(model) if claim != "full" else None
        try:
            who.restore(model, kept[label][0])
        except Exception as exc:
            if before is None:
                problems.add(f"{what} raised {type(exc).__name__}: {exc}")
                return
            try:
                _clean_refusal(model, before, exc, what, claim)
            except CheckFailed as failed:
                problems.add(str(failed))
            return
        changed = state.diff(model, expected)
        if changed:
            wrong.append((what, label, changed))

    at_a = state.capture(model)
    blob_a = take_snapshot(adapter, model)
    kept["A"] = (blob_a, bytes(blob_a))
    state.perturb(model, seed=1)
    unchanged("A", "editing the model in place")
    at_b = state.capture(model)
    blob_b = take_snapshot(adapter, model)
    kept["B"] = (blob_b, bytes(blob_b))
    state.perturb(model, seed=2)
    unchanged("A", "editing the model in place")
    unchanged("B", "editing the model in place")
    restore("restore(A) after snapshot B and an edit", adapter, "A", at_a)
    state.perturb(model, seed=3)
    unchanged("A", "restoring it and then editing the model in place")
    restore("restore(A) a second time", adapter, "A", at_a)
    restore("restore(B) after restore(A)", adapter, "B", at_b)
    fresh = fresh_instance(adapter)
    if fresh is not None:
        restore(f"restore(A) by a new adapter instance ({type(adapter).__name__}())", fresh,
                "A", at_a)
    unchanged("A", "all of the above")
    unchanged("B", "all of the above")
    note = ""
    if wrong:
        way = bytes_way(adapter, model)
        state.reset(model, at_a)
        base = baseline(adapter, model, way)
        if base.everything and not problems:
            raise CheckNotApplicable(not_judged(way))
        note = base.note()
        for what, label, changed in wrong:
            left = base.keep(changed)
            if left:
                problems.add(f"after {what}, the model is not its state at snapshot {label} "
                             f"({summarize(left, 3)})")
    problems.raise_if_any("A bytes snapshot must hold everything restore() needs: no references "
                          "to the adapter instance, earlier snapshots or the model's memory; "
                          "snapshot() copies the tensors out and restore() copies them in, never "
                          "keeping views of one in the other" + note)


# --------------------------------------------------------------------------- a fresh process


def _selector(adapter: Any, ctx: CheckContext) -> str:
    """Return how another process re-creates the adapter (a registered name or module:Class)."""
    cls = type(adapter)
    selector = ctx.selector or f"{cls.__module__}:{cls.__qualname__}"
    if selector.startswith("__main__:") or "<locals>" in selector:
        raise CheckNotApplicable(f"{cls.__qualname__} is defined in {cls.__module__} and cannot "
                                 "be imported by another process; define it in a module, or "
                                 "select it by name or module:Class")
    return selector


def _compare_fresh(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Describe every way the fresh process's state differs from ``expected`` (as state.diff)."""
    want, have = expected["tensors"], got["tensors"]
    problems = [f"{n!r} is missing from the model" for n in sorted(set(want) - set(have))]
    problems += [f"{n!r} is new in the model" for n in sorted(set(have) - set(want))]
    for name in sorted(set(want) & set(have)):
        w, h = want[name], have[name]
        wrong = [f"{name!r} has {key} {h[key]}, expected {w[key]}"
                 for key in ("dtype", "shape", "device") if w[key] != h[key]]
        if wrong:
            problems.append(wrong[0])
        elif w["digest"] != h["digest"]:
            problems.append(f"{name!r} differs from its value at snapshot time")
    if got["groups"] != expected["groups"]:
        problems.append(f"tied groups are {got['groups']}, expected {expected['groups']}")
    return problems


_FRESH_FIXES = {
    "import": "Make the adapter importable there (register it under the pytest_invarlock.adapters "
              "or invarlock.adapters entry-point group, or select it as module:Class; the "
              "parent's sys.path is the helper's PYTHONPATH) and instantiable with no arguments",
    "load": "load_model must work in a new process as it does in this one",
    "restore": "A bytes snapshot must hold everything restore() needs, not keys into the "
               "memory of the process that took it",
}


@check(mutates=True, why="a snapshot is saved to restore later, typically in another process")
def check_snapshot_restores_in_a_fresh_process(adapter: Any, model: nn.Module,
                                               ctx: CheckContext) -> None:
    """A bytes snapshot written to a file restores bit-exactly in a fresh Python process."""
    if ctx.model_path is None:
        raise CheckNotApplicable("the model has no checkpoint path another process could load")
    selector = _selector(adapter, ctx)
    claim = capabilities.snapshot_claim(adapter)
    state.perturb(model, seed=7)  # the snapshot must hold a state the checkpoint does not
    expected = fresh.describe_state(model)
    blob = take_snapshot(adapter, model)
    load = f"load_model({ctx.model_path!r}, device={ctx.device!r})"
    steps = (f"a new {selector} instance, {load}, an edit of every tensor, then restore() of the "
             "snapshot file")
    with tempfile.TemporaryDirectory(prefix="invarlock-fresh-") as tmp:
        file = Path(tmp) / "snapshot.bin"
        file.write_bytes(bytes(blob))
        try:
            answer = fresh.helper().request({"selector": selector, "model_path": ctx.model_path,
                                             "device": ctx.device, "blob": str(file)})
        except fresh.HelperFailed as exc:
            raise CheckFailed(f"in a fresh Python process ({steps}): {exc} A snapshot must "
                              "restore in any process that loads the same checkpoint") from None
    if answer.get("ok"):
        found = _compare_fresh(expected, answer)
        if not found:
            return
        way = bytes_way(adapter, model)  # from the state at snapshot time, still the model's:
        base = baseline(adapter, model, way)  # what fails in this process too is not judged
        if base.everything:
            raise CheckNotApplicable(not_judged(way))
        problems = Problems()
        for problem in base.keep(found):
            problems.add(f"in a fresh Python process, {problem}")
        problems.raise_if_any(f"The fresh process ran {steps}. A bytes snapshot must hold every "
                              "parameter and buffer itself, not references into the process "
                              "that took it" + base.note())
        return
    stage, error = str(answer.get("stage")), answer.get("error")
    if stage == "restore" and claim != "full" and answer.get("untouched") and answer.get(
            "message"):
        return  # a clean refusal, as the claim allows
    if stage == "perturb":
        raise RuntimeError(f"in a fresh Python process: {error}")  # a suite bug
    call = {"import": f"creating the adapter {selector}", "load": load,
            "restore": f"restore() of the snapshot file (after {load} and an edit)"}.get(stage, stage)
    raise CheckFailed(f"in a fresh Python process, {call} raised {error}. "
                      f"{_FRESH_FIXES.get(stage, '')}")


# --------------------------------------------------------------------------- special values

_FORMATS: dict[torch.dtype, tuple[int, int, torch.dtype]] = {  # exponent, mantissa bits, int view
    torch.float16: (5, 10, torch.int16),
    torch.bfloat16: (8, 7, torch.int16),
    torch.float32: (8, 23, torch.int32),
    torch.float64: (11, 52, torch.int64),
}


def special_patterns(dtype: torch.dtype) -> list[tuple[str, int]]:
    """Return (label, bit pattern as a signed int) of NaN payloads, infinities, -0.0, subnormals."""
    exp, mant, _ = _FORMATS[dtype]
    width = 1 + exp + mant
    quiet = 1 << (mant - 1)
    ones = ((1 << exp) - 1) << mant
    sign = 1 << (width - 1)
    raw = [("quiet NaN", ones | quiet), ("NaN with payload 0x5", ones | quiet | 0x5),
           ("signalling NaN", ones | 0x1), ("negative NaN with payload 0x3", sign | ones | quiet | 3),
           ("+inf", ones), ("-inf", sign | ones), ("-0.0", sign), ("the smallest subnormal", 1),
           ("a negative subnormal", sign | 0x3)]
    return [(label, bits - (1 << width) if bits & sign else bits) for label, bits in raw]


def _slots(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return one name per floating storage of a supported dtype that holds values."""
    seen: set[tuple[object, ...]] = set()
    found = {}
    for name, (t, _) in state.named_tensors(model).items():
        key = state.storage_key(t)
        if t.dtype in _FORMATS and t.numel() and key not in seen:
            seen.add(key)
            found[name] = t
    return found


def _write(t: torch.Tensor, values: torch.Tensor) -> None:
    """Write integer bit patterns into the first elements of ``t`` (any strides), bit-exactly."""
    ints = t.detach().view(_FORMATS[t.dtype][2])
    with torch.no_grad():
        flat = ints.clone().reshape(-1)
        flat[:values.numel()] = values.to(flat.device)
        ints.copy_(flat.view(ints.shape))


def _read(t: torch.Tensor, count: int) -> list[int]:
    return t.detach().view(_FORMATS[t.dtype][2]).reshape(-1)[:count].cpu().tolist()


@check(mutates=True, why="weights under edit hold NaNs, infinities and subnormals; a restore "
       "that rewrites their bits is not a restore")
def check_snapshot_roundtrip_special_values(adapter: Any, model: nn.Module,
                                            ctx: CheckContext) -> None:
    """Round-trips keep NaN payloads, signalling NaNs, infinities, -0.0 and subnormals bit-exact."""
    if not _slots(model):
        raise CheckNotApplicable("the model has no float16, bfloat16, float32 or float64 tensor")
    problems = Problems()
    judged, skipped, notes = 0, [], []
    original = state.capture(model)  # ordinary values, for a plain round-trip if one is needed
    with snapshot_ways(adapter, model) as ways:
        planted = _plant(model)

        def overwrite_specials() -> None:  # perturb() leaves NaN and inf as they were
            for name, t in _slots(model).items():
                if name in planted:
                    ordinary = torch.arange(1, len(planted[name]) + 1, dtype=t.dtype)
                    _write(t, ordinary.view(_FORMATS[t.dtype][2]))

        for way in ways:
            before = state.capture(model)
            if not cycle(adapter, model, way, before_put=overwrite_specials):
                skipped.append(refused(adapter, way))
                continue
            specials = _special_problems(model, before, planted)
            changed = [p for p in state.diff(model, before) if not about(p, specials)]
            if specials or changed:
                state.reset(model, original)
                base = baseline(adapter, model, way)
                state.reset(model, before)  # the next way starts from the planted state
                if base.everything:
                    skipped.append(not_judged(way))
                    continue
                specials = {n: text for n, text in specials.items() if n not in base.names}
                changed = base.keep(changed)
                notes.append(base.note())
            judged += 1
            for text in [*specials.values(), *changed]:
                problems.add(f"after {way.how}, {text}")
    if not judged:
        raise CheckNotApplicable("; ".join(skipped))
    problems.raise_if_any("Copy the raw bits (memcpy, tensor.copy_ into the same dtype, "
                          "safetensors); never pass values through arithmetic, NaN "
                          "canonicalisation or a wider float type" + "".join(dict.fromkeys(notes)))


def _special_problems(model: nn.Module, before: state.State,
                      planted: dict[str, list[tuple[str, int]]]) -> dict[str, str]:
    """Describe, by tensor name, every planted bit pattern that did not come back."""
    now = state.named_tensors(model)
    found = {}
    for name, patterns in planted.items():
        t = now[name][0] if name in now else None
        if t is None or t.dtype != before.tensors[name].value.dtype:
            continue  # state.diff names it
        bad = [f"{label} (0x{bits & _mask(t):x}) came back as 0x{value & _mask(t):x}"
               for (label, bits), value in zip(patterns, _read(t, len(patterns)), strict=True)
               if value != bits]
        if bad:
            found[name] = f"{name!r}: {', '.join(bad[:3])}" + (
                f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return found


def _plant(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """Write the special bit patterns into the first elements of every floating storage."""
    planted = {}
    for name, t in _slots(model).items():
        patterns = special_patterns(t.dtype)[: t.numel()]
        _write(t, torch.tensor([bits for _, bits in patterns], dtype=_FORMATS[t.dtype][2]))
        planted[name] = patterns
        if _read(t, len(patterns)) != [bits for _, bits in patterns]:
            raise RuntimeError(f"the suite could not plant special values in {name!r}")
    return planted


def _mask(t: torch.Tensor) -> int:
    return (1 << (8 * t.element_size())) - 1


CHECKS = (
    check_snapshot_is_a_value,
    check_snapshot_restores_in_a_fresh_process,
    check_snapshot_roundtrip_special_values,
)
