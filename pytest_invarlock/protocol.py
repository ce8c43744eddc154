"""The ModelAdapter protocol that every adapter under test implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

#: Members every adapter must have (spec 000, "Base Adapter Interface").
CORE_MEMBERS: tuple[str, ...] = ("name", "can_handle", "describe", "snapshot", "restore")
#: Conveniences of the HF mixin; checks that need them are skipped when an adapter lacks them.
HF_MEMBERS: tuple[str, ...] = ("load_model", "snapshot_chunked", "restore_chunked")
#: describe() keys every adapter must report.
REQUIRED_DESCRIBE_KEYS: tuple[str, ...] = ("n_layer", "heads_per_layer", "mlp_dims", "tying")


@runtime_checkable
class ModelAdapter(Protocol):
    """Load a model, describe its structure, and snapshot/restore its state.

    ``snapshot`` returns a bytes-like buffer (``bytes``, ``bytearray`` or ``memoryview``);
    ``restore`` accepts any bytes-like buffer and either fully succeeds or raises and leaves the
    model untouched.
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
