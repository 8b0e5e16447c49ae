"""``baselines.tracking``: per-round metrics read back from TensorBoard event files; W&B calls;
one-line errors when a requested backend is missing."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from baselines import tracking


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_white_box_history_reads_back_from_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    import gymnasium as gym
    import torch

    import rlhf_envs  # noqa: F401
    from agents import registry

    torch.set_num_threads(1)
    env = gym.make_vec("RLHFBlindSpot-v0", num_envs=2, vectorization_mode="vector_entry_point")
    env.reset(seed=[0, 1])
    cls = registry.get("naive")
    history = cls(cls.config_cls(), seed=[0, 1]).learn(env, 5)
    for i in range(2):
        name = f"RLHFBlindSpot-v0/naive/seed_{i}"
        with tracking.open_trackers(tmp_path / "tb", None, name, {"seed": i}) as tracker:
            tracker.log_history(history, column=i)
    for i in range(2):
        got = _scalars(tmp_path / "tb" / "RLHFBlindSpot-v0" / "naive" / f"seed_{i}")
        assert set(history) <= set(got)
        for key in ("true_utility", "proxy_reward", "gap", "labels_used"):
            assert [e.step for e in got[key]] == [1, 2, 3, 4, 5]
            assert np.allclose([e.value for e in got[key]], history[key][:, i], rtol=1e-6)
    assert got["labels_used"][-1].value == 5


def test_log_per_round_skips_what_is_not_a_finite_number(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = tracking.open_trackers(tensorboard_dir=tmp_path, run_name="r", config={"a": 1})
    assert tracker.writer is not None
    tracker.log(1, {"x": 1.5, "n": np.int64(3), "bad": float("nan"), "text": "hi"})
    tracker.log(2, {"x": np.array([2.5])})
    tracker.close()
    got = _scalars(tmp_path / "r")
    assert sorted(got) == ["n", "x"]
    assert [(e.step, e.value) for e in got["x"]] == [(1, 1.5), (2, 2.5)]


def test_no_backend_is_a_tracker_that_does_nothing():
    tracker = tracking.open_trackers()
    assert tracker.writer is None and tracker.wandb_run is None
    tracker.log(1, {"x": 1.0})
    tracker.close()


def test_wandb_run_gets_config_and_steps(monkeypatch, tmp_path):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with tracking.open_trackers(None, "proj", "env/agent/seed_0", {"path": tmp_path}) as tracker:
        tracker.log_history({"true_utility": np.array([[1.0, 9.0], [2.0, 9.0]])}, column=0)
    init_kwargs = calls[0][1]
    assert init_kwargs["project"] == "proj" and init_kwargs["name"] == "env/agent/seed_0"
    assert init_kwargs["config"] == {"path": str(tmp_path)}
    assert calls[1:] == [
        ("log", 1, {"true_utility": 1.0}),
        ("log", 2, {"true_utility": 2.0}),
        ("finish",),
    ]


def test_wandb_offline_for_real(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with tracking.open_trackers(None, "rlhf-test", "r", {"a": 1}) as tracker:
        tracker.log(1, {"x": 1.0})
    assert list(tmp_path.rglob("*.wandb"))


@pytest.mark.parametrize(
    "module, kwargs, flag",
    [
        ("wandb", {"wandb_project": "p"}, "--wandb"),
        ("torch.utils.tensorboard", {"tensorboard_dir": "tb"}, "--tensorboard"),
    ],
)
def test_missing_backend_is_a_one_line_error(monkeypatch, tmp_path, module, kwargs, flag):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tracking.TrackerError) as err:
        tracking.open_trackers(**kwargs)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(flag) and "pip install" in msg
    assert not (tmp_path / "tb").exists()


def test_wandb_that_cannot_start_is_a_one_line_error(monkeypatch):
    def init(**kwargs):
        raise RuntimeError("api key not configured\nrun wandb login")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with pytest.raises(tracking.TrackerError, match=r"^--wandb: cannot start a run: api key"):
        tracking.open_trackers(wandb_project="p")
