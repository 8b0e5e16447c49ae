"""Decoding machinery (issue 16, item 6): top-p from a bounded top-k gives the full sort's
distribution bit for bit (so the same draws), the token loop without a per-token stop check gives
the old loop's tokens, lengths and generator state, the static KV cache (and its compiled decode
step) agrees with the growing cache, and the new settings are validated and timed by the bench."""

import dataclasses
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from baselines.results import read_csv  # noqa: E402
from llm_track import bench  # noqa: E402
from llm_track import loop as L  # noqa: E402
from llm_track.config import LLMTrackError, preset_config  # noqa: E402
from llm_track.run import TIMING_COLUMNS, main, run_protocol  # noqa: E402

torch.set_num_threads(1)
N = 4  # candidates


# --------------------------------------------------------------------------- the old sampler
def _old_top_p_probs(logits, top_p):
    """The top-p filter as it was before the top-k path (a copy, kept here as the reference)."""
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)


@torch.no_grad()
def _old_sample(model, prompt_ids, n, *, max_new, min_new, eos_id, pad_id, temperature=1.0,
                top_p=1.0, generator=None, greedy=False, adapter_names=None, mixing="row-mask",
                **_new_options):  # fmt: skip
    """The token loop as it was (full sort, stop check every token), growing KV cache."""
    ids, dev = prompt_ids.unsqueeze(0).expand(n, -1).contiguous(), prompt_ids.device
    eos = torch.tensor(eos_id if isinstance(eos_id, (tuple, list)) else [eos_id], device=dev)
    cache_kw = L._forward_kwarg(model, ("cache",)) or "past_key_values"
    hooks = L.nullcontext()
    if adapter_names is not None:
        assert mixing == "row-mask"
        hooks = L._row_masked_lora(model, adapter_names, dev)
    with hooks:
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        lengths = torch.full((n,), max_new, dtype=torch.long, device=dev)
        tokens, cache = [], None
        for t in range(max_new):
            out = model(input_ids=ids, use_cache=True, **{cache_kw: cache})
            cache, logits = getattr(out, cache_kw), out.logits[:, -1].float()
            if t < min_new:
                logits[:, eos] = float("-inf")
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = _old_top_p_probs(logits / temperature, top_p)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            ended = ~done & torch.isin(nxt, eos)
            lengths[ended] = t + 1
            done |= ended
            if bool(done.all()):
                break
            ids = nxt.unsqueeze(1)
    return torch.stack(tokens, 1), lengths


