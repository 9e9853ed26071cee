"""torch.distributed for a batch run started by `torchrun`: which rank this is, its device, and the two
messages the ranks exchange (rank 0 hands out the plan; everyone reports back to rank 0 at the end).

Only small JSON messages travel between ranks, never tensors, so the gloo backend serves on CPU and
GPU machines alike (no NCCL needed). Without torchrun's environment everything is a one-rank no-op.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch

# Ranks wait for each other only at the start and at the end; the end waits for the slowest share.
COLLECTIVE_TIMEOUT = timedelta(hours=24)
JOIN_TIMEOUT = timedelta(minutes=10)  # for all processes of the group to start


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}" if self.distributed else ""

    def broadcast(self, message=None):
        """Rank 0's `message` (JSON-able), returned on every rank."""
        if not self.distributed:
            return message
        import torch.distributed as dist

        box = [json.dumps(message) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return json.loads(box[0])

    def gather(self, message) -> list | None:
        """Every rank's `message` (JSON-able) as a list on rank 0 (None elsewhere); also a barrier."""
        if not self.distributed:
            return [message]
        import torch.distributed as dist

        box = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(json.dumps(message), box, dst=0)
        return [json.loads(m) for m in box] if self.rank == 0 else None

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def start(device: str) -> Ranks:
    """Join the torchrun group if there is one. A plain `cuda` device becomes `cuda:LOCAL_RANK`
    (one GPU per local rank); `cpu` is kept; an explicit `cuda:N` with several processes is refused (they
    would all share that one GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise SystemExit(
                f"local rank {local_rank} needs GPU cuda:{local_rank} but this machine has {found}: "
                "start at most that many processes per node (--nproc-per-node) or pass --device cpu"
            )
        device = f"cuda:{local_rank}"
    elif device.startswith("cuda:") and world_size > 1:
        # every rank would share the one GPU named: refuse instead of silently crowding it
        raise SystemExit(f"--device {device} under torchrun puts all {world_size} processes on one GPU: pass "
                         "--device cuda (each process takes cuda:LOCAL_RANK), or run a single process")
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    base, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=JOIN_TIMEOUT))
    store = dist.PrefixStore(f"infdit/attempt{_agree_on_attempt(base, rank, world_size)}", base)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    return Ranks(rank, world_size, local_rank, device)


def _agree_on_attempt(store, rank: int, world_size: int) -> int:
    """A number that is new for every start of the group and the same on all its ranks.

    torchrun keeps its key/value store across `--max-restarts` restarts, so the keys a previous attempt
    wrote (the gloo addresses of processes now dead) are still there; a group that reused them would
    connect to nobody. TORCHELASTIC_RESTART_COUNT cannot name the attempt: on several machines only the
    failed machine's agent counts a restart. So rank 0 (one per attempt) opens a new attempt number, and
    every other rank registers under the newest number with a fresh token until rank 0 acknowledges that
    token (a stale acknowledgement carries another token)."""
    if rank == 0:
        attempt = store.add("infdit/attempts", 1)
        for r in range(1, world_size):
            key = f"infdit/attempt{attempt}/hello{r}"
            store.wait([key], JOIN_TIMEOUT)
            store.set(f"infdit/attempt{attempt}/ack{r}", store.get(key))
        return attempt
    token = uuid.uuid4().hex.encode()
    deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds()
    registered = None
    while time.monotonic() < deadline:
        attempt = store.add("infdit/attempts", 0)
        if attempt and attempt != registered:
            store.set(f"infdit/attempt{attempt}/hello{rank}", token)
            registered = attempt
        ack = f"infdit/attempt{registered}/ack{rank}"
        if registered and store.check([ack]) and store.get(ack) == token:
            return registered
        time.sleep(0.1)
    raise SystemExit(f"rank {rank}: rank 0 did not start within {JOIN_TIMEOUT}; see its error above")
