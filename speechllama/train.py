"""One training loop for every stage and system.

A *task* (``speechllama/tasks/``) owns the data, the model and the loss of one stage; this loop
owns everything else: optimisation (AdamW, warmup + cosine), gradient clipping, bf16 autocast,
DistributedDataParallel under ``torchrun``, the progress bar, the JSONL log, atomic checkpoints
and exact resume (weights, optimizer, scheduler, sampler position, RNG states).
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

from . import checkpoint as ckpt
from .config import ExperimentConfig, save_config
from .progress import progress


class Task(Protocol):
    model: nn.Module  # trainable parameters are those with requires_grad
    sampler: object  # LengthBucketSampler

    def loss(self, model: nn.Module, batch: list[int]) -> tuple[torch.Tensor, dict]: ...
    def save(self, folder: Path, model: nn.Module) -> None: ...  # model.safetensors + extras
    def load(self, folder: Path, model: nn.Module) -> None: ...  # weights back from save()
    def rng_state(self) -> dict[str, torch.Tensor]: ...
    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None: ...


def distributed_env() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return int(os.environ.get("RANK", "0")), world


def rank0_first(fn, *args, **kwargs):
    """Run ``fn`` on rank 0, then on the other ranks (which then find its results on disk: a
    feature cache, a converted LLM). Without torch.distributed, just run it."""
    if not (dist.is_available() and dist.is_initialized()):
        return fn(*args, **kwargs)
    if dist.get_rank() == 0:
        result = fn(*args, **kwargs)
        dist.barrier()
        return result
    dist.barrier()
    return fn(*args, **kwargs)


def lr_lambda(warmup: int, total: int):
    """Linear warmup to the peak, then cosine decay to 10% of it at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _save(task: Task, cfg: ExperimentConfig, run_dir: Path, step: int, model: nn.Module,
          opt, sched, final: bool) -> Path:
    def write(folder: Path) -> None:
        task.save(folder, model)
        save_config(cfg, folder / "config.yaml")
        tensors, meta = ckpt.optimizer_to_files(opt)
        rng = {"rng.torch": torch.get_rng_state()}
        rng.update({f"rng.task.{k}": v for k, v in task.rng_state().items()})
        ckpt.save_tensors({**tensors, **rng}, folder / "trainer.safetensors")
        ckpt.write_json(folder / "trainer.json", {
            "step": step, "final": final, "sampler": task.sampler.state_dict(),
            "scheduler": sched.state_dict(), "optimizer": meta})

    return ckpt.save_checkpoint(run_dir, step, write, keep=cfg.train.keep_checkpoints)


def _restore(task: Task, folder: Path, model: nn.Module, opt, sched) -> int:
    task.load(folder, model)
    tensors = ckpt.load_tensors(folder / "trainer.safetensors")
    meta = ckpt.read_json(folder / "trainer.json")
    ckpt.optimizer_from_files(opt, tensors, meta["optimizer"])
    sched.load_state_dict(meta["scheduler"])
    task.sampler.load_state_dict(meta["sampler"])
    torch.set_rng_state(tensors["rng.torch"])
    task.set_rng_state({k[len("rng.task."):]: v for k, v in tensors.items()
                        if k.startswith("rng.task.")})
    return int(meta["step"])


def _params_identical_across_ranks(model: nn.Module) -> bool:
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def fit(task: Task, cfg: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False) -> Path:
    """Train ``task`` to ``cfg.train.max_steps``; returns the last checkpoint folder."""
    run_dir, tc = Path(run_dir), cfg.train
    rank, world = distributed_env()
    model = task.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps))
    step = 0
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if last is not None:
        step = _restore(task, last, model, opt, sched)
    elif resume and rank == 0:
        print(f"no checkpoint in {run_dir}: starting a new run", file=sys.stderr)
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    device_type = "cuda" if next(model.parameters()).is_cuda else "cpu"
    log = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    bar = progress(total=tc.max_steps, initial=step, disable=rank != 0, desc="train", unit="step")
    start, seen, batches = time.time(), {"items": 0, "tokens": 0}, iter(task.sampler)
    wrapped.train()
    saved = last
    while step < tc.max_steps:
        batch = next(batches)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=tc.bf16):
            loss, stats = task.loss(wrapped, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
        opt.step()
        sched.step()
        step += 1
        for k in seen:
            seen[k] += stats.get(k, 0)
        elapsed = time.time() - start
        if rank == 0:
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                row = {"step": step, "loss": round(loss.item(), 4), "lr": sched.get_last_lr()[0],
                       "grad_norm": round(float(grad_norm), 3), "elapsed_s": round(elapsed, 1),
                       "items_per_s": round(seen["items"] * world / max(elapsed, 1e-9), 2)}
                bar.set_postfix(loss=row["loss"], utt_s=row["items_per_s"])
                log.write(json.dumps(row) + "\n")
                log.flush()
        stop = _should_stop(tc.max_minutes, elapsed, world)
        if step % tc.checkpoint_every == 0 or step == tc.max_steps or stop:
            if rank == 0:
                saved = _save(task, cfg, run_dir, step, model, opt, sched,
                              final=stop or step == tc.max_steps)
            if world > 1:
                dist.barrier()
        if stop:
            if rank == 0:
                print(f"\nstopped after {tc.max_minutes} min at step {step} (train.max_minutes); "
                      f"rerun with --resume to continue", file=sys.stderr)
            break
    bar.close()
    if world > 1:
        same = _params_identical_across_ranks(model)
        if rank == 0:
            print(f"ranks hold identical parameters: {'yes' if same else 'NO'}", file=sys.stderr)
        if not same:
            raise RuntimeError("DDP ranks diverged: parameters differ across processes")
    if log:
        log.close()
    return saved if saved is not None else ckpt.latest_checkpoint(run_dir)


def _should_stop(max_minutes: float, elapsed: float, world: int) -> bool:
    """Wall-time stop, agreed by all ranks (rank 0 decides)."""
    if max_minutes <= 0:
        return False
    flag = torch.tensor([1.0 if elapsed > max_minutes * 60 else 0.0])
    if world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())
