"""Deliberately broken quantized adapters, each failing exactly the check(s) it names.

Run on real backends by tests/test_quantized_adapters.py (skipped where the backend is missing);
tests/test_checks_fail.py counts them when it asks that every check has a breaking case.
Importing this module imports no backend.
"""

from typing import ClassVar

import torch

from pytest_invarlock.adapters import quantized
from pytest_invarlock.adapters.roles import HFCausalAdapter
from pytest_invarlock.hf_adapter import leaves


class ShallowBnb(quantized.HFBnbAdapter):
    """Snapshots parameters and buffers only: misses bitsandbytes' int8 scales (SCB)."""

    name = "shallow_bnb"

    def snapshot(self, model):
        from pytest_invarlock.adapters import snapshot

        return snapshot.snapshot_bytes(model)

    def restore(self, model, blob):
        from pytest_invarlock.adapters import snapshot

        snapshot.restore_bytes(model, blob)


class PackedTotal(quantized.HFTorchAoAdapter):
    """Counts parameters as stored, not as the full-precision model has them."""

    name = "packed_total"

    def describe(self, model):
        return {**super().describe(model), "total_params": quantized.logical_params(model) - 1}


class NothingQuantized(quantized.HFTorchAoAdapter):
    """Takes GPT-2, whose Conv1D layers torchao silently leaves in full precision (trap X5)."""

    name = "nothing_quantized"
    declined_families: ClassVar[dict[str, str]] = {}

    def can_handle(self, model):
        from pytest_invarlock.adapters import quantization

        return quantization.model_adapter(model) == "hf_torchao"  # quantized or not


class OmitsScales(quantized.HFBnbAdapter):
    """Snapshots every leaf but bitsandbytes' int8 scales (SCB): hidden state the forward reads."""

    name = "omits_scales"

    def snapshot(self, model):
        from safetensors.torch import save

        return memoryview(save({n: leaf.tensor.detach().clone().contiguous()
                                for n, leaf in leaves.leaves(model).items()
                                if leaf.kind != "quant_state"}))

    def restore(self, model, blob):
        from safetensors.torch import load

        now = {n: leaf.tensor for n, leaf in leaves.leaves(model).items()
               if leaf.kind != "quant_state"}
        stored = load(bytes(blob))
        if sorted(stored) != sorted(now) or any(
                stored[n].shape != now[n].shape or stored[n].dtype != now[n].dtype for n in now):
            raise ValueError("the snapshot does not fit the model")
        with torch.no_grad():
            for name, value in stored.items():
                now[name].copy_(value)


class PackedCounts(quantized.HFBnbAdapter):
    """Counts total_params as stored: a 4-bit weight packs two values per uint8 element."""

    name = "packed_counts"

    def describe(self, model):
        return {**super().describe(model), "total_params": sum(p.numel() for p in model.parameters())}


class DescribeViaStateDict(quantized.HFBnbAdapter):
    """Reads the model through state_dict(), which on the CPU unpacks a 4-bit model (bnb-1)."""

    name = "describe_via_state_dict"

    def describe(self, model):
        model.state_dict()
        return super().describe(model)


class EightBitsSaid(quantized.HFBnbAdapter):
    """Reports 8 bits for a 4-bit model (read from the load config's defaults, say)."""

    name = "eight_bits_said"

    def settings(self, model):
        return {**super().settings(model), "bits": 8}


class ModulesUnlisted(quantized.HFTorchAoAdapter):
    """Lists only the attention projections as quantized; the MLP's were quantized too."""

    name = "modules_unlisted"

    def describe(self, model):
        out = super().describe(model)
        listed = out["quantization"]["quantized_modules"]
        out["quantization"]["quantized_modules"] = [m for m in listed if "mlp" not in m]
        return out


class MovesOnLoad(quantized.HFTorchAoAdapter):
    """Claims the backend places the model, then moves it itself after loading."""

    name = "moves_on_load"

    def load_model(self, model_id, device="auto", **hf_kwargs):
        return super().load_model(model_id, device, **hf_kwargs).to("cpu")


class RandomOnLoad(quantized.HFTorchAoAdapter):
    """Leaves one weight at random, as a checkpoint key the model does not load would (X6)."""

    name = "random_on_load"

    def load_model(self, model_id, device="auto", **hf_kwargs):
        model = super().load_model(model_id, device, **hf_kwargs)
        with torch.no_grad():
            model.model.norm.weight.normal_()
        return model


