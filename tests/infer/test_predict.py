"""`robustfer predict` and `robustfer.Predictor`: a tiny model trained on real FERPlus, synthetic photos (FERPlus faces
pasted on a canvas), a face crop classified whole, an image without a face, bad files, a synthetic video."""
import json

import cv2
import numpy as np
import pytest

import robustfer
from robustfer.cli import main
from robustfer.errors import RobustferError
from robustfer.infer.predict import Face, IoUTracker, Predictor, default_checkpoint, iou

KEYS = {"source", "frame", "box", "label", "probs"}


def _json_lines(out):
    rows = [json.loads(line) for line in out.strip().splitlines()]
    for r in rows:
        assert KEYS <= set(r)
    return rows


def test_predictor_api_finds_the_pasted_faces(model, photo):
    path, img, boxes = photo
    p = robustfer.Predictor(checkpoint=model)
    faces = p.predict(img)
    assert len(faces) >= 2 and all(isinstance(f, robustfer.Face) for f in faces)
    for f in faces:
        assert max(iou(f.box, b) for b in boxes) > 0.3
        assert f.label in p.classes and set(f.probs) == set(p.classes)
        assert abs(sum(f.probs.values()) - 1) < 1e-5 and f.label == max(f.probs, key=f.probs.get)
        assert f.landmarks is not None and len(f.landmarks) == 5
    assert [f.box for f in p.predict(path)] == [f.box for f in faces]   # a path gives the same


def test_a_missing_shipped_model_is_one_clear_error(monkeypatch, tmp_path):
    from robustfer.infer import predict as P

    monkeypatch.setattr(P, "SHIPPED_MODEL", tmp_path / "gone.pt")
    with pytest.raises(RobustferError, match="reinstall robustfer.*--checkpoint"):
        default_checkpoint()
    with pytest.raises(RobustferError, match="--checkpoint"):
        Predictor()


