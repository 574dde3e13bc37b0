"""Recognition of query photos with the trained pipeline: the retrieve stage and `glr predict`.

A `Recogniser` contains what the pipeline trained and indexed (the embedding model, the index
descriptors and labels, the known non-landmark pool) and labels query descriptors with
the rule the params select, so the stage and the command share one code path.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from glr.data import read_csv_columns
from glr.descriptors import SearchDescriptor, load_embedding_model
from glr.images import SkipLog
from glr.inference import MappedImages, embed_images
from glr.models import PairHead
from glr.params import Params
from glr.retrieval import RetrievalResult, recognise, recognise_knn


@dataclass
class Recogniser:
    """The trained embedding model, the index, and the non-landmark pool, ready to query."""

    params: Params
    model: nn.Module
    config: dict[str, typing.Any]
    describe: SearchDescriptor
    index_ids: np.ndarray
    index_labels: np.ndarray
    index_descriptors: np.ndarray
    pool_ids: list[str]
    pool_descriptors: np.ndarray | None

    @classmethod
    def load(
        cls, params: Params, model_path: Path, index_folder: Path, pool_folder: Path | None = None
    ) -> Recogniser:
        """Load the train_siamese model, the embed stage's index and an optional saved pool."""
        model, config = load_embedding_model(model_path)
        index_file = index_folder / "index.npy"
        if not index_file.is_file():
            raise FileNotFoundError(f"index not found: {index_file}; run `dvc repro embed` first")
        index = read_csv_columns(index_folder / "index.csv", ["id", "landmark_id"])
        pool_ids: list[str] = []
        pool_descriptors = None
        if pool_folder is not None and (pool_folder / "pool.npy").is_file():
            pool_ids = read_csv_columns(pool_folder / "pool.csv", ["id"])["id"].tolist()
            pool_descriptors = np.load(pool_folder / "pool.npy") if pool_ids else None
        return cls(
            params,
            model,
            config,
            SearchDescriptor(model, config, params.embed.untrained_weight),
            index["id"].to_numpy(),
            index["landmark_id"].astype("int64").to_numpy(),
            np.load(index_file),
            pool_ids,
            pool_descriptors,
        )

    def embed(
        self, paths: list[Path], workers: int, desc: str, skips: SkipLog | None = None
    ) -> MappedImages:
        """Search descriptors of image files, as the embed stage computes them (one process)."""
        mapped = embed_images(
            self.describe,
            self.config,
            paths,
            batch_size=self.params.embed.batch_size,
            workers=workers,
            desc=desc,
            max_pixels=self.params.base.max_image_pixels,
            skips=skips,
            image_size=self.params.embed.image_size,
        )
        if mapped is None:
            raise RuntimeError("query recognition runs in one process; run it without torchrun")
        return mapped

    def recognise(self, query_ids: list[str], descriptors: np.ndarray) -> RetrievalResult:
        """Label queries (ids and descriptors, aligned) with the rule `retrieval.scoring` sets.

        A query that is itself in the non-landmark pool is not compared with itself.
        """
        retrieval = self.params.retrieval
        if retrieval.scoring == "pair_head":
            return recognise(
                descriptors,
                self.index_descriptors,
                self.index_labels,
                typing.cast(PairHead, getattr(self.model, "pair_head")),  # noqa: B009
                top_k=retrieval.top_k,
                query_expansion=retrieval.query_expansion,
                threshold=retrieval.threshold,
            )
        exclude = np.asarray(query_ids)[:, None] == np.asarray(self.pool_ids, dtype=object)[None, :]
        return recognise_knn(
            descriptors,
            self.index_descriptors,
            self.index_labels,
            retrieval,
            pool=self.pool_descriptors,
            pool_exclude=exclude if self.pool_descriptors is not None else None,
        )


def load_categories(path: Path) -> dict[int, str]:
    """Map landmark ids to their category names from train_label_to_category.csv, if present."""
    if not path.is_file():
        return {}
    frame = read_csv_columns(path, ["landmark_id", "category"])
    names = frame["category"].str.rsplit("Category:", n=1).str[-1].str.replace("_", " ")
    return dict(zip(frame["landmark_id"].astype("int64"), names, strict=True))
