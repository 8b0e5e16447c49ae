"""The paper preset's protocol choices, bf16 training, local data without network, prompts in the
policy's format, end-of-turn tokens, the random-winner control and the dropout-asymmetry flag."""

import importlib.util
import json
import os
import socket
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

from baselines.results import read_csv, read_json  # noqa: E402
from llm_track import decoding as D  # noqa: E402
from llm_track import evaluate  # noqa: E402
from llm_track import loop as L  # noqa: E402
from llm_track.config import LLMConfig, LLMTrackError, preset_config  # noqa: E402
from llm_track.models import _word_level, build_tiny_models, load_models  # noqa: E402
from llm_track.prompts import TRAIN_PROMPTS, load_prompts, prompts_digest  # noqa: E402
from llm_track.run import run_protocol  # noqa: E402

torch.set_num_threads(1)

# A Llama-3-like chat template: a system block with the date (today's unless date_string is
# given), the user turn, the assistant header.
TEMPLATE = (
    "{{ bos_token }}{%- if not date_string is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "system header date {{ date_string }} end"
    "{% for m in messages %} user header {{ m['content'] }} end{% endfor %}"
    "{% if add_generation_prompt %} assistant header{% endif %}"
)


def _dated_tokenizer():
    words = "<pad> <s> </s> <unk> [CLS] [SEP] system header date end user assistant 26 27 jul 2024"
    vocab = {w: i for i, w in enumerate(words.split())}
    for w in " ".join(TRAIN_PROMPTS).lower().replace("?", " ").replace(".", " ").split():
        vocab.setdefault(w, len(vocab))
    tok = _word_level(vocab)
    tok.chat_template = TEMPLATE
    return tok


# --------------------------------------------------------------------------- presets
def test_paper_preset_follows_the_paper_and_tiny_documents_its_changes(monkeypatch):
    cfg = preset_config("paper")
    assert (cfg.rm_input, cfg.rm_max_tokens) == ("answer", 128)
    assert (cfg.rm_grad_accum, cfg.rm_weight_decay, cfg.grad_accum) == (4, 0.01, 4)
    assert (cfg.sft_on, cfg.skip_empty, cfg.prompt_order) == ("sequence", True, "in-order")
    assert (cfg.prompts, cfg.rm_dropout_asymmetry) == ("ultrafeedback", False)
    assert (cfg.device, cfg.dtype) == ("cpu", "float32")  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (preset_config("paper").device, preset_config("paper").dtype) == ("cuda", "bfloat16")
    assert preset_config("paper", dtype="float16").dtype == "float16"
    tiny = preset_config("tiny")
    assert (tiny.device, tiny.rm_input, tiny.prompt_order) == (
        "cpu",
        "prompt+answer",
        "permutation",
    )
    with pytest.raises(LLMTrackError, match="--rm-input"):
        LLMConfig(rm_input="both", device="cpu")
    with pytest.raises(LLMTrackError, match="--dtype"):
        LLMConfig(dtype="float8", device="cpu")
    # config.json reads back as written
    assert LLMConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny


# --------------------------------------------------------------------------- bf16
def _head_change(dtype: str):
    cfg = preset_config(
        "tiny", agent="naive", dtype=dtype, rm_lr=5e-5, steps=3, candidates=2, max_new_tokens=6
    )
    proto = L.Protocol(cfg, load_models(cfg), list(TRAIN_PROMPTS))
    w0 = proto.head.weight.detach().clone()
    for t in range(3):
        proto.step(t)
    return proto, (proto.head.weight.detach() - w0).abs()


