"""Resume-checkpoint lookup and weight loading errors (the engines' handlers run in test_configs.py)."""

import pytest
import torch

from scripts.handlers import latest_checkpoint, load_weights


def test_latest_checkpoint_is_the_highest_epoch(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")


def test_latest_checkpoint_explains_when_there_is_none(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint_epoch=N.pt to resume from"):
        latest_checkpoint(tmp_path)


def test_load_weights_accepts_plain_and_wrapped_state_dicts(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        load_weights(target, tmp_path / name)
        assert torch.equal(target.weight, source.weight)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "weights file not found"), (b"not a checkpoint", "cannot be read"), ("other", "do not fit")],
)
def test_load_weights_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "other":
        torch.save(torch.nn.Linear(4, 4).state_dict(), path)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as error:
        load_weights(torch.nn.Linear(3, 2), path)
    assert str(path) in str(error.value)
