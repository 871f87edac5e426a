"""Transfer learning (bundle/scripts/transfer.py): pretrained weights loaded strictly and safely, the encoder of each
network named by its config, frozen for the first epochs or trained at a lower learning rate."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BUNDLE, bundle_config
from ignite.engine import Engine, Events
from test_configs import TINY_TRAINING

from scripts.errors import InputError
from scripts.transfer import FreezeEncoder, encoder_parameter_names, load_pretrained, parameter_groups

NETWORK_CONFIGS = [[], ["configs/segnet.json"], ["configs/usegnet.json"], ["configs/tiramisu.json"]]


def network_and_encoder(extra: list[str]) -> tuple[torch.nn.Module, str]:
    config = bundle_config(["configs/train.json", *extra], {"device": "cpu"})
    return config.get_parsed_content("network_def"), config.get_parsed_content("encoder_layers")


def test_no_pretrained_path_leaves_the_network_as_built():
    network = torch.nn.Linear(2, 1)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    assert load_pretrained(network, None) is network and load_pretrained(network, "") is network
    assert all(torch.equal(value, before[name]) for name, value in network.state_dict().items())


def test_pretrained_weights_are_loaded_exactly(tmp_path):
    source, target = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(1, 4, 3)
    torch.save(source.state_dict(), tmp_path / "pretrained.pt")
    load_pretrained(target, tmp_path / "pretrained.pt")
    assert all(torch.equal(target.state_dict()[name], value) for name, value in source.state_dict().items())


def test_a_shape_mismatch_names_the_first_layer_with_found_and_expected_shapes_and_loads_nothing(tmp_path):
    network, _ = network_and_encoder([])
    other = bundle_config(["configs/train.json"], {"section_context": 1}).get_parsed_content("network_def")
    torch.save(other.state_dict(), tmp_path / "three_sections.pt")
    before = {name: value.clone() for name, value in network.state_dict().items()}
    with pytest.raises(InputError) as caught:
        load_pretrained(network, tmp_path / "three_sections.pt")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'three_sections.pt'}: weights do not fit the configured network_def")
    assert "size mismatch: model.0.conv.unit0.conv.weight (16, 3, 3, 3) instead of (16, 1, 3, 3)" in message
    assert "\n" not in message and "--section_context 1" in message
    assert all(torch.equal(value, before[name]) for name, value in network.state_dict().items())


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_weights_file_is_never_unpickled_as_objects(tmp_path, capsys):
    path = tmp_path / "pickled.pt"
    torch.save({"model.0.weight": _Payload()}, path)
    with pytest.raises(InputError, match="cannot be read as PyTorch weights"):
        load_pretrained(torch.nn.Linear(2, 1), path)
    assert "unpickled!" not in capsys.readouterr().out


def test_a_missing_pretrained_file_says_which_flag(tmp_path):
    with pytest.raises(InputError, match=r"missing\.pt: pretrained weights file not found \(--pretrained_path\)"):
        load_pretrained(torch.nn.Linear(2, 1), tmp_path / "missing.pt")


@pytest.mark.parametrize("extra", NETWORK_CONFIGS, ids=["unet", "segnet", "usegnet", "tiramisu"])
def test_each_networks_encoder_is_everything_before_its_first_upsampling(extra):
    """The encoder a config names: all parameters a forward pass uses before the first upsampling layer runs."""
    network, encoder_layers = network_and_encoder(extra)
    used_first: list[str] = []
    upsampled = []

    def record(module, args) -> None:
        if not upsampled:
            used_first.extend(f"{module.path}.{name}" for name, _ in module.named_parameters(recurse=False))

    hooks = []
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.ConvTranspose2d) or name.startswith("decoder."):
            hooks.append(module.register_forward_pre_hook(lambda *_: upsampled.append(True)))
        elif list(module.parameters(recurse=False)):
            module.path = name
            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        network.eval()(torch.rand(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    assert sorted(encoder_parameter_names(network, encoder_layers)) == sorted(used_first)


def test_a_pattern_for_another_network_is_refused():
    network, _ = network_and_encoder(["configs/segnet.json"])
    unet_pattern = bundle_config(["configs/train.json"]).get_parsed_content("encoder_layers")
    with pytest.raises(InputError, match=r"encoder_layers .* matches none of the 106 parameters of SegNet"):
        encoder_parameter_names(network, unet_pattern)
    with pytest.raises(InputError, match="matches all of"):
        encoder_parameter_names(network, ".")


def test_encoder_learning_rate_scale_makes_two_groups_and_one_keeps_the_default():
    network, encoder_layers = network_and_encoder([])
    assert len(torch.optim.Adam(parameter_groups(network, encoder_layers, 1e-3, 1.0), lr=1e-3).param_groups) == 1
    groups = torch.optim.Adam(parameter_groups(network, encoder_layers, 1e-3, 0.1), lr=1e-3).param_groups
    assert [group["lr"] for group in groups] == [1e-3, pytest.approx(1e-4)]  # the log shows the first group's
    encoder = set(encoder_parameter_names(network, encoder_layers))
    by_id = {id(parameter): name for name, parameter in network.named_parameters()}
    assert {by_id[id(p)] for p in groups[1]["params"]} == encoder
    assert {by_id[id(p)] for p in groups[0]["params"]} == set(by_id.values()) - encoder


@pytest.mark.parametrize("scale", [0.001, 0, -1])
def test_an_encoder_rate_under_the_schedules_floor_is_refused(scale):
    """The cosine schedule takes every group to 1 % of the learning rate: from below, the encoder's would rise."""
    network, encoder_layers = network_and_encoder([])
    with pytest.raises(InputError, match=f"--encoder_lr_scale: {scale!r} is out of range"):
        parameter_groups(network, encoder_layers, 1e-3, scale)


