"""Property-based: for generated tiny configs, describe() is true and round-trips are bit-exact."""

import transformers
from hypothesis import given
from hypothesis import strategies as st

from pytest_invarlock.adapters import roles
from pytest_invarlock.errors import CheckNotApplicable
from pytest_invarlock.hf_adapter.checks import CheckContext, describe, roundtrip

DECODERS = ("llama", "mistral", "qwen2")


@st.composite
def configs(draw):
    """Draw a tiny config: 1-3 layers, heads and K/V heads that divide, ties on or off, MoE."""
    family = draw(st.sampled_from((*DECODERS, "gpt2", "bert", "mixtral")))
    layers = draw(st.integers(1, 3))
    heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([8, 16]))
    hidden = heads * head_dim
    tie = draw(st.booleans())
    common = {"vocab_size": 64, "tie_word_embeddings": tie}
    if family == "gpt2":
        return "causal", transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads,
                                                 n_positions=32, **common)
    if family == "bert":
        return "mlm", transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                                              num_attention_heads=heads, max_position_embeddings=32,
                                              intermediate_size=draw(st.integers(8, 48)), **common)
    kv = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    settings = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                # multiples of 4: fused MoE kernels need 16-byte strides (a transformers limit)
                "num_key_value_heads": kv, "intermediate_size": 4 * draw(st.integers(2, 12)),
                "max_position_embeddings": 32, **common}
    if family == "mixtral":
        experts = draw(st.integers(2, 4))
        settings.update(num_local_experts=experts, num_experts_per_tok=draw(st.integers(1, experts)))
    return "causal", transformers.AutoConfig.for_model(family, **settings)


ADAPTERS = {"causal": roles.HFCausalAdapter(), "mlm": roles.HFMLMAdapter()}
AUTO = {"causal": transformers.AutoModelForCausalLM, "mlm": transformers.AutoModelForMaskedLM}


@given(configs())
def test_describe_is_true_and_roundtrips_are_exact(drawn):
    role, config = drawn
    model = AUTO[role].from_config(config).eval()
    adapter = ADAPTERS[role]
    ctx = CheckContext(adapter.name, config.model_type, reference=True)
    for check in (*describe.CHECKS, roundtrip.check_snapshot_roundtrip_bytes):
        try:
            check(adapter, model, ctx)
        except CheckNotApplicable:
            pass
