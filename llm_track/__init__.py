"""LLM track: the iterative-RLHF protocol of arXiv 2605.04266 (section 4) on causal LMs.
Entry points: ``python -m llm_track.run`` and ``.evaluate`` (``llm_track/README.md``).
Importing this package does not import torch or transformers; the modules that need them do."""