class ScalesWhereTheyAre(quantized.HFBnbAdapter):
    """Stores bitsandbytes' int8 scales under the name of where they are now (trap X1).

    Before the first forward they hang on the weight (``weight.SCB``); the forward moves them
    to ``module.state.SCB``: a snapshot taken before it names scales that are gone, and its
    restore skips them silently.
    """

    name = "scales_where_they_are"

    def _tensors(self, model):
        found = dict(model.named_parameters())
        found.update(model.named_buffers())
        for path, module in model.named_modules():
            scb = getattr(getattr(module, "weight", None), "SCB", None)
            if isinstance(scb, torch.Tensor):
                found[f"{path}.weight.SCB"] = scb
            scb = getattr(getattr(module, "state", None), "SCB", None)
            if isinstance(scb, torch.Tensor):
                found[f"{path}.state.SCB"] = scb
        return found

    def snapshot(self, model):
        from safetensors.torch import save

        return memoryview(save({n: t.detach().clone().contiguous()
                                for n, t in self._tensors(model).items()}))

    def restore(self, model, blob):
        from safetensors.torch import load

        now, stored = self._tensors(model), load(bytes(blob))
        wrong = [n for n, v in stored.items() if not n.endswith(".SCB") and (
            n not in now or now[n].shape != v.shape or now[n].dtype != v.dtype)]
        wrong += [n for n in now if not n.endswith(".SCB") and n not in stored]
        if wrong:
            raise ValueError(f"the snapshot does not fit the model: {wrong[:3]}")
        with torch.no_grad():
            for name, value in stored.items():
                if name in now:  # scales stored where they no longer are: skipped, silently
                    now[name].copy_(value)


class TakesQuantized(HFCausalAdapter):
    """A full-precision adapter that loads whatever transformers gives it, quantized or not."""

    name = "takes_quantized"

    def load_model(self, model_id, device="auto", **hf_kwargs):
        import transformers

        return transformers.AutoModelForCausalLM.from_pretrained(
            str(model_id), local_files_only=True, **hf_kwargs).eval()

    def can_handle(self, model):
        return type(model).__name__.endswith("ForCausalLM")


#: (adapter, backend module, fixture or quantized fixture, the checks it fails)
CASES = [
    (ShallowBnb, "bitsandbytes", "llama-gqa", {"check_snapshot_roundtrip_bytes",
                                                "check_snapshot_before_first_forward"}),
    (OmitsScales, "bitsandbytes", "llama-gqa", {"check_snapshot_roundtrip_bytes",
                                                 "check_snapshot_before_first_forward"}),
    (PackedTotal, "torchao", "llama-gqa", {"check_describe_total_params"}),
    (PackedCounts, "bitsandbytes", "llama-gqa-kv2-bnb-nf4", {"check_describe_total_params"}),
    (DescribeViaStateDict, "bitsandbytes", "llama-gqa-kv2-bnb-nf4",
     {"check_read_only_calls_leave_model_unchanged"}),
    (NothingQuantized, "torchao", "gpt2", {"check_model_is_quantized"}),
    (ModulesUnlisted, "torchao", "llama-gqa", {"check_describe_reports_quantization"}),
    (EightBitsSaid, "bitsandbytes", "llama-gqa-kv2-bnb-nf4",
     {"check_describe_reports_quantization"}),
    (MovesOnLoad, "torchao", "llama-gqa", {"check_backend_device_movement_is_respected"}),
    (RandomOnLoad, "torchao", "llama-gqa", {"check_load_is_repeatable"}),
    # both orders of one defect: restored after the first forward, and into a fresh process
    (ScalesWhereTheyAre, "bitsandbytes", "llama-gqa", {"check_snapshot_before_first_forward",
                                                        "check_snapshot_restores_in_a_fresh_process"}),
]
#: a full-precision adapter that takes quantized checkpoints (needs bitsandbytes)
FULL_PRECISION_CASES = [
    (HFCausalAdapter, set()),  # refuses, naming hf_bnb
    (TakesQuantized, {"check_load_model_refuses_quantized_checkpoint"}),
]
