"""The URVOS-style model: named steps and shapes, builders, trainable modes, offline weights, overfitting a clip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from PIL import Image

from prvos_core.errors import CheckpointError, ConfigError
from prvos_core.inference.propagation import propagate
from prvos_core.model.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0Backbone,
    efficientnet_lite0_classifier,
)
from prvos_core.model.builders import build_model, count_parameters, input_size
from prvos_core.model.loss import clip_loss

TEXT_DIM = 384


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_random():
    torch.manual_seed(0)
    return build_model("tiny", text_dim=TEXT_DIM, pretrained=False).eval()


def _words(batch: int = 2, length: int = 6, real: tuple[int, ...] = (6, 3)):
    words = torch.randn(batch, length, TEXT_DIM)
    word_mask = torch.arange(length)[None, :] < torch.tensor(real)[:, None]
    return words, word_mask


def test_named_steps_give_documented_shapes(tiny_random):
    model, spec = tiny_random, tiny_random.spec
    images = torch.rand(2, 3, 64, 96)
    words, word_mask = _words()
    with torch.no_grad():
        features = model.encode_frame(images)
        assert {name: tuple(value.shape) for name, value in features.items()} == {
            "res2": (2, 24, 16, 24),
            "res3": (2, 40, 8, 12),
            "res4": (2, 112, 4, 6),
            "res5": (2, 320, 2, 3),
            "key": (2, spec.key_dim, 4, 6),
        }
        text = model.encode_text(words, word_mask)
        assert text.shape == (2, 6, spec.width)
        text_visual = model.attend_words(features["res5"], text, word_mask)
        assert text_visual.shape == (2, spec.width, 2, 3)
        key, value = model.encode_memory(features, images, torch.rand(2, 64, 96))
        assert key.shape == (2, spec.key_dim, 4, 6) and value.shape == (2, spec.value_dim, 4, 6)
        readout = model.read_memory(key, torch.stack([key, key, key], 2), torch.stack([value, value, value], 2))
        assert readout.shape == (2, spec.value_dim, 4, 6)
        sentence = model.sentence(text, word_mask)
        assert sentence.shape == (2, spec.width)
        assert torch.allclose(sentence[0], text[0][word_mask[0]].mean(0), atol=1e-6)
        assert model.decode(features, text_visual, readout, (64, 96), sentence).shape == (2, 2, 64, 96)
        assert model.decode(features, text_visual, None, (64, 96), sentence).shape == (2, 2, 64, 96)
        clip = torch.rand(2, 3, 3, 64, 96)
        assert model.forward_clip(clip, words, word_mask).shape == (2, 3, 2, 64, 96)
        assert model.forward_clip(clip, words, word_mask, torch.ones(2, 64, 96)).shape == (2, 3, 2, 64, 96)
        # Sizes that are not multiples of 32 still come back at input resolution.
        assert model.forward_clip(torch.rand(1, 2, 3, 70, 90), words[:1], word_mask[:1]).shape == (1, 2, 2, 70, 90)


def test_read_memory_is_softmax_attention_over_all_memory_positions(tiny_random):
    torch.manual_seed(1)
    query, keys, values = torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 2, 3), torch.randn(1, 5, 2, 2, 3)
    readout = tiny_random.read_memory(query, keys, values)
    q = query[0].reshape(4, -1)  # (Ck, 6 query positions)
    k = keys[0].reshape(4, -1)  # (Ck, 12 memory positions)
    v = values[0].reshape(5, -1)
    for position in range(6):
        scores = [float(q[:, position] @ k[:, m]) / math.sqrt(4) for m in range(12)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        expected = [sum(w * float(v[c, m]) for m, w in enumerate(weights)) / sum(weights) for c in range(5)]
        got = readout[0].reshape(5, -1)[:, position]
        assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_padded_words_are_ignored_and_real_words_matter(tiny_random):
    torch.manual_seed(2)
    images = torch.rand(2, 3, 64, 64)
    words, word_mask = _words()
    with torch.no_grad():
        res5 = tiny_random.encode_frame(images)["res5"]
        reference = tiny_random.attend_words(res5, tiny_random.encode_text(words, word_mask), word_mask)
        padded_changed = words.clone()
        padded_changed[1, 3:] = torch.randn(3, TEXT_DIM) * 10
        same = tiny_random.attend_words(res5, tiny_random.encode_text(padded_changed, word_mask), word_mask)
        real_changed = words.clone()
        real_changed[1, 0] = torch.randn(TEXT_DIM) * 10
        other = tiny_random.attend_words(res5, tiny_random.encode_text(real_changed, word_mask), word_mask)
    assert torch.allclose(reference, same, atol=1e-5)
    assert not torch.allclose(reference[1], other[1], atol=1e-3)
    assert torch.equal(reference[0], other[0])


def test_encode_text_rejects_wrong_width_and_rows_without_words(tiny_random):
    with pytest.raises(ValueError, match="text_dim=384"):
        tiny_random.encode_text(torch.randn(1, 4, 768), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="without any real token"):
        tiny_random.encode_text(torch.randn(2, 4, TEXT_DIM), torch.tensor([[True] * 4, [False] * 4]))


def _train_step(model, seed: int = 3) -> None:
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    frames, (words, word_mask) = torch.rand(1, 2, 3, 64, 64), _words(1, 4, (4,))
    labels = (torch.rand(1, 2, 64, 64) > 0.5).long()
    clip_loss(model.forward_clip(frames, words, word_mask), labels).total.backward()
    optimizer.step()


def _batch_norm_statistics(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if "running_" in k or "num_batches" in k}


def test_frozen_batch_norm_keeps_statistics_while_backbone_trains():
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="all_frozen_bn")
    statistics = _batch_norm_statistics(model)
    stem_before = model.backbone.features.conv_stem.weight.clone()
    _train_step(model)
    assert all(torch.equal(statistics[k], v) for k, v in _batch_norm_statistics(model).items())
    assert not torch.equal(stem_before, model.backbone.features.conv_stem.weight)
    assert model.training and not model.backbone.features.bn1.training

    free = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="all")
    statistics = _batch_norm_statistics(free)
    _train_step(free)
    assert not torch.equal(statistics["features.bn1.running_mean"], free.backbone.features.bn1.running_mean)


def test_decoder_mode_trains_only_the_decoder():
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="decoder")
    statistics = _batch_norm_statistics(model)
    _train_step(model)
    for name, parameter in model.named_parameters():
        if name.startswith("decoder."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    assert all(torch.equal(statistics[k], v) for k, v in _batch_norm_statistics(model).items())
    counts = count_parameters(model)
    assert counts.trainable == counts.parts["decoder"] < counts.total


def test_r50_matches_the_paper_setting_and_torchvision_resnet50():
    model = build_model("r50", text_dim=768, pretrained=False)
    spec = model.spec
    assert (spec.input_size, spec.key_dim, spec.value_dim, spec.heads, spec.width) == ((320, 320), 128, 512, 8, 512)
    assert model.cross_modal.visual.in_channels == 2048 and model.cross_modal.visual.out_channels == 512
    assert model.text_projection[0].in_features == 768
    # torchvision's ResNet-50 has 25,557,032 parameters; its fc layer (2048 x 1000 + 1000) is not used.
    assert count_parameters(model).parts["backbone"] == 25_557_032 - 2_049_000


def test_the_input_size_is_the_configured_one_else_the_named_sizes():
    assert input_size("tiny") == (128, 128) and input_size("r50", None) == (320, 320)
    assert input_size("tiny", [32, 48]) == (32, 48)
    with pytest.raises(ConfigError, match="tiny, r50"):
        input_size("r18")


def test_builder_errors_are_config_errors():
    with pytest.raises(ConfigError, match="tiny, r50"):
        build_model("r18", text_dim=TEXT_DIM)
    with pytest.raises(ConfigError, match="backbone_weights"):
        build_model("r50", text_dim=768)
    with pytest.raises(ConfigError, match="trainable"):
        build_model("tiny", text_dim=TEXT_DIM, pretrained=False, trainable="encoder")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_r50_backbone_loads_a_local_torchvision_state_dict(tmp_path, suffix):
    torch.manual_seed(5)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, path)
    model = build_model("r50", text_dim=768, backbone_weights=path)
    assert torch.equal(model.backbone.stem[0].weight, state["conv1.weight"])
    assert torch.equal(model.backbone.res5[2].bn3.running_var, state["layer4.2.bn3.running_var"])

    del state["layer4.2.bn3.running_var"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): layer4.2.bn3.running_var"):
        build_model("r50", text_dim=768, backbone_weights=tmp_path / "broken.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="garbage.pth is unreadable"):
        build_model("r50", text_dim=768, backbone_weights=tmp_path / "garbage.pth")


def test_efficientnet_lite0_weights_are_real_imagenet_weights(shared_data):
    """The packaged weights classify the first blackswan frame as ImageNet class 100, black swan."""
    path = shared_data / "ref_davis16_mini/train/JPEGImages/blackswan/00000.jpg"
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    classifier = efficientnet_lite0_classifier()
    with torch.no_grad():
        probabilities = classifier(pixels[None]).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == 100
    assert float(probabilities[100]) > 0.3

    # The features backbone is fed by the same loader: its tensors are the classifier's.
    backbone = EfficientNetLite0Backbone(pretrained=True)
    classifier_state = classifier.state_dict()
    backbone_state = backbone.features.state_dict()
    assert len(backbone_state) == 288
    assert all(torch.equal(value, classifier_state[key]) for key, value in backbone_state.items())


def synthetic_clip(frames: int = 3, size: int = 64, side: int = 18) -> tuple[torch.Tensor, torch.Tensor]:
    """A red square moving over a striped, noisy background: frames (1,T,3,S,S), masks (1,T,S,S) in {0,1}."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = 0.5 + 0.2 * torch.sin(xx / 3.0) * torch.cos(yy / 5.0)
    background = (pattern[None] + 0.1 * torch.rand(3, size, size, generator=generator)).clamp(0, 1)
    images, masks = [], []
    for t in range(frames):
        image, mask = background.clone(), torch.zeros(size, size, dtype=torch.long)
        top, left = 10 + 5 * t, 12 + 7 * t
        image[:, top : top + side, left : left + side] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        mask[top : top + side, left : left + side] = 1
        images.append(image)
        masks.append(mask)
    return torch.stack(images)[None], torch.stack(masks)[None]