def test_bf16_head_moves_like_float32():
    proto, d16 = _head_change("bfloat16")
    _, d32 = _head_change("float32")
    assert proto.head.weight.dtype == torch.float32
    assert next(proto.m.reward_model.parameters()).dtype == torch.bfloat16  # the backbone
    for opt in (proto.rm_opt, proto.policy_opt):
        states = [v for st in opt.state.values() for v in st.values() if v.dim() > 0]
        assert states and all(v.dtype == torch.float32 for v in states)
    assert all(p.dtype == torch.float32 for p in proto.m.policy.parameters() if p.requires_grad)
    assert (d16 > 0).float().mean() > 0.95  # (a bf16 head kept 21-56 % of its weights unmoved)
    assert 0.5 < float(d16.mean() / d32.mean()) < 2.0
    # the same lr-5e-5 Adam step on a bf16 copy of the head rounds away (what the fix avoids)
    head = torch.nn.Linear(64, 1).to(torch.bfloat16)
    w0 = head.weight.detach().clone()
    opt = torch.optim.Adam(head.parameters(), lr=5e-5)
    head(torch.randn(2, 64, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    assert (head.weight.detach() != w0).float().mean() < 0.5


@pytest.fixture
def blocked_network(monkeypatch):
    """Every socket connection raises (and is recorded); hub offline variables unset."""
    calls = []

    def refuse(self, address):
        calls.append(address)
        raise OSError(f"network blocked in this test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return calls


# --------------------------------------------------------------------------- local data
def _write_prompt_files(tmp_path, prompts, column="prompt"):
    ds = datasets.Dataset.from_dict({column: prompts, "other": list(range(len(prompts)))})
    files = {
        "jsonl": tmp_path / "p.jsonl",
        "json": tmp_path / "p.json",
        "parquet": tmp_path / "p.parquet",
        "csv": tmp_path / "p.csv",
        "folder": tmp_path / "p_dir",
        "dict": tmp_path / "p_dict",
    }
    ds.to_json(str(files["jsonl"]))
    files["json"].write_text(json.dumps([{column: p} for p in prompts]))
    ds.to_parquet(str(files["parquet"]))
    ds.to_csv(str(files["csv"]), index=False)
    ds.save_to_disk(str(files["folder"]))
    datasets.DatasetDict({"test_prefs": ds.select([0]), "train_prefs": ds}).save_to_disk(
        str(files["dict"])
    )
    return files


def test_prompt_files_load_the_same_prompts_offline_or_not(tmp_path, monkeypatch):
    prompts = ["First prompt, with a comma.", "Second: a question?", 'Third "quoted"']
    files = _write_prompt_files(tmp_path, prompts, column="text")
    digest = prompts_digest(prompts)
    for path in files.values():
        got, source = load_prompts(str(path), "train", "text")
        assert got == prompts and prompts_digest(got) == digest, path
        assert os.path.abspath(str(path)) in source and "text" in source
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert load_prompts(str(files["jsonl"]), "train", "text")[0] == prompts
    assert load_prompts("builtin")[0] == list(TRAIN_PROMPTS)


@pytest.mark.parametrize(
    "case, words",
    [
        ("column", ["--prompts", "no column 'prompt'", "--prompt-column", "text"]),
        ("missing", ["--prompts", "no such file"]),
        ("suffix", ["--prompts", ".jsonl", "builtin", "ultrafeedback"]),
        ("no-datasets", ["datasets", "pip install"]),
        ("ultrafeedback-offline", ["--prompts ultrafeedback", "--prompts builtin"]),
        ("eval-split", ["--questions"]),
    ],
)
def test_unloadable_prompt_source_is_one_line_never_a_fallback(
    tmp_path, monkeypatch, blocked_network, case, words
):
    files = _write_prompt_files(tmp_path, ["a b", "c d"], column="text")
    args = {
        "column": (str(files["jsonl"]), "train", "prompt"),
        "missing": (str(tmp_path / "nothing.jsonl"), "train", "prompt"),
        "suffix": (str(tmp_path / "p.txt"), "train", "prompt"),
        "no-datasets": (str(files["jsonl"]), "train", "text"),
        "ultrafeedback-offline": ("ultrafeedback", "train", "prompt"),
        "eval-split": (str(files["jsonl"]), "eval", "text"),
    }[case]
    if case == "no-datasets":
        monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    if case == "ultrafeedback-offline":
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "c"))
    with pytest.raises(LLMTrackError) as exc:
        load_prompts(*args)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_paper_path_from_local_folders_never_touches_the_network(tmp_path, blocked_network):
    """Local model folders (Llama-like chat template), a local prompt file, the paper preset's
    protocol; run, export (lm-eval's way of loading it) and evaluate with a TruthfulQA-format
    file: no connection is attempted."""
    base, rm, _ = build_tiny_models(preset_config("tiny"))
    tok = _dated_tokenizer()
    base.resize_token_embeddings(len(tok))
    rm.resize_token_embeddings(len(tok))
    base.generation_config.eos_token_id = [2, tok.convert_tokens_to_ids("end")]
    for obj, d in ((base, "policy"), (tok, "policy"), (rm, "rm"), (tok, "rm")):
        obj.save_pretrained(tmp_path / d)
    files = _write_prompt_files(tmp_path, list(TRAIN_PROMPTS[:5]))
    questions = tmp_path / "truthfulqa.csv"
    datasets.Dataset.from_dict(
        {"question": list(TRAIN_PROMPTS[5:7]), "best_answer": ["x", "y"]}
    ).to_csv(str(questions), index=False)
    cfg = preset_config(
        "paper",
        agent="fpo-relaxed",
        policy=str(tmp_path / "policy"),
        reward_model=str(tmp_path / "rm"),
        prompts=str(files["parquet"]),
        steps=2,
        candidates=2,
        max_new_tokens=6,
        dtype="bfloat16",
    )
    folder = run_protocol(cfg, str(tmp_path / "out"), progress=False)
    rows = read_csv(os.path.join(folder, "metrics.csv"))
    assert [r["prompt_idx"] for r in rows] == [0, 1]  # the paper's order: first prompts in turn
    assert rows[-1]["oracle_queries"] == sum(3 - r["empty_candidates"] for r in rows)
    record = read_json(os.path.join(folder, "config.json"))
    assert record["prompts_sha256"] == prompts_digest(list(TRAIN_PROMPTS[:5]))
    assert str(files["parquet"]) in record["prompt_source"]
    assert record["config"]["chat_date"] == "26 Jul 2024"

    # the export loads the way lm-eval's HFLM loads pretrained=..., peft=...
    from transformers import AutoModelForCausalLM

    adapter = os.path.join(folder, "adapter")
    conf = read_json(os.path.join(adapter, "adapter_config.json"))
    assert conf["base_model_name_or_path"] == str(tmp_path / "policy")
    assert "peft=" + adapter in open(os.path.join(adapter, "lm_eval.sh")).read()
    model = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(conf["base_model_name_or_path"]), adapter
    )
    state = torch.load(os.path.join(folder, "checkpoint", "state.pt"), weights_only=True)
    got = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert set(got) == set(state["lora"])
    assert all(torch.equal(got[n].detach().float(), v.float()) for n, v in state["lora"].items())

    def run_evaluate():
        args = ([str(tmp_path / "out")], str(tmp_path / "LLM.md"))
        return evaluate.evaluate(*args, max_new=4, questions=str(questions))

    if importlib.util.find_spec("all_minilm_l6_v2") is None:  # no evaluation utility: refused
        with pytest.raises(LLMTrackError, match="llm-real"):
            run_evaluate()
        return
    res = run_evaluate()
    (ev,) = res["results"]["fpo-relaxed"].values()
    assert [r["prompt"] for r in ev["per_prompt"]] == list(TRAIN_PROMPTS[5:7])
    # the evaluation utility is MiniLM's question-answer relevance, not the training oracle
    assert all(-1 <= r["gold"] <= 1 and r["gold"] != r["utility"] for r in ev["per_prompt"])
    assert blocked_network == []


