"""Decoding kernels: the top-p filter keeps the smallest nucleus of mass >= top_p."""

import pytest

torch = pytest.importorskip("torch")

from llm_track import decoding as D  # noqa: E402

torch.set_num_threads(1)


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