def test_first_given_chooses_per_row_between_the_given_mask_and_the_models_own(tiny_random):
    torch.manual_seed(4)
    clip = torch.rand(2, 3, 3, 64, 64)
    words, word_mask = _words()
    first_mask = (torch.rand(2, 64, 64) > 0.5).float()
    with torch.no_grad():
        mixed = tiny_random.forward_clip(clip, words, word_mask, first_mask, torch.tensor([True, False]))
        given = tiny_random.forward_clip(clip, words, word_mask, first_mask)
        own = tiny_random.forward_clip(clip, words, word_mask)
    assert torch.allclose(mixed[0], given[0], atol=1e-5) and torch.allclose(mixed[1], own[1], atol=1e-5)
    assert not torch.allclose(given[0, 1:], own[0, 1:], atol=1e-4), "the mask in memory changes later frames"
    assert torch.equal(mixed[:, 0], own[:, 0]), "frame 0 itself is always predicted without memory"


def test_the_memory_value_carries_the_mask_next_to_a_pretrained_backbone():
    """With ImageNet weights res4 is hundreds of times larger than the mask path's first features; the value
    encoder normalises both, so a frame's memory (and every read of it) says where the object is. Unnormalised,
    a ground-truth first mask moved later predictions of a trained student by ~1e-5 (the teacher ignored its
    anchors)."""
    torch.manual_seed(0)
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=True).eval()
    image = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 20:44] = 1
    with torch.no_grad():
        features = model.encode_frame(image)
        assert float(features["res4"].abs().mean()) > 1.0  # the scale that drowned the mask
        _, with_object = model.encode_memory(features, image, mask)
        _, without = model.encode_memory(features, image, torch.zeros_like(mask))
    change = float((with_object - without).abs().mean() / without.abs().mean())
    assert change > 0.02, f"the mask changes the memory value by {change:.2%} only"