# --------------------------------------------------------------------------- top-p filter
def _random_logits(g, trial):
    rows = int(torch.randint(1, 10, (1,), generator=g))
    vocab = int(torch.randint(2, 600, (1,), generator=g))
    scale = float(torch.rand(1, generator=g)) * 12
    kind = trial % 4
    if kind == 0:  # integer logits: many exact ties, some across the nucleus' cut
        logits = torch.randint(0, 4, (rows, vocab), generator=g).float() * scale
    elif kind == 1:  # flat rows: nuclei of hundreds of tokens, beyond any top-k (full sort)
        logits = torch.randn(rows, vocab, generator=g) * 0.1
    else:  # peaked rows: nuclei of a few tokens
        logits = torch.randn(rows, vocab, generator=g) * (scale + 2)
    if trial % 5 == 0 and vocab > 3:  # masked end tokens (min_new)
        logits[:, : vocab // 3] = float("-inf")
    return logits


def test_top_p_topk_is_the_full_sort_bit_for_bit():
    """Over many random logits (ties, flat and peaked rows, -inf entries), every top_p (1.0
    included) and temperature, and several k: the same float tensor as the old full-sort filter,
    so the same multinomial draws from the same generator state."""
    g = torch.Generator().manual_seed(0)
    fast_rows = full_rows = 0
    for trial in range(1500):
        logits = _random_logits(g, trial)
        top_p = [0.9, 1.0, 0.5, 0.999, 0.1, 1e-5, float(torch.rand(1, generator=g))][trial % 7]
        temperature = [0.8, 1.0, 0.3, 2.0][trial % 4]
        k = [64, 8, 1, 2, 0, 599, 1000][trial // 7 % 7]  # 1 means 2; 0, >= vocab: full sort
        x = logits / temperature
        want = _old_top_p_probs(x, top_p)
        got = L._top_p_probs_topk(x, top_p, k)
        assert torch.equal(got, want), (trial, top_p, temperature, k)
        assert torch.equal(L._top_p_probs(x, top_p), want)
        draws = []
        for probs in (want, got):
            gen = torch.Generator().manual_seed(trial)
            draws.append(torch.multinomial(probs, 1, generator=gen))
        assert torch.equal(*draws)
        if top_p < 1.0 and 0 < k and max(k, 2) < x.shape[-1]:
            _, need = L._nucleus_topk(torch.softmax(x, -1), top_p, max(k, 2))
            full_rows += int(need.sum())
            fast_rows += int((~need).sum())
    assert fast_rows > 800 and full_rows > 800  # both paths were exercised


def test_top_p_topk_edge_rows():
    """Rows built to sit on the rule's edges: a tie across the cut (the full sort's order among
    equal values decides which is kept: must take the full sort), a cumulative mass exactly at
    top_p, one token with all the mass, a uniform row."""
    probs = [
        [0.5, 0.25, 0.25, 0.0],  # top_p 0.6: one of the two 0.25 is kept
        [0.25, 0.5, 0.125, 0.125],  # top_p 0.75: the mass before 0.125 is exactly 0.75 (kept)
        [1.0, 0.0, 0.0, 0.0],
        [0.25, 0.25, 0.25, 0.25],
    ]
    logits = torch.tensor(probs).log()
    for top_p in (0.6, 0.75, 0.9, 0.25):
        for k in (2, 3):
            assert torch.equal(
                L._top_p_probs_topk(logits, top_p, k), _old_top_p_probs(logits, top_p)
            )
    _, need = L._nucleus_topk(torch.tensor(probs), 0.6, 3)
    assert need[0] and not need[2]  # the tie across the cut takes the full sort
    # a long row whose nucleus ends inside the top-k needs no full sort
    row = torch.softmax(-0.5 * torch.arange(1000.0), -1).unsqueeze(0)  # nucleus: 5 tokens
    _, need = L._nucleus_topk(row, 0.9, 64)
    assert not need.any()


# --------------------------------------------------------------------------- tiny-model loop
def _kw(proto, **kw):
    cfg = proto.cfg
    out = dict(
        min_new=cfg.min_new_tokens,
        eos_id=proto.eos_ids,
        pad_id=proto.pad_id,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    return {**out, **kw}


@pytest.mark.parametrize("every", [1, 4])
def test_token_loop_matches_the_old_one(proto, every, monkeypatch):
    """Tokens, lengths and the generator's state after the call are the old loop's: with the
    top-k filter (its one sync per token also stops the loop), with the full sort or top_p 1 (a
    stop check every ``every`` tokens, then cut back and the generator rewound), and greedy;
    for mixed (reference + candidates) and plain batches. Answers that all end before max_new
    occur, so the cut-back is exercised."""
    monkeypatch.setitem(L.STOP_CHECK_EVERY, "cpu", every)  # 4: the accelerators' logic
    policy = proto.m.policy.eval()
    names = ["default"] * N + [L.BASE_ADAPTER]
    early = {}  # (greedy, top_p, topk) -> answers that all ended before max_new
    for i in range(5):
        ids = proto.prompt_ids(proto.prompts[i])
        for greedy, top_p, topk in [(False, 0.9, 64), (False, 0.9, 0), (False, 1.0, 64), (True, 0.9, 64)]:  # fmt: skip
            for rows, adapters in [(N + 1, names), (2, None)]:
                kw = _kw(proto, max_new=30, greedy=greedy, top_p=top_p, adapter_names=adapters)
                g_old, g_new = torch.Generator(), torch.Generator()
                g_old.manual_seed(i), g_new.manual_seed(i)
                # plain batches from the base model, whose answers end (the LoRA rows babble)
                with policy.disable_adapter() if adapters is None else L.nullcontext():
                    old = _old_sample(policy, ids, rows, generator=g_old, **kw)
                    new = L.sample(policy, ids, rows, generator=g_new, top_p_topk=topk, **kw)
                assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1]), (i, greedy)
                assert torch.equal(g_old.get_state(), g_new.get_state())
                key = (greedy, top_p, topk)
                early[key] = early.get(key, 0) + (old[0].shape[1] < 30)
    assert all(early.values())  # every path met a loop that ends early


def test_protocol_steps_match_the_old_sampler(monkeypatch, tiny_protocol):
    """Three whole protocol steps (generation, scoring, updates) give the same metrics with the
    new loop (top-k, default) as with the old loop, in one-loop and two-loop generation."""
    for mixed in (True, False):
        rows = []
        for sampler in (_old_sample, L.sample):
            monkeypatch.setattr(L, "sample", sampler)
            p = tiny_protocol(seed=1)
            p.mixed_generation = mixed
            rows.append([{k: v for k, v in p.step(t).items() if k not in TIMING_COLUMNS}
                         for t in range(3)])  # fmt: skip
        monkeypatch.undo()
        assert rows[0] == rows[1], mixed


def _gen(proto, i, greedy, **decoding):
    proto.cfg = dataclasses.replace(proto.cfg, **decoding)
    proto.generator.manual_seed(100 + i)
    try:
        out = proto.generate_step(proto.prompt_ids(proto.prompts[i]), greedy=greedy)
    finally:
        proto.cfg = dataclasses.replace(
            proto.cfg, top_p_topk=64, static_cache=False, compile_decode="off"
        )
    return out[0], out[1], proto.generator.get_state()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("mixed", [True, False])
def test_static_cache_agrees_with_the_growing_cache(proto, mixed):
    """Greedy: the same tokens. Sampled with a fixed seed: the same tokens for these prompts and
    seeds (the static cache's attention over padded positions rounds the logits differently, by
    ~1e-6, so a draw at a distribution boundary could differ: not a guarantee in general)."""
    proto.mixed_generation = mixed
    try:
        for i in range(6):
            for greedy in (True, False):
                want = _gen(proto, i, greedy)
                for topk in (64, 0):
                    got = _gen(proto, i, greedy, static_cache=True, top_p_topk=topk)
                    assert _same(want, got), (i, greedy, topk)
    finally:
        proto.mixed_generation = True


def test_static_cache_logits_close(proto):
    policy = proto.m.policy.eval()
    ids = proto.prompt_ids(proto.prompts[2]).unsqueeze(0).expand(3, -1)
    dec = L.StaticDecoder(policy, ids.shape[1] + 8)
    cache = dec.cache(3, ids.device)
    positions = torch.arange(ids.shape[1] + 8)
    with torch.no_grad():
        out = policy(input_ids=ids, use_cache=True)
        grow, logits = out.cache, out.logits[:, -1].float()
        static = dec.forward(ids, positions[: ids.shape[1]], cache, {})
        assert torch.equal(logits, static)  # the prompt: same computation
        for t in range(8):
            nxt = logits.argmax(-1, keepdim=True)
            out = policy(input_ids=nxt, use_cache=True, cache=grow)
            grow, logits = out.cache, out.logits[:, -1].float()
            p = ids.shape[1] + t
            static = dec.step(nxt, positions[p : p + 1], cache, {})
            torch.testing.assert_close(static, logits, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="static cache"):
        L.sample(policy, ids[0], 2, max_new=9, decoder=dec, **_kw(proto))


def test_compiled_decode_step_eager_backend(proto, monkeypatch, tiny_protocol):
    """The compiled decode step (dynamo tracing and guards; the ``eager`` backend skips code
    generation) gives the uncompiled static path's tokens across calls whose row masks change
    (reference last or first, all base, no mixing) at the same shapes, where module hooks are
    not guarded, and in two-loop generation; one graph per shape and adapter state."""
    import torch._dynamo

    monkeypatch.setattr(L, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    policy = proto.m.policy.eval()
    ids = proto.prompt_ids(proto.prompts[1])
    plain, compiled = L.StaticDecoder(policy, 80), L.StaticDecoder(policy, 80, "default")
    b, a = L.BASE_ADAPTER, "default"
    for names in ([a, a, a, b], [b, a, a, a], None, [b, b, b, b], [a, b, a, b]):
        for greedy in (True, False):
            kw = _kw(proto, max_new=10, greedy=greedy, adapter_names=names)
            outs = []
            for dec in (plain, compiled):
                g = torch.Generator().manual_seed(7)
                outs.append(L.sample(policy, ids, 4, generator=g, decoder=dec, **kw))
            assert _same(*outs), (names, greedy)
    with pytest.raises(ValueError, match="row-mask"):
        L.sample(policy, ids, 4, max_new=3, adapter_names=[a, a, a, b], mixing="peft",
                 decoder=compiled, **_kw(proto))  # fmt: skip
    fresh = tiny_protocol()  # its own decoders, compiled with the eager backend
    for mixed in (True, False):
        fresh.mixed_generation = mixed
        for i, greedy in ((0, True), (1, False)):
            want = _gen(fresh, i, greedy, static_cache=True)
            got = _gen(fresh, i, greedy, static_cache=True, compile_decode="default")
            assert _same(want, got), (mixed, i, greedy)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_decode_step_inductor(tiny_protocol):
    """The real compiler (inductor, C++ on the CPU; about 30 s per graph on a small machine)."""
    import torch._dynamo

    torch._dynamo.reset()
    proto = tiny_protocol()
    for i in range(3):
        for greedy in (True, False):
            want = _gen(proto, i, greedy, static_cache=True)
            got = _gen(proto, i, greedy, static_cache=True, compile_decode="default")
            assert _same(want, got), (i, greedy)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- settings, CLIs
@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"top_p_topk": -1}, "--top-p-topk"),
        ({"top_p_topk": 2.5}, "--top-p-topk"),
        ({"static_cache": "yes"}, "--static-cache"),
        ({"compile_decode": "fast"}, "--compile-decode"),
        ({"compile_decode": "default"}, "--compile-decode"),  # without the static cache
    ],
)
def test_bad_decoding_settings_are_one_line(overrides, flag):
    with pytest.raises(LLMTrackError) as exc:
        preset_config("tiny", **overrides)
    msg = str(exc.value)
    assert msg.startswith(flag) and "\n" not in msg
    cfg = preset_config("tiny", static_cache=True, compile_decode="reduce-overhead")
    assert cfg.static_cache and cfg.compile_decode == "reduce-overhead"
    paper = preset_config("paper")  # off unless asked for, on any device
    assert (paper.top_p_topk, paper.static_cache, paper.compile_decode) == (64, False, "off")


