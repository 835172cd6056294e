"""Notebook 10's instruments: the runbook retrieval task (no leakage between its splits, hard for the base
model), from-scratch retrieval metrics and the in-batch-negatives loss (as a learner writes them) against
sentence-transformers' `InformationRetrievalEvaluator` and `MultipleNegativesRankingLoss`, hard-negative mining
and a short fine-tune through the library's trainer."""

import random

import pytest
import torch
import torch.nn.functional as F

from ftcourse import retrieval


def from_scratch_ranks(scores: torch.Tensor, relevant: list[set[int]]) -> list[int | None]:
    """1-based rank of each query's first relevant document (None when none is relevant)."""
    order = scores.argsort(dim=1, descending=True)
    ranks = []
    for row, wanted in zip(order.tolist(), relevant):
        ranks.append(next((i + 1 for i, d in enumerate(row) if d in wanted), None))
    return ranks


def from_scratch_recall_at_k(scores: torch.Tensor, relevant: list[set[int]], k: int) -> float:
    """Mean over queries of the share of their relevant documents found in the top k."""
    top = scores.topk(k, dim=1).indices.tolist()
    return sum(len(wanted & set(row)) / len(wanted) for row, wanted in zip(top, relevant)) / len(relevant)


def from_scratch_mrr_at_k(scores: torch.Tensor, relevant: list[set[int]], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document, 0 when it is not in the top k."""
    ranks = from_scratch_ranks(scores, relevant)
    return sum(1 / r for r in ranks if r is not None and r <= k) / len(ranks)


def from_scratch_info_nce(queries: torch.Tensor, docs: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """In-batch negatives: query i's positive is docs[i]; every other row of `docs` (positives of the other
    queries, then any hard negatives) is a negative. Cross-entropy over scaled cosine similarities."""
    logits = scale * F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(queries)))


@pytest.fixture(scope="module")
def base_model():
    return retrieval.load_embedding_model()


def test_the_runbook_has_every_page_once_and_never_a_codename():
    pages = retrieval.runbook()
    assert len(pages) == len(retrieval.SYSTEMS) * (len(retrieval.PROCEDURES) + len(retrieval.OLD_WIKI)) == 208
    assert len({p.doc_id for p in pages}) == len(pages) and len({p.text for p in pages}) == len(pages)
    codenames = [code for _, code in retrieval.SYSTEMS]
    assert not [(p.doc_id, c) for p in pages for c in codenames if c.lower() in p.text.lower()]
    for page in pages:
        assert page.system in page.text


def test_the_splits_never_share_a_page_or_a_phrasing():
    splits = retrieval.retrieval_splits(heldout_seed=4242)
    train_pages, eval_pages = retrieval.page_split()
    assert not set(train_pages) & set(eval_pages) and len(train_pages) + len(eval_pages) == 160
    assert {q.doc_id for q in splits["train"]} <= set(train_pages)
    for split in ("validation", "heldout"):
        assert {q.doc_id for q in splits[split]} <= set(eval_pages)
        assert not {q.text for q in splits[split]} & {q.text for q in splits["train"]}
    # every codename and every procedure is trained on, and each procedure is evaluated on some systems
    for index, (_, code) in enumerate(retrieval.SYSTEMS):
        assert any(q.doc_id.startswith(f"{index:02d}/") for q in splits["train"])
        formal = retrieval.SYSTEMS[index][0].removeprefix("the ")
        assert not any(formal in q.text for q in splits["train"] + splits["validation"])  # only codenames ask
    for procedure in retrieval.PROCEDURES:
        assert any(d.endswith(procedure) for d in train_pages) and any(d.endswith(procedure) for d in eval_pages)
    # a training phrasing never asks an evaluation question
    trained = {(q.doc_id.split("/")[1], q.text.replace(retrieval.SYSTEMS[int(q.doc_id[:2])][1], "{code}"))
               for q in splits["train"]}
    evaluated = {(q.doc_id.split("/")[1], q.text.replace(retrieval.SYSTEMS[int(q.doc_id[:2])][1], "{code}"))
                 for q in splits["validation"] + splits["heldout"]}
    assert not trained & evaluated
    assert not {q.text for q in splits["heldout"]} & {q.text for q in splits["validation"]}
    assert len({q.text for q in splits["heldout"]}) == len(splits["heldout"]) == 64
    assert retrieval.retrieval_splits(heldout_seed=4242) == splits  # deterministic


def test_bad_requests_say_what_was_expected():
    with pytest.raises(ValueError, match="only 6"):
        retrieval.make_questions(["00/restart"], range(6), 7, seed=0)
    with pytest.raises(ValueError, match="not validation questions"):
        retrieval.retrieval_splits(n_eval=80, heldout_seed=1)  # 144 evaluation questions, 80 of them validation
    with pytest.raises(ValueError, match="kind must be"):
        retrieval.training_data(retrieval.retrieval_splits()["train"][:2], "hard")
    with pytest.raises(ValueError, match="at least one question"):
        retrieval.retrieval_scores(None, [])


def test_from_scratch_metrics_equal_the_library_evaluator():
    """recall@k and MRR@10 written from scratch agree with `InformationRetrievalEvaluator` on random embeddings,
    with one to three relevant documents per query."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    generator = torch.Generator().manual_seed(7)
    queries, docs = torch.randn(40, 16, generator=generator), torch.randn(60, 16, generator=generator)
    rng = random.Random(7)
    relevant = [set(rng.sample(range(60), rng.randint(1, 3))) for _ in range(40)]
    scores = F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T

    class Fixed:  # a model whose embeddings are the tensors above, looked up by text
        def __init__(self):
            self.table = {**{f"q{i}": queries[i] for i in range(40)}, **{f"d{j}": docs[j] for j in range(60)}}
            self.similarity_fn_name, self.model_card_data = "cosine", None

        def encode(self, texts, **_):
            return torch.stack([self.table[t] for t in texts])

        encode_query = encode_document = encode

    evaluator = InformationRetrievalEvaluator(
        {str(i): f"q{i}" for i in range(40)}, {str(j): f"d{j}" for j in range(60)},
        {str(i): {str(j) for j in relevant[i]} for i in range(40)}, mrr_at_k=[10], accuracy_at_k=[1],
        precision_recall_at_k=[1, 5, 10], ndcg_at_k=[10], map_at_k=[10], show_progress_bar=False, name="t",
        score_functions={"cosine": lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T},
        main_score_function="cosine")
    library = evaluator.compute_metrices(Fixed())["cosine"]
    assert from_scratch_mrr_at_k(scores, relevant, 10) == pytest.approx(library["mrr@k"][10], abs=1e-9)
    for k in (1, 5, 10):
        assert from_scratch_recall_at_k(scores, relevant, k) == pytest.approx(library["recall@k"][k], abs=1e-9)
    assert 0 < from_scratch_mrr_at_k(scores, relevant, 10) < 1


