"""Predict expressions on photos, folders and videos: `Predictor` (Python API) and `robustfer predict` (CLI).

    from robustfer import Predictor
    p = Predictor(checkpoint="runs/x/best.pt")          # or Predictor(onnx="model.onnx"): onnxruntime, no torch model code
    for face in p.predict("photo.jpg"):                  # a path, or a uint8 H x W x 3 RGB array
        face.box, face.label, face.probs, face.landmarks # (x, y, w, h) | None, class name, {name: p}, 5 x 2 list | None

Each image's faces are detected (robustfer.infer.detect), cropped, levelled and converted (infer.faces), and
classified in one batch; `predict_many` does the same for several images (video frames) in one batch.

`--json` line per face (interface.md): {"source", "frame" (null for images), "box" [x, y, w, h], "label",
"probs"}; an image or frame without a face gives one line with "box": null and "label": null. Extra keys:
"score" (detector confidence), "whole" (true: the image was classified whole, its box is the full image),
and for videos "track" (IoU tracking id).

Video: frames read with OpenCV, every `every`-th classified, `batch` processed frames per classifier call.
Tracking: greedy IoU matching (IoU > 0.3) of each processed frame's faces to the tracks' last boxes, a track
ends after `max_missed` processed frames unseen. `--smooth`: each track's probabilities are an exponential
moving average, p_t = SMOOTH_ALPHA * p_frame + (1 - SMOOTH_ALPHA) * p_{t-1}, SMOOTH_ALPHA = 0.5.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from robustfer.errors import RobustferError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
SMOOTH_ALPHA = 0.5    # weight of the new frame in --smooth's exponential moving average
IOU_MATCH = 0.3       # a face continues a track when IoU with the track's last box > this


# the model that ships inside the package (robustfer/weights/MODEL.md: the command that trained it, its figures)
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "ferplus_compact_s.pt"


def default_checkpoint() -> Path:
    """The model used when no checkpoint or ONNX file is given: the shipped FERPlus model."""
    if SHIPPED_MODEL.is_file():
        return SHIPPED_MODEL
    raise RobustferError(f"the shipped model {SHIPPED_MODEL} is missing (a damaged install: reinstall robustfer), or "
                         "pass --checkpoint CKPT (a train run's best.pt or run folder) or --onnx F.onnx")


@dataclass
class Face:
    """One classified face: box (x, y, w, h) in image pixels (None: no face), label (class name; None: no face),
    probs {class name: probability}, landmarks (5 x 2 list of (x, y) or None), detector score, whether the
    image was classified whole, and the track id in a video (None for images)."""

    box: tuple[int, int, int, int] | None
    label: str | None
    probs: dict[str, float] = field(default_factory=dict)
    landmarks: list | None = None
    score: float = 0.0
    whole: bool = False
    track: int | None = None

    def to_json(self, source: str, frame: int | None = None) -> dict:
        d = {"source": source, "frame": frame, "box": None if self.box is None else [int(v) for v in self.box],
             "label": self.label, "probs": {k: round(float(v), 6) for k, v in self.probs.items()}}
        if self.box is not None:
            d["score"] = round(float(self.score), 4)
            d["whole"] = self.whole
        if self.track is not None:
            d["track"] = self.track
        return d


def read_image(path: str | Path) -> np.ndarray:
    """uint8 H x W x 3 RGB of an image file, or a one-line RobustferError naming the file."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise RobustferError(f"{path}: no such file")
    try:
        buf = np.fromfile(str(path), np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    except (OSError, cv2.error) as e:
        raise RobustferError(f"{path}: cannot read the image ({e.__class__.__name__})") from None
    if img is None:
        raise RobustferError(f"{path}: not a readable image (damaged, empty, or not in a format OpenCV decodes)")
    return np.ascontiguousarray(img[:, :, ::-1])


class Predictor:
    """Face detection + expression classification. `checkpoint`: a train checkpoint (.pt) or run folder (its
    best.pt, else last.pt); `onnx`: a file from `robustfer export` (run by onnxruntime); neither: the shipped
    model (default_checkpoint). `detector`: a name of robustfer.infer.detect.detector_names() or an instance;
    `no_detect`: classify every image whole (inputs that are already face crops)."""

    def __init__(self, checkpoint: str | Path | None = None, onnx: str | Path | None = None, detector=None,
                 device: str = "cpu", no_detect: bool = False, level: bool = True):
        if checkpoint is not None and onnx is not None:
            raise RobustferError("give either a checkpoint or an ONNX file, not both")
        self.detector_arg, self.no_detect, self.level, self.device = detector, no_detect, level, device
        self._detector = None
        if onnx is not None:
            from robustfer.infer.onnx_model import OnnxClassifier

            self._onnx = OnnxClassifier(onnx)
            self.classes = tuple(self._onnx.classes)
            self.size, self.channels = self._onnx.input_size, self._onnx.channels
            self.source = str(onnx)
        else:
            from robustfer.infer.export import resolve_checkpoint
            from robustfer.train.checkpoint import load_trained

            self._onnx = None
            path = resolve_checkpoint(checkpoint if checkpoint is not None else default_checkpoint())
            try:
                self._model, spec, classes, self.config = load_trained(path, device)
            except RobustferError:
                raise
            except Exception as e:  # noqa: BLE001 - a state dict of another shape, another version's keys
                msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
                raise RobustferError(f"checkpoint {path} cannot be loaded by this robustfer ({msg}): use a checkpoint "
                                     "written by this version's `robustfer train`") from None
            self.classes = tuple(classes)
            self.size, self.channels, self.norm = spec["size"], spec["channels"], spec["norm"]
            self.source = str(path)

    @property
    def detector(self):
        if self._detector is None and not self.no_detect:
            from robustfer.infer.detect import get_detector

            self._detector = get_detector(self.detector_arg)
        return self._detector

    def classify(self, faces: np.ndarray) -> np.ndarray:
        """uint8 N x C x S x S faces -> N x K probabilities (columns in `classes` order)."""
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if self._onnx is not None:
            return self._onnx.predict_probs(faces)
        import torch

        from robustfer.models.predict import predict_logits

        t = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device)
        return torch.softmax(predict_logits(self._model, t, self.size, self.channels, self.norm), 1).cpu().numpy()

    def predict_many(self, images: Iterable[np.ndarray | str | Path], bgr: bool = False) -> list[list[Face]]:
        """The faces of several images (paths, or uint8 arrays: RGB, BGR with `bgr`), classified in one batch."""
        from robustfer.infer.faces import find_faces

        found = []
        for im in images:
            if isinstance(im, (str, Path)):
                im, b = read_image(im), False
            else:
                b = bgr
            found.append(find_faces(im, self.detector, self.size, self.channels, level=self.level,
                                    no_detect=self.no_detect, bgr=b))
        crops = [f.images for f in found if len(f)]
        probs = self.classify(np.concatenate(crops)) if crops else np.zeros((0, len(self.classes)), np.float32)
        out, i = [], 0
        for f in found:
            faces = []
            for d in f.detections:
                p = probs[i]
                i += 1
                faces.append(Face(tuple(int(v) for v in d.box), self.classes[int(p.argmax())],
                                  {c: float(v) for c, v in zip(self.classes, p)},
                                  None if d.landmarks is None else np.round(d.landmarks, 1).tolist(),
                                  float(d.score), f.whole))
            out.append(faces)
        return out

    def predict(self, image: np.ndarray | str | Path, bgr: bool = False) -> list[Face]:
        """The faces of one image (a path, or a uint8 H x W x 3 RGB array; BGR with `bgr`), best detector score first."""
        return self.predict_many([image], bgr=bgr)[0]

    def __repr__(self) -> str:
        return f"Predictor({self.source!r}, {len(self.classes)} classes, {self.channels}x{self.size}x{self.size})"


