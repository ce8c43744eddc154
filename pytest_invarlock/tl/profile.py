"""The ``transformer_lens`` profile: plan, load and put back TransformerLens adapter subjects.

An implementation is an architecture adapter class (TransformerLens's own, listed from its
factory table, or a third party's from the ``transformer_lens.architectures`` entry points, or a
``module:Class`` passed on the command line); a subject is a tiny real HF model of one
architecture the class is registered for. ``--invarlock-model`` names architectures
(``LlamaForCausalLM``). The core hands :meth:`load` the class (``Requirements.construct`` is
False): the profile builds the model, then the adapter from the model's config, as
TransformerLens's factory does.

Planning reads the factory table as source and builds nothing; importing this module loads
neither torch nor transformers nor transformer_lens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_invarlock.profile import Case, Env, Plan, PlanRequest, Subject, labels
from pytest_invarlock.tl import discovery

if TYPE_CHECKING:
    from torch import nn

    from pytest_invarlock.checking import Check
    from pytest_invarlock.registry import AdapterSpec, Requirements

NAME = "transformer_lens"
#: the methods TransformerLens calls on an adapter when it builds and uses a bridge
METHODS = ("get_component_mapping", "translate_transformer_lens_path",
           "convert_hf_key_to_tl_key", "preprocess_weights", "prepare_model")
#: the seed every subject is built from: one architecture, one model, on every run
SEED = 0
#: architecture-name endings -> the role a report groups by
ROLES = (("ForCausalLM", "causal"), ("LMHeadModel", "causal"), ("ForMaskedLM", "mlm"),
         ("ForConditionalGeneration", "conditional"), ("ForImageClassification", "vision"),
         ("ForAudioClassification", "audio"), ("ForCTC", "audio"), ("ForDiffusionLM", "diffusion"),
         ("Model", "base"))


def family(architecture: str) -> str:
    """Return the family a report groups an architecture under (``GPTNeoXForCausalLM`` -> gptneox)."""
    for ending, _role in ROLES:
        if architecture.endswith(ending) and architecture != ending:
            return architecture[: -len(ending)].lower()
    return architecture.lower()


def role(architecture: str) -> str:
    """Return the role an architecture's name says (``causal``, ``mlm``, ... else ``other``)."""
    return next((r for ending, r in ROLES if architecture.endswith(ending)), "other")


_ARCH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TransformerLensProfile:
    """The profile of TransformerLens architecture adapters (see the module docstring)."""

    name = NAME
    lanes: tuple[str, ...] = ("tl-cpu",)

    @property
    def packages(self) -> tuple[str, ...]:
        """Return the distributions a run's provenance names."""
        return ("torch", "transformers", "safetensors", discovery.DISTRIBUTION)

    @property
    def requirements(self) -> Requirements:
        """Return how adapters are listed and what their classes must have."""
        from pytest_invarlock.registry import Requirements

        return Requirements("ArchitectureAdapter", (discovery.GROUP,), METHODS, METHODS,
                            " (transformer_lens.model_bridge.ArchitectureAdapter has them all)",
                            construct=False, listing=discovery.listing)

    def checks(self) -> Sequence[Check[nn.Module]]:
        """Return every check of the profile, in the order they run."""
        from pytest_invarlock.tl.checks import CHECKS

        return CHECKS

    def yield_checks(self, case: Case, checks: Sequence[Check[nn.Module]]
                     ) -> Iterable[Check[nn.Module]]:
        """Yield every check: each applies to every architecture adapter."""
        yield from checks

    # ------------------------------------------------------------------ planning

    def plan(self, request: PlanRequest) -> Plan:
        """One case per (adapter class, architecture it is registered for); builds nothing.

        With ``--invarlock-model`` only those architectures; an adapter named on the command
        line together with models is run on exactly those (an explicit pair).
        """
        from pytest_invarlock.registry import resolve

        plan = Plan()
        if request.lane.id not in self.lanes:
            return plan
        selectors = request.selectors or tuple(sorted(request.discovery.adapters))
        for selector in selectors:
            spec = resolve(selector, request.discovery)
            mine = self.architectures(spec)
            if request.models:
                archs = list(request.models) if request.selectors else [
                    m for m in request.models if m in mine]
            else:
                archs = mine
            if not archs:
                continue
            plan.selectors[spec.label] = selector
            for arch in archs:
                error = None if _ARCH.match(arch) else (
                    f"--invarlock-model={arch}: not an architecture name (the profile "
                    f"{NAME} takes HF architecture names such as LlamaForCausalLM)")
                plan.cases.append(Case(NAME, spec.label, selector, arch, None, labels(
                    family=family(arch), role=role(arch), architecture=arch), error=error,
                    explicit=bool(request.selectors and request.models), cost=1.0))
        return plan

    def architectures(self, spec: AdapterSpec) -> list[str]:
        """Return the architectures an adapter is registered for.

        For a class passed as ``module:Class``: those of its nearest registered base class.
        """
        if spec.origin != "path":
            return [r.architecture for r in discovery.registrations()
                    if r.target == spec.target and r.distribution == spec.distribution]
        cls = spec.check_class()
        for base in cls.__mro__:
            found = [r.architecture for r in discovery.registrations()
                     if _loads(r.target) is base]
            if found:
                return found
        return []

    # ------------------------------------------------------------------ subjects

    def load(self, case: Case, adapter: Any, env: Env) -> Subject[nn.Module]:
        """Build the architecture's tiny model, then an ``adapter`` instance from its config.

        An architecture no tiny model builds for is kept as a subject without a model: the
        adapter then declines it, saying why (it is not the adapter's defect).
        """
        from pytest_invarlock.checking import CheckContext
        from pytest_invarlock.tl import bridge, tiny

        ctx = CheckContext(adapter_name=case.adapter, model_label=case.model, device=env.device,
                           workdir=env.workdir, reference=False, selector=case.selector)
        try:
            model = tiny.build(case.model, SEED, bridge.hf_class(case.model))
        except tiny.Unbuildable as exc:
            return Subject(case, adapter, None, ctx, self, saved=str(exc))  # type: ignore[arg-type]
        instance = bridge.new_adapter(adapter, model, case.model)
        return Subject(case, instance, model, ctx, self)

    def decline(self, subject: Subject[nn.Module]) -> str | None:
        """Return why no tiny model of the architecture builds (None: it built)."""
        if subject.model is None:
            return f"no tiny model of {subject.case.model} builds offline: {subject.saved}"
        return None

    def put_back(self, subject: Subject[nn.Module]) -> None:
        """Nothing to put back: every check bridges a copy and leaves the subject untouched."""

    def load_error(self, case: Case, exc: BaseException) -> str:
        """Return one line saying why the case did not load."""
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        return (f"{case.adapter} on {case.model}: cannot make the adapter for the tiny "
                f"{case.model}: {detail}")

    def lane_id(self, case: Case, lane: str) -> str:
        """Return ``<architecture>-<lane>``, suffixed with a foreign adapter's label.

        A foreign adapter is one TransformerLens does not register for that architecture.
        """
        base = f"{case.model}-{lane}"
        registered = discovery.registered_target(case.model)
        if registered is not None and registered.rpartition(":")[2] == case.adapter:
            return base
        return f"{base}-{case.adapter}"


def _loads(target: str) -> Any:
    """Return the class ``module:Class`` names (None when it does not import)."""
    from pytest_invarlock.registry import AdapterError, AdapterSpec

    try:
        return AdapterSpec(target, target).load_class()
    except AdapterError:
        return None


#: what ``pytest_invarlock.profile.BUILTIN`` names
PROFILE = TransformerLensProfile()
