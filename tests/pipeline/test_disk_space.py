"""The disk-space guards of a run: the --min-free-mb floor, the room a video keeps, the reserve."""

from __future__ import annotations

import errno
import os

import pytest

from dronseg_edge.pipeline import disk_space
from dronseg_edge.pipeline.disk_space import DiskFloor, SpaceReserve, ensure_room


def test_the_floor_names_the_folder_the_free_space_and_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 123_400_000)
    assert DiskFloor(tmp_path, 100).crossed() is None
    assert DiskFloor(tmp_path, 0).crossed() is None  # 0: no floor
    floor = DiskFloor(tmp_path, 500, every_s=60)
    assert floor.crossed() == f"disk floor: 123.4 MB free on {tmp_path}, below --min-free-mb 500 MB"
    assert floor.crossed() is None  # asked again within every_s: not checked again


def test_ensure_room_raises_enospc_naming_the_file(tmp_path, monkeypatch):
    ensure_room(tmp_path / "v.mp4", 1)
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 10)
    with pytest.raises(OSError) as error:
        ensure_room(tmp_path / "v.mp4", 11)
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(tmp_path / "v.mp4"))


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="the reserve needs posix_fallocate (POSIX)")
def test_the_reserve_holds_space_without_a_name_and_gives_it_back(tmp_path):
    reserve = SpaceReserve(tmp_path, size=8 << 20)
    assert reserve.size == 8 << 20 and list(tmp_path.iterdir()) == []  # unlinked at once: a kill leaves nothing
    assert os.fstat(reserve.fd).st_blocks * 512 >= 8 << 20  # blocks really allocated, not a sparse file
    reserve.release()
    reserve.release()  # idempotent
    assert reserve.fd is None


def test_the_reserve_never_takes_more_than_an_eighth_of_the_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 800_000)
    with SpaceReserve(tmp_path) as reserve:
        assert reserve.size == 100_000