# ---------------------------------------------------------------- tracking and smoothing (video)

def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class IoUTracker:
    """Greedy IoU matching of each frame's faces to live tracks (highest IoU first, IoU > `threshold`); an
    unmatched face starts a track; a track unseen for more than `max_missed` processed frames ends. With
    `smooth`, `update` replaces each face's probs (and label) by its track's exponential moving average."""

    def __init__(self, threshold: float = IOU_MATCH, max_missed: int = 5, smooth: bool = False,
                 alpha: float = SMOOTH_ALPHA):
        self.threshold, self.max_missed, self.smooth, self.alpha = threshold, max_missed, smooth, alpha
        self.tracks: dict[int, dict] = {}   # id -> {"box", "missed", "probs"}
        self.next_id = 0

    def update(self, faces: list[Face]) -> list[Face]:
        pairs = sorted(((iou(t["box"], f.box), tid, j) for tid, t in self.tracks.items()
                        for j, f in enumerate(faces) if f.box is not None), reverse=True)
        used_t, used_f = set(), set()
        for v, tid, j in pairs:
            if v <= self.threshold:
                break
            if tid in used_t or j in used_f:
                continue
            used_t.add(tid)
            used_f.add(j)
            faces[j].track = tid
        for j, f in enumerate(faces):
            if f.box is not None and j not in used_f:
                f.track = self.next_id
                self.tracks[self.next_id] = {"box": f.box, "missed": 0, "probs": None}
                self.next_id += 1
        for tid in list(self.tracks):
            if tid not in used_t and all(f.track != tid for f in faces):
                self.tracks[tid]["missed"] += 1
                if self.tracks[tid]["missed"] > self.max_missed:
                    del self.tracks[tid]
        for f in faces:
            if f.track is None:
                continue
            t = self.tracks[f.track]
            t["box"], t["missed"] = f.box, 0
            p = np.array(list(f.probs.values()), np.float64)
            if self.smooth and t["probs"] is not None:
                p = self.alpha * p + (1 - self.alpha) * t["probs"]
                p = p / p.sum()
                f.probs = dict(zip(f.probs, p.tolist()))
                f.label = max(f.probs, key=f.probs.get)
            t["probs"] = p
        return faces


