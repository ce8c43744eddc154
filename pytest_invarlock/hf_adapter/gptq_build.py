"""Build tiny pre-quantized GPTQ and AWQ checkpoints from the fp fixtures, offline and deterministically.

The GPTQ and AWQ reference adapters (adapters/quant_gptq.py) load pre-quantized checkpoints only,
and none ships with this project; these are made on the CPU by gptqmodel (the ``gptq``/``awq``
extras) from a bundled fixture. What each step works around is measured (see
``research/quantized-backends-cpu.md`` for the backend facts):

- gptqmodel quantizes only a directory that holds a tokenizer, and the fixtures have none: a
  WordLevel tokenizer over ``t0 .. t<vocab_size-1>`` (the ids *are* the fixture's vocabulary) is
  written next to a copy of the source;
- calibration is 8 sequences of 32 ids computed arithmetically (no RNG, no data set), and the
  seeds are fixed anyway;
- ``offload_to_disk=False``: the default offload writes a random ``/tmp/gptqmodel_*`` path into
  ``quantization_config.meta`` (the checkpoint differed run to run) and made a 1 s build take 68 s;
- ``quant_log.csv`` is not part of the checkpoint: it records wall times and the order in which
  worker threads finished, the only bytes that differed between two builds; the per-processor
  logs gptqmodel writes to ``./logs`` go to the build's scratch directory instead;
- GPTQ is quantized in float32 (gptqmodel's CPU default casts the fp32 source to bfloat16); AWQ's
  CPU quantizer (``BACKEND.AWQ_TORCH``, the only one that runs on a CPU) takes float16/bfloat16
  only, so AWQ checkpoints are float16;
- gptqmodel's AWQ clip search asserts that each clipped linear's width is a multiple of 64, and
  the fixtures' ``v_proj`` is 16 or 32 wide: linears narrower than that are left unclipped (the
  search already skips ``q_``/``k_``), the others are clipped as usual.

Two builds in fresh processes write byte-identical files (tests/test_gptq_adapter.py checks it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUILDER_VERSION = "1"
METHODS = ("gptq", "awq")
#: what gptqmodel's CPU kernels (TorchAtenLinear / TorchAtenAwqLinear) run: 4 bits, these groups
BITS = (4,)
GROUP_SIZES = (16, 32, 64, 128)
CALIBRATION_SAMPLES = 8
CALIBRATION_TOKENS = 32
#: gptqmodel's AWQ clip search works on batches of 64 (or 256) output rows
AWQ_CLIP_ROWS = 64
#: the only files gptqmodel writes that are not the checkpoint (timings, thread order)
NOT_CHECKPOINT = ("quant_log.csv",)


def check_settings(config: dict[str, Any], settings: dict[str, Any]) -> tuple[str, int, int]:
    """Return ``(method, bits, group_size)``, or raise ValueError naming what does not fit."""
    method = settings.get("method")
    bits = settings.get("bits", 4)
    group_size = settings.get("group_size")
    unknown = sorted(set(settings) - {"method", "bits", "group_size"})
    if unknown:
        raise ValueError(f"unknown settings {unknown}: method, bits and group_size only")
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {list(METHODS)}")
    if bits not in BITS:
        raise ValueError(f"bits {bits!r}: gptqmodel's CPU kernels run {list(BITS)} only")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size {group_size!r}: one of {list(GROUP_SIZES)}")
    widths = input_widths(config)
    misfit = sorted(w for w in widths if w % group_size)
    if misfit:
        raise ValueError(f"group_size {group_size} does not divide the linear input widths {misfit} "
                         f"(all: {sorted(widths)})")
    return str(method), int(bits), int(group_size)


def input_widths(config: dict[str, Any]) -> set[int]:
    """Return the input widths of a decoder's quantized linears (attention and MLP)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {hidden, heads * head_dim, int(config["intermediate_size"])}


