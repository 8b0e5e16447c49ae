"""Decoding kernels: the top-p filter keeps the smallest nucleus of mass >= top_p, and the token
loop with a stop check every few tokens (the accelerators' setting) gives the tokens, lengths and
generator state of a check at every token."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track import decoding as D  # noqa: E402
from llm_track.adapters import row_masked_lora  # noqa: E402

torch.set_num_threads(1)
N = 4  # candidates


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor(
        [
            [0.5, 0.25, 0.125, 0.125],  # top_p 0.6: the first two (0.75 >= 0.6)
            [0.125, 0.5, 0.25, 0.125],  # the same, in another order
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    got = D.top_p_probs(probs.log(), 0.6)
    want = torch.tensor([[2 / 3, 1 / 3, 0, 0], [0, 2 / 3, 1 / 3, 0], [1.0, 0, 0, 0]])
    torch.testing.assert_close(got, want)
    # the mass before 0.15 is exactly top_p: 0.15 is kept (the set reaches top_p only with it)
    edge = D.top_p_probs(torch.tensor([[0.5, 0.25, 0.15, 0.1]]).log(), 0.75)
    torch.testing.assert_close(edge, torch.tensor([[0.5, 0.25, 0.15, 0.0]]) / 0.9)
    torch.testing.assert_close(D.top_p_probs(probs.log(), 1.0), probs)
    assert torch.equal(D.top_p_probs(probs.log(), 1e-5).count_nonzero(-1), torch.ones(3).long())


@pytest.mark.parametrize("mixed", [True, False])
def test_stop_check_every_few_tokens_is_every_token(proto, mixed, monkeypatch):
    """Sampled and greedy, top_p 0.9 and 1: a loop that ran past its last row's end is cut back
    and its generator rewound, so nothing differs from a check at every token. Loops that end
    before max_new occur, so the cut-back is exercised."""
    policy = proto.m.policy.eval()
    rows = N + 1 if mixed else 2
    early = 0
    for i in range(5):
        ids = proto.prompt_ids(proto.prompts[i])
        for greedy, top_p in ((False, 0.9), (False, 1.0), (True, 0.9)):
            kw = {**proto.sampling_kwargs(greedy), "top_p": top_p, "max_new": 30}
            outs = []
            for every in (1, 4):
                monkeypatch.setitem(D.STOP_CHECK_EVERY, "cpu", every)
                kw["generator"] = torch.Generator().manual_seed(i)
                # plain batches from the base model, whose answers end (the LoRA rows babble)
                mixing = row_masked_lora(policy, "default", [False] * N + [True])
                with mixing if mixed else policy.disable_adapter():
                    outs.append((*D.sample(policy, ids, rows, **kw), kw["generator"].get_state()))
            assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True)), (i, greedy, top_p)
            early += outs[0][0].shape[1] < 30
    assert early
