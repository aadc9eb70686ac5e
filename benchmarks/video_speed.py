"""Video frames/s of `robustfer predict` with face detection at 640 x 480, one face (issue 15).

    .venv/bin/python benchmarks/video_speed.py --root ../shared/data/ferplus [--frames 300] \
        [--detectors mtcnn retinaface:max_side=320] [--every 1,2] [--threads 2] [--onnx F.onnx] [--out benchmarks/out/video_speed]

Writes a synthetic clip (OUT/clip.mp4, mp4v): a 640 x 480 grey-gradient frame with one FERPlus test face pasted
at 160 px, drifting 2 px per frame, so the detector has a face of the size a webcam gives. Then times the whole
`predict_video` path (decode, detect, crop + level, classify in batches, track, emit the JSON lines to /dev/null)
of the shipped model (or --checkpoint / --onnx) per detector and --every, best of --repeats passes. frames/s =
frames of the clip / wall seconds, so with --every 2 half the frames are only decoded. Prints and writes
OUT/video_speed.md and .json.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def make_clip(root: Path, dst: Path, frames: int, size=(640, 480), face_px: int = 160) -> Path:
    files = sorted((root / "FER2013Test").glob("*.png"))
    face = None
    from robustfer.infer.detect import detect
    for f in files[:50]:   # the first test face the default detector finds at this size
        g = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (face_px, face_px), interpolation=cv2.INTER_CUBIC)
        if len(detect(g)) == 1:
            face = g
            break
    if face is None:
        raise SystemExit("no FERPlus test face among the first 50 is detected at this size")
    w, h = size
    bg = np.tile(np.linspace(90, 200, w, dtype=np.float32)[None, :], (h, 1)).astype(np.uint8)
    vw = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for i in range(frames):
        img = bg.copy()
        x = 120 + (2 * i) % 300
        img[150:150 + face_px, x:x + face_px] = face
        vw.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    vw.release()
    return dst


def make_detector(spec: str):
    """'name' or 'name:key=value,...' (e.g. retinaface:max_side=320) -> a detector instance."""
    from robustfer.infer.detect import create_detector

    name, _, opts = spec.partition(":")
    kw = {}
    for item in filter(None, opts.split(",")):
        k, v = item.split("=")
        kw[k] = float(v) if "." in v else int(v)
    return create_detector(name, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--detectors", nargs="+", default=["mtcnn", "haar"])
    ap.add_argument("--every", default="1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--onnx")
    ap.add_argument("--out", default="benchmarks/out/video_speed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    from robustfer.infer.predict import Emitter, Predictor, predict_video

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = make_clip(Path(a.root), out / "clip.mp4", a.frames)
    rows = []
    for det in a.detectors:
        pred = Predictor(checkpoint=a.checkpoint, onnx=a.onnx, detector=make_detector(det))
        for every in (int(v) for v in a.every.split(",")):
            best, faces = float("inf"), 0
            for _ in range(a.repeats):
                sink = io.StringIO()
                t = time.perf_counter()
                predict_video(pred, clip, Path(clip.name), Emitter(True, sink), None, every=every, batch=a.batch,
                              quiet=True)
                best = min(best, time.perf_counter() - t)
                lines = [json.loads(s) for s in sink.getvalue().splitlines()]
                faces = sum(1 for r in lines if r["box"] is not None)
            processed = len(range(0, a.frames, every))
            rows.append({"detector": det, "every": every, "frames": a.frames, "processed": processed,
                         "frames_with_face": faces, "wall_s": round(best, 2), "fps": round(a.frames / best, 1),
                         "model": "onnx" if a.onnx else "pytorch", "threads": a.threads})
            print(rows[-1], flush=True)
    md = ["| detector | every | model | frames/s (640x480) | frames classified | faces found | wall s |",
          "|---|---:|---|---:|---:|---:|---:|"]
    md += [f"| {r['detector']} | {r['every']} | {r['model']} | {r['fps']} | {r['processed']} | {r['frames_with_face']} | "
           f"{r['wall_s']} |" for r in rows]
    (out / "video_speed.md").write_text("\n".join(md) + "\n")
    (out / "video_speed.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
