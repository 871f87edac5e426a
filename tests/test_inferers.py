"""Test-time augmentation inferer: the exact symmetry it promises, checked against views written out by hand."""

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.errors import InputError
from scripts.inferers import DihedralAverageInferer, with_test_time_augmentation

# The 8 symmetries of the square as (view, undo) pairs, written independently of the inferer's rot90-then-flip loop:
# the identity, three quarter turns, two mirrors and the two diagonal reflections (transposes), each undone by its
# inverse (the reflections are their own).
DIHEDRAL = {
    "identity": (lambda x: x, lambda y: y),
    "turn 90": (lambda x: torch.rot90(x, 1, (-2, -1)), lambda y: torch.rot90(y, -1, (-2, -1))),
    "turn 180": (lambda x: torch.rot90(x, 2, (-2, -1)), lambda y: torch.rot90(y, 2, (-2, -1))),
    "turn 270": (lambda x: torch.rot90(x, 3, (-2, -1)), lambda y: torch.rot90(y, 1, (-2, -1))),
    "mirror rows": (lambda x: torch.flip(x, (-2,)), lambda y: torch.flip(y, (-2,))),
    "mirror columns": (lambda x: torch.flip(x, (-1,)), lambda y: torch.flip(y, (-1,))),
    "transpose": (lambda x: x.transpose(-2, -1), lambda y: y.transpose(-2, -1)),
    "anti-transpose": (
        lambda x: torch.flip(x, (-2, -1)).transpose(-2, -1),
        lambda y: torch.flip(y, (-2, -1)).transpose(-2, -1),
    ),
}


def orientation_dependent_network() -> torch.nn.Module:
    """A small network equivariant to no flip or turn: two layers of random (asymmetric) 3x3 kernels."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 3, padding=1)
    ).eval()  # fmt: skip


def views_undone(inputs: torch.Tensor, network) -> dict[str, torch.Tensor]:
    """The network's output on each of the 8 views of ``inputs``, each turned back to the input's orientation."""
    with torch.no_grad():
        return {name: undo(network(view(inputs))) for name, (view, undo) in DIHEDRAL.items()}


def test_the_views_are_the_eight_distinct_symmetries():
    square = torch.arange(9.0).reshape(1, 1, 3, 3)
    seen = {tuple(view(square).flatten().tolist()) for view, _ in DIHEDRAL.values()}
    assert len(seen) == 8  # 8 different pixel permutations of an asymmetric square: the whole group
    for view, undo in DIHEDRAL.values():
        torch.testing.assert_close(undo(view(square)), square, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 1, 12, 20), (1, 1, 16, 16)])
def test_the_output_is_the_mean_of_the_network_over_the_eight_views_undone(shape):
    network = orientation_dependent_network()
    inputs = torch.rand(*shape)
    undone = views_undone(inputs, network)
    # the views disagree (else any average, or a single view, would pass): the mean below is the inferer's doing
    assert min((a - b).abs().max() for a in undone.values() for b in undone.values() if a is not b) > 1e-3
    with torch.no_grad():
        output = DihedralAverageInferer(SimpleInferer())(inputs, network)
    torch.testing.assert_close(output, torch.stack(list(undone.values())).mean(0), rtol=0, atol=1e-6)


def test_a_dihedrally_symmetric_input_gives_a_dihedrally_symmetric_output():
    network = orientation_dependent_network()
    seed = torch.rand(1, 1, 24, 24)
    symmetric = torch.stack([view(seed) for view, _ in DIHEDRAL.values()]).mean(0)  # the orbit average of a seed
    for view, _ in DIHEDRAL.values():
        torch.testing.assert_close(view(symmetric), symmetric, rtol=0, atol=1e-6)
    with torch.no_grad():
        plain = network(symmetric)
        output = DihedralAverageInferer(SlidingWindowInferer(roi_size=(16, 16), overlap=0.5))(symmetric, network)
    # the network alone breaks the symmetry of its input; the average restores it exactly
    assert max((view(plain) - plain).abs().max() for view, _ in DIHEDRAL.values()) > 1e-3
    for name, (view, _) in DIHEDRAL.items():
        torch.testing.assert_close(view(output), output, rtol=0, atol=1e-6, msg=name)


def test_the_output_turns_and_mirrors_with_the_input():
    network = orientation_dependent_network()
    inferer = DihedralAverageInferer(SlidingWindowInferer(roi_size=(16, 16), overlap=0.5))
    inputs = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        direct = inferer(inputs, network)
        for name, (view, _) in DIHEDRAL.items():
            torch.testing.assert_close(inferer(view(inputs), network), view(direct), rtol=0, atol=1e-6, msg=name)


def test_an_equivariant_network_is_unchanged():
    inputs = torch.rand(2, 1, 12, 20)
    output = DihedralAverageInferer(SimpleInferer())(inputs, lambda x: 2 * x)
    torch.testing.assert_close(output, 2 * inputs)


@pytest.mark.parametrize(("enabled", "wrapped"), [(True, True), ("yes", True), (1, True), ("false", False), (0, False)])
def test_the_switch_wraps_the_inferer_only_when_on(enabled, wrapped):
    plain = SimpleInferer()
    chosen = with_test_time_augmentation(plain, enabled)
    assert isinstance(chosen, DihedralAverageInferer) is wrapped and (chosen is plain) is not wrapped


def test_the_switch_rejects_an_unknown_value():
    with pytest.raises(InputError, match="--test_time_augmentation: 'maybe' is not a boolean"):
        with_test_time_augmentation(SimpleInferer(), "maybe")
