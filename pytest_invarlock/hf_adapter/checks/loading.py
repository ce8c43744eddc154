"""Checks of ``can_handle`` and ``load_model``: recognition, arguments, dtype, refusing remote code."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable, TruthUnavailable
from pytest_invarlock.hf_adapter import truth as truth_mod
from pytest_invarlock.hf_adapter.checks import (
    MUST,
    SHOULD,
    CheckContext,
    Problems,
    check,
    fresh_instance,
    summarize,
)
from pytest_invarlock.hf_adapter.checks.describe import tied_groups

ALLOW_ENV = "INVARLOCK_ALLOW_REMOTE_CODE"
MARKER_ENV = "INVARLOCK_REMOTE_CODE_MARKER"


@check(level=MUST, why="load_model() returns it; an adapter that refuses its own models is unusable")
def check_can_handle_own_model(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """can_handle() is True for a model the adapter itself loaded."""
    if adapter.can_handle(model) is not True:
        raise CheckFailed(f"can_handle({type(model).__name__}) is not True for a model this "
                          "adapter loaded; accept the model classes and model_types load_model "
                          "returns")


# --------------------------------------------------------------------------- foreign models

#: The fixture that stands for each role among the foreign-model probes (else the role's first).
PROBE_FIXTURES = {"causal": "gpt2", "mlm": "bert", "seq2seq": "t5", "multimodal": "llava"}


def _role_of(model: nn.Module) -> str | None:
    """Return the catalog role of ``model`` (causal, mlm, seq2seq, multimodal), None if unknown."""
    from pytest_invarlock.hf_adapter.fixtures import catalog

    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(config, "vision_config", None) is not None:
        return "multimodal"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    by_family = {f.config["model_type"]: f.role for f in catalog().values()}
    found = by_family.get(getattr(config, "model_type", None))
    if found:
        return found
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    if name.endswith("ForMaskedLM"):
        return "mlm"
    return None


def _foreign_probes(model: nn.Module) -> list[Any]:
    """Return one catalog fixture of every role other than ``model``'s."""
    from pytest_invarlock.hf_adapter.fixtures import catalog

    own = _role_of(model)
    by_role: dict[str, Any] = {}
    for fixture in catalog().values():
        if fixture.role != own:
            chosen = by_role.get(fixture.role)
            if chosen is None or fixture.name == PROBE_FIXTURES.get(fixture.role):
                by_role[fixture.role] = fixture
    return [by_role[role] for role in sorted(by_role)]


def _describe_problems(desc: object, truth: truth_mod.Truth, call: str) -> list[str]:
    """Compare the required fields of ``desc`` with ``truth``; return every disagreement."""
    if not isinstance(desc, dict):
        return [f"{call} returned {type(desc).__name__}, not a dict"]
    expected: dict[str, object] = {"n_layer": truth.n_layer, "heads_per_layer": list(truth.heads),
                                   "mlp_dims": list(truth.mlp_dims)}
    found = []
    for key, want in expected.items():
        got = desc.get(key)
        if isinstance(got, tuple):
            got = list(got)
        if got != want:
            found.append(f"{call}['{key}'] is {got!r}, the model has {want!r}")
    tying = desc.get("tying")
    want_ties = {frozenset(g) for g in truth.tied_groups}
    if not isinstance(tying, dict):
        found.append(f"{call}['tying'] is {tying!r}, not a dict")
    elif tied_groups(tying) != want_ties:
        found.append(f"{call}['tying'] gives the tied groups {sorted(map(sorted, tied_groups(tying)))}, "
                     f"the model ties {sorted(map(sorted, want_ties))}")
    return found


def _handles(adapter: Any, module: nn.Module, others: str, problems: Problems) -> object:
    """Return ``adapter.can_handle(module)``; None (and a problem) when it raises."""
    try:
        return adapter.can_handle(module)
    except Exception as exc:
        problems.add(f"can_handle({type(module).__name__}) raised {exc!r}; return False for "
                     f"{others}")
        return None


@check(level=MUST, why="can_handle() True is a promise that describe() understands the model; "
       "hf_auto and callers pick adapters by it")
