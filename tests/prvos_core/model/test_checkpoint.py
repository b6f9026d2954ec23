"""Checkpoints: round trip of model, optimizer and EMA teacher; architecture from checkpoint.json; strict
loading; corrupt files as CheckpointError."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from prvos_core.errors import CheckpointError
from prvos_core.model.builders import build_model
from prvos_core.model.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from prvos_core.model.ema import EmaTeacher
from prvos_core.model.loss import clip_loss

TEXT_DIM = 384
META = {"epoch": 3, "step": 120, "round": 1, "config": {"train": {"lr": 1e-4}, "model": {"size": "tiny"}}}


def _train_step(model, optimizer) -> None:
    torch.manual_seed(7)
    frames, words, word_mask = torch.rand(1, 2, 3, 64, 64), torch.randn(1, 4, TEXT_DIM), torch.ones(1, 4, dtype=bool)
    labels = (torch.rand(1, 2, 64, 64) > 0.5).long()
    optimizer.zero_grad()
    clip_loss(model.forward_clip(frames, words, word_mask), labels).total.backward()
    optimizer.step()


@pytest.fixture(scope="module")
def trained():
    """A tiny model (only its decoder trains, to keep it quick) after one Adam step, with its EMA teacher."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="decoder")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.8, 0.95))
    ema = EmaTeacher(model, decay=0.9)
    _train_step(model, optimizer)
    ema.update(model)
    return model, optimizer, ema


@pytest.fixture()
def saved(tmp_path, trained):
    model, optimizer, ema = trained
    return save_checkpoint(tmp_path / "round-1", model, optimizer, ema, meta=META)


def test_round_trip_restores_everything(saved, trained):
    model, optimizer, ema = trained
    assert sorted(p.name for p in saved.parent.iterdir()) == ["round-1"]  # no staging folder left behind
    assert sorted(p.name for p in saved.iterdir()) == [
        "checkpoint.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
    ]
    loaded = load_checkpoint(saved)
    assert loaded.model.spec == model.spec  # architecture from checkpoint.json, trainable included
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    for name, value in ema.state_dict().items():
        assert torch.equal(loaded.ema.state_dict()[name], value), name
    assert loaded.ema.decay == 0.9 and not loaded.ema.model.training
    assert {key: loaded.meta[key] for key in META} == META
    assert (loaded.meta["size"], loaded.meta["text_dim"], loaded.meta["trainable"]) == ("tiny", TEXT_DIM, "decoder")

    restored = torch.optim.Adam([p for p in loaded.model.parameters() if p.requires_grad], lr=0.5)
    load_optimizer_state(saved, restored)
    assert restored.param_groups[0]["betas"] == (0.8, 0.95) and restored.param_groups[0]["lr"] == 1e-3
    original_state, restored_state = optimizer.state_dict()["state"], restored.state_dict()["state"]
    assert original_state.keys() == restored_state.keys()
    for index, entry in original_state.items():
        for name, value in entry.items():
            assert torch.equal(restored_state[index][name], value), (index, name)

    # Training goes on identically from the original and from the restored state.
    _train_step(model, optimizer)
    _train_step(loaded.model, restored)
    for name, value in model.state_dict().items():
        assert torch.allclose(loaded.model.state_dict()[name], value, atol=1e-6), name


def test_load_into_given_model_optimizer_and_ema(saved, trained):
    model, _, ema = trained
    target = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="decoder")
    optimizer = torch.optim.Adam([p for p in target.parameters() if p.requires_grad])
    teacher = EmaTeacher(target, decay=0.9)
    loaded = load_checkpoint(saved, model=target, optimizer=optimizer, ema=teacher)
    assert loaded.model is target and loaded.ema is teacher
    assert torch.equal(target.decoder.predict.weight, model.decoder.predict.weight)
    assert torch.equal(teacher.model.decoder.predict.weight, ema.model.decoder.predict.weight)
    assert len(optimizer.state) == len([p for p in target.parameters() if p.requires_grad])


def test_saving_again_replaces_the_checkpoint(tmp_path, trained):
    model, _, _ = trained
    save_checkpoint(tmp_path / "ckpt", model, meta={**META, "step": 1})
    save_checkpoint(tmp_path / "ckpt", model, meta={**META, "step": 2})
    assert json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["step"] == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert load_checkpoint(tmp_path / "ckpt").ema is None
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_optimizer_state(tmp_path / "ckpt", torch.optim.Adam(model.decoder.parameters()))


def test_tiny_checkpoint_into_r50_model_lists_the_keys(saved):
    r50 = build_model("r50", text_dim=TEXT_DIM, pretrained=False)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(saved, model=r50)
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys (" in message and "backbone.res2.0.bn1.bias" in message
    assert "unexpected keys (" in message and "backbone.features.blocks.0.0.bn1.bias" in message
    assert "more)" in message  # long lists are cut


def test_removed_key_is_reported(saved):
    state = safetensors.torch.load_file(saved / "model.safetensors")
    del state["decoder.predict.bias"]
    safetensors.torch.save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder.predict.bias$"):
        load_checkpoint(saved)


def test_wrong_shape_is_reported(saved):
    state = safetensors.torch.load_file(saved / "model.safetensors")
    state["decoder.predict.bias"] = torch.zeros(3)
    safetensors.torch.save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="size mismatch for decoder.predict.bias"):
        load_checkpoint(saved)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.safetensors"])
def test_truncated_safetensors_is_a_checkpoint_error(saved, trained, name):
    data = (saved / name).read_bytes()
    (saved / name).write_bytes(data[: len(data) // 2])
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="decoder")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(CheckpointError, match=f"{name} is corrupt") as error:
        load_checkpoint(saved, model=model, optimizer=optimizer)
    assert "\n" not in str(error.value)


def test_missing_or_corrupt_checkpoint_json(saved, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    (saved / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(saved)
    (saved / "checkpoint.json").write_text(json.dumps({"format": 1, "size": "tiny"}))
    with pytest.raises(CheckpointError, match="lacks text_dim"):
        load_checkpoint(saved)


def test_meta_must_carry_progress_and_not_override_architecture(tmp_path, trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "a", model, meta={"epoch": 0})
    with pytest.raises(ValueError, match="size"):
        save_checkpoint(tmp_path / "b", model, meta={**META, "size": "r50"})
    assert not any(tmp_path.iterdir())
