"""The check machinery (statuses, guarded imports, crashing groups) and the system/folder checks."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from dronseg_edge import machine
from dronseg_edge.checks import FAIL, OK, WARN, Check, run_checks, summary, system
from dronseg_edge.checks import base


def test_a_check_has_one_of_three_statuses_and_a_dict_form():
    check = Check("python", OK, "3.11")
    assert check.to_dict() == {"name": "python", "status": "OK", "detail": "3.11"}
    assert check.line(8) == "OK    python   3.11"
    with pytest.raises(ValueError):
        Check("python", "MAYBE", "")


def test_facts_stand_beside_the_line_in_the_dict_form_and_cannot_replace_it():
    check = Check("dep numpy", OK, "2.2.6 (core: >=1.24)", {"installed": "2.2.6", "required": {"core": ">=1.24"}})
    assert check.to_dict() == {"name": "dep numpy", "status": "OK", "detail": "2.2.6 (core: >=1.24)",
                               "installed": "2.2.6", "required": {"core": ">=1.24"}}
    with pytest.raises(ValueError, match="facts may not be named"):
        Check("x", OK, "", {"status": "FAIL"})


def test_a_missing_module_is_a_reason_not_an_exception(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees where it is absent
    assert base.import_optional("onnxruntime") == (None, "not installed")
    assert base.import_optional("no_such_module_here") == (None, "not installed")


def test_a_module_that_fails_to_load_its_library_is_a_reason(tmp_path, monkeypatch):
    (tmp_path / "broken_native_lib.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    (tmp_path / "needs_a_missing_dep.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module, why = base.import_optional("broken_native_lib")
    assert module is None and why.startswith("cannot be imported: OSError: libnvinfer.so.10")
    module, why = base.import_optional("needs_a_missing_dep")
    assert module is None and "no_such_dependency_here" in why


def test_a_crashing_group_becomes_one_warn_line_and_the_others_still_run(monkeypatch):
    def crashing():
        yield Check("first", OK, "fine")
        raise KeyError("boom")

    monkeypatch.setattr("dronseg_edge.checks.groups", lambda: [("broken", crashing), ("system", lambda: system.system_checks())])
    monkeypatch.setattr(system, "system_checks", lambda: iter([Check("python", OK, "3.11")]))
    results = run_checks()
    assert [c.name for c in results[:2]] == ["first", "broken"]
    assert results[1].status == WARN and "KeyError" in results[1].detail and "bug" in results[1].detail
    # The verdict comes last: nothing in these two groups can run a model.
    assert [c.name for c in results[2:]] == ["python", "backends"] and results[-1].status == FAIL
    assert summary(results) == "2 OK, 1 WARN, 1 FAIL"


def test_system_lines_name_the_version_python_and_machine():
    from dronseg_edge import __version__

    by_name = {c.name: c for c in system.system_checks()}
    assert by_name["dronseg-edge"].detail.startswith(__version__)
    assert by_name["dronseg-edge"].facts == {"version": __version__, "path": str(system.PACKAGE_FOLDER)}
    assert by_name["python"].status == OK and sys.executable in by_name["python"].detail
    assert by_name["python"].facts["version"] == platform.python_version()
    assert by_name["os"].status == OK and by_name["os"].facts["machine"] == platform.machine()
    assert by_name["cpu"].facts["logical_cores"] == os.cpu_count() and by_name["cpu"].facts["model"]
    assert by_name["ram"].facts["total_gib"] > 0 and by_name["disk"].facts["free_gib"] >= 0


def fake_resources(monkeypatch, *, available_gib=20.0, free_gib=50.0, install_elsewhere=False):
    monkeypatch.setattr(machine, "cpu_model", lambda: "Cortex-A78AE")
    monkeypatch.setattr(machine, "cpu_cores", lambda: (12, 4))
    monkeypatch.setattr(machine, "memory", lambda: machine.Memory(int(61.4 * machine.GIB), int(available_gib * machine.GIB)))

    def disk(folder):
        device = 2 if install_elsewhere and folder == system.PACKAGE_FOLDER else 1
        return machine.Disk(folder, int(free_gib * machine.GIB), 100 * machine.GIB, device)

    monkeypatch.setattr(machine, "disk", disk)
    return {c.name: c for c in system.system_checks()}


def test_cpu_ram_and_disk_lines_carry_their_values(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    lines = fake_resources(monkeypatch)
    assert lines["cpu"].detail == "Cortex-A78AE, 12 logical cores, 4 usable by this process"
    assert lines["cpu"].facts == {"model": "Cortex-A78AE", "logical_cores": 12, "usable_cores": 4}
    assert lines["ram"] == Check("ram", OK, "61.4 GiB, 20.0 GiB available", {"total_gib": 61.4, "available_gib": 20.0})
    assert lines["disk"].status == OK and lines["disk"].facts == {"path": str(tmp_path), "free_gib": 50.0, "total_gib": 100.0}
    assert "disk (install)" not in lines  # the same file system: one line
    assert "disk (install)" in fake_resources(monkeypatch, install_elsewhere=True)


def test_little_memory_or_disk_left_warns(monkeypatch):
    lines = fake_resources(monkeypatch, available_gib=0.4, free_gib=0.2)
    assert lines["ram"].status == WARN and "only 0.4 GiB available" in lines["ram"].detail
    assert lines["disk"].status == WARN and "0.2 GiB free" in lines["disk"].detail


def test_unreadable_memory_warns(monkeypatch):
    monkeypatch.setattr(machine, "memory", lambda: None)
    check = system.memory_check()
    assert (check.status, check.detail) == (WARN, "unreadable (no /proc/meminfo, no sysconf)")


def test_an_old_python_fails(monkeypatch):
    monkeypatch.setattr(system, "MIN_PYTHON", (99, 0))
    check = system.python_check()
    assert check.status == FAIL and ">= 99.0" in check.detail


def test_writable_folders_and_the_ones_that_are_not(tmp_path, monkeypatch):
    assert system.writable_check("runs", tmp_path, "x").status == OK
    missing = tmp_path / "a" / "b"
    check = system.writable_check("runs", missing, "x")
    assert check.status == OK and "can be created" in check.detail and not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    check = system.writable_check("runs", blocker / "runs", "pass --out")
    assert check.status == WARN and "is a file" in check.detail and "pass --out" in check.detail

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(system.machine.tempfile, "TemporaryFile", refuse)
    check = system.writable_check("cache folder", tmp_path, "set XDG_CACHE_HOME")
    assert check.status == WARN and "not writable (Permission denied)" in check.detail


def test_the_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert machine.cache_root() == tmp_path / "dronseg-edge"
    monkeypatch.chdir(tmp_path)
    checks = {c.name: c for c in system.folder_checks()}
    assert checks["cache folder"].status == OK and str(tmp_path / "dronseg-edge") in checks["cache folder"].detail
    assert str(tmp_path / "runs") in checks["runs folder"].detail


def test_a_user_id_without_a_home_gets_a_warning_naming_xdg_cache_home(tmp_path, monkeypatch):
    # HOME unset for a user id with no passwd entry (a container's bare uid): "folders could not be checked
    # (RuntimeError: Could not determine home directory.); please report this as a bug", and no runs-folder line
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.chdir(tmp_path)
    checks = {c.name: c for c in system.folder_checks()}
    assert checks["cache folder"].status == WARN and "HOME is unset" in checks["cache folder"].detail
    assert "set XDG_CACHE_HOME (or HOME) to a writable folder" in checks["cache folder"].detail
    assert checks["runs folder"].status == OK


def test_a_deleted_current_folder_is_a_warning_not_a_bug(tmp_path, monkeypatch):
    # `checks` run in a folder another process removed: "system could not be checked (FileNotFoundError ...);
    # please report this as a bug" (its disk lines lost), and the same for "folders"
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    disk = {c.name: c for c in system.disk_checks()}
    runs = {c.name: c for c in system.folder_checks()}["runs folder"]
    assert disk["disk"].status == WARN and disk["disk"].detail == "the current folder was deleted: cd to one that exists"
    assert runs.status == WARN and runs.detail.startswith("the current folder was deleted: cd to one that exists; ")
