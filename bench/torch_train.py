"""PyTorch reference for a whole `dmm train` run: the same network, recipe and data, to put beside
dmm's accuracy and wall time (docs/training.md, "What training reaches").

The network is the one the parity tests check ours against (crates/dmm-model/tests/fixtures/
make_fixtures.py) with PyTorch's default initialisation, as dmm's. The recipe is dmm's: the joint
loss of Eq. 3 (the sum over the 40 attributes of lambda_j * MSE_j on +-1 targets; no landmark term,
as ../shared has no landmark CSV), SGD with momentum 0.9 and weight decay 5e-4, random horizontal
flips, an evaluation over the whole validation set at iteration 0 and every P iterations that
updates the thresholds tau (Eq. 6, DMM-CNN), the loss weights lambda (Eq. 4 rescaled to sum to 40,
DMM-CNN) and the plateau schedule (lr x 0.1 after `patience` evaluations without a relative
improvement of 1e-4), a final evaluation, and the model with the best validation mean accuracy
evaluated on the test split with its thresholds. Images are decoded once, resized bilinearly
(pixel centres, no antialiasing, as dmm's pipeline) and normalized with ImageNet's mean and std.

    python3 bench/torch_train.py --root ../shared/data/celeba --variant dmm-cnn --width 32 \
        --size 109x89 --batch 32 --epochs 10 --lr 0.00025 --eval-every 281 --json out.json
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


def load(root, names, size):
    xs = torch.empty(len(names), 3, *size, dtype=torch.uint8)
    for i, n in enumerate(names):
        img = np.asarray(Image.open(os.path.join(root, "img_align_celeba", n)).convert("RGB"))
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float().unsqueeze(0)
        if tuple(t.shape[2:]) != tuple(size):
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
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

    def forward(self, x):
        return super().forward(x)[1]


def evaluate(model, xs, ys, tau, batch):
    model.eval()
    sq, fp, fn, tp, tn = torch.zeros(40, dtype=torch.float64), *(torch.zeros(40, dtype=torch.long) for _ in range(4))
    with torch.no_grad():
        for i in range(0, len(xs), batch):
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
    return {"losses": (sq / n).tolist(), "acc": acc.mean().item(), "bal": bal.mean().item(), "fp": fp, "fn": fn}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--json", help="write the summary here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    size = tuple(int(v) for v in a.size.split("x"))
    started = time.time()
    labels, splits = read_celeba(a.root)
    data = {}
    for k, name in [(0, "train"), (1, "val"), (2, "test")]:
        names = splits[k]
        data[name] = (load(a.root, names, size), torch.tensor([labels[n] for n in names]))
    print(f"loaded {', '.join(f'{k} {len(v[0])}' for k, v in data.items())} in {time.time() - started:.0f} s", flush=True)
    dmm = a.variant == "dmm-cnn"
    model = DmmCnn(a.width, read_groups(), not a.no_head_norm) if dmm else Baseline(a.width)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    lam, tau, prev = torch.ones(40), torch.zeros(40), None
    lr, best_loss, bad = a.lr, None, 0
    best = None
    (xtr, ytr), (xva, yva) = data["train"], data["val"]
    per_epoch = len(xtr) // a.batch
    total = per_epoch * a.epochs
    it, records = 0, []
    gen = torch.Generator().manual_seed(a.seed)

    def eval_step(epoch, last):
        nonlocal lam, tau, prev, lr, best_loss, bad, best
        tau_used = tau.clone()
        ev = evaluate(model, xva, yva, tau_used, 64)
        losses = torch.tensor(ev["losses"], dtype=torch.float64)
        if not last:
            if dmm:
                tau = tau + 0.01 * epoch / len(xva) * (ev["fp"] - ev["fn"]).double().float()
                if prev is not None:
                    l = ((losses - prev) / prev).abs()
                    lam = (l * 40 / l.sum()).float() if l.sum() > 0 else l.float()
                prev = losses
            mean_loss = losses.mean().item()
            if best_loss is not None and mean_loss >= best_loss * (1 - 1e-4):
                bad += 1
                if bad > a.patience:
                    lr, bad = lr * 0.1, 0
                    for g in opt.param_groups:
                        g["lr"] = lr
            else:
                best_loss, bad = mean_loss, 0
        rec = {"iteration": it, "epoch": epoch, "loss": losses.mean().item(), "acc": ev["acc"], "bal": ev["bal"], "lr": lr, "seconds": time.time() - started}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if best is None or ev["acc"] > best[0]:
            best = (ev["acc"], {k: v.clone() for k, v in model.state_dict().items()}, tau_used.clone())

    model.train()
    for epoch in range(a.epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for b in range(per_epoch):
            if it % a.eval_every == 0:
                eval_step(epoch + 1, False)
            idx = order[b * a.batch:(b + 1) * a.batch]
            xs = normalize(xtr[idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xs[flip] = xs[flip].flip(3)
            per_attr = ((model(xs) - ytr[idx]) ** 2).mean(0)
            loss = (per_attr * lam).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
    eval_step(a.epochs, True)
    train_seconds = time.time() - started
    model.load_state_dict(best[1])
    xte, yte = data["test"]
    test = evaluate(model, xte, yte, best[2], 64)
    majority = torch.where(ytr.mean(0) > 0, 1.0, -1.0)
    maj_acc = (yte == majority).double().mean().item()
    out = {"variant": a.variant, "width": a.width, "size": a.size, "batch": a.batch, "epochs": a.epochs, "lr": a.lr,
           "wall_seconds": train_seconds, "best_val_acc": best[0], "test_acc": test["acc"], "test_bal": test["bal"],
           "majority_test_acc": maj_acc, "head_norm": dmm and not a.no_head_norm, "records": records}
    print(f"test mean accuracy {test['acc']:.4f}, balanced {test['bal']:.4f} (majority {maj_acc:.4f}); {train_seconds / 60:.1f} min")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
