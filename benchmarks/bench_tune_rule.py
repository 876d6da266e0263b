"""Does ``whiten tune``'s choice hold on scored pairs it never saw? A check of the rule, not of a model.

Runs the tune exactly as ``whiten tune DEV --fit-on CORPUS --max-dim K`` does, then scores, on
held-out scored pairs that played no part in the choice, every candidate the tune scored: the rule's
choice, the best DEV point, the raw vectors, and each family's best at the budget. It prints, per
held-out set and on average:

* the Spearman × 100 of those candidates (each through the pipeline ``build_pipeline`` would write);
* where the rule's choice ranks among all candidates within the budget on the held-out pairs;
* the rank correlation between DEV and held-out scores over all candidates (how far DEV predicts).

The held-out sets must not be the sets a result is later reported on (the default, SICK train and
trial, are not test sets). Run from the repository root (STS data under WHITEN_STS_DIR)::

    python benchmarks/bench_tune_rule.py
    python benchmarks/bench_tune_rule.py --dev stsb-dev --fit-on stsb-train --max-dim 128 --held-out sick-train,sick-trial
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
from whiten_cli.tune import FAMILIES, build_pipeline, corpus_texts, tune  # noqa: E402


def pairs_of(dataset, encoder) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(u, v, gold) of every pair, all subsets pooled ("all" aggregation)."""
    vectors = np.asarray(encoder.encode(dataset.sentences), dtype=np.float64)
    u, v = zip(*dataset.split(vectors))
    return [(np.vstack(u), np.vstack(v), np.concatenate([s.scores for s in dataset.subsets]))]


def held_out_score(pipe, pairs) -> float:
    u, v, gold = pairs[0]
    a, b = pipe.transform(u), pipe.transform(v)
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * spearman(cosines, gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev", default="stsb-dev")
    parser.add_argument("--fit-on", default="stsb-train")
    parser.add_argument("--max-dim", type=int, default=128)
    parser.add_argument("--held-out", default="sick-train,sick-trial")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    encoder = Encoder(args.model, max_length=args.max_length)
    dev = [load_dataset(name) for name in args.dev.split(",")]
    corpora = [corpus_texts(name) for name in args.fit_on.split(",")]
    result = tune(dev, corpora, encoder, [encoder.pooling], args.max_dim)
    held = {name: pairs_of(load_dataset(name), encoder) for name in args.held_out.split(",")}

    def scores(candidate) -> list[float]:
        pipe = build_pipeline(result, encoder, candidate)
        return [held_out_score(pipe, pairs) for pairs in held.values()]

    every = [(item, scores(item.candidate)) for item in result.scored]
    raw = next((item, s) for item, s in every if item.candidate.family == "raw") if result.dim <= args.max_dim else \
        (result.raw, [held_out_score(build_pipeline(result, encoder, result.raw.candidate), p) for p in held.values()])
    by_candidate = {item.candidate: s for item, s in every}
    budget = [(item, s) for item, s in every if item.candidate.k == args.max_dim]
    rows = [("raw vectors", raw[0], raw[1]), ("rule's choice", result.chosen, by_candidate[result.chosen.candidate]),
            ("best DEV point", result.best, by_candidate[result.best.candidate])]
    for family in FAMILIES:
        members = [(item, s) for item, s in budget if item.candidate.family == family]
        if members:
            item, s = max(members, key=lambda pair: pair[0].dev)
            rows.append((f"best {family} at k={args.max_dim}", item, s))

    names = list(held)
    print(f"DEV {args.dev}; fit on {args.fit_on}; budget {args.max_dim} dims; {len(every)} candidates; "
          f"held out (not used to choose): {', '.join(names)}")
    print(f"{'':28}{'candidate':44}{'DEV':>7}" + "".join(f"{n[:12]:>13}" for n in names) + f"{'held-out avg':>14}")
    for title, item, s in rows:
        print(f"{title:28}{item.candidate.label[:43]:44}{item.dev:7.2f}" + "".join(f"{x:13.2f}" for x in s)
              + f"{np.mean(s):14.2f}")
    averages = np.array([np.mean(s) for _, s in every])
    devs = np.array([item.dev for item, _ in every])
    chosen_avg = np.mean(by_candidate[result.chosen.candidate])
    place = int(np.sum(averages > chosen_avg)) + 1
    print(f"the rule's choice is #{place} of {len(every)} candidates on the held-out average "
          f"(best {averages.max():.2f}, raw {np.mean(raw[1]):.2f})")
    print(f"rank correlation of DEV and held-out average over all candidates: {100 * spearman(devs, averages):.1f}")


if __name__ == "__main__":
    main()
