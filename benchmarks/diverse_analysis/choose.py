"""The validation table of benchmarks/diverse_validation.sh and the setting its rule chooses: among the settings
reaching both goals (coverage >= 0.95, purity@5 >= 0.9) the largest smaller margin min(coverage - 0.95,
purity@5 - 0.9), ties to fewer false groups, then to the higher purity@5, then to the fewest options changed from
the defaults (none reaching both: the largest smaller margin anyway). The two later tie-breaks were added when the
first grid tied on the first two (coverage does not depend on confidence_weight nor, here, on gallery_label_ratio).
Also the share of distinct items among the first five of all groups with one label
(benchmarks/diverse_analysis/repeats.py). Setting names: RUN-wW-gG-rR (RUN e12 = the defaults' 12 epochs)."""
import re
import json
import sys
from collections import defaultdict
from pathlib import Path

from vestis.eval import read_rankings

COVERAGE, PURITY = 0.95, 0.9
DEFAULTS = {"run": "e12", "w": "1.0", "g": "0.3", "r": "0.1"}


def changes(name: str) -> int:
    m = re.fullmatch(r"(?P<run>.+)-w(?P<w>[^-]+)-g(?P<g>[^-]+)-r(?P<r>[^-]+)", name)
    return sum(m[k] != v for k, v in DEFAULTS.items()) if m else 9


def distinct_share(path: Path) -> float:
    by = defaultdict(list)
    for r in read_rankings(path).values():
        for g in r.get("groups", []):
            by[g["label"]].append(g["ranked"][:5])
    return sum(len({i for l in v for i in l}) for v in by.values()) / max(1, sum(5 * len(v) for v in by.values()))


rows = []
for rep in sorted(Path(sys.argv[1]).glob("report-*/report.json")):
    name = rep.parent.name[len("report-"):]
    d = json.loads(rep.read_text())
    d = d.get("diverse", d.get("metrics", d))
    while "coverage" not in d:  # the protocol's block, wherever the report nests it
        d = next(v for v in d.values() if isinstance(v, dict) and ("coverage" in v or any(
            isinstance(x, dict) for x in v.values())))
    rel = d["part_relevance"]
    rows.append({"name": name, "coverage": d["coverage"], "purity": d["purity@5"], "false": d["false_group_share"],
                 "groups": d["groups_per_query"], "relevance": rel.get("subCategory"),
                 "colour": rel.get("subCategory+baseColour"), "distinct": distinct_share(rep.parent.parent / f"rankings-{name}.jsonl")})
for r in rows:
    r["margin"] = min(r["coverage"] - COVERAGE, r["purity"] - PURITY)
    r["both"] = r["margin"] >= 0
best = max(rows, key=lambda r: (r["both"], round(r["margin"], 4), -round(r["false"], 4), round(r["purity"], 4),
                                -changes(r["name"])))
print("| setting (validation collages) | coverage | purity@5 | smaller margin | part relevance: category (+ colour) | "
      "groups / query (false) | distinct first-5 items |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    mark = "**" if r is best else ""
    print(f"| {mark}{r['name']}{mark} | {r['coverage']:.3f} | {r['purity']:.3f} | {r['margin']:+.3f} | "
          f"{r['relevance']:.3f} ({r['colour']:.3f}) | {r['groups']:.2f} ({r['false']:.1%}) | {r['distinct']:.3f} |")
print(f"\nchosen: {best['name']}")
