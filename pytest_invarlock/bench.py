"""Benchmark snapshot/restore against safetensors save_file/load_file on one model, in one run.

Extra peak memory is the rise of the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs before each step) above its RSS when the step starts: Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(step: Callable[[], Any]) -> tuple[float, int, Any]:
    """Run ``step``; return seconds, extra peak bytes over the starting RSS, and its result."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start_rss = _status("VmRSS")
    t0 = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - t0
    return seconds, _status("VmHWM") - start_rss, result


def build_llama(layers: int, hidden: int, intermediate: int, vocab: int) -> Any:
    """Build a llama (GQA, untied) from a config with seeded weights; no hub access."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256, vocab_size=vocab,
        max_position_embeddings=2048, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator)
    return model.eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every operation on one model and return the figures."""
    import safetensors.torch
    import torch

    from pytest_invarlock.adapters.roles import HFCausalAdapter

    torch.set_num_threads(args.threads)
    model = build_llama(args.layers, args.hidden, args.intermediate, args.vocab)
    adapter = HFCausalAdapter()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tmp = Path(tempfile.mkdtemp(prefix="invarlock-bench-", dir=args.dir))
    figures: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()),
                               "model_mib": round(nbytes / MIB, 1)}
    try:
        tensors = dict(model.state_dict())
        target = tmp / "model.safetensors"
        blob: list[Any] = [None]
        path: list[str] = [""]

        def chunked() -> None:
            if path[0]:
                shutil.rmtree(path[0])
            path[0] = adapter.snapshot_chunked(model, directory=str(tmp))

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("snapshot_bytes", lambda: blob.__setitem__(0, None) or blob.__setitem__(
                0, adapter.snapshot(model))),
            ("restore_bytes", lambda: adapter.restore(model, blob[0])),
            ("snapshot_chunked", chunked),
            ("restore_chunked", lambda: adapter.restore_chunked(model, path[0])),
            ("safetensors.save_file", lambda: safetensors.torch.save_file(tensors, str(target))),
            ("safetensors.load_file+copy", lambda: model.load_state_dict(
                safetensors.torch.load_file(str(target)))),
            ("safetensors.save (bytes)", lambda: safetensors.torch.save(tensors)),
        ]
        for name, step in steps:
            runs = [measure(step)[:2] for _ in range(args.repeat)]
            figures[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        blob[0] = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Print a table of seconds, GB/s and extra peak memory per operation."""
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.bench",
                                     description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (median)")
    parser.add_argument("--dir", default=None, help="where chunked snapshots and files go")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    size = figures["model_mib"]
    print(f"llama: {figures['params'] / 1e6:.1f}M parameters, {size} MiB (float32)")
    print(f"median of {args.repeat} runs; extra peak = max over runs")
    print(f"{'operation':28}{'seconds':>9}{'GB/s':>8}{'extra peak MiB':>16}")
    for name, value in figures.items():
        if isinstance(value, tuple):
            seconds, peak = value
            gbs = size * MIB / 1e9 / seconds
            print(f"{name:28}{seconds:9.3f}{gbs:8.2f}{peak / MIB:16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