@pytest.mark.parametrize("with_negatives", [False, True])
def test_from_scratch_info_nce_equals_multiple_negatives_ranking_loss(base_model, with_negatives):
    """The loss and its gradients on a real batch of the task, through the shipped model's embeddings."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    questions = retrieval.retrieval_splits()["train"][:6]
    pages = retrieval.corpus()
    columns = [[q.text for q in questions], [pages[q.doc_id] for q in questions]]
    if with_negatives:
        columns.append([pages[q.doc_id.split("/")[0] + "/logs"] if not q.doc_id.endswith("logs")
                        else pages[q.doc_id.split("/")[0] + "/scale"] for q in questions])
    embeddings = [base_model.encode(c, convert_to_tensor=True).clone().requires_grad_(True) for c in columns]
    library = MultipleNegativesRankingLoss(base_model).compute_loss_from_embeddings(embeddings, None)
    ours = from_scratch_info_nce(embeddings[0], torch.cat(embeddings[1:]))
    assert ours.item() == pytest.approx(library.item(), rel=1e-5)
    library_grads = torch.autograd.grad(library, embeddings)
    our_grads = torch.autograd.grad(from_scratch_info_nce(embeddings[0], torch.cat(embeddings[1:])), embeddings)
    for a, b in zip(our_grads, library_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tuned_model():
    """8 steps of in-batch negatives on the training questions (a round-one model: it knows the codenames)."""
    dataset, false_negatives = retrieval.training_data(retrieval.retrieval_splits()["train"], "in-batch")
    args = retrieval.embedding_args(8, 16, 1e-4, seed=0, output_dir="build/test_embedding")
    model, losses, _ = retrieval.train_embedding(retrieval.load_embedding_model(), dataset, args)
    assert false_negatives == 0 and len(losses) == 8
    return model


def test_the_base_model_does_poorly_and_a_short_fine_tune_learns_the_codenames(base_model, tuned_model):
    """The task is hard for the base model (MRR@10 well below 0.6: measured 0.22) and learnable: 8 steps of in-batch
    negatives move validation MRR@10 (evaluation pages, phrasings never trained on) by more than 0.2."""
    splits = retrieval.retrieval_splits()
    before = retrieval.retrieval_scores(base_model, splits["validation"])
    assert before["mrr@10"] < 0.35 and before["recall@1"] < 0.25
    after = retrieval.retrieval_scores(tuned_model, splits["validation"])
    assert after["mrr@10"] > before["mrr@10"] + 0.2, (before, after)


def test_mining_adds_one_negative_and_finds_the_right_pages_it_picked(base_model, tuned_model, capfd):
    """Mined by a model that knows the codenames, the negative picked for a question about a page the old wiki
    copied is often that copy: a right page (a false negative), which the count must find, page by page."""
    questions = [q for q in retrieval.retrieval_splits()["train"] if q.doc_id.split("/")[1] in retrieval.OLD_WIKI][:12]
    pages = retrieval.corpus()
    with pytest.raises(ValueError, match="pass miner="):
        retrieval.training_data(questions, "mined")

    capfd.readouterr()
    mined, false_negatives = retrieval.training_data(questions, "mined", tuned_model)
    assert capfd.readouterr().err == ""  # no progress bars (a notebook cell would show them on stderr)
    assert "encode_query" not in vars(tuned_model)  # the quieted methods are the class's again
    assert mined.column_names == ["anchor", "positive", "negative"] and len(mined) == len(questions)
    assert all(row["negative"] != row["positive"] for row in mined)
    assert [row["anchor"] for row in mined] == [q.text for q in questions]  # one row per question, in order
    copies = sum(row["negative"] == pages[q.doc_id + "/old-wiki"] for row, q in zip(mined, questions))
    assert false_negatives == copies >= 3, (false_negatives, copies)  # measured: 65 of 240 at 16 steps


def test_saved_weights_load_into_the_shipped_architecture_and_nothing_else(tuned_model, tmp_path):
    """The artifact is one safetensors file of tensors: loaded into a fresh copy of the shipped model it scores as
    the model that saved it; a file with a tensor missing or of another shape is refused, naming it."""
    import torch
    from safetensors.torch import load_file, save_file

    retrieval.save_embedding(tuned_model, tmp_path / "embedding")
    loaded = retrieval.load_saved_embedding(tmp_path / "embedding")
    questions = retrieval.retrieval_splits()["validation"][:16]
    assert retrieval.retrieval_scores(loaded, questions) == retrieval.retrieval_scores(tuned_model, questions)
    state = load_file(str(tmp_path / "embedding" / retrieval.WEIGHTS_FILE))
    name = next(iter(state))
    for broken, named in (({k: v for k, v in state.items() if k != name}, "missing"),
                          ({**state, name: torch.zeros(3)}, "wrong shape")):
        save_file(broken, str(tmp_path / "embedding" / retrieval.WEIGHTS_FILE))
        with pytest.raises(ValueError, match=named):
            retrieval.load_saved_embedding(tmp_path / "embedding")
    with pytest.raises(FileNotFoundError, match="save_embedding"):
        retrieval.load_saved_embedding(tmp_path / "nothing")


def test_the_exercise_budget_is_the_registrys_and_counts_every_text():
    from ftcourse.grading import registry
    from ftcourse.presets import get_preset

    exercise = registry.exercise("embedding_final_outcome")
    assert exercise.threshold_values(get_preset("cpu"))["texts"] == ("<=", retrieval.TEXT_BUDGET)
    assert [retrieval.texts_per_row(n) for n in retrieval.NEGATIVES] == [2, 3, 3]
    args = retrieval.embedding_args(4, 32, 5e-4)
    assert retrieval.embedding_choices(args, "in-batch", 0.05, 20.0, get_preset("cpu"))["texts"] == 256
    from ftcourse.training import RecipeError

    with pytest.raises(RecipeError, match="384 texts"):  # the same run with a mined negative: 3 texts a row
        retrieval.embedding_choices(args, "mined", 0.05, 20.0, get_preset("cpu"))
    with pytest.raises(RecipeError, match="bf16 = True: this exercise keeps it at False"):  # float32 on every preset
        retrieval.embedding_choices(args.to_dict() | {"bf16": True}, "in-batch", 0.05, 20.0, get_preset("cpu"))


def _reference_setup() -> str:
    from conftest import reference_solution

    return reference_solution("10_embedding_fine_tuning", "embedding_setup")


@pytest.mark.parametrize("change,named", [
    (("max_steps=4", "max_steps=5"), "320 texts"),
    (('negatives = "in-batch"', 'negatives = "mined, filtered"'), "384 texts"),
    (('negatives = "in-batch"', 'negatives = "hard"'), "negatives must be one of"),
    (("relative_margin = 0.05", "relative_margin = 0.9"), "relative_margin must be a number in [0, 0.5]"),
    (("loss_scale = 20.0", "loss_scale = float('nan')"), "loss_scale must be a number in [1, 100]"),
    (("seed=SEED,", "seed=SEED, gradient_accumulation_steps=8,"), "gradient_accumulation_steps = 8: this exercise keeps"),
    (("seed=SEED,", "seed=SEED, num_train_epochs=100,"), "num_train_epochs = 100"),
    (("per_device_train_batch_size=32", "per_device_train_batch_size=65"), "between 2 and 64"),
    (("training_args = SentenceTransformerTrainingArguments(", "training_args = dict("), "this exercise keeps it at"),
    (("**EMBEDDING_ARGS)", "**EMBEDDING_ARGS)\ntraining_args = 3"), "must be a SentenceTransformerTrainingArguments"),
])
def test_exercise_10_2_refuses_what_it_would_not_train_before_training(change, named, learner_runtime, tmp_path):
    """Part of the tamper suite for 10.2: choices over the budget of texts, or that the grader would not train as
    the learner's run trained, fail with the field named, before any training (the cell runs in a child)."""
    from conftest import grade_outcome_cell

    old, new = change
    reference = _reference_setup()
    assert old in reference
    verdict = grade_outcome_cell("embedding_final_outcome", "embedding_setup", reference.replace(old, new), tmp_path)
    assert not verdict.passed and named in verdict.message, verdict
    assert not (tmp_path / "embedding").exists()  # refused before any training