# ---------------------------------------------------------------- drawing

_COLOURS = [(0, 200, 0), (0, 160, 255), (255, 80, 0), (200, 0, 200), (0, 220, 220), (80, 80, 255), (255, 200, 0)]


def annotate(bgr: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of a BGR image with each face's box, label and probability (and track id) drawn."""
    import cv2

    out = bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    scale = max(0.35, max(h, w) / 1000)
    for f in faces:
        if f.box is None:
            continue
        x, y, bw, bh = f.box
        col = _COLOURS[(f.track or 0) % len(_COLOURS)]
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), col, thick)
        text = f"{'#%d ' % f.track if f.track is not None else ''}{f.label} {f.probs[f.label]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - base - 1, y + bh + th + 4)
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), col, -1)
        cv2.putText(out, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


# ---------------------------------------------------------------- inputs

def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, output-relative path) pairs of the images and videos among `inputs` (folders searched
    recursively; their other files skipped), and one error line per input that cannot be used."""
    items, errors = [], []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
            if not found:
                errors.append(f"{p}: no image or video files in this folder")
            items += [(q, Path(p.resolve().name or "root") / q.relative_to(p)) for q in found]
        elif p.is_file():
            if p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS:
                items.append((p, Path(p.name)))
            else:
                errors.append(f"{p}: not an image or video file (images: {' '.join(IMAGE_EXTS)}; videos: {' '.join(VIDEO_EXTS)})")
        else:
            errors.append(f"{p}: no such file or folder")
    return items, errors


def _line(face: Face, source: str, frame: int | None) -> str:
    where = source if frame is None else f"{source} frame {frame}"
    if face.box is None:
        return f"{where}: no face found"
    top = sorted(face.probs.items(), key=lambda kv: -kv[1])[:3]
    tr = f" track {face.track}" if face.track is not None else ""
    whole = " (whole image)" if face.whole else ""
    return (f"{where}:{tr} box {list(face.box)}{whole} -> {face.label} {face.probs[face.label]:.2f}  "
            f"({', '.join(f'{k} {v:.2f}' for k, v in top)})")


class Emitter:
    """Prints each result: a JSON line (--json) or a readable line."""

    def __init__(self, as_json: bool, stream=None):
        self.as_json, self.stream = as_json, stream or sys.stdout

    def __call__(self, faces: list[Face], source: str, frame: int | None = None) -> None:
        rows = faces or [Face(None, None)]
        for f in rows:
            print(json.dumps(f.to_json(source, frame)) if self.as_json else _line(f, source, frame), file=self.stream)


def predict_image(pred: Predictor, path: Path, rel: Path, emit: Emitter, out: Path | None) -> None:
    rgb = read_image(path)
    faces = pred.predict(rgb)
    emit(faces, str(path))
    if out is not None:
        import cv2

        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        ext = dst.suffix.lower() if dst.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff") else ".png"
        ok, buf = cv2.imencode(ext, annotate(np.ascontiguousarray(rgb[:, :, ::-1]), faces))
        if not ok:
            raise RobustferError(f"{path}: cannot encode the annotated copy as {ext}")
        buf.tofile(str(dst.with_suffix(ext)))


# ---------------------------------------------------------------- video

def predict_video(pred: Predictor, path: Path, rel: Path, emit: Emitter, out: Path | None, every: int = 1,
                  smooth: bool = False, batch: int = 16, quiet: bool = False) -> dict:
    """Classify every `every`-th frame of a video (`batch` frames per classifier call), track the faces, emit a
    line per face per processed frame; with `out`: rel.annotated.mp4 (the processed frames at fps / every),
    rel.summary.json and rel.timeline.png. Returns the summary."""
    import cv2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if every < 1:
        raise RobustferError(f"--every must be >= 1, got {every}")
    if not path.is_file():
        raise RobustferError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RobustferError(f"{path}: not a readable video (OpenCV cannot open it: damaged or an unsupported codec)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    tracker = IoUTracker(smooth=smooth)
    writer = None
    history: list[tuple[int, list[Face]]] = []
    stem = (out / rel).with_suffix("") if out is not None else None
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)

    def flush(buf):
        nonlocal writer
        results = pred.predict_many([f for _, f in buf], bgr=True)
        for (idx, frame), faces in zip(buf, results):
            faces = tracker.update(faces)
            emit(faces, str(path), idx)
            history.append((idx, faces))
            if stem is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(stem) + ".annotated.mp4", cv2.VideoWriter_fourcc(*"mp4v"),
                                             max(1.0, fps / every), (w, h))
                writer.write(annotate(frame, faces))
            prog.advance(task, every)

    n_read = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=quiet) as prog:
        task = prog.add_task(f"{path.name}", total=total or None)
        buf = []
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if n_read % every == 0:
                    buf.append((n_read, frame))
                    if len(buf) >= batch:
                        flush(buf)
                        buf = []
                n_read += 1
            if buf:
                flush(buf)
        finally:
            cap.release()
            if writer is not None:
                writer.release()
    if n_read == 0:
        raise RobustferError(f"{path}: no frame could be read (an empty or damaged video, or an unsupported codec)")
    summary = video_summary(str(path), history, pred.classes, n_read, fps, every, smooth)
    if stem is not None:
        Path(str(stem) + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        timeline_png(history, pred.classes, Path(str(stem) + ".timeline.png"), fps, title=path.name)
    return summary


def video_summary(source: str, history, classes, n_frames: int, fps: float, every: int, smooth: bool) -> dict:
    """Per track: processed frames seen, first/last frame, and the share of those frames per expression."""
    tracks: dict[int, dict] = {}
    for idx, faces in history:
        for f in faces:
            if f.track is None:
                continue
            t = tracks.setdefault(f.track, {"frames": 0, "first_frame": idx, "last_frame": idx,
                                            "counts": dict.fromkeys(classes, 0)})
            t["frames"] += 1
            t["last_frame"] = idx
            t["counts"][f.label] += 1
    out = {"source": source, "frames": n_frames, "processed_frames": len(history), "every": every, "fps": fps,
           "smooth": smooth, "smooth_alpha": SMOOTH_ALPHA if smooth else None,
           "frames_without_face": sum(1 for _, fs in history if not fs), "tracks": {}}
    for tid, t in sorted(tracks.items()):
        out["tracks"][str(tid)] = {"frames": t["frames"], "first_frame": t["first_frame"], "last_frame": t["last_frame"],
                                   "share": {c: round(n / t["frames"], 4) for c, n in t["counts"].items()}}
    return out


def timeline_png(history, classes, dst: Path, fps: float, title: str = "", max_tracks: int = 8) -> None:
    """Per track (the `max_tracks` longest), the predicted label over time, one row of the figure each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[int, list[tuple[float, int]]] = {}
    for idx, faces in history:
        for f in faces:
            if f.track is not None:
                series.setdefault(f.track, []).append((idx / fps, classes.index(f.label)))
    tids = sorted(series, key=lambda t: -len(series[t]))[:max_tracks] or [None]
    fig, axes = plt.subplots(len(tids), 1, figsize=(9, 1.2 + 1.6 * len(tids)), sharex=True, squeeze=False)
    for ax, tid in zip(axes[:, 0], tids):
        if tid is not None:
            t, y = zip(*series[tid])
            ax.step(t, y, where="post", lw=1, color="0.6")
            ax.scatter(t, y, s=8, c=y, cmap="tab10", vmin=0, vmax=9)
            ax.set_ylabel(f"face #{tid}")
        else:
            ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels(classes, fontsize=7)
        ax.set_ylim(-0.5, len(classes) - 0.5)
        ax.grid(axis="y", lw=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"{title}: expression per tracked face")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the command

