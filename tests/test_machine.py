"""The host machine without torch (machine.py): CPU model, memory, free disk, from fake /proc files."""

from __future__ import annotations

import os

from dronseg_edge import machine

MEMINFO = "MemTotal:       65536000 kB\nMemFree:         1000000 kB\nMemAvailable:   32768000 kB\nBuffers: 12 kB\n"


def test_the_cpu_model_comes_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_model() == "AMD EPYC 7B13 64-Core Processor"
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    assert machine.cpu_model()  # the platform's own answer, never an exception


def test_cores_of_the_machine_and_of_this_process():
    total, usable = machine.cpu_cores()
    assert total == os.cpu_count() and 1 <= usable <= total


def test_memory_from_meminfo_in_bytes(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    monkeypatch.setattr(machine, "MEMINFO", meminfo)
    assert machine.memory() == machine.Memory(65536000 * 1024, 32768000 * 1024)
    monkeypatch.setattr(machine, "MEMINFO", tmp_path / "absent")
    fallback = machine.memory()  # sysconf: the total only
    assert fallback is None or (fallback.total > 0 and fallback.available is None)


def test_disk_of_a_folder_not_made_yet_is_its_nearest_existing_parents(tmp_path):
    found = machine.disk(tmp_path / "runs" / "exp1")
    assert found.path == tmp_path.resolve() and 0 <= found.free <= found.total
    assert found.device == machine.disk(tmp_path).device


def test_the_os_has_a_name():
    assert machine.os_name().strip()
