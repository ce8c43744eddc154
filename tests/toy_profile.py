"""A toy profile: the profile seam holding subjects that are not Hugging Face models.

The worked example for ``docs/extending.md``. Nothing in ``pytest_invarlock`` knows of it: a
(fake) distribution registers it under ``invarlock.profiles`` and its implementations under its
own entry-point group, and ``tests/test_toy_profile.py`` runs it end to end.

The protocol, ``ModuleFactory``:

* ``name``: the implementation's name;
* ``build(label) -> nn.Module``: the module a label names, ``mlp-<width>`` being
  ``nn.Sequential(nn.Linear(IN, width), nn.ReLU(), nn.Linear(width, OUT))``, seeded (one label
  always builds the same parameters) and in eval mode;
* ``scale(module, factor)``: multiply the module's output by ``factor``, in place.

Subjects are plain ``nn.Module`` objects, named by labels: planning loads nothing and reads
nothing from disk. A check that changes the subject is followed by :meth:`put_back`, which
restores every parameter, buffer and training flag saved at load.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pytest_invarlock.checking import MUST, SHOULD, Check, CheckContext, check
from pytest_invarlock.errors import CheckFailed
from pytest_invarlock.profile import Case, Env, Plan, PlanRequest, Profile, Subject, labels
from pytest_invarlock.registry import Requirements, resolve

NAME = "toy_module"
#: the entry-point group implementations register under (the profile's own)
GROUP = "toy_module.implementations"
IN, OUT = 3, 2
#: the subjects planned when no --invarlock-model is given
LABELS = ("mlp-4", "mlp-8")
_LABEL = re.compile(r"^mlp-(?P<width>[1-9][0-9]{0,3})$")


def width(label: str) -> int | None:
    """Return the hidden width a label names (None: not a toy label)."""
    found = _LABEL.match(label)
    return int(found["width"]) if found else None


def seed(label: str) -> int:
    """Return the seed a label's module is built from (stable across processes)."""
    return zlib.crc32(label.encode())


# --------------------------------------------------------------------------- implementations


class SeededFactory:
    """A correct ModuleFactory: seeded, eval mode, scales the last layer."""

    name = "toy_seeded"

    def build(self, label: str) -> nn.Module:
        hidden = width(label)
        if hidden is None:
            raise ValueError(f"not a toy label: {label!r}")
        generator = torch.Generator().manual_seed(seed(label))
        module = nn.Sequential(nn.Linear(IN, hidden), nn.ReLU(), nn.Linear(hidden, OUT))
        with torch.no_grad():
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))
        return module.eval()

    def scale(self, module: nn.Module, factor: float) -> None:
        last = list(module.children())[-1]  # the output layer: its weight and bias
        with torch.no_grad():
            for param in last.parameters():
                param.mul_(factor)


class UnseededFactory(SeededFactory):
    """A broken ModuleFactory: its builds draw from the global RNG, so no two are alike."""

    name = "toy_unseeded"

    def build(self, label: str) -> nn.Module:
        hidden = width(label)
        if hidden is None:
            raise ValueError(f"not a toy label: {label!r}")
        return nn.Sequential(nn.Linear(IN, hidden), nn.ReLU(), nn.Linear(hidden, OUT)).eval()


# --------------------------------------------------------------------------- checks


def _probe() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 4 * IN).reshape(4, IN)


@check(level=MUST, mutates=True, why="scaling is the protocol's one operation")
def check_scale_multiplies_output(factory: Any, module: nn.Module, ctx: CheckContext) -> None:
    """``scale(module, 3)`` triples the output; the module is left scaled for put_back to undo."""
    x = _probe().to(ctx.device)
    with torch.no_grad():
        before = module(x)
        factory.scale(module, 3.0)
        after = module(x)
    if not torch.allclose(after, 3.0 * before, rtol=1e-5, atol=1e-6):
        worst = float((after - 3.0 * before).abs().max())
        raise CheckFailed(f"scale(module, 3.0) did not triple the output of {ctx.model_label} "
                          f"(largest error {worst:.3g}); scale the last layer's weight and bias "
                          "in place, and nothing else")


