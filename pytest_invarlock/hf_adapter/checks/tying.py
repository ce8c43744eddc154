"""Checks that tied weights stay tied: after load, after ``.to()`` and after a restore."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytest_invarlock.errors import CheckFailed, CheckNotApplicable
from pytest_invarlock.hf_adapter import capabilities, state, truth
from pytest_invarlock.hf_adapter.checks import CheckContext, check, summarize


def _shares(model: nn.Module, a: str, b: str) -> bool:
    return any(a in g and b in g for g in state.storage_groups(model))


@check(why="a tie the config asks for, lost or invented on load, changes the model's behaviour")
def check_tying_after_load(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """The embedding and LM head share storage exactly when config.tie_word_embeddings says so."""
    facts = truth.derive(model)
    if facts.embedding_pair is None:
        raise CheckNotApplicable("the model has no input embedding / output head pair")
    emb, head = facts.embedding_pair
    shared = _shares(model, emb, head)
    if facts.tie_word_embeddings and not shared:
        raise CheckFailed(f"config.tie_word_embeddings is True but {head!r} and {emb!r} have "
                          "separate storage after load_model(); keep the tie that "
                          "from_pretrained makes (do not clone or re-create the head)")
    if not facts.tie_word_embeddings and shared:
        raise CheckFailed(f"config.tie_word_embeddings is False but {head!r} and {emb!r} share "
                          "storage after load_model(); do not tie weights the config keeps apart")


@check(mutates=True, why="ties must survive the dtype/device moves every caller makes")
def check_tying_after_to(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """Tied groups survive ``model.to(dtype)`` and back (ties are one Parameter, not two views)."""
    before = state.storage_groups(model)
    if not before:
        raise CheckNotApplicable("the model has no tied weights")
    if capabilities.forbids_moves(adapter, model):
        raise CheckNotApplicable("the model is placed by its backend (the adapter claims "
                                 "device_movement_managed_by_backend, or the model is quantized)")
    dtype = next(model.parameters()).dtype
    model.to(torch.float64).to(dtype)
    after = state.storage_groups(model)
    if after != before:
        lost = sorted(set(before) - set(after))
        raise CheckFailed(f"model.to() split the tied group{'s' * (len(lost) > 1)} "
                          f"{summarize(map(str, lost))}: their names were distinct Parameter "
                          "objects viewing one storage. Tie by assigning the same Parameter "
                          "object (e.g. model.tie_weights()), not a view of its data")


@check(mutates=True, why="a restore that leaves tied weights apart silently doubles them")
def check_restore_reties_tied_weights(adapter: Any, model: nn.Module, ctx: CheckContext) -> None:
    """restore() re-binds tied names to one storage after an edit untied them (not a value copy)."""
    groups = state.storage_groups(model)
    if not groups:
        raise CheckNotApplicable("the model has no tied weights")
    blob = adapter.snapshot(model)
    group = groups[0]
    path, _, leaf = group[-1].rpartition(".")
    owner = model.get_submodule(path) if path else model
    original = getattr(owner, leaf)
    setattr(owner, leaf, nn.Parameter(original.detach().clone() + 1,
                                      requires_grad=original.requires_grad))
    adapter.restore(model, blob)
    if not _shares(model, group[0], group[-1]):
        raise CheckFailed(f"after restore(), {group[-1]!r} no longer shares storage with "
                          f"{group[0]!r} (an edit had untied them); restore must re-bind tied "
                          "names to one Parameter, not copy values into separate tensors")


CHECKS = (
    check_tying_after_load,
    check_tying_after_to,
    check_restore_reties_tied_weights,
)
