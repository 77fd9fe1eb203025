"""Every dependency of dronseg-edge, its installed version against the range the package requires.

The ranges come from the installed distribution's own metadata (what pip was told), never from a copied
list, with the markers evaluated for this machine (on aarch64 the core asks for numpy < 2: JetPack's
OpenCV is built against numpy 1.x). A core requirement missing or out of range is a WARN (each library's
own checks say what it breaks); an extra's package that is not installed is fine.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Iterator

from dronseg_edge.checks.base import OK, WARN, Check, first_line
from dronseg_edge.checks.system import PACKAGE_FOLDER
from dronseg_edge.checks.torch_checks import JETSON_TORCH
from dronseg_edge.machine import installed_version, is_jetson

DISTRIBUTION = "dronseg-edge"
CORE = "core"
# Distributions that install the module a requirement names, and so stand in for it.
STAND_INS = {"onnxruntime": ("onnxruntime-gpu",),
             "opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")}


def dependency_checks() -> Iterator[Check]:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        yield Check("dependencies", WARN, f"{DISTRIBUTION} is not installed (run from a source tree?): the ranges it "
                                          "requires are unknown; pip install -e . in the checkout", {"source": None})
        return
    try:
        from packaging.requirements import Requirement  # noqa: F401 (only its presence is checked here)
    except ImportError as exc:
        yield Check("dependencies", WARN, f"cannot judge versions without packaging ({first_line(exc)}): pip install packaging")
        return
    yield source_check(dist)
    for name, ranges in required_ranges(dist).items():
        yield dependency_check(name, ranges)


def source_check(dist) -> Check:
    """Where the ranges were read, and whether that install is the package running now."""
    origin = _editable_folder(dist)
    where = f"editable install of {origin}" if origin else str(Path(dist.locate_file("")).resolve())
    facts = {"source": where, "version": dist.version}
    installed_package = (origin / "dronseg_edge") if origin else Path(dist.locate_file("dronseg_edge")).resolve()
    if installed_package != PACKAGE_FOLDER:
        return Check("dependencies", WARN, f"read from {DISTRIBUTION} {dist.version} ({where}), but the package running "
                                           f"is {PACKAGE_FOLDER}: its ranges may differ; pip install the checkout you run", facts)
    stale = "; an editable install keeps the ranges of its last pip install" if origin else ""
    return Check("dependencies", OK, f"ranges from {DISTRIBUTION} {dist.version} ({where}){stale}", facts)


def _editable_folder(dist) -> Path | None:
    """The source folder of an editable install (PEP 610's direct_url.json), else None."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        return None
    url = direct.get("url", "")
    if direct.get("dir_info", {}).get("editable") and url.startswith("file://"):
        return Path(url.removeprefix("file://")).resolve()
    return None


def required_ranges(dist) -> dict[str, dict[str, str]]:
    """{distribution: {"core" or extra: specifier}} for the requirements that apply to this machine, core first.

    A requirement belongs to the core when its marker holds without an extra; otherwise to each extra
    whose name makes it hold ('onnxruntime-gpu>=1.17; platform_machine == "x86_64" and extra == "ort-gpu"').
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    # Not `dev`: test tools, and its setuptools floor would warn in every venv of Python <= 3.11 (setuptools 65).
    extras = [extra for extra in dist.metadata.get_all("Provides-Extra") or [] if extra != "dev"]
    table: dict[str, dict[str, str]] = {}
    for text in dist.requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": ""}):
            places = [CORE]
        else:
            places = [extra for extra in extras if marker.evaluate({"extra": extra})]
        for place in places:
            table.setdefault(canonicalize_name(requirement.name), {})[place] = str(requirement.specifier)
    return dict(sorted(table.items(), key=lambda item: (CORE not in item[1], item[0])))


def meets(version: str, specifier: str) -> bool | None:
    """Whether ``version`` is in ``specifier`` (pre-releases count: NVIDIA's torch is '2.5.0a0+...'); None
    for a version packaging cannot read."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:  # parsed here: from packaging 26 on, contains() says False for a version it cannot read
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return None


def dependency_check(name: str, ranges: dict[str, str]) -> Check:
    """One row: ``dep numpy  2.2.6 (core: >=1.24)``; facts {package, installed, required, satisfied}."""
    version, provider = installed_version(name), name
    if version is None:  # a stand-in installing the same module (onnxruntime-gpu for onnxruntime)
        provider, version = next(((alt, v) for alt in STAND_INS.get(name, ()) if (v := installed_version(alt))), (name, None))
    needs = "; ".join(f"{place}: {spec or 'any'}" for place, spec in ranges.items())
    facts = {"package": name, "installed": version, "required": dict(ranges), "satisfied": None}
    via = f" from {provider}" if provider != name else ""
    if version is None:
        if CORE in ranges:
            return Check(f"dep {name}", WARN, f"not installed ({needs}): pip install '{name}{ranges[CORE]}'", facts)
        return Check(f"dep {name}", OK, f"not installed ({needs})", facts)
    verdicts = {place: meets(version, spec) for place, spec in ranges.items()}
    facts["satisfied"] = verdicts[CORE] if CORE in verdicts else any(verdicts.values())
    if facts["satisfied"]:
        return Check(f"dep {name}", OK, f"{version}{via} ({needs})", facts)
    if None in verdicts.values():
        return Check(f"dep {name}", WARN, f"{version}{via} is not a version pip can compare ({needs})", facts)
    wanted = ranges[CORE] if CORE in ranges else next(iter(ranges.values()))
    fix = f"pip install '{name}{wanted}'"
    if name in ("torch", "torchvision") and is_jetson():  # pip's aarch64 torch would replace NVIDIA's: CPU-only
        fix = f"NVIDIA's wheels for this JetPack, not pip's (CPU-only here): {JETSON_TORCH}"
    return Check(f"dep {name}", WARN, f"{version}{via} is outside the range required ({needs}): {fix}", facts)
