"""robustfer: facial expression recognition under noisy and ambiguous labels."""

__version__ = "0.1.0"
