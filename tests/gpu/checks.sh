#!/usr/bin/env bash
# GPU checks as one script, for a machine with a CUDA GPU, python3 and torch/torchvision but no
# Rust toolchain: every CUDA path on short runs, the training step against eager PyTorch (bf16 and
# fp16), the input path against the step, a 20-epoch CIFAR-10 ResNet-18 run with kNN by epoch
# beside the same run in plain PyTorch, and NCCL (world size 1) through torchrun. On a machine with Rust, first stage what the
# GPU machine needs in .gpu-stage/ (git-ignored, so whatever copies the repository to the GPU
# machine must take it along; byol-run without debug line tables, and CIFAR-10 as JPEGs,
# train/<class>/*.jpg and test/<class>/*.jpg, the layout that experiments/cifar10-resnet18.toml
# describes, from a folder or a .tar.gz of both):
#
#   cargo xtask gpu-stage path/to/cifar10-jpeg
#
# then, on the GPU machine with .gpu-stage in the repository root, run one part per call:
#
#   bash tests/gpu/checks.sh first       # (the default) CUDA present, the paths that decide whether
#                                        # the rest is worth running, and the CIFAR step against
#                                        # PyTorch: at most 460 s, about 3 min when all is well
#   bash tests/gpu/checks.sh smoke       # every CUDA path once, a few steps each (at most 560 s)
#   bash tests/gpu/checks.sh step        # the BYOL step, ours vs eager PyTorch (at most 390 s)
#   bash tests/gpu/checks.sh e2e         # CUDA graphs, the optimizer alone, training's steps (440 s)
#   bash tests/gpu/checks.sh train       # 20 epochs of CIFAR-10, torchrun with NCCL (420 s)
#   bash tests/gpu/checks.sh reference   # the same 20 epochs in PyTorch, both kNN curves (500 s)
#   bash tests/gpu/checks.sh long        # the recipe's 200 epochs, resumed call after call (500 s)
#
# Every figure is ours beside eager PyTorch measured in the same call on the same card, so each
# comparison is like for like on whatever card runs it. Results: $OUT (or gpu-results/), a few
# files per part (card.txt, doctor.txt, <part>.txt, and run folders' small files packed as
# <run>.tar.gz); each check has its own timeout, so one hang costs little, and each part stays
# under 600 s. A timeout sends SIGTERM (a run saves a checkpoint after its step), then SIGKILL
# 5-30 s later should the step be far off. `reference` and `long` read run folders that earlier
# calls left on the same machine (under $RUNS and runs/), so they only work while it is kept.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
: > "$OUT/doctor.txt"
PART=${1:-first}
case "$PART" in
  first|smoke|step|e2e|train|reference|long) ;;
  *) echo "unknown part '$PART': first, smoke, step, e2e, train, reference or long" >&2; exit 2 ;;
