"""Prompts of the LLM protocol.

The paper draws one UltraFeedback (binarized) ``train_prefs`` prompt per step. That needs the
``datasets`` package and the network, so a small built-in list is the offline fallback:
``BUILTIN_PROMPTS`` holds 40 short, general, hand-written instructions (explanations, advice,
definitions, small tasks, in the spirit of UltraFeedback). The first 30 are the training split,
the last 10 (``EVAL_PROMPTS``) are held out for ``llm_track.evaluate`` and never used in training.
The tiny tokenizer is trained on all 40 prompts, so every word of them is in its vocabulary.
"""

from __future__ import annotations

import os
import warnings

BUILTIN_PROMPTS: tuple[str, ...] = (
    "Explain why the sky is blue in simple words.",
    "Give me three tips to sleep better at night.",
    "What is the difference between weather and climate?",
    "Write a short poem about the sea.",
    "How do I make a cup of green tea?",
    "Summarize the plot of a story about a lost dog that finds its way home.",
    "What are the benefits of regular exercise?",
    "Explain what a computer program is to a child.",
    "Suggest a healthy breakfast for a busy morning.",
    "Why do leaves change color in autumn?",
    "How can I save money on groceries?",
    "Describe the water cycle in a few sentences.",
    "What should I pack for a weekend trip to the mountains?",
    "Explain the rules of chess in simple terms.",
    "Give me a recipe for a simple vegetable soup.",
    "What is photosynthesis?",
    "How do I start learning to play the guitar?",
    "Write a polite email asking a colleague for help.",
    "Why is it important to drink water every day?",
    "Explain how a bicycle works.",
    "What are good habits for studying for an exam?",
    "Describe a sunny day at the beach.",
    "How can I be a better listener?",
    "What is the capital of France and why is it famous?",
    "Explain what gravity is.",
    "Give me ideas for a birthday party for a friend.",
    "How do plants grow from seeds?",
    "What is the best way to learn a new language?",
    "Write a short story about a robot who wants to paint.",
    "How do I keep my houseplants healthy?",
    # Held-out evaluation prompts (never used for training).
    "Explain why the moon has phases.",
    "Give me three tips to stay focused while working from home.",
    "What is the difference between a virus and a bacterium?",
    "Write a short poem about a quiet forest.",
    "How do I make a good cup of coffee?",
    "What are the benefits of reading books?",
    "Explain what the internet is to a child.",
    "How can I reduce stress after a long day?",
    "Describe how rain forms in the clouds.",
    "What is the best way to learn to cook?",
)
N_TRAIN = 30
TRAIN_PROMPTS: tuple[str, ...] = BUILTIN_PROMPTS[:N_TRAIN]
EVAL_PROMPTS: tuple[str, ...] = BUILTIN_PROMPTS[N_TRAIN:]


def _ultrafeedback(split: str) -> list[str] | None:
    """UltraFeedback binarized prompts, or None when ``datasets`` is missing or unreachable."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return None
    try:
        import datasets  # noqa: PLC0415
    except ImportError:
        return None
    try:
        ds = datasets.load_dataset("HuggingFaceH4/ultrafeedback_binarized", split=split)
    except Exception as exc:  # network, auth, missing cache: fall back
        warnings.warn(
            f"UltraFeedback unreachable ({type(exc).__name__}); using built-in prompts",
            stacklevel=3,
        )
        return None
    return [str(p) for p in ds["prompt"][:100_000]]


def load_prompts(source: str, split: str = "train") -> tuple[list[str], str]:
    """Prompts for ``split`` (``train``: UltraFeedback ``train_prefs``; ``eval``: ``test_prefs``;
    at most 100 000) and the name of the source used. ``source``: ``auto``, ``builtin`` or
    ``ultrafeedback``; UltraFeedback falls back to the built-in prompts when it cannot be loaded
    (with a warning when the download fails)."""
    if source in ("auto", "ultrafeedback"):
        hf_split = "train_prefs" if split == "train" else "test_prefs"
        got = _ultrafeedback(hf_split)
        if got:
            return got, "ultrafeedback"
    return list(TRAIN_PROMPTS if split == "train" else EVAL_PROMPTS), "builtin"
