"""The role adapters of spec 001: hf_causal, hf_mlm, hf_seq2seq, hf_multimodal (+ legacy names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from pytest_invarlock.adapters import quantization, structure
from pytest_invarlock.adapters.base import HFAdapterBase

MLM_FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert",
                          "electra", "deberta", "deberta-v2", "mpnet", "modernbert"})
SEQ2SEQ_FAMILIES = frozenset({"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian"})


class HFRoleAdapter(HFAdapterBase):
    """Describe any transformer stack from its modules; subclasses say which models they take."""

    #: attention_type reported for this role (causal models refine it to gqa/mqa).
    attention: ClassVar[str] = "causal"
    #: Class-name suffixes this adapter accepts.
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: ``config.model_type`` values accepted; empty means every model of the role.
    families: ClassVar[frozenset[str]] = frozenset()
    #: whether the adapter takes quantized models (the full-precision ones refuse them)
    quantized: ClassVar[bool] = False

    @property
    def capabilities(self) -> dict[str, Any] | None:
        """Return this adapter's entry of contracts/adapter_capabilities.json (None: unlisted)."""
        from pytest_invarlock.hf_adapter.capabilities import contract

        return contract().get(self.name)

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Return why this adapter does not take a checkpoint, from its config alone (None: it does).

        Decided without loading anything: the class :meth:`load_model` would build (from
        transformers' auto mapping), then the rules of :meth:`can_handle` applied to the config
        that class would carry. The conformance run plans no case for a declined checkpoint.
        """
        family = getattr(config, "model_type", None)
        if cls.families and family not in cls.families:
            return f"{cls.name} takes only model_type {', '.join(sorted(cls.families))}"
        method = quantization.quant_method(config)
        if method and not cls.quantized:
            wanted = quantization.QUANT_METHODS.get(method)
            owner = (f"{wanted} loads it" if wanted and cls.auto_class == "AutoModelForCausalLM"
                     else "no reference adapter loads it")
            return (f"a {method}-quantized checkpoint: {cls.name} loads full-precision models "
                    f"only ({owner})")
        built = built_class(cls._loader(config), family)
        if built is None:
            return (f"load_model would fail: transformers.{cls._loader(config)} has no class "
                    f"for model_type {family!r}")
        if not cls._accepts_built(built, _Config(config, built)):
            return f"can_handle() is False for the {built} load_model builds"
        return None

    @classmethod
    def _loader(cls, config: Any) -> str:
        """Return the transformers Auto class :meth:`load_model` uses for ``config``."""
        return cls.auto_class

    @classmethod
    def _accepts_built(cls, built: str, config: Any) -> bool:
        return built.endswith(cls.suffixes)

    def can_handle(self, model: Any) -> bool:
        """Return whether ``model`` is a transformers model of this role (and family)."""
        config = getattr(model, "config", None)
        if not isinstance(model, nn.Module) or config is None:
            return False
        if self.families and getattr(config, "model_type", None) not in self.families:
            return False
        if not self.quantized and quantization.model_adapter(model):
            return False  # its state lives in backend structures this adapter does not snapshot
        return self._accepts(model, config)

    def _accepts(self, model: nn.Module, config: Any) -> bool:
        return self._accepts_built(type(model).__name__, config)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Describe layers, heads, MLP widths, ties and architecture from modules and config."""
        config = structure.text_config(model)
        stacks = structure.stacks(model)
        heads, kv, mlp = [], [], []
        for name, layers in stacks:
            h, k = structure.head_counts(config, name)
            heads += [h] * len(layers)
            kv += [k] * len(layers)
            mlp += [structure.mlp_width(layer) for layer in layers]
        desc: dict[str, Any] = {
            "n_layer": len(heads), "heads_per_layer": heads, "mlp_dims": mlp,
            "tying": structure.tying(model),
            "model_type": structure.model_type_of(model),
            "model_class": type(model).__name__,
            "total_params": sum(p.numel() for p in model.parameters()),
            "device": str(next(model.parameters()).device),
            "architecture": self._architecture(model, config, stacks, heads[0], kv[0]),
        }
        if kv[0] != heads[0]:
            desc["gqa_config"] = {"num_attention_heads": heads[0], "num_key_value_heads": kv[0],
                                  "head_dim": structure.head_dim(config, heads[0]),
                                  "gqa_ratio": heads[0] / kv[0]}
        return desc

    def _attention(self, config: Any, stacks: list[structure.Stack], heads: int, kv: int) -> str:
        """Return the role's attention, narrowed to what this model holds.

        One stack of an encoder-decoder family (``BartForCausalLM``, ``T5EncoderModel``) attends
        like a decoder or an encoder; an encoder whose self-attention is causal (a BERT-family
        model configured ``is_decoder``) is causal.
        """
        attention = self.attention
        if attention == "encoder-decoder" and len(stacks) == 1:
            attention = "causal" if "decoder" in stacks[0][0] else "bidirectional"
        if attention == "bidirectional" and structure.causal(stacks[0][1][0]):
            attention = "causal"
        if attention == "causal" and kv != heads:
            attention = "mqa" if kv == 1 else "gqa"
        return attention

    def _architecture(self, model: nn.Module, config: Any, stacks: list[structure.Stack],
                      heads: int, kv: int) -> dict[str, Any]:
        first_layer = stacks[0][1][0]
        arch: dict[str, Any] = {
            "attention_type": self._attention(config, stacks, heads, kv),
            "normalization_type": structure.normalization(model),
            "activation": structure.activation(config, first_layer),
            "positional_encoding": structure.positional(model, config),
        }
        arch = {key: value for key, value in arch.items() if value is not None}
        experts = structure.experts(model)
        if experts is not None:
            arch["num_experts"] = experts
            arch["num_experts_per_tok"] = int(config.num_experts_per_tok)
        kinds = structure.layer_types([layer for _, layers in stacks for layer in layers])
        if kinds is not None:
            arch["layer_types"], window = kinds
            if window is not None:
                arch["sliding_window"] = window
        return arch


class HFCausalAdapter(HFRoleAdapter):
    """Decoder-only causal LMs (dense, MoE, GPT-2 like), loaded with AutoModelForCausalLM.

    Also the decoder-only variants of other families: ``BartForCausalLM`` (the decoder stack of
    an encoder-decoder family) and BERT-family LM heads configured ``is_decoder=True``.
    """

    name: ClassVar[str] = "hf_causal"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    suffixes: ClassVar[tuple[str, ...]] = ("ForCausalLM", "LMHeadModel")

    @classmethod
    def declines_config(cls, config: Any) -> str | None:
        """Decline an encoder-decoder checkpoint besides the role's rules (see seq2seq_checkpoint)."""
        if getattr(config, "is_encoder_decoder", False) and not decoder_embeddings_stored(
                getattr(config, "_name_or_path", "")):
            return seq2seq_checkpoint(config)
        return super().declines_config(config)

    def load_model(self, model_id: Any, device: str = "auto", **hf_kwargs: Any) -> nn.Module:
        """Load a causal LM; refuse an encoder-decoder checkpoint (its decoder would be partial)."""
        refuse_seq2seq(model_id, **hf_kwargs)
        return super().load_model(model_id, device, **hf_kwargs)

    def _accepts(self, model: nn.Module, config: Any) -> bool:
        """Refuse encoder-decoders, and encoder families unless configured as decoders.

        An MLM or seq2seq family loaded as *ForCausalLM / LMHeadModel is a causal LM only when its
        config says ``is_decoder`` (BartForCausalLM sets it; a BERT head without it attends
        bidirectionally) and it is not an encoder-decoder.
        """
        return self._accepts_built(type(model).__name__, config)

    @classmethod
    def _accepts_built(cls, built: str, config: Any) -> bool:
        if getattr(config, "is_encoder_decoder", False):
            return False
        family = getattr(config, "model_type", None)
        if family in MLM_FAMILIES | SEQ2SEQ_FAMILIES and not getattr(config, "is_decoder", False):
            return False
        return built.endswith(cls.suffixes)


class HFGPT2Adapter(HFCausalAdapter):
    """Legacy ``hf_gpt2`` (spec 000): GPT-2 style models only."""

    name: ClassVar[str] = "hf_gpt2"
    families: ClassVar[frozenset[str]] = frozenset({"gpt2"})


class HFLlamaAdapter(HFCausalAdapter):
    """Legacy ``hf_llama`` (spec 000): LLaMA and its close relatives."""

    name: ClassVar[str] = "hf_llama"
    families: ClassVar[frozenset[str]] = frozenset({"llama", "mistral", "qwen2", "qwen3", "yi"})


class HFMLMAdapter(HFRoleAdapter):
    """BERT-family encoders: the MLM model when the checkpoint has its head, else the base model."""

    name: ClassVar[str] = "hf_mlm"
    auto_class: ClassVar[str] = "AutoModelForMaskedLM"
    attention: ClassVar[str] = "bidirectional"
    families: ClassVar[frozenset[str]] = MLM_FAMILIES

    @classmethod
    def _accepts_built(cls, built: str, config: Any) -> bool:
        return not getattr(config, "is_encoder_decoder", False)

    @classmethod
    def _loader(cls, config: Any) -> str:
        heads = [a for a in (getattr(config, "architectures", None) or [])
                 if a.endswith("ForMaskedLM")]
        return "AutoModelForMaskedLM" if heads or not getattr(config, "architectures",
                                                               None) else "AutoModel"

    def load_model(self, model_id: Any, device: str = "auto", **hf_kwargs: Any) -> nn.Module:
        """Load with AutoModelForMaskedLM, or AutoModel when config.architectures has no MLM head."""
        import transformers

        from pytest_invarlock.adapters.base import guard_remote_code, local_only

        guard_remote_code(str(model_id), hf_kwargs)
        keys = ("revision", "cache_dir", "trust_remote_code", "local_files_only")
        config = transformers.AutoConfig.from_pretrained(str(model_id), **local_only(
            model_id, {k: hf_kwargs[k] for k in keys if k in hf_kwargs}))
        heads = [a for a in (config.architectures or []) if a.endswith("ForMaskedLM")]
        loader = "AutoModelForMaskedLM" if heads or not config.architectures else "AutoModel"
        return self._load(loader, model_id, device, hf_kwargs)


class HFBertAdapter(HFMLMAdapter):
    """Legacy ``hf_bert`` (spec 000): the BERT-family encoders."""

    name: ClassVar[str] = "hf_bert"


class HFSeq2SeqAdapter(HFRoleAdapter):
    """Encoder-decoder LMs (T5, BART): both stacks described, encoder first."""

    name: ClassVar[str] = "hf_seq2seq"
    auto_class: ClassVar[str] = "AutoModelForSeq2SeqLM"
    attention: ClassVar[str] = "encoder-decoder"

    @classmethod
    def _accepts_built(cls, built: str, config: Any) -> bool:
        return bool(getattr(config, "is_encoder_decoder", False)) and not hasattr(
            config, "vision_config")


class HFMultimodalAdapter(HFRoleAdapter):
    """Image-text models: describe the language model, snapshot the whole model."""

    name: ClassVar[str] = "hf_multimodal"
    auto_class: ClassVar[str] = "AutoModelForImageTextToText"

    @classmethod
    def _accepts_built(cls, built: str, config: Any) -> bool:
        return getattr(config, "vision_config", None) is not None


#: transformers Auto class -> its mapping of model_type to class name (read, never imported).
_MAPPINGS = {"AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
             "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
             "AutoModel": "MODEL_MAPPING_NAMES",
             "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
             "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"}


def built_class(auto_class: str, model_type: Any) -> str | None:
    """Return the name of the class ``transformers.<auto_class>`` builds for ``model_type``."""
    from transformers.models.auto import modeling_auto

    names = getattr(modeling_auto, _MAPPINGS[auto_class])
    found = names.get(str(model_type))
    return found if isinstance(found, str) else (found[0] if found else None)


class _Config:
    """The config a built class carries.

    Decoder-only classes of encoder-decoder families (``BartForCausalLM``) build with
    ``is_decoder=True, is_encoder_decoder=False``.
    """

    def __init__(self, config: Any, built: str) -> None:
        self._config = config
        self._decoder = (getattr(config, "model_type", None) in SEQ2SEQ_FAMILIES
                         and built.endswith("ForCausalLM"))

    def __getattr__(self, key: str) -> Any:
        if self._decoder and key in ("is_decoder", "is_encoder_decoder"):
            return key == "is_decoder"
        return getattr(self._config, key)


def seq2seq_checkpoint(config: Any) -> str:
    """Return why a causal adapter does not take an encoder-decoder checkpoint.

    transformers builds the decoder-only class (``BartForCausalLM``) from it, but the checkpoint
    keeps the decoder's embeddings as the shared ``model.shared`` table: the decoder embeddings
    and the LM head are missing keys, initialised at random on every load (two loads differ).
    """
    archs = getattr(config, "architectures", None) if not isinstance(config, dict) else config.get(
        "architectures")
    return (f"an encoder-decoder checkpoint ({', '.join(archs or []) or 'is_encoder_decoder'}): "
            "loaded as a causal LM its decoder embeddings and LM head are missing keys, random "
            "on every load; hf_seq2seq loads it")


#: the largest safetensors header read (names and offsets; a real one is kilobytes to megabytes)
HEADER_LIMIT = 100 << 20


def decoder_embeddings_stored(path: Any) -> bool:
    """Return whether a local checkpoint stores its decoder's own embedding table.

    Read from the safetensors headers (names only, nothing loaded): a checkpoint saved from the
    decoder-only class has ``model.decoder.embed_tokens.weight``; one saved from the
    encoder-decoder keeps only the shared table.
    """
    import json
    import struct

    root = Path(str(path)) if path else None
    if root is None or not root.is_dir():
        return False
    for file in sorted(root.glob("*.safetensors")):
        try:
            with file.open("rb") as handle:
                size = struct.unpack("<Q", handle.read(8))[0]
                if size > HEADER_LIMIT:  # not a header safetensors writes: never read it whole
                    continue
                names = json.loads(handle.read(size))
        except (OSError, ValueError, struct.error):
            continue
        if any(str(n).endswith("decoder.embed_tokens.weight") for n in names):
            return True
    return False


def refuse_seq2seq(model_id: Any, **hub: Any) -> None:
    """Raise ValueError for an encoder-decoder checkpoint lacking its decoder's embeddings.

    A Hub id's weights cannot be looked into before loading: any encoder-decoder one is refused.
    """
    config = quantization.checkpoint_config(model_id, **hub)
    if config is not None and config.get("is_encoder_decoder") and not decoder_embeddings_stored(
            model_id):
        raise ValueError(f"{model_id}/config.json: {seq2seq_checkpoint(config)}")
