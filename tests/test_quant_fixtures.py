"""Pre-quantized fixtures: the catalog, the cache and its key, and bitsandbytes checkpoints built
deterministically that the bitsandbytes reference adapter loads as they are and passes on.

Builds and checks need bitsandbytes (the cpu-quant lane, ``nox -s tests-quant``); without it
those tests skip, naming it. The catalog and cache-key tests need no backend.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pytest_invarlock.hf_adapter import fixtures, leaves, quant_fixtures, state
from pytest_invarlock.hf_adapter.quant_fixtures import QuantFixture, missing, quantized_catalog

IDS = torch.arange(16).reshape(2, 8)
#: bitsandbytes' CPU 4-bit kernel: out_features % 32 (its block_n) and in_features % blocksize
BLOCK_N, BLOCKSIZE = 32, 64


def _need(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (the cpu-quant lane installs it)")


def _bnb_names(bits):
    key = f"load_in_{bits}bit"
    return sorted(n for n, q in quantized_catalog().items()
                  if q.method == "bitsandbytes" and q.settings.get(key))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


# --------------------------------------------------------------------------- the catalog


def test_every_quantized_entry_names_a_source_a_builder_and_an_installable_extra():
    entries = quantized_catalog()
    assert _bnb_names(8) and _bnb_names(4)  # both bitsandbytes kinds are catalogued
    extras = set(importlib.metadata.metadata("pytest-invarlock").get_all("Provides-Extra") or [])
    for name, q in entries.items():
        source = fixtures.catalog()[q.source]  # a full-precision fixture
        assert (q.family, q.role) == (source.family, source.role)
        assert q.method in quant_fixtures.BUILDERS, name
        assert q.extra in extras, f"{name}: no extra {q.extra!r} in pytest-invarlock's metadata"
        assert name not in fixtures.catalog(), f"{name} shadows a full-precision fixture"


@pytest.mark.parametrize("name", sorted(quantized_catalog()))
def test_bitsandbytes_settings_are_a_bitsandbytes_config(name):
    import transformers

    q = quantized_catalog()[name]
    if q.method != "bitsandbytes":
        pytest.skip(f"{name} is not a bitsandbytes entry")
    config = transformers.BitsAndBytesConfig(**q.settings)
    assert str(getattr(config.quant_method, "value", config.quant_method)) == q.method


@pytest.mark.parametrize("name", _bnb_names(4))
def test_4bit_sources_have_widths_the_cpu_kernel_takes(name):
    """Every linear bitsandbytes quantizes: out % 32 and in % 64, or the CPU forward raises."""
    q = quantized_catalog()[name]
    model = fixtures.build_model(fixtures.catalog()[q.source])
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"}  # lm_head stays fp
    assert linears
    wrong = {n: (m.in_features, m.out_features) for n, m in linears.items()
             if m.out_features % BLOCK_N or m.in_features % BLOCKSIZE}
    assert wrong == {}


def test_missing_names_the_backend_and_the_extra_without_importing_it():
    q = QuantFixture("x", "llama-gqa", "bitsandbytes", "no_such_backend_q", "bnb", {})
    assert missing(q) == "needs no_such_backend_q: pip install 'pytest-invarlock[bnb]'"
    dotted = replace(q, backend="no_such_parent_q.quanto", extra="quanto")
    assert missing(dotted) == ("needs no_such_parent_q.quanto: pip install "
                               "'pytest-invarlock[quanto]'")
    script = ("import sys; from pytest_invarlock.hf_adapter.quant_fixtures import missing, "
              "quantized_catalog as c; [missing(q) for q in c().values()]; "
              "print(sorted(m for m in ('bitsandbytes', 'compressed_tensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_backend_is_refused_with_its_reason(monkeypatch):
    q = QuantFixture("ghost", "llama-gqa", "bitsandbytes", "no_such_backend_q", "bnb", {})
    monkeypatch.setattr(quant_fixtures, "quantized_catalog", lambda: {"ghost": q})
    with pytest.raises(quant_fixtures.BackendMissing, match=r"needs no_such_backend_q: pip "
                       r"install 'pytest-invarlock\[bnb\]'"):
        quant_fixtures.quant_fixture_path("ghost")
    assert quant_fixtures.main(["ghost"]) == 1  # named explicitly: an error
    assert quant_fixtures.main([]) == 0  # all: skipped, said on stderr


def test_the_cache_key_follows_the_backend_version_and_the_entry(monkeypatch):
    q = quantized_catalog()[_bnb_names(4)[0]]
    real = importlib.metadata.version
    versions = {"bitsandbytes": "0.50.2"}

    def version(name):
        return versions[name] if name in versions else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    first = quant_fixtures.cache_key(q)
    assert quant_fixtures.cache_key(q) == first  # stable
    versions["bitsandbytes"] = "0.51.0"
    assert quant_fixtures.cache_key(q) != first
    versions["bitsandbytes"] = "0.50.2"
    assert quant_fixtures.cache_key(q) == first
    assert quant_fixtures.cache_key(replace(q, settings={**q.settings, "x": 1})) != first
    assert quant_fixtures.cache_key(replace(q, source="llama-gqa-tied")) != first


# --------------------------------------------------------------------------- builds


def _build(cache, names):
    """Build ``names`` with the module's CLI in a fresh process; return {name: path}."""
    env = {**os.environ, fixtures.CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pytest_invarlock.hf_adapter.quant_fixtures",
                             *names], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _paths(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return dict(line.split("\t") for line in out.splitlines())


def _hashes(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).iterdir())}


