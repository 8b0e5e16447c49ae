"""Several agents on one batched env: each agent's numbers are the ones it gets alone."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import registry
from agents.follower import DECLARED, Follower, UndeclaredRead, answer, follower_state
from agents.whitebox import learn_together
from baselines import results, sweep
from baselines.execute import group_jobs, run_jobs
from baselines.plan import Job, load_defaults, plan

NEURAL = "RLHFNeuralBlindSpot-v0"
LINEAR = "RLHFBlindSpot-v0"
ROUNDS = {NEURAL: 12, LINEAR: 40}


def make_agent(env_id: str, name: str, seeds: list[int], **kw):
    cls = registry.get(name)
    d = load_defaults(env_id)
    cfg = {**d.get("agent", {}), **d.get("agents", {}).get(cls.name, {}), **kw}
    cfg["rounds"] = ROUNDS[env_id]
    return cls(cls.config_cls(**cfg), seed=seeds)


def vec_env(env_id: str, seeds: list[int], **kw):
    env = gym.make_vec(env_id, num_envs=len(seeds), vectorization_mode="vector_entry_point", **kw)
    env.reset(seed=seeds)
    return env


@pytest.mark.parametrize("env_id", [NEURAL, LINEAR])
def test_every_agent_batched_with_the_others_gets_its_numbers_alone(env_id):
    # every built-in agent, one of them twice with another setting (a tuning grid), seeds that
    # repeat across agents and sets of different sizes
    names = list(registry.names()) + ["kl"]
    extra = {len(names) - 1: {"kl_coef": 0.5}}
    seeds = [[i % 5, 7] if i % 3 else [i % 4] for i in range(len(names))]
    together = learn_together(
        [
            make_agent(env_id, n, s, **extra.get(i, {}))
            for i, (n, s) in enumerate(zip(names, seeds, strict=True))
        ],
        vec_env(env_id, [x for s in seeds for x in s]),
    )
    for i, (name, s) in enumerate(zip(names, seeds, strict=True)):
        alone = make_agent(env_id, name, s, **extra.get(i, {})).learn(vec_env(env_id, s))
        assert alone.keys() == together[i].keys()
        for key in alone:
            np.testing.assert_array_equal(together[i][key], alone[key], err_msg=f"{name} {key}")
    # what the agents declared is what they were charged for, each on its own experiments
    naive = names.index("naive")
    assert (together[naive]["oracle_queries"] == 0).all()
    assert (together[names.index("fpo-relaxed")]["oracle_queries"][-1] > 0).all()


def test_callbacks_get_each_agents_rows_and_policies_are_kept():
    rows = {0: [], 1: []}
    agents = [make_agent(NEURAL, "naive", [3]), make_agent(NEURAL, "fpo", [3, 4])]
    out = learn_together(agents, vec_env(NEURAL, [3, 3, 4]), 5, [rows[0].append, rows[1].append])
    assert len(rows[0]) == len(rows[1]) == 5
    assert rows[1][-1]["true_utility"].shape == (2,)
    np.testing.assert_array_equal(out[1]["true_utility"][-1], rows[1][-1]["true_utility"])
    assert agents[0].theta.shape == (1, 10) and agents[1].theta.shape == (2, 10)


def test_a_diverging_agent_stops_alone_and_the_others_go_on():
    wild = dict(policy_lr=1e9, grad_clip=None)
    seeds = [[0, 1], [2], [0, 3]]
    names = ["naive", "naive", "fpo"]
    stopped: dict = {}
    out = learn_together(
        [
            make_agent(NEURAL, n, s, **(wild if i == 1 else {}))
            for i, (n, s) in enumerate(zip(names, seeds, strict=True))
        ],
        vec_env(NEURAL, [x for s in seeds for x in s]),
        stopped=stopped,
    )
    assert list(stopped) == [1] and out[1] is None
    with pytest.raises(FloatingPointError) as alone:
        make_agent(NEURAL, "naive", [2], **wild).learn(vec_env(NEURAL, [2]))
    assert str(stopped[1]) == str(alone.value)
    for i in (0, 2):
        ref = make_agent(NEURAL, names[i], seeds[i]).learn(vec_env(NEURAL, seeds[i]))
        assert all(np.array_equal(out[i][k], ref[k]) for k in ref)
    with pytest.raises(FloatingPointError, match="diverged"):  # without the dict: raises
        learn_together(
            [make_agent(NEURAL, "naive", [0]), make_agent(NEURAL, "naive", [2], **wild)],
            vec_env(NEURAL, [0, 2]),
        )


def test_learn_together_refuses_mismatched_inputs():
    env = vec_env(NEURAL, [0, 1])
    with pytest.raises(ValueError, match="agents have 3 seeds, env has 2 experiments"):
        learn_together([make_agent(NEURAL, "naive", [0]), make_agent(NEURAL, "fpo", [1, 2])], env)
    with pytest.raises(ValueError, match="2 callbacks for 1 agents"):
        learn_together([make_agent(NEURAL, "naive", [0, 1])], env, 2, [None, None])
    with pytest.raises(ValueError, match="at least one agent"):
        learn_together([], env)
    single = gym.make(NEURAL)
    single.reset(seed=0)
    with pytest.raises(ValueError, match="vector env"):
        learn_together([make_agent(NEURAL, "naive", [0]), make_agent(NEURAL, "fpo", [0])], single)


def test_follower_state_cuts_the_follower_to_the_experiments_rows():
    env = vec_env(NEURAL, [0, 1, 2, 3])
    core = env.unwrapped.core
    reads = ("current_rm", "rm_buffer")
    rows = slice(1, 3)
    for _ in range(5):  # one round: the env retrains (its params now carry a flat vector)
        env.step(np.ones((4, 10)))
    state = follower_state(core, rows, reads, True)
    part = Follower(reads, state)
    assert part.S == 2 and part.seeds == [1, 2]
    for k in core.params:
        assert torch.equal(part.params[k], core.params[k][1:3])
    assert torch.equal(part.params.flat, core.params.flat[1:3])
    for k, v in core.opt_state.items():
        assert torch.equal(part.opt_state[k], v if v.dim() == 0 else v[1:3]), k
    assert part.buffer_len == core.buffer_len and part.buffer_pos == core.buffer_pos
    assert torch.equal(part.training_batch()[0], core.training_batch()[0][1:3])
    assert torch.equal(part.training_batch()[1], core.training_batch()[1][1:3])
    y = torch.randn(2, 1, 10, dtype=torch.float64)
    assert torch.equal(part.score(y), core.score(torch.cat([y[:1], y, y[:1]]))[1:3])
    # whatever crosses with one row per experiment comes cut to the rows
    for name in {n for names in DECLARED.values() for n in names} | {"references"}:
        whole = getattr(core, name)
        if isinstance(whole, torch.Tensor) and whole.dim() and whole.shape[0] == 4:
            assert torch.equal(getattr(part, name), whole[1:3]), name
    assert part.config.dims == 10
    # copies: the env's later rounds do not reach the agent's view until it is refreshed
    before = part.params["skip"].clone() if "skip" in part.params else part.params.flat.clone()
    for _ in range(5):
        env.step(np.full((4, 10), 2.0))
    now = part.params["skip"] if "skip" in part.params else part.params.flat
    assert torch.equal(now, before)
    part.update(follower_state(core, rows, reads, False))
    assert torch.equal(part.params.flat, core.params.flat[1:3])


def test_follower_refuses_what_its_declaration_does_not_bring():
    env = vec_env(NEURAL, [0, 1])
    core = env.unwrapped.core
    view = Follower(("current_rm",), follower_state(core, slice(0, 2), ("current_rm",), True))
    with pytest.raises(UndeclaredRead, match="'rm_buffer'"):
        _ = view.buffer_y
    bare = Follower((), follower_state(core, slice(0, 2), (), True))
    with pytest.raises(UndeclaredRead, match="'current_rm' or 'initial_rm'"):
        _ = bare.params
    for truth in ("utility", "labeler_target", "y_star", "queries"):
        with pytest.raises(AttributeError):
            getattr(view, truth)
    assert not {"signal_dims", "target_value", "utility_width", "label_noise"} & set(
        vars(view.config)
    )


def test_answer_charges_its_experiments_only_and_checks_shapes_and_declarations():
    env = vec_env(NEURAL, [0, 1, 2])
    core = env.unwrapped.core
    reads = ("labeler_values", "truth_grads")

    def ask(kind, ys):
        return answer(core, slice(2, 3), reads, kind, ys, env.unwrapped.ys_error)

    y = torch.randn(1, 4, 10, dtype=torch.float64)
    torch.testing.assert_close(ask("labeler_values", y), core.labeler_target(y), rtol=0, atol=0)
    u, g = ask("truth_grads", y)
    assert torch.equal(u, core.utility(y)) and torch.equal(g, core.utility_and_grad(y)[1])
    counts = {k: v.tolist() for k, v in core.counters().items() if k.endswith("_queries")}
    assert counts == {
        "oracle_queries": [0, 0, 4],
        "oracle_grad_queries": [0, 0, 4],
        "labeler_value_queries": [0, 0, 4],
        "labeler_grad_queries": [0, 0, 0],
        "truth_value_queries": [0, 0, 0],
        "truth_grad_queries": [0, 0, 4],
    }
    with pytest.raises(ValueError, match=r"ys must have shape \(1, \.\.\., 10\)"):
        ask("truth_grads", torch.zeros(3, 1, 10))
    with pytest.raises(UndeclaredRead, match="'truth_values' in the agent's reads"):
        ask("truth_values", y)
    with pytest.raises(ValueError, match="unknown query"):
        ask("utility", y)
    assert core.counters()["oracle_queries"].tolist() == [0, 0, 4]  # refused: not charged


def job(agent: str, run_name: str, seeds, key: str = "a", optimizer: str = "whitebox") -> Job:
    return Job(
        NEURAL,
        agent,
        list(seeds),
        10,
        {"label_noise": key},
        {},
        "out",
        run_name=run_name,
        policy_optimizer=optimizer,
    )


def test_group_jobs_shares_programs_by_env_settings_and_splits_for_workers():
    jobs = [job(a, a, s) for a in ("naive", "fpo-exact", "fpo") for s in ([0, 2], [1, 3])]
    jobs += [job("naive", "naive", [0], key="b"), job("naive", "naive+ppo", [0], "a", "ppo")]
    units = group_jobs(jobs, 2)
    assert sorted(len(u) for u in units) == [1, 1, 3, 3]
    for unit in units:
        names = [j.run_name for j in unit]
        assert len(set(names)) == len(names)  # a run folder's seed chunks stay apart
        assert len({json.dumps(j.env_kwargs) for j in unit}) == 1
    assert [len(u) for u in group_jobs(jobs, 1)][:1] == [3]  # longest first
    assert all(u for u in group_jobs(jobs, 16))


SWEEP = """
envs: [RLHFNeuralBlindSpot-v0]
agents:
  - naive
  - fpo-relaxed
  - {agent: naive, tag: wild, agent_kwargs: {policy_lr: 1.0e+9, grad_clip: null}}
  - {agent: kl, tag: two, agent_kwargs: {kl_coef: 0.5}}
