"""The built-in ``hf_adapter`` profile: its truth, subjects, planning and checks live here."""

from __future__ import annotations

from pytest_invarlock.hf_adapter.profile import HFAdapterProfile

PROFILE = HFAdapterProfile()

__all__ = ["PROFILE", "HFAdapterProfile"]
