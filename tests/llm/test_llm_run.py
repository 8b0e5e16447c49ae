"""The LLM protocol on the tiny preset: learning happens, files are written, resume is exact,
and CLI errors are one clear line."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from baselines.results import read_csv, read_json  # noqa: E402
from llm_track.config import preset_config  # noqa: E402
from llm_track.models import load_base_models, load_models  # noqa: E402
from llm_track.run import main, run_protocol  # noqa: E402

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(folder):
    return torch.load(os.path.join(folder, "checkpoint", "state.pt"), weights_only=False)


@pytest.mark.parametrize("agent", ["naive", "fpo", "fpo-relaxed"])
def test_tiny_run_learns_and_writes(tmp_path, agent):
    cfg = preset_config("tiny", agent=agent, steps=5, candidates=4)
    folder = run_protocol(cfg, str(tmp_path), progress=False)
    assert folder == os.path.join(str(tmp_path), agent, "seed_0")

    rows = read_csv(os.path.join(folder, "metrics.csv"))
    assert [r["step"] for r in rows] == list(range(5))
    for key in ("proxy_winner", "utility_winner", "utility_ref", "penalty_winner", "step_s"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert all(-15.0 <= r["utility_winner"] <= 5.0 for r in rows)
    # one rule: U of winner and reference for the label (2), relaxed also reads every candidate
    queries = 4 + 1 if agent == "fpo-relaxed" else 2
    assert rows[-1]["oracle_queries"] == 5 * queries
    if agent == "naive":
        assert all(r["penalty_winner"] == 0.0 for r in rows)
    else:
        assert any(r["penalty_winner"] != 0.0 for r in rows)
    assert read_json(os.path.join(folder, "config.json"))["config"]["agent"] == agent
    assert read_json(os.path.join(folder, "summary.json"))["steps_done"] == 5

    # LoRA and RM-head weights moved away from their (seeded) initial values.
    init = load_models(cfg)
    state = _state(folder)
    init_lora = {n: p for n, p in init.policy.named_parameters() if p.requires_grad}
    assert set(state["lora"]) == set(init_lora)
    assert any(not torch.equal(state["lora"][n], init_lora[n]) for n in init_lora)
    # (the BT loss sees r_w - r_ref, so the head's bias gets no gradient: only the weight moves)
    assert not torch.equal(state["rm_head"]["weight"], init.rm_head.weight)

    # The adapter loads with peft and carries the trained weights.
    base, *_ = load_base_models(cfg)
    loaded = peft.PeftModel.from_pretrained(base, os.path.join(folder, "checkpoint", "adapter"))
    got = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert len(got) == len(state["lora"]) > 0
    for n, v in state["lora"].items():
        assert torch.equal(got[n].detach(), v), n


def _comparable(rows):
    """The rows without their timings (seconds per part of a step, memory)."""
    timings = ("gen_s", "score_s", "update_s", "step_s", "rss_mb")
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


def test_resume_matches_uninterrupted(tmp_path, interrupted_at):
    cfg = preset_config("tiny", agent="fpo-relaxed", steps=5, candidates=4, grad_accum=2, seed=3)
    full = run_protocol(cfg, str(tmp_path / "full"), progress=False)

    # Interrupted run: checkpoint after 3 steps, crash during step index 4 (after 4 rows).
    with interrupted_at(4), pytest.raises(KeyboardInterrupt):
        run_protocol(cfg, str(tmp_path / "cut"), checkpoint_every=3, progress=False)
    cut = os.path.join(str(tmp_path / "cut"), "fpo-relaxed", "seed_3")
    assert len(read_csv(os.path.join(cut, "metrics.csv"))) == 4
    assert _state(cut)["step"] == 3
    assert _state(cut)["lora_grad"], "a pending accumulated gradient must be checkpointed"

    resumed = run_protocol(
        cfg, str(tmp_path / "cut"), resume=True, checkpoint_every=3, progress=False
    )
    a = read_csv(os.path.join(full, "metrics.csv"))
    b = read_csv(os.path.join(resumed, "metrics.csv"))
    assert _comparable(a) == _comparable(b)
    sa, sb = _state(full), _state(resumed)
    for part in ("lora", "rm_head"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    assert sa["step"] == sb["step"] == 5


def test_bad_arguments_are_one_line(one_line_error):
    assert main(["--agent", "bogus"]) == 2
    one_line_error("llm_track.run", "--agent")
    assert main(["--agent", "naive", "--preset", "huge"]) == 2
    one_line_error("llm_track.run", "--preset", "tiny")
    assert main(["--agent", "naive", "--preset", "tiny", "--steps", "-1"]) == 2
    one_line_error("llm_track.run", "--steps")


@pytest.mark.parametrize("case", ["missing-path", "paper-offline", "paper-no-data"])
def test_missing_model_is_one_line(tmp_path, case):
    """Offline, a model or data set that is not there is one line naming its option (never a
    fallback to other data); the prompts are loaded (and refused) before any model."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty cache
    missing = str(tmp_path / "no_such_model")
    args = {
        "missing-path": ["--preset", "tiny", "--reward-model", missing],
        "paper-offline": ["--preset", "paper", "--prompts", "builtin"],
        "paper-no-data": ["--preset", "paper"],
    }[case]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_track.run",
            "--agent",
            "fpo",
            *args,
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "missing-path":
        assert "--reward-model" in lines[0] and "no_such_model" in lines[0]
    elif case == "paper-offline":
        assert "--policy" in lines[0] and "Llama-3.2-1B-Instruct" in lines[0]
    else:
        assert "--prompts ultrafeedback" in lines[0] and "--prompts builtin" in lines[0]
    # no run files (the folder, checked writable and locked before the models load, may stay)
    assert {f for _, _, fs in os.walk(tmp_path / "out") for f in fs} <= {".lock"}


def test_paper_preset_loads_local_folders(tmp_path):
    """Models given as local folders load through transformers' Auto classes."""
    from llm_track.models import build_tiny_models

    base, rm, tok = build_tiny_models(preset_config("tiny"))
    base.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    cfg = preset_config(
        "paper",
        agent="fpo",
        policy=str(tmp_path / "policy"),
        reward_model=str(tmp_path / "rm"),
        steps=2,
        candidates=2,
        grad_accum=1,
        prompts="builtin",
        device="cpu",
        dtype="float32",
    )
    folder = run_protocol(cfg, str(tmp_path / "out"), progress=False)
    rows = read_csv(os.path.join(folder, "metrics.csv"))
    assert len(rows) == 2 and all(r["winner_tokens"] >= cfg.min_new_tokens for r in rows)


def test_tiny_models_rebuild_identically():
    """The tiny preset's models are a function of model_seed alone (no cache involved)."""
    from llm_track.models import _tiny_state

    cached = _tiny_state(0, 64, 2)
    fresh = _tiny_state.__wrapped__(0, 64, 2)
    for a, b in ((cached[1], fresh[1]), (cached[3], fresh[3])):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    other = _tiny_state.__wrapped__(1, 64, 2)
    assert not torch.equal(
        cached[1]["model.embed_tokens.weight"], other[1]["model.embed_tokens.weight"]
    )