# --------------------------------------------------------------------------- prompt format
def test_truncation_cuts_the_users_text_and_the_date_is_fixed(monkeypatch):
    tok = _dated_tokenizer()
    long = " ".join(TRAIN_PROMPTS[:6])
    full = D.encode_prompt(tok, long, 10_000, "cpu", "26 Jul 2024").tolist()
    cut = D.encode_prompt(tok, long, 40, "cpu", "26 Jul 2024").tolist()
    head = tok("system header date 26 jul 2024 end user header", add_special_tokens=False)
    tail = tok("end assistant header", add_special_tokens=False)["input_ids"]
    assert len(full) > 40 >= len(cut)
    assert cut[0] == tok.bos_token_id and cut[1 : 1 + len(head["input_ids"])] == head["input_ids"]
    assert cut[-len(tail) :] == tail  # the assistant header survives
    user = tok(long, add_special_tokens=False)["input_ids"]
    kept = cut[1 + len(head["input_ids"]) : -len(tail)]
    assert kept and kept == user[: len(kept)]  # the start of the user's text, cut at the end
    with pytest.raises(LLMTrackError, match="--max-prompt-tokens 5"):
        D.encode_prompt(tok, long, 5, "cpu", "26 Jul 2024")
    # the date is the run's, not today's: another day gives the same ids
    other = D.encode_prompt(tok, long, 40, "cpu", "27 Jul 2024").tolist()
    assert other != cut and tok.convert_tokens_to_ids("27") in other
    today = D.encode_prompt(tok, long, 40, "cpu", None).tolist()
    assert tok.convert_tokens_to_ids("26") not in today or today == cut


