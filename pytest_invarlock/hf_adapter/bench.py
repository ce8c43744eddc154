"""Benchmark snapshot/restore against safetensors (and InvarLock, when installed) in one run.

Every row runs on the same model in the same process: ours (bytes and chunked), safetensors'
``save_file``/``load_file`` and ``save``, and, when the ``invarlock`` package is importable,
InvarLock's own ``HF_Causal_Adapter`` bytes and chunked paths. Each figure is the median of
``--repeat`` rounds; each round runs every row once (after ``--warmup`` rounds that are not
counted), in a new seeded order of writer-then-readers groups, so that slow drift and
what-ran-before effects touch every row alike. Our restores
verify a checksum over every byte; safetensors' and InvarLock's check none (InvarLock's chunked
restore loads each file twice, once to check shapes).

Extra peak memory is the rise of the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs before each step) above its RSS when the step starts: Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

#: Which rows verify checksums over the data they restore, shown in the table.
VERIFIES = {"restore_bytes": "xxh3", "restore_chunked": "xxh3"}
#: Pairs summed into the round-trip summary: label -> (snapshot row, restore row).
ROUND_TRIPS = {
    "ours bytes": ("snapshot_bytes", "restore_bytes"),
    "ours chunked": ("snapshot_chunked", "restore_chunked"),
    "safetensors file": ("safetensors.save_file", "safetensors.load_file+copy"),
    "invarlock bytes": ("invarlock.snapshot", "invarlock.restore"),
    "invarlock chunked": ("invarlock.snapshot_chunked", "invarlock.restore_chunked"),
}


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
    model: torch.nn.Module = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator)
    return model.eval()


def invarlock_adapter() -> tuple[Any, str] | None:
    """Return InvarLock's causal adapter and its version, or None when it is not installed."""
    try:
        import invarlock
        from invarlock.adapters.hf_causal import HF_Causal_Adapter
    except ImportError:
        return None
    return HF_Causal_Adapter(), str(getattr(invarlock, "__version__", "?"))


