"""What every profile's checks share: the ``Check`` type, levels, the context, problem lists.

A check is a pure function ``check_<behaviour>(implementation, subject, ctx)``. It raises
:class:`~pytest_invarlock.errors.CheckFailed` with a message naming the key at fault and the
fix, raises :class:`~pytest_invarlock.errors.CheckNotApplicable` when it does not apply, and
returns ``None`` when the implementation conforms. Checks never load the model under test,
write reports or read the command line.

Every check carries a requirement level (RFC 2119): ``MUST`` checks a promise of the protocol
(a failure is a defect), ``SHOULD`` checks hardening beyond it (a failure is a finding, shown
but not failing the run unless ``--invarlock-strict``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

M_contra = TypeVar("M_contra", contravariant=True)
F = TypeVar("F", bound=Callable[..., None])

MUST = "MUST"
SHOULD = "SHOULD"
LEVELS = (MUST, SHOULD)


@dataclass(frozen=True)
class CheckContext:
    """What a check may know besides the implementation and the subject."""

    adapter_name: str
    model_label: str
    model_path: str | None = None
    device: str = "cpu"
    workdir: Path = field(default_factory=Path.cwd)
    #: A reference implementation of this package (it must declare its capabilities).
    reference: bool = False
    #: How the implementation was selected (``name`` or ``module:Class``): re-creates it elsewhere.
    selector: str | None = None


class Check(Protocol[M_contra]):
    """A check of subjects of type ``M``: ``check(implementation, subject, ctx) -> None``."""

    __name__: str

    def __call__(self, adapter: Any, model: M_contra, ctx: CheckContext, /) -> None:
        """Return when the implementation conforms; raise CheckFailed naming the fix otherwise."""


def check(*, level: str = MUST, mutates: bool = False, why: str = "") -> Callable[[F], F]:
    """Mark a function as a check of ``level``; ``mutates`` says it changes the subject.

    ``why`` says why the level is what it is (shown in the generated check docs).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")

    def mark(func: F) -> F:
        setattr(func, "mutates", mutates)  # noqa: B010 - attributes a Callable type lacks
        setattr(func, "level", level)  # noqa: B010
        setattr(func, "why", why)  # noqa: B010
        return func

    return mark


def mutates(func: Check[Any]) -> bool:
    """Return whether ``func`` changes the subject it is given."""
    return bool(getattr(func, "mutates", False))


def level_of(func: Check[Any]) -> str:
    """Return the requirement level of ``func`` (``MUST`` unless declared otherwise)."""
    return str(getattr(func, "level", MUST))


#: How many problems one failure message lists before it says "and N more".
SHOWN = 8


def summarize(problems: Iterable[str], limit: int = SHOWN, sep: str = "; ") -> str:
    """Join problems into one readable paragraph: the first ``limit``, then how many more."""
    items = list(problems)
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


class Problems:
    """Collect every problem a check finds, so one defect never hides another.

    ``add`` records a problem; ``raise_if_any`` fails the check with all of them (counted, the
    first :data:`SHOWN` listed) followed by the fix.
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, problem: str) -> None:
        """Record one problem (a sentence naming the object at fault)."""
        self.items.append(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, fix: str = "") -> None:
        """Raise :class:`CheckFailed` listing every problem, then ``fix``; do nothing if none."""
        from pytest_invarlock.errors import CheckFailed

        if not self.items:
            return
        lead = "" if len(self.items) == 1 else f"{len(self.items)} problems: "
        tail = f". {fix}" if fix else ""
        raise CheckFailed(f"{lead}{summarize(self.items)}{tail}")
