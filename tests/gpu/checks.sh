#!/usr/bin/env bash
# GPU checks as one script, for a machine with a CUDA GPU, python3 and torch/torchvision but no
# Rust toolchain: every CUDA path on short runs, the training step against eager PyTorch (bf16 and
# fp16), the input path against the step, a 20-epoch CIFAR-10 ResNet-18 run with kNN by epoch
# beside the same run in plain PyTorch, and NCCL (world size 1) through torchrun. On a machine with Rust, first stage what the
# GPU machine needs in .gpu-stage/ (git-ignored; byol-run without debug line tables, and CIFAR-10
# as JPEGs, train/<class>/*.jpg and test/<class>/*.jpg, the layout that
# experiments/cifar10-resnet18.toml describes, from a folder or a .tar.gz of both):
#
#   cargo xtask gpu-stage path/to/cifar10-jpeg
#
# then, on the GPU machine with .gpu-stage in the repository root, run one part per call:
#
#   bash tests/gpu/checks.sh smoke       # every CUDA path once, a few steps each (at most 600 s,
#                                        # about 2 min when all is well)
#   bash tests/gpu/checks.sh step        # the BYOL step, ours vs eager PyTorch (at most 390 s)
#   bash tests/gpu/checks.sh e2e         # CUDA graphs, the optimizer alone, training's steps (440 s)
#   bash tests/gpu/checks.sh train       # 20 epochs of CIFAR-10, torchrun with NCCL (420 s)
#   bash tests/gpu/checks.sh reference   # the same 20 epochs in PyTorch, both kNN curves (540 s)
#   bash tests/gpu/checks.sh long        # the recipe's 200 epochs, resumed call after call (560 s)
#
# Every figure is ours beside eager PyTorch measured in the same call on the same card, so each
# comparison is like for like on whatever card runs it. Results: $OUT (or gpu-results/), one file
# per check; each check has its own timeout, so one hang costs little, and each part stays under
# 600 s. A timeout sends SIGTERM (a run saves a checkpoint after its step), then SIGKILL 15 s later
# should the step be far off.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
B=.gpu-stage/byol-run
# A crash names its functions (the staged binary keeps its symbols, not its line tables).
export RUST_BACKTRACE=1
PART=${1:-step}
# Run folders (checkpoints of hundreds of MB) stay outside $OUT; keep_run copies what to read.
RUNS=${RUNS:-/tmp/byol-gpu-runs}
keep_run() { mkdir -p "$OUT/$1" && cp -r "$RUNS/$1"/{config.toml,summary.json,knn-curve.json,tensorboard} "$OUT/$1"/ 2>/dev/null; }
# torchrun detaches its workers (setsid): a timeout that kills torchrun leaves them
# running (and holding the card), so every check ends by killing what is left of ours.
reap() { pkill -KILL -f "^$B" 2>/dev/null; sleep 1; }
unpack_cifar() { [ -d data/cifar10-jpeg/test ] || { mkdir -p data/cifar10-jpeg && tar -xzf .gpu-stage/cifar10-jpeg.tar.gz -C data/cifar10-jpeg; }; }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/card.txt" 2>&1
$B doctor > "$OUT/doctor.txt" 2>&1

if [ "$PART" = step ]; then
# The model step against eager PyTorch, both precisions, same card, same call.
for precision in bf16 fp16; do
  timeout -k 15 90 $B bench step experiments/resnet50.toml --batch 256 --res 224 --set run.precision=$precision \
    --set schedule.accumulate=1 --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
  timeout -k 15 60 $B bench step experiments/cifar10-resnet18.toml --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
done
# The same step with the paper's separate views (four network passes instead of two).
timeout -k 15 90 $B bench step experiments/resnet50.toml --batch 256 --res 224 --set run.precision=fp16 \
  --set schedule.accumulate=1 --against-torch python3 >> "$OUT/step.txt" 2>&1
fi

if [ "$PART" = e2e ]; then
# The step replayed from a CUDA graph (run.cuda_graphs, bf16 and fp16), and the optimizer alone:
# per tensor against fused over flat buffers (optimizer.fused).
for precision in bf16 fp16; do
  timeout -k 15 60 $B bench step experiments/cifar10-resnet18.toml --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --set run.cuda_graphs=true --against-torch python3 >> "$OUT/graphs.txt" 2>&1
done
timeout -k 15 60 $B bench optim experiments/resnet50.toml --set run.precision=bf16 > "$OUT/optim.txt" 2>&1

# Training's steps on the loader's batches, on one batch, and the model step alone; CIFAR-10 in
# memory on the GPU (the trainer decodes both splits first).
unpack_cifar
# Both precisions: neither step should read anything back from the card (host syncs/step 0;
# fp16 skips an overflowing step on the card).
for precision in bf16 fp16; do
  timeout -k 15 130 $B bench e2e experiments/cifar10-resnet18.toml --set run.precision=$precision --set schedule.batch_size=512 \
    >> "$OUT/e2e.txt" 2>&1
