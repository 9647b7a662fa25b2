"""How much of a WER is runaway loops: word errors with and without the utterances on which any of
the given evaluations hit the length bound.

    python scripts/wer_without_loops.py docs/allocator/diagnostics/*.json

reads ``clusterprune eval --json`` outputs of the same utterances and prints, per file, its WER,
its word errors, the errors of every looping utterance, and the errors of the rest (needs the
``eval`` extra: the same normaliser and jiwer as ``clusterprune eval``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clusterprune.evaluation.evaluate import utterance_errors


def _read(path: Path) -> dict[str, Any]:
    """One eval JSON, or a one-line exit naming the file and what is wrong."""
    try:
        result = json.loads(path.read_text())
        if not all({"id", "reference", "hypothesis", "hit_length_bound"} <= set(u) for u in result["utterances"]):
            raise KeyError("utterances[].id/reference/hypothesis/hit_length_bound")
        return result
    except OSError as exc:
        raise SystemExit(f"{path}: cannot be read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a `clusterprune eval --json` result ({exc})") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="clusterprune eval --json files of the same utterances")
    args = ap.parse_args()
    results = {p: _read(p) for p in args.results}
    ids = {p: [u["id"] for u in r["utterances"]] for p, r in results.items()}
    first = next(iter(ids.values()))
    for p, found in ids.items():
        if sorted(found) != sorted(first):
            raise SystemExit(f"{p}: other utterances than {args.results[0]}")
    loops = sorted({u["id"] for r in results.values() for u in r["utterances"] if u["hit_length_bound"]})
    print(f"utterances at the length bound in any: {', '.join(loops) or 'none'}")
    print("| file | WER % | errors | errors of those | errors of the rest |")
    print("|---|---|---|---|---|")
    for p, r in results.items():
        per = utterance_errors(r)
        looping = [per.get(i, 0) for i in loops]
        rest = sum(e for i, e in per.items() if i not in loops)
        print(f"| {p.name} | {100 * r['wer']:.2f} | {sum(per.values())} | {looping} | {rest} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