esac
B=.gpu-stage/byol-run
[ -x "$B" ] || { echo "no $B: stage it first (cargo xtask gpu-stage DATA) and take .gpu-stage along" | tee "$OUT/doctor.txt"; exit 2; }
# libtorch from the machine's torch (the binary's own search path names the build machine's).
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>> "$OUT/doctor.txt")
export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# A crash names its functions (the staged binary keeps its symbols, not its line tables).
export RUST_BACKTRACE=1
# Run folders (checkpoints of hundreds of MB) stay outside $OUT; keep_run packs what to read
# (at most a few files come back from $OUT).
RUNS=${RUNS:-/tmp/byol-gpu-runs}
keep_run() {
  (cd "$RUNS" && tar -czf "$OUT/$1.tar.gz" "$1"/config.toml "$1"/summary.json "$1"/knn-curve.json)
}
# A part starts its runs anew: a folder left by an earlier call on this machine would be resumed
# (or found finished) instead of exercising anything.
fresh_runs() { for run in "$@"; do rm -rf "${RUNS:?}/$run"; done; }
# torchrun detaches its workers (setsid): a timeout that kills torchrun leaves them
# running (and holding the card), so every check ends by killing what is left of ours.
reap() { pkill -KILL -f "^$B" 2>/dev/null; sleep 1; }
unpack_cifar() { [ -d data/cifar10-jpeg/test ] || { mkdir -p data/cifar10-jpeg && tar -xzf .gpu-stage/cifar10-jpeg.tar.gz -C data/cifar10-jpeg; }; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt" 2>&1
{
  $B doctor
  python3 -c 'import torch; print("python torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.is_available())'
  ldd "$B" | grep -E '^\s*lib(torch|c10)[^ ]* =>|not found'
} >> "$OUT/doctor.txt" 2>&1
# Without CUDA every run below would train on the CPU and look like a pass.
grep -q 'CUDA available *true' "$OUT/doctor.txt" || { echo "byol-run sees no CUDA device: see doctor.txt"; cat "$OUT/doctor.txt"; exit 1; }
CUDA="--set run.device=cuda"

if [ "$PART" = step ]; then
# The model step against eager PyTorch, both precisions, same card, same call.
for precision in bf16 fp16; do
  timeout -k 15 90 $B bench step experiments/resnet50.toml $CUDA --batch 256 --res 224 --set run.precision=$precision \
    --set schedule.accumulate=1 --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
  timeout -k 15 60 $B bench step experiments/cifar10-resnet18.toml $CUDA --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --against-torch python3 >> "$OUT/step.txt" 2>&1
done
# The same step with the paper's separate views (four network passes instead of two).
timeout -k 15 90 $B bench step experiments/resnet50.toml $CUDA --batch 256 --res 224 --set run.precision=fp16 \
  --set schedule.accumulate=1 --against-torch python3 >> "$OUT/step.txt" 2>&1
fi

if [ "$PART" = e2e ]; then
# The step replayed from a CUDA graph (run.cuda_graphs, bf16 and fp16), and the optimizer alone:
# per tensor against fused over flat buffers (optimizer.fused).
for precision in bf16 fp16; do
  timeout -k 15 60 $B bench step experiments/cifar10-resnet18.toml $CUDA --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --set run.cuda_graphs=true --against-torch python3 >> "$OUT/graphs.txt" 2>&1
done
timeout -k 15 60 $B bench optim experiments/resnet50.toml $CUDA --set run.precision=bf16 > "$OUT/optim.txt" 2>&1

# Training's steps on the loader's batches, on one batch, and the model step alone; CIFAR-10 in
# memory on the GPU (the trainer decodes both splits first).
unpack_cifar
# Both precisions: neither step should read anything back from the card (host syncs/step 0;
# fp16 skips an overflowing step on the card).
for precision in bf16 fp16; do
  timeout -k 15 130 $B bench e2e experiments/cifar10-resnet18.toml $CUDA --set run.precision=$precision --set schedule.batch_size=512 \
    >> "$OUT/e2e.txt" 2>&1
done
fi

# One check: its command, then its exit code, in $LOG; whatever it left running is killed.
check() {
  name=$1; limit=$2; shift 2
  echo "== $name: $*" >> "$LOG"
  timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  echo "== $name: exit $?" >> "$LOG"
  reap
}
R18=experiments/cifar10-resnet18.toml
# A few steps on 1,000 CIFAR-10 images with the real ResNet-18, before anything is timed: a crash
# here costs seconds, not a benchmark's minutes.
small="--set dataset.limit_per_class=100 --set schedule.epochs=2 --set schedule.warmup_epochs=1 --set eval.every_epochs=1 $CUDA"

if [ "$PART" = first ] || [ "$PART" = smoke ]; then
LOG="$OUT/$PART.txt"
unpack_cifar
fresh_runs smoke-bf16 smoke-fp16 smoke-nccl smoke-graphs-bf16 smoke-graphs-fp16 smoke-graphs-adamw smoke-acc smoke-fp32
# What the other parts stand on, most telling first: bf16 with channels_last (training's default
# on a GPU), the step beside PyTorch's, NCCL through torchrun, fp16, the step replayed from a
# CUDA graph.
check bf16 40 $B $R18 --run-dir $RUNS/smoke-bf16 $small --set run.precision=bf16
check resnet50-step 50 $B bench step experiments/resnet50.toml $CUDA --batch 32 --res 224 --warmup 1 --iters 2 \
  --set run.precision=bf16 --set schedule.accumulate=1 --against-torch python3
check nccl 50 python3 -m torch.distributed.run --nproc-per-node=1 --no-python $B $R18 \
  --run-dir $RUNS/smoke-nccl $small --set run.precision=bf16
check fp16 40 $B $R18 --run-dir $RUNS/smoke-fp16 $small --set run.precision=fp16
check bf16-graphs 40 $B $R18 --run-dir $RUNS/smoke-graphs-bf16 $small --set run.precision=bf16 \
  --set byol.concat_views=true --set run.cuda_graphs=true
check fp16-graphs 40 $B $R18 --run-dir $RUNS/smoke-graphs-fp16 $small --set run.precision=fp16 \
  --set byol.concat_views=true --set run.cuda_graphs=true
fi

if [ "$PART" = first ]; then
# The first figures: the CIFAR step beside eager PyTorch's, both precisions, same call.
for precision in bf16 fp16; do
  check step-$precision 55 $B bench step $R18 $CUDA --batch 512 --res 32 --set run.precision=$precision \
    --set byol.concat_views=true --against-torch python3
done
fi

if [ "$PART" = smoke ]; then
# AdamW's fused kernel in a recorded fp16 step: the lr and the overflow flag read on the card.
check fp16-graphs-adamw 40 $B $R18 --run-dir $RUNS/smoke-graphs-adamw $small \
  --set run.precision=fp16 --set run.cuda_graphs=true --set 'optimizer={type="adamw", lr=1e-3}'
check fp16-accumulate 40 $B $R18 --run-dir $RUNS/smoke-acc $small --set run.precision=fp16 --set schedule.accumulate=2
check fp32-contiguous 40 $B $R18 --run-dir $RUNS/smoke-fp32 $small --set run.memory_format=contiguous
check resume 40 $B $R18 --run-dir $RUNS/smoke-bf16 $small --set run.precision=bf16 \
  --set schedule.epochs=3 --allow-change schedule.epochs
check eval-knn 40 $B eval knn $RUNS/smoke-bf16 --train data/cifar10-jpeg/train --test data/cifar10-jpeg/test \
  --limit-per-class 100
fi
if [ "$PART" = first ] || [ "$PART" = smoke ]; then
grep "^== .*: exit" "$LOG"
fi

if [ "$PART" = train ]; then
# CIFAR-10 ResNet-18, 20 epochs in bf16, kNN every 5 epochs (the run folder's knn-curve.json).
unpack_cifar
fresh_runs cifar-20 torchrun-1
timeout -k 15 300 $B $R18 $CUDA --run-dir "$RUNS/cifar-20" --set schedule.epochs=20 \
  --set run.precision=bf16 --set eval.every_epochs=5 > "$OUT/cifar-20.txt" 2>&1
keep_run cifar-20

# NCCL (world size 1) through torchrun, the same code path as several GPUs.
timeout -k 15 120 python3 -m torch.distributed.run --nproc-per-node=1 --no-python $B $R18 $CUDA \
  --run-dir "$RUNS/torchrun-1" --set schedule.epochs=1 > "$OUT/torchrun-1.txt" 2>&1
reap
keep_run torchrun-1
fi

if [ "$PART" = reference ]; then
# The same 20 epochs in plain PyTorch (bf16 autocast, channels_last, the views made by loader
# processes), then both kNN curves side by side. The curve to compare with is the train part's:
# $RUNS/cifar-20 on the same machine, else its copy from $OUT put in .gpu-stage/cifar-20.
unpack_cifar
timeout -k 15 500 python3 tests/reference/byol_torch.py --train data/cifar10-jpeg/train --test data/cifar10-jpeg/test \
  --epochs 20 --eval-every 5 --precision bf16 --channels-last --workers 12 > "$OUT/reference-20.txt" 2>&1
for run in "$RUNS/cifar-20" .gpu-stage/cifar-20; do
  if [ -f "$run/knn-curve.json" ]; then
    python3 tests/reference/compare_curves.py "$run" "$OUT/reference-20.txt" --max-z 3 > "$OUT/curves.txt" 2>&1 \
      || echo "compare_curves.py exited $?" >> "$OUT/curves.txt"
    break
  fi
done
fi

if [ "$PART" = long ]; then
# The recipe's 200 epochs, in as many calls as it takes: the run folder is git-ignored (runs/),
# so it stays on the machine between calls, and the timeout's SIGTERM saves a checkpoint that
# the next call resumes from.
unpack_cifar
timeout -k 30 500 $B $R18 $CUDA --run-dir runs/cifar-200 --set run.precision=bf16 \
  >> "$OUT/cifar-200.txt" 2>&1
RUNS=runs keep_run cifar-200
fi
tail -n 3 "$OUT"/*.txt
exit 0