done
fi

if [ "$PART" = smoke ]; then
# Every CUDA path once, a few steps each on 1,000 CIFAR-10 images with the real ResNet-18, before
# anything is timed: a crash here costs seconds, not a benchmark's minutes. Each run's exit code
# follows its output in smoke.txt.
unpack_cifar
smoke() {
  name=$1; shift
  echo "== $name: $*" >> "$OUT/smoke.txt"
  timeout -k 5 50 "$@" >> "$OUT/smoke.txt" 2>&1
  echo "== $name: exit $?" >> "$OUT/smoke.txt"
  reap
}
small="--set dataset.limit_per_class=100 --set schedule.epochs=2 --set schedule.warmup_epochs=1 --set eval.every_epochs=1"
smoke fp32 $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-fp32 $small --set run.memory_format=contiguous
smoke bf16 $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-bf16 $small --set run.precision=bf16
smoke fp16 $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-fp16 $small --set run.precision=fp16
smoke fp16-accumulate $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-acc $small --set run.precision=fp16 \
  --set schedule.accumulate=2
smoke bf16-graphs $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-graphs-bf16 $small --set run.precision=bf16 \
  --set byol.concat_views=true --set run.cuda_graphs=true
smoke fp16-graphs $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-graphs-fp16 $small --set run.precision=fp16 \
  --set byol.concat_views=true --set run.cuda_graphs=true
# AdamW's fused kernel in a recorded fp16 step: the lr and the overflow flag read on the card.
smoke fp16-graphs-adamw $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-graphs-adamw $small \
  --set run.precision=fp16 --set run.cuda_graphs=true --set 'optimizer={type="adamw", lr=1e-3}'
smoke resume $B experiments/cifar10-resnet18.toml --run-dir $RUNS/smoke-bf16 $small --set run.precision=bf16 \
  --set schedule.epochs=3 --allow-change schedule.epochs
smoke eval-knn $B eval knn $RUNS/smoke-bf16 --train data/cifar10-jpeg/train --test data/cifar10-jpeg/test --limit-per-class 100
smoke nccl python3 -m torch.distributed.run --nproc-per-node=1 --no-python $B experiments/cifar10-resnet18.toml \
  --run-dir $RUNS/smoke-nccl $small --set run.precision=bf16
smoke resnet50-step $B bench step experiments/resnet50.toml --batch 32 --res 224 --warmup 1 --iters 2 \
  --set run.precision=bf16 --set schedule.accumulate=1 --against-torch python3
grep "^== .*: exit" "$OUT/smoke.txt"
fi

if [ "$PART" = train ]; then
# CIFAR-10 ResNet-18, 20 epochs in bf16, kNN every 5 epochs (the run folder's knn-curve.json).
unpack_cifar
timeout -k 15 300 $B experiments/cifar10-resnet18.toml --run-dir "$RUNS/cifar-20" --set schedule.epochs=20 \
  --set run.precision=bf16 --set eval.every_epochs=5 > "$OUT/cifar-20.txt" 2>&1
keep_run cifar-20

# NCCL (world size 1) through torchrun, the same code path as several GPUs.
timeout -k 15 120 python3 -m torch.distributed.run --nproc-per-node=1 --no-python $B experiments/cifar10-resnet18.toml \
  --run-dir "$RUNS/torchrun-1" --set schedule.epochs=1 > "$OUT/torchrun-1.txt" 2>&1
reap
keep_run torchrun-1
fi

if [ "$PART" = reference ]; then
# The same 20 epochs in plain PyTorch (bf16 autocast, channels_last, the views made by loader
# processes), then both kNN curves side by side. The curve to compare with is the train part's:
# $RUNS/cifar-20 on the same machine, else its copy from $OUT put in .gpu-stage/cifar-20.
unpack_cifar
timeout -k 15 540 python3 tests/reference/byol_torch.py --train data/cifar10-jpeg/train --test data/cifar10-jpeg/test \
  --epochs 20 --eval-every 5 --precision bf16 --channels-last --workers 12 > "$OUT/reference-20.txt" 2>&1
for run in "$RUNS/cifar-20" .gpu-stage/cifar-20; do
  if [ -f "$run/knn-curve.json" ]; then
    python3 tests/reference/compare_curves.py "$run" "$OUT/reference-20.txt" > "$OUT/curves.txt" 2>&1
    break
  fi
done
fi

if [ "$PART" = long ]; then
# The recipe's 200 epochs, in as many calls as it takes: the run folder is git-ignored (runs/),
# so it stays on the machine between calls, and the timeout's SIGTERM saves a checkpoint that
# the next call resumes from.
unpack_cifar
timeout -k 30 560 $B experiments/cifar10-resnet18.toml --run-dir runs/cifar-200 --set run.precision=bf16 \
  >> "$OUT/cifar-200.txt" 2>&1
RUNS=runs keep_run cifar-200
fi
tail -n 3 "$OUT"/*.txt