class _Scripted(torch.nn.Module):
    """Greedy outputs scripted per row: row i emits ``script[i][t]`` at step t."""

    def __init__(self, script, vocab=8):
        super().__init__()
        self.script, self.vocab, self.t = script, vocab, 0

    def forward(self, input_ids, use_cache=True, past_key_values=None):
        t = 0 if past_key_values is None else past_key_values.t + 1
        logits = torch.zeros(len(self.script), 1, self.vocab)
        for i, row in enumerate(self.script):
            logits[i, 0, row[min(t, len(row) - 1)]] = 1.0
        # the prompt runs once (``decoding.prefill`` gathers its rows: nothing to gather here)
        cache = SimpleNamespace(t=t, reorder_cache=len)
        return SimpleNamespace(logits=logits, past_key_values=cache)


def test_every_end_of_turn_token_ends_an_answer():
    # row 0 ends with id 5 at step 2, row 1 with id 2 at step 3, row 2 never ends
    model = _Scripted([[3, 4, 5, 3], [3, 3, 4, 2], [3, 3, 3, 3]])
    resp, lengths = D.sample(model, torch.tensor([1]), 3, max_new=4, min_new=0, eos_id=(2, 5),
                             pad_id=0, greedy=True)  # fmt: skip
    assert lengths.tolist() == [3, 4, 4]
    assert resp[0, 3] == 0  # padded after its end
    # only the tokenizer's EOS: row 0 runs on
    _, lengths = D.sample(model, torch.tensor([1]), 3, max_new=4, min_new=0, eos_id=2, pad_id=0,
                          greedy=True)  # fmt: skip
    assert lengths.tolist() == [4, 4, 4]
    # end tokens are masked before min_new
    _, lengths = D.sample(model, torch.tensor([1]), 3, max_new=4, min_new=3, eos_id=(2, 5),
                          pad_id=0, greedy=True)  # fmt: skip
    assert lengths.tolist() == [4, 4, 4]
    # special_ids gathers the generation config's end ids (Llama-3.2-Instruct has three)
    base, _, tok = build_tiny_models(preset_config("tiny"))
    base.generation_config.eos_token_id = [2, 7, 9]
    assert D.special_ids(tok, base)[0] == (2, 7, 9)


# --------------------------------------------------------------------------- winners, oracle
def test_winner_rules_and_one_oracle_count_rule():
    def proto(agent, **kw):
        cfg = preset_config("tiny", agent=agent, candidates=3, **kw)
        return L.Protocol(cfg, SimpleNamespace(rm_head=torch.nn.Linear(2, 1),
                                               policy_tokenizer=_dated_tokenizer(),
                                               policy=torch.nn.Linear(1, 1)), [])  # fmt: skip

    score = torch.tensor([5.0, 1.0, 3.0])
    texts = ["", "b", "c", "ref"]
    assert proto("naive").pick_winner(0, score, texts) == 0  # empty kept (tiny)
    assert proto("naive", skip_empty=True).pick_winner(0, score, texts) == 2
    assert proto("naive", skip_empty=True).pick_winner(0, score, ["", " ", "", "r"]) is None
    rand = proto("random-winner")
    picks = [rand.pick_winner(t, score, texts) for t in range(30)]
    assert picks == [rand.pick_winner(t, score, texts) for t in range(30)]  # seeded
    assert set(picks) == {0, 1, 2}
    assert [proto(a).oracle_cost(texts, 1) for a in ("naive", "fpo", "random-winner")] == [2] * 3
    assert proto("fpo-relaxed").oracle_cost(texts, 1) == 4
    assert proto("fpo-relaxed", skip_empty=True).oracle_cost(texts, 1) == 3
    assert proto("fpo-relaxed").oracle_cost(texts, None) == 0
    budget = proto("naive@budget=fpo-relaxed", skip_empty=True)  # relaxed FPO's queries
    assert budget.oracle_cost(texts, 1) == 3 and budget.pick_winner(0, score, texts) == 2