def calibration(vocab_size: int) -> list[dict[str, list[int]]]:
    """Return the calibration batch: fixed ids spread over the vocabulary (bos/eos/unk excluded)."""
    span = vocab_size - 3
    return [{"input_ids": [3 + (7 * s + 13 * t + s * t) % span for t in range(CALIBRATION_TOKENS)],
             "attention_mask": [1] * CALIBRATION_TOKENS} for s in range(CALIBRATION_SAMPLES)]


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """Write a WordLevel tokenizer whose tokens ``t<i>`` are the ids ``i`` of the vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t2"))
    core.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, bos_token="t0", eos_token="t1", unk_token="t2", pad_token="t1")
    fast.save_pretrained(str(directory))


@contextlib.contextmanager
def _clip_only_whole_batches() -> Iterator[None]:
    """Make gptqmodel's AWQ clip search skip linears narrower than its 64-row batches.

    Unpatched, ``_compute_best_clip`` asserts ``out_features % 64 == 0`` and the build fails on
    the fixtures' 16-wide ``v_proj``. Restored on exit.
    """
    from gptqmodel.looper.awq_processor import AWQProcessor

    original = AWQProcessor._search_best_clip

    def search(self: Any, layer: Any, named_linears: dict[str, Any], input_feat: Any) -> Any:
        whole = {n: m for n, m in named_linears.items()
                 if int(m.weight.shape[0]) % AWQ_CLIP_ROWS == 0}
        return original(self, layer, whole, input_feat)

    AWQProcessor._search_best_clip = search
    try:
        yield
    finally:
        AWQProcessor._search_best_clip = original


@contextlib.contextmanager
def _logs_into(directory: Path) -> Iterator[None]:
    """Make gptqmodel write its per-processor logs under ``directory``, not ``./logs``.

    Its processors write ``logs/<method>_log_<random>_time_<now>.log`` relative to the current
    directory (``looper.loop_processor._PROJECT_LOG_DIR``): a build run from a checkout would
    litter it. Restored on exit.
    """
    from gptqmodel.looper import loop_processor

    original = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = directory
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = original


def build_gptq(source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Quantize the fp checkpoint ``source`` with gptqmodel into ``out`` (replaced if present).

    ``settings``: ``{"method": "gptq" | "awq", "bits": 4, "group_size": 16 | 32 | 64 | 128}``;
    the group size must divide every linear's input width.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel refuses one core's pool
    import torch

    config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    method, bits, group_size = check_settings(config, settings)
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.utils.backend import BACKEND

    random.seed(0)
    torch.manual_seed(0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gptq-build-", dir=out.parent) as scratch:
        work, made = Path(scratch) / "source", Path(scratch) / "out"
        shutil.copytree(source, work)
        write_tokenizer(work, int(config["vocab_size"]))
        quant = QuantizeConfig(bits=bits, group_size=group_size, offload_to_disk=False,
                               **({"method": "awq"} if method == "awq" else {}))
        dtype = torch.float32 if method == "gptq" else torch.float16
        model = GPTQModel.load(str(work), quant, device="cpu", dtype=dtype)
        calib = calibration(int(config["vocab_size"]))
        with _logs_into(Path(scratch) / "logs"):
            if method == "awq":
                with _clip_only_whole_batches():
                    model.quantize(calib, batch_size=1, backend=BACKEND.AWQ_TORCH)
            else:
                model.quantize(calib, batch_size=1)
        model.save(str(made))
        for name in NOT_CHECKPOINT:
            (made / name).unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(made, out)


def file_digests(directory: Path) -> dict[str, str]:
    """Return the sha256 of every file in ``directory`` by name (to compare two builds)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- cached builds


def _key(fixture: str, settings: dict[str, Any]) -> str:
    from importlib.metadata import version

    import torch
    import transformers

    from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_key

    ident = {"builder": BUILDER_VERSION, "fixture": fixture_key(catalog()[fixture]),
             "settings": settings, "gptqmodel": version("gptqmodel"), "torch": torch.__version__,
             "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def quantized_fixture_path(fixture: str, settings: dict[str, Any]) -> Path:
    """Return a cached GPTQ/AWQ build of fixture ``fixture``, building it in a fresh process.

    A subprocess keeps gptqmodel's quantization (its worker pools, its environment edits and the
    banner it prints) out of the caller; the cache sits next to the fp fixtures.
    """
    import subprocess

    from pytest_invarlock.hf_adapter.fixtures import cache_root, fixture_path

    source = fixture_path(fixture)
    tag = f"{settings.get('method')}-b{settings.get('bits', 4)}-g{settings.get('group_size')}"
    final = cache_root() / f"{fixture}-{tag}-{_key(fixture, settings)}"
    if (final / "config.json").is_file():
        return final
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPTQMODEL_CPU_WORKERS": "2"}
    done = subprocess.run([sys.executable, "-m", __name__, str(source), str(final),
                           json.dumps(settings)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode or not (final / "config.json").is_file():
        raise RuntimeError(f"building {final.name} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return final


def main(argv: list[str]) -> int:
    """``python -m pytest_invarlock.hf_adapter.gptq_build SOURCE OUT SETTINGS_JSON``."""
    if len(argv) != 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    build_gptq(Path(argv[0]), Path(argv[1]), json.loads(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
