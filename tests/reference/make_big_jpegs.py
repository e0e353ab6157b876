"""ImageNet-size JPEGs made from real photos, for the input-pipeline benchmark.

    python make_big_jpegs.py <cifar10-jpeg>/train /tmp/data/big [--classes 4] [--per-class 100]

Each file is a 500x375 baseline JPEG (quality 95, 4:2:0): a 4x3 mosaic of 125x125 tiles, each a
CIFAR-10 training photo upscaled bicubically and sharpened (unsharp mask), with mild Gaussian noise
blended in so that the files carry about as much detail per pixel as camera photos (about
60 KB each; ImageNet's average file is about 110 KB at a similar size). Deterministic (seed 0).
"""
import argparse
import os
import random

from PIL import Image, ImageFilter


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an ImageFolder of photos, e.g. cifar10-jpeg/train")
    parser.add_argument("dest")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    random.seed(0)
    classes = sorted(os.listdir(args.source))[: args.classes]
    for c in classes:
        files = sorted(os.listdir(os.path.join(args.source, c)))
        os.makedirs(os.path.join(args.dest, c), exist_ok=True)
        for i in range(args.per_class):
            canvas = Image.new("RGB", (500, 375))
            for ty in range(3):
                for tx in range(4):
                    tile = Image.open(os.path.join(args.source, c, random.choice(files))).convert("RGB")
                    tile = tile.resize((125, 125), Image.BICUBIC).filter(ImageFilter.UnsharpMask(2, 80, 2))
                    canvas.paste(tile, (tx * 125, ty * 125))
            noise = Image.effect_noise((500, 375), 12).convert("RGB")
            canvas = Image.blend(canvas, noise, 0.15)
            canvas.save(os.path.join(args.dest, c, f"{i:04d}.jpg"), quality=95)


if __name__ == "__main__":
    main()
