"""The kNN curve of a byol-rs run beside the PyTorch reference's, epoch by epoch.

    python3 tests/reference/compare_curves.py RUN_DIR REFERENCE_OUTPUT [--max-z Z]

RUN_DIR is a byol-rs run folder (its knn-curve.json); REFERENCE_OUTPUT is what
tests/reference/byol_torch.py printed (one JSON line per evaluation, so a run cut short still
compares up to its last evaluation). Prints a markdown table of the epochs both evaluated: kNN
top-1 of each, their difference, and the difference's standard error from sampling the test set
alone (two independent accuracies on n images: sqrt(p1(1-p1)/n + p2(1-p2)/n)). Runs with
different seeds also differ by training noise, which this does not include. Exits 1 when the
curves share no epoch, or when the runs had done different numbers of steps at the same epoch
(then they did not run the same recipe).

It ends with a verdict: the largest difference in standard errors (z). With --max-z Z, a
difference of more than Z standard errors at any common epoch exits 2: a gap that sampling the
test set does not explain. Training noise is not in the standard error, so a gap just over the
line calls for both runs again with another seed before it is called a difference of recipe.
"""
import argparse, json, math, sys

parser = argparse.ArgumentParser(description="The kNN curve of a byol-rs run beside the PyTorch reference's.")
parser.add_argument("run_dir")
parser.add_argument("reference_output")
parser.add_argument("--max-z", type=float, help="exit 2 when a difference exceeds this many standard errors")
args = parser.parse_args()
run_dir, reference_output = args.run_dir, args.reference_output
with open(f"{run_dir}/knn-curve.json") as f:
    ours = {point["epoch"]: point for point in json.load(f)}
with open(reference_output) as f:
    lines = [json.loads(line) for line in f if line.startswith("{")]
theirs = {line["epoch"]: line for line in lines if "epoch" in line}
n = lines[0]["test_images"]
epochs = sorted(set(ours) & set(theirs))
if not epochs:
    sys.exit(f"no epoch in both curves: byol-rs {sorted(ours)}, PyTorch {sorted(theirs)}")
print("| epoch | step | byol-rs kNN top-1 | PyTorch kNN top-1 | difference (points) | sampling SE (points) |")
print("|---|---|---|---|---|---|")
for epoch in epochs:
    a, b = ours[epoch]["knn_top1"], theirs[epoch]["knn"]
    se = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    print(f"| {epoch} | {ours[epoch]['step']} | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (a - b):+.2f} | {100 * se:.2f} |")
print(f"{len(epochs)} common evaluations on {n} test images")
for epoch in epochs:
    if ours[epoch]["step"] != theirs[epoch]["step"]:
        sys.exit(f"at epoch {epoch} byol-rs had done {ours[epoch]['step']} steps and PyTorch "
                 f"{theirs[epoch]['step']}: not the same recipe")

def z(epoch):
    a, b = ours[epoch]["knn_top1"], theirs[epoch]["knn"]
    se = math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    return abs(a - b) / se if se > 0 else (0.0 if a == b else math.inf)

largest = max(epochs, key=z)
print(f"verdict: the largest difference is {z(largest):.1f} standard errors, at epoch {largest}")
if args.max_z is not None and z(largest) > args.max_z:
    beyond = [e for e in epochs if z(e) > args.max_z]
    print(f"beyond {args.max_z:g} standard errors at epoch(s) {beyond}: more than sampling the test set explains "
          f"(training noise is not included: run both again with another seed before calling it a gap)")
    sys.exit(2)
