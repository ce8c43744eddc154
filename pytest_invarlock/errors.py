"""Exceptions shared by the adapters, the check library and the plugin."""

from __future__ import annotations


class CheckFailed(AssertionError):
    """A conformance check found the adapter wrong; the message says where and how to fix it."""


class CheckNotApplicable(Exception):
    """A check does not apply to this adapter or model; the message says why."""


class TruthUnavailable(RuntimeError):
    """The suite cannot derive the expected structure of a model (a gap in the suite, not a pass)."""


class SnapshotError(ValueError):
    """A snapshot cannot be restored into this model; nothing in the model was changed."""


class RemoteCodeRefused(PermissionError):
    """Loading would execute code shipped with the checkpoint and the caller did not opt in."""


class ClaimNote(Exception):
    """The check passed, with a finding the report must carry (e.g. an under-claim)."""


class InvarlockNote(UserWarning):
    """A passed check's finding, shown in pytest's warnings summary and kept in the records."""


class ModelInconsistent(TruthUnavailable, CheckFailed):
    """The model under test disagrees with its own config (layer count, widths, experts).

    The suite knows the family, so this is a finding about the model ``load_model`` returned,
    not a gap of the suite: a check that meets it fails.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"the model disagrees with its own config: {detail}; load_model() must "
                         "return the checkpoint's model as transformers builds it (if it does, "
                         "the checkpoint itself is inconsistent)")


class CallTimeout(BaseException):
    """An adapter call did not return within the time bound; the message names the call.

    A ``BaseException``, like ``KeyboardInterrupt``: the ``except Exception`` of a check (which
    judges an adapter's refusals) must never take a hung call for a refusal and carry on.
    """
