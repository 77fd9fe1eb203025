"""Which install set (pyproject extra) a command needs, and the one-line error when it is missing.

``pip install dronseg-edge`` is the core: it runs inference on ONNX files and engines. Training and
export need the ``train`` and ``export`` extras (torch and friends). A command checks its extra before
importing anything heavy, so a core-only install says what to install instead of an ImportError
traceback; ``missing_module_error`` turns any other missing optional module, or one whose import fails
(a shared library missing), into the same kind of line.
"""

from __future__ import annotations

import importlib.util
import linecache
import re

from dronseg_edge.errors import BackendUnavailable, docs_url

# The modules each extra must provide for its commands to finish (import names; INSTALL_FOR_MODULE has
# their pip names). Only what a run cannot do without: tensorboard is left out, training logs without it.
REQUIRED: dict[str, tuple[str, ...]] = {"train": ("torch", "torchvision", "matplotlib", "iterstrat"),
                                        "export": ("torch", "torchvision", "onnx", "onnxslim")}

JETSON_WHEELS = docs_url("jetson.md", "nvidias-torch-and-onnx-runtime-wheels")
JETSON_TORCH = f"on a Jetson install NVIDIA's torch and torchvision wheels first ({JETSON_WHEELS})"
JETSON_DOCS = docs_url("jetson.md", "step-by-step-on-jetpack-6")

# A missing top-level module -> (pip name, the install that brings it).
INSTALL_FOR_MODULE: dict[str, tuple[str, str]] = {
    "torch": ("torch", f"pip install 'dronseg-edge[train]' (or [export]); {JETSON_TORCH}"),
    "torchvision": ("torchvision", f"pip install 'dronseg-edge[train]' (or [export]); {JETSON_TORCH}"),
    "PIL": ("pillow", "pip install pillow (a dependency of the core, missing from this environment)"),
    "matplotlib": ("matplotlib", "pip install 'dronseg-edge[train]'"),
    "iterstrat": ("iterative-stratification", "pip install 'dronseg-edge[train]'"),
    "tensorboard": ("tensorboard", "pip install 'dronseg-edge[train]'"),
    "onnx": ("onnx", "pip install 'dronseg-edge[export]'"),
    "onnxslim": ("onnxslim", "pip install 'dronseg-edge[export]'"),
    "onnxscript": ("onnxscript", "pip install onnxscript"),
    "onnxruntime": ("onnxruntime", "pip install 'dronseg-edge[ort]' (CPU) or 'dronseg-edge[ort-gpu]' (CUDA, x86-64); "
                    f"on a Jetson NVIDIA's onnxruntime-gpu wheel ({JETSON_WHEELS})"),
    "cv2": ("OpenCV", "pip install 'dronseg-edge[opencv]'; on a Jetson use JetPack's OpenCV (apt package libopencv-python) "
            f"from a venv made with --system-site-packages ({JETSON_DOCS})"),
    "av": ("av (PyAV)", "pip install 'dronseg-edge[video]'"),
    "tensorrt": ("tensorrt", "pip install 'dronseg-edge[trt]' (x86-64); on a Jetson TensorRT comes with JetPack, "
                 f"seen from a venv made with --system-site-packages ({JETSON_DOCS})"),
    "cuda": ("cuda-bindings", "pip install 'dronseg-edge[trt]'; on JetPack 6 pip install 'cuda-bindings==12.*'"),
    "pynvml": ("nvidia-ml-py", "pip install 'dronseg-edge[nvml]'"),
}


# (module, words in its load error, the fix that error calls for), first match wins.
_LOAD_FIXES = (
    ("cv2", "libgl", "opencv-python needs a desktop's graphics libraries: pip uninstall opencv-python && pip install "
                     "opencv-python-headless (or apt-get install libgl1)"),
    # JetPack's OpenCV is built against numpy 1.x, and a pip install may have brought numpy 2.
    ("cv2", "numpy", "this OpenCV was built against numpy 1.x: pip install 'numpy<2'"),
    ("matplotlib", "numpy", "this matplotlib was built against numpy 1.x: pip install 'matplotlib>=3.8.4' (or 'numpy<2')"),
)
_IMPORT_LINE = re.compile(r"\s*(?:import|from)\s+([A-Za-z_]\w*)")


def missing_modules(extra: str) -> list[str]:
    """pip names of the ``extra``'s required modules that this Python cannot import (found without importing)."""
    return [INSTALL_FOR_MODULE[module][0] for module in REQUIRED[extra] if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package counts as missing
        return False


def require_extra(extra: str, command: str) -> None:
    """Raise BackendUnavailable (one line: what is missing, what to install) unless ``extra`` is installed."""
    missing = missing_modules(extra)
    if missing:
        hint = f"; {JETSON_TORCH}" if {"torch", "torchvision"} & set(missing) else ""
        raise BackendUnavailable(f"`dronseg-edge {command}` needs the {extra} extra, and {', '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} not installed: "
                                 f"pip install 'dronseg-edge[{extra}]'{hint}")


def missing_module_error(exc: ImportError | OSError) -> BackendUnavailable | None:
    """The one-line error for an optional module this install lacks, or has but cannot load (a shared
    library missing: opencv-python without libGL, a Jetson's torch without its libcudnn, which raises
    OSError); None for anything else (a bug, or a fault of ours)."""
    top = _failed_import(exc)
    if top is None:
        return None
    pip_name, install = INSTALL_FOR_MODULE[top]
    if isinstance(exc, ModuleNotFoundError):
        return BackendUnavailable(f"{pip_name} is not installed, and this needs it: {install}")
    reason = " ".join(str(exc).split())[:200]
    fix = next((fix for module, words, fix in _LOAD_FIXES if module == top and words in reason.lower()),
               f"reinstall it: {install}")
    return BackendUnavailable(f"{pip_name} is installed but cannot be loaded ({reason}): {fix}")


def _failed_import(exc: ImportError | OSError) -> str | None:
    """The optional module (INSTALL_FOR_MODULE's name) whose import ``exc`` broke off: the one an ImportError
    names, else the one whose module-level code (``<module>``: it runs only while the module is imported)
    raised it, or whose import statement an ImportError came out of (a C extension's own init fails
    without a Python frame or a name: an OpenCV built against numpy 1.x); None when the error came from
    elsewhere."""
    if isinstance(exc, ImportError):
        top = (exc.name or "").split(".")[0]
        if top in INSTALL_FOR_MODULE:
            return top
    found, tb = None, exc.__traceback__
    while tb is not None:  # the innermost such module: torchvision's import fails where it imports torch
        code = tb.tb_frame.f_code
        top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        importing = _IMPORT_LINE.match(linecache.getline(code.co_filename, tb.tb_lineno)) if isinstance(exc, ImportError) else None
        if code.co_name == "<module>" and top in INSTALL_FOR_MODULE:
            found = top
        elif importing and importing.group(1) in INSTALL_FOR_MODULE:
            found = importing.group(1)
        tb = tb.tb_next
    return found
