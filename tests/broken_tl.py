"""Broken TransformerLens architecture adapters: each is TransformerLens's llama adapter with one bug.

Every class subclasses the real ``LlamaArchitectureAdapter`` and changes one mapping,
conversion, preprocessing or loading behaviour, so that exactly one check of the
``transformer_lens`` profile fails (``tests/test_tl_profile.py`` runs each on the tiny llama).
Importing this module imports transformer_lens: tests skip without it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.model_bridge.supported_architectures import LlamaArchitectureAdapter


class TranslatesMlpOutToUpProj(LlamaArchitectureAdapter):
    """Path translation names the wrong module for ``blocks.N.mlp.out`` (up_proj, not down_proj)."""

    def translate_transformer_lens_path(self, path: str, last_component_only: bool = False
                                        ) -> str:
        if path.endswith(".mlp.out"):
            path = path[: -len(".out")] + ".in"
        return str(super().translate_transformer_lens_path(path, last_component_only))


class TranslatesWInToGate(LlamaArchitectureAdapter):
    """``W_in`` translates to the gate projection's weight (a parameter-name mix-up)."""

    def translate_transformer_lens_path(self, path: str, last_component_only: bool = False
                                        ) -> str:
        if path.endswith(".W_in"):
            path = path[: -len(".W_in")] + ".W_gate"
        return str(super().translate_transformer_lens_path(path, last_component_only))


def _rename(adapter: LlamaArchitectureAdapter, kind: str, first: str, second: str) -> None:
    """Swap the HF names of two sublayers of every block (a mapping typo)."""
    subs = adapter.component_mapping["blocks"].submodules[kind].submodules
    subs[first].name, subs[second].name = subs[second].name, subs[first].name


class SwapsMlpInAndOut(LlamaArchitectureAdapter):
    """The MLP's ``in`` and ``out`` name each other's module (up_proj <-> down_proj)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        _rename(self, "mlp", "in", "out")


class SwapsMlpGateAndIn(LlamaArchitectureAdapter):
    """The MLP's ``gate`` and ``in`` name each other's module (same shapes: gate_proj <-> up_proj)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        _rename(self, "mlp", "gate", "in")


class LeavesFinalNormKeyUnconverted(LlamaArchitectureAdapter):
    """Key conversion returns the final norm's HF key unchanged (``model.norm.weight``)."""

    def convert_hf_key_to_tl_key(self, hf_key: str) -> str:
        if hf_key.startswith("model.norm."):
            return hf_key
        return str(super().convert_hf_key_to_tl_key(hf_key))


class PreprocessScalesInPlace(LlamaArchitectureAdapter):
    """preprocess_weights folds a scale into the norm weights it is given, in place."""

    def preprocess_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key, value in state_dict.items():
            if key.endswith("ln1.weight"):
                value.mul_(1.0 + 1.0 / 8)  # writes the caller's (the model's live) tensor
        return state_dict


class PreprocessReassignsInput(LlamaArchitectureAdapter):
    """preprocess_weights writes new tensors into the dict it was given (values unchanged)."""

    def preprocess_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in list(state_dict):
            if key.endswith("ln2.weight"):
                state_dict[key] = state_dict[key].clone()
        return state_dict


class RewritesRotaryBuffer(LlamaArchitectureAdapter):
    """prepare_model rewrites a buffer of the HF model (the rotary ``original_inv_freq``)."""

    def prepare_model(self, hf_model: Any) -> None:
        super().prepare_model(hf_model)
        with torch.no_grad():
            hf_model.model.rotary_emb.original_inv_freq.mul_(2.0)


class ShiftsLogits(LlamaArchitectureAdapter):
    """prepare_model hooks the LM head so every logit is off by 0.01 (weights untouched)."""

    def prepare_model(self, hf_model: Any) -> None:
        super().prepare_model(hf_model)
        hf_model.lm_head.register_forward_hook(lambda _m, _i, out: out + 0.01)


