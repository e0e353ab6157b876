"""Eager PyTorch timing of one BYOL training step, defined exactly as `byol-run bench step`
defines it, so that the two can run side by side on the same machine in the same call
(`byol-run bench step EXP --against-torch` runs this script with the venv's python).

One step: both views through online (backbone -> projector -> predictor) and target (backbone ->
projector, no grad, train mode), symmetric normalized-MSE loss, backward, SGD (momentum 0.9,
weight decay 1.5e-6, lr 0.2), EMA of the target with torch._foreach_lerp_. Views are random
tensors already on the device: this times the model step, not data loading. Tuned as a PyTorch
user would: autocast (bf16, or fp16 with a GradScaler), channels_last, cudnn.benchmark, TF32.

Prints one JSON line: {"name", "img_per_s", "s_per_step", "peak_gib"}.
"""
import argparse, copy, json, time, warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, o))


def backbone(arch, cifar_stem):
    net = getattr(torchvision.models, arch)()
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--proj", type=int, default=256)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--concat-views", action="store_true", help="both views as one 2N batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=15)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device(a.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "fp16")

    net, dim = backbone(a.arch, a.cifar_stem)
    online = nn.Sequential(net, mlp(dim, a.hidden, a.proj)).to(dev)
    predictor = mlp(a.proj, a.hidden, a.proj).to(dev)
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    online = online.to(memory_format=memory_format)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    params = list(online.parameters()) + list(predictor.parameters())
    opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1.5e-6)
    v1 = torch.randn(a.batch, 3, a.res, a.res, device=dev).contiguous(memory_format=memory_format)
    v2 = torch.randn(a.batch, 3, a.res, a.res, device=dev).contiguous(memory_format=memory_format)
    online_params, target_params = list(online.parameters()), list(target.parameters())

    def loss_fn(p, z):
        return (2 - 2 * (F.normalize(p.float(), dim=-1) * F.normalize(z.float(), dim=-1)).sum(-1)).mean()

    def step():
        with torch.autocast(dev.type, amp or torch.bfloat16, enabled=amp is not None):
            if a.concat_views:
                p = predictor(online(torch.cat([v1, v2])))
                with torch.no_grad():
                    t = target(torch.cat([v1, v2]))
                p1, p2 = p.chunk(2)
                t1, t2 = t.chunk(2)
            else:
                p1, p2 = predictor(online(v1)), predictor(online(v2))
                with torch.no_grad():
                    t1, t2 = target(v1), target(v2)
        loss = loss_fn(p1, t2) + loss_fn(p2, t1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, online_params, 1 - 0.996)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(a.warmup):
        step()
    sync()
    # Host-device synchronizations of the timed steps, counted as byol-rs counts its own:
    # the sync debug mode's warnings, recorded instead of printed.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        for _ in range(a.iters):
            step()
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    sync()
    seconds = (time.perf_counter() - start) / a.iters
    syncs = None
    if dev.type == "cuda":
        syncs = sum("synchronizing CUDA operation" in str(w.message) for w in caught) / a.iters
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    name = f"torch {a.arch}{'-cifar' if a.cifar_stem else ''} bs{a.batch} res{a.res} {a.precision} cl={a.channels_last} concat={a.concat_views}"
    print(json.dumps(dict(name=name, img_per_s=a.batch / seconds, s_per_step=seconds, peak_gib=peak, syncs_per_step=syncs)), flush=True)


if __name__ == "__main__":
    main()
