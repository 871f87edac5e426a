"""SegNet, U-SegNet and Tiramisu (bundle/scripts/networks.py): shapes, index unpooling, dense blocks, gradients,
TorchScript."""

import pytest
import torch
import torch.nn.functional as F

from scripts.networks import DenseBlock, SegNet, Tiramisu, USegNet

NARROW = {"channels": (4, 8, 8), "convs_per_stage": (2, 2, 3)}
SMALL_TIRAMISU = {"layers_per_block": (2, 1, 3, 1, 2), "growth_rate": 4, "first_channels": 6}


@pytest.mark.parametrize("network_class", [SegNet, USegNet])
@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 97, 130), (1, 1, 8, 8), (1, 1, 9, 33)])
def test_output_has_the_input_size_for_any_size_of_at_least_two_to_the_depth(network_class, shape):
    network = network_class(in_channels=1, out_channels=3, **NARROW).eval()
    with torch.no_grad():
        assert network(torch.rand(shape)).shape == (shape[0], 3, *shape[2:])


def test_three_dimensional_input():
    network = USegNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8), convs_per_stage=(1, 2)).eval()
    with torch.no_grad():
        assert network(torch.rand(1, 2, 9, 10, 11)).shape == (1, 1, 9, 10, 11)


@pytest.mark.parametrize("shape", [(1, 1, 7, 64), (1, 64, 64), (1, 1, 64, 64, 64)])
def test_too_small_or_wrongly_shaped_input_is_rejected_with_the_required_size(shape):
    with pytest.raises(ValueError, match=r"2D input \(N, C, \*spatial\) with every spatial size >= 8"):
        SegNet(**NARROW)(torch.rand(shape))


@pytest.mark.parametrize(
    "arguments", [{"spatial_dims": 1}, {"channels": (4, 8), "convs_per_stage": (2,)}, {"convs_per_stage": (2, 0, 3)}]
)
def test_invalid_architectures_are_rejected(arguments):
    with pytest.raises(ValueError):
        SegNet(**{**NARROW, **arguments})


def test_default_is_the_papers_vgg16_encoder():
    network = SegNet()
    encoder_convs = [m for m in network.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in encoder_convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    batch_norms = [m for m in network.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 13  # every encoder convolution is followed by batch norm
    decoder_convs = [m for m in network.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(decoder_convs) == 13 and decoder_convs[-1].out_channels == 64


def test_unpooling_puts_each_maximum_back_where_the_encoder_found_it():
    """The pooling/unpooling pair SegNet uses, on an odd-sized map: maxima return to their positions, the
    rest is zero, and the dropped last row/column comes back as zeros at the exact original size."""
    network = SegNet(**NARROW)
    x = torch.rand(2, 3, 9, 7)
    pooled, indices = network._pool(x)
    restored = network._unpool(pooled, indices, list(x.shape[2:]))
    assert restored.shape == x.shape
    kept = restored != 0
    torch.testing.assert_close(restored[kept], x[kept])
    assert kept.sum() == pooled.numel()  # one maximum per 2x2 window, each where it was
    torch.testing.assert_close(F.max_pool2d(restored, 2), pooled)


def test_usegnet_concatenates_the_full_resolution_encoder_features_before_the_last_decoder_stage():
    plain, skipped = SegNet(**NARROW), USegNet(**NARROW)
    assert plain.decoder[-1][0].conv.in_channels == 4 and skipped.decoder[-1][0].conv.in_channels == 8
    top_features = {}
    skipped.encoder[0].register_forward_hook(lambda module, args, output: top_features.update(top=output))
    last_stage_inputs = {}
    skipped.decoder[-1].register_forward_pre_hook(lambda module, args: last_stage_inputs.update(x=args[0]))
    skipped(torch.rand(1, 1, 16, 16))
    torch.testing.assert_close(last_stage_inputs["x"][:, 4:], top_features["top"])


@pytest.mark.parametrize("network_class", [SegNet, USegNet])
def test_gradient_reaches_every_parameter(network_class):
    network = network_class(**NARROW)
    network(torch.rand(2, 1, 32, 32)).square().mean().backward()
    missing = [name for name, parameter in network.named_parameters() if parameter.grad is None]
    assert not missing
    assert all(parameter.grad.abs().sum() > 0 for parameter in network.parameters())


@pytest.mark.parametrize("network_class", [SegNet, USegNet, Tiramisu])
def test_scripted_network_equals_the_eager_one(network_class):
    network = network_class(**(SMALL_TIRAMISU if network_class is Tiramisu else NARROW)).eval()
    scripted = torch.jit.script(network)
    for shape in [(1, 1, 64, 64), (2, 1, 45, 70)]:
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), network(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("depth", "parameters"), [(56, 1.37e6), (67, 3.46e6), (103, 9.32e6)])
def test_tiramisu_depths_are_the_papers_networks(depth, parameters):
    """FC-DenseNet56/67/103: that many convolutions in sequence, and about the paper's sizes (it gives 1.5 M,
    3.5 M and 9.4 M)."""
    network = Tiramisu(depth=depth)
    convolutions = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert network.depth == depth == len(convolutions)
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(parameters, rel=0.01)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 97, 130), (1, 1, 4, 4), (1, 1, 5, 33)])
def test_tiramisu_output_has_the_input_size_for_any_size_of_at_least_two_to_the_pools(shape):
    network = Tiramisu(in_channels=1, out_channels=3, **SMALL_TIRAMISU).eval()
    with torch.no_grad():
        assert network(torch.rand(shape)).shape == (shape[0], 3, *shape[2:])


