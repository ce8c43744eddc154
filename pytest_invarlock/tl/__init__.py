"""The ``transformer_lens`` profile: TransformerLens architecture adapters on tiny real models.

TransformerLens (4.x) maps canonical names (``blocks.0.attn.W_Q``) onto Hugging Face modules
through one ``ArchitectureAdapter`` per architecture. This profile checks each adapter against a
tiny, seeded, real transformers model of its architecture: truth comes from that model (its module
tree, its parameters, its logits), never from the adapter.

* :mod:`.discovery` lists the adapters without importing TransformerLens (its factory table, read
  as source, and the ``transformer_lens.architectures`` entry points);
* :mod:`.profile` plans cases (architecture adapter x architecture) and loads subjects;
* :mod:`.tiny` builds the tiny models;
* :mod:`.bridge` is everything that touches TransformerLens at run time;
* :mod:`.checks` holds the checks.

Importing this package loads neither torch nor transformers nor transformer_lens.
"""
