"""Helpers for the bench tests: the suite's one fake backend (testkit.FakeBackend) with a known latency.

Not a conftest.py on purpose: shared helpers live in importable modules (see tests/testkit.py).
"""

from __future__ import annotations

from testkit import FakeBackend, requires_cuda  # noqa: F401  (re-exported for the bench tests)


def sleep_backend(delay_s: float = 0.0, dynamic: bool = True, batch: int | None = None,
                  input_size: tuple[int, int] = (32, 16)) -> FakeBackend:
    """A CPU backend that returns zero logits after sleeping ``delay_s``; ``calls`` counts its runs."""
    return FakeBackend("fake.model", "cpu", delay_s=delay_s, dynamic=dynamic, batch=batch,
                       input_size=input_size, provider="sleep")
