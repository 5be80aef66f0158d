"""Which validation images a trained DMM-CNN blows up in eval mode (docs/training.md, "What
training reaches"): for each checkpoint (dmm's, or one bench/torch_train.py --save wrote), the
validation loss with the running statistics, how many images get an output beyond +-3 and +-5, the
loss without the latter, the trunk's largest feature per image (median, 99th percentile, largest),
and the loss in training mode (each batch of 32 normalized by its own statistics, running ones
untouched).

    python3 bench/eval_outliers.py runs/subset/dmm-cnn/last.safetensors --root ../shared/data/celeba
"""
import argparse
import copy

import torch

import torch_train as tt


def batch_statistics(model):
    """A copy that normalizes with each batch's statistics and keeps no running ones."""
    m = copy.deepcopy(model).train()
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.track_running_stats, mod.running_mean, mod.running_var = False, None, None
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--root", required=True)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", default="109x89")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split("x"))
    labels, splits = tt.read_celeba(a.root)
    xs = tt.load(a.root, tt.IMAGES["celeba"], splits[1], size)
    ys = torch.tensor([labels[n] for n in splits[1]])
    for path in a.checkpoints:
        model = tt.DmmCnn(a.width, tt.read_groups())
        tt.load_dmm(model, path, trunk_only=False)
        model.eval()
        train_mode = batch_statistics(model)
        peak, outs, sq_train = [], [], torch.zeros(40)
        with torch.no_grad():
            for i in range(0, len(xs), 32):
                x = tt.normalize(xs[i:i + 32])
                f, o, _ = tt.Dmm.forward(model, x)
                peak.append(f.flatten(1).max(1).values)
                outs.append(o)
                sq_train += ((train_mode(x) - ys[i:i + 32]) ** 2).sum(0)
        peak, out = torch.cat(peak), torch.cat(outs)
        sq = (out - ys) ** 2
        big = out.abs().max(1).values
        print(f"{path}: eval-mode loss {sq.mean():.4f}, {int((big > 3).sum())} images beyond +-3 and "
              f"{int((big > 5).sum())} beyond +-5 (loss without them {sq[big <= 5].mean():.4f}); trunk's largest "
              f"feature per image: median {peak.median():.1f}, 99th percentile {peak.quantile(0.99):.1f}, "
              f"largest {peak.max():.1f}; training-mode loss {sq_train.sum() / 40 / len(xs):.4f}")


if __name__ == "__main__":
    main()
