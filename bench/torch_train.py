"""PyTorch reference for a whole `dmm train` run: the same network, recipe and data, to put beside
dmm's accuracy and wall time (docs/training.md, "What training reaches").

The network is the one the parity tests check ours against (crates/dmm-model/tests/fixtures/
make_fixtures.py) with PyTorch's default initialisation, as dmm's. The recipe is dmm's: the joint
loss of Eq. 3 (the sum over the 40 attributes of lambda_j * MSE_j on +-1 targets, plus beta times
the landmark loss of Eq. 1 when --landmarks names dmm's landmark CSV: the squared error of the 68
points in [0, 1] image coordinates, summed per image, averaged over the images that have points),
SGD with momentum 0.9 and weight decay 5e-4, random horizontal
flips (which mirror the points with the iBUG map), an evaluation over the whole validation set at iteration 0 and every P iterations that
updates the thresholds tau (Eq. 6, DMM-CNN), the loss weights lambda (Eq. 4 rescaled to sum to 40,
DMM-CNN) and the plateau schedule (lr x 0.1 after more than `patience` evaluations in a row
without a relative improvement of 1e-4 in the validation error, 1 - mean accuracy), a final
evaluation, and the model with the best validation mean accuracy evaluated on the test split with
its thresholds. Images are decoded once, resized bilinearly
over pixel centres with antialiasing when shrinking (the filter widened by the scale factor, as
dmm's pipeline; crates/dmm-data/tests/resize.rs holds the two to the same pixels) and normalized
with ImageNet's mean and std.

    python3 bench/torch_train.py --root ../shared/data/celeba --variant dmm-cnn --width 32 \
        --size 109x89 --batch 32 --epochs 10 --lr 0.00025 --eval-every 281 --json out.json

The built-in model's recipe (models/README.md), at its native size with the landmark head:

    python3 bench/torch_train.py --root ../shared/data/celeba --variant dmm-cnn --width 16 \
        --size 218x178 --landmarks runs/bundle-model/landmarks.csv --epochs 18 --json out.json

The `mini` preset on the bundled sample, as `cargo xtask reproduce --preset mini` runs it: CelebA
from the bundled trunk, then LFWA fine-tuned from that run's model (--save writes it with dmm's key
names; LFWA evaluates on its first 60 train images, as dmm's `--eval-split train` with max_eval 60):

    python3 bench/torch_train.py --root data/celeba --variant dmm-cnn --width 8 --size 96x80 \
        --batch 16 --epochs 12 --eval-every 17 --patience 2 --landmarks data/celeba/landmarks.csv \
        --backbone data/pretrained/celeba-baseline-w8.safetensors --save celeba.safetensors
    python3 bench/torch_train.py --dataset lfwa --root data/lfwa --variant dmm-cnn --width 8 \
        --size 96x80 --batch 16 --epochs 6 --eval-every 17 --patience 2 --max-eval 60 \
        --landmarks data/lfwa/landmarks.csv --init celeba.safetensors
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "crates/dmm-model/tests/fixtures"))
from make_fixtures import Dmm, Trunk, read_groups  # noqa: E402

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def read_celeba(root):
    with open(os.path.join(root, "list_attr_celeba.txt")) as f:
        lines = f.read().splitlines()
    labels = {}
    for line in lines[2:]:
        parts = line.split()
        if parts:
            labels[parts[0]] = [1.0 if v == "1" else -1.0 for v in parts[1:]]
    split = {}
    with open(os.path.join(root, "list_eval_partition.txt")) as f:
        for line in f:
            parts = line.split()
            if parts:
                split[parts[0]] = int(parts[1])
    present = set(os.listdir(os.path.join(root, "img_align_celeba")))
    out = {0: [], 1: [], 2: []}
    for name in sorted(split):
        if name in present:
            out[split[name]].append(name)
    return labels, out


def read_lfwa(root):
    """The LFWA text split (lfwa_40attr_with_split.txt: `image split` and 40 labels in 0/1), in
    file order, as dmm reads it: train as split 0, test as split 2 (LFWA has no val split)."""
    labels, out = {}, {0: [], 1: [], 2: []}
    with open(os.path.join(root, "lfwa_40attr_with_split.txt")) as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0].startswith("#") or parts[:2] == ["image", "split"]:
                continue
            labels[parts[0]] = [1.0 if v == "1" else -1.0 for v in parts[2:]]
            out[{"train": 0, "test": 2}[parts[1]]].append(parts[0])
    return labels, out


IMAGES = {"celeba": "img_align_celeba", "lfwa": "lfw"}


def load(root, images, names, size):
    xs = torch.empty(len(names), 3, *size, dtype=torch.uint8)
    for i, n in enumerate(names):
        img = np.asarray(Image.open(os.path.join(root, images, n)).convert("RGB"))
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float().unsqueeze(0)
        if tuple(t.shape[2:]) != tuple(size):
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
        xs[i] = t.round().clamp(0, 255).to(torch.uint8)[0]
    return xs


def normalize(xs):
    return (xs.float() / 255.0 - MEAN) / STD


class Baseline(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.trunk = Trunk(w)
        del self.trunk.fc
        self.fc = nn.Linear(32 * w, 40)

    def forward(self, x):
        return self.fc(self.trunk(x).mean((2, 3)))


class DmmCnn(Dmm):
    def __init__(self, w, groups, norm=True):
        super().__init__(w, 68, groups, norm)
        del self.trunk.fc
        self.with_landmarks = False

    def forward(self, x):
        _, attrs, points = super().forward(x)
        return (attrs, points) if self.with_landmarks else attrs


# iBUG 68-point mirror map (crates/dmm-data/src/pipeline.rs): point i of a flipped face is the
# mirror of point FLIP[i].
FLIP = [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
        27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
        54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]


def dmm_name(k):
    """dmm's checkpoint name of a tensor of these models: the trunk's without `trunk.`, the
    Baseline's classifier as `attributes.fc`."""
    k = k[len("trunk."):] if k.startswith("trunk.") else k
    return "attributes." + k if k.startswith("fc.") else k


