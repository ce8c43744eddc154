"""The ModelAdapter protocol that every adapter under test implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from pytest_invarlock.registry import Requirements

#: Members every adapter must have (spec 000, "Base Adapter Interface").
CORE_MEMBERS: tuple[str, ...] = ("name", "can_handle", "describe", "snapshot", "restore")


@runtime_checkable
class ModelAdapter(Protocol):
    """Load a model, describe its structure, and snapshot/restore its state.

    ``snapshot`` returns a bytes-like buffer (``bytes``, ``bytearray`` or ``memoryview``);
    ``restore`` accepts any bytes-like buffer and either fully succeeds or raises and leaves the
    model untouched. The conformance run also uses the HF conveniences
    ``load_model(model_id, device="auto", **hf_kwargs)`` and, when present,
    ``snapshot_chunked(model, *, prefix=...) -> str`` / ``restore_chunked(model, path)``;
    checks that need a missing one are skipped with the reason.
    """

    name: str

    def can_handle(self, model: Any) -> bool:
        """Return whether this adapter understands ``model``."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Return the structure of ``model`` (see ``contracts/schemas/describe.schema.json``)."""

    def snapshot(self, model: nn.Module) -> bytes:
        """Return every parameter and buffer of ``model`` as one buffer."""

    def restore(self, model: nn.Module, blob: bytes) -> None:
        """Put the state in ``blob`` back into ``model``."""


def missing_members(adapter: object, members: tuple[str, ...] = CORE_MEMBERS) -> list[str]:
    """Return the protocol members ``adapter`` lacks, in protocol order."""
    return [m for m in members if not hasattr(adapter, m)]


#: InvarLock's group: adapters written for InvarLock (its own, and its plugins).
GROUP = "invarlock.adapters"
#: This package's group: the reference adapters, and any adapter not meant for InvarLock's
#: registry (a name registered under InvarLock's group is what ``invarlock run`` loads, so
#: claiming one would hijack InvarLock's registry). Both groups are read.
OWN_GROUP = "pytest_invarlock.adapters"
GROUPS = (OWN_GROUP, GROUP)
#: Methods the class must have: the protocol's (``name`` may be set by ``__init__``), and
#: ``load_model``, which the conformance run uses to load every model under test.
METHODS = (*(m for m in CORE_MEMBERS if m != "name"), "load_model")


def requirements() -> Requirements:
    """Return the registry's view of this protocol (groups, members, methods)."""
    from pytest_invarlock.registry import Requirements

    return Requirements("ModelAdapter", GROUPS, CORE_MEMBERS, METHODS,
                        "; the conformance run also loads models with load_model")
