"""Checks of ``describe()``: schema, and every field against the truth from config and storage."""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import state
from pytest_invarlock.hf_adapter import truth as truth_mod
from pytest_invarlock.hf_adapter.checks import SHOULD, CheckContext, Problems, check, summarize
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


@check(why="describe() is a report callers store and compare; a value JSON cannot hold breaks "
            "every consumer")
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


@check(why="the schema is the protocol's contract for describe()")
def check_describe_matches_schema(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe() validates against contracts/schemas/describe.schema.json."""
    errors = validate(_describe(adapter, model), "describe")
    if errors:
        raise CheckFailed(f"describe() does not match {SCHEMA}: {'; '.join(errors[:5])}. Report "
                          "n_layer (int), heads_per_layer and mlp_dims (lists of int) and tying "
                          "(dict of str to str) with the types the schema gives")


@check(why="n_layer is a required field: edits are planned per layer")
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
    problems = Problems()
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g != e:
            problems.add(f"describe()['{key}'][{i}] is {g}, layer {i} has {e} {what}")
    problems.raise_if_any(fix)


@check(why="heads_per_layer is a required field: head pruning and GQA guards depend on it")
def check_describe_heads(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['heads_per_layer'] is the number of query heads of every layer."""
    desc, truth = _valid(adapter, model)
    _per_layer(desc, "heads_per_layer", list(truth.heads), "attention heads",
               f"Report query heads (config: {truth.heads[0]}), not K/V heads "
               f"({truth.kv_heads[0]}); for encoder-decoders list encoder layers, then decoder")


@check(why="optional metadata, but a wrong value misleads every GQA-aware edit")
def check_describe_gqa_config(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['gqa_config'], when present, matches the model's query/KV heads and head size."""
    desc, truth = _valid(adapter, model)
    gqa = desc.get("gqa_config")
    heads, kv = truth.heads[0], truth.kv_heads[0]
    if gqa is None:
        raise CheckNotApplicable("describe() reports no gqa_config (its absence on a GQA model is "
                                 "check_describe_reports_optional_metadata's finding)")
    if not isinstance(gqa, dict):
        raise CheckFailed(f"describe()['gqa_config'] is a {type(gqa).__name__}; report a dict")
    expected = {"num_attention_heads": heads, "num_key_value_heads": kv,
                "head_dim": truth.head_dim, "gqa_ratio": heads / kv}
    problems = Problems()
    for key, want in expected.items():
        if key in gqa and gqa[key] != want:
            problems.add(f"describe()['gqa_config']['{key}'] is {gqa[key]}, the model has {want}")
    problems.raise_if_any(f"The config has {heads} query heads and {kv} K/V heads of dim "
                          f"{truth.head_dim} (k_proj out_features {kv * truth.head_dim}); read "
                          "num_key_value_heads from the config or from k_proj")


@check(why="mlp_dims is a required field: MLP edits are sized from it")
def check_describe_mlp_dims(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['mlp_dims'] is each layer's MLP hidden width, read off the weights."""
    desc, truth = _valid(adapter, model)
    _per_layer(desc, "mlp_dims", list(truth.mlp_dims), "MLP hidden units",
               "Read the up-projection's output width (Conv1D stores it as weight.shape[1]; a "
               "fused gate_up holds two widths; mixture-of-experts layers have the per-expert "
               "width, dense layers of the same model their own)")


@check(why="optional metadata, but a wrong expert count misleads every MoE-aware edit")
def check_describe_experts(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['architecture'] expert count and top-k, when present, are the model's."""
    desc, truth = _valid(adapter, model)
    if truth.experts is None:
        raise CheckNotApplicable("the model has no mixture-of-experts layers")
    arch = desc.get("architecture") or {}
    expected = {"num_experts": truth.experts, "num_experts_per_tok": truth.experts_per_token}
    if not any(key in arch for key in expected):
        raise CheckNotApplicable("describe() reports no architecture.num_experts (its absence is "
                                 "check_describe_reports_optional_metadata's finding)")
    problems = Problems()
    for key, want in expected.items():
        if key in arch and arch[key] != want:
            problems.add(f"describe()['architecture']['{key}'] is {arch[key]}, the model has "
                         f"{want}")
    problems.raise_if_any(f"The config and the experts' weight shape ({truth.experts} x ...) "
                          "agree; read the expert count off the expert weights or the config")


@check(why="optional metadata, but wrong per-layer attention kinds mislead every edit that treats "
       "sliding-window layers differently")
def check_describe_layer_types(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['architecture'] layer_types and sliding_window, when present, are the model's."""
    desc, truth = _valid(adapter, model)
    arch = _architecture(desc)
    if "layer_types" not in arch and "sliding_window" not in arch:
        raise CheckNotApplicable("describe() reports no architecture.layer_types (optional)")
    if truth.layer_types is None:
        raise CheckNotApplicable("the suite knows per-layer attention kinds only for families "
                                 "whose modeling code honours config.layer_types")
    problems = Problems()
    got = arch.get("layer_types")
    if got is not None and list(got) != list(truth.layer_types):
        wrong = [f"layer {i} is {g!r}, the model's is {w!r}"
                 for i, (g, w) in enumerate(zip(got, truth.layer_types, strict=False)) if g != w]
        if len(got) != len(truth.layer_types):
            wrong.insert(0, f"{len(got)} entries for {len(truth.layer_types)} layers")
        problems.add(f"describe()['architecture']['layer_types'] is wrong: {summarize(wrong)}")
    if ("sliding_window" in arch and "sliding_attention" in truth.layer_types
            and arch["sliding_window"] != truth.sliding_window):
        problems.add(f"describe()['architecture']['sliding_window'] is {arch['sliding_window']}, "
                     f"the model's is {truth.sliding_window}")
    problems.raise_if_any("Read each attention module's sliding_window (or config.layer_types "
                          "where the modeling code honours it)")


def _architecture(desc: dict[str, Any]) -> dict[str, Any]:
    """Return describe()['architecture'], or {} when it is not an object."""
    arch = desc.get("architecture")
    return arch if isinstance(arch, dict) else {}


def tied_groups(tying: dict[str, str]) -> set[frozenset[str]]:
    """Return the tied groups a ``tying`` map (name -> name it shares storage with) describes."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in tying.items():
        parent[root(str(a))] = root(str(b))
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(root(x), set()).add(x)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


@check(why="tying is a required field, and ties must be preserved by every edit")
def check_describe_tying(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['tying'] names exactly the parameters that share storage."""
    desc, truth = _valid(adapter, model)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    problems = Problems()
    unknown = sorted({name for pair in desc["tying"].items() for name in pair} - params)
    for name in unknown:
        problems.add(f"describe()['tying'] names {name!r}, which is not a parameter of the model")
    got, want = tied_groups(desc["tying"]), {frozenset(g) for g in truth.tied_groups}
    for group in sorted(want - got, key=sorted):
        problems.add(f"describe()['tying'] misses the tie {' = '.join(sorted(group))}: they "
                     "share one storage in named_parameters(remove_duplicate=False)")
    within = {g for g in got if any(g < w for w in want)}  # part of a tie: "misses" says it
    for group in sorted(got - want - within - {g for g in got if not g <= params}, key=sorted):
        problems.add(f"describe()['tying'] reports {' = '.join(sorted(group))} as tied, but "
                     "they have separate storage")
    problems.raise_if_any("Build the map from storage identity over named_parameters("
                          "remove_duplicate=False), not from names or the config, and report "
                          "only parameters that share storage")


@check(why="optional, but a wrong count misleads every size-based decision")
def check_describe_total_params(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """describe()['total_params'] counts every parameter once, tied storage once."""
    desc, truth = _valid(adapter, model)
    if "total_params" not in desc:
        raise CheckNotApplicable("describe() reports no total_params (optional)")
    if desc["total_params"] != truth.total_params:
        if state.deep(model):  # quantized: packed storage and scales are not parameters
            fix = ("count them as its full-precision source has them: in_features * "
                   "out_features (+ bias) per quantized linear, never the packed weight's numel(), "
                   "and no scales, zero points or indices")
        else:
            fix = "sum numel() over model.parameters() (which skips tied duplicates)"
        raise CheckFailed(f"describe()['total_params'] is {desc['total_params']}, the model has "
                          f"{truth.total_params} parameters counting shared storage once; {fix}")


def _language_classes(model: nn.Module) -> set[str]:
    """Return the classes of the transformers models inside ``model`` that hold its text config."""
    from transformers import PreTrainedModel

    text = truth_mod.text_config(model)
    if text is model.config:
        return set()
    return {type(m).__name__ for _, m in model.named_modules()
            if isinstance(m, PreTrainedModel) and m is not model
            and getattr(getattr(m, "config", None), "model_type", None) == text.model_type}


def _metadata_expectations(truth: truth_mod.Truth) -> dict[str, tuple[set[str], str]]:
    return {
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


def _reported(desc: dict[str, Any], key: str) -> Any:
    head, _, sub = key.partition(".")
    value = desc.get(head)
    if sub:
        value = value.get(sub) if isinstance(value, dict) else None
    return value


def _identity_problems(desc: dict[str, Any], model: nn.Module, problems: Problems) -> None:
    """Judge model_type and model_class; a multimodal model may be described either way.

    model_type is the config's, or (describing the language model) the text config's;
    model_class is the class of the model given, or, with the text model_type or none, the
    class of the language model inside it. Naming the language model's class with the whole
    model's model_type contradicts itself.
    """
    whole, text = truth_mod.model_type_of(model), str(truth_mod.text_config(model).model_type)
    kind, cls = desc.get("model_type"), desc.get("model_class")
    if kind is not None and kind not in {whole, text}:
        problems.add(f"describe()['model_type'] is {kind!r}, expected "
                     f"{' or '.join(map(repr, sorted({whole, text})))} (config.model_type, or the "
                     "text config's for a description of the language model)")
        return
    allowed = {type(model).__name__}
    if kind in (None, text):
        allowed |= _language_classes(model)
    if cls is not None and cls not in allowed:
        scope = f" for model_type {kind!r}" if kind is not None else ""
        problems.add(f"describe()['model_class'] is {cls!r}, expected "
                     f"{' or '.join(map(repr, sorted(allowed)))}{scope} (type(model).__name__, "
                     "or the language model's class when describing the language model)")


@check(why="optional fields, but a wrong value misleads whoever reads the description")
def check_describe_metadata(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Optional describe() fields (model_type, model_class, device, architecture.*) are right when present."""
    desc, truth = _valid(adapter, model)
    expectations = _metadata_expectations(truth)
    present = [k for k in ("model_type", "model_class", *expectations)
               if _reported(desc, k) is not None]
    if not present:
        raise CheckNotApplicable("describe() reports none of the optional metadata fields")
    problems = Problems()
    _identity_problems(desc, model, problems)
    for key, (allowed, fix) in expectations.items():
        value = _reported(desc, key)
        if value is None:
            continue
        if key == "device":
            value = truth_mod.as_device(value)
        if value not in allowed:
            path = "".join(f"['{p}']" for p in key.split("."))
            problems.add(f"describe(){path} is {value!r}, expected "
                         f"{' or '.join(map(repr, sorted(allowed)))}: {fix}")
    problems.raise_if_any()


#: Optional describe() fields a hardened adapter reports, and when they apply.
OPTIONAL_FIELDS = ("model_type", "model_class", "total_params", "device")


@check(level=SHOULD, why="the protocol requires only n_layer, heads_per_layer, mlp_dims and tying; "
       "the rest is metadata callers rely on when it is there")
def check_describe_reports_optional_metadata(adapter: Any, model: nn.Module,
                                             ctx: CheckContext) -> None:
    """describe() reports model_type, model_class, total_params, device, and gqa_config / expert counts where they apply."""  # noqa: E501
    desc, truth = _valid(adapter, model)
    missing = [key for key in OPTIONAL_FIELDS if key not in desc]
    if truth.is_gqa and "gqa_config" not in desc:
        missing.append(f"gqa_config (the model has {truth.heads[0]} query heads and "
                       f"{truth.kv_heads[0]} K/V heads)")
    arch = _architecture(desc)
    if truth.experts is not None:
        missing += [f"architecture.{key} (the model has {want})" for key, want in (
            ("num_experts", truth.experts), ("num_experts_per_tok", truth.experts_per_token))
            if key not in arch]
    if missing:
        raise CheckFailed(f"describe() lacks {', '.join(missing)}; report them (see "
                          f"{SCHEMA}) so callers need not re-derive them")


CHECKS = (
    check_describe_is_json_serializable,
    check_describe_matches_schema,
    check_describe_layers,
    check_describe_heads,
    check_describe_gqa_config,
    check_describe_mlp_dims,
    check_describe_experts,
    check_describe_layer_types,
    check_describe_tying,
    check_describe_total_params,
    check_describe_metadata,
    check_describe_reports_optional_metadata,
)
