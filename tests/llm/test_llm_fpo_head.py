"""Closed-form FPO head penalties equal the autograd ones (arXiv 2605.04266, section 2)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents import fpo, registry  # noqa: E402
from llm_track.config import AGENTS, LLMConfig  # noqa: E402
from llm_track.fpo_head import (  # noqa: E402
    FORMS,
    fpo_scores,
    head_features,
    practical_penalty,
    relaxed_penalty,
)

torch.set_num_threads(1)


def autograd_penalty(
    form: str,
    head: torch.nn.Linear,
    h: torch.Tensor,
    h_ref: torch.Tensor,
    u: torch.Tensor | None = None,
    u_ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: the FPO penalty (form ``practical`` or ``relaxed``) of each candidate from
    autograd gradients, one candidate at a time."""
    if form not in ("practical", "relaxed"):
        raise ValueError(f"autograd_penalty covers the practical and relaxed forms, not {form!r}")
    params = list(head.parameters())

    def head_grad(r: torch.Tensor) -> torch.Tensor:  # d r / d(head parameters), flattened
        grads = torch.autograd.grad(r, params, retain_graph=True)
        return torch.cat([g.reshape(-1) for g in grads]).float()

    with torch.enable_grad():
        r_ref = head(h_ref.unsqueeze(0)).squeeze()
        g_ref = head_grad(r_ref)
        out = []
        for i in range(h.shape[0]):
            r_i = head(h[i : i + 1]).squeeze()
            g_i = head_grad(r_i)
            pen = g_i @ (g_i - g_ref)
            if form == "relaxed":
                p_phi = torch.sigmoid(r_i.detach().float() - r_ref.detach().float())
                pen = (p_phi - torch.sigmoid(u[i].float() - u_ref.float())) * pen
            out.append(pen)
    return torch.stack(out).detach()


def _head_and_features(dim=16, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(dim, 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, dim, generator=g))
        head.bias.fill_(0.3)
    h = torch.randn(n, dim, generator=g)
    h_ref = torch.randn(dim, generator=g)
    u = torch.randn(n, generator=g) * 3
    u_ref = torch.tensor(0.5)
    return head, h, h_ref, u, u_ref


def test_practical_penalty_matches_autograd():
    head, h, h_ref, _, _ = _head_and_features()
    closed = practical_penalty(h, h_ref)
    auto = autograd_penalty("practical", head, h, h_ref)
    torch.testing.assert_close(closed, auto, rtol=1e-5, atol=1e-5)
    # the bias terms cancel: (h.h + 1) - (h.h_ref + 1)
    torch.testing.assert_close(closed, (h * h).sum(1) - h @ h_ref, rtol=1e-5, atol=1e-5)


def test_relaxed_penalty_matches_autograd():
    head, h, h_ref, u, u_ref = _head_and_features(seed=1)
    with torch.no_grad():
        r, r_ref = head(h).squeeze(-1), head(h_ref).squeeze()
    closed = relaxed_penalty(h, h_ref, r, r_ref, u, u_ref)
    auto = autograd_penalty("relaxed", head, h, h_ref, u, u_ref)
    torch.testing.assert_close(closed, auto, rtol=1e-5, atol=1e-5)
    assert (closed != 0).all()


def test_scores_per_penalty_form():
    head, h, h_ref, u, u_ref = _head_and_features(seed=2)
    with torch.no_grad():
        r, r_ref = head(h).squeeze(-1), head(h_ref).squeeze()
    s_none, p_none = fpo_scores("none", 10.0, r, h, r_ref, h_ref, u, u_ref)
    assert torch.equal(s_none, r) and torch.equal(p_none, torch.zeros_like(r))
    s_fpo, p_fpo = fpo_scores("practical", 10.0, r, h, r_ref, h_ref, u, u_ref)
    torch.testing.assert_close(s_fpo, r - 10.0 * practical_penalty(h, h_ref))
    s_rel, p_rel = fpo_scores("relaxed", 10.0, r, h, r_ref, h_ref, u, u_ref)
    torch.testing.assert_close(p_rel, relaxed_penalty(h, h_ref, r, r_ref, u, u_ref))
    with pytest.raises(ValueError):  # an agent name is not a form
        fpo_scores(registry.REFERENCE, 1.0, r, h, r_ref, h_ref, u, u_ref)


