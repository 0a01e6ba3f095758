"""Which garments does the round-robin list miss? Per garment category: covered share, and the groups' labels."""
import os
import sys
from collections import Counter, defaultdict
from vestis.catalog import Catalog
from vestis.eval import read_queries, read_rankings
qs = read_queries(sys.argv[1]); rows = read_rankings(sys.argv[2])
cat = Catalog.load(os.environ.get("DATA", "../shared/datasets/fashion-product-images-small"))
tot, cov = Counter(), Counter()
for q in qs:
    g = q["target"]["subCategory"]; n = 5 * len(g)
    pool = [cat[i].attributes.get("subCategory") for i in rows[q["query_id"]]["ranked"][:n]]
    labels = [x["label"] for x in rows[q["query_id"]].get("groups", [])]
    for c in g:
        tot[c] += 1
        if c in pool:
            pool.remove(c); cov[c] += 1
for c, n in tot.most_common():
    print(f"{c:>12} {n:4d} covered {cov[c] / n:.3f}")
print("all", sum(cov.values()) / sum(tot.values()))
