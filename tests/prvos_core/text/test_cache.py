"""Tests of prvos_core.text.cache: each distinct expression is encoded once, rows survive reopening and crashes."""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from prvos_core.data.layout import read_json
from prvos_core.errors import ConfigError, DataError, StorageError
from prvos_core.text.cache import TextCache, TextNotCachedError
from prvos_core.text.encoder import TextEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[3]


class CountingEncoder(TextEncoder):
    """The real MiniLM, recording every text it encodes; optionally failing once `fail_at` texts are reached."""

    def __init__(self, base: TextEncoder, fail_at: int | None = None) -> None:
        super().__init__(base.model, base.tokenizer, base.model_dir, base.max_tokens)
        self.encoded: collections.Counter[str] = collections.Counter()
        self.fail_at = fail_at

    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fail_at is not None and sum(self.encoded.values()) + len(texts) > self.fail_at:
            raise RuntimeError("encoder crashed mid-build")
        self.encoded.update(texts)
        return super().encode(texts, batch_size)


@pytest.fixture(scope="session")
def expressions(shared_data: Path) -> list[str]:
    """Real expressions: the Ref-DAVIS mini ones, then a stretch of Ref-YouTube-VOS valid ones in which
    annotators wrote three expressions twice ("a roll of toilet paper", ...)."""
    davis = read_json(shared_data / "ref_davis16_mini" / "meta_expressions" / "train" / "meta_expressions.json")
    youtube = read_json(shared_data / "text_only" / "ref_youtube_vos_valid_meta_expressions.json")
    davis_texts, youtube_texts = (
        [exp["exp"] for video in meta["videos"].values() for exp in video["expressions"].values()]
        for meta in (davis, youtube)
    )
    return davis_texts + youtube_texts[176:310]


def test_encoder_runs_once_per_distinct_text_across_epochs_and_builds(
    minilm: TextEncoder, expressions: list[str], tmp_path: Path
) -> None:
    first_half, second_half = expressions[:80], expressions[50:]
    encoder = CountingEncoder(minilm)
    cache = TextCache.for_encoder(str(tmp_path / "cache"), encoder)
    # Repeat some texts inside the build call as well.
    assert cache.build(first_half + first_half[:10], encoder, batch_size=16) == len(set(first_half))

    rng = random.Random(0)
    for epoch in range(3):
        # Each epoch a "worker" opens the cache afresh and reads it in shuffled batches.
        worker = TextCache(str(tmp_path / "cache"), encoder.identity).load_all() if epoch else cache
        order = first_half[:]
        rng.shuffle(order)
        for start in range(0, len(order), 6):
            tokens, mask = worker.lookup(order[start : start + 6])
            assert tokens.shape == (len(order[start : start + 6]), 20, 384)
    assert cache.build(second_half, encoder, batch_size=16) == len(set(second_half) - set(first_half))
    assert cache.build(expressions, encoder) == 0

    distinct = set(expressions)
    assert len(distinct) < len(expressions)  # the real data repeats some expressions
    assert sum(encoder.encoded.values()) == len(distinct)
    assert set(encoder.encoded) == distinct and set(encoder.encoded.values()) == {1}
    assert len(cache) == len(distinct) and sorted(cache.texts) == sorted(distinct)


def test_cached_rows_match_direct_encoding_within_float16(
    minilm: TextEncoder, expressions: list[str], tmp_path: Path
) -> None:
    cache = TextCache.for_encoder(tmp_path / "cache", minilm)
    cache.build(expressions[:40], minilm, batch_size=16)
    # Query order differs from build order and repeats a text.
    query = [expressions[30], expressions[2], expressions[17], expressions[2]]
    direct, direct_mask = minilm.encode(query)
    for reader in (cache, TextCache(tmp_path / "cache", minilm.identity).load_all()):
        tokens, mask = reader.lookup(query)
        assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
        assert torch.equal(mask, direct_mask)
        # float16 keeps 11 significant bits: relative error at most 2**-11.
        torch.testing.assert_close(tokens, direct, rtol=2**-11, atol=1e-6)
        assert torch.equal(tokens[1], tokens[3])


def test_reopened_in_another_process_sees_the_same_rows(
    minilm: TextEncoder, expressions: list[str], tmp_path: Path
) -> None:
    root = str(tmp_path / "cache")
    TextCache(root, minilm.identity).build(expressions[:20], minilm)
    query = expressions[5:9]
    expected, expected_mask = TextCache(root, minilm.identity).lookup(query)

    out = tmp_path / "rows.npz"
    script = (
        "import sys, numpy as np\n"
        "from prvos_core.text.cache import TextCache\n"
        f"cache = TextCache({root!r}, {minilm.identity!r})\n"
        f"tokens, mask = cache.lookup({query!r})\n"
        f"np.savez({str(out)!r}, tokens=tokens.numpy(), mask=mask.numpy(), rows=len(cache))\n"
        # Reading the cache must not pull in the text encoder's stack.
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)
    seen = np.load(out)
    assert int(seen["rows"]) == len(set(expressions[:20]))
    assert np.array_equal(seen["tokens"], expected.numpy()) and np.array_equal(seen["mask"], expected_mask.numpy())


