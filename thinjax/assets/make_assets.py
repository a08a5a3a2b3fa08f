"""Rebuilds the bundled offline assets from the shared ground truth (run once, by hand).

    python thinjax/assets/make_assets.py --zip ../shared/data/cifar10-jpeg.zip \
        --checkpoints ../shared/checkpoints/thinresnet-release

* cifar10_sample.zip: the first 250 train and 100 test images (sorted by file name) of
  each CIFAR-10 class from the JPEG archive, in the split/label/NNNN.jpg layout.
* resnet20_width4_cifar10_ema.safetensors: the study release's CIFAR-10 ResNet-20 w=4
  EMA weights (MIT license, see LICENSE-thinresnet-release), converted without change.
* imagenet_wnids.txt (not made here): the 1,000 ImageNet-1k WordNet ids in label order
  (sorted), a copy of tensorflow_datasets' datasets/imagenet2012/labels.txt; exports record
  them as class names (thinjax.interop.metadata).
"""

import argparse
import os
import zipfile

from thinjax.interop.torch import load_state_dict

N = {"train": 250, "test": 100}


def make_sample(src_zip: str, dst_zip: str) -> None:
    with zipfile.ZipFile(src_zip) as src:
        names = sorted(n for n in src.namelist() if n.endswith(".jpg"))
        keep, count = [], {}
        for n in names:
            _, split, label, _ = n.split("/")
            key = (split, label)
            if count.get(key, 0) < N[split]:
                count[key] = count.get(key, 0) + 1
                keep.append(n)
        with zipfile.ZipFile(dst_zip, "w", zipfile.ZIP_STORED) as dst:
            for n in keep:
                info = zipfile.ZipInfo(n.split("/", 1)[1], date_time=(2019, 3, 31, 0, 0, 0))
                dst.writestr(info, src.read(n))
    print(f"{dst_zip}: {len(keep)} images, {os.path.getsize(dst_zip) / 1e6:.2f} MB")


def convert_checkpoint(src: str, dst: str) -> None:
    from safetensors.numpy import save_file  # optional path: --checkpoints only
    save_file({k: v for k, v in load_state_dict(src).items()}, dst)
    print(f"{dst}: {os.path.getsize(dst) / 1e3:.0f} kB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--zip", required=True)
    ap.add_argument("--checkpoints", required=True)
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    make_sample(a.zip, os.path.join(here, "cifar10_sample.zip"))
    convert_checkpoint(os.path.join(a.checkpoints, "resnet20_width4_cifar10_ema.pt"),
                       os.path.join(here, "resnet20_width4_cifar10_ema.safetensors"))
