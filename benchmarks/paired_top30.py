"""Paired comparison of two runs' protocol-1 rankings on the same query file: per query, does the top 30 (of the
gallery split) hold an item with the exact target attribute vector (the Top-30 of `vestis eval`, which this
script reproduces and prints), how many queries only run A or only run B answers, and the exact two-sided sign
test on those discordant queries (McNemar's exact test). Queries without a target in the gallery are skipped as
`vestis eval` skips them.

    PYTHONPATH=src .venv/bin/python benchmarks/paired_top30.py --catalog CAT --queries Q.jsonl A/rankings.jsonl B/rankings.jsonl
"""

from __future__ import annotations

import argparse
import json
from math import comb

from vestis.catalog.catalog import Catalog
from vestis.eval.metrics import attribute_vector


def top30_hits(catalog: Catalog, queries: list[dict], rankings: str, k: int = 30) -> dict[str, bool]:
    ranked = {r["query_id"]: r.get("ranked") or [] for r in map(json.loads, open(rankings))}
    gallery = {it.id for it in catalog.split("gallery")}
    vectors = {}
    out = {}
    for q in queries:
        attrs = list(q["target"])
        key = tuple(attrs)
        if key not in vectors:
            vectors[key] = {attribute_vector(catalog[g].attributes, attrs) for g in gallery}
        target = tuple(q["target"][a] for a in attrs)
        if target not in vectors[key]:
            continue
        top = [i for i in ranked[q["query_id"]] if i in gallery][:k]
        out[q["query_id"]] = any(attribute_vector(catalog[i].attributes, attrs) == target for i in top)
    return out


def sign_test(only_a: int, only_b: int) -> float:
    d, low = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(comb(d, i) for i in range(low + 1)) / 2 ** d) if d else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("rankings", nargs=2, help="run A's and run B's rankings files")
    args = ap.parse_args()
    catalog = Catalog.load(args.catalog)
    queries = [json.loads(line) for line in open(args.queries)]
    a, b = (top30_hits(catalog, queries, r) for r in args.rankings)
    n = len(a)
    only_a = sum(a[q] and not b[q] for q in a)
    only_b = sum(b[q] and not a[q] for q in a)
    print(f"{n} queries: Top-30 A {100 * sum(a.values()) / n:.1f}, B {100 * sum(b.values()) / n:.1f}; "
          f"only A {only_a}, only B {only_b}; exact sign test p = {sign_test(only_a, only_b):.3f}")


if __name__ == "__main__":
    main()
