"""What an embedding fine-tune learns from, measured on the runbook task (`ftcourse.retrieval`): the ground of
notebook 10.

The shipped all-MiniLM-L6-v2 before training, then the same fine-tune (sentence-transformers'
`SentenceTransformerTrainer`, `MultipleNegativesRankingLoss`, same seed, steps, batch and learning rate) from
three kinds of training data:
- `in-batch`: (question, page) pairs; the other pages of the batch are the negatives;
- `mined`: each pair with one hard negative that the base model ranks highest (`mine_hard_negatives`,
  `sampling_strategy="top"`), unfiltered, so the old wiki's copy of the right page can be picked;
- `mined, filtered`: the same, with `relative_margin=0.05` (a negative must score at least 5 % below the
  positive), the filter the library recommends against false negatives;
each mined twice: by the base model, and by the model the in-batch run trained (a second round of mining, with a
miner that knows the codenames); plus the count of false negatives each mining picked (a negative that is a
right page of its question).
Scores: MRR@10 and recall@1/5/10 on the validation questions (evaluation pages, phrasings never trained on)
with the library's `InformationRetrievalEvaluator`, every right page counted as relevant.

    python scripts/measure_retrieval.py [--steps 16] [--batch 16] [--lr 1e-4] [--seeds 0 1 2]

`--budget` instead compares kinds of data at a fixed budget of texts encoded (README's second table): each
`kind:batch:steps:lr` run (kinds `in-batch`, `mined`, `filtered` = mined with the margin, both by the base model)
on all 144 evaluation questions (`--questions validation`: the 64 validation questions only), for every seed:

    python scripts/measure_retrieval.py --budget in-batch:4:32:3e-4 in-batch:8:16:2e-4 mined:4:21:3e-4 \
        filtered:4:21:3e-4 in-batch:16:16:1e-4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ftcourse import plots, retrieval  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="build/measure_retrieval.json")
    parser.add_argument("--budget", nargs="+", metavar="KIND:BATCH:STEPS:LR")
    parser.add_argument("--questions", choices=("evaluation", "validation"), default="evaluation",
                        help="--budget scores all 144 evaluation questions, or the 64 validation questions only (where "
                             "Exercise 10.2's threshold is set: the held-out questions are among the others)")
    args = parser.parse_args()
    if args.budget:
        return at_a_budget(args.budget, args.seeds, args.out, args.questions)

    splits = retrieval.retrieval_splits()
    rows = []
    base = retrieval.load_embedding_model()
    rows.append({"data": "base model", "seed": "", **retrieval.retrieval_scores(base, splits["validation"])})
    print(plots.table(rows, list(rows[0]), floatfmt=".3f"), flush=True)
    for seed in args.seeds:
        tuned = None
        for data, miner in (("in-batch", None), ("mined", "base"), ("mined, filtered", "base"), ("mined", "tuned"),
                            ("mined, filtered", "tuned")):
            mining_model = base if miner == "base" else tuned  # mining only encodes: the base model is unchanged
            dataset, false_negatives = retrieval.training_data(splits["train"], data, mining_model)
            model, losses, seconds = retrieval.train_embedding(
                retrieval.load_embedding_model(), dataset, retrieval.embedding_args(args.steps, args.batch, args.lr, seed))
            if data == "in-batch":
                tuned = model  # round one: the miner of the second round
            label = data if miner is None else f"{data} by the {miner} model"
            rows.append({"data": label, "seed": seed, **retrieval.retrieval_scores(model, splits["validation"]),
                         "false_negatives": false_negatives, "s_per_step": seconds / args.steps,
                         "final_loss": losses[-1]})
            print(plots.table(rows, list(rows[-1]), floatfmt=".3f"), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def at_a_budget(specs: list[str], seeds: list[int], out: str, which: str = "evaluation") -> None:
    splits = retrieval.retrieval_splits()
    questions = retrieval.evaluation_questions() if which == "evaluation" else splits["validation"]
    train = splits["train"]
    base = retrieval.load_embedding_model()
    rows = [{"run": "base model", "seed": "", "texts": 0, **retrieval.retrieval_scores(base, questions)}]
    kinds = {"in-batch": "in-batch", "mined": "mined", "filtered": "mined, filtered"}
    data = {kind: retrieval.training_data(train, name, base)[0] for kind, name in kinds.items()}
    for spec in specs:
        kind, batch, steps, lr = spec.split(":")
        for seed in seeds:
            args = retrieval.embedding_args(int(steps), int(batch), float(lr), seed)
            model, _, _ = retrieval.train_embedding(retrieval.load_embedding_model(), data[kind], args)
            texts = int(steps) * int(batch) * len(data[kind].column_names)
            rows.append({"run": spec, "seed": seed, "texts": texts, **retrieval.retrieval_scores(model, questions)})
            print(plots.table(rows[-1:], list(rows[-1]), floatfmt=".3f"), flush=True)
    print(plots.table(rows, list(rows[0]), floatfmt=".3f"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"specs": specs, "seeds": seeds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
