"""dmm's training steps against PyTorch's, through the whole trainer, at a preset's real size: how
far a `dmm train` run and the same steps in PyTorch (bench/torch_train.py's network) agree after
K SGD steps from the same weights, on the same batches and flips (dmm's loader order, ported
below), with dmm's own pixels and with PIL's (docs/training.md, "Runs are draws"); and, as the control, how far PyTorch's own
steps in float64 are from its steps in float32.

It runs `dmm train --preset P --seed S --stop-after 0` for the initial weights and, for each K,
`dmm train ... --eval-every K --stop-after K` for dmm's weights after K steps; loads the initial
weights into PyTorch, takes the same K steps (the joint loss of Eq. 3 with every lambda 1, which is
what DW and UW weigh before their second evaluation), and prints, per pixel source, how closely each
variable's update (weights after K steps minus initial weights) agrees: the cosine of the two
updates and the norm of their difference over the norm of PyTorch's.

    cargo build --release -p dmm-cli -p dmm-data --example pixel_dump
    python3 bench/lockstep.py --root ../shared/data/celeba --steps 1 10
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file

import torch_train as tt

M64 = (1 << 64) - 1


def mix(z):
    """dmm_core::mix, the SplitMix64 output function (crates/dmm-core/src/rng.rs)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def dmm_order(seed, epoch, n):
    """dmm's training order of epoch `epoch` (0-based) and each sample's flip
    (crates/dmm-data/src/loader.rs: a SplitMix64 Fisher-Yates shuffle, a hashed flip per sample)."""
    state, order = seed ^ mix(epoch + 1), list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & M64
        j = (mix(state) * (i + 1)) >> 64
        order[i], order[j] = order[j], order[i]
    flips = [mix(seed ^ mix(epoch + 1) ^ mix(i + 0x5EED)) & 1 == 1 for i in range(n)]
    return order, flips


def dmm_pixels(dump, paths, size, tmp):
    """dmm's decoded, resized pixels of `paths`, as [n, 3, h, w] uint8 (the pixel_dump example)."""
    listing, out = os.path.join(tmp, "images.txt"), os.path.join(tmp, "pixels.u8")
    with open(listing, "w") as f:
        f.write("\n".join(paths) + "\n")
    subprocess.run([dump, listing, f"{size[0]}x{size[1]}", out], check=True)
    raw = np.fromfile(out, dtype=np.uint8).reshape(len(paths), size[0], size[1], 3)
    return torch.from_numpy(raw.copy()).permute(0, 3, 1, 2).contiguous()


def compare(init, dmm, ours):
    """Per variable: (cosine of the two updates, |difference| / |PyTorch's update|, name)."""
    rows = []
    for k, t in dmm.items():
        if k not in ours or "running" in k or k.startswith("landmarks."):
            continue
        a, b = (t.double() - init[k].double()).flatten(), (ours[k].double() - init[k].double()).flatten()
        if b.norm() == 0:
            continue
        rows.append((float(a @ b / (a.norm() * b.norm())), float((a - b).norm() / b.norm()), k))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="CelebA root")
    p.add_argument("--preset", default="subset")
    p.add_argument("--variant", choices=["baseline", "dmm-cnn"], default="dmm-cnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    p.add_argument("--dmm", default=os.path.join(tt.ROOT, "target", "release", "dmm"))
    p.add_argument("--dump", default=os.path.join(tt.ROOT, "target", "release", "examples", "pixel_dump"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix="lockstep-")
    common = [a.dmm, "train", "--dataset", "celeba", "--root", a.root, "--preset", a.preset, "--variant", a.variant,
              "--seed", str(a.seed), "--quiet"]
    subprocess.run(common + ["--out", os.path.join(tmp, "init"), "--stop-after", "0"], check=True, capture_output=True)
    with open(os.path.join(tmp, "init", "config.json")) as f:
        cfg = json.load(f)
    size, batch = tuple(cfg["input_size"]), cfg["batch_size"]
    init = load_file(os.path.join(tmp, "init", "last.safetensors"))
    labels, splits = tt.read_celeba(a.root)
    names = splits[0]
    per_epoch = len(names) // batch
    steps = []  # (indices, flips) of each step, epoch by epoch as dmm's loader makes them
    for epoch in range(max(a.steps) // per_epoch + 1):
        order, flips = dmm_order(a.seed, epoch, len(names))
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            steps.append((idx, torch.tensor([flips[i] for i in idx])))
    needed = sorted({i for idx, _ in steps[:max(a.steps)] for i in idx})
    where = {i: n for n, i in enumerate(needed)}
    paths = [os.path.join(a.root, tt.IMAGES["celeba"], names[i]) for i in needed]
    pixels = {"dmm's": dmm_pixels(a.dump, paths, size, tmp),
              "PIL's": tt.load(a.root, tt.IMAGES["celeba"], [names[i] for i in needed], size)}
    apart = (pixels["dmm's"].float() - pixels["PIL's"].float()).abs()
    ys = torch.tensor([labels[n] for n in names])
    print(f"{a.preset}, {a.variant}, seed {a.seed}: dmm's and PyTorch's updates after K steps from the same weights; "
          f"PIL's pixels are {apart.mean():.3f} levels from dmm's on average, {apart.max():.0f} at most")
    for k in a.steps:
        run = os.path.join(tmp, f"k{k}")
        subprocess.run(common + ["--out", run, "--eval-every", str(k), "--stop-after", str(k)], check=True, capture_output=True)
        dmm = load_file(os.path.join(run, "last.safetensors"))
        torch32 = {}
        for source, xs in pixels.items():
            torch32[source] = steps_in_torch(a, cfg, tmp, steps[:k], xs, where, ys, torch.float32)
            report(k, f"dmm against PyTorch, {source} pixels:", compare(init, dmm, torch32[source]))
        # The control: how far float rounding alone moves PyTorch's own steps.
        ours64 = steps_in_torch(a, cfg, tmp, steps[:k], pixels["dmm's"], where, ys, torch.float64)
        report(k, "PyTorch float64 against float32, dmm's pixels:", compare(init, ours64, torch32["dmm's"]))


def steps_in_torch(a, cfg, tmp, steps, xs, where, ys, dtype):
    """PyTorch's weights after `steps` from the initial ones, in `dtype`."""
    sgd = cfg["sgd"]
    model = tt.DmmCnn(cfg["width"], tt.read_groups()) if a.variant == "dmm-cnn" else tt.Baseline(cfg["width"])
    tt.load_dmm(model, os.path.join(tmp, "init", "last.safetensors"), trunk_only=False)
    model.to(dtype).train()
    opt = torch.optim.SGD(model.parameters(), lr=sgd["lr"], momentum=sgd["momentum"], weight_decay=sgd["weight_decay"])
    for idx, flip in steps:
        x = tt.normalize(xs[[where[i] for i in idx]]).to(dtype)
        x[flip] = x[flip].flip(3)
        loss = ((model(x) - ys[idx].to(dtype)) ** 2).mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: t.detach() for n, t in tt.dmm_keys(model).items()}


def report(k, what, rows):
    """One line: the median and least cosine over the variables, and conv1's."""
    cos = sorted(r[0] for r in rows)
    worst = min(rows)
    conv1 = next(r for r in rows if r[2] == "conv1.weight")
    print(f"K={k:<4} {what} cosine of the updates over {len(rows)} variables: median {cos[len(cos) // 2]:.4f}, "
          f"least {worst[0]:.4f} ({worst[2]}); conv1.weight {conv1[0]:.4f} (difference {conv1[1]:.2e} of the update)")


if __name__ == "__main__":
    main()
