"""One training loop for every stage and system.

A *task* (``speechllama/training/``) owns the data, the model and the loss of one stage; this loop
owns everything else: the device (``train.device``), parallelism under ``torchrun`` (DDP, or FSDP2
with ``train.parallel=fsdp``), activation checkpointing, DataLoader workers, optimisation (AdamW,
warmup + cosine, gradient accumulation), gradient clipping, bf16 autocast, the progress bar, the
JSONL log, atomic checkpoints and exact resume (weights, optimizer, scheduler, sampler position,
RNG states). Tasks and models never move anything to a device: :func:`parallelize` places the
model, :func:`speechllama.device.move` each batch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import checkpoint as ckpt
from ..config import ExperimentConfig, TrainConfig, save_config
from ..device import distributed_env, move, resolve_device
from ..errors import UsageError
from ..progress import progress
from .parallel import full_tensor, no_grad_sync, parallelize


class Task(Protocol):
    model: nn.Module  # trainable parameters are those with requires_grad
    sampler: object  # LengthBucketSampler: its position is the loop's, checkpointed

    def collate(self, indices: list[int], generator: torch.Generator) -> dict: ...  # CPU tensors
    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]: ...  # on device
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]: ...  # model.safetensors
    def save(self, folder: Path, tensors: dict[str, torch.Tensor]) -> None: ...  # + extras
    def load(self, folder: Path, model: nn.Module) -> None: ...  # weights back from save()


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """The trainable parameters in one optimizer group per learning rate: a module with an
    ``lr_scale`` attribute (a pretrained backbone's trained layers) gives every parameter under it
    ``lr * lr_scale`` (the innermost such module wins); the rest get ``lr``. By name, before or
    after FSDP2 sharding alike (fully_shard keeps the names)."""
    scales = {name: float(m.lr_scale) for name, m in model.named_modules() if hasattr(m, "lr_scale")}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owners = [k for k in scales if k == "" or name.startswith(k + ".")]
        scale = scales[max(owners, key=len)] if owners else 1.0
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(groups.items(), reverse=True)]


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the peak, then cosine decay to 10% of it at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# ---------------------------------------------------------------------------------------------
# Placement and parallelism
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


class _Batches(Dataset):
    """Batch ``key`` -> (the sampler position after it, ``task.collate`` of its indices), in a
    DataLoader worker (or the main process with data.num_workers=0). The randomness of a batch
    (augmentation, SpecAugment, the unnamed-language prompts) comes from a generator seeded by its
    global position in the run, so it is the same for any number of workers, ranks (at the same
    global batch) and resumes."""

    def __init__(self, task: Task, seed: int):
        self.task, self.seed = task, seed

    def __getitem__(self, key):
        epoch, number, indices, after = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + number)
        return after, self.task.collate(indices, g)

    def __len__(self):  # an endless stream; never asked for by a DataLoader with a sampler
        raise TypeError("an endless stream of batches")


class _Keys:
    """(epoch, global batch number, indices, sampler position after it) from the sampler's
    position onwards: what a checkpoint records is what the loop has consumed, not what workers
    have prefetched."""

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world
        self.state = sampler.state_dict()

    def __iter__(self):
        epoch, index = self.state["epoch"], self.state["index"]
        while True:
            batches = self.sampler.batches(epoch)
            while index < len(batches):
                after = {"epoch": epoch, "index": index + 1} if index + 1 < len(batches) \
                    else {"epoch": epoch + 1, "index": 0}
                yield epoch, index * self.world + self.rank, batches[index], after
                index += 1
            epoch, index = epoch + 1, 0


def _loader(task: Task, cfg: ExperimentConfig, device: torch.device, rank: int, world: int):
    """Endless (position after the batch, batch) pairs; batches built in data.num_workers worker
    processes (forked: they share the feature cache) and pinned for a GPU."""
    workers = cfg.data.num_workers
    return iter(DataLoader(_Batches(task, cfg.train.seed), batch_size=None,
                           sampler=_Keys(task.sampler, rank, world), num_workers=workers,
                           pin_memory=device.type == "cuda",
                           worker_init_fn=_one_thread if workers else None,
                           multiprocessing_context="fork" if workers else None,
                           prefetch_factor=2 if workers else None, persistent_workers=False,
                           generator=torch.Generator()))  # its base seed: not from the global RNG


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the training process


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _optimizer_state(model: nn.Module, opt) -> dict:
    """The optimizer's state keyed by parameter names, whole tensors on rank 0 (FSDP2 shards
    gathered): the same file for one process, DDP and FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True,
                                                                         cpu_offload=True))


