"""Face detectors compared on real photos: detection rate, false positives, ms per 640x480 frame (1 thread).

    pip download insightface==2.1 --no-deps -d /tmp/w       # a real group photo ships inside its wheel
    python benchmarks/face_detectors.py --images /tmp/w/insightface-2.1-py3-none-any.whl \\
        --ferplus ../shared/data/ferplus [--detectors mtcnn mtcnn:min_face=40 haar retinaface] [--framing]

--images: the insightface wheel (or sdist, or a folder holding t1.jpg and Tom_Hanks_54745.png): nothing
of it is committed. The cases, from `insightface/data/images/t1.jpg` (1280 x 886, 6 faces, ~100-150 px;
its reference boxes below: where MTCNN and RetinaFace agree, checked by eye), and what each tests:
  group        the photo as it is: several faces, heads turned and tilted, one three-quarter view
  group 640    scaled to a 640 x 480 frame (faces ~50 px): the video case
  small        scaled by 1/4 into a 640 x 480 frame (faces 23-37 px)
  tiny         scaled by 1/8 into a 640 x 480 frame (faces 12-18 px)
  mirrored     flipped left-right
  rot +25/-25  rotated about the centre by +-25 degrees (canvas enlarged; reference centres rotated)
  squeezed     squeezed to 55% width: every face foreshortened as a head turned ~55 deg (a crude profile)
  crop 112     insightface's Tom_Hanks_54745.png, a 112 x 112 aligned face crop: 1 face
  blank        a flat grey and a noise 640 x 480 frame: 0 faces
  FERPlus      the first --ferplus-n FERPlus test images (48 x 48 face crops): each must give one face or
               none (then predict's already-a-face rule classifies it whole); more than one is an error
A detection is a hit when its IoU with an unmatched reference box is >= 0.4 (box conventions differ:
Haar's boxes are square), otherwise a false positive. Speed: median ms of --repeat calls on the
group-640 frame, cv2 and onnxruntime on one thread; the detectors' own settings (robustfer.infer.detect).

--framing also measures each detector's box on FERPlus crops upscaled 4x (median max(w, h) / 48): the
FERPlus-matching crop margin that robustfer.infer.faces uses (Detector.margin).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import statistics
import sys
import tarfile
import time
import zipfile

import cv2
import numpy as np

from robustfer.errors import RobustferError
from robustfer.infer.detect import create_detector

GROUP = "t1.jpg"
GROUP_SHA256 = "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"
CROP = "Tom_Hanks_54745.png"
# reference boxes (x, y, w, h) of the 6 faces of t1.jpg: the mean of MTCNN's and RetinaFace's boxes
REF = np.array([(906, 62, 105, 140), (56, 260, 112, 136), (269, 150, 101, 120),
                (743, 344, 99, 133), (465, 266, 108, 148), (1133, 274, 92, 124)], np.float64)
IOU_HIT = 0.4


def read_images(path: str) -> dict[str, np.ndarray]:
    """t1.jpg and Tom_Hanks_54745.png (BGR) from insightface's wheel, sdist, or a folder."""
    want = {GROUP, CROP}
    raw: dict[str, bytes] = {}
    if os.path.isdir(path):
        for n in want:
            hits = glob.glob(os.path.join(path, "**", n), recursive=True)
            if hits:
                raw[n] = open(hits[0], "rb").read()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if os.path.basename(info.filename) in want and "data/images" in info.filename:
                    raw[os.path.basename(info.filename)] = z.read(info)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                if os.path.basename(m.name) in want and "data/images" in m.name:
                    raw[os.path.basename(m.name)] = t.extractfile(m).read()
    if GROUP not in raw:
        raise SystemExit(f"no insightface/data/images/{GROUP} in {path}; "
                         "get it with: pip download insightface==2.1 --no-deps -d DIR")
    if hashlib.sha256(raw[GROUP]).hexdigest() != GROUP_SHA256:
        print(f"warning: {GROUP} is not the file the reference boxes were drawn on (sha256 differs)", file=sys.stderr)
    return {n: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for n, b in raw.items()}


def into_frame(img: np.ndarray, ref: np.ndarray, scale: float, fw: int = 640, fh: int = 480):
    """img scaled by `scale`, centred in an fw x fh frame of its mean colour; ref boxes follow."""
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    frame = np.empty((fh, fw, 3), np.uint8)
    frame[:] = img.reshape(-1, 3).mean(0).astype(np.uint8)
    ox, oy = (fw - w) // 2, (fh - h) // 2
    frame[oy:oy + h, ox:ox + w] = small
    return frame, ref * scale + [ox, oy, 0, 0]


