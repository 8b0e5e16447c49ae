"""Shared fixtures of the LLM track's tests: the tiny protocol with a LoRA update far from zero,
checks of one-line CLI errors, and a Ctrl-C at a given protocol step."""

from contextlib import contextmanager

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


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(prog, *words)``: what the test's command wrote to stderr is one error line
    of ``python -m prog`` (no traceback) naming every word; returns that line."""

    def check(prog: str, *words: str) -> str:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"python -m {prog}: error: "), err
        for w in words:
            assert w in err, (w, err)
        return err

    return check


@pytest.fixture
def refuse(monkeypatch):
    """``refuse(target)``: a call of ``target`` (a ``monkeypatch.setattr`` path) fails the test,
    for commands that must stop before that work."""

    def patch(target: str) -> None:
        def refused(*args, **kwargs):
            raise AssertionError(f"{target} was called despite a bad argument")

        monkeypatch.setattr(target, refused)

    return patch


@contextmanager
def _interrupted_at(step: int):
    """``Protocol.step`` raises KeyboardInterrupt (a Ctrl-C) at ``step`` inside the block."""
    from llm_track.loop import Protocol

    original = Protocol.step

    def interrupted(self, t):
        if t == step:
            raise KeyboardInterrupt
        return original(self, t)

    Protocol.step = interrupted
    try:
        yield
    finally:
        Protocol.step = original


@pytest.fixture
def interrupted_at():
    """The context manager ``interrupted_at(step)`` (see ``_interrupted_at``)."""
    return _interrupted_at
