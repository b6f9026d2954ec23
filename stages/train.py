"""Train: one round's student on ground truth plus the previous round's refined pseudo-labels, on Ray Train.

`ray.train.torch.TorchTrainer` runs `train_loop` on `workers` processes (DDP through Ray Train's helpers,
gloo on CPU, NCCL on GPU). Every epoch each worker reports its metrics and rank 0 a checkpoint (model,
optimizer, EMA teacher as safetensors + epoch/step) into `<out_dir>/ray/`. After a worker failure Ray Train
restarts the workers from the latest checkpoint (`train.max_failures`); after a driver crash, running the
stage again with the same folder resumes from it too. The final checkpoint is copied to `<out_dir>/checkpoint`.

Each worker reads its clips in `train.loader_workers` processes of its own (CPUs Ray reserves beside it) while it
steps, at `train.precision`, optionally channels-last and compiled (`prvos_core.model.step`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from prvos_core import faults, storage
from prvos_core.config import ModelSection, TextSection, TrainSection
from prvos_core.data.clips import ClipDataset, ClipSpec, clip_loader, clip_sources
from prvos_core.data.manifest import read_manifest
from prvos_core.errors import CheckpointError
from prvos_core.model.builders import build_model, input_size
from prvos_core.model.checkpoint import META_FILE, load_checkpoint, read_checkpoint_meta, save_checkpoint
from prvos_core.model.ema import EmaTeacher
from prvos_core.model.loss import clip_loss
from prvos_core.model.step import forward, grad_scaler, model_frames, optimizer_step, prepare_student, resolve_precision
from prvos_core.text.cache import TextCache
from stages._ray import current_node, write_placement
from stages.result import StageResult, output

CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class TrainInputs:
    manifest_dir: str
    text_cache: str
    text_identity: str
    text_dim: int
    split: str  # the split to train on
    out_dir: str
    model: ModelSection
    refined_store: str | None = None  # the previous round's refined labels (None: ground truth only)
    init_checkpoint: str | None = None  # start from these student weights (the previous round's)
    seed: int = 0
    round_index: int = 0
    text: TextSection = TextSection()  # the encoder the text cache was made with, recorded in the checkpoint
    frame_store: str | None = None  # the frames stage's frames.zarr, clips are cut from it (None: the JPEGs)


@dataclass(frozen=True, kw_only=True)
class TrainResult(StageResult):
    """The student's final checkpoint, its per-epoch history, and its last epoch's numbers."""

    stage: ClassVar[str] = "train"
    checkpoint: str = output()  # the final checkpoint folder (model, optimizer, EMA teacher)
    history: str = output()  # history.json: one entry per epoch
    placement: str = output()
    epoch: int  # the last epoch (0-based)
    step: int
    loss: float  # of the last epoch
    clips_per_second: float
    epoch_seconds: float
    start_epoch: int  # where this run started: > 0 after a resume from a checkpoint
    loss_first_epoch: float | None = None
    nodes: int
    seconds: float


def run(inputs: TrainInputs, cfg: TrainSection) -> TrainResult:
    started = time.perf_counter()
    if inputs.init_checkpoint:
        _check_init_checkpoint(inputs)
    use_gpu = cfg.use_gpu == "true" or (cfg.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    storage_path, storage_filesystem = storage.join(inputs.out_dir, "ray"), None
    if storage.is_local(storage_path):
        storage_path = os.path.abspath(storage_path)
    else:
        storage_filesystem, storage_path = storage.arrow_filesystem(storage_path)
    # A number of loader processes is reserved beside the worker's own CPU; auto takes what the worker is given.
    cpus = 1 + (cfg.loader_workers if cfg.loader_workers != "auto" else 0)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": inputs, "cfg": cfg, "use_gpu": use_gpu, "faults": faults.environment()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name="student",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (every checkpoint, device moves) drown the epoch line users read.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training of round {inputs.round_index} ended without a checkpoint")
    final = storage.join(inputs.out_dir, CHECKPOINT)
    with tempfile.TemporaryDirectory() as local:
        result.checkpoint.to_directory(local)
        storage.upload_folder(os.path.join(local, CHECKPOINT), final, last=META_FILE)
    history = read_checkpoint_meta(final)["history"]
    history_uri = storage.join(inputs.out_dir, "history.json")
    storage.write_json(history_uri, history)
    clips_per_node = Counter()
    for epoch in history:
        clips_per_node.update(epoch.get("clips_per_node", {}))
    last = result.metrics  # the last epoch's report (train_loop's `metrics`)
    return TrainResult(
        checkpoint=final,
        history=history_uri,
        placement=write_placement(inputs.out_dir, clips_per_node, "clips"),
        epoch=last["epoch"],
        step=last["step"],
        loss=last["loss"],
        clips_per_second=last["clips_per_second"],
        epoch_seconds=last["epoch_seconds"],
        start_epoch=last["start_epoch"],
        loss_first_epoch=float(history[0]["loss"]) if history else None,
        nodes=len(clips_per_node),
        seconds=time.perf_counter() - started,
    )


def _check_init_checkpoint(inputs: TrainInputs) -> None:
    """A start checkpoint of another model fails here, in one line, before any worker starts (inside a worker
    the same mismatch would surface as Ray Train's failure after its retries)."""
    meta = read_checkpoint_meta(inputs.init_checkpoint)
    found = (meta["size"], meta["text_dim"])
    if found != (inputs.model.size, inputs.text_dim):
        raise CheckpointError(
            f"{inputs.init_checkpoint} holds a {found[0]} model with text_dim {found[1]}, but round "
            f"{inputs.round_index} trains {inputs.model.size} with text_dim {inputs.text_dim}; use a checkpoint of "
            "this model or set train.init=scratch"
        )


def train_loop(config: dict) -> None:
    """The per-worker training function (runs inside Ray Train workers)."""
    inputs: TrainInputs = config["inputs"]
    cfg: TrainSection = config["cfg"]
    os.environ.update(config["faults"])
    torch.set_num_threads(cfg.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(inputs.seed + inputs.round_index)

    spec = ClipSpec(
        cfg.clip_frames,
        input_size(inputs.model.size, inputs.model.input_size),
        cfg.min_crop,
        cfg.brightness,
        static=cfg.static_clips,
        first_mask=cfg.first_mask_gt,
        pseudo_fill_only=cfg.pseudo_in_clips == "fill",
    )
    text = TextCache(inputs.text_cache, inputs.text_identity).load_all()
    sources = clip_sources(
        read_manifest(inputs.manifest_dir),
        inputs.split,
        refined_store=inputs.refined_store,
        full_annotations=cfg.gt_source == "full_annotations",
    )
    dataset = ClipDataset(
        sources,
        text.lookup,
        spec,
        refined_store=inputs.refined_store,
        frame_store=inputs.frame_store,
        seed=inputs.seed + 1000 * inputs.round_index,
        samples_per_source=cfg.samples_per_expression,
        clips=cfg.clips_per_epoch or None,
        unlabelled_share=cfg.unlabelled_share,
    )
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=inputs.seed, drop_last=False
    )
    loader = clip_loader(
        dataset, sampler, batch_size=cfg.batch_size, workers=_loader_workers(cfg), pin_memory=device.type == "cuda"
    )

    student = build_model(
        inputs.model.size,
        text_dim=inputs.text_dim,
        backbone_weights=inputs.model.backbone_weights,
        pretrained=inputs.model.pretrained,
        trainable=inputs.model.trainable,
    )
    if inputs.init_checkpoint:
        load_checkpoint(inputs.init_checkpoint, model=student)
    prepare_student(student, device, channels_last=cfg.channels_last, compile=cfg.compile)
    precision = resolve_precision(cfg.precision, device)
    scaler = grad_scaler(device, precision)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    teacher = EmaTeacher(student, decay=cfg.ema_decay)
    start_epoch, step, history = 0, 0, []
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as folder:
            saved = load_checkpoint(
                Path(folder) / CHECKPOINT, model=student, optimizer=optimizer, ema=teacher, device=device
            )
        start_epoch, step, history = saved.meta["epoch"] + 1, saved.meta["step"], saved.meta["history"]
        if saved.meta.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(saved.meta["grad_scaler"])
        for _ in range(start_epoch):
            schedule.step()
        if rank == 0:
            _progress(f"r{inputs.round_index} train: resumed from the checkpoint of epoch {start_epoch}/{cfg.epochs}")
    # Clip length 1 leaves the memory path unused, which DDP must be told about.
    model = ray.train.torch.prepare_model(
        student, parallel_strategy_kwargs={"find_unused_parameters": cfg.clip_frames == 1}
    )

    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)  # the shuffle's and the clips' epoch, seen by every loader process
        model.train()
        started, loss_sum, clips = time.perf_counter(), torch.zeros((), device=device), 0
        for batch in loader:
            faults.maybe_fail("train.step", step)
            frames = model_frames(batch["frames"], device, channels_last=cfg.channels_last)
            labels = batch["labels"].to(device, non_blocking=True).long()
            weights = batch["weights"].to(device, non_blocking=True)
            words, word_mask = batch["words"].to(device), batch["word_mask"].to(device)
            first_given = batch["first_given"].to(device)
            first_mask = (labels[:, 0] == 1).to(frames.dtype) if bool(first_given.any()) else None
            logits = forward(model, frames, words, word_mask, precision, first_mask, first_given)
            loss = clip_loss(logits, labels, weights, cfg.rest_weight, cfg.dice_weight).total
            optimizer_step(loss, optimizer, scaler)
            teacher.update(student)
            loss_sum += loss.detach() * frames.shape[0]
            clips += frames.shape[0]
            step += 1
        schedule.step()
        totals = torch.tensor([loss_sum.item(), float(clips)], device=device)
        placed = [(current_node(), clips)]
        if world > 1:
            torch.distributed.all_reduce(totals)
            placed = [None] * world
            torch.distributed.all_gather_object(placed, (current_node(), clips))
        clips_per_node = Counter()
        for node, count in placed:
            clips_per_node[node] += count
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "step": step,
            "loss": totals[0].item() / max(totals[1].item(), 1.0),
            "clips_per_second": totals[1].item() / seconds,
            "epoch_seconds": seconds,
            "start_epoch": start_epoch,
            "clips_per_node": dict(clips_per_node),
        }
        history.append(metrics)
        if rank == 0:
            _progress(
                f"r{inputs.round_index} train: epoch {epoch + 1}/{cfg.epochs}, loss {metrics['loss']:.4f}, "
                f"{metrics['clips_per_second']:.1f} clips/s on {world} worker(s)"
            )
        _report(metrics, history, rank, student, optimizer, teacher, scaler, inputs, cfg)


def _loader_workers(cfg: TrainSection) -> int:
    """Loader processes of this worker: the configured number, or for auto the CPUs Ray assigned it minus its own
    (the machine's count would be wrong: several workers and other tasks share a node)."""
    if cfg.loader_workers != "auto":
        return cfg.loader_workers
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(int(cpus) - 1, 0)


def _progress(line: str) -> None:
    """One progress line from a worker. Written to the stream, not print(): Ray Train patches print() to log
    each line a second time."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _report(
    metrics, history, rank, student, optimizer, teacher, scaler, inputs: TrainInputs, cfg: TrainSection
) -> None:
    """Every worker reports (it is a barrier); rank 0 attaches the checkpoint of this epoch."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        meta = {
            "epoch": metrics["epoch"],
            "step": metrics["step"],
            "round": inputs.round_index,
            "history": history,
            # fp16's loss scale, so that a resumed run does not start again from 2^16 and skip steps to find it
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "config": {
                "train": cfg.model_dump(mode="json"),
                "model": inputs.model.model_dump(mode="json"),
                "text": inputs.text.model_dump(mode="json"),
            },
        }
        save_checkpoint(Path(folder) / CHECKPOINT, student, optimizer, teacher, meta=meta)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