def rotated(img: np.ndarray, ref: np.ndarray, deg: float):
    """img rotated by deg (cv2's sense) on an enlarged canvas; reference centres rotated, sizes kept."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    out = cv2.warpAffine(img, m, (nw, nh), borderMode=cv2.BORDER_REPLICATE)
    ctr = np.column_stack([ref[:, 0] + ref[:, 2] / 2, ref[:, 1] + ref[:, 3] / 2])
    ctr = ctr @ m[:, :2].T + m[:, 2]
    return out, np.column_stack([ctr - ref[:, 2:] / 2, ref[:, 2:]])


def cases(images: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    g = images[GROUP]
    h, w = g.shape[:2]
    out = [("group", g, REF)]
    f640, r640 = into_frame(g, REF, 640 / w)
    out.append(("group 640", f640, r640))
    out.append(("small", *into_frame(g, REF, 320 / w)))
    out.append(("tiny", *into_frame(g, REF, 160 / w)))
    out.append(("mirrored", g[:, ::-1].copy(), np.column_stack([w - REF[:, 0] - REF[:, 2], REF[:, 1:]])))
    out.append(("rot +25", *rotated(g, REF, 25)))
    out.append(("rot -25", *rotated(g, REF, -25)))
    sq = cv2.resize(g, (round(w * 0.55), h), interpolation=cv2.INTER_AREA)
    out.append(("squeezed", sq, REF * [0.55, 1, 0.55, 1]))
    if CROP in images:
        c = images[CROP]
        out.append(("crop 112", c, np.array([(0, 0, c.shape[1], c.shape[0])], np.float64)))
    rng = np.random.default_rng(0)
    out.append(("blank", np.full((480, 640, 3), 128, np.uint8), np.zeros((0, 4))))
    out.append(("blank", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), np.zeros((0, 4))))
    return out


def iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def score_case(dets, ref) -> tuple[int, int]:
    """(hits, false positives): greedy matching, best score first, IoU >= IOU_HIT."""
    free = list(range(len(ref)))
    hits = fps = 0
    for d in dets:
        best = max(free, key=lambda j: iou(d.box, ref[j]), default=None)
        if best is not None and iou(d.box, ref[best]) >= IOU_HIT:
            free.remove(best)
            hits += 1
        else:
            fps += 1
    return hits, fps


def ferplus_images(root: str | None, n: int) -> list[np.ndarray]:
    if not root:
        return []
    files = sorted(glob.glob(os.path.join(root, "FER2013Test", "*.png")))[:n]
    return [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]


def parse_spec(spec: str) -> tuple[str, dict]:
    """'name' or 'name:k=v,k=v' -> (name, options) with int/float values where they parse."""
    name, _, rest = spec.partition(":")
    opts = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        for t in (int, float):
            try:
                v = t(v)
                break
            except ValueError:
                pass
        opts[k] = v
    return name, opts


def bench(spec: str, case_list, fer: list[np.ndarray], repeat: int, framing: bool) -> dict | None:
    name, opts = parse_spec(spec)
    if name == "retinaface":
        opts.setdefault("threads", 1)
    try:
        det = create_detector(name, **opts)
    except RobustferError as e:
        print(f"skip {spec}: {e}", file=sys.stderr)
        return None
    res = {"detector": spec, "landmarks": det.landmarks, "cases": {}}
    hits = total = fps = 0
    for cname, img, ref in case_list:
        dets = det(img, bgr=True)
        h, f = score_case(dets, ref)
        c = res["cases"].setdefault(cname, [0, 0, 0])
        c[0] += h
        c[1] += len(ref)
        c[2] += f
        hits, total, fps = hits + h, total + len(ref), fps + f
    res.update(hits=hits, expected=total, false_positives=fps)
    if fer:
        counts = [len(det(g)) for g in fer]
        res["ferplus"] = {"n": len(fer), "one": counts.count(1), "none": counts.count(0),
                          "more": sum(c > 1 for c in counts)}
    frame = next(img for cname, img, _ in case_list if cname == "group 640")
    det(frame, bgr=True)   # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        det(frame, bgr=True)
        ts.append((time.perf_counter() - t0) * 1000)
    res["ms_640x480"] = statistics.median(ts)
    if framing and fer:
        rel = []
        for g in fer:
            big = cv2.resize(g, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
            d = det(big)
            if d:
                rel.append(max(d[0].box[2:]) / big.shape[0])
        if rel:
            m = float(np.median(rel))
            res["framing"] = {"n": len(rel), "median_max_side": m, "margin": (1 / m - 1) / 2}
    return res


def table(results: list[dict], case_names: list[str]) -> str:
    cols = ["detector", "landmarks"] + case_names + ["all (hit / expected, FP)"]
    has_fer = any("ferplus" in r for r in results)
    if has_fer:
        cols.append("FERPlus 48x48: 1 face / none / >1")
    cols.append("ms / 640x480 frame")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [r["detector"], "5 points" if r["landmarks"] else "no"]
        for cn in case_names:
            h, n, f = r["cases"][cn]
            cells.append(f"{h}/{n}" + (f" +{f}" if f else ""))
        cells.append(f"{r['hits']}/{r['expected']} ({r['hits'] / max(r['expected'], 1):.0%}), {r['false_positives']} FP")
        if has_fer:
            fp = r.get("ferplus")
            cells.append(f"{fp['one']} / {fp['none']} / {fp['more']} of {fp['n']}" if fp else "-")
        cells.append(f"{r['ms_640x480']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="insightface wheel/sdist, or a folder with t1.jpg")
    ap.add_argument("--ferplus", default=None, help="FERPlus root (FER2013Test/*.png)")
    ap.add_argument("--ferplus-n", type=int, default=200)
    ap.add_argument("--detectors", nargs="+", default=["mtcnn", "mtcnn:min_face=40", "haar", "retinaface"],
                    help="registry names, optionally with options: name:key=value,key=value")
    ap.add_argument("--repeat", type=int, default=20, help="timed calls per detector (median)")
    ap.add_argument("--framing", action="store_true", help="also measure the FERPlus-matching crop margin")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    case_list = cases(read_images(args.images))
    case_names = list(dict.fromkeys(c[0] for c in case_list))
    fer = ferplus_images(args.ferplus, args.ferplus_n)
    results = [r for r in (bench(s, case_list, fer, args.repeat, args.framing) for s in args.detectors) if r]
    print(table(results, case_names))
    if args.framing:
        for r in results:
            if "framing" in r:
                fr = r["framing"]
                print(f"framing {r['detector']}: median max(w, h) = {fr['median_max_side']:.3f} of a FERPlus crop "
                      f"(n={fr['n']}) -> margin {fr['margin']:.3f}")
    print(f"cv2 {cv2.__version__}, 1 thread, median of {args.repeat}; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