def test_an_fsspec_url_root_with_storage_options(minilm: TextEncoder, expressions: list[str]) -> None:
    # fsspec's in-memory filesystem stands in for s3://; the URL and storage_options reach zarr unchanged.
    root = f"memory://prvos-test/{uuid.uuid4().hex}/text_cache"
    TextCache(root, minilm.identity, storage_options={}).build(expressions[:10], minilm)
    reopened = TextCache(root, minilm.identity, storage_options={})
    assert reopened.location == f"{root}/{minilm.identity}" and len(reopened) == 10
    tokens, mask = reopened.lookup(expressions[3:5])
    torch.testing.assert_close(tokens, minilm.encode(expressions[3:5])[0], rtol=2**-11, atol=1e-6)
    assert torch.equal(mask, minilm.encode(expressions[3:5])[1])


def test_missing_text_is_a_key_error_naming_it(minilm: TextEncoder, expressions: list[str], tmp_path: Path) -> None:
    cache = TextCache.for_encoder(tmp_path / "cache", minilm)
    with pytest.raises(TextNotCachedError, match="a cow in the field"):
        cache.lookup(["a cow in the field"])
    cache.build(expressions[:5], minilm)
    with pytest.raises(KeyError) as error:
        cache.lookup([expressions[0], "a purple elephant", "a green elephant"])
    assert isinstance(error.value, DataError)
    message = str(error.value)
    assert message.startswith("text 'a purple elephant' (and 1 other texts) is not in the text cache")
    assert "\n" not in message


def test_interrupted_build_keeps_complete_rows_and_next_build_completes_it(
    minilm: TextEncoder, expressions: list[str], tmp_path: Path
) -> None:
    texts = list(dict.fromkeys(expressions[:50]))
    crashing = CountingEncoder(minilm, fail_at=25)
    with pytest.raises(RuntimeError, match="crashed mid-build"):
        TextCache.for_encoder(tmp_path / "cache", crashing).build(texts, crashing, batch_size=8)
    # Batches of 8: three committed (24 texts); the fourth crashed inside the encoder.
    assert sum(crashing.encoded.values()) == 24

    reopened = TextCache(tmp_path / "cache", minilm.identity)
    assert reopened.texts == tuple(texts[:24])
    tokens, _ = reopened.lookup(texts[:24])
    torch.testing.assert_close(tokens, minilm.encode(texts[:24])[0], rtol=2**-11, atol=1e-6)
    with pytest.raises(TextNotCachedError):
        reopened.lookup([texts[24]])

    resumed = CountingEncoder(minilm)
    assert reopened.build(texts, resumed, batch_size=8) == len(texts) - 24
    assert set(resumed.encoded) == set(texts[24:]) and set(resumed.encoded.values()) == {1}
    complete = TextCache(tmp_path / "cache", minilm.identity)
    assert complete.texts == tuple(texts)
    torch.testing.assert_close(complete.lookup(texts)[0], minilm.encode(texts)[0], rtol=2**-11, atol=1e-6)


def test_rows_written_but_not_committed_are_invisible_and_overwritten(
    minilm: TextEncoder, expressions: list[str], tmp_path: Path
) -> None:
    texts = list(dict.fromkeys(expressions[:12]))
    cache = TextCache.for_encoder(tmp_path / "cache", minilm)
    cache.build(texts[:8], minilm)
    # What a writer killed after writing its rows, before the commit, leaves behind.
    group = zarr.open_group(str(tmp_path / "cache"), mode="a", zarr_format=3)[minilm.identity]
    for array in (group["tokens"], group["mask"], group["texts"]):
        array.resize((11, *array.shape[1:]))
    group["tokens"][8:11] = np.full((3, 20, 384), 7.0, np.float16)
    group["mask"][8:11] = True
    group["texts"][8:11] = np.array(["ghost one", "ghost two", texts[8]], dtype=np.dtypes.StringDType())

    reopened = TextCache(tmp_path / "cache", minilm.identity)
    assert len(reopened) == 8 and "ghost one" not in reopened and texts[8] not in reopened
    assert reopened.build(texts, minilm) == 4
    final = TextCache(tmp_path / "cache", minilm.identity).load_all()
    assert final.texts == tuple(texts) and "ghost two" not in final
    tokens, mask = final.lookup(texts[8:])
    torch.testing.assert_close(tokens, minilm.encode(texts[8:])[0], rtol=2**-11, atol=1e-6)
    assert torch.equal(mask, minilm.encode(texts[8:])[1])


def test_progress_reports_committed_texts(minilm: TextEncoder, expressions: list[str], tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    texts = list(dict.fromkeys(expressions[:20]))
    TextCache.for_encoder(tmp_path / "cache", minilm).build(
        texts, minilm, batch_size=8, progress=lambda *a: calls.append(a)
    )
    assert calls == [(8, len(texts)), (16, len(texts)), (len(texts), len(texts))]


def test_misuse_is_reported_as_user_errors(minilm: TextEncoder, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity"):
        TextCache(tmp_path, "../escape")
    with pytest.raises(ConfigError, match="storage_options"):
        TextCache(tmp_path, minilm.identity, storage_options={"anon": True})
    other = TextCache(tmp_path / "cache", "bert-384d-16tok-0000000000000000")
    with pytest.raises(ConfigError, match="does not match"):
        other.build(["a cow in the field"], minilm)
    cache = TextCache.for_encoder(tmp_path / "cache", minilm)
    with pytest.raises(DataError, match="UTF-8"):
        cache.build(["a cow \udcff in the field"], minilm)
    # A group that some other tool wrote where the cache would go.
    zarr.open_group(str(tmp_path / "foreign"), mode="w", zarr_format=3).create_group(minilm.identity)
    with pytest.raises(StorageError, match="not a PRVOS text cache"):
        len(TextCache(tmp_path / "foreign", minilm.identity))
