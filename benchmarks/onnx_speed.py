"""Classification speed and accuracy of one checkpoint: PyTorch vs onnxruntime fp32 vs onnxruntime int8 (issue 15).

    .venv/bin/python benchmarks/onnx_speed.py --checkpoint RUN_OR_CKPT --root ../shared/data/ferplus \
        [--threads 1,2] [--batch 64] [--int8-mode static] [--out benchmarks/out/onnx_speed]

Exports the checkpoint with `robustfer export` (fp32 and int8; static int8 calibrated on the first 256 FERPlus
train images), then on the FERPlus test split (3,137 images; `--limit N` for the first N):
- accuracy and mean-class accuracy of PyTorch, ONNX fp32 and ONNX int8;
- throughput in faces/s from uint8 48 x 48 faces to probabilities (preprocessing + forward, batches of
  --batch), with 1 and 2 threads (torch.set_num_threads / onnxruntime intra_op_num_threads); best of
  --repeats passes over --speed-images faces, so a busy machine's hiccups count less.
Writes OUT/onnx_speed.json and OUT/onnx_speed.md (the table) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robustfer.data import load_dataset
from robustfer.data.classes import canonical_name
from robustfer.infer.export import export_onnx
from robustfer.infer.onnx_model import OnnxClassifier
from robustfer.models.predict import predict_logits
from robustfer.train.checkpoint import load_trained


def accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    recalls = [float((pred[labels == c] == c).mean()) for c in range(k) if (labels == c).any()]
    return float((pred == labels).mean()), float(np.mean(recalls))


def faces_per_s(fn, faces: np.ndarray, repeats: int) -> float:
    fn(faces[:64])  # warm-up: thread pools, allocations
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(faces)
        best = min(best, time.perf_counter() - t)
    return len(faces) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", required=True, help="FERPlus folder")
    p.add_argument("--out", default="benchmarks/out/onnx_speed")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speed-images", type=int, default=2048, help="faces per timed pass (default 2048)")
    p.add_argument("--limit", type=int, help="first N test images only (a quick check of the script)")
    p.add_argument("--int8-mode", default="static", choices=("static", "dynamic"))
    p.add_argument("--calib", type=int, default=256)
    a = p.parse_args()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f32 = out / "model.onnx"
    rep = export_onnx(a.checkpoint, f32, int8=True, int8_mode=a.int8_mode, batch=64, calib=a.calib,
                      dataset="ferplus", root=a.root)
    print(f"exported {rep.checkpoint}: max |logits onnxruntime - PyTorch| {rep.max_abs_diff:.2e} on {rep.check_on}; "
          f"int8 ({a.int8_mode}) vs fp32: max {rep.int8['max_abs_diff']:.3f}, argmax agreement {rep.int8['argmax_agreement']:.1%}")

    model, spec, classes, cfg = load_trained(rep.checkpoint)
    data = load_dataset("ferplus", a.root, "test")
    n = min(a.limit or len(data), len(data))
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[canonical_name(data.classes[y])] for y in data.labels[:n]], np.int64)
    faces = np.array(data.images[:n])
    size, chans, norm = spec["size"], spec["channels"], spec["norm"]

    def torch_probs(x: np.ndarray) -> np.ndarray:
        return predict_logits(model, torch.from_numpy(x), size, chans, norm, batch_size=a.batch).softmax(1).numpy()

    engines = {"PyTorch": None, "ONNX fp32": f32, "ONNX int8": rep.int8["out"]}
    rows = {}
    threads = [int(t) for t in a.threads.split(",")]
    speed_faces = np.concatenate([faces] * -(-a.speed_images // n))[:a.speed_images]
    for name, path in engines.items():
        clf = OnnxClassifier(path, threads=threads[0]) if path else None
        probs = clf.predict_probs(faces, a.batch) if clf else torch_probs(faces)
        acc, mca = accuracy(probs.argmax(1), labels, len(classes))
        rows[name] = {"accuracy": acc, "mean_class_accuracy": mca, "faces_per_s": {}}
        for t in threads:
            if path:
                clf = OnnxClassifier(path, threads=t)
                fn = lambda x, c=clf: c.predict_probs(x, a.batch)  # noqa: E731
            else:
                torch.set_num_threads(t)
                fn = torch_probs
            rows[name]["faces_per_s"][t] = faces_per_s(fn, speed_faces, a.repeats)
        print(f"{name:10s} accuracy {acc:.4f}  mean-class {mca:.4f}  " +
              "  ".join(f"{t} thread{'s' if t > 1 else ''}: {v:,.0f} faces/s" for t, v in rows[name]["faces_per_s"].items()),
              flush=True)

    head = ["engine", "FERPlus test acc", "mean-class acc"] + [f"faces/s, {t} thr" for t in threads] + ["file MB"]
    sizes = {"PyTorch": None, "ONNX fp32": rep.int8["fp32_size_mb"], "ONNX int8": rep.int8["size_mb"]}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, f"{r['accuracy']:.2%}", f"{r['mean_class_accuracy']:.2%}"]
        cells += [f"{r['faces_per_s'][t]:,.0f}" for t in threads] + [f"{sizes[name]:.1f}" if sizes[name] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"{cfg.get('model')} / {cfg.get('method')} from {rep.checkpoint}; {n} FERPlus test images; batch {a.batch}; "
            f"int8 = {a.int8_mode}{' (calibrated on the first %d train images)' % a.calib if a.int8_mode == 'static' else ''}; "
            f"faces/s from uint8 {chans}x{size}x{size} faces to probabilities, best of {a.repeats} passes over "
            f"{len(speed_faces)} faces")
    table = "\n".join(lines) + "\n\n" + note + "\n"
    print("\n" + table)
    (out / "onnx_speed.md").write_text(table)
    (out / "onnx_speed.json").write_text(json.dumps({"checkpoint": str(rep.checkpoint), "images": n, "batch": a.batch,
                                                     "int8_mode": a.int8_mode, "rows": rows,
                                                     "export_max_abs_diff": rep.max_abs_diff,
                                                     "int8_vs_fp32": {k: v for k, v in rep.int8.items() if k != "out"}},
                                                    indent=2, default=str))


if __name__ == "__main__":
    main()
