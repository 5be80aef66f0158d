#!/usr/bin/env python3
"""Builds the bundled sample in data/ from the real datasets in ../shared/data.

CelebA: whole identities, the first ones (by identity number) that are present in ../shared, until
each split has its quota (train 280, val 60, test 60). The label files keep the official format
(count line, header, CRLF) restricted to the chosen rows.

LFWA: the first 300 train and 100 test images (in name.txt order) that are present. name.txt,
label.txt and lfwa_40attr_with_split.txt keep their formats restricted to those rows, and
indices_train_test.mat is rewritten as a MATLAB 7.3 (HDF5) file with the same variable names and
layout as the official one, indexing the sample's rows (needs h5py).

Run from the repository root:  python3 scripts/make_sample.py [--shared ../shared/data]
"""
import argparse
import os
import shutil

QUOTA_CELEBA = {"0": 280, "1": 60, "2": 60}
QUOTA_LFWA = {"train": 300, "test": 100}


def read_lines(path):
    with open(path, newline="") as f:
        return f.read().splitlines()


def celeba(src, dst):
    attr = read_lines(os.path.join(src, "list_attr_celeba.txt"))
    part = dict(l.split() for l in read_lines(os.path.join(src, "list_eval_partition.txt")) if l.strip())
    ident = dict(l.split() for l in read_lines(os.path.join(src, "identity_CelebA.txt")) if l.strip())
    present = set(os.listdir(os.path.join(src, "img_align_celeba")))
    by_identity = {}
    for name in sorted(present):
        by_identity.setdefault(int(ident[name]), []).append(name)
    chosen = set()
    count = {k: 0 for k in QUOTA_CELEBA}
    for _, names in sorted(by_identity.items()):
        split = part[names[0]]
        if count[split] + len(names) <= QUOTA_CELEBA[split]:
            chosen.update(names)
            count[split] += len(names)
    rows = [l for l in attr[2:] if l.split()[0] in chosen]
    os.makedirs(os.path.join(dst, "img_align_celeba"), exist_ok=True)
    with open(os.path.join(dst, "list_attr_celeba.txt"), "w", newline="") as f:
        f.write("\r\n".join([str(len(rows)), attr[1]] + rows) + "\r\n")
    for fname, table in [("list_eval_partition.txt", part), ("identity_CelebA.txt", ident)]:
        with open(os.path.join(dst, fname), "w", newline="") as f:
            f.write("".join(f"{n} {table[n]}\r\n" for n in sorted(chosen)))
    for n in sorted(chosen):
        shutil.copyfile(os.path.join(src, "img_align_celeba", n), os.path.join(dst, "img_align_celeba", n))
    print("celeba:", count)


def lfwa(src, dst):
    import h5py
    import numpy as np

    names = read_lines(os.path.join(src, "name.txt"))
    labels = read_lines(os.path.join(src, "label.txt"))
    text = read_lines(os.path.join(src, "lfwa_40attr_with_split.txt"))
    comments = [l for l in text if l.startswith("#")]
    header = [l for l in text if l.startswith("image split")][0]
    split_of = {l.split()[0]: l.split()[1] for l in text if l and not l.startswith(("#", "image split"))}
    rows_of = {l.split()[0]: l for l in text if l and not l.startswith(("#", "image split"))}
    count = {k: 0 for k in QUOTA_LFWA}
    chosen = []
    for i, n in enumerate(names):
        rel = n.replace("\\", "/")
        s = split_of[rel]
        if count[s] < QUOTA_LFWA[s] and os.path.exists(os.path.join(src, "lfw", rel)):
            chosen.append(i)
            count[s] += 1
    with open(os.path.join(dst, "name.txt"), "w", newline="") as f:
        f.write("".join(names[i] + "\n" for i in chosen))
    with open(os.path.join(dst, "label.txt"), "w", newline="") as f:
        f.write("".join(labels[i] + "\n" for i in chosen))
    with open(os.path.join(dst, "lfwa_40attr_with_split.txt"), "w", newline="") as f:
        f.write("# SAMPLE of the LFWA text split, rows chosen by scripts/make_sample.py\n")
        f.write("".join(c + "\n" for c in comments) + header + "\n")
        f.write("".join(rows_of[names[i].replace("\\", "/")] + "\n" for i in chosen))
    for i in chosen:
        rel = names[i].replace("\\", "/")
        os.makedirs(os.path.join(dst, "lfw", os.path.dirname(rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, "lfw", rel), os.path.join(dst, "lfw", rel))
    # MATLAB 7.3: an HDF5 file with a 512-byte user block holding the MATLAB header.
    mat = os.path.join(dst, "indices_train_test.mat")
    with h5py.File(mat, "w", userblock_size=512) as f:
        for var, s in [("indices_img_train", "train"), ("indices_img_test", "test")]:
            idx = [k + 1 for k, i in enumerate(chosen) if split_of[names[i].replace("\\", "/")] == s]
            d = f.create_dataset(var, data=np.array(idx, dtype="<f8").reshape(-1, 1))
            d.attrs["MATLAB_class"] = np.bytes_(b"double")
    header_text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: dmm scripts/make_sample.py HDF5 schema 1.00 ."
    with open(mat, "r+b") as f:
        block = header_text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
        f.write(block)
    print("lfwa:", count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="data")
    args = ap.parse_args()
    for sub, fn in [("celeba", celeba), ("lfwa", lfwa)]:
        dst = os.path.join(args.out, sub)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        fn(os.path.join(args.shared, sub), dst)


if __name__ == "__main__":
    main()
