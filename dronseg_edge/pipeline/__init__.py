"""Fast segmentation of videos, image folders, cameras and streams on any backend.

``Segmenter(model).predict(frame)`` / ``.stream(source)`` is the Python API; ``run_inference``
adds the threaded writers (overlay video, mask PNGs, stats) that ``dronseg-edge infer`` uses.
"""

from dronseg_edge.pipeline.run import RunOptions, RunSummary, run_inference
from dronseg_edge.pipeline.segmenter import Result, Segmenter
from dronseg_edge.pipeline.open_source import open_source
from dronseg_edge.pipeline.sources import FrameRecord, Source

__all__ = ["FrameRecord", "Result", "RunOptions", "RunSummary", "Segmenter", "Source", "open_source", "run_inference"]
