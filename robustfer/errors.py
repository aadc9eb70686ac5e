"""The one exception type users see: the CLI prints its message as one line and exits non-zero."""


class RobustferError(Exception):
    """A problem with the user's input or environment; the message says what, where, and the fix."""


def check_finite_loss(loss, what: str, epoch: int, step: int, lr: float, out, fix: str = "lower --lr") -> None:
    """Stop a training loop (train or pretrain) on a NaN / inf loss with one line: where, the fix, and that the
    run folder's last.pt keeps the last good epoch."""
    if not bool(loss.isfinite()):
        raise RobustferError(f"loss became {loss.item()} at epoch {epoch} step {step} ({what}, lr {lr}): {fix}; "
                             f"{out}/last.pt keeps the last good epoch (continue with --resume)")
