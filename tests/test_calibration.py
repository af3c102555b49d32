import pytest
import torch

from labkit.calibration import expected_calibration_error


def test_ece_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[0.75, 0.25]] * 4)  # confidence 0.75, right 3 times out of 4
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_ece_is_the_weighted_gap_per_bin():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([1, 1, 0, 0])  # the confident half is always wrong, the hesitant half always right
    # bins of 0.1: (0.9, 1.0] holds 2 with |0.95 - 0| and (0.5, 0.6] holds 2 with |0.6 - 1|
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.5 * 0.95 + 0.5 * 0.4)


@pytest.mark.parametrize(
    ("probs", "labels", "bins", "match"),
    [(torch.ones(3, 2) / 2, torch.zeros(3, dtype=torch.long), 0, r"bins must be an int >= 1, got 0"),
     (torch.ones(3, 2) / 2, torch.zeros(2, dtype=torch.long), 15, r"probs N x classes and labels N.*\(3, 2\).*\(2,\)"),
     (torch.ones(3) / 3, torch.zeros(3, dtype=torch.long), 15, r"probs N x classes.*got probs \(3,\)")],
)
def test_ece_bad_input(probs, labels, bins, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels, bins)
