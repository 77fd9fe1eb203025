"""Fast segmentation of videos, image folders, cameras and streams on any backend.

``Segmenter(model).predict(frame)`` / ``.stream(source)`` is the Python API; ``run_inference``
adds the threaded writers (overlay video, mask PNGs, stats) that ``dronseg-edge infer`` uses.
The names below are imported when first used, so that the CLI reads ``RunOptions`` without OpenCV.
"""

import importlib
import sys
import types

_WHERE = {"RunOptions": "dronseg_edge.pipeline.run_options", "RunSummary": "dronseg_edge.pipeline.run_state",
          "run_inference": "dronseg_edge.pipeline.run", "Result": "dronseg_edge.pipeline.segmenter",
          "Segmenter": "dronseg_edge.pipeline.segmenter", "open_source": "dronseg_edge.pipeline.open_source",
          "FrameRecord": "dronseg_edge.pipeline.sources", "Source": "dronseg_edge.pipeline.sources"}
__all__ = sorted(_WHERE)


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _WHERE:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_WHERE[name]), name)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:  # help() and a notebook's completion read dir(): the names not yet used too
        return sorted({*super().__dir__(), *_WHERE})

    def __setattr__(self, name: str, value) -> None:
        # open_source.py is named like its function: the import system binds a loaded submodule to the
        # package's attribute of its name, which must stay the function.
        if not (name in _WHERE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