def test_predict_json_lines_follow_the_interface(model, photo, capsys):
    path, _, boxes = photo
    assert main(["predict", "--checkpoint", str(model), str(path), "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) >= 2
    for r in rows:
        assert r["source"] == str(path) and r["frame"] is None and len(r["box"]) == 4
        assert r["label"] in r["probs"] and abs(sum(r["probs"].values()) - 1) < 1e-4


def test_face_crop_classified_whole_and_no_face_gives_a_null_line(model, ferplus_root, tmp_path, capsys):
    crop = sorted((ferplus_root / "FER2013Test").glob("*.png"))[0]
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    assert main(["predict", "--checkpoint", str(model), str(crop), str(blank), "--json", "--no-detect"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert rows[0]["box"] == [0, 0, 48, 48] and rows[0]["whole"] is True and rows[0]["label"] is not None
    assert main(["predict", "--checkpoint", str(model), str(crop), str(blank), "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["whole"] is True           # 48 x 48, no face found: taken whole
    assert rows[1]["box"] is None and rows[1]["label"] is None and rows[1]["source"] == str(blank)


def test_readable_lines_and_annotated_copies_keep_the_folder_structure(model, photo, tmp_path, capsys):
    path, _, _ = photo
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.png").write_bytes(path.read_bytes())
    (src / "notes.txt").write_text("skipped: not an image")
    assert main(["predict", "--checkpoint", str(model), str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "box" in out and "{" not in out
    img = cv2.imread(str(tmp_path / "out" / "in" / "sub" / "a.png"))
    assert img is not None and img.shape == (360, 640, 3)
    assert not np.array_equal(img, cv2.imread(str(path)))            # something was drawn


def test_bad_files_are_one_line_each_and_the_rest_is_processed(model, photo, tmp_path, capsys):
    path, _, _ = photo
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.png").write_bytes(path.read_bytes())
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    rc = main(["predict", "--checkpoint", str(model), str(d), "--json"])
    cap = capsys.readouterr()
    assert rc == 1
    errs = cap.err.strip().splitlines()
    assert len(errs) == 1 and "broken.jpg" in errs[0] and errs[0].startswith("error: ") and "Traceback" not in cap.err
    rows = _json_lines(cap.out)
    assert rows and all(r["source"].endswith("good.png") for r in rows)
    # a wrong file type and an unreadable video, each one line
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "bad.mp4").write_bytes(b"no video here")
    rc = main(["predict", "--checkpoint", str(model), str(tmp_path / "doc.pdf"), str(tmp_path / "bad.mp4"),
               str(path), "--quiet"])
    cap = capsys.readouterr()
    errs = cap.err.strip().splitlines()
    assert rc == 1 and len(errs) == 2 and "doc.pdf" in errs[0] and "bad.mp4" in errs[1], cap.err
    assert "group.png" in cap.out


def test_foreign_checkpoint_is_one_line(tmp_path, photo, capsys):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", "--checkpoint", str(bad), str(photo[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.pt" in err[0]


def test_tracker_matches_by_iou_and_smooths():
    t = IoUTracker(smooth=True)
    a = t.update([Face((10, 10, 50, 50), "x", {"x": 1.0, "y": 0.0}), Face((200, 10, 50, 50), "y", {"x": 0.0, "y": 1.0})])
    b = t.update([Face((205, 12, 50, 50), "x", {"x": 1.0, "y": 0.0}), Face((12, 11, 50, 50), "x", {"x": 1.0, "y": 0.0})])
    assert [f.track for f in a] == [0, 1] and [f.track for f in b] == [1, 0]
    assert b[0].probs == pytest.approx({"x": 0.5, "y": 0.5}) and b[1].probs == pytest.approx({"x": 1.0, "y": 0.0})


@pytest.fixture(scope="module")
def video(photo, tmp_path_factory):
    """10 frames 320 x 240 of one pasted face (128 px) moving 4 px per frame."""
    _, img, boxes = photo
    x, y, w, h = boxes[1]
    face = img[y:y + h, x:x + w]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for i in range(10):
        f = np.full((240, 320, 3), 170, np.uint8)
        f[50:50 + h, 40 + 4 * i:40 + 4 * i + w] = face[:, :, ::-1]
        vw.write(f)
    vw.release()
    return path


def test_video_tracks_smooths_and_writes_outputs(model, video, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(model), str(video), "--json", "--quiet"]) == 0
    raw = _json_lines(capsys.readouterr().out)
    assert [r["frame"] for r in raw] == list(range(10)) and {r["track"] for r in raw} == {0}
    assert main(["predict", "--checkpoint", str(model), str(video), "--json", "--every", "2", "--smooth",
                 "--out", str(tmp_path / "o")]) == 0
    sm = _json_lines(capsys.readouterr().out)
    assert [r["frame"] for r in sm] == [0, 2, 4, 6, 8] and {r["track"] for r in sm} == {0}
    by_frame = {r["frame"]: r for r in raw}
    assert sm[0]["probs"] == by_frame[0]["probs"]                  # the first frame has no history
    diff = max(abs(r["probs"][k] - by_frame[r["frame"]]["probs"][k]) for r in sm[1:] for k in r["probs"])
    assert diff > 1e-6 and all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in sm)
    cap = cv2.VideoCapture(str(tmp_path / "o" / "clip.annotated.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5
    s = json.loads((tmp_path / "o" / "clip.summary.json").read_text())
    assert s["processed_frames"] == 5 and s["frames"] == 10 and s["smooth_alpha"] == 0.5
    assert s["tracks"]["0"]["frames"] == 5 and abs(sum(s["tracks"]["0"]["share"].values()) - 1) < 1e-3
    assert (tmp_path / "o" / "clip.timeline.png").stat().st_size > 1000


def test_onnx_path_equals_the_checkpoint(model, photo, tmp_path):
    from robustfer.infer.export import export_onnx

    export_onnx(model, tmp_path / "m.onnx")
    _, img, _ = photo
    a = Predictor(checkpoint=model).predict(img)
    b = Predictor(onnx=tmp_path / "m.onnx").predict(img)
    assert [f.box for f in a] == [f.box for f in b] and len(a) >= 2
    assert max(abs(fa.probs[k] - fb.probs[k]) for fa, fb in zip(a, b) for k in fa.probs) < 1e-4