seeds: 0-2
rounds: 8
"""


def sweep_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("metrics.csv"))}


def test_sweep_batched_agents_write_the_files_of_separate_programs(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SWEEP)
    common = [str(spec), "--no-progress", "--quiet", "--jobs", "1"]
    # the wild naive diverges: it stops (as alone) while the others go on
    assert sweep.main([*common, "--out", str(tmp_path / "a")]) == 1
    assert sweep.main([*common, "--out", str(tmp_path / "b"), "--no-batch-agents"]) == 1
    a, b = sweep_files(tmp_path / "a"), sweep_files(tmp_path / "b")
    assert a == b and len(a) == 9
    wild = results.run_dir(tmp_path / "a", NEURAL, "naive@wild", 0) / "summary.json"
    assert json.loads(wild.read_text())["status"] == "stopped"
    # without the diverging agent the program is shared, and says so in each run's config
    spec.write_text(SWEEP.replace("  - {agent: naive, tag: wild", "  # "))
    assert sweep.main([*common, "--out", str(tmp_path / "c")]) == 0
    assert sweep_files(tmp_path / "c") == a
    cfg = json.loads(
        (results.run_dir(tmp_path / "c", NEURAL, "kl@two", 1) / "config.json").read_text()
    )
    assert sorted(cfg["batched_with_agents"]) == ["fpo-relaxed", "kl@two", "naive"]


@pytest.mark.parametrize("together", [True, False])
def test_the_progress_counts_every_round_of_a_stopped_agent(tmp_path, together):
    jobs = []
    for kwargs, tag in (({}, ""), ({"policy_lr": 1.0e9, "grad_clip": None}, "wild")):
        jobs += plan(NEURAL, "naive", [0, 1], 8, {}, kwargs, tmp_path, tag=tag)[0]
    units = group_jobs(jobs, 1) if together else [[j] for j in jobs]
    assert len(units) == (1 if together else 2)
    counted: list[int] = []
    outcomes = [o for unit in units for o in run_jobs(unit, progress=counted.append)]
    assert sorted(o["status"] for o in outcomes) == ["ok", "stopped"]
    assert sum(counted) == 8 * 4  # the wild agent's unrun rounds count as done


def test_the_progress_counts_each_round_once_when_a_shared_program_fails_to_write(
    tmp_path, monkeypatch
):
    jobs = []
    for kwargs, tag in (({}, ""), ({"policy_lr": 0.01}, "slow")):
        jobs += plan(NEURAL, "naive", [0, 1], 60, {}, kwargs, tmp_path, tag=tag)[0]
    (unit,) = group_jobs(jobs, 1)
    plain = results.write_run
    failed: list[str] = []

    def write_run(job, seed, *args, **kwargs):
        if kwargs.get("shared") and job.run_name == "naive@slow" and not failed:
            failed.append(job.run_name)  # the first write of the shared program fails
            raise OSError("disk full")
        return plain(job, seed, *args, **kwargs)

    monkeypatch.setattr(results, "write_run", write_run)
    counted: list[int] = []
    outcomes = run_jobs(unit, progress=counted.append)
    assert failed and [o["status"] for o in outcomes] == ["ok", "ok"]
    assert sum(counted) == 60 * 4  # the job rerun alone counts its rounds once, not twice
