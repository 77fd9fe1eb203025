"""Fast segmentation of videos, image folders, cameras and streams on any backend.

``Segmenter(model).predict(frame)`` / ``.stream(source)`` is the Python API; ``run_inference``
adds the threaded writers (overlay video, mask PNGs, stats) that ``dronseg-edge infer`` uses.
The names below are imported when first used, so that the CLI reads ``RunOptions`` without OpenCV.
"""

import importlib

_WHERE = {"RunOptions": "dronseg_edge.pipeline.run_options", "RunSummary": "dronseg_edge.pipeline.run_state",
          "run_inference": "dronseg_edge.pipeline.run", "Result": "dronseg_edge.pipeline.segmenter",
          "Segmenter": "dronseg_edge.pipeline.segmenter", "open_source": "dronseg_edge.pipeline.source_spec",
          "FrameRecord": "dronseg_edge.pipeline.sources", "Source": "dronseg_edge.pipeline.sources"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dronseg_edge.pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:  # help() and a notebook's completion read dir(): the names not yet used too
    return sorted({*globals(), *_WHERE})
