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


class CallTimeout(TimeoutError):
    """An adapter call did not return within the time bound; the message names the call."""
