"""Train with synchronized BatchNorm statistics on CPU processes (gloo).

    torchrun --standalone --nproc_per_node=2 examples/ddp_synchronize.py

Each process gets a different part of every batch; bnkit.synchronize makes every BatchNorm layer
normalize with the statistics of the whole batch, as one process would, where nn.SyncBatchNorm
refuses CPU tensors. DDP averages the gradients as usual.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn

import bnkit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    bnkit.synchronize(model)  # before DDP: DDP then sees the final modules
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        x = torch.randn(8 * world, 3, 8, 8, generator=data)  # the global batch
        y = torch.randint(0, 10, (8 * world,), generator=data)
        mine = slice(8 * rank, 8 * (rank + 1))
        loss = nn.functional.cross_entropy(ddp(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    stats = model[1].running_mean.clone()
    gathered = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats)
    if rank == 0:
        same = all(torch.equal(gathered[0], s) for s in gathered)
        print(f"running statistics identical on all ranks: {same}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
