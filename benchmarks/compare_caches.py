"""Compare two feature caches of the default trunk: the same entries in the same write order, and the same bytes.

    python benchmarks/compare_caches.py CACHE_A CACHE_B [--levels s8,s16,s32]
"""

import argparse
import sys
from pathlib import Path

from vestis.vision.cache import FeatureCache, _read_header
from vestis.vision.trunk import TrunkSpec


def write_order(root: Path, spec: TrunkSpec) -> list[str]:
    shards = sorted((root / spec.key / "shards").glob("*.vfs"), key=lambda p: [int(x) for x in p.stem.split("-")])
    return [h for s in shards for h in _read_header(s).hashes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--levels", default="s16,s32")
    args = ap.parse_args()
    spec = TrunkSpec(levels=tuple(args.levels.split(",")))
    oa, ob = write_order(args.a, spec), write_order(args.b, spec)
    ca, cb = FeatureCache(args.a, spec), FeatureCache(args.b, spec)
    differ = [h for h in oa if h in cb and any(ca.get(h)[lv].tobytes() != cb.get(h)[lv].tobytes() for lv in spec.levels)]
    print(f"entries {len(oa)} / {len(ob)}, same write order: {oa == ob}, entries with different bytes: {len(differ)}")
    return 0 if oa == ob and not differ else 1


if __name__ == "__main__":
    sys.exit(main())
