"""Using trained models: face detection, prediction on images and video, ONNX export.

Keep this file light (no eager torch or robustfer.models imports): `robustfer.infer.onnx_model` must be
importable with onnxruntime and numpy alone.
"""
