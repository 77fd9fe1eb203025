"""Jetson detection and parsing, on fake /etc/nv_tegra_release, device-tree, sysfs and nvpmodel."""

from __future__ import annotations

import pytest

from dronseg_edge import machine
from dronseg_edge.checks import OK, WARN, jetson

ORIN_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"


@pytest.fixture
def fake_jetson(tmp_path, monkeypatch):
    """A Jetson AGX Orin on JetPack 6.2 in MAXN, GPU idling below its maximum clock."""
    release = tmp_path / "nv_tegra_release"
    release.write_text(ORIN_RELEASE)
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    gpu = tmp_path / "devfreq" / "17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("306000000\n")
    (gpu / "max_freq").write_text("1300500000\n")
    cpu = tmp_path / "cpufreq"
    cpu.mkdir()
    (cpu / "scaling_cur_freq").write_text("2201600\n")
    (cpu / "cpuinfo_max_freq").write_text("2201600\n")
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    nvpmodel.chmod(0o755)
    monkeypatch.setattr(machine, "TEGRA_RELEASE", release)
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", model)
    for name, value in (("DEVFREQ", tmp_path / "devfreq"), ("CPUFREQ", cpu), ("NVPMODEL", str(nvpmodel))):
        monkeypatch.setattr(jetson, name, value)
    return tmp_path


def test_no_jetson_lines_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "TEGRA_RELEASE", tmp_path / "absent")
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", model)
    assert not jetson.is_jetson() and list(jetson.jetson_checks()) == []


def test_a_jetson_shows_model_release_power_mode_and_clocks(fake_jetson):
    checks = {c.name: c for c in jetson.jetson_checks()}
    assert checks["jetson"] == jetson.Check("jetson", OK, "NVIDIA Jetson AGX Orin Developer Kit")
    assert checks["jetpack"].detail == "L4T 36.4.3 = JetPack 6.2"
    assert checks["power mode"].status == OK and checks["power mode"].detail == "MAXN (mode 0)"
    clocks = checks["clocks"]
    assert clocks.status == OK and "GPU 306/1300 MHz" in clocks.detail and "CPU0 2202/2202 MHz" in clocks.detail
    assert "jetson_clocks" in clocks.detail


def test_a_capped_power_mode_warns_with_the_fix(fake_jetson):
    (fake_jetson / "nvpmodel").write_text("#!/bin/sh\necho 'NV Power Mode: 15W'\necho 1\n")
    check = jetson.power_mode_check()
    assert check.status == WARN and check.detail.startswith("15W (mode 1): a power-capped mode")
    assert "nvpmodel -m" in check.detail


def test_an_nvpmodel_that_fails_or_says_nothing_leaves_the_power_mode_unknown(fake_jetson):
    for script, said in (("exit 1", "failed (CalledProcessError)"), ("echo 'NVPM ERROR'", "printed no 'NV Power Mode' line")):
        (fake_jetson / "nvpmodel").write_text(f"#!/bin/sh\n{script}\n")
        detail = f"`{jetson.NVPMODEL} -q` {said}: power mode unknown"
        assert jetson.power_mode_check() == jetson.Check("power mode", WARN, detail)


def test_missing_tools_and_files_warn(fake_jetson, monkeypatch):
    monkeypatch.setattr(jetson, "NVPMODEL", "no-such-nvpmodel")
    assert jetson.power_mode_check().status == WARN
    (fake_jetson / "nv_tegra_release").write_text("garbage\n")
    check = jetson.release_check()
    assert check.status == WARN and "unrecognised" in check.detail
    monkeypatch.setattr(jetson, "DEVFREQ", fake_jetson / "none")
    monkeypatch.setattr(jetson, "CPUFREQ", fake_jetson / "none")
    assert jetson.clocks_check().status == WARN


@pytest.mark.parametrize("text, l4t, jetpack", [
    (ORIN_RELEASE, "36.4.3", "6.2"),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64", "35.4.1", "5.1.2"),
    ("# R36 (release), REVISION: 9.0, GCID: 1", "36.9.0", "6.x"),
    ("# R32 (release), REVISION: 7", "32.7.0", "4.x"),
])
def test_l4t_releases_map_to_jetpack(text, l4t, jetpack):
    assert jetson.parse_l4t(text) == l4t
    assert jetson.jetpack_for(l4t) == jetpack


def test_nvpmodel_output_is_parsed():
    assert jetson.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == ("MAXN_SUPER", "2")
    assert jetson.parse_nvpmodel("NVPM WARN: unknown\nNV Power Mode: 25W\n") == ("25W", None)
    assert jetson.parse_nvpmodel("") is None
