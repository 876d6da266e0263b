"""Would concatenating two poolings before PCA reach the raw vectors' DEV score within a budget?

An idea tried for ``whiten tune``'s target, outside its grid: the model's own (normalised) vectors
side by side with a second pooling's (normalised, weighted), PCA fitted on the fit corpus, k kept.
Prints Spearman × 100 on DEV and on held-out scored pairs (not test sets) for the raw vectors, PCA
of the model's own pooling, and each (second pooling, weight). Run from the repository root::

    python benchmarks/bench_concat_poolings.py
    python benchmarks/bench_concat_poolings.py --dev stsb-dev --fit-on stsb-train --held-out sick-train,sick-trial -k 128
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from whiten_cli.encoder import Encoder  # noqa: E402
from whiten_cli.evaluate import spearman  # noqa: E402
from whiten_cli.sts import load_dataset  # noqa: E402
from whiten_cli.tune import corpus_texts  # noqa: E402

SECOND = ("cls", "last2avg", "first-last-avg")
WEIGHTS = (0.25, 0.5, 1.0)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def features(by_pooling: dict[str, np.ndarray], parts: list[tuple[str, float]]) -> np.ndarray:
    return np.hstack([weight * unit(np.asarray(by_pooling[p], dtype=np.float64)) for p, weight in parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev", default="stsb-dev")
    parser.add_argument("--fit-on", default="stsb-train")
    parser.add_argument("--held-out", default="sick-train,sick-trial")
    parser.add_argument("-k", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    encoder = Encoder(None, max_length=args.max_length)
    poolings = [encoder.pooling, *SECOND]
    corpus = encoder.encode_poolings(corpus_texts(args.fit_on).texts, poolings)
    sets = {}
    for name in [args.dev, *args.held_out.split(",")]:
        dataset = load_dataset(name)
        encoded = encoder.encode_poolings(dataset.sentences, poolings)
        halves = {p: [np.vstack(side) for side in zip(*dataset.split(encoded[p]))] for p in poolings}
        sets[name] = (halves, np.concatenate([s.scores for s in dataset.subsets]))

    def scores(parts, k) -> list[float]:
        fit = features(corpus, parts)
        mean = fit.mean(axis=0)
        if k:
            values, vectors = np.linalg.eigh(np.cov(fit - mean, rowvar=False))
            kernel = vectors[:, np.argsort(values)[::-1][:k]]
        out = []
        for halves, gold in sets.values():
            u, v = (features({p: halves[p][side] for p in halves}, parts) for side in (0, 1))
            if k:
                u, v = (u - mean) @ kernel, (v - mean) @ kernel
            out.append(100 * spearman(np.sum(unit(u) * unit(v), axis=1), gold))
        return out

    names = list(sets)
    print(f"fit on {args.fit_on}; k={args.k}; DEV {args.dev}; held out {', '.join(names[1:])}")
    print(f"{'vectors':38}" + "".join(f"{n[:12]:>13}" for n in names) + f"{'held-out avg':>14}")
    own = [(encoder.pooling, 1.0)]
    rows = [("raw (model's pooling)", own, 0), (f"PCA k={args.k}", own, args.k)]
    rows += [(f"PCA k={args.k} of + {p} ×{w:g}", [*own, (p, w)], args.k) for p in SECOND for w in WEIGHTS]
    for title, parts, k in rows:
        s = scores(parts, k)
        print(f"{title:38}" + "".join(f"{x:13.2f}" for x in s) + f"{np.mean(s[1:]):14.2f}")


if __name__ == "__main__":
    main()