def test_the_encoder_stays_fixed_for_the_first_epochs_then_trains():
    network, encoder_layers = network_and_encoder(["configs/segnet.json"])
    encoder = set(encoder_parameter_names(network, encoder_layers))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    snapshots = []

    def weights() -> dict:
        return {name: parameter.detach().clone() for name, parameter in network.named_parameters()}

    def step(engine, batch):
        optimizer.zero_grad()
        network(torch.rand(2, 1, 32, 32)).square().mean().backward()
        optimizer.step()

    trainer = Engine(step)
    FreezeEncoder(network, encoder_layers, epochs=2).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: snapshots.append(weights()))
    initial = weights()
    trainer.run([0, 1], max_epochs=3)
    for epoch, snapshot in enumerate(snapshots, start=1):
        changed = {name for name in snapshot if not torch.equal(snapshot[name], initial[name])}
        assert changed.isdisjoint(encoder) if epoch <= 2 else encoder <= changed, epoch
        assert changed - encoder  # the rest trains throughout
    assert all(parameter.requires_grad for parameter in network.parameters())


def bundle_training(config_files: list[str], *overrides: str) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config_files), *overrides]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_pretraining_targets_are_each_section_itself_aligned_with_its_corrupted_input():
    config = bundle_config(["configs/train.json", "configs/pretrain.json"], {"device": "cpu"})
    items = config.get_parsed_content("train#datalist")
    assert len(items) == 30 and all(np.array_equal(item["image"], item["label"]) for item in items)
    for transform in config["train"]["random_transforms"][3:]:  # intensity jitter of the input only
        transform["prob"] = 0.0
    corruption = config["corruption_transforms"]
    config["corruption_transforms"] = []
    sample = config.get_parsed_content("train#preprocessing", lazy=False)(items[0])
    torch.testing.assert_close(sample["image"], sample["label"])  # the same warp, crop and flips
    assert 0 <= sample["label"].min() and sample["label"].max() <= 1
    config["corruption_transforms"] = corruption
    sample = config.get_parsed_content("train#preprocessing", lazy=False)(items[0])
    assert (sample["image"] - sample["label"]).abs().mean() > 0.02


def test_pretraining_then_fine_tuning_from_its_weights_with_the_encoder_frozen(tiny_stack_dir, tmp_path):
    """configs/pretrain.json writes weights that --pretrained_path starts from; after one frozen epoch the model
    file's encoder is still exactly the pretrained one while the rest has trained (no weight average in the
    fine-tuning: its arithmetic would move a fixed weight by rounding)."""
    common = ["--dataset_dir", str(tiny_stack_dir), "--max_epochs", "1", *TINY_TRAINING]
    bundle_training(
        ["configs/train.json", "configs/pretrain.json"], *common,
        "--ckpt_dir", str(tmp_path / "pretrained"), "--output_dir", str(tmp_path / "pretraining"),
    )  # fmt: skip
    assert [path.name for path in (tmp_path / "pretrained").iterdir()] == ["pretrained.pt"]  # never a model.pt
    pretrained = torch.load(tmp_path / "pretrained" / "pretrained.pt", map_location="cpu", weights_only=True)
    bundle_training(
        ["configs/train.json"], *common, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "run"),
        "--pretrained_path", str(tmp_path / "pretrained" / "pretrained.pt"), "--freeze_encoder_epochs", "1",
        "--ema_momentum", "0",
    )  # fmt: skip
    trained = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    network, encoder_layers = network_and_encoder([])
    encoder = set(encoder_parameter_names(network, encoder_layers))
    assert all(torch.equal(trained[name], pretrained[name]) for name in encoder)
    assert not all(torch.equal(trained[name], pretrained[name]) for name in trained if name not in encoder)
