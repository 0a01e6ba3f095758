"""Deterministic train / gallery / query splits (PROTOCOLS.md: a pure function of the id).

An item's split is decided by crc32 of a string, never Python's salted `hash`, so every run and
every machine agrees. Items that share an instance (product) id are decided train-vs-evaluation by
the instance id, so no view of a product seen in training is ever searched for or found; within
evaluation, query vs gallery is decided per image, so a query product usually has other views in
the gallery (the In-shop layout).
"""

from __future__ import annotations

import zlib

SPLITS = ("train", "gallery", "query")
TRAIN_PERCENT, GALLERY_PERCENT, QUERY_PERCENT = 70, 25, 5


def _bucket(key: str, modulus: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % modulus


def assign_split(item_id: str, instance_id: str | None = None) -> str:
    """70 % train, 25 % gallery, 5 % query; a function of (item id, instance id) only."""
    unit = instance_id if instance_id else item_id
    if _bucket(unit, 100) < TRAIN_PERCENT:
        return "train"
    return held_out_split(item_id)


def held_out_split(item_id: str) -> str:
    """Query (5/30) or gallery (25/30) for a held-out item; salted so it is independent of the train draw.

    Also used for a dataset's own held-out partition (e.g. DeepFashion's 'test').
    """
    return "query" if _bucket(item_id + "#query", GALLERY_PERCENT + QUERY_PERCENT) < QUERY_PERCENT else "gallery"
