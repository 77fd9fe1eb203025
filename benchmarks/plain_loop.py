"""The loop a user writes by hand instead of `dronseg-edge infer`: OpenCV + ONNX Runtime, one thread.

The yardstick of benchmarks/pipeline.py --vs-plain-loop (the edge-inference issue: `dronseg-edge
infer` must beat it by 1.3x). Deliberately what a competent user writes in 30 lines, nothing
clever: decode, shrink the uint8 frame with INTER_AREA, normalise, run, argmax, nearest resize
back, colour with a LUT, blend, write mp4v. ONNX Runtime keeps its default intra-op threads (one
per core), as a user's session would. Prints one JSON line: frames, wall seconds, ms per stage.

    python benchmarks/plain_loop.py model.onnx clip.mp4 out.mp4
"""

import json
import os
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
PALETTE = [(0, 0, 0), (192, 128, 128), (0, 128, 0), (128, 128, 128), (128, 0, 0), (0, 0, 128),
           (192, 0, 128), (192, 0, 0), (192, 128, 0), (0, 64, 0), (128, 128, 0), (0, 128, 128)]


def main(model: str, video: str, out: str) -> None:
    if not os.path.isfile(model):
        sys.exit(f"error: {model}: no such file")
    start = time.perf_counter()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    _, _, h, w = session.get_inputs()[0].shape
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:len(PALETTE), 0] = np.array(PALETTE, np.uint8)[:, ::-1]
    cap = cv2.VideoCapture(video)
    writer, frames, ms = None, 0, dict.fromkeys(("decode", "preprocess", "inference", "postprocess", "write"), 0.0)
    while True:
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        t1 = time.perf_counter()
        x = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        x = ((x.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
        t2 = time.perf_counter()
        logits = session.run(None, {name: np.ascontiguousarray(x)})[0][0]
        t3 = time.perf_counter()
        mask = cv2.resize(logits.argmax(0).astype(np.uint8), (frame.shape[1], frame.shape[0]),
                          interpolation=cv2.INTER_NEAREST)
        overlay = cv2.addWeighted(frame, 0.5, cv2.LUT(cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR), lut), 0.5, 0)
        t4 = time.perf_counter()
        if writer is None:
            fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
        writer.write(overlay)
        t5 = time.perf_counter()
        for key, a, b in (("decode", t0, t1), ("preprocess", t1, t2), ("inference", t2, t3),
                          ("postprocess", t3, t4), ("write", t4, t5)):
            ms[key] += (b - a) * 1e3
        frames += 1
    cap.release()
    if writer is None:  # no frame: a failed run, not a fast one
        sys.exit(f"error: {video}: no frame could be read (no such file, or not a video OpenCV decodes)")
    writer.release()
    per_frame = {key: round(value / max(frames, 1), 3) for key, value in ms.items()}
    print(json.dumps({"frames": frames, "seconds": round(time.perf_counter() - start, 3), "ms_per_frame": per_frame,
                      "ort_intra_op_threads": "onnxruntime default (one per core)", "decoder_threads": "OpenCV default",
                      "writer_threads": 0}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python benchmarks/plain_loop.py MODEL.onnx VIDEO OUT.mp4")
    main(*sys.argv[1:])
