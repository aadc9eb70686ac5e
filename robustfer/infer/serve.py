"""`robustfer serve`: a local web page (Gradio) where a person uploads a photo or takes one with the webcam and
sees every face boxed, with its label and a probability bar chart per face, and beside the bars the heat map of
where the model looked for the predicted class (infer/explain.py; PyTorch models only).

The page's work is one pure function, `analyse` (RGB image -> annotated image + the per-face HTML), so it is
tested without a browser; tests/infer/test_serve.py also drives the real page in headless Chromium. Nothing is
fetched from the internet: Gradio's analytics are off and the theme uses the system's fonts.
"""
from __future__ import annotations

import html
import os

import numpy as np

from robustfer.errors import RobustferError
from robustfer.infer.predict import Face, Predictor, annotate

TITLE = "robustfer: facial expressions"
BAR_COLOUR = "#3b82f6"


def faces_html(faces: list[Face], classes: tuple[str, ...], cams: list[str] | None = None) -> str:
    """One block per face: its number, label and a bar per class (most likely first), beside it the heat map of
    the predicted class (`cams`: PNG data URIs, infer/explain.py) when given. Each block is a `div.rf-face` with
    `data-label`, so a test (or a user's script) can read the result off the page."""
    if not faces:
        return '<div class="rf-none">No face found in this image. Try a photo where the face is larger or frontal.</div>'
    parts = []
    for i, f in enumerate(faces, 1):
        rows = []
        for c in sorted(classes, key=lambda c: -f.probs.get(c, 0.0)):
            p = f.probs.get(c, 0.0)
            rows.append(
                f'<div class="rf-row" style="display:flex;align-items:center;gap:6px;font-size:13px">'
                f'<span style="width:80px">{html.escape(c)}</span>'
                f'<span style="flex:1;background:#e5e7eb;height:12px;border-radius:3px">'
                f'<span style="display:block;width:{100 * p:.1f}%;height:12px;background:{BAR_COLOUR};'
                f'border-radius:3px"></span></span><span style="width:48px;text-align:right">{100 * p:.1f}%</span></div>')
        where = "whole image" if f.whole or f.box is None else "box x={} y={} w={} h={}".format(*f.box)
        bars = "".join(rows)
        if cams and cams[i - 1]:  # the heat map left of the bars: where the model looked for the predicted class
            bars = (f'<div style="display:flex;gap:10px;align-items:flex-start"><img class="rf-cam" '
                    f'src="{cams[i - 1]}" width="96" height="96" alt="heat map of {html.escape(str(f.label))}" '
                    f'title="Grad-CAM of {html.escape(str(f.label))}"><div style="flex:1">{bars}</div></div>')
        parts.append(
            f'<div class="rf-face" data-label="{html.escape(str(f.label))}" style="margin:8px 0">'
            f'<div style="font-weight:600">Face {i}: <span class="rf-label">{html.escape(str(f.label))}</span> '
            f'({100 * f.probs.get(f.label, 0.0):.1f}%) <span style="font-weight:400;color:#6b7280">{where}</span></div>'
            + bars + "</div>")
    return "\n".join(parts)


def analyse(predictor: Predictor, image: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """RGB uint8 image (H x W x 3, or H x W grey, or RGBA) -> (a copy with the faces boxed, the per-face HTML)."""
    if image is None:
        return None, '<div class="rf-none">Upload a photo or take one with the webcam.</div>'
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        return None, f'<div class="rf-error">Not an image this page can read (array of shape {img.shape}).</div>'
    img = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8, copy=False)
    faces, cams = faces_and_cams(predictor, img)
    shown = annotate(np.ascontiguousarray(img[:, :, ::-1]), faces)[:, :, ::-1]
    return np.ascontiguousarray(shown), faces_html(faces, predictor.classes, cams)


def faces_and_cams(predictor: Predictor, img: np.ndarray) -> tuple[list[Face], list[str] | None]:
    """The faces (as predict finds and classifies them) and each one's heat-map data URI; an ONNX model has no
    gradients: its faces come without heat maps."""
    if getattr(predictor, "_model", None) is None:
        return predictor.predict(img), None
    from robustfer.infer.explain import explain, overlay_data_uri

    found = explain(predictor, img)
    return [e.face for e in found], [overlay_data_uri(e) for e in found]


def build_app(predictor: Predictor):
    """The Gradio Blocks app around `analyse` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\nUpload a photo (or use the webcam), then press **Classify**. "
                    f"Model: `{os.path.basename(predictor.source)}` ({len(predictor.classes)} classes: "
                    f"{', '.join(predictor.classes)}).")
        with gr.Row():
            with gr.Column():
                inp = gr.Image(label="photo", sources=["upload", "webcam"], type="numpy", elem_id="rf-input")
                btn = gr.Button("Classify", variant="primary", elem_id="rf-classify")
            with gr.Column():
                shown = gr.Image(label="faces", type="numpy", interactive=False, elem_id="rf-output")
                result = gr.HTML(elem_id="rf-result")
        btn.click(lambda im: analyse(predictor, im), inputs=inp, outputs=[shown, result])
    return app


def offline_theme():
    """Gradio's default theme on the system's fonts (the default ones come from Google Fonts: no network here)."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])


def run_serve(checkpoint=None, onnx=None, host: str = "127.0.0.1", port: int = 7860, detector=None,
              no_detect: bool = False, block: bool = True):
    """Load the model, build the page and serve it on http://host:port (blocks until Ctrl-C unless `block` is
    False, when the running app is returned)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise RobustferError("`robustfer serve` needs Gradio: pip install gradio") from None
    predictor = Predictor(checkpoint=checkpoint, onnx=onnx, detector=detector, no_detect=no_detect)
    app = build_app(predictor)
    if block:
        print(f"robustfer serve: http://{host}:{port} (model {predictor.source}; Ctrl-C stops)", flush=True)
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                   inbrowser=False, show_error=True, quiet=not block, theme=offline_theme())
    except OSError as e:
        raise RobustferError(f"cannot serve on {host}:{port} ({e}): pass a free --port") from None
    return app
