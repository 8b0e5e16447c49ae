"""Rendering: ``render_mode="rgb_array"`` / ``"human"`` for every registered env (Gymnasium's
conventions), frames that follow the retrained reward model, and RecordVideo."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs
from rlhf_envs import render

ENV_IDS = list(rlhf_envs.ENV_IDS)


def _finish_round(env, seed: int = 0) -> None:
    """Submit responses (from the env's seeded action space) until the RM has retrained once."""
    env.action_space.seed(seed)
    start = env.unwrapped.core.round
    while env.unwrapped.core.round == start:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rgb_array_frame_follows_the_retrained_rm(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    assert env.metadata["render_fps"] > 0
    assert {"human", "rgb_array"} <= set(env.metadata["render_modes"])
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape[0] >= 300 and first.shape[1] >= 900
    assert first.shape[0] % 2 == 0 and first.shape[1] % 2 == 0  # video encoders need even sizes
    assert first.std() > 10  # a picture, not a blank canvas
    frames = [first]
    for _ in range(2):
        _finish_round(env)
        frames.append(env.render())
    assert all(f.shape == first.shape for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[1], frames[2])
    env.close()


@pytest.mark.parametrize("env_id", rlhf_envs.BLIND_SPOT_ENV_IDS)
def test_vector_env_maps_show_the_retrained_rm_and_a_fixed_truth(env_id):
    env = gym.make(env_id, render_mode="rgb_array").unwrapped
    env.reset(seed=0)
    drift = np.zeros(env.config.dims, dtype=np.float32)
    drift[-1] = 1.5  # off the target: the RM learns there, the truth stays where it was
    for _ in range(env.config.samples_per_round):
        env.step(drift)
    before = render.vector_plane(env)
    for _ in range(3 * env.config.samples_per_round):
        env.step(drift)
    after = render.vector_plane(env)
    assert np.array_equal(before["U"], after["U"])
    assert not np.allclose(before["r"], after["r"])
    # the maps are the RM's scores: the grid point nearest the latest response has its score
    a_pts, b_pts = after["points"]
    assert b_pts[-1] == pytest.approx(1.5)
    i = np.abs(after["b"] - b_pts[-1]).argmin()
    j = np.abs(after["a"] - a_pts[-1]).argmin()
    near = after["a"][j] * env.core.y_star.numpy() / np.linalg.norm(env.core.y_star.numpy())
    near[-1] += after["b"][i]
    assert after["r"][i, j] == pytest.approx(render.rm_scores(env, near[None])[0], rel=1e-9)


def test_contextual_maps_per_cluster():
    env = gym.make("RLHFContextual-v0", render_mode="rgb_array").unwrapped
    env.reset(seed=0)
    planes = [render.cluster_plane(env, k) for k in range(env.config.n_clusters)]
    assert not np.allclose(planes[0]["r"], planes[1]["r"])  # each cluster its own prompt
    _finish_round(env)
    assert not np.allclose(render.cluster_plane(env, 0)["r"], planes[0]["r"])


def test_token_frame_scores_the_padded_answer_with_the_current_rm():
    env = gym.make("RLHFVerbosity-v0", render_mode="ansi").unwrapped
    env.reset(seed=0)
    env.step(1)
    assert env.render() == "ANSWER"  # ansi mode is unchanged
    env = gym.make("RLHFVerbosity-v0", render_mode="rgb_array").unwrapped
    env.reset(seed=0)
    for tok in (1, 2, 2, 0):
        env.step(tok)
    trail = render._trail(env)
    assert trail.items[-1][4] == [1, 2, 2, 0]
    assert trail.items[-1][2] == pytest.approx(float(env.core.utility(env.last_response)[0]))


def test_gymnasium_check_env_with_rendering():
    from gymnasium.utils.env_checker import check_env

    for env_id in ENV_IDS:
        env = gym.make(env_id, render_mode="rgb_array")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env.unwrapped)  # render checks included


def test_bad_render_mode_is_one_clear_error():
    for env_id in ENV_IDS:
        with pytest.raises(ValueError, match="render_mode must be None or one of"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gym.make's own warning about the mode
                gym.make(env_id, render_mode="rgb")
    env = gym.make("RLHFBlindSpot-v0")
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert env.unwrapped.render() is None


def test_a_new_experiment_starts_a_new_trail():
    env = gym.make("RLHFBlindSpot-v0", render_mode="rgb_array").unwrapped
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(env.config.dims, dtype=np.float32))
    assert len(render._trail(env).items) == 3
    env.reset()  # same experiment: the RM is kept, so is the trail
    assert len(render._trail(env).items) == 3
    env.reset(seed=1)
    assert len(render._trail(env).items) == 0


def test_plain_use_does_not_import_matplotlib():
    code = (
        "import sys, numpy as np, gymnasium as gym, rlhf_envs\n"
        "for i in rlhf_envs.ENV_IDS:\n"
        "    e = gym.make(i); e.reset(seed=0); e.step(e.action_space.sample())\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_human_mode_headless_draws_off_screen(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    env = gym.make("RLHFBlindSpot-v0", render_mode="human")
    env.reset(seed=0)
    env.step(env.action_space.sample())  # draws the frame, as human mode does after a step
    fig = env.unwrapped._render_figure
    assert len(fig.axes) >= 3
    assert env.render() is None
    env.close()
    assert "_render_figure" not in env.unwrapped.__dict__


def test_record_video(tmp_path):
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    env = gym.make("RLHFBlindSpot-v0", render_mode="rgb_array")
    env = RecordVideo(env, str(tmp_path / "videos"), step_trigger=lambda s: s == 0, video_length=6)
    env.reset(seed=0)
    for _ in range(8):
        _, _, term, _, _ = env.step(env.action_space.sample() * 0.1)
        if term:
            env.reset()
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_animate_writes_a_gif_of_both_agents(tmp_path, capsys):
    from PIL import Image

    from baselines import animate

    out = tmp_path / "a.gif"
    assert animate.main(["--rounds", "4", "--every", "2", "--width", "240", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.n_frames == 3  # the start, round 2, round 4
        assert im.width == 240 and im.height > 2 * 240 * 360 / 960  # two rows of frames
    for argv, word in (
        (["--env", "RLHFVerbosity-v0"], "--env"),
        (["--agents", "nope"], "--agents"),
        (["--every", "0"], "--every"),
        (["--out", str(tmp_path / "a.mp4")], "--out"),
    ):
        assert animate.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err