def test_budget_control_trains_its_rm_on_every_candidate_and_picks_as_naive():
    """naive@budget=fpo-relaxed: the same winners as naive while the RMs agree (first step),
    relaxed FPO's oracle count, and an RM step on all candidate-vs-reference pairs (its head
    moves differently from naive's, which learns from the winner's pair only)."""
    kw = dict(steps=1, candidates=3)
    runs = {}
    for agent in ("naive", "naive@budget=fpo-relaxed", "fpo-relaxed"):
        cfg = preset_config("tiny", agent=agent, **kw)
        proto = L.Protocol(cfg, load_models(cfg), list(TRAIN_PROMPTS))
        head0 = proto.head.weight.detach().clone()
        runs[agent] = (proto.step(0), proto.head.weight.detach() - head0)
    (naive, d_naive), (budget, d_budget), (relaxed, _) = runs.values()
    assert budget["utility_winner"] == naive["utility_winner"]  # same draw, same pick
    assert budget["oracle_queries"] == relaxed["oracle_queries"] == 4 > naive["oracle_queries"]
    assert d_naive.abs().sum() > 0 and not torch.allclose(d_budget, d_naive)


def test_random_winner_run_and_dropout_asymmetry(tmp_path):
    folder = run_protocol(
        preset_config("tiny", agent="random-winner", steps=3, candidates=3),
        str(tmp_path),
        progress=False,
    )
    rows = read_csv(os.path.join(folder, "metrics.csv"))
    assert rows[-1]["oracle_queries"] == 6 and all(r["penalty_winner"] == 0 for r in rows)

    cfg = preset_config("tiny", agent="naive", rm_dropout_asymmetry=True)
    assert cfg.label == "naive+dropout-asym"
    proto = L.Protocol(cfg, load_models(cfg), list(TRAIN_PROMPTS))
    texts = ["a short answer", "another answer here", "the sky is blue"]
    seed = proto.scoring_dropout_seed(4)
    on, on_again, off = (proto.rewards("q", texts, s)[0] for s in (seed, seed, None))
    assert torch.equal(on, on_again) and not torch.allclose(on, off)
    assert not proto.m.reward_model.training  # back in eval mode
    fpo = L.Protocol(
        preset_config("tiny", agent="fpo", rm_dropout_asymmetry=True), proto.m, proto.prompts
    )
    assert fpo.scoring_dropout_seed(4) is None  # FPO candidates scored with dropout off
    assert L.Protocol(preset_config("tiny"), proto.m, proto.prompts).scoring_dropout_seed(4) is None
    folder = run_protocol(
        cfg.__class__(**{**cfg.to_dict(), "steps": 2}), str(tmp_path), progress=False
    )
    assert folder.endswith(os.path.join("naive+dropout-asym", "seed_0"))


