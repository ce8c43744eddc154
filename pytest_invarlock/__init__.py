"""pytest-invarlock: the conformance suite for model adapters, as a pytest plugin.

Importing this package is cheap: torch and transformers load only when a check or adapter needs them.
"""

from __future__ import annotations

from pytest_invarlock.errors import (
    CheckFailed,
    CheckNotApplicable,
    RemoteCodeRefused,
    SnapshotError,
    TruthUnavailable,
)
from pytest_invarlock.hf_adapter.protocol import ModelAdapter

__all__ = [
    "CheckFailed",
    "CheckNotApplicable",
    "ModelAdapter",
    "RemoteCodeRefused",
    "SnapshotError",
    "TruthUnavailable",
]
__version__ = "0.1.0"
