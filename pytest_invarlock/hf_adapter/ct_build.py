"""Build tiny compressed-tensors checkpoints from full-precision fixtures, offline and byte-stable.

The ``hf_ct`` adapter loads only pre-quantized checkpoints, and the only producer upstream is
llmcompressor, which pins a transformers older than the project's and pulls 300 MiB (research,
``quantized-backends-cpu.md``). A weight-only round-to-nearest quantization needs no calibration
data and no llmcompressor: this module computes each scale from the weights' min/max (per output
channel or per group of input columns, symmetric) with compressed-tensors' own
``calculate_qparams``, and lets compressed-tensors apply the scheme, pack the weights
(``ModelCompressor.compress_model``: ``weight_packed`` int32, ``weight_scale``, ``weight_shape``)
and write the ``quantization_config`` (``update_config``). So the checkpoint is laid out exactly
as compressed-tensors writes and reads it, and building it twice gives the same bytes (nothing
random, sorted JSON, safetensors in name order).

Symmetric only: an asymmetric pack-quantized checkpoint (zero points packed on save) does not
load through transformers 5.24 + compressed-tensors 0.20, whose loader allocates the zero points
unpacked (``weight_zero_point`` size mismatch, measured).

Usage::

    build_ct(Path(fixture_dir), Path(out_dir), {"bits": 4, "group_size": 32})

or ``python -m pytest_invarlock.hf_adapter.ct_build SOURCE OUT --bits 4 --group-size 32``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

#: the settings :func:`build_ct` takes, with their defaults (W4A16, group 32, lm_head ignored)
DEFAULTS: dict[str, Any] = {"bits": 4, "group_size": 32, "targets": ["Linear"],
                            "ignore": ["lm_head"]}


def build_ct(source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Write a compressed-tensors (pack-quantized) checkpoint of ``source`` to ``out``.

    ``settings`` (every key optional, see :data:`DEFAULTS`):

    - ``bits``: integer weight bits, 1 to 8 (4 is W4A16, 8 is W8A16); activations stay fp;
    - ``group_size``: input columns per scale, which must divide every target's in_features;
      None quantizes per output channel;
    - ``targets`` / ``ignore``: compressed-tensors module targets and names left full precision.

    The directory is built beside ``out`` and renamed into place, so ``out`` is either absent
    or complete; an ``out`` that exists and is not empty is refused (FileExistsError).
    """
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown ct_build settings {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {**DEFAULTS, **settings}
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _build(Path(source), work, chosen)
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _build(source: Path, out: Path, settings: dict[str, Any]) -> None:
    import transformers
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    group = settings["group_size"]
    if not 1 <= int(settings["bits"]) <= 8:
        raise ValueError(f"bits {settings['bits']}: pack-quantized weights hold 1 to 8 bits")
    args = QuantizationArgs(num_bits=int(settings["bits"]), type="int", symmetric=True,
                            strategy="channel" if group is None else "group",
                            group_size=None if group is None else int(group))
    config = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=list(settings["targets"]),
                                                     weights=args)},
        ignore=list(settings["ignore"]), quantization_status=QuantizationStatus.FROZEN)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(source), dtype="auto", local_files_only=True)
    apply_quantization_config(model, config, show_progress=False)
    quantized = [(name, m) for name, m in model.named_modules()
                 if getattr(m, "quantization_scheme", None) is not None]
    if not quantized:
        raise ValueError(f"{source}: no module matches targets {settings['targets']} outside "
                         f"ignore {settings['ignore']}; nothing would be quantized")
    for name, module in quantized:
        _calibrate(name, module)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))


def _calibrate(name: str, module: Any) -> None:
    """Set a module's weight scale (and zero point) from its weights' min/max: round to nearest."""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.utils import calculate_qparams

    args = module.quantization_scheme.weights
    weight: torch.Tensor = module.weight.detach()
    if args.group_size is None:
        low, high = weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True)
    else:
        if weight.shape[-1] % args.group_size:
            raise ValueError(f"{name}: in_features {weight.shape[-1]} is not a multiple of "
                             f"group_size {args.group_size}")
        grouped = weight.reshape(*weight.shape[:-1], -1, args.group_size)
        low, high = grouped.amin(-1), grouped.amax(-1)
    scale, zero_point = calculate_qparams(low, high, args)
    with torch.no_grad():
        module.weight_scale.copy_(scale)
        module.weight_zero_point.copy_(zero_point)  # zeros (symmetric); dropped when packing
    module.quantization_status = QuantizationStatus.FROZEN


def main(argv: list[str] | None = None) -> None:
    """Build one checkpoint from the command line."""
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.hf_adapter.ct_build",
                                     description=build_ct.__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--bits", type=int, default=DEFAULTS["bits"])
    parser.add_argument("--group-size", type=int, default=DEFAULTS["group_size"],
                        help="0 quantizes per output channel")
    ns = parser.parse_args(argv)
    build_ct(ns.source, ns.out, {"bits": ns.bits, "group_size": ns.group_size or None})
    print(ns.out)


if __name__ == "__main__":
    main()