def check_can_handle_rejects_foreign_models(adapter: Any, model: nn.Module,
                                            ctx: CheckContext) -> None:
    """can_handle() is False for modules that are no language model, and True for another role's model only when describe() gets it right."""  # noqa: E501
    from pytest_invarlock.hf_adapter.fixtures import build_model

    problems, gaps = Problems(), []
    for module in (nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())):
        answer = _handles(adapter, module, "modules without a transformers config", problems)
        if answer is not False and answer is not None:
            problems.add(f"can_handle({type(module).__name__}) is {answer!r}; return False for "
                         "modules without a transformers config of a supported family")
    for fixture in _foreign_probes(model):
        foreign = build_model(fixture)
        name = type(foreign).__name__
        what = f"fixture {fixture.name!r} ({fixture.family}, role {fixture.role})"
        probe = fresh_instance(adapter) or adapter  # another model: a new instance, as frameworks do
        answer = _handles(probe, foreign, f"models the adapter does not handle ({what})", problems)
        if answer is None or answer is False:
            continue
        if answer is not True:
            problems.add(f"can_handle({name}) is {answer!r} for {what}; return True or False")
            continue
        try:
            truth = truth_mod.derive(foreign)
        except TruthUnavailable as exc:  # the suite's gap: judged after the other probes
            gaps.append(f"{what}: {exc}")
            continue
        call = f"describe({name})"
        try:
            desc = probe.describe(foreign)
        except Exception as exc:
            problems.add(f"can_handle({name}) is True for {what} but {call} raised {exc!r}")
            continue
        wrong = _describe_problems(desc, truth, call)
        if wrong:
            problems.add(f"can_handle({name}) is True for {what} but {'; '.join(wrong)}")
    problems.raise_if_any("can_handle() True is a promise that describe() understands the model: "
                          "return False for the model classes and model_types the adapter cannot "
                          "describe, or describe them correctly")
    if gaps:
        raise TruthUnavailable(f"no truth for a probe the adapter accepts: {'; '.join(gaps)}")


# --------------------------------------------------------------------------- load_model


def _load(adapter: Any, ctx: CheckContext, path: str | Path, **kwargs: Any) -> nn.Module:
    if not hasattr(adapter, "load_model"):
        raise CheckNotApplicable("adapter has no load_model()")
    model: nn.Module = adapter.load_model(str(path), device=ctx.device, **kwargs)
    return model


@check(level=MUST, why="the protocol documents dtype; a model in another dtype is not the one "
       "asked for")
