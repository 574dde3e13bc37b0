"""Stage download: fetch GLDv2 metadata and image shards from a mirror and extract them."""

import argparse
from pathlib import Path

from glr.download import download_gldv2, parse_shards
from glr.io import write_json
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (metadata, images)")
    parser.add_argument("--cache", type=Path, required=True, help="folder of verified tar shards")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("download")
    download = params.download

    shards = {
        split: parse_shards(spec, split)
        for split, spec in [
            ("train", download.train_shards),
            ("index", download.index_shards),
            ("test", download.test_shards),
        ]
    }
    counts = download_gldv2(
        download.base_url,
        args.out,
        shards,
        cache_dir=args.cache,
        metadata_files=download.metadata,
        workers=download.workers,
        retries=download.retries,
        backoff_seconds=download.backoff_seconds,
        timeout_seconds=download.timeout_seconds,
    )
    write_json(args.metrics, counts)


if __name__ == "__main__":
    main()