def test_bitsandbytes_builds_are_byte_identical_and_race_safe(tmp_path):
    """Fresh processes build the same bytes; two racing into one cache leave one whole copy."""
    _need("bitsandbytes")
    names = _bnb_names(8) + _bnb_names(4)
    alone = _paths(_build(tmp_path / "a", names))
    racing = [_build(tmp_path / "b", names), _build(tmp_path / "b", names)]
    first, second = (_paths(p) for p in racing)
    assert first == second
    for name in names:
        assert Path(alone[name]).name == Path(first[name]).name  # one key for one build
        assert _hashes(alone[name]) == _hashes(first[name]), name
        assert "quantization_config" in (Path(alone[name]) / "config.json").read_text()
    leftovers = [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]
    assert leftovers == []


# --------------------------------------------------------------------------- hf_bnb on them


@pytest.fixture(params=_bnb_names(8) + _bnb_names(4))
def built(request):
    from pytest_invarlock.adapters.quantized import HFBnbAdapter

    _need("bitsandbytes")
    return request.param, HFBnbAdapter(), quant_fixtures.quant_fixture_path(request.param)


def test_hf_bnb_loads_the_checkpoint_as_it_is(built):
    import transformers

    name, adapter, path = built
    q = quantized_catalog()[name]
    model = adapter.load_model(str(path), device="cpu")
    quant = model.config.quantization_config
    for key, value in q.settings.items():  # the checkpoint's settings, not the adapter's int8
        assert getattr(quant, key) == value, key
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(path), device_map={"": "cpu"})
    assert torch.equal(_logits(model), _logits(plain))
    four = bool(q.settings.get("load_in_4bit"))
    assert adapter.settings(model) == {"bits": 4 if four else 8,
                                       "group_size": BLOCKSIZE if four else None}


def test_hf_bnb_restores_a_snapshot_taken_before_the_first_forward(built):
    """load, snapshot, evaluate, edit, restore: the 4-bit CPU repack must not get in between."""
    _, adapter, path = built
    model = adapter.load_model(str(path), device="cpu")
    blob, captured = adapter.snapshot(model), leaves.capture(model)
    reference = _logits(model)
    assert leaves.diff(model, captured) == []  # the first forward changed no leaf
    state.perturb(model, seed=9)
    adapter.restore(model, blob)
    assert leaves.diff(model, captured) == [] and torch.equal(_logits(model), reference)


def test_hf_bnb_honours_dtype_on_a_pre_quantized_checkpoint(built):
    """transformers keeps a pre-quantized checkpoint's unquantized weights in their stored dtype."""
    _, adapter, path = built
    model = adapter.load_model(str(path), device="cpu", dtype=torch.bfloat16)
    floating = {n: p.dtype for n, p in model.named_parameters() if p.is_floating_point()}
    assert floating and set(floating.values()) == {torch.bfloat16}
    assert torch.isfinite(_logits(model)).all()


def test_hf_bnb_passes_the_conformance_checks_on_the_4bit_checkpoint():
    from pytest_invarlock.adapters.quantized import HFBnbAdapter
    from pytest_invarlock.api import check_adapter

    _need("bitsandbytes")
    path = quant_fixtures.quant_fixture_path(_bnb_names(4)[0])
    results = check_adapter(HFBnbAdapter(), str(path))
    bad = [(r.check, r.outcome, r.reason[:300]) for r in results
           if r.outcome not in ("passed", "skipped")]
    assert bad == []
    assert sum(r.outcome == "passed" for r in results) >= 30
