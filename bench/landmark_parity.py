#!/usr/bin/env python3
"""Landmark parity on real JPEGs (issue 23): Python dlib's points against `dmm landmarks`'.

Python side exactly as the paper's pipeline: np.array(PIL.Image.open(p).convert('RGB')), then
dlib.get_frontal_face_detector()(img, 1), the largest box, shape_predictor_68_face_landmarks.
Compares with a CSV that `dmm landmarks` wrote for the same files (keys = file names), and prints
faces found by each, and the worst and mean coordinate differences on faces both found.

    dmm landmarks --jobs 1 --images FILE... --out runs/parity/dmm.csv
    python3 bench/landmark_parity.py --dmm runs/parity/dmm.csv FILE...

Needs: dlib-bin (pip), Pillow, numpy; /usr/share/dlib/shape_predictor_68_face_landmarks.dat.
"""
import argparse
import csv
import os

import dlib
import numpy as np
from PIL import Image

DAT = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dmm", required=True, help="landmark CSV written by dmm landmarks")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    ours = {}
    with open(args.dmm) as f:
        for row in csv.reader(f):
            if row[0] != "image":
                ours[row[0]] = np.array([float(v) for v in row[1:]])
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(DAT)
    found_py = both = only_py = only_dmm = 0
    worst, diffs, over = 0.0, [], []
    for path in args.images:
        key = os.path.basename(path)
        img = np.array(Image.open(path).convert("RGB"))
        boxes = detector(img, 1)
        theirs = None
        if len(boxes):
            found_py += 1
            box = max(boxes, key=lambda r: r.area())
            shape = predictor(img, box)
            theirs = np.array([v for i in range(shape.num_parts) for v in (shape.part(i).x, shape.part(i).y)], dtype=float)
        mine = ours.get(key)
        if theirs is not None and mine is not None:
            both += 1
            d = np.abs(theirs - mine)
            diffs.append(d.mean())
            worst = max(worst, d.max())
            if d.max() > 0.5:
                over.append((key, d.max()))
        elif theirs is not None:
            only_py += 1
        elif mine is not None:
            only_dmm += 1
    print(f"{len(args.images)} images: Python dlib found {found_py} faces, dmm {both + only_dmm}; both {both}, "
          f"only Python {only_py}, only dmm {only_dmm}")
    print(f"on faces both found: worst coordinate difference {worst:.2f} px, mean {np.mean(diffs) if diffs else 0:.4f} px; "
          f"faces over 0.5 px: {len(over)} {over[:5]}")


if __name__ == "__main__":
    main()
