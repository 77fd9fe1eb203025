"""dronseg-edge: train, export, run and benchmark drone-image segmentation (12 AeroScapes classes).

``from dronseg_edge import Segmenter`` is the inference API (imported lazily, so importing the
package stays cheap).
"""

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    if name == "Segmenter":
        from dronseg_edge.pipeline.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'dronseg_edge' has no attribute {name!r}")


def __dir__() -> list[str]:  # help() and a notebook's completion read dir()
    return sorted({*globals(), *__all__})