def check_load_model_honours_dtype(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """load_model(path, dtype=...) returns a model whose floating parameters have that dtype."""
    if ctx.model_path is None:
        raise CheckNotApplicable("the model was not loaded from a path")
    current = next(model.parameters()).dtype
    want = torch.bfloat16 if current != torch.bfloat16 else torch.float16
    loaded = _load(adapter, ctx, ctx.model_path, dtype=want)
    kept = _kept_in_fp32(loaded, want)
    wrong = [f"{n!r} is {p.dtype}" for n, p in loaded.named_parameters()
             if p.is_floating_point() and p.dtype != want and not kept(n)]
    if wrong:
        raise CheckFailed(f"load_model(..., dtype={want}) left {len(wrong)} parameter(s) in "
                          f"another dtype: {summarize(wrong)}; pass dtype through to "
                          "from_pretrained and do not cast afterwards")


def _kept_in_fp32(model: nn.Module, dtype: torch.dtype) -> Callable[[str], bool]:
    """Return whether transformers itself keeps a parameter in float32 at ``dtype``.

    Model classes list such modules in ``_keep_in_fp32_modules`` (honoured for float16) and
    ``_keep_in_fp32_modules_strict`` (float16 and bfloat16); from_pretrained keeps them in
    float32 whatever dtype it is given, so an adapter that passes dtype through is right.
    """
    names = list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        names += list(getattr(model, "_keep_in_fp32_modules", None) or [])

    def kept(name: str) -> bool:
        parts = name.split(".")
        return any(module in parts for module in names)

    return kept


@dataclass(frozen=True)
class Call:
    """One outermost call of a transformers ``from_pretrained`` seen by the spy."""

    kind: str  # "model" or "config"
    owner: str  # the class it was called on
    kwargs: dict[str, Any]


def _subclasses(cls: type) -> list[type]:
    found, todo = [], [cls]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(current.__subclasses__())
    return found


def _spied_classes() -> list[tuple[type[Any], str]]:
    """Return every loaded class that defines its own ``from_pretrained``, with its kind.

    The Auto classes each carry a copy of ``_BaseAutoModelClass.from_pretrained``; concrete model
    and config classes inherit ``PreTrainedModel``'s / ``PreTrainedConfig``'s unless they
    override it. Patching every definition sees a call through any of them.
    """
    import transformers
    from transformers.models.auto import auto_factory, configuration_auto, modeling_auto  # noqa: F401

    roots = ((auto_factory._BaseAutoModelClass, "model"), (transformers.PreTrainedModel, "model"),
             (configuration_auto.AutoConfig, "config"), (transformers.PretrainedConfig, "config"))
    seen: dict[type[Any], str] = {}
    for root, kind in roots:
        for cls in _subclasses(root):
            if "from_pretrained" in cls.__dict__:
                seen.setdefault(cls, kind)
    return list(seen.items())


@contextmanager
def _spy_from_pretrained() -> Iterator[list[Call]]:
    """Record the keyword arguments of every outermost ``from_pretrained`` call while inside."""
    calls: list[Call] = []
    depth = [0]
    originals: list[tuple[type[Any], Any]] = []

    def spy(func: Callable[..., Any], kind: str) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(owner: type, *args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                calls.append(Call(kind, owner.__name__, dict(kwargs)))
            depth[0] += 1
            try:
                return func(owner, *args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    try:
        for cls, kind in _spied_classes():
            raw = cls.__dict__["from_pretrained"]
            if not isinstance(raw, classmethod):
                continue
            originals.append((cls, raw))
            cls.from_pretrained = classmethod(spy(raw.__func__, kind))
        yield calls
    finally:
        for cls, raw in reversed(originals):
            cls.from_pretrained = raw


#: The config fields an argument may reach the model through instead (config=... keyword).
_CONFIG_FIELDS = {"attn_implementation": ("_attn_implementation", "attn_implementation")}
#: Arguments the config load may carry instead of the model load.
_CONFIG_ARGUMENTS = ("revision", "cache_dir", "trust_remote_code")


def _same(name: str, got: object, want: object) -> bool:
    if isinstance(want, bool):
        return isinstance(got, bool) and got == want
    if name == "cache_dir":
        return isinstance(got, (str, os.PathLike)) and Path(got) == Path(str(want))
    return bool(got == want)


def _hf_arguments(ctx: CheckContext, cache_dir: Path) -> list[tuple[str, object]]:
    """Return (argument, harmless value) for every from_pretrained argument the protocol documents.

    ``dtype`` is left to check_load_model_honours_dtype, which checks its effect: one bug, one
    failing check.
    """
    arguments: list[tuple[str, object]] = []
    if ctx.device == "cpu" or ctx.device.startswith("cuda"):
        arguments.append(("device_map", ctx.device))
    arguments += [("low_cpu_mem_usage", True), ("revision", "main"), ("cache_dir", str(cache_dir)),
                  ("attn_implementation", "eager"), ("trust_remote_code", False)]
    return arguments


def _arrival(calls: list[Call], name: str, value: object) -> str | None:
    """Return why ``name=value`` did not reach a from_pretrained call (None when it did)."""
    models = [c for c in calls if c.kind == "model"]
    carriers = models + ([c for c in calls if c.kind == "config"] if name in _CONFIG_ARGUMENTS
                         else [])
    if not models:
        seen = ", ".join(f"{c.owner}.from_pretrained" for c in calls) or "nothing"
        return f"called no model class's from_pretrained() (the spy saw {seen})"
    changed = []
    for c in carriers:
        if name in c.kwargs:
            if _same(name, c.kwargs[name], value):
                return None
            changed.append(f"{c.owner}.from_pretrained got {name}={c.kwargs[name]!r}")
        config = c.kwargs.get("config")
        for field in _CONFIG_FIELDS.get(name, ()):
            if config is not None and _same(name, getattr(config, field, None), value):
                return None
    if changed:
        return f"changed it on the way: {'; '.join(changed)}"
    owners = ", ".join(sorted({f"{c.owner}.from_pretrained" for c in carriers}))
    return f"did not pass {name} to {owners}"


@check(level=SHOULD, why="the protocol documents these from_pretrained arguments, but they are "
       "conveniences: a model loads correctly without them")
def check_load_model_passes_hf_arguments(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """load_model(path, **hf_kwargs) passes device_map, low_cpu_mem_usage, revision, cache_dir, attn_implementation and trust_remote_code on to transformers' from_pretrained."""  # noqa: E501
    if ctx.model_path is None:
        raise CheckNotApplicable("the model was not loaded from a path")
    if not hasattr(adapter, "load_model"):
        raise CheckNotApplicable("adapter has no load_model()")
    problems = Problems()
    with tempfile.TemporaryDirectory(prefix="invarlock-cache-dir-") as tmp:
        for name, value in _hf_arguments(ctx, Path(tmp)):
            call = f"load_model({Path(ctx.model_path).name!r}, {name}={value!r})"
            with _spy_from_pretrained() as calls:
                try:
                    loaded = _load(adapter, ctx, ctx.model_path, **{name: value})
                except Exception as exc:
                    problems.add(f"{call} raised {exc!r}")
                    continue
            del loaded
            why = _arrival(calls, name, value)
            if why:
                problems.add(f"{call} {why}")
    problems.raise_if_any("Pass every from_pretrained keyword of **hf_kwargs through to "
                          "transformers unchanged (the config load too, for revision, cache_dir "
                          "and trust_remote_code)")


# --------------------------------------------------------------------------- remote code


@contextmanager
def _modules_cache_inside(root: Path) -> Iterator[None]:
    """Point transformers' dynamic-module cache (HF_MODULES_CACHE) at ``root`` while inside.

    Remote code is copied there and imported as ``transformers_modules.<dir>.<hash>``; afterwards
    the modules are forgotten and ``root`` leaves ``sys.path``, so nothing outlives the check.
    """
    from transformers import dynamic_module_utils as dmu

    saved_cache = dmu.HF_MODULES_CACHE
    before = set(sys.modules)
    package = sys.modules.get("transformers_modules")
    saved_path = list(package.__path__) if package is not None else None
    dmu.HF_MODULES_CACHE = str(root)
    if package is not None:  # an earlier load imported it from elsewhere: let it find ours too
        package.__path__.append(str(root / "transformers_modules"))
    try:
        yield
    finally:
        dmu.HF_MODULES_CACHE = saved_cache
        sys.path[:] = [p for p in sys.path if p != str(root)]
        for name in set(sys.modules) - before:
            if name == "transformers_modules" or name.startswith("transformers_modules."):
                del sys.modules[name]
        if package is not None and saved_path is not None:
            package.__path__[:] = saved_path


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fresh_probe(root: Path) -> Path:
    """Copy the remote-code probe to a new directory with a unique (importable) name."""
    from pytest_invarlock.hf_adapter.fixtures import probe_path

    copy = root / f"invarlock_remote_code_probe_{uuid.uuid4().hex}"
    shutil.copytree(probe_path("remote-code"), copy)
    return copy


@check(level=MUST, why="running code shipped with a checkpoint without consent is arbitrary code "
       "execution")
def check_load_model_refuses_remote_code(adapter: Any, model: nn.Module,
                                         ctx: CheckContext) -> None:
    """load_model refuses trust_remote_code without INVARLOCK_ALLOW_REMOTE_CODE=1 and runs no code."""
    if not hasattr(adapter, "load_model"):
        raise CheckNotApplicable("adapter has no load_model()")
    problems = Problems()
    with tempfile.TemporaryDirectory(prefix="invarlock-remote-code-") as tmp:
        root = Path(tmp)
        with _modules_cache_inside(root / "modules"):
            for i, kwargs in enumerate(({"trust_remote_code": True}, {})):
                probe = _fresh_probe(root)  # a new module name: no cached import can hide a run
                marker = root / f"executed-{i}"
                with _environment(**{ALLOW_ENV: None, MARKER_ENV: str(marker)}):
                    problem = _refusal_problem(adapter, ctx, probe, kwargs, marker)
                if problem:
                    problems.add(problem)
    problems.raise_if_any(f"Refuse trust_remote_code unless {ALLOW_ENV}=1, and pass "
                          f"trust_remote_code=False to from_pretrained unless {ALLOW_ENV}=1")


def _refusal_problem(adapter: Any, ctx: CheckContext, probe: Path, kwargs: dict[str, Any],
                     marker: Path) -> str | None:
    """Load the probe; return what went wrong (it loaded, or its code ran), None if refused."""
    shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    call = f"load_model(<remote-code probe>{', ' + shown if shown else ''})"
    try:
        loaded = _load(adapter, ctx, probe, **kwargs)
    except CheckNotApplicable:
        raise
    except Exception:
        loaded = None
    ran = marker.read_text().strip() if marker.exists() else None
    if ran and loaded is not None:
        return (f"{call} executed the checkpoint's own Python code ({ran}) and returned its "
                f"{type(loaded).__name__}")
    if ran:
        return f"{call} executed the checkpoint's own Python code ({ran}) before failing"
    if loaded is not None:
        return (f"{call} loaded a checkpoint whose model code ships with it, without "
                f"{ALLOW_ENV}=1")
    return None


# --------------------------------------------------------------------------- quantized checkpoints


#: the quant methods whose fixtures build fastest first (gptqmodel builds in a subprocess)
_PREFERRED = ("bitsandbytes", "compressed-tensors", "gptq", "awq")


def _prequantized_for(model: nn.Module) -> tuple[Any, Path] | tuple[None, str]:
    """Return a buildable pre-quantized fixture of ``model``'s role (else why there is none)."""
    from pytest_invarlock.hf_adapter.quant_fixtures import missing, quant_fixture_path
    from pytest_invarlock.hf_adapter.quant_fixtures import quantized_catalog as entries

    role = _role_of(model)
    mine = sorted((q for q in entries().values() if q.role == role), key=lambda q: (
        _PREFERRED.index(q.method) if q.method in _PREFERRED else len(_PREFERRED), q.name))
    for q in mine:
        if missing(q) is None:
            return q, quant_fixture_path(q.name)
    if not mine:
        return None, f"no pre-quantized fixture of role {role!r} exists"
    extras = sorted({q.extra for q in mine})
    return None, (f"no pre-quantized fixture of role {role!r} can be built here: its backends "
                  f"are not installed (any of pytest-invarlock[{'], ['.join(extras)}])")


def _takes_source(adapter: Any, ctx: CheckContext, source: str, exc: Exception) -> None:
    """Raise not-applicable when the adapter refuses the quantized fixture's source model too.

    An adapter of one family refuses another family's checkpoint for the family, quantized or
    not: its refusal says nothing about quantization.
    """
    from pytest_invarlock.hf_adapter.fixtures import fixture_path

    try:
        _load(adapter, ctx, fixture_path(source))
    except Exception:
        raise CheckNotApplicable(f"the adapter does not load the fixture {source!r} in full "
                                 f"precision either ({type(exc).__name__}: {str(exc)[:120]})"
                                 ) from None


def _mishandled(adapter: Any, loaded: nn.Module) -> str | None:
    """Return what goes wrong when ``adapter`` snapshots a quantized model it accepted."""
    from pytest_invarlock.hf_adapter import state

    state.mark_deep(loaded)
    before = state.capture(loaded)
    try:
        blob = adapter.snapshot(loaded)
        state.perturb(loaded)
        adapter.restore(loaded, blob)
    except Exception as exc:
        return f"its snapshot()/restore() of it raised {type(exc).__name__}: {exc}"
    changed = state.diff(loaded, before)
    return (f"its snapshot()/restore() of it is not exact (the backend's state is missed): "
            f"{summarize(changed)}") if changed else None


@check(level=MUST, why="transformers applies a checkpoint's quantization_config by itself: a "
       "full-precision adapter would hand out a quantized model, then describe packed widths and "
       "snapshot it without the backend's state")
def check_load_model_refuses_quantized_checkpoint(adapter: Any, model: nn.Module,
                                                  ctx: CheckContext) -> None:
    """A full-precision adapter refuses a pre-quantized checkpoint, or fully handles what it takes."""
    from pytest_invarlock.hf_adapter.checks.quantized import is_quantized_model

    if getattr(adapter, "quantized", False) or is_quantized_model(model):
        raise CheckNotApplicable("a quantized adapter (its quantized checks apply instead)")
    if not hasattr(adapter, "load_model"):
        raise CheckNotApplicable("adapter has no load_model()")
    q, path = _prequantized_for(model)
    if q is None:
        raise CheckNotApplicable(str(path))
    call = f"load_model(<{q.method}-quantized fixture {q.name}>)"
    try:
        loaded = _load(adapter, ctx, path)
    except Exception as exc:
        said = str(exc).lower()
        if "quantiz" not in said and q.method.lower() not in said:
            _takes_source(adapter, ctx, q.source, exc)
            raise CheckFailed(f"{call} raised {type(exc).__name__}({str(exc)[:200]!r}), which "
                              f"does not say the checkpoint is quantized ({q.method}); refuse it "
                              "saying so and naming the adapter that loads it") from None
        return  # refused, saying why
    probe = fresh_instance(adapter) or adapter
    try:
        takes = probe.can_handle(loaded) is True
    except Exception:
        takes = False
    if not takes:
        return  # loaded, but declined: the model is never described or snapshotted as dense
    wrong = _mishandled(probe, loaded)
    if wrong:
        raise CheckFailed(f"{call} returned a quantized {type(loaded).__name__} that can_handle() "
                          f"accepts, and {wrong}. Refuse quantized checkpoints in load_model (read "
                          "config.json's quantization_config) naming the quantized adapter that "
                          "loads them, return False from can_handle() for quantized models, or "
                          "(a router, a quantization-aware adapter) snapshot every tensor the "
                          "forward reads, the backend's scales and state included")


CHECKS = (
    check_can_handle_own_model,
    check_can_handle_rejects_foreign_models,
    check_load_model_honours_dtype,
    check_load_model_passes_hf_arguments,
    check_load_model_refuses_remote_code,
    check_load_model_refuses_quantized_checkpoint,
)