def _iou(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    return float((prediction & truth).sum() / (prediction | truth).sum())


def test_tiny_model_overfits_one_clip():
    torch.manual_seed(0)
    frames, masks = synthetic_clip()
    words, word_mask = torch.randn(1, 5, TEXT_DIM), torch.ones(1, 5, dtype=torch.bool)
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=True, trainable="all_frozen_bn")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(40):
        loss = clip_loss(model.forward_clip(frames, words, word_mask, first_mask=masks[:, 0]), masks).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]

    model.eval()
    truth = masks[0].bool()
    with_first_mask = propagate(model, frames[0], words[0], word_mask[0], first_mask=masks[0, 0]) > 0.5
    on_its_own = propagate(model, frames[0], words[0], word_mask[0], first_mask=None) > 0.5
    assert all(_iou(with_first_mask[t], truth[t]) > 0.9 for t in range(3))
    assert all(_iou(on_its_own[t], truth[t]) > 0.9 for t in range(3))


def test_clip_training_and_propagation_run_under_autocast():
    """No hard-coded float32 casts in the way of mixed precision (bfloat16 autocast on CPU here)."""
    torch.manual_seed(4)
    frames, (words, word_mask) = torch.rand(1, 3, 3, 64, 64), _words(1, 4, (4,))
    labels = (torch.rand(1, 3, 64, 64) > 0.5).long()
    model = build_model("tiny", text_dim=TEXT_DIM, pretrained=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.forward_clip(frames, words, word_mask, labels[:, 0])
        loss = clip_loss(logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.total.dtype == torch.float32
    loss.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prob = propagate(model, frames[0], words[0], word_mask[0], labels[0, 0])
    assert prob.dtype == torch.float32 and prob.shape == (3, 64, 64)
