"""Detected faces -> the model's input: a square crop with a margin, levelled by the eyes, uint8 N x C x S x S.

    faces = find_faces(image_rgb, detector="mtcnn", size=48, channels=1)   # FERPlus models: grey 48 x 48
    faces.images          # uint8 N x C x S x S, ready for robustfer.models.predict.predict_logits
    faces.detections      # one Detection per row (box [x, y, w, h] for predict's JSON)
    faces.whole           # True: the image was classified whole (already a face crop)

Crop: a square centred on the detector's box, side = max(w, h) * (1 + 2 * margin). The default margin is
the detector's own (`Detector.margin`), calibrated so that the crop frames a face the way FERPlus does:
FERPlus crops are tight, an MTCNN box's height is 0.995 of the 48 px image (its width 0.80: the crop is
25% wider than the box), so mtcnn's margin is 0, retinaface's 0.02, haar's 0.10 (its square boxes are
0.83 of the image); benchmarks/face_detectors.py --framing measures them. Pixels of the square outside the image repeat the border (no stretching at the edges);
`crop_box` gives the part of the image the crop covers, clipped to it.

Levelling: where the detector gives eye landmarks, the crop is rotated about the box centre by the angle of
the line between the eyes, so the eyes are horizontal (what FER2013's aligned crops look like).

Already a face: an image is classified whole (resized to S x S) with `no_detect=True`, or automatically
when no face is found and it is no bigger than the model's input (H <= S and W <= S), e.g. a FERPlus image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from robustfer.infer.detect import Detection, Detector, _cv2, as_rgb, clip_box, get_detector


def crop_square(box: tuple[float, float, float, float], margin: float) -> tuple[float, float, float]:
    """(cx, cy, side) of the square crop around box (x, y, w, h): side = max(w, h) * (1 + 2 * margin)."""
    x, y, w, h = box
    return x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)


def crop_box(box: tuple[float, float, float, float], image_shape: tuple[int, ...], margin: float) -> tuple[int, int, int, int]:
    """The square crop around `box` as integer (x, y, w, h), clipped to the image (H, W, ...): what part of
    the image the (unlevelled) crop covers; not square where it meets the image's edge."""
    cx, cy, side = crop_square(box, margin)
    h, w = image_shape[:2]
    r = clip_box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, w, h)
    return r if r is not None else (0, 0, 0, 0)


def eye_angle(landmarks: np.ndarray | None) -> float:
    """Degrees of the line from the image-left eye to the image-right eye (landmarks rows 0 and 1),
    positive when the right one is lower in the image; 0 without landmarks."""
    if landmarks is None:
        return 0.0
    (xl, yl), (xr, yr) = np.asarray(landmarks, np.float64)[:2]
    return math.degrees(math.atan2(yr - yl, xr - xl))


def crop_matrix(box: tuple[float, float, float, float], margin: float, size: int, angle: float = 0.0) -> np.ndarray:
    """2 x 3 affine map from image pixels to the size x size crop: the square crop around `box`, rotated
    by `angle` degrees about its centre (cv2's sense: counter-clockwise on screen, which levels a line at
    +angle), scaled to `size`. Pixel centres: a crop pixel i covers source [i, i + 1) * side / size."""
    cx, cy, side = crop_square(box, margin)
    s = size / max(side, 1e-6)
    a = math.radians(angle)
    al, be = s * math.cos(a), s * math.sin(a)
    # x' = al * (x - cx) + be * (y - cy) + size / 2 ; y' = -be * (x - cx) + al * (y - cy) + size / 2
    return np.array([[al, be, size / 2 - al * cx - be * cy],
                     [-be, al, size / 2 + be * cx - al * cy]], np.float64)


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine map to K x 2 points."""
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """H x W x 3 RGB uint8 -> C x H x W uint8 (C = 1: grey, ITU-R 601 luma as cv2 and PIL compute it; 3: RGB)."""
    cv2 = _cv2()
    if channels == 1:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[None]
    if channels == 3:
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def crop_face(rgb: np.ndarray, det: Detection, size: int = 48, channels: int = 1, margin: float = 0.0,
              level: bool = True) -> np.ndarray:
    """One face as uint8 C x size x size: the square crop with `margin`, levelled by the eyes when `level`
    and the detection has landmarks. Large crops are warped to a multiple of `size` and then area-averaged
    down (an affine warp alone would alias)."""
    cv2 = _cv2()
    angle = eye_angle(det.landmarks) if level else 0.0
    _, _, side = crop_square(det.box, margin)
    k = max(1, int(side // size))           # supersampling factor for the warp
    m = crop_matrix(det.box, margin, size * k, angle)
    out = cv2.warpAffine(rgb, m, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if k > 1:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return to_channels(out, channels)


def whole_image(rgb: np.ndarray, size: int = 48, channels: int = 1) -> np.ndarray:
    """The whole image as uint8 C x size x size (an input that is already a face crop)."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    if (h, w) != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR)
    return to_channels(rgb, channels)


def is_face_crop(image_shape: tuple[int, ...], n_faces: int, size: int, no_detect: bool = False) -> bool:
    """The already-a-face rule: classify the image whole when asked (`no_detect`), or when no face was
    found in an image no bigger than the model's input (H <= size and W <= size)."""
    h, w = image_shape[:2]
    return no_detect or (n_faces == 0 and h <= size and w <= size)


@dataclass
class Faces:
    """What one image gives the classifier: images uint8 N x C x S x S, one Detection per row (box
    (0, 0, W, H) and score 0 for a whole image), and whether the image was taken whole."""

    images: np.ndarray
    detections: list[Detection] = field(default_factory=list)
    whole: bool = False

    def __len__(self) -> int:
        return len(self.detections)


def faces_from_detections(rgb: np.ndarray, detections: list[Detection], size: int = 48, channels: int = 1,
                          margin: float = 0.0, level: bool = True) -> np.ndarray:
    """uint8 N x C x size x size of the detected faces (N = 0: an empty 0 x C x size x size array)."""
    if not detections:
        return np.zeros((0, channels, size, size), np.uint8)
    return np.stack([crop_face(rgb, d, size, channels, margin, level) for d in detections])


def find_faces(image: np.ndarray, detector: str | Detector | None = None, size: int = 48, channels: int = 1,
               margin: float | None = None, level: bool = True, no_detect: bool = False, bgr: bool = False,
               max_faces: int | None = None) -> Faces:
    """Detect, crop, level and convert the faces of one uint8 image (RGB; BGR with `bgr`); the image
    itself when the already-a-face rule applies. `margin` None: the detector's FERPlus-calibrated margin."""
    rgb = as_rgb(image, bgr)
    h, w = rgb.shape[:2]
    dets: list[Detection] = []
    if not no_detect:
        detector = get_detector(detector)
        dets = detector(rgb)
        if max_faces is not None:
            dets = dets[:max_faces]
    if is_face_crop(rgb.shape, len(dets), size, no_detect):
        return Faces(whole_image(rgb, size, channels)[None], [Detection((0, 0, w, h), 0.0, None)], whole=True)
    m = (detector.margin if isinstance(detector, Detector) else 0.0) if margin is None else margin
    return Faces(faces_from_detections(rgb, dets, size, channels, m, level), dets, whole=False)