def test_llm_agents_come_from_the_registry():
    """The LLM track's agents are the registry's with an llm_penalty (behaviour follows it),
    then the LLM-only controls (random winner; relaxed FPO's oracle budget as RM labels)."""
    controls = ("random-winner", "naive@budget=fpo-relaxed")
    assert AGENTS == (*registry.llm_names(), *controls) and registry.llm_names()
    assert LLMConfig().agent == registry.REFERENCE
    assert LLMConfig(agent="random-winner").penalty_form == "random"
    for name in registry.llm_names():
        form = registry.get(name).llm_penalty
        assert form in FORMS
        assert LLMConfig(agent=name).penalty_form == form
    assert {registry.get(name).llm_penalty for name in registry.llm_names()} == set(FORMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_equals_direct_and_agents_fpo(seed, dtype):
    """The fpo_head adapters = the direct head formulas = agents.fpo with a LinearRewardModel on
    [h, 1] whose weights are the head's (w, b), Bradley-Terry feedback, p* = sigmoid(U - U_ref)."""
    from rlhf_envs.reward_models import LinearRewardModel, OptimizerConfig

    g = torch.Generator().manual_seed(100 + seed)
    n, dim = 7, 24
    h = torch.randn(n, dim, generator=g).to(dtype)
    h_ref = torch.randn(dim, generator=g).to(dtype)
    w, b = torch.randn(dim, generator=g), torch.randn((), generator=g)
    u, u_ref = torch.randn(n, generator=g) * 3, torch.randn((), generator=g)
    hf, hrf = h.float(), h_ref.float()
    r, r_ref = hf @ w + b, hrf @ w + b

    prac = practical_penalty(h, h_ref)
    rel = relaxed_penalty(h, h_ref, r, r_ref, u, u_ref)
    assert prac.dtype == rel.dtype == torch.float32 and prac.shape == rel.shape == (n,)

    # direct: h.h - h.h_ref, and (p_phi - p*) times it
    direct = (hf * hf).sum(1) - hf @ hrf
    p_phi, p_star = torch.sigmoid(r - r_ref), torch.sigmoid(u - u_ref)
    torch.testing.assert_close(prac, direct, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rel, (p_phi - p_star) * direct, rtol=1e-5, atol=1e-4)

    # agents.fpo on a linear RM over y = [h, 1] (1, n, D+1), reference [h_ref, 1], params (w, b)
    one = torch.ones(n, 1)
    y = torch.cat([hf, one], 1).unsqueeze(0)
    ref = torch.cat([hrf, torch.ones(1)])
    rm = LinearRewardModel(dim + 1, OptimizerConfig(), torch.zeros(dim + 1), 0.0, torch.float32)
    params = {"w": torch.cat([w, b.view(1)]).unsqueeze(0)}
    torch.testing.assert_close(
        prac, fpo.practical_penalty(rm, params, y, "preference", ref)[0], rtol=1e-5, atol=1e-4
    )
    want = fpo.relaxed_penalty(rm, params, y, p_star.unsqueeze(0), "preference", ref)[0]
    torch.testing.assert_close(rel, want, rtol=1e-5, atol=1e-4)


def test_penalty_is_first_order_change_of_reward():
    """-eta * relaxed penalty ~= the change of r(y) after one BT SGD step on (y vs ref)."""
    head, h, h_ref, u, u_ref = _head_and_features(seed=3)
    eta = 1e-4
    y = 0
    with torch.no_grad():
        r_ref = head(h_ref).squeeze()
        r_y = head(h[y]).squeeze()
        pen = relaxed_penalty(h[y : y + 1], h_ref, r_y.view(1), r_ref, u[y : y + 1], u_ref)[0]
    logit = head(h[y]).squeeze() - head(h_ref).squeeze()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.sigmoid(u[y] - u_ref))
    loss.backward()
    with torch.no_grad():
        for p in head.parameters():
            p -= eta * p.grad
        delta = head(h[y]).squeeze() - r_y
    torch.testing.assert_close(delta, -eta * pen, rtol=1e-3, atol=1e-7)


def test_head_features_hook_on_tiny_deberta():
    """h captured by the hook is the input of DeBERTa's final linear layer (after the pooler)."""
    from transformers import DebertaV2ForSequenceClassification

    from llm_track.models import build_tiny_tokenizer, rm_head, tiny_deberta_config

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    rm = DebertaV2ForSequenceClassification(tiny_deberta_config(len(tok))).eval()
    enc = tok(
        ["why is the sky blue"] * 2, ["light", "a short poem"], padding=True, return_tensors="pt"
    )
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    r, h = head_features(rm, rm_head(rm), batch)
    with torch.no_grad():
        logits = rm(**batch).logits.squeeze(-1)
        pooled = rm.pooler(rm.deberta(**batch)[0])
    torch.testing.assert_close(r, logits)
    torch.testing.assert_close(h, pooled)
