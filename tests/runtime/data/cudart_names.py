"""Write the public names of ``cuda.bindings.runtime`` as stored next to this script.

Run with a Python that can import the cuda-bindings version to record (no GPU needed: importing the
module and reading docstrings calls no CUDA function), e.g. from an unpacked wheel:

    pip download --no-deps -d /tmp/cb cuda-bindings==12.9.10 cuda-pathfinder
    (unzip both wheels into /tmp/cb/site)
    PYTHONPATH=/tmp/cb/site python tests/runtime/data/cudart_names.py > tests/runtime/data/cuda-bindings-12.9.10-runtime.txt

One entry a line: a function as the first line of its docstring, which is its signature
(``cudaMemcpyAsync(dst, src, size_t count, kind: cudaMemcpyKind, stream)``); any other name
as itself; each enum member as ``Enum.member``. Lines starting with # are comments.
"""

from __future__ import annotations

import sys


def main() -> None:
    import cuda.bindings
    from cuda.bindings import runtime as cudart

    lines = set()
    for name in dir(cudart):
        if name.startswith("_"):
            continue
        obj = getattr(cudart, name)
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        if callable(obj) and not isinstance(obj, type) and doc and doc[0].startswith(name + "("):
            lines.add(doc[0].strip())
        else:
            lines.add(name)
        if isinstance(obj, type) and getattr(obj, "__members__", None):
            lines.update(f"{name}.{member}" for member in obj.__members__)
    print(f"# cuda.bindings.runtime of cuda-bindings {cuda.bindings.__version__} (the PyPI wheel, built from "
          f"NVIDIA/cuda-python), written by tests/runtime/data/cudart_names.py with Python {sys.version.split()[0]}")
    print("\n".join(sorted(lines)))


if __name__ == "__main__":
    main()
