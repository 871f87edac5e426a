"""The configs' inferers: the sliding window fitted to small images, which never shows the network padding that is
not the image; test-time augmentation, with the exact symmetry it promises checked against views written out by
hand."""

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.errors import InputError
from scripts.inferers import DihedralAverageInferer, FittedWindowInferer, with_test_time_augmentation


def fitted(roi=(512, 512), multiple=16) -> FittedWindowInferer:
    return FittedWindowInferer(roi, size_multiple=multiple, sw_batch_size=1, overlap=0.25, mode="gaussian")


@pytest.mark.parametrize(
    ("size", "window"),
    [
        ((16, 16), (32, 32)),  # two multiples at least: the deepest level keeps 2 x 2 pixels to normalise
        ((64, 64), (64, 64)),
        ((100, 100), (112, 112)),
        ((358, 358), (368, 368)),
        ((511, 511), (512, 512)),
        ((200, 512), (208, 512)),
        ((513, 1000), (512, 512)),
    ],
)
def test_the_window_fits_an_image_shorter_than_it_rounded_up_to_the_network_multiple(size, window):
    assert fitted().window(size) == window


def test_the_network_sees_the_image_and_its_mirror_never_zeros():
    """MONAI's own window pads a short axis with zeros; the fitted one gives the network only image pixels."""
    seen = []

    def network(x):
        seen.append((tuple(x.shape[2:]), float(x.min())))
        return x

    image = 1 + torch.rand(1, 1, 100, 37)
    SlidingWindowInferer((512, 512), overlap=0.25)(image, network)
    assert seen.pop() == ((512, 512), 0.0)  # zeros, which instance norm takes into its statistics
    output = fitted()(image, network)
    [(shape, smallest)] = seen
    assert shape == (112, 48) and smallest >= 1
    torch.testing.assert_close(output, image)


def test_an_image_as_large_as_the_window_is_windowed_exactly_as_by_monai():
    network = orientation_dependent_network()
    image = torch.rand(1, 1, 90, 70)
    with torch.no_grad():
        expected = SlidingWindowInferer((32, 32), overlap=0.25, mode="gaussian")(image, network)
        torch.testing.assert_close(fitted((32, 32), 8)(image, network), expected, rtol=0, atol=0)


def test_a_window_the_network_cannot_take_or_an_image_too_small_for_it_is_refused():
    for roi in ((500, 500), (16, 512), (512, 512, 512)):
        with pytest.raises(InputError, match=r"--inference_roi \[.*\]: must be 2 sides, each a multiple of 16 .* 32"):
            fitted(roi)
    with pytest.raises(InputError, match="an image of 12 x 100 pixels: this network needs a 2D image of at least 16"):
        fitted()(torch.rand(1, 1, 12, 100), lambda x: x)
    with pytest.raises(InputError, match="an image of 40 x 40 x 40 pixels"):
        fitted()(torch.rand(1, 1, 40, 40, 40), lambda x: x)
    with pytest.raises(TypeError, match="pads by reflection only; 'padding_mode'"):
        FittedWindowInferer((512, 512), 16, padding_mode="constant")


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
