"""The shared NaN / inf loss stop of train and pretrain."""
import pytest
import torch

from robustfer.errors import RobustferError, check_finite_loss


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_is_one_line_naming_the_run_and_the_fix(bad):
    with pytest.raises(RobustferError, match=r"at epoch 3 step 7 \(mae, lr 0.1\): lower --lr; runs/x/last.pt keeps"):
        check_finite_loss(torch.tensor(bad), "mae", 3, 7, 0.1, "runs/x")


def test_finite_loss_passes():
    assert check_finite_loss(torch.tensor(0.5), "ce", 0, 0, 0.1, "runs/x") is None