def test_tiramisu_three_dimensional_input():
    network = Tiramisu(spatial_dims=3, in_channels=2, **SMALL_TIRAMISU).eval()
    with torch.no_grad():
        assert network(torch.rand(1, 2, 9, 10, 11)).shape == (1, 1, 9, 10, 11)


def test_tiramisu_rejects_too_small_input_and_invalid_architectures():
    with pytest.raises(ValueError, match=r"every spatial size >= 4 \(one halving per transition down\)"):
        Tiramisu(**SMALL_TIRAMISU).eval()(torch.rand(1, 1, 3, 64))
    for arguments in ({"depth": 57}, {"layers_per_block": (2, 2), "growth_rate": 4}, {"layers_per_block": (2, 1, 2)}):
        with pytest.raises(ValueError):
            Tiramisu(**arguments)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tiramisu_with_instance_norm_needs_two_pixels_at_its_bottleneck(mode):
    """Instance norm normalises each input with its own statistics, in training and in evaluation alike."""
    network = getattr(Tiramisu(**SMALL_TIRAMISU, norm="instance"), mode)()
    with pytest.raises(ValueError, match=r"at its bottleneck to normalise them \(a side longer than 4\)"):
        network(torch.rand(1, 1, 4, 4))
    assert network(torch.rand(1, 1, 4, 5)).shape == (1, 1, 4, 5)
    assert Tiramisu(**SMALL_TIRAMISU, norm="batch").eval()(torch.rand(1, 1, 4, 4)).shape == (1, 1, 4, 4)


def test_dense_block_feeds_each_layer_everything_before_it_and_returns_the_new_features_apart():
    block = DenseBlock(2, in_channels=3, layers=4, growth_rate=5, dropout=0.0, norm="batch").eval()
    assert [layer[1].in_channels for layer in block.layers] == [3, 8, 13, 18]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        everything, new = block(x)
    assert everything.shape == (2, 23, 16, 16) and new.shape == (2, 20, 16, 16)
    torch.testing.assert_close(everything[:, :3], x)
    torch.testing.assert_close(everything[:, 3:], new)


def test_tiramisu_upsampling_path_carries_only_each_blocks_new_features():
    """The paper's rule that keeps the widths bounded: a transition up takes the previous block's new features
    alone (bottleneck: 3 layers x growth 4, then the first up block: 1 x 4), then joins the skip of the matching
    down block (the first convolution's 6 channels plus each down block's layers x growth)."""
    network = Tiramisu(**SMALL_TIRAMISU)
    assert [t.in_channels for t in network.transitions_up] == [3 * 4, 1 * 4]
    skips = [6 + 2 * 4, 6 + 2 * 4 + 1 * 4]
    assert [block.layers[0][1].in_channels for block in network.up_blocks] == [3 * 4 + skips[1], 1 * 4 + skips[0]]


def test_tiramisu_gradient_reaches_every_parameter():
    network = Tiramisu(**SMALL_TIRAMISU)
    network(torch.rand(2, 1, 32, 32)).square().mean().backward()
    missing = [name for name, parameter in network.named_parameters() if parameter.grad is None]
    assert not missing
