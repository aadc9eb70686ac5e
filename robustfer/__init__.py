"""robustfer: facial expression recognition under noisy and ambiguous labels."""

__version__ = "0.1.0"


def __getattr__(name):   # lazy: `import robustfer` stays light (no torch, no OpenCV)
    if name in ("Predictor", "Face"):
        from robustfer.infer import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'robustfer' has no attribute {name!r}")
