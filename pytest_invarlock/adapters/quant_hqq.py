"""``hf_hqq``: HQQ runtime quantization through hqq's own API (the reference adapter of spec 001).

transformers 5 cannot load or apply HQQ (``HqqConfig`` raises ``NotImplementedError:
QuantizationMethod.HQQ is not available yet``), so the full-precision checkpoint is loaded with
transformers and quantized with ``AutoHQQHFModel.quantize_model`` (research,
``quantized-backends-cpu.md``). What that leaves, and what this adapter does about it:

- every ``torch.nn.Linear`` but ``lm_head`` becomes an ``HQQLinear``: no ``.weight``, a packed
  ``W_q`` uint8 Parameter, ``meta['scale']``/``meta['zero']`` in a plain dict (``zero`` an
  inference tensor) and, where the linear had one, a bias (a plain attribute since hqq 0.2.7, a
  Parameter before). The leaf snapshots of :mod:`pytest_invarlock.hf_adapter.leaves` capture
  all of them and write them back in place (under ``torch.inference_mode`` for ``zero``);
- describe() counts ``in_features * out_features`` (+ bias) per ``HQQLinear``, never ``W_q``;
- nothing records that the model is quantized, so the adapter writes
  ``config.quantization_config = {"quant_method": "hqq", "nbits": ..., "group_size": ...}`` (a
  dict: no config class is built, trap X9), which :meth:`can_handle` and hf_auto read;
- ``quantize_model`` freezes every parameter; the adapter gives the floating-point parameters
  it did not quantize their ``requires_grad`` back (see :meth:`HFHqqAdapter.load_model`).

Saved HQQ checkpoints (transformers 4.x ``quant_method: hqq``) are declined: loading them needs
transformers' HQQ integration, which transformers 5 does not have.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, ClassVar

import torch
from torch import nn

from pytest_invarlock.adapters import quantization
from pytest_invarlock.adapters.base import guard_remote_code, local_only, resolve_device
from pytest_invarlock.adapters.quantized import HFQuantizedAdapter

#: HQQ's bits and group size: 4-bit groups of 64 weights run on the CPU and fit every tiny
#: fixture whose linears hqq quantizes (a weight's element count must be a multiple of 64)
NBITS = 4
GROUP_SIZE = 64
#: what ``quantize_model`` leaves in full precision: hqq's ``_IGNORE_LINEAR``
SKIPPED = ("lm_head",)


class HFHqqAdapter(HFQuantizedAdapter):
    """A causal LM quantized by HQQ at load time (4-bit, groups of 64, computing in the load dtype)."""

    name: ClassVar[str] = "hf_hqq"
    quant_method: ClassVar[str] = "hqq"
    backend_module: ClassVar[str] = "hqq"
    extra: ClassVar[str] = "hqq"

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Return why hqq would not quantize this checkpoint, from its config alone.

        Beyond the causal-LM rules: a checkpoint already quantized (a saved HQQ one needs
        transformers' HQQ integration, gone in transformers 5), one without a ``torch.nn.Linear``
        HQQ replaces (gpt2's ``Conv1D``, Falcon's ``FalconLinear``: quantize_model matches the
        exact type and would quantize nothing), and one with a linear whose weight count is not
        a multiple of the group size (quantize_model raises). The linears are found on the
        class built from the config on the meta device: nothing is loaded or allocated.
        """
        why = super().declines_config(config)
        if why is not None:
            return why
        method = quantization.quant_method(config)
        if method == "hqq":
            return (f"{cls.name} does not load saved HQQ checkpoints: that needs transformers' HQQ "
                    "integration, which transformers 5 does not have (NotImplementedError); "
                    "pass the full-precision checkpoint and hf_hqq quantizes it")
        if method is not None:
            return (f"the checkpoint is already quantized ({method}); {cls.name} quantizes "
                    "full-precision checkpoints only")
        try:
            built = _meta_model(config)
        except Exception:  # a class that cannot be built: load_model reports it
            return None
        linears = _quantizable(built)
        if not linears:
            return ("hqq would quantize nothing: it replaces only modules of type exactly "
                    "torch.nn.Linear (lm_head excepted) and this model has none (its "
                    f"projections are {', '.join(_other_linears(built)) or 'none'})")
        odd = [f"{name} ({numel} weights)" for name, numel in linears if numel % GROUP_SIZE]
        if odd:
            return (f"hqq's group size {GROUP_SIZE} does not divide the weights of "
                    f"{', '.join(odd[:3])}: quantize_model would raise")
        return None

    def load_model(self, model_id: str | os.PathLike[str], device: str = "auto",
                   **hf_kwargs: Any) -> nn.Module:
        """Load the full-precision checkpoint on the CPU and quantize it with HQQ onto ``device``.

        ``dtype`` (float32 unless given) is the load dtype and HQQ's compute dtype, which every
        module HQQ keeps is cast to.

        ``requires_grad`` of the floating-point parameters HQQ keeps (embeddings, norms, the LM
        head) is put back as the checkpoint loaded it: ``quantize_model`` freezes them only as a
        side effect of its inference setup, the full-precision source and the transformers-
        loaded backends (bitsandbytes, torchao) leave them trainable, and the quantized weights
        themselves (uint8 ``W_q``) cannot require gradients anyway.
        """
        import transformers

        missing = self.unavailable()
        if missing:
            raise ImportError(missing)
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel

        guard_remote_code(str(model_id), hf_kwargs)
        keys = ("revision", "cache_dir", "trust_remote_code", "local_files_only")
        config = transformers.AutoConfig.from_pretrained(str(model_id), **local_only(
            model_id, {k: hf_kwargs[k] for k in keys if k in hf_kwargs}))
        why = self.declines_config(config)
        if why is not None:
            raise ValueError(f"{self.name} cannot take {model_id}: {why}")
        hf_kwargs.setdefault("dtype", torch.float32)
        model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_id), **local_only(model_id, hf_kwargs))
        grads = {name: p.requires_grad for name, p in model.named_parameters()}
        # HQQ casts every module it keeps to its compute dtype: the dtype the model was loaded
        # in, so that a requested dtype (or the checkpoint's, for "auto") is what the caller gets
        compute = next(p.dtype for p in model.parameters() if p.is_floating_point())
        target = str(resolve_device(device))
        # {"": device}: one block holding every module, which hqq maps whatever the model's
        # layout (a plain device string needs model.model.layers and fails on OPT or GPT-NeoX).
        # hqq prints progress bars and a spurious "Default model structure not supported"
        # line; errors still raise.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            AutoHQQHFModel.quantize_model(
                model, quant_config=BaseQuantizeConfig(nbits=NBITS, group_size=GROUP_SIZE),
                compute_dtype=compute, device={"": target})
        for name, p in model.named_parameters():
            if name in grads and (p.is_floating_point() or p.is_complex()):
                p.requires_grad_(grads[name])
        hf: Any = model
        hf.config.quantization_config = {"quant_method": self.quant_method, "nbits": NBITS,
                                         "group_size": GROUP_SIZE}
        return model.eval()

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Return the bits and group size recorded in the model's config at load time."""
        quant = getattr(getattr(model, "config", None), "quantization_config", None)
        quant = quant if isinstance(quant, dict) else {}
        return {"bits": quant.get("nbits"), "group_size": quant.get("group_size")}


def _meta_model(config: Any) -> nn.Module:
    """Return the causal-LM class of ``config`` built on the meta device (no memory, no weights)."""
    import transformers

    with torch.device("meta"):
        model: nn.Module = transformers.AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    return model


def _other_linears(model: nn.Module) -> list[str]:
    """Return the class names of the projections hqq does not replace (Conv1D, nn.Linear subclasses)."""
    return sorted({type(m).__name__ for name, m in model.named_modules()
                   if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
                   and name.rpartition(".")[2] not in SKIPPED})


def _quantizable(model: nn.Module) -> list[tuple[str, int]]:
    """Return the linears ``quantize_model`` replaces, with their weight counts.

    hqq matches ``type(module) is torch.nn.Linear`` (subclasses such as ``FalconLinear`` are
    left alone) and skips names ending in ``lm_head``.
    """
    return [(name, module.weight.numel()) for name, module in model.named_modules()
            if type(module) is nn.Linear and name.rpartition(".")[2] not in SKIPPED]
