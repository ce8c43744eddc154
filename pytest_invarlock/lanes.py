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
    #: importable module -> the pip requirement that provides it
    requires: tuple[tuple[str, str], ...] = ()
    #: the pytest-invarlock extras the lane's nox session installs (the quantization backends);
    #: unlike ``requires``, a missing one skips only the adapters that need it
    extras: tuple[str, ...] = ()
    #: xdist workers its nox/tox session runs with (0: one process); each worker loads its own
    #: subjects, so only a lane of many cheap subjects gains from it
    workers: int = 0


LANES: dict[str, Lane] = {lane.id: lane for lane in (
    Lane("cpu", "cpu", False, "full-precision adapters on the CPU"),
    Lane("cuda", "cuda", False, "full-precision adapters on a CUDA device"),
    Lane("cpu-quant", "cpu", True, "quantized adapters on the CPU",
         extras=("bnb", "torchao", "quanto", "hqq", "ct", "gptq", "awq")),
    Lane("cuda-quant", "cuda", True, "quantized adapters on a CUDA device",
         extras=("bnb", "torchao", "quanto", "hqq", "ct", "gptq", "awq")),
    Lane("tl-cpu", "cpu", False, "TransformerLens architecture adapters on tiny real models, CPU",
         requires=(("transformer_lens", "transformer-lens==4.3.*"),), workers=2),
)}
AUTO = "auto"


def choose(lane_id: str) -> Lane:
    """Return the lane for an id; ``auto`` picks ``cuda`` when a CUDA device is usable, else ``cpu``."""
    if lane_id != AUTO:
        return LANES[lane_id]
    import torch

    return LANES["cuda" if torch.cuda.is_available() else "cpu"]


def missing_extras(lane: Lane) -> list[str]:
    """Return the pip requirements the lane needs that are not installed."""
    import importlib.util

    return [req for module, req in lane.requires if importlib.util.find_spec(module) is None]


def unavailable(lane: Lane) -> str | None:
    """Return why ``lane`` cannot run on this machine (the precise fix), or None when it can."""
    missing = missing_extras(lane)
    if missing:
        return f"lane {lane.id} needs {', '.join(missing)}: pip install {' '.join(missing)}"
    if lane.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return (f"lane {lane.id} needs a CUDA device and torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}); run it on a GPU machine")
    return None


def admits(lane: Lane, adapter: object) -> bool:
    """Return whether ``adapter`` belongs in ``lane`` (adapters declare ``quantized = True``)."""
    return bool(getattr(adapter, "quantized", False)) == lane.quantized
