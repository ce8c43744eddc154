"""The lanes as data: which device and which kind of adapter each lane runs, and when it can."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lane:
    """One row of the lane table."""

    id: str
    device: str
    quantized: bool
    description: str


LANES: dict[str, Lane] = {lane.id: lane for lane in (
    Lane("cpu", "cpu", False, "full-precision adapters on the CPU"),
    Lane("cuda", "cuda", False, "full-precision adapters on a CUDA device"),
    Lane("cpu-quant", "cpu", True, "quantized adapters on the CPU"),
    Lane("cuda-quant", "cuda", True, "quantized adapters on a CUDA device"),
)}


def unavailable(lane: Lane) -> str | None:
    """Return why ``lane`` cannot run on this machine, or None when it can."""
    if lane.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return (f"lane {lane.id} needs a CUDA device and torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}); run it on a GPU machine")
    return None


def admits(lane: Lane, adapter: object) -> bool:
    """Return whether ``adapter`` belongs in ``lane`` (adapters declare ``quantized = True``)."""
    return bool(getattr(adapter, "quantized", False)) == lane.quantized
