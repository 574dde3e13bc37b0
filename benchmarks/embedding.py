"""Benchmark embedding: end-to-end throughput and peak memory against the bare model.

`throughput` writes synthetic 500 x 375 JPEGs (the size of most GLDv2 photos) and
compares, side by side, images per second of
- the bare model's forward pass on preloaded tensors, contiguous and channels-last, and
- `glr.inference.embed_images`, which the embed stage calls, from JPEG files on disk to
  an .npy file, with the model contiguous and channels-last,
all with the same batch size and torch threads. Target: end-to-end >= 0.85x bare model.
`--model lite0` (default) is one EfficientNet-Lite0 at 128 px, the cheapest model and
so the hardest case for the ratio; `--model descriptor --size 224` is the embed stage's
default descriptor (trained Lite0 plus untrained Lite0 GeM, at 224 px).

`memory` embeds 2,000 and 20,000 JPEGs through `embed_images`, each size in its own
subprocess, and compares their peak RSS. Target: peak RSS does not grow with the image
count.

    GLIBC_TUNABLES=... python -m benchmarks.embedding throughput|memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    best_of_alternating,
    check_malloc_setting,
    machine_description,
    markdown_table,
    peak_rss_mib,
)
from glr.descriptors import SearchDescriptor
from glr.heads import LandmarkNet
from glr.inference import embed_images
from glr.models import LITE0, Backbone

PHOTO_SIZE = (500, 375)
TARGET_RATIO = 0.85


def _write_jpeg_range(folder: str, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    for number in range(start, stop):
        # Smooth colour fields plus mild noise: decoding cost close to a photo's, unlike
        # pure noise (much slower) or flat colour (much faster).
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize(PHOTO_SIZE, Image.Resampling.BICUBIC))
        noise = rng.integers(-12, 13, size=image.shape)
        pixels = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(Path(folder) / f"{number:06d}.jpg", quality=90)


def write_jpegs(folder: Path, count: int, workers: int) -> list[Path]:
    """Write `count` synthetic photos into `folder` with `workers` processes."""
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-count // (4 * workers)))
    with ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(_write_jpeg_range, str(folder), start, min(start + step, count))
            for start in range(0, count, step)
        ]
        for job in jobs:
            job.result()
    return sorted(folder.glob("*.jpg"))


def cpu_seconds() -> float:
    """Return user + system CPU seconds of this process and its waited-for children.

    Decoding threads count with the process. DataLoader worker processes (used only for
    a GPU model) would count once the loader has joined them.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def make_model(kind: str) -> tuple[torch.nn.Module, dict[str, object]]:
    """Build the model to embed with and the config that `embed_images` reads."""
    torch.manual_seed(0)
    if kind == "lite0":
        backbone = Backbone(LITE0, "none", "avg", 0).eval()
        return backbone, {"image_size": 0, "mean": list(backbone.mean), "std": list(backbone.std)}
    else:
        # The embed stage's default: a margin-trained LandmarkNet (random weights here, same
        # cost) beside the untrained ImageNet GeM descriptor, weight 0.3.
        trained = LandmarkNet(LITE0, "none", pooling="gem", dim=512).eval()
        model = SearchDescriptor(trained, {"backbone": LITE0}, 0.3).eval()
        return model, {"image_size": 0, "mean": list(trained.mean), "std": list(trained.std)}


def throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, config = make_model(args.model)
    # Enough images that fixed costs (the first batch of a new shape) weigh little.
    count = args.count or (600 if args.quick else 4_000)
    batch = torch.randn(args.batch_size, 3, args.size, args.size)
    batches = -(-count // args.batch_size)

    def bare(memory_format: torch.memory_format) -> None:
        network = model.to(memory_format=memory_format)
        images = batch.contiguous(memory_format=memory_format)
        with torch.no_grad():
            for _ in range(batches):
                network(images)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder) / "images", count, args.workers)
        out = Path(folder) / "embeddings.npy"

        def end_to_end(channels_last: bool) -> None:
            embed_images(
                model,
                config,
                paths,
                batch_size=args.batch_size,
                workers=args.workers,
                desc="embed_images",
                image_size=args.size,
                out=out,
                channels_last=channels_last,
            )

        # A warm-up pass for each method, so that first-call costs are not timed.
        bare(torch.contiguous_format)
        end_to_end(False)
        methods = {
            "bare": lambda: bare(torch.contiguous_format),
            "bare_cl": lambda: bare(torch.channels_last),
            "e2e": lambda: end_to_end(False),
            "e2e_cl": lambda: end_to_end(True),
        }
        cpu = {name: float("inf") for name in methods}

        def with_cpu(name: str) -> Callable[[], None]:
            def run() -> None:
                before = cpu_seconds()
                methods[name]()
                cpu[name] = min(cpu[name], cpu_seconds() - before)

            return run

        seconds = best_of_alternating({name: with_cpu(name) for name in methods}, args.rounds)

    images = {"bare": batches * args.batch_size, "bare_cl": batches * args.batch_size}
    images.update({"e2e": count, "e2e_cl": count})
    rate = {name: images[name] / seconds[name] for name in methods}
    cpu_rate = {name: images[name] / cpu[name] for name in methods}
    # Each end-to-end run is compared with the bare model in the same memory format.
    labels = {
        "bare": ("bare model, contiguous", "bare"),
        "bare_cl": ("bare model, channels-last", "bare_cl"),
        "e2e": ("embed_images, contiguous", "bare"),
        "e2e_cl": ("embed_images, channels-last", "bare_cl"),
    }
    rows = [
        [
            label,
            f"{rate[name]:.1f}",
            f"{rate[name] / rate[reference]:.2f}",
            f"{cpu_rate[name]:.1f}",
            f"{cpu_rate[name] / cpu_rate[reference]:.2f}",
        ]
        for name, (label, reference) in labels.items()
    ]
    best_e2e = max(rate["e2e"], rate["e2e_cl"])
    best_bare = max(rate["bare"], rate["bare_cl"])
    print(
        f"## Embedding throughput: {args.model} at {args.size} px, {count:,} JPEGs of "
        f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, batch {args.batch_size}"
    )
    print()
    print(machine_description(torch_threads=args.threads))
    print(
        f"- decoding: {args.threads} threads between model batches (the model runs on the "
        f"CPU); best of {args.rounds} alternating rounds"
    )
    print()
    header = ["method", "images/s", "ratio", "images per CPU-second", "CPU ratio"]
    print(markdown_table(header, rows))
    print()
    print(
        f"Fastest end-to-end / fastest bare model: {best_e2e / best_bare:.2f} "
        f"(target >= {TARGET_RATIO})"
    )


def measure_one(args: argparse.Namespace) -> None:
    """Embed the first `--count` JPEGs of `--images` to a file; print peak RSS as JSON."""
    torch.set_num_threads(args.threads)
    model, config = make_model(args.model)
    paths = sorted(Path(args.images).glob("*.jpg"))[: args.count]
    started = time.perf_counter()
    embed_images(
        model,
        config,
        paths,
        batch_size=args.batch_size,
        workers=args.workers,
        desc="embed_images",
        image_size=args.size,
        out=Path(args.out),
    )
    seconds = time.perf_counter() - started
    print(json.dumps({"images": len(paths), "seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def memory(args: argparse.Namespace) -> None:
    sizes = (500, 5_000) if args.quick else (2_000, 20_000)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        images = Path(folder) / "images"
        write_jpegs(images, max(sizes), args.workers)
        for size in sizes:
            command = [
                sys.executable,
                "-m",
                "benchmarks.embedding",
                "measure-one",
                "--images",
                str(images),
                "--count",
                str(size),
                "--out",
                str(Path(folder) / f"embeddings_{size}.npy"),
                "--threads",
                str(args.threads),
                "--workers",
                str(args.workers),
                "--batch-size",
                str(args.batch_size),
                "--model",
                args.model,
                "--size",
                str(args.size),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))

    rows = [
        [f"{r['images']:,}", f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:.0f}"] for r in results
    ]
    growth = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    print(
        f"## Embedding memory: {args.model} at {args.size} px, "
        f"streamed to .npy, batch {args.batch_size}"
    )
    print()
    print(machine_description(torch_threads=args.threads))
    print(
        f"- decoding: {args.threads} threads between model batches; peak RSS is the process's VmHWM"
    )
    print()
    print(markdown_table(["images", "seconds", "peak RSS MiB"], rows))
    print()
    print(f"Peak RSS ratio, {sizes[1]:,} / {sizes[0]:,} images: {growth:.3f} (target: no growth)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["throughput", "memory", "measure-one"])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that write the JPEGs, and DataLoader workers for a GPU model",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument(
        "--model", choices=["lite0", "descriptor"], default="lite0", help="what to embed with"
    )
    parser.add_argument("--size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--count", type=int, help="images (throughput: default 4,000)")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each method")
    parser.add_argument("--images", help="measure-one: JPEG folder")
    parser.add_argument("--out", help="measure-one: output .npy file")
    args = parser.parse_args()
    check_malloc_setting()
    {"throughput": throughput, "memory": memory, "measure-one": measure_one}[args.command](args)


if __name__ == "__main__":
    main()
