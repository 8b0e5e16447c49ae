"""Shared fixtures of the LLM track's tests: the tiny protocol with a LoRA update far from zero."""

import pytest

#: candidates per prompt in the tiny protocols of these tests
N_CANDIDATES = 4


def _tiny_protocol(seed: int = 0, **overrides):
    """Tiny fpo-relaxed protocol whose LoRA ``B`` matrices are random (peft starts them at zero,
    which would make the adapter a no-op)."""
    import torch

    from llm_track import loop as L
    from llm_track.config import preset_config
    from llm_track.models import load_models
    from llm_track.prompts import TRAIN_PROMPTS

    cfg = preset_config(
        "tiny", agent="fpo-relaxed", candidates=N_CANDIDATES, max_new_tokens=12, **overrides
    )
    models = load_models(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return L.Protocol(cfg, models, list(TRAIN_PROMPTS))


@pytest.fixture(scope="session")
def tiny_protocol():
    """The factory ``tiny_protocol(seed=0, **config_overrides) -> Protocol``."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return _tiny_protocol


@pytest.fixture(scope="module")
def proto(tiny_protocol):
    return tiny_protocol()
