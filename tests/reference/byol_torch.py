"""BYOL in plain PyTorch, the same recipe as a byol-rs experiment, for side-by-side comparison.

    python tests/reference/byol_torch.py --train DIR --test DIR [--limit-per-class N] [--epochs E]
        [--width 64] [--batch 256] [--lr 1.0] [--device cuda] [--workers 8] [--eval-every 5]
        [--precision bf16] [--channels-last]

Reads ImageFolder splits, trains BYOL (ResNet-18 CIFAR stem, projector/predictor MLPs, LARS with
BYOL's exclusions, warmup + cosine, tau cosine schedule) with the CIFAR views (torchvision v2,
random parameters per image, applied in --workers loader processes), and prints the weighted-kNN
top-1 (k, T as given) as JSON lines: one per evaluation (before training, every --eval-every epochs,
after training), flushed as it is made, then a summary with the whole curve.
"""
import argparse, contextlib, copy, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2 as T

p = argparse.ArgumentParser()
p.add_argument("--train", required=True); p.add_argument("--test", required=True)
p.add_argument("--limit-per-class", type=int, default=0); p.add_argument("--epochs", type=int, default=6)
p.add_argument("--width", type=int, default=64); p.add_argument("--batch", type=int, default=256)
p.add_argument("--lr", type=float, default=1.0); p.add_argument("--wd", type=float, default=1e-5)
p.add_argument("--trust", type=float, default=0.02); p.add_argument("--tau", type=float, default=0.99)
p.add_argument("--hidden", type=int, default=4096); p.add_argument("--proj", type=int, default=256)
p.add_argument("--warmup", type=float, default=10); p.add_argument("--knn-k", type=int, default=200)
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--workers", type=int, default=0, help="loader processes decoding and augmenting (0: this one)")
p.add_argument("--eval-every", type=int, default=0, help="also evaluate kNN every N epochs (0: before and after only)")
p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, as byol-rs's run.precision")
p.add_argument("--channels-last", action="store_true")
args = p.parse_args()
torch.manual_seed(args.seed)
dev = torch.device(args.device)
# cuDNN picks its fastest convolution algorithms per shape, as byol-run does on CUDA.
torch.backends.cudnn.benchmark = dev.type == "cuda"
# float32 matmuls and convolutions on TF32 tensor cores, as byol-run's run.tf32 default.
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

def loader(data, **kw):
    # fork: this script has no __main__ guard for spawned workers to import it under, and the
    # workers only run CPU transforms, never CUDA.
    workers = dict(num_workers=args.workers, multiprocessing_context="fork") if args.workers else {}
    return torch.utils.data.DataLoader(data, **workers, **kw)

def decode(samples):  # a batch of files per transfer: one tensor, one shared-memory handle
    return torch.stack([torchvision.io.decode_image(path, mode=torchvision.io.ImageReadMode.RGB) for path, _ in samples])

def load(root):
    ds = torchvision.datasets.ImageFolder(root)
    samples = ds.samples
    if args.limit_per_class:
        per = {}
        samples = [s for s in samples if per.setdefault(s[1], []).append(s) or len(per[s[1]]) <= args.limit_per_class]
    return torch.cat(list(loader(samples, batch_size=500, collate_fn=decode))), torch.tensor([y for _, y in samples])

xtr, ytr = load(args.train); xte, yte = load(args.test)
mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
def view(solarize):
    return T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
        # Solarize after the float conversion: its threshold is in the image's own scale, and 0.5 on
        # uint8 pixels would invert every pixel above 0 (a negative, not a solarization).
        T.ToDtype(torch.float32, scale=True), T.RandomSolarize(0.5, p=solarize), T.Normalize(mean, std)])
views = (view(0.0), view(0.2))

class TwoViews(torch.utils.data.Dataset):
    """Both views of one training image, each with its own random parameters."""
    def __init__(self, images): self.images = images
    def __len__(self): return len(self.images)
    def __getitem__(self, i): return views[0](self.images[i]), views[1](self.images[i])

def autocast():
    if args.precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

