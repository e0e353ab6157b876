#!/usr/bin/env bash
# GPU checks as one script, for a machine with a CUDA GPU, python3 and torch/torchvision but no
# Rust toolchain: the training step against eager PyTorch (bf16 and fp16), the input path against
# the step, a 20-epoch CIFAR-10 ResNet-18 run with kNN by epoch, and NCCL (world size 1) through
# torchrun. On a machine with Rust, first build and stage what the GPU machine needs:
#
#   echo /.gpu-stage/ >> .git/info/exclude
#   cargo xtask cargo build --release -p byol-cli
#   mkdir -p .gpu-stage && cp target/release/byol-run .gpu-stage/
#   # CIFAR-10 as JPEGs, train/<class>/*.jpg and test/<class>/*.jpg at the archive's top level
#   # (the layout experiments/cifar10-resnet18.toml describes):
#   tar -czf .gpu-stage/cifar10-jpeg.tar.gz -C data/cifar10-jpeg train test
#   cp torch_reference.py .gpu-stage/      # optional: a standalone PyTorch reference run first
#
# then run `bash tests/gpu/checks.sh step` (then `e2e`, then `train`) on the GPU machine with
# .gpu-stage in the repository root. Every figure is ours beside eager PyTorch measured in the
# same call on the same card, so each comparison is like for like on whatever card runs it. Results: $OUT (or
# gpu-results/), one file per check; each check has its own timeout, so one hang costs little,
# and each part stays under 600 s.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
B=.gpu-stage/byol-run
PART=${1:-step}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/card.txt" 2>&1
$B doctor > "$OUT/doctor.txt" 2>&1

if [ "$PART" = step ]; then
# The model step against eager PyTorch, both precisions, same card, same call.
for precision in bf16 fp16; do
  timeout 90 $B bench step experiments/resnet50.toml --batch 256 --res 224 --set run.precision=$precision \
    --set schedule.accumulate=1 --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
  timeout 60 $B bench step experiments/cifar10-resnet18.toml --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
done
# The same step with the paper's separate views (four network passes instead of two).
timeout 90 $B bench step experiments/resnet50.toml --batch 256 --res 224 --set run.precision=fp16 \
  --set schedule.accumulate=1 --against-torch python3 >> "$OUT/step.txt" 2>&1
fi

if [ "$PART" = e2e ]; then
# The step replayed from a CUDA graph (run.cuda_graphs, bf16 and fp16), and the optimizer alone:
# per tensor against fused over flat buffers (optimizer.fused).
for precision in bf16 fp16; do
  timeout 60 $B bench step experiments/cifar10-resnet18.toml --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --set run.cuda_graphs=true --against-torch python3 >> "$OUT/graphs.txt" 2>&1
done
timeout 60 $B bench optim experiments/resnet50.toml --set run.precision=bf16 > "$OUT/optim.txt" 2>&1

# The input path against the step, CIFAR-10 in memory on the GPU.
mkdir -p data/cifar10-jpeg && tar -xzf .gpu-stage/cifar10-jpeg.tar.gz -C data/cifar10-jpeg
# Both precisions: neither step should read anything back from the card (host syncs/step 0;
# fp16 skips an overflowing step on the card).
for precision in bf16 fp16; do
  timeout 100 $B bench e2e experiments/cifar10-resnet18.toml --set run.precision=$precision --set schedule.batch_size=512 \
    >> "$OUT/e2e.txt" 2>&1
done
fi

if [ "$PART" = train ]; then
[ -f .gpu-stage/torch_reference.py ] && timeout 150 python3 .gpu-stage/torch_reference.py > "$OUT/torch_reference.txt" 2>&1
mkdir -p data/cifar10-jpeg && tar -xzf .gpu-stage/cifar10-jpeg.tar.gz -C data/cifar10-jpeg
# CIFAR-10 ResNet-18, 20 epochs, kNN by epoch (the PyTorch reference recipe next).
timeout 270 $B experiments/cifar10-resnet18.toml --run-dir "$OUT/cifar-20" --set schedule.epochs=20 \
  --set run.precision=fp16 --set eval.every_epochs=5 > "$OUT/cifar-20.txt" 2>&1

# NCCL (world size 1) through torchrun, the same code path as several GPUs.
timeout 90 python3 -m torch.distributed.run --nproc-per-node=1 --no-python $B experiments/cifar10-resnet18.toml \
  --run-dir "$OUT/torchrun-1" --set schedule.epochs=1 > "$OUT/torchrun-1.txt" 2>&1
fi
tail -n 3 "$OUT"/*.txt