def test_head_accumulation_and_sequence_sft():
    cfg = preset_config("tiny", agent="naive", candidates=2, max_new_tokens=5, rm_grad_accum=2)
    proto = L.Protocol(cfg, load_models(cfg), list(TRAIN_PROMPTS))
    w0 = proto.head.weight.detach().clone()
    proto.step(0)
    assert torch.equal(proto.head.weight, w0) and proto.head.weight.grad is not None
    proto.step(1)
    assert not torch.equal(proto.head.weight, w0) and proto.head.weight.grad is None
    ids, resp = proto.prompt_ids(TRAIN_PROMPTS[0]), torch.tensor([5, 6, 7, 0])
    whole = torch.cat([ids, resp[:3]]).unsqueeze(0)
    want = proto.m.policy(input_ids=whole, labels=whole).loss
    got = L.sequence_nll(proto.m.policy, ids, resp, 3)
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- statistics
def test_across_seeds_by_hand():
    def runs(*means):
        return {s: {"means": {"gold": m}, "per_prompt": []} for s, m in enumerate(means)}

    results = {"a": runs(1.0, 2.0, 4.0), "b": runs(0.0, 1.5, 1.0)}
    (row,) = evaluate.across_seeds(results, "gold")
    # differences 1, 0.5, 3: mean 1.5, sd 1.3229, t(0.975, 2) = 4.3027 -> half width 3.2863
    assert (row["a"], row["b"], row["seeds"], row["n_a"], row["n_b"]) == ("a", "b", 3, 3, 3)
    assert row["difference"] == pytest.approx(1.5)
    lo_hi = [row["difference_lo"], row["difference_hi"]]
    assert lo_hi == pytest.approx([1.5 - 3.2863, 1.5 + 3.2863], abs=1e-3)
    assert row["verdict"] == "no difference detected"
    # P(improvement) over all 9 pairs of runs: a's 1 beats 0, ties 1; 2 and 4 beat all three
    assert row["p_improvement"] == pytest.approx(7.5 / 9)
    results["b"] = runs(0.0, 1.0, 3.0)  # the same difference (1) on every seed: t CI [1, 1] ...
    (row,) = evaluate.across_seeds(results, "gold")
    assert row["difference_lo"] == pytest.approx(1.0) and row["p_lo"] < 0.5  # ... P(A > B) not
    assert row["verdict"] == "no difference detected"  # both CIs must exclude no difference
    results["b"] = runs(-9.0, -8.0, -7.0)  # every run of a above every run of b
    assert evaluate.across_seeds(results, "gold")[0]["verdict"] == "better"
    assert evaluate.across_seeds({"x": results["b"], "y": results["a"]}, "gold")[0]["verdict"] == (
        "worse"
    )
    del results["a"][2]  # two shared seeds: refused unless asked
    with pytest.raises(LLMTrackError, match="share 2 seeds.*--few-seeds"):
        evaluate.across_seeds(results, "gold")
    (row,) = evaluate.across_seeds(results, "gold", True)  # asked: no comparison, no verdict
    assert row == {"a": "a", "b": "b", "seeds": 2}


def test_markdown_states_the_comparisons_in_the_generated_block():
    """The across-seed comparisons are the generated block that tests/test_readings.py checks;
    pairs with too few seeds are named in a line, outside the block."""
    from baselines import stats

    def runs(*means):
        return {s: {"means": {"gold": m}, "per_prompt": []} for s, m in enumerate(means)}

    results = {"a": runs(5.0, 6.0, 7.0), "b": runs(-9.0, -8.0, -7.0), "c": runs(1.0)}
    seed_pairs = evaluate.across_seeds(results, "gold", few_seeds=True)
    meta = dict(preset="tiny", n_runs=7, steps="3", models="m", n_prompts=1, prompt_source="s")
    text = evaluate.markdown(
        results, {k: {} for k in results}, [], seed_pairs, {**meta, "max_new": 4}
    )
    block = text[text.index(stats.BLOCK_START) : text.index(stats.BLOCK_END)]
    assert "| a | b | 3 / 3 | +14.00 [+14.00, +14.00] | 1.00 [1.00, 1.00] | better |" in block
    assert "eval utility, paired by seed" in block and "| a | c |" not in block
    assert "Not compared (fewer than 3 shared seeds): a vs c, b vs c." in text
    only_few = evaluate.across_seeds({"a": runs(1.0), "b": runs(2.0)}, "gold", few_seeds=True)
    text = evaluate.markdown(
        results, {k: {} for k in results}, [], only_few, {**meta, "max_new": 4}
    )
    assert stats.BLOCK_START not in text and "Not compared" in text  # no empty block
