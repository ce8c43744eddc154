"""Every family: the reference adapters describe it truly, and a broken field fails its check."""

import copy
from functools import cache

import pytest

from pytest_invarlock.adapters import auto, roles
from pytest_invarlock.errors import CheckFailed
from pytest_invarlock.hf_adapter import truth
from pytest_invarlock.hf_adapter.checks import CheckContext, describe
from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path

ROLE = {"causal": roles.HFCausalAdapter, "mlm": roles.HFMLMAdapter,
        "seq2seq": roles.HFSeq2SeqAdapter, "multimodal": roles.HFMultimodalAdapter}
FIXTURES = sorted(catalog())


@cache
def loaded(name):
    adapter = ROLE[catalog()[name].role]()
    return adapter, adapter.load_model(fixture_path(name), device="cpu")


def ctx(name):
    return CheckContext("broken", name, reference=True)


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("adapter_kind", ["role", "auto"])
def test_reference_adapter_describes_every_family_truly(name, adapter_kind):
    role_adapter, model = loaded(name)
    adapter = role_adapter if adapter_kind == "role" else auto.HFAutoAdapter()
    assert adapter.can_handle(model)
    for check in describe.CHECKS:
        try:
            check(adapter, model, ctx(name))
        except describe.CheckNotApplicable:
            pass


def _heads(d):
    d["heads_per_layer"][-1] += 1


def _kv(d):
    d["gqa_config"]["num_key_value_heads"] = d["gqa_config"]["num_attention_heads"]


def _mlp(d):
    d["mlp_dims"][-1] *= 2


def _ties(d):
    d["tying"] = {}


def _experts(d):
    d["architecture"]["num_experts"] += 1


# field -> (how to break it, the check that must fail, text its message must contain)
BREAKERS = {
    "heads": (_heads, describe.check_describe_heads, "describe()['heads_per_layer']["),
    "kv_heads": (_kv, describe.check_describe_gqa_config,
                 "describe()['gqa_config']['num_key_value_heads']"),
    "mlp_width": (_mlp, describe.check_describe_mlp_dims, "describe()['mlp_dims']["),
    "tie_map": (_ties, describe.check_describe_tying, "describe()['tying'] misses the tie"),
    "experts": (_experts, describe.check_describe_experts,
                "describe()['architecture']['num_experts']"),
}


def _applies(field, desc):
    return {"kv_heads": "gqa_config" in desc, "tie_map": bool(desc["tying"]),
            "experts": "num_experts" in desc.get("architecture", {})}.get(field, True)


class Broken:
    """Wrap a reference adapter and break one describe() field."""

    def __init__(self, inner, breaker):
        self.inner, self.breaker, self.name = inner, breaker, "broken"

    def describe(self, model):
        desc = copy.deepcopy(self.inner.describe(model))
        self.breaker(desc)
        return desc


CASES = [(name, field) for name in FIXTURES for field in BREAKERS
         if _applies(field, loaded(name)[0].describe(loaded(name)[1]))]


def test_every_family_has_fields_broken():
    fields = {}
    for name, field in CASES:
        fields.setdefault(name, set()).add(field)
    assert set(fields) == set(FIXTURES)
    assert all({"heads", "mlp_width"} <= f for f in fields.values())
    assert {name for name, field in CASES if field == "experts"} == {
        "mixtral", "olmoe", "qwen3-moe", "qwen3-moe-interleaved"}


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_adapter_reports_per_layer_attention_kinds_truly(name: str) -> None:
    adapter, model = loaded(name)
    arch, found = adapter.describe(model)["architecture"], truth.derive(model)
    assert arch.get("layer_types") == (list(found.layer_types) if found.layer_types else None)
    assert arch.get("sliding_window") == found.sliding_window


# fixture -> what makes its layers differ, as derive() and the reference adapter must see it
HETEROGENEOUS = {
    "qwen3-moe-interleaved": {"mlp_dims": [128, 32, 128, 32], "num_experts": 4},
    "gemma3-text-sliding": {"layer_types": ["sliding_attention", "full_attention"] * 2,
                            "sliding_window": 8},
    "gemma3n-text": {"mlp_dims": [96, 128, 64, 160],
                     "layer_types": ["sliding_attention", "full_attention"] * 2},
}


@pytest.mark.parametrize("name", sorted(HETEROGENEOUS))
def test_heterogeneous_layers_are_described_layer_by_layer(name: str) -> None:
    adapter, model = loaded(name)
    desc = adapter.describe(model)
    reported = {**desc, **desc["architecture"]}
    for key, value in HETEROGENEOUS[name].items():
        assert reported[key] == value, key
    for field in ("mlp_width", "heads"):
        assert (name, field) in CASES


@pytest.mark.parametrize(("name", "field"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_breaking_one_field_fails_the_check_naming_it(name, field):
    adapter, model = loaded(name)
    breaker, failing, text = BREAKERS[field]
    broken = Broken(adapter, breaker)
    with pytest.raises(CheckFailed) as info:
        failing(broken, model, ctx(name))
    assert text in str(info.value)
    for other in describe.CHECKS:
        if other is not failing:
            try:
                other(broken, model, ctx(name))
            except describe.CheckNotApplicable:
                pass
