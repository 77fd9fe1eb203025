"""pad_batch: a short batch padded to an artifact's fixed batch by repeating its last frame."""

from __future__ import annotations

import pytest
import torch

from dronseg_edge.runtime.batching import pad_batch


def test_short_batch_repeats_its_last_row():
    batch = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    padded, real = pad_batch(batch, 4)
    assert real == 2 and padded.shape == (4, 3, 2, 2)
    assert torch.equal(padded[:2], batch) and torch.equal(padded[2], batch[1]) and torch.equal(padded[3], batch[1])


def test_full_or_larger_batch_is_returned_as_is():
    batch = torch.zeros(3, 1)
    assert pad_batch(batch, 3)[0] is batch and pad_batch(batch, 3)[1] == 3
    assert pad_batch(batch, 2)[0] is batch and pad_batch(batch, 1)[1] == 3


def test_empty_batch_is_a_bug_not_a_padding():
    with pytest.raises(ValueError):
        pad_batch(torch.zeros(0, 3), 2)
