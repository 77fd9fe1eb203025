"""The packages whose names load on first use (dronseg_edge, pipeline, export, bench) still list them."""

from __future__ import annotations

import subprocess
import sys


def test_dir_and_help_show_the_names_not_yet_imported():
    # help(dronseg_edge.export) showed no class and no function but __getattr__, and a notebook's completion none
    code = ("import importlib, pydoc\n"
            "for name in ('dronseg_edge', 'dronseg_edge.pipeline', 'dronseg_edge.export', 'dronseg_edge.bench'):\n"
            "    module = importlib.import_module(name)\n"
            "    assert set(module.__all__) <= set(dir(module)), name\n"
            "assert 'export_artifact(checkpoint' in pydoc.render_doc('dronseg_edge.export', renderer=pydoc.plaintext)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)  # fresh: nothing used yet
    assert result.returncode == 0, result.stderr


def test_a_name_none_of_them_holds_is_an_attribute_error():
    # hasattr() and `from dronseg_edge.export import typo` must fail, not give None
    import importlib

    import pytest

    for name in ("dronseg_edge", "dronseg_edge.export", "dronseg_edge.bench"):
        with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'typo'"):
            importlib.import_module(name).typo
