"""Process-group plumbing shared by ``basam train`` and ``basam evaluate`` under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs as a single process and
no collective is called.
"""

from __future__ import annotations

import os
from typing import Any, List

__all__ = ["Dist", "init_distributed"]


class Dist:
    """This process's rank and the collectives basam uses (no-ops in a single process)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owned: bool = False) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.owned = owned  # this run created the process group (and destroys it at the end)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
            self.owned = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def all_sum(self, values: List[float], device) -> List[float]:
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=device)
        td.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> List[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out: List[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise), or return a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    owned = not td.is_initialized()
    if owned:
        if backend == "nccl":
            torch.cuda.set_device(local)
        td.init_process_group(backend=backend)
    return Dist(rank, world, local, owned)
