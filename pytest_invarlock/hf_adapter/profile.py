"""The ``hf_adapter`` profile: InvarLock-style model adapters (spec 000/001) on HF checkpoints.

Implementations are ``ModelAdapter`` classes (``name``, ``can_handle``, ``describe``,
``snapshot``, ``restore``, and ``load_model`` for the run to load with) registered under
``pytest_invarlock.adapters`` or InvarLock's ``invarlock.adapters``. Subjects are transformers
models; a check that changes one is followed by a reset of every parameter and buffer to the
copy taken at load. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_invarlock.checking import Check, CheckContext
from pytest_invarlock.profile import Case, Env, Plan, PlanRequest, Subject

if TYPE_CHECKING:
    from torch import nn

    from pytest_invarlock.registry import Requirements

#: role -> the reference adapter named after it: its lanes are ``family-role-hf-runtime``
ROLE_ADAPTER = {"causal": "hf_causal", "mlm": "hf_mlm", "seq2seq": "hf_seq2seq",
                "multimodal": "hf_multimodal"}


class HFAdapterProfile:
    """The profile of InvarLock-style model adapters (see the module docstring)."""

    name = "hf_adapter"
    #: the quantization backends' distributions: in the provenance when installed
    backends: tuple[str, ...] = ("bitsandbytes", "torchao", "optimum-quanto", "hqq",
                                 "compressed-tensors", "gptqmodel", "optimum")

    @property
    def packages(self) -> tuple[str, ...]:
        """Return the distributions a run's provenance names (the backends only when installed)."""
        from importlib.metadata import PackageNotFoundError, version

        installed = []
        for backend in self.backends:
            try:
                version(backend)
            except PackageNotFoundError:
                continue
            installed.append(backend)
        return ("torch", "transformers", "safetensors", "accelerate", *installed)
    lanes: tuple[str, ...] = ("cpu", "cuda", "cpu-quant", "cuda-quant")

    @property
    def requirements(self) -> Requirements:
        """Return where adapters register and what they must have."""
        from pytest_invarlock.hf_adapter.protocol import requirements

        return requirements()

    def checks(self) -> Sequence[Check[nn.Module]]:
        """Return every check of the library, in module order."""
        from pytest_invarlock.hf_adapter.checks import all_checks

        return all_checks()

    def yield_checks(self, case: Case, checks: Sequence[Check[nn.Module]]
                     ) -> Iterable[Check[nn.Module]]:
        """Yield every check: each applies to every ModelAdapter (claims decide at run time)."""
        yield from checks

    def plan(self, request: PlanRequest) -> Plan:
        """Plan every adapter on every checkpoint it may take; load nothing."""
        from pytest_invarlock.hf_adapter.planning import Planner

        return Planner(request).run()

    def load(self, case: Case, adapter: Any, env: Env) -> Subject[nn.Module]:
        """Load the checkpoint with ``adapter.load_model`` and keep a copy of its state."""
        from pytest_invarlock.registry import AdapterError

        if not hasattr(adapter, "load_model"):
            raise AdapterError(f"adapter {case.adapter!r} has no load_model(); the suite needs it "
                               "to load the models under test")
        model = adapter.load_model(case.path, device=env.device)
        ctx = CheckContext(adapter_name=case.adapter, model_label=case.model,
                           model_path=case.path, device=env.device, workdir=env.workdir,
                           reference=env.reference, selector=case.selector)
        return Subject(case, adapter, model, ctx, self, _capture(adapter, model))

    def decline(self, subject: Subject[nn.Module]) -> str | None:
        """Return why ``can_handle()`` refuses the loaded model (None: it takes it)."""
        try:
            answer = subject.adapter.can_handle(subject.model)
        except Exception:
            return None  # a crashing can_handle() is the adapter's defect: its checks show it
        return None if answer is True else f"can_handle() returned {answer!r}"

    def put_back(self, subject: Subject[nn.Module]) -> None:
        """Reset every tensor the check changed (untouched models keep their ties).

        A quantized subject is written back in place and checked again; what cannot be put back
        that way (a dtype cast, a leaf gone or new) is loaded afresh.
        """
        from pytest_invarlock.hf_adapter import state

        if not state.diff(subject.model, subject.saved):
            return
        if not state.deep(subject.model):
            state.reset(subject.model, subject.saved)
            return
        try:
            state.reset(subject.model, subject.saved)
            if not state.diff(subject.model, subject.saved):
                return
        except ValueError:
            pass
        subject.model = subject.adapter.load_model(subject.ctx.model_path,
                                                   device=subject.ctx.device)
        subject.saved = _capture(subject.adapter, subject.model)

    def load_error(self, case: Case, exc: BaseException) -> str:
        """Return one line saying why ``case`` did not load: the file at fault when one is."""
        from pytest_invarlock.errors import CallTimeout
        from pytest_invarlock.hf_adapter.checkpoint import one_line
        from pytest_invarlock.hf_adapter.planning import _broken
        from pytest_invarlock.registry import AdapterError

        cause = (_broken(case.path) if case.path else None) or (
            str(exc) if isinstance(exc, (AdapterError, CallTimeout)) else
            f"load_model raised {one_line(exc)}")
        return f"{case.adapter} on {case.model}: cannot load the model: {cause}"

    def lane_id(self, case: Case, lane: str) -> str:
        """Return ``family-role-hf-lane``, suffixed with the adapter when not the role's own."""
        role = case.role or "unknown"
        base = f"{case.family or 'unknown'}-{role}-hf-{lane}"
        return base if ROLE_ADAPTER.get(role) == case.adapter else f"{base}-{case.adapter}"


def _capture(adapter: Any, model: nn.Module) -> Any:
    """Keep what put_back restores: every tensor (every leaf of a quantized model) and the ties.

    A quantized model's forward reads tensors that are not parameters or buffers (leaves.py);
    a model whose adapter says it is quantized is treated so from the start, hidden state that
    appears only on the first forward included.
    """
    from pytest_invarlock.hf_adapter import state

    if getattr(adapter, "quantized", False):
        state.mark_deep(model)
    return state.capture(model)