def test_exercise_10_2_trains_the_grader_own_data_whatever_the_cell_does(learner_runtime, tmp_path):
    """The cell can only choose: one that forges weights, a training record and the package's evaluator in its own
    process is graded on what the grader trains from its choices (here 1 step of 2 pairs: no real gain)."""
    from conftest import grade_outcome_cell

    reference = _reference_setup()
    forged = reference.replace("max_steps=4", "max_steps=1").replace("per_device_train_batch_size=32",
                                                                      "per_device_train_batch_size=2") + (
        "\nimport json, pathlib\nfrom ftcourse import retrieval\nimport ftcourse.grading.evaluate as e\n"
        "e.evaluate_embedding = lambda *a, **k: None\nretrieval.retrieval_scores = lambda *a, **k: {'mrr@10': 1.0}\n"
        "folder = pathlib.Path('artifacts/10_embedding_fine_tuning')\nfolder.mkdir(parents=True, exist_ok=True)\n"
        "(folder / 'training.json').write_text(json.dumps({'steps': 1, 'texts': 4, 'losses': [0.0]}))\n")
    verdict = grade_outcome_cell("embedding_final_outcome", "embedding_setup", forged, tmp_path)
    assert not verdict.passed and verdict.metrics["texts"] == 4 and verdict.metrics["mrr_gain"] < 0.2, verdict
    assert len(verdict.metrics["train_losses"]) == 1


def test_exercise_10_2_a_margin_that_leaves_less_than_a_batch_is_refused(learner_runtime, tmp_path):
    """A wide margin drops the questions with no candidate below it (54 of 240 rows are left at 0.5, measured): fewer
    rows than one batch is the learner's to fix, named before training, not a fault of the grader."""
    from conftest import grade_outcome_cell

    source = _reference_setup()
    for old, new in (('negatives = "in-batch"', 'negatives = "mined, filtered"'), ("relative_margin = 0.05", "relative_margin = 0.5"),
                     ("max_steps=4", "max_steps=1"), ("per_device_train_batch_size=32", "per_device_train_batch_size=64")):
        assert old in source
        source = source.replace(old, new)
    verdict = grade_outcome_cell("embedding_final_outcome", "embedding_setup", source, tmp_path)
    assert not verdict.passed and "fewer than one batch of 64" in verdict.message, verdict
    assert not (tmp_path / "embedding").exists()
