"""One line of ``dronseg-edge checks``: a name, a status and what was found, or how to fix it.

Statuses: OK (works), WARN (missing or limited, but the package still runs: an optional library,
a GPU provider that falls back to the CPU), FAIL (something the package needs is broken).
``facts`` carry what the line says as values (versions, sizes, names) for ``checks --json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from dronseg_edge.machine import first_line, import_optional  # noqa: F401 (the checks take them from here)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
STATUSES = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    facts: Mapping[str, Any] = field(default_factory=dict, hash=False)  # JSON values: str, numbers, bool, None, lists, dicts

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r}: status {self.status!r} is not one of {STATUSES}")
        clash = {"name", "status", "detail"} & set(self.facts)
        if clash:
            raise ValueError(f"check {self.name!r}: facts may not be named {sorted(clash)}")

    def to_dict(self) -> dict[str, Any]:
        """{name, status, detail} and the facts beside them, e.g. {..., "installed": "2.2.6", "required": ">=1.24"}."""
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.facts}

    def line(self, width: int) -> str:
        return f"{self.status:<5} {self.name:<{width}} {self.detail}"
