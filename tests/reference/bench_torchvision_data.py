"""The torchvision input pipeline that `byol-run bench data` is compared with.

    python bench_torchvision_data.py DIR --size 224 --batch-size 32 --workers 1,2 --batches 20

torchvision.datasets.ImageFolder (PIL decode, convert("RGB")) + RandomResizedCrop(size) +
RandomHorizontalFlip + ToTensor, through a DataLoader (shuffle, drop_last, persistent workers)
with the given worker count. Prints images/s (wall clock) and images per CPU-second, the CPU time
of the main process and of its worker processes together over the timed batches (read from
/proc), after the warm-up batches. `--uint8` uses PILToTensor (uint8, like our loader) instead of
ToTensor. `--views 2` applies the transform twice per decoded image (BYOL's two crops, as lightly's
and solo-learn's multi-view transforms do), to compare with `augment.crop_on = "loader"`.
"""
import argparse
import os
import resource
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(loader_iter):
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for w in getattr(loader_iter, "_workers", []):
        total += process_cpu(w.pid)
    return total


class Views:
    """`n` independent draws of `transform` from one decoded image."""

    def __init__(self, transform, n):
        self.transform, self.n = transform, n

    def __call__(self, image):
        views = [self.transform(image) for _ in range(self.n)]
        return views[0] if self.n == 1 else torch.cat(views)


def measure(root, size, batch_size, workers, warmup, batches, uint8, views):
    tail = [transforms.PILToTensor()] if uint8 else [transforms.ToTensor()]
    transform = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] + tail
    )
    dataset = datasets.ImageFolder(root, transform=Views(transform, views))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    seen = images = 0
    start = None
    it = iter(loader)
    while True:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)  # persistent workers: the same processes, next epoch
            continue
        if seen == warmup - 1:
            start = (time.perf_counter(), cpu_seconds(it))
        elif seen >= warmup:
            images += x.shape[0]
        seen += 1
        if seen == warmup + batches:
            break
    wall = time.perf_counter() - start[0]
    cpu = cpu_seconds(it) - start[1]
    del it, loader
    return images / wall, images / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--uint8", action="store_true")
    parser.add_argument("--views", type=int, default=1, help="crops per decoded image")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(
        f"torchvision data: {args.root} | {args.views} x RandomResizedCrop({args.size}) + flip + "
        f"{'PILToTensor' if args.uint8 else 'ToTensor'} | batch {args.batch_size} | "
        f"{args.warmup} warm-up + {args.batches} timed batches | {os.cpu_count()} cores"
    )
    print(f"{'workers':>7}  {'img/s':>8}  {'img/CPU-second':>14}")
    for w in [int(w) for w in args.workers.split(",")]:
        per_second, per_cpu = measure(
            args.root, args.size, args.batch_size, w, max(args.warmup, 1), args.batches, args.uint8, args.views
        )
        print(f"{w:>7}  {per_second:>8.0f}  {per_cpu:>14.0f}")


if __name__ == "__main__":
    main()
