"""Shared test setup: one thread (fast, deterministic tiny-tensor maths) and small helpers."""

import shutil

import pytest
import torch

torch.set_num_threads(1)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_compiler") and not (
        shutil.which("g++") or shutil.which("c++")
    ):
        pytest.skip("torch compiles CPU kernels with a C++ compiler; none on this machine")


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
