"""Shared test setup: one thread (fast, deterministic tiny-tensor maths) and small helpers."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
