"""The one exception type users see: the CLI prints its message as one line and exits non-zero."""


class RobustferError(Exception):
    """A problem with the user's input or environment; the message says what, where, and the fix."""


def _kept(out, epoch: int) -> str:
    """What the run folder still holds when a step fails in `epoch` (0-based; last.pt is written at each epoch's end)."""
    if epoch == 0:
        return f"no epoch had finished, so {out} holds no checkpoint"
    return f"{out}/last.pt keeps the last good epoch (continue with --resume)"


def check_finite_loss(loss, what: str, epoch: int, step: int, lr: float, out, fix: str = "lower --lr") -> None:
    """Stop a training loop (train or pretrain) on a NaN / inf loss with one line: where (epoch and step within
    it, both from 0 as in metrics.jsonl), the fix, and that the run folder's last.pt keeps the last good epoch."""
    if not bool(loss.isfinite()):
        raise RobustferError(f"loss became {loss.item()} at epoch {epoch} step {step} ({what}, lr {lr}): {fix}; "
                             f"{_kept(out, epoch)}")


def check_finite_grad(norm, what: str, epoch: int, step: int, lr: float, out, fix: str = "lower --lr") -> None:
    """Stop before the optimiser step when the total gradient norm is NaN / inf although the loss was finite
    (the weights stay as they were), with one line as check_finite_loss's."""
    if not bool(norm.isfinite()):
        raise RobustferError(f"gradient norm became {norm.item()} at epoch {epoch} step {step} ({what}, lr {lr}) with a "
                             f"finite loss: {fix}; the weights were not updated, {_kept(out, epoch)}; "
                             "--detect-anomaly names the operation")


def anomaly_error(err: Exception, what: str, epoch: int, step: int, lr: float, out, fix: str = "lower --lr") -> RobustferError:
    """autograd's --detect-anomaly error ("Function 'XBackward0' returned nan values ...") as one line naming
    where; torch's warning printed just before it holds the forward call that made the value."""
    msg = str(err).strip().rstrip(".")
    return RobustferError(f"{msg} at epoch {epoch} step {step} ({what}, lr {lr}; --detect-anomaly: the forward call "
                          f"that made it is in the warning above): {fix}; {_kept(out, epoch)}")