def _save(task: Task, cfg: ExperimentConfig, run_dir: Path, step: int, model: nn.Module,
          opt, sched, final: bool, rank: int, world: int) -> Path | None:
    """Every rank gathers (collectives under FSDP2); rank 0 writes the checkpoint folder."""
    tensors = {k: full_tensor(v) for k, v in task.state_dict(model).items()}
    optim = _optimizer_state(model, opt)
    if rank != 0:
        return None

    def write(folder: Path) -> None:
        task.save(folder, tensors)
        save_config(cfg, folder / "config.yaml")
        optim_tensors, meta = ckpt.optimizer_to_files(optim)
        rng = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["rng.cuda"] = torch.cuda.get_rng_state()
        ckpt.save_tensors({**optim_tensors, **rng}, folder / "trainer.safetensors")
        ckpt.write_json(folder / "trainer.json", {
            "step": step, "final": final, "sampler": task.sampler.state_dict(), "world_size": world,
            "scheduler": sched.state_dict(), "optimizer": meta})

    return ckpt.save_checkpoint(run_dir, step, write, keep=cfg.train.keep_checkpoints)


def _restore_trainer(task: Task, folder: Path, model: nn.Module, opt, sched, world: int) -> int:
    """Optimizer, scheduler, sampler position and RNG states (the weights were loaded before the
    model was placed and sharded). A run saved by W ranks resumes on W' ranks at the same global
    batch (its per-rank index scaled by W / W'), the same run where each epoch's batch count is a
    multiple of both (the sampler drops the remainder per world size)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    tensors = ckpt.load_tensors(folder / "trainer.safetensors")
    meta = ckpt.read_json(folder / "trainer.json")
    optim = ckpt.optimizer_from_files(tensors, meta["optimizer"])
    if any(str(k).isdigit() for k in optim["state"]):
        raise ckpt.CheckpointError(
            f"{folder}: written by an older speechllama (optimizer state by position, not by "
            f"parameter name): its weights load, but training cannot resume from it")
    if optim["state"]:  # a checkpoint written before the first optimizer step has none
        set_optimizer_state_dict(model, opt, optim,
                                 options=StateDictOptions(full_state_dict=True))
    sched.load_state_dict(meta["scheduler"])
    position = dict(meta["sampler"])
    saved_world = int(meta.get("world_size", world))
    if saved_world != world:
        batches = position["index"] * saved_world
        if batches % world:
            raise UsageError(f"{folder}: saved by {saved_world} processes after {batches} batches "
                             f"of epoch {position['epoch']}, which {world} processes cannot split")
        position["index"] = batches // world
    task.sampler.load_state_dict(position)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"])


def _params_identical_across_ranks(model: nn.Module) -> bool:
    """Whether every rank holds the same trainable parameters, from a checksum of each: a few
    numbers per parameter gathered, nothing that scales with the model (a frozen 7B LLM is
    identical by construction and never gathered)."""
    sums = [torch.stack([(t := p.detach().double()).sum(), t.square().sum(),
                         (t * torch.arange(1, t.numel() + 1, device=t.device,
                                           dtype=torch.float64).view(t.shape)).sum()])
            for p in model.parameters() if p.requires_grad]
    flat = torch.cat(sums) if sums else torch.zeros(1, dtype=torch.float64)  # (3 x P,)
    flat = flat.to(next(model.parameters()).device)
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def fit(task: Task, cfg: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Train ``task`` to ``cfg.train.max_steps``; returns the last checkpoint folder."""
    run_dir, tc = Path(run_dir), cfg.train
    rank, world = distributed_env()
    device = resolve_device(tc.device)
    model = task.model
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if last is not None:
        task.load(last, model)  # plain tensors, before placement and sharding
    elif resume and rank == 0:
        print(f"no checkpoint in {run_dir}: starting a new run", file=sys.stderr)
    wrapped = parallelize(model, tc, device, world)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, tc.lr), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps))
    step = _restore_trainer(task, last, model, opt, sched, world) if last is not None else 0
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    bar = progress(total=tc.max_steps, initial=step, disable=rank != 0, desc="train", unit="step")
    start, seen = time.time(), {"items": 0, "tokens": 0}
    batches = _loader(task, cfg, device, rank, world)
    wrapped.train()
    saved = last
    while step < tc.max_steps:
        loss = _accumulated_step(task, wrapped, tc, batches, device, seen)
        grad_norm = full_tensor(nn.utils.clip_grad_norm_(trainable, tc.grad_clip))  # every rank
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - start
        if step % tc.log_every == 0 or step == tc.max_steps:
            _log(log, bar, step, _mean_across_ranks(loss, world), sched, grad_norm, elapsed,
                 seen["items"] * world)
        if rank == 0:
            bar.update(1)
        stop = _should_stop(tc.max_minutes, elapsed, world, device)
        if step % tc.checkpoint_every == 0 or step == tc.max_steps or stop:
            saved = _save(task, cfg, run_dir, step, model, opt, sched,
                          final=stop or step == tc.max_steps, rank=rank, world=world) or saved
            if world > 1:
                dist.barrier()
        if stop:
            if rank == 0:
                print(f"\nstopped after {tc.max_minutes} min at step {step} (train.max_minutes); "
                      f"rerun with --resume to continue", file=sys.stderr)
            break
    bar.close()
    _check_replicas(model, tc, world, rank)
    if log:
        log.close()
    return saved if saved is not None else ckpt.latest_checkpoint(run_dir)