def check_detector(detector: str | None, no_detect: bool) -> None:
    """A named --detector must be one robustfer has (predict, explain): one line, before any model loads."""
    if detector is not None and not no_detect:
        from robustfer.infer.detect import detector_names

        if detector not in detector_names():
            raise RobustferError(f"unknown face detector {detector!r}; use one of {', '.join(detector_names())}")


def run_predict(inputs: list[str], checkpoint=None, onnx=None, out=None, as_json: bool = False, detector=None,
                no_detect: bool = False, every: int = 1, smooth: bool = False, batch: int = 16, device: str = "cpu",
                quiet: bool = False) -> int:
    """`robustfer predict`: 0 when every input was processed, 1 when any failed (one stderr line each; the
    rest still processed). A bad model or detector is a RobustferError (the CLI's one-line error, exit 2)."""
    if every < 1:
        raise RobustferError(f"--every must be >= 1, got {every}")
    check_detector(detector, no_detect)
    items, errors = collect_inputs(inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not items:
        if not errors:
            print("error: no input given", file=sys.stderr)
        return 1
    pred = Predictor(checkpoint=checkpoint, onnx=onnx, detector=detector, device=device, no_detect=no_detect)
    _ = pred.detector   # a detector that cannot be built fails once here, not once per file
    emit = Emitter(as_json)
    out = Path(out) if out is not None else None
    failed = len(errors)
    for path, rel in items:
        try:
            if path.suffix.lower() in VIDEO_EXTS:
                predict_video(pred, path, rel, emit, out, every=every, smooth=smooth, batch=batch, quiet=quiet)
            else:
                predict_image(pred, path, rel, emit, out)
        except RobustferError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a folder
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            print(f"error: {path}: {e.__class__.__name__} {msg}".rstrip(), file=sys.stderr)
            failed += 1
        sys.stdout.flush()
    return 1 if failed else 0
