"""How query-specific are the groups? For each group label: distinct ids among the first 5 of all groups with that
label, over 5 x groups (1 = no two groups share an item; 0.2/groups = every group the same)."""
import sys
from collections import defaultdict
from vestis.eval import read_rankings
for path in sys.argv[1:]:
    rows = read_rankings(path)
    by = defaultdict(list)
    for r in rows.values():
        for g in r.get("groups", []):
            by[g["label"]].append(g["ranked"][:5])
    tot = sum(len(v) * 5 for v in by.values())
    distinct = sum(len({i for l in v for i in l}) for v in by.values())
    print(path.split("runs/diverse/")[1], "distinct share of first-5 items over all groups", round(distinct / tot, 3),
          {k: round(len({i for l in v for i in l}) / (5 * len(v)), 2) for k, v in by.items() if len(v) >= 20})
