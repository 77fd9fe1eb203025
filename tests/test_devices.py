"""--device: every spelling a user types, with and without torch."""

from __future__ import annotations

import pytest

from dronseg_edge.devices import Device, parse_device
from dronseg_edge.errors import DronsegError


@pytest.mark.parametrize("text, device", [("auto", None), (None, None), ("cpu", Device("cpu")), ("CUDA", Device("cuda")),
                                          ("cuda:1", Device("cuda", 1)), ("0", Device("cuda", 0)),
                                          (" 2 ", Device("cuda", 2))])
def test_device_spellings_including_a_bare_gpu_index(text, device):
    assert parse_device(text) == device


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "-1", "gpu0"])
def test_anything_else_is_one_line_naming_the_spellings(text):
    with pytest.raises(DronsegError, match="is not a device: use auto, cpu, cuda, cuda:N or N$"):
        parse_device(text)