def _accumulated_step(task: Task, wrapped: nn.Module, tc: TrainConfig, batches, device,
                      seen: dict) -> torch.Tensor:
    """Forward and backward ``train.grad_accum`` micro-batches; each micro-batch's mean loss
    counts 1/grad_accum (as each rank's counts 1/world under DDP), so K micro-batches on one
    process give the step of K ranks. Returns the step's loss (detached)."""
    total = torch.zeros((), device=device)
    for micro in range(tc.grad_accum):
        position, batch = next(batches)
        batch = move(batch, device)
        with no_grad_sync(wrapped, tc, sync=micro == tc.grad_accum - 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                loss, stats = task.loss(wrapped, batch)
            (loss / tc.grad_accum).backward()
        total += loss.detach().float() / tc.grad_accum
        task.sampler.load_state_dict(position)  # consumed: what a checkpoint records
        for k in seen:
            seen[k] += stats.get(k, 0)
    return total


def _mean_across_ranks(loss: torch.Tensor, world: int) -> float:
    if world > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world
    return float(loss)


def _log(log, bar, step: int, loss: float, sched, grad_norm, elapsed: float, items: int) -> None:
    if log is None:
        return
    row = {"step": step, "loss": round(loss, 4), "lr": sched.get_last_lr()[0],
           "grad_norm": round(float(grad_norm), 3), "elapsed_s": round(elapsed, 1),
           "items_per_s": round(items / max(elapsed, 1e-9), 2)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this rank's peak so far
        row["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    bar.set_postfix(loss=row["loss"], utt_s=row["items_per_s"])
    log.write(json.dumps(row) + "\n")
    log.flush()


def _check_replicas(model: nn.Module, tc: TrainConfig, world: int, rank: int) -> None:
    """Under DDP every rank must end with the same weights (FSDP2 ranks hold different shards)."""
    if world == 1 or tc.parallel == "fsdp":
        return
    same = _params_identical_across_ranks(model)
    if rank == 0:
        print(f"ranks hold identical parameters: {'yes' if same else 'NO'}", file=sys.stderr)
    if not same:
        raise RuntimeError("DDP ranks diverged: parameters differ across processes")


def _should_stop(max_minutes: float, elapsed: float, world: int, device: torch.device) -> bool:
    """Wall-time stop, agreed by all ranks (rank 0 decides; the flag lives on the collective
    backend's device: nccl takes GPU tensors only)."""
    if max_minutes <= 0:
        return False
    flag = torch.tensor([1.0 if elapsed > max_minutes * 60 else 0.0], device=device)
    if world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())