def dmm_keys(model):
    """The model's tensors under dmm's checkpoint names (dmm_name), no `num_batches_tracked`."""
    return {dmm_name(k): v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_dmm(model, path, trunk_only):
    """Copies a dmm checkpoint (or one --save wrote) into the model: every tensor, or with
    trunk_only the trunk's alone (dmm's --backbone). A tensor the model needs and the file lacks
    is an error."""
    src = load_file(path)
    with torch.no_grad():
        for k, t in dmm_keys(model).items():
            if trunk_only and k.split(".")[0] in ("attributes", "objective", "subjective", "landmarks"):
                continue
            if k not in src:
                sys.exit(f"{path}: no tensor {k}")
            t.copy_(src[k].to(t.dtype))


def read_landmarks(path, names, size, native):
    """dmm's landmark CSV (image,x0,y0,...) -> [n, 136] targets in [0, 1] output coordinates (pixel
    centres map to pixel centres under a resize) and a [n] mask."""
    rows = {}
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 137:
                rows[parts[0]] = [float(v) for v in parts[1:]]
    (h, w), (h0, w0) = size, native
    pts, mask = torch.zeros(len(names), 136), torch.zeros(len(names))
    for i, n in enumerate(names):
        if n in rows:
            p = torch.tensor(rows[n]).view(68, 2)
            x = (p[:, 0] + 0.5) * w / w0 - 0.5
            y = (p[:, 1] + 0.5) * h / h0 - 0.5
            pts[i] = torch.stack([x / w, y / h], 1).reshape(-1)
            mask[i] = 1.0
    return pts, mask


def flip_points(pts, w):
    """Mirrors [b, 136] targets in [0, 1] coordinates of an image w pixels wide."""
    p = pts.view(-1, 68, 2)[:, FLIP].clone()
    p[:, :, 0] = ((w - 1) - p[:, :, 0] * w) / w
    return p.reshape(-1, 136)


def nme(pred, target, size):
    """dmm's NME per face (crates/dmm-train/src/metrics.rs): mean point distance in pixels over the
    distance between the outer eye corners 36 and 45."""
    scale = torch.tensor([size[1], size[0]], dtype=torch.float64)
    p, t = pred.double().view(-1, 68, 2) * scale, target.double().view(-1, 68, 2) * scale
    return (p - t).norm(dim=2).mean(1) / (t[:, 36] - t[:, 45]).norm(dim=1)


def evaluate(model, xs, ys, tau, batch, points=None):
    """Attribute losses and accuracies; with points = (targets, mask, size), the landmark NME too."""
    model.eval()
    sq, fp, fn, tp, tn = torch.zeros(40, dtype=torch.float64), *(torch.zeros(40, dtype=torch.long) for _ in range(4))
    nme_sum, n_points = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(xs), batch):
            if points is not None:
                model.with_landmarks = True
                s, lm = model(normalize(xs[i:i + batch]))
                model.with_landmarks = False
                target, mask, size = points[0][i:i + batch], points[1][i:i + batch] > 0, points[2]
                if mask.any():
                    nme_sum += nme(lm[mask], target[mask], size).sum().item()
                    n_points += int(mask.sum())
            else:
                s = model(normalize(xs[i:i + batch]))
            y = ys[i:i + batch]
            sq += ((s - y) ** 2).sum(0).double()
            pred, pos = s > tau, y > 0
            tp += (pred & pos).sum(0)
            fp += (pred & ~pos).sum(0)
            tn += (~pred & ~pos).sum(0)
            fn += (~pred & pos).sum(0)
    model.train()
    n = len(xs)
    acc = ((tp + tn).double() / n)
    tpr = torch.where(tp + fn > 0, tp.double() / (tp + fn).clamp(min=1), tn.double() / (tn + fp).clamp(min=1))
    tnr = torch.where(tn + fp > 0, tn.double() / (tn + fp).clamp(min=1), tpr)
    bal = (tpr + tnr) / 2
    return {"losses": (sq / n).tolist(), "acc": acc.mean().item(), "bal": bal.mean().item(), "fp": fp, "fn": fn,
            "nme": nme_sum / n_points if n_points else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["celeba", "lfwa"], default="celeba")
    p.add_argument("--root", required=True)
    p.add_argument("--variant", choices=["baseline", "dmm-cnn"], default="dmm-cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", default="109x89")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.00025, help="on the summed loss of Eq. 3 (x40 on a mean loss)")
    p.add_argument("--eval-every", type=int, default=281)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-head-norm", action="store_true", help="DMM-CNN without batch norm between SPP and FC (the control)")
    p.add_argument("--landmarks", help="dmm's landmark CSV: train the landmark head too (DMM-CNN)")
    p.add_argument("--beta", type=float, default=0.5, help="weight of the landmark loss (Eq. 3)")
    p.add_argument("--max-eval", type=int, help="evaluate on at most this many images (dmm's max_eval)")
    p.add_argument("--backbone", help="a dmm checkpoint whose trunk the model starts from (dmm's --backbone)")
    p.add_argument("--init", help="a dmm checkpoint the whole model starts from (dmm's --init)")
    p.add_argument("--save", help="write the best model here, with dmm's key names (safetensors)")
    p.add_argument("--minutes", type=float, help="stop training after this much wall time (loading included), to compare at equal time")
    p.add_argument("--json", help="write the summary here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    size = tuple(int(v) for v in a.size.split("x"))
    started = time.time()
    labels, splits = read_celeba(a.root) if a.dataset == "celeba" else read_lfwa(a.root)
    if a.dataset == "lfwa":
        splits[1] = splits[0]  # dmm evaluates LFWA runs on its train split
    if a.max_eval is not None:
        splits[1] = splits[1][:a.max_eval]
    images = IMAGES[a.dataset]
    data = {}
    for k, name in [(0, "train"), (1, "val"), (2, "test")]:
        names = splits[k]
        if name == "val" and a.dataset == "lfwa":
            # The first train images, already decoded.
            data[name] = tuple(t[:len(names)] for t in data["train"])
            continue
        data[name] = (load(a.root, images, names, size), torch.tensor([labels[n] for n in names]))
    load_seconds = time.time() - started
    print(f"loaded {', '.join(f'{k} {len(v[0])}' for k, v in data.items())} in {load_seconds:.0f} s", flush=True)
    dmm = a.variant == "dmm-cnn"
    model = DmmCnn(a.width, read_groups(), not a.no_head_norm) if dmm else Baseline(a.width)
    if a.backbone or a.init:
        load_dmm(model, a.init or a.backbone, trunk_only=not a.init)
    val_points = test_points = None
    if a.landmarks:
        if not dmm:
            sys.exit("--landmarks needs --variant dmm-cnn")
        img = Image.open(os.path.join(a.root, images, splits[0][0]))
        ptr, mtr = read_landmarks(a.landmarks, splits[0], size, (img.height, img.width))
        val_points = (*read_landmarks(a.landmarks, splits[1], size, (img.height, img.width)), size)
        test_points = (*read_landmarks(a.landmarks, splits[2], size, (img.height, img.width)), size)
        print(f"landmarks for {int(mtr.sum())} of {len(mtr)} train images", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    lam, tau, prev = torch.ones(40), torch.zeros(40), None
    lr, best_error, bad = a.lr, None, 0
    best = None
    (xtr, ytr), (xva, yva) = data["train"], data["val"]
    per_epoch = len(xtr) // a.batch
    total = per_epoch * a.epochs
    it, records = 0, []
    gen = torch.Generator().manual_seed(a.seed)
    # Where the time after loading goes, as dmm's profile.json splits it.
    prof = dict(loader=0.0, forward=0.0, backward=0.0, update=0.0, evaluation=0.0, other=0.0)

    def eval_step(epoch, last):
        nonlocal lam, tau, prev, lr, best_error, bad, best
        t0 = time.time()
        tau_used = tau.clone()
        ev = evaluate(model, xva, yva, tau_used, 64, val_points)
        losses = torch.tensor(ev["losses"], dtype=torch.float64)
        if not last:
            if dmm:
                tau = tau + 0.01 * epoch / len(xva) * (ev["fp"] - ev["fn"]).double().float()
                if prev is not None:
                    l = ((losses - prev) / prev).abs()
                    lam = (l * 40 / l.sum()).float() if l.sum() > 0 else l.float()
                prev = losses
            error = 1.0 - ev["acc"]  # the schedule watches the validation error, as dmm's
            if best_error is not None and error >= best_error * (1 - 1e-4):
                bad += 1
                if bad > a.patience:
                    lr, bad = lr * 0.1, 0
                    for g in opt.param_groups:
                        g["lr"] = lr
            else:
                best_error, bad = error, 0
        rec = {"iteration": it, "epoch": epoch, "loss": losses.mean().item(), "acc": ev["acc"], "bal": ev["bal"], "nme": ev["nme"], "lr": lr, "seconds": time.time() - started}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if best is None or ev["acc"] > best[0]:
            best = (ev["acc"], {k: v.clone() for k, v in model.state_dict().items()}, tau_used.clone())
        prof["evaluation"] += time.time() - t0

    model.train()
    out_of_time = lambda: a.minutes is not None and time.time() - started > 60 * a.minutes  # noqa: E731
    for epoch in range(a.epochs):
        if out_of_time():
            break
        order = torch.randperm(len(xtr), generator=gen)
        for b in range(per_epoch):
            if out_of_time():
                break
            if it % a.eval_every == 0:
                eval_step(epoch + 1, False)
            t0 = time.time()
            idx = order[b * a.batch:(b + 1) * a.batch]
            xs = normalize(xtr[idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xs[flip] = xs[flip].flip(3)
            t1 = time.time()
            prof["loader"] += t1 - t0
            if a.landmarks:
                model.with_landmarks = True
                attrs, points = model(xs)
                model.with_landmarks = False
                target, mask = ptr[idx].clone(), mtr[idx]
                target[flip] = flip_points(target[flip], size[1])
                n_with = mask.sum()
            else:
                attrs, n_with = model(xs), 0
            per_attr = ((attrs - ytr[idx]) ** 2).mean(0)
            loss = (per_attr * lam).sum()
            if n_with > 0:
                loss = loss + a.beta * ((((points - target) ** 2).sum(1) * mask).sum() / n_with)
            t2 = time.time()
            prof["forward"] += t2 - t1
            opt.zero_grad()
            loss.backward()
            t3 = time.time()
            prof["backward"] += t3 - t2
            opt.step()
            prof["update"] += time.time() - t3
            it += 1
    eval_step(min(a.epochs, it // per_epoch + 1), True)
    train_seconds = time.time() - started
    prof["other"] = train_seconds - load_seconds - sum(v for k, v in prof.items() if k != "other")
    model.load_state_dict(best[1])
    if a.save:
        save_file({k: v.contiguous() for k, v in dmm_keys(model).items()}, a.save)
    xte, yte = data["test"]
    test = evaluate(model, xte, yte, best[2], 64, test_points)
    majority = torch.where(ytr.mean(0) > 0, 1.0, -1.0)
    maj_acc = (yte == majority).double().mean().item()
    out = {"dataset": a.dataset, "variant": a.variant, "width": a.width, "size": a.size, "batch": a.batch, "epochs": a.epochs, "iterations": it, "minutes_budget": a.minutes, "lr": a.lr,
           "wall_seconds": train_seconds, "load_seconds": load_seconds, "profile": prof, "images_trained": it * a.batch, "best_val_acc": best[0], "test_acc": test["acc"], "test_bal": test["bal"], "test_nme": test["nme"],
           "majority_test_acc": maj_acc, "landmarks": a.landmarks, "head_norm": dmm and not a.no_head_norm, "records": records}
    print("time after loading: " + ", ".join(f"{k} {v:.1f} s" for k, v in prof.items()), flush=True)
    print(f"test mean accuracy {test['acc']:.4f}, balanced {test['bal']:.4f} (majority {maj_acc:.4f}); {train_seconds / 60:.1f} min")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
