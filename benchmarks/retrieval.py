"""Benchmark the retrieve stage's search with query expansion against its matrix-product floor.

Target: search, average query expansion and a second search over all queries take at
most 1.5x the time of the two float32 products queries x index they need. Full size is
the reference system's: 46,820 index x 29,930 queries x 128-d (synthetic embeddings).
Both of the stage's rules are timed through the functions the stage calls: the
reference rule (squared L2, `glr.retrieval.search`) and the kNN rule (inner product,
`glr.index.DatabaseIndex` with the default "Flat", as `glr.retrieval.recognise_knn`).

    GLIBC_TUNABLES=... python -m benchmarks.retrieval [--quick]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

import glr.retrieval
from benchmarks.common import best_of_alternating, machine_description, markdown_table
from glr.index import EXACT, DatabaseIndex, average_query_expansion, set_faiss_threads
from glr.pooling import l2_normalize

REFERENCE_SECONDS = 7975.0
TARGET_RATIO = 1.5
# Tile of the floor's products: 4,096 queries against the whole index (768 MiB of
# float32 output at full size), the fastest of the tilings tried on this machine.
FLOOR_QUERY_TILE = 4096


def synthetic(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


def product_floor(database: np.ndarray, queries: np.ndarray, passes: int) -> dict[str, object]:
    """Return callables that compute `passes` products queries x database.T, tiled."""
    rows = min(FLOOR_QUERY_TILE, len(queries))
    numpy_out = np.empty((rows, len(database)), dtype=np.float32)
    torch_out = torch.from_numpy(numpy_out)
    torch_queries = torch.from_numpy(queries)
    torch_database_t = torch.from_numpy(database).T

    def with_numpy() -> None:
        for _ in range(passes):
            for start in range(0, len(queries), rows):
                block = queries[start : start + rows]
                np.matmul(block, database.T, out=numpy_out[: len(block)])

    def with_torch() -> None:
        for _ in range(passes):
            for start in range(0, len(queries), rows):
                block = torch_queries[start : start + rows]
                torch.mm(block, torch_database_t, out=torch_out[: len(block)])

    return {"floor_numpy": with_numpy, "floor_torch": with_torch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 x 6,000 instead")
    parser.add_argument("--k", type=int, default=100, help="neighbours per query")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each method")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="BLAS threads")
    args = parser.parse_args()

    index_rows, query_rows = (10_000, 6_000) if args.quick else (46_820, 29_930)
    dim = 128
    torch.set_num_threads(args.threads)
    set_faiss_threads(args.threads)
    database = synthetic(index_rows, dim, 0)
    queries = synthetic(query_rows, dim, 1)

    def reference_rule() -> None:
        _, ids = glr.retrieval.search(database, queries, args.k)
        expanded = average_query_expansion(queries, database, ids)
        glr.retrieval.search(database, expanded, args.k)

    def knn_rule() -> None:
        index = DatabaseIndex.build(database, EXACT, "ip")
        _, ids = index.search(queries, args.k)
        expanded = l2_normalize(average_query_expansion(queries, database, ids))
        index.search(expanded, args.k)

    candidates = {**product_floor(database, queries, passes=2)}
    candidates["reference"] = reference_rule
    candidates["knn"] = knn_rule
    seconds = best_of_alternating(candidates, args.rounds)  # type: ignore[arg-type]
    floor = min(seconds["floor_numpy"], seconds["floor_torch"])

    print(f"## Retrieval + QE: {index_rows:,} index x {query_rows:,} queries x {dim}-d, k={args.k}")
    print()
    print(machine_description(torch_threads=args.threads, faiss_threads=args.threads))
    print()
    rows = [
        ["floor: 2 products, numpy", f"{seconds['floor_numpy']:.2f}", ""],
        ["floor: 2 products, torch", f"{seconds['floor_torch']:.2f}", ""],
        [
            "retrieve stage, reference rule: L2 search, average QE, search",
            f"{seconds['reference']:.2f}",
            f"{seconds['reference'] / floor:.2f} (target <= {TARGET_RATIO})",
        ],
        [
            "retrieve stage, kNN rule: cosine search, average QE, search",
            f"{seconds['knn']:.2f}",
            f"{seconds['knn'] / floor:.2f} (target <= {TARGET_RATIO})",
        ],
    ]
    if not args.quick:
        rows.append(["reference system (as reported)", f"{REFERENCE_SECONDS:,.0f}", ""])
    print(markdown_table(["method", "seconds (best of rounds)", "ratio to floor"], rows))


if __name__ == "__main__":
    main()
