"""`robustfer serve`: the page's analysis function, and the real page driven in headless Chromium (Playwright):
upload a photo, press Classify, read the labels off the page and compare them with the Predictor's."""
import os
import shutil
import socket

import numpy as np
import pytest

from robustfer.cli import main
from robustfer.errors import RobustferError
from robustfer.infer.predict import Predictor
from robustfer.infer.serve import analyse, faces_html, run_serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_analyse_boxes_the_faces_and_writes_one_block_per_face(model, photo):
    _, img, _ = photo
    p = Predictor(checkpoint=model)
    shown, page = analyse(p, img)
    faces = p.predict(img)
    assert len(faces) >= 2
    assert shown.shape == img.shape and shown.dtype == np.uint8
    assert (shown != img).any(axis=2).sum() > 100          # boxes and labels were drawn
    assert page.count('class="rf-face"') == len(faces)
    for f in faces:
        assert f'data-label="{f.label}"' in page
    assert page.count('class="rf-row"') == len(faces) * len(p.classes)   # a bar per class per face


def test_analyse_grey_rgba_and_no_face(model, photo):
    _, img, _ = photo
    p = Predictor(checkpoint=model)
    grey = img[:, :, 0]
    shown, page = analyse(p, grey)
    assert shown.shape == grey.shape + (3,) and page.count('class="rf-face"') >= 2
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert analyse(p, rgba)[1] == analyse(p, img)[1]
    blank = np.full((300, 400, 3), 128, np.uint8)
    assert "No face found" in analyse(p, blank)[1]
    assert analyse(p, None)[0] is None
    assert "rf-error" in analyse(p, np.zeros((4, 4, 7), np.uint8))[1]


def test_faces_html_escapes_and_orders_bars():
    from robustfer.infer.predict import Face

    f = Face((1, 2, 3, 4), "<b>", {"<b>": 0.7, "a": 0.3})
    page = faces_html([f], ("a", "<b>"))
    assert "<b>" not in page and 'data-label="&lt;b&gt;"' in page
    assert page.index('width:80px">&lt;b&gt;<') < page.index('width:80px">a<')     # most likely class first
    assert "width:70.0%" in page and "width:30.0%" in page
    assert "No face found" in faces_html([], ("a",))


def test_serve_bad_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) != 0
    err = capsys.readouterr().err
    assert "missing.pt" in err and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_headless_chromium(model, photo):
    """End to end: the Gradio page in Debian's Chromium, a real upload and click. .ci/run installs chromium and
    sets ROBUSTFER_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("ROBUSTFER_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    path, img, _ = photo
    expected = [f.label for f in Predictor(checkpoint=model).predict(img)]
    port = _free_port()
    app = run_serve(checkpoint=model, port=port, block=False)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
                page.locator("#rf-input input[type=file]").set_input_files(str(path), timeout=60_000)
                page.locator("#rf-input img").first.wait_for(timeout=60_000)   # the upload finished
                page.locator("#rf-classify").click()
                page.locator(".rf-face").first.wait_for(timeout=60_000)
                labels = page.locator(".rf-face").evaluate_all("els => els.map(e => e.dataset.label)")
                page.locator(".rf-face img.rf-cam").first.wait_for(timeout=60_000)
                # each face's heat map beside its bars, decoded (96 x 96 px) and shown by the browser
                cams = page.locator(".rf-face").evaluate_all(
                    "els => els.map(e => { const i = e.querySelector('img.rf-cam'); "
                    "return i && i.complete ? [i.naturalWidth, i.getBoundingClientRect().width > 0] : null; })")
                shown = page.locator("#rf-output img").first
                shown.wait_for(timeout=60_000)
            finally:
                browser.close()
    finally:
        app.close()
    assert len(expected) >= 2
    assert labels == expected
    assert cams == [[96, True]] * len(expected)