@check(level=MUST, why="a label is a subject's identity: two builds must be the same module")
def check_build_is_seeded(factory: Any, module: nn.Module, ctx: CheckContext) -> None:
    """A second ``build(label)`` has the same parameters as the subject."""
    again = factory.build(ctx.model_label).state_dict()
    differ = [k for k, v in module.state_dict().items()
              if k not in again or not torch.equal(v.cpu(), again[k].cpu())]
    if differ:
        raise CheckFailed(f"build({ctx.model_label!r}) is not reproducible: {', '.join(differ)} "
                          "differ between two builds; draw the initial parameters from "
                          "torch.Generator().manual_seed(seed(label)), not the global RNG")


@check(level=SHOULD, why="a module built in training mode makes dropout-like layers random")
def check_build_in_eval_mode(factory: Any, module: nn.Module, ctx: CheckContext) -> None:
    """The built module is in eval mode."""
    training = [name or "<root>" for name, m in module.named_modules() if m.training]
    if training:
        raise CheckFailed(f"build({ctx.model_label!r}) returned {', '.join(training)} in "
                          "training mode; return module.eval()")


#: every check, in the order they run and are reported (the mutating one first: the checks
#: after it see the subject put back)
CHECKS: list[Check[nn.Module]] = [check_scale_multiplies_output, check_build_is_seeded,
                                  check_build_in_eval_mode]


# --------------------------------------------------------------------------- the profile


class ToyModuleProfile:
    """The ``toy_module`` profile: ModuleFactory implementations on labelled nn.Modules."""

    name = NAME
    requirements = Requirements("ModuleFactory", (GROUP,), ("name", "build", "scale"),
                                ("build", "scale"))
    packages: tuple[str, ...] = ("torch",)
    lanes: tuple[str, ...] = ("cpu",)

    def checks(self) -> Sequence[Check[nn.Module]]:
        return CHECKS

    def yield_checks(self, case: Case, checks: Sequence[Check[nn.Module]]
                     ) -> Iterable[Check[nn.Module]]:
        yield from checks

    def plan(self, request: PlanRequest) -> Plan:
        """One case per (implementation, label); nothing in a lane the profile has no part in.

        An empty plan makes the core write the lane as ``not_run``: no record, no matrix lane.
        """
        plan = Plan()
        if request.lane.id not in self.lanes:
            return plan
        selectors = request.selectors or tuple(sorted(request.discovery.adapters))
        for selector in selectors:
            label = resolve(selector, request.discovery).label
            plan.selectors[label] = selector
            for model in request.models or LABELS:
                hidden = width(model)
                error = None if hidden else (f"--invarlock-model={model}: not a toy label "
                                             "(mlp-<width>)")
                plan.cases.append(Case(NAME, label, selector, model, None, labels(
                    family="mlp", role="toy", width=str(hidden) if hidden else None),
                    error=error))
        return plan

    def load(self, case: Case, adapter: Any, env: Env) -> Subject[nn.Module]:
        module = adapter.build(case.model)
        if not isinstance(module, nn.Module):
            raise TypeError(f"build({case.model!r}) returned a {type(module).__name__}, not an "
                            "nn.Module")
        module = module.to(env.device)
        ctx = CheckContext(adapter_name=case.adapter, model_label=case.model, device=env.device,
                           workdir=env.workdir, reference=env.reference, selector=case.selector)
        saved = ({k: v.detach().clone() for k, v in module.state_dict().items()},
                 {name: m.training for name, m in module.named_modules()})
        return Subject(case, adapter, module, ctx, self, saved)

    def decline(self, subject: Subject[nn.Module]) -> str | None:
        return None  # a factory takes every label it is given

    def put_back(self, subject: Subject[nn.Module]) -> None:
        state, modes = subject.saved
        subject.model.load_state_dict(state)
        for name, m in subject.model.named_modules():
            m.train(modes.get(name, m.training))

    def load_error(self, case: Case, exc: BaseException) -> str:
        return (f"{case.adapter} on {case.model}: build() raised {type(exc).__name__}: {exc}; "
                "build every mlp-<width> label")

    def lane_id(self, case: Case, lane: str) -> str:
        return f"{case.model}-toy-{lane}-{case.adapter}"


#: what the ``invarlock.profiles`` entry point names (typed: mypy checks the protocol)
PROFILE: Profile[nn.Module] = ToyModuleProfile()
