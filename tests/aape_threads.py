"""One torch thread for the method tests: their tensors are tiny, and on a shared 2-core machine
OpenMP's second thread costs 10+ ms of waiting per op (150 steps: 0.5 s vs 15 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
