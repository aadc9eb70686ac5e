"""Qualitative figures of a train run (`robustfer report`): t-SNE of features, confusion heat map, per-class recall,
the training images the method distrusts most. `figures.py`: plain functions on arrays; `run.py`: a run folder."""
from robustfer.report.run import make_report, report_grid

__all__ = ["make_report", "report_grid"]
