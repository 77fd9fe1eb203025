"""The oldest torch that may unpickle a ``.pt`` file, read from a version string: no torch import.

``checkpoint.check_safe_torch`` refuses to load on an older torch; ``dronseg-edge checks`` says so
beforehand from the installed torch's metadata (a Jetson's NVIDIA wheel may be older), so both read
the floor from here.
"""

from __future__ import annotations

import re

# The oldest torch whose torch.load(weights_only=True) has no published bypass: <= 2.5.1 runs code
# (GHSA-53q9-r3pm-6pq6, CVE-2025-32434, fixed in 2.6.0), < 2.10.0 corrupts memory towards code
# execution (GHSA-63cw-57p8-fm3p, CVE-2026-24747, fixed in 2.10.0). pyproject's train/export floor.
SAFE_TORCH = (2, 10)
SAFE_TORCH_ADVISORIES = "GHSA-63cw-57p8-fm3p / CVE-2026-24747, GHSA-53q9-r3pm-6pq6 / CVE-2025-32434"


def torch_release(version: str) -> tuple[int, ...]:
    """(2, 5, 0) for '2.5.0a0+872d972e41.nv24.08' (NVIDIA's Jetson wheels) or '2.14.1+cu130'."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("a")[0].split("rc")[0])[:3])


def unsafe_torch_reason(version: str, what: str) -> str | None:
    """Why torch ``version`` must not unpickle ``what`` (one line naming the fix), or None when it may."""
    if torch_release(version)[:2] >= SAFE_TORCH:
        return None
    floor = ".".join(map(str, SAFE_TORCH))
    return (f"torch {version} cannot load {what} safely: its weights_only=True loading can be made to run code "
            f"({SAFE_TORCH_ADVISORIES}); install torch >= {floor}, or run an exported .onnx/.engine file, which "
            "needs no torch")
