"""`make gpu-check`: every GPU path of the package proven in one command, in at most 5 minutes on an H200.

``python -m benchmarks.gpu_check`` (__main__.py) runs the stages of plan.py, each in its own
subprocess under its own timeout (runner.py), and writes summary.json and summary.md (summary.py).
Without a GPU the same stages run at tiny sizes on the CPU, and CUDA-only parts say "no CUDA".
"""