@contextmanager
def _tempdir(directory: Path) -> Iterator[None]:
    """Point ``tempfile`` at ``directory`` (InvarLock's snapshot_chunked takes no directory)."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = saved


@dataclass(frozen=True)
class Step:
    """One timed operation, and what to free (untimed) right before it runs."""

    name: str
    run: Callable[[], Any]
    #: Frees this step's previous output just before it runs again, outside the timing: every
    #: writer then starts from the same state (on a sandboxed kernel, writing into memory that
    #: was freed a moment ago is much cheaper than into memory freed seconds earlier).
    prepare: Callable[[], Any] = lambda: None


def _steps(args: argparse.Namespace, model: Any, tmp: Path) -> list[list[Step]]:
    """Return the steps in groups: a writer and the readers of what it wrote, in order."""
    import safetensors.torch

    from pytest_invarlock.adapters.roles import HFCausalAdapter

    adapter = HFCausalAdapter()
    tensors = dict(model.state_dict())
    target = tmp / "model.safetensors"
    held: dict[str, Any] = {}

    def drop(key: str) -> Callable[[], None]:
        def free() -> None:
            value = held.pop(key, None)
            if isinstance(value, str):
                shutil.rmtree(value)
        return free

    def keep(key: str, make: Callable[[], Any]) -> Callable[[], None]:
        return lambda: held.__setitem__(key, make())

    groups = [
        [Step("snapshot_bytes", keep("blob", lambda: adapter.snapshot(model)), drop("blob")),
         Step("restore_bytes", lambda: adapter.restore(model, held["blob"]))],
        [Step("snapshot_chunked", keep("dir", lambda: adapter.snapshot_chunked(
            model, directory=str(tmp))), drop("dir")),
         Step("restore_chunked", lambda: adapter.restore_chunked(model, held["dir"]))],
        [Step("safetensors.save_file", lambda: safetensors.torch.save_file(tensors, str(target)),
              lambda: target.unlink(missing_ok=True)),
         Step("safetensors.load_file+copy", lambda: model.load_state_dict(
             safetensors.torch.load_file(str(target))))],
        [Step("safetensors.save (bytes)", lambda: safetensors.torch.save(tensors))],
    ]
    found = None if args.no_invarlock else invarlock_adapter()
    if found is not None:
        inv, _ = found

        def inv_chunked() -> str:
            with _tempdir(tmp):
                return str(inv.snapshot_chunked(model, prefix="invarlock-snap-"))

        groups += [
            [Step("invarlock.snapshot", keep("inv_blob", lambda: inv.snapshot(model)),
                  drop("inv_blob")),
             Step("invarlock.restore", lambda: inv.restore(model, held["inv_blob"]))],
            [Step("invarlock.snapshot_chunked", keep("inv_dir", inv_chunked), drop("inv_dir")),
             Step("invarlock.restore_chunked",
                  lambda: inv.restore_chunked(model, held["inv_dir"]))],
        ]
    return groups


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every operation on one model and return the figures."""
    import torch

    torch.set_num_threads(args.threads)
    model = build_llama(args.layers, args.hidden, args.intermediate, args.vocab)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tmp = Path(tempfile.mkdtemp(prefix="invarlock-bench-", dir=args.dir))
    found = None if args.no_invarlock else invarlock_adapter()
    figures: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "model_mib": round(nbytes / MIB, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "invarlock": found[1] if found else None, "dir": str(tmp.parent),
                    "repeat": args.repeat, "warmup": args.warmup,
                    "loadavg_start": round(os.getloadavg()[0], 2)},
    }
    runs: dict[str, list[tuple[float, int]]] = {}
    try:
        groups = _steps(args, model, tmp)
        runs = {step.name: [] for group in groups for step in group}  # the table's row order
        order = random.Random(args.seed)
        for round_ in range(args.warmup + args.repeat):
            # what ran just before a step changes its time on a sandboxed kernel (memory freed
            # a moment ago is cheap to reuse): a new group order each round spreads that evenly
            order.shuffle(groups)
            for step in (step for group in groups for step in group):
                step.prepare()
                seconds, peak, _ = measure(step.run)
                if round_ >= args.warmup:
                    runs[step.name].append((seconds, peak))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    for name, samples in runs.items():
        figures[name] = (statistics.median(r[0] for r in samples), max(r[1] for r in samples))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Print a table of seconds, GB/s and extra peak memory per operation."""
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.hf_adapter.bench",
                                     description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (median)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of each round")
    parser.add_argument("--dir", default=None, help="where chunked snapshots and files go")
    parser.add_argument("--no-invarlock", action="store_true",
                        help="skip InvarLock's rows even when the package is installed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    size = figures["model_mib"]
    gb = size * MIB / 1e9
    machine = figures["machine"]
    print(f"llama: {figures['params'] / 1e6:.1f}M parameters, {size} MiB (float32)")
    print(f"{machine['cpus']} CPUs, {machine['torch_threads']} torch threads, Python "
          f"{machine['python']}, torch {machine['torch']}, InvarLock "
          f"{machine['invarlock'] or 'not installed'}, files in {machine['dir']}")
    print(f"median of {args.repeat} rounds after {args.warmup} warm-up; extra peak = max over "
          f"rounds; 1-minute load average {machine['loadavg_start']} at start, "
          f"{machine['loadavg_end']} at end")
    print(f"{'operation':28}{'seconds':>9}{'GB/s':>8}{'extra peak MiB':>16}  checksum")
    for name, value in figures.items():
        if isinstance(value, tuple):
            seconds, peak = value
            print(f"{name:28}{seconds:9.3f}{gb / seconds:8.2f}{peak / MIB:16.1f}  "
                  f"{VERIFIES.get(name, '-')}")
    print(f"\n{'round trip (snapshot+restore)':32}{'seconds':>9}{'GB/s':>8}{'extra peak MiB':>16}")
    for label, (save, load) in ROUND_TRIPS.items():
        if save in figures and load in figures:
            seconds = figures[save][0] + figures[load][0]
            peak = max(figures[save][1], figures[load][1])
            print(f"{label:32}{seconds:9.3f}{gb / seconds:8.2f}{peak / MIB:16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