def resnet():
    """torchvision's ResNet-18 with the CIFAR stem and `width` stem channels (64: torchvision's)."""
    from torchvision.models.resnet import BasicBlock
    m = torchvision.models.resnet18()
    w = args.width
    m.inplanes = w
    m.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False); m.bn1 = nn.BatchNorm2d(w)
    m.layer1 = m._make_layer(BasicBlock, w, 2)
    m.layer2 = m._make_layer(BasicBlock, 2 * w, 2, stride=2)
    m.layer3 = m._make_layer(BasicBlock, 4 * w, 2, stride=2)
    m.layer4 = m._make_layer(BasicBlock, 8 * w, 2, stride=2)
    m.maxpool = nn.Identity(); m.fc = nn.Identity()
    for mod in m.modules():  # torchvision's init, re-applied to the rebuilt layers
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return m
def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, o))
online = nn.ModuleDict({"backbone": resnet(), "projector": mlp(8 * args.width, args.hidden, args.proj)})
online = online.to(dev, memory_format=memory_format)
predictor = mlp(args.proj, args.hidden, args.proj).to(dev)
target = copy.deepcopy(online).requires_grad_(False)

params = list(online.parameters()) + list(predictor.parameters())
excluded = {id(q) for q in params if q.ndim <= 1}
momentum = {id(q): torch.zeros_like(q) for q in params}
def lars_step(lr):
    with torch.no_grad():
        for q in params:
            if q.grad is None: continue
            d = q.grad
            if id(q) not in excluded:
                d = d + args.wd * q
                pn, dn = q.norm(), d.norm()
                d = d * torch.where((pn > 0) & (dn > 0), args.trust * pn / dn, torch.ones_like(pn))
            momentum[id(q)].mul_(0.9).add_(d); q.sub_(lr * momentum[id(q)])

@torch.no_grad()
def knn():
    online.eval()
    norm = T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    def feats(x):
        with autocast():
            return torch.cat([F.normalize(online["backbone"](norm(x[i:i+512]).to(dev, memory_format=memory_format)).float(), dim=1)
                              for i in range(0, len(x), 512)])
    bank, q = feats(xtr), feats(xte)
    sim, idx = (q @ bank.T).topk(min(args.knn_k, len(bank)), dim=1)
    scores = (F.one_hot(ytr.to(dev)[idx], int(ytr.max()) + 1) * (sim / 0.1).exp().unsqueeze(-1)).sum(1)
    online.train()
    return (scores.argmax(1).cpu() == yte).float().mean().item()

# Shuffled every epoch, the last incomplete batch dropped (steps per epoch as byol-rs counts them).
batches = loader(TwoViews(xtr), batch_size=args.batch, shuffle=True, drop_last=True,
                 persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
steps_per_epoch = len(batches); total = steps_per_epoch * args.epochs
before = knn()
curve = [[0, before]]
print(json.dumps({"epoch": 0, "step": 0, "knn": before, "train_images": len(xtr), "test_images": len(xte),
                  "steps_per_epoch": steps_per_epoch}), flush=True)
warmup = round(args.warmup * steps_per_epoch); peak = args.lr * args.batch / 256
loss_fn = lambda p, z: (2 - 2 * (F.normalize(p.float(), dim=-1) * F.normalize(z.float(), dim=-1)).sum(-1)).mean()
step, start, knn_seconds = 0, time.time(), 0.0
for epoch in range(args.epochs):
    for v1, v2 in batches:
        v1 = v1.to(dev, memory_format=memory_format, non_blocking=True)
        v2 = v2.to(dev, memory_format=memory_format, non_blocking=True)
        with autocast():
            z1, z2 = online["projector"](online["backbone"](v1)), online["projector"](online["backbone"](v2))
            with torch.no_grad():
                t1, t2 = target["projector"](target["backbone"](v1)), target["projector"](target["backbone"](v2))
            loss = loss_fn(predictor(z1), t2) + loss_fn(predictor(z2), t1)
        for q in params: q.grad = None
        loss.backward()
        lr = peak * (step + 1) / warmup if step < warmup else peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        lars_step(lr)
        tau = 1 - (1 - args.tau) * (math.cos(math.pi * step / total) + 1) / 2
        with torch.no_grad():
            for pt, po in zip(target.parameters(), online.parameters()): pt.lerp_(po, 1 - tau)
        step += 1
    done = epoch + 1
    if done == args.epochs or (args.eval_every and done % args.eval_every == 0):
        t = time.time()
        curve.append([done, knn()])
        knn_seconds += time.time() - t
        print(json.dumps({"epoch": done, "step": step, "knn": curve[-1][1], "loss": loss.item(),
                          "seconds": time.time() - start}), flush=True)
print(json.dumps({"knn_before": before, "knn_after": curve[-1][1], "curve": curve, "loss": loss.item(), "steps": step,
                  "train_images": len(xtr), "test_images": len(xte), "seconds": time.time() - start,
                  "knn_seconds": knn_seconds}))