class FreezesDownProjCopy(LlamaArchitectureAdapter):
    """Block 0's down projection computes with a copy taken at bridge time (kept in sync only
    on ``load_state_dict``, as TransformerLens's joint-QKV bridges keep theirs)."""

    def prepare_model(self, hf_model: Any) -> None:
        super().prepare_model(hf_model)
        linear = hf_model.model.layers[0].mlp.down_proj
        frozen = {"weight": linear.weight.detach().clone()}

        def forward(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, frozen["weight"], linear.bias)

        def refresh(_module: nn.Module, _incompatible: Any) -> None:
            frozen["weight"] = linear.weight.detach().clone()

        linear.forward = forward
        linear.register_load_state_dict_post_hook(refresh)


class DemotesNormToBuffer(LlamaArchitectureAdapter):
    """prepare_model turns the final norm's weight into a non-persistent buffer, so the
    bridge's state dict no longer holds it."""

    def prepare_model(self, hf_model: Any) -> None:
        super().prepare_model(hf_model)
        norm = hf_model.model.norm
        weight = norm.weight.detach()
        del norm.weight
        norm.register_buffer("weight", weight, persistent=False)


class ReadsArchitecturesAtLoad(LlamaArchitectureAdapter):
    """prepare_loading assumes every checkpoint's config names its architectures."""

    def prepare_loading(self, model_name: str, model_kwargs: dict[str, Any]) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_name)
        model_kwargs["revision"] = None if config.architectures[0] else "main"
        super().prepare_loading(model_name, model_kwargs)


class LoadsInHalfPrecision(LlamaArchitectureAdapter):
    """prepare_loading asks transformers for bfloat16 weights, whatever the checkpoint holds."""

    def prepare_loading(self, model_name: str, model_kwargs: dict[str, Any]) -> None:
        super().prepare_loading(model_name, model_kwargs)
        model_kwargs["dtype"] = torch.bfloat16


#: broken adapter -> the one check it fails, and words its message must contain
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "TranslatesMlpOutToUpProj": ("check_component_paths_resolve",
                                 ("blocks.0.mlp.out", "model.layers.0.mlp.down_proj")),
    "SwapsMlpInAndOut": ("check_component_roles_match_the_model",
                         ("blocks.0.mlp.in (model.layers.0.mlp.down_proj) runs after",)),
    "SwapsMlpGateAndIn": ("check_component_roles_match_the_model",
                          ("linear in blocks.0.mlp.gate (model.layers.0.mlp.up_proj)",
                           "swapped")),
    "TranslatesWInToGate": ("check_parameter_paths_translate",
                            ("blocks.0.mlp.W_in", "gate_proj.weight", "up_proj.weight")),
    "LeavesFinalNormKeyUnconverted": ("check_key_conversion_round_trips",
                                      ("model.norm.weight", "ln_final.weight")),
    "PreprocessScalesInPlace": ("check_preprocess_weights_keeps_keys_and_inputs",
                                ("blocks.0.ln1.weight", "in place")),
    "PreprocessReassignsInput": ("check_preprocess_weights_leaves_input_dict",
                                 ("blocks.0.ln2.weight", "copy the dict")),
    "RewritesRotaryBuffer": ("check_bridge_leaves_hf_weights",
                             ("model.rotary_emb.original_inv_freq",)),
    "ShiftsLogits": ("check_bridge_logits_match_hf", ("logits differ", "0.01")),
    "FreezesDownProjCopy": ("check_bridge_uses_live_weights",
                            ("model.layers.0.mlp.down_proj.weight", "copies")),
    "DemotesNormToBuffer": ("check_bridge_state_dict_round_trips",
                            ("model.norm.weight", "not restored")),
    "LoadsInHalfPrecision": ("check_boot_from_saved_checkpoint",
                             ("save_pretrained", "in-memory bridge")),
    "ReadsArchitecturesAtLoad": ("check_boot_without_architectures",
                                 ("without config.architectures",)),
}