def test_cli_decoding_flags(tmp_path, capsys):
    base = ["--agent", "naive", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]
    assert main([*base, "--compile-decode", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compile-decode" in err
    assert main([*base, "--compile-decode", "default"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--static-cache" in err
    assert main([*base, "--top-p-topk", "-3"]) == 2
    assert "--top-p-topk" in capsys.readouterr().err
    assert bench.main(["--compile-decode", "bogus"]) == 2
    assert "--compile-decode" in capsys.readouterr().err


def test_resume_may_change_the_decoding(tmp_path):
    """The decoding settings are free on --resume (like --device); with the top-k and the full
    sort the resumed run is the uninterrupted one."""
    cfg = preset_config("tiny", agent="fpo", steps=3, candidates=3, seed=2)
    full = run_protocol(cfg, str(tmp_path / "full"), progress=False)
    part = dataclasses.replace(cfg, steps=2, top_p_topk=0)
    run_protocol(part, str(tmp_path / "cut"), progress=False)
    resumed = run_protocol(
        dataclasses.replace(cfg, static_cache=True), str(tmp_path / "cut"), resume=True,
        progress=False,
    )  # fmt: skip

    def rows(folder):
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS}
                for r in read_csv(os.path.join(folder, "metrics.csv"))]  # fmt: skip

    assert rows(full)[:2] == rows(resumed)[:2] and len(rows(resumed)) == 3


def test_bench_compares_decodings(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--shapes", "tiny", "--steps", "1", "--candidates", "2", "--max-new-tokens", "4"]
    assert bench.main([*argv, "--compare-decoding", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["timed"] == ["full-sort", "top-64", "full-sort+static", "top-64+static"]
    for name in res["timed"]:
        assert set(res[name]) == {"gen_s", "score_s", "update_s", "step_s"}
        assert all(v > 0 for v in res[name].values())
    text = capsys.readouterr().out
    assert "| decoding |" in text and "top-64+static" in text
    # the flags pass through to a normal bench run
    assert bench.main([*argv, "--static-cache", "--top-p-topk", "8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["decoding"] == {"top_p_topk": 8, "static_cache": True, "compile_decode": "off"}
    assert "static cache True" in capsys.readouterr().out
    # the filter alone at a given vocabulary, no model
    assert bench.main(["--sampler-vocab", "500", "--steps", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {f"{a}/{b}" for a in ("peaked", "flat") for b in ("full-sort", "top-64")}
    assert "| peaked |" in capsys.readouterr().out
    assert bench.main(["--sampler-vocab", "2"]) == 2
