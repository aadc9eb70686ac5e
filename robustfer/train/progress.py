"""A rich progress bar per epoch with images/s, and one printed line per finished epoch."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


class SpeedColumn(ProgressColumn):
    """Images per second of the running epoch."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:>6.0f} img/s" if task.speed else "   ... img/s")


class EpochProgress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            SpeedColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=self.console, transient=True, disable=quiet)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def report(self, row: dict) -> None:
        if self.quiet:
            return
        extra = ""
        if "flagged_fraction" in row:
            extra = f"  flagged {row['flagged_fraction']:.3f} P {row['noise_precision']:.3f} R {row['noise_recall']:.3f}"
        acc = (f"acc {row['accuracy']:.4f}  mean-class {row['mean_class_accuracy']:.4f}" if "accuracy" in row
               else "(not evaluated: --eval-every)")
        self.console.print(
            f"epoch {row['epoch'] + 1}: loss {row['train_loss']:.4f}  {acc}  lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s{extra}")
