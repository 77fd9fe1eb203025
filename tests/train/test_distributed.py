"""torchrun support (train/distributed.py): a WORLD_SIZE that torchrun did not set is one line, not a traceback."""

import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.train.distributed import setup_distributed


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "2"}, "KeyError: 'RANK'"),
    ({"WORLD_SIZE": "two"}, "ValueError: invalid literal for int()"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR expected, but not set"),
])
def test_a_world_size_not_set_by_torchrun_is_one_line_naming_the_launch(env, says, monkeypatch):
    # WORLD_SIZE left in a shell or set by a job scheduler: KeyError/ValueError tracebacks from `train`
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DronsegError) as info:
        setup_distributed("cpu")
    assert says in str(info.value) and "launch with `torchrun --nproc-per-node N" in str(info.value), info.value
    assert "\n" not in str(info.value)
