"""Test-time augmentation inferer."""

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.errors import InputError
from scripts.inferers import DihedralAverageInferer, with_test_time_augmentation


def test_an_equivariant_network_is_unchanged():
    inputs = torch.rand(2, 1, 12, 20)
    output = DihedralAverageInferer(SimpleInferer())(inputs, lambda x: 2 * x)
    torch.testing.assert_close(output, 2 * inputs)


def test_output_is_invariant_to_the_input_orientation():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    inferer = DihedralAverageInferer(SlidingWindowInferer(roi_size=(16, 16), overlap=0.5))
    inputs = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        direct = inferer(inputs, network)
        turned = inferer(torch.rot90(inputs, 1, dims=(-2, -1)), network)
    torch.testing.assert_close(torch.rot90(direct, 1, dims=(-2, -1)), turned, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(direct, network(inputs))  # the kernel is not symmetric: averaging changed it


@pytest.mark.parametrize(("enabled", "wrapped"), [(True, True), ("yes", True), (1, True), ("false", False), (0, False)])
def test_the_switch_wraps_the_inferer_only_when_on(enabled, wrapped):
    plain = SimpleInferer()
    chosen = with_test_time_augmentation(plain, enabled)
    assert isinstance(chosen, DihedralAverageInferer) is wrapped and (chosen is plain) is not wrapped


def test_the_switch_rejects_an_unknown_value():
    with pytest.raises(InputError, match="--test_time_augmentation: 'maybe' is not a boolean"):
        with_test_time_augmentation(SimpleInferer(), "maybe")
