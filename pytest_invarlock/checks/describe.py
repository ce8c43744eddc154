"""Checks of ``describe()``: schema, and every field against the truth from config and storage."""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from pytest_invarlock import truth as truth_mod
from pytest_invarlock.checks import CheckContext, check
from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.resources import validate

SCHEMA = "contracts/schemas/describe.schema.json"


def _describe(adapter: Any, model: nn.Module) -> dict[str, Any]:
    desc = adapter.describe(model)
    if not isinstance(desc, dict):
        raise CheckFailed(f"describe() returned {type(desc).__name__}, not a dict; return a dict "
                          f"matching {SCHEMA}")
    return desc


def _valid(adapter: Any, model: nn.Module) -> tuple[dict[str, Any], truth_mod.Truth]:
    """Return describe() and the truth, failing early when describe() breaks the schema."""
    desc = _describe(adapter, model)
    if validate(desc, "describe"):
        raise CheckNotApplicable(f"describe() does not match {SCHEMA}; see "
                                 "check_describe_matches_schema")
    return desc, truth_mod.derive(model)


def _unserializable(value: object, path: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the non-string key {key!r}"
            found = _unserializable(item, f"{path}[{key!r}]")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _unserializable(item, f"{path}[{i}]")
            if found:
                return found
    elif not isinstance(value, (str, int, float, bool, type(None))):
        return f"{path} is a {type(value).__module__}.{type(value).__name__}"
    return None


@check()
def check_describe_is_json_serializable(adapter: Any, model: nn.Module,
                                        ctx: CheckContext) -> None:
    """describe() holds only JSON types (dicts with string keys, lists, str, numbers, bools)."""
    desc = _describe(adapter, model)
    bad = _unserializable(desc, "describe()")
    if bad:
        raise CheckFailed(f"{bad}, which JSON cannot hold; convert it (e.g. str(device), "
                          "int(size)) before returning it")
    try:
        json.dumps(desc, allow_nan=False)
    except ValueError as exc:
        raise CheckFailed(f"describe() is not JSON-serializable ({exc}); report finite "
                          "numbers only") from None


@check()
def check_describe_matches_schema(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe() validates against contracts/schemas/describe.schema.json."""
    errors = validate(_describe(adapter, model), "describe")
    if errors:
        raise CheckFailed(f"describe() does not match {SCHEMA}: {'; '.join(errors[:5])}. Report "
                          "n_layer (int), heads_per_layer and mlp_dims (lists of int) and tying "
                          "(dict of str to str) with the types the schema gives")


@check()
def check_describe_layers(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['n_layer'] is the config's number of layers."""
    desc, truth = _valid(adapter, model)
    if desc["n_layer"] != truth.n_layer:
        raise CheckFailed(f"describe()['n_layer'] is {desc['n_layer']}, the model has "
                          f"{truth.n_layer} layers (config.num_hidden_layers). Count the decoder "
                          "layer list or read config.num_hidden_layers")


def _per_layer(desc: dict[str, Any], key: str, expected: list[int], what: str, fix: str) -> None:
    got = desc[key]
    if len(got) != len(expected):
        raise CheckFailed(f"describe()['{key}'] has {len(got)} entries, the model has "
                          f"{len(expected)} layers; report one {what} per layer")
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g != e:
            raise CheckFailed(f"describe()['{key}'][{i}] is {g}, layer {i} has {e} {what}. {fix}")


@check()
def check_describe_heads(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['heads_per_layer'] is the number of query heads of every layer."""
    desc, truth = _valid(adapter, model)
    _per_layer(desc, "heads_per_layer", list(truth.heads), "attention heads",
               f"Report query heads (config: {truth.heads[0]}), not K/V heads "
               f"({truth.kv_heads[0]}); for encoder-decoders list encoder layers, then decoder")


@check()
def check_describe_gqa_config(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['gqa_config'] matches the model's query/KV heads (required from reference adapters for GQA models)."""  # noqa: E501
    desc, truth = _valid(adapter, model)
    gqa = desc.get("gqa_config")
    heads, kv = truth.heads[0], truth.kv_heads[0]
    if gqa is None:
        if truth.is_gqa and ctx.reference:
            raise CheckFailed(f"describe() has no 'gqa_config' but the model uses GQA "
                              f"({heads} query heads, {kv} K/V heads); add gqa_config with "
                              "num_attention_heads, num_key_value_heads, head_dim and gqa_ratio")
        raise CheckNotApplicable("describe() reports no gqa_config (optional for this adapter)")
    expected = {"num_attention_heads": heads, "num_key_value_heads": kv,
                "head_dim": truth.head_dim, "gqa_ratio": heads / kv}
    for key, want in expected.items():
        if key in gqa and gqa[key] != want:
            raise CheckFailed(
                f"describe()['gqa_config']['{key}'] is {gqa[key]}, the model has {want} "
                f"(config: {heads} query heads, {kv} K/V heads of dim {truth.head_dim}, "
                f"k_proj out_features {kv * truth.head_dim}). Read num_key_value_heads from the "
                "config or from k_proj")


@check()
def check_describe_mlp_dims(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['mlp_dims'] is each layer's MLP hidden width, read off the weights."""
    desc, truth = _valid(adapter, model)
    _per_layer(desc, "mlp_dims", list(truth.mlp_dims), "MLP hidden units",
               "Read the up-projection's output width (Conv1D stores it as weight.shape[1])")


@check()
def check_describe_experts(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['architecture'] reports a mixture-of-experts model's expert count and top-k."""
    desc, truth = _valid(adapter, model)
    if truth.experts is None:
        raise CheckNotApplicable("the model has no mixture-of-experts layers")
    arch = desc.get("architecture") or {}
    expected = {"num_experts": truth.experts, "num_experts_per_tok": truth.experts_per_token}
    for key, want in expected.items():
        if key not in arch:
            if ctx.reference:
                raise CheckFailed(f"describe()['architecture'] has no '{key}' for a "
                                  f"mixture-of-experts model ({want}); add it")
            raise CheckNotApplicable(f"describe() reports no architecture.{key} (optional)")
        if arch[key] != want:
            raise CheckFailed(f"describe()['architecture']['{key}'] is {arch[key]}, the model has "
                              f"{want} (config and the experts' weight shape {truth.experts} x ...)"
                              "; read the expert count off the expert weights or the config")


def _groups_of(tying: dict[str, str]) -> set[frozenset[str]]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in tying.items():
        parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(root(x), set()).add(x)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


@check()
def check_describe_tying(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['tying'] names exactly the parameters that share storage."""
    desc, truth = _valid(adapter, model)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for key, value in desc["tying"].items():
        for name in (key, value):
            if name not in params:
                raise CheckFailed(f"describe()['tying'] names {name!r}, which is not a parameter "
                                  "of the model; use names from named_parameters("
                                  "remove_duplicate=False)")
    got, want = _groups_of(desc["tying"]), {frozenset(g) for g in truth.tied_groups}
    for group in sorted(want - got, key=sorted):
        raise CheckFailed(f"describe()['tying'] misses the tie {' = '.join(sorted(group))}: they "
                          "share one storage in named_parameters(remove_duplicate=False). Build "
                          "the map from storage identity, not from names or config")
    for group in sorted(got - want, key=sorted):
        raise CheckFailed(f"describe()['tying'] reports {' = '.join(sorted(group))} as tied, but "
                          "they have separate storage; report only parameters that share storage")


@check()
def check_describe_total_params(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['total_params'] counts every parameter once, tied storage once."""
    desc, truth = _valid(adapter, model)
    if "total_params" not in desc:
        raise CheckNotApplicable("describe() reports no total_params (optional)")
    if desc["total_params"] != truth.total_params:
        raise CheckFailed(f"describe()['total_params'] is {desc['total_params']}, the model has "
                          f"{truth.total_params} parameters counting shared storage once; sum "
                          "numel() over model.parameters() (which skips tied duplicates)")


def _metadata_expectations(truth: truth_mod.Truth) -> dict[str, tuple[set[str], str]]:
    return {
        "model_type": ({truth.model_type}, "report config.model_type"),
        "model_class": ({truth.model_class}, "report type(model).__name__"),
        "device": ({truth_mod.as_device(truth.device)}, "report str(next(model.parameters()).device)"),
        "architecture.attention_type": (set(truth.attention_types),
                                        "derive it from num_key_value_heads vs num_attention_heads"),
        "architecture.normalization_type": ({truth.normalization},
                                            "inspect the norm modules (RMSNorm vs LayerNorm)"),
        "architecture.activation": (set(truth.activations),
                                    "read config.hidden_act (gated MLPs with silu are swiglu)"),
        "architecture.positional_encoding": ({truth.positional},
                                             "rotary embeddings are 'rope', position tables 'learned'"),
    }


@check()
def check_describe_metadata(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Optional describe() fields (model_type, model_class, device, architecture.*) are right when present."""
    desc, truth = _valid(adapter, model)
    reported = 0
    for key, (allowed, fix) in _metadata_expectations(truth).items():
        head, _, sub = key.partition(".")
        value = desc.get(head)
        if sub:
            value = value.get(sub) if isinstance(value, dict) else None
        if value is None:
            continue
        reported += 1
        if key == "device":
            value = truth_mod.as_device(value)
        if value not in allowed:
            path = "".join(f"['{p}']" for p in key.split("."))
            raise CheckFailed(f"describe(){path} is {value!r}, expected "
                              f"{' or '.join(map(repr, sorted(allowed)))}; {fix}")
    if not reported:
        raise CheckNotApplicable("describe() reports none of the optional metadata fields")


CHECKS = (
    check_describe_is_json_serializable,
    check_describe_matches_schema,
    check_describe_layers,
    check_describe_heads,
    check_describe_gqa_config,
    check_describe_mlp_dims,
    check_describe_experts,
    check_describe_tying,
    check_describe_total_params,
    check_describe_metadata,
)
