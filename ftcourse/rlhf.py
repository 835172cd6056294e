"""RLHF (notebook 06): replies sampled from the policy, the judge and a reward model as reward functions, RLOO's
advantage written out, and the RLHF Lab (clicks that train a Bradley-Terry model).

Notebook 06 builds the RL recipe in view (PEFT's `LoraConfig`, TRL's `RLOOConfig` and `RLOOTrainer`); this module
holds the instruments around it:
- `sample_replies` / `judge_replies`: what a policy says to held-out questions, and the judge's score of it;
- `reward_model_reward` and `judge_reward`: reward functions in the signature `RLOOTrainer` calls;
- `rloo_sequence_kl` and `rloo_advantages`: TRL's RLOO advantage (first-order KL summed over the reply, a
  leave-one-out baseline), from scratch; tests/test_rlhf.py checks them against a real `RLOOTrainer` batch;
- the RLHF Lab: a pool of real replies, a Bradley-Terry model (a linear reward head over the frozen model's
  features) that each click trains, its loss curve and its agreement with the judge on held-out questions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from .preferences import Question, judge
from .presets import Preset


# ---------------------------------------------------------------- sampling and judging a policy

def sample_replies(model, tokenizer, questions: Sequence[Question], n: int = 1, max_new_tokens: int = 16,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> list[list[str]]:
    """`n` sampled replies per question (temperature 0: one greedy reply repeated), chat template, left padding.

    Greedy replies come from `evaluation.generate_answers` (the prompts' common first tokens run once, their own parts
    prefilled in length buckets): the same replies as one left-padded `generate` call, in about two thirds of the
    time here (64 counting questions, 16 new tokens: 11.0 -> 7.1 s on a 2-core CPU in float32, every reply equal).
    Sampled replies prefill each prompt once for its `n` replies (`training.shared_prompt_generation`), drawn from the
    same random stream as `generate(num_return_sequences=n)` (08's 32 questions x 4 replies: 24 -> 12 s, the same 128).
    """
    import torch

    from .evaluation import chat_prompt, generate_answers

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature == 0:
        answers = generate_answers(model, tokenizer, [q.prompt for q in questions], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens)
        return [[a.strip()] * n for a in answers]
    from transformers import GenerationConfig

    from .training import shared_prompt_generation

    device = next(model.parameters()).device
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0,
                              top_k=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = [chat_prompt(tokenizer, q.prompt) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    replies: list[list[str]] = []
    per_batch = max(1, batch_size // n)
    try:
        for start in range(0, len(texts), per_batch):
            batch = tokenizer(texts[start:start + per_batch], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            # each prompt repeated n times, as `num_return_sequences=n` repeats it, then prefilled once for its n
            # replies (`training.shared_prompt_generation`): the same draws from the same random stream
            ids, mask = batch["input_ids"].repeat_interleave(n, 0), batch["attention_mask"].repeat_interleave(n, 0)
            with torch.no_grad(), shared_prompt_generation(model):
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            decoded = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            replies += [[r.strip() for r in decoded[i:i + n]] for i in range(0, len(decoded), n)]
    finally:
        tokenizer.padding_side = side
    return replies


def judge_replies(questions: Sequence[Question], replies: Sequence[Sequence[str]]) -> dict:
    """The judge on sampled replies: mean score, share right (score > 0), mean words, all averaged over every reply."""
    if len(questions) != len(replies):
        raise ValueError(f"one list of replies per question: {len(questions)} questions, {len(replies)} lists.")
    scores = [judge(q, r) for q, rs in zip(questions, replies) for r in rs]
    words = [len(r.split()) for rs in replies for r in rs]
    return {"judge": sum(scores) / len(scores), "right": sum(s > 0 for s in scores) / len(scores),
            "words": sum(words) / len(words), "n": len(scores)}


def rl_dataset(questions: Sequence[Question]):
    """The prompts RLOOTrainer samples from (conversational), with each question's answer for the judge."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": q.prompt}], "answer": q.answer,
                               "item": q.item} for q in questions])


def reply_text(completion) -> str:
    """The text of a TRL completion: a conversational one is [{"role": "assistant", "content": ...}]."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def judge_reward(prompts, completions, answer, item, **_) -> list[float]:
    """The judge as a reward function (RLOOTrainer's signature): logged, never optimised in this course's RL runs."""
    return [judge(Question("", it, int(a)), reply_text(c)) for c, a, it in zip(completions, answer, item)]


def reward_model_reward(model, tokenizer) -> Callable:
    """A trained reward model as a reward function for RLOOTrainer: its score of each (prompt, completion)."""
    from .reward import reward_scores

    def reward_model(prompts, completions, **_) -> list[float]:
        return reward_scores(model, tokenizer, [p[-1]["content"] if isinstance(p, list) else p for p in prompts],
                             [reply_text(c) for c in completions])

    return reward_model


def preset_rl_args(preset: Preset) -> dict:
    """The `RLOOConfig` arguments the machine fixes: `training.preset_machine_args` (RLOO samples its own replies,
    so no layout or length of the SFT recipe applies)."""
    from .training import preset_machine_args

    return preset_machine_args(preset)


def rloo_trainer_class(preset: Preset):
    """The RLOO trainer a preset trains with: TRL's `RLOOTrainer`, or on a CPU its subclass whose fused LM head
    scores the completion tokens only, as TRL's Triton path does on a GPU, and which runs each prompt once for its
    group of sampled replies (`training.scoring_labelled_positions_only` with `share_prompts`: the same
    log-probabilities, with the LM head run on the reply positions and the backbone on each prompt once)."""
    from trl import RLOOTrainer

    from .training import preset_trainer_class

    return preset_trainer_class(RLOOTrainer, preset)


# ---------------------------------------------------------------- RLOO from scratch

def rloo_sequence_kl(policy_logps, reference_logps, mask):
    """RLOO's KL estimate of each reply: the first-order log ratio log pi(y_t) - log pi_ref(y_t), summed over the
    reply's tokens (`mask` marks them). Per token it can be negative; its expectation under the policy is the KL."""
    return ((policy_logps - reference_logps) * mask).sum(-1)


def rloo_advantages(rewards, num_generations: int, kl=None, beta: float = 0.0, normalize: bool = False):
    """RLOO's advantage: reward minus beta times the reply's KL, minus the mean of the *other* replies to the same
    prompt (the leave-one-out baseline; no value model). `rewards` is ordered prompt by prompt, `num_generations`
    replies each; `normalize` scales all advantages to unit standard deviation (TRL's option)."""
    import torch

    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if num_generations < 2 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must hold num_generations >= 2 replies per prompt; got {rewards.numel()} rewards "
                         f"for num_generations={num_generations}.")
    if beta:
        rewards = rewards - beta * torch.as_tensor(kl, dtype=torch.float32)
    grouped = rewards.view(-1, num_generations)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (num_generations - 1)
    advantages = (grouped - baseline).view(-1)
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return advantages


# ---------------------------------------------------------------- the RLHF Lab

@dataclasses.dataclass
class LabPool:
    """Real replies of the model to lab questions, their features for a reward head and the judge's scores."""

    questions: list
    replies: list  # [question][reply] text
    features: object  # torch tensor [question, reply, hidden], standardised
    scores: list  # [question][reply] judge score


def reply_features(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 32):
    """The frozen model's last-layer state at each conversation's last token: what a reward head reads. Replies to
    the same prompt run it once (`reward.shared_prompt_outputs`)."""
    from .reward import groups_by_prompt, reward_texts, shared_prompt_outputs

    texts = reward_texts(tokenizer, prompts, replies)
    return shared_prompt_outputs(model, tokenizer, texts, groups_by_prompt(prompts), batch_size, features=True)[1]


def lab_pool(model, tokenizer, questions: Sequence[Question], replies: Sequence[Sequence[str]]) -> LabPool:
    """The lab's pool: real replies to each question (the same number for each), the judge's scores, and the
    features `model` reads of each conversation (standardised over the pool)."""
    if len(replies) != len(questions) or len({len(r) for r in replies}) != 1 or len(replies[0]) < 2:
        raise ValueError("lab_pool needs the same number (at least 2) of replies for every question; got "
                         f"{[len(r) for r in replies][:8]} for {len(questions)} questions.")
    flat_prompts = [q.prompt for q, rs in zip(questions, replies) for _ in rs]
    features = reply_features(model, tokenizer, flat_prompts, [r for rs in replies for r in rs])
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    return LabPool(list(questions), [list(r) for r in replies], features.view(len(questions), len(replies[0]), -1),
                   [[judge(q, r) for r in rs] for q, rs in zip(questions, replies)])


RATERS = ("judge", "longer", "shorter")


def judged_pairs(pool: LabPool, questions: range) -> list[tuple[int, int, int]]:
    """(question, i, j) for every pair of replies to `questions` that the judge scores differently."""
    return [(q, i, j) for q in questions for i in range(len(pool.scores[q])) for j in range(i + 1, len(pool.scores[q]))
            if pool.scores[q][i] != pool.scores[q][j]]


def rater_agreement(pool: LabPool, rater: str, questions: range) -> float:
    """A scripted rater's own rule on the judged pairs of `questions`: the share it orders as the judge does (no
    preference: half). What a head that learned the rule exactly would score."""
    pairs = judged_pairs(pool, questions)
    agree = 0.0
    for q, i, j in pairs:
        preference = rater_preference(rater, pool.questions[q], pool.replies[q][i], pool.replies[q][j])
        agree += 0.5 if preference == 0 else float((preference > 0) == (pool.scores[q][i] > pool.scores[q][j]))
    return agree / len(pairs) if pairs else float("nan")


def rater_preference(rater: str, question: Question, a: str, b: str) -> int:
    """What a scripted rater thinks of reply A against B: 1 (A better), -1 (B better) or 0 (no preference).
    "judge" follows the judge's score, "longer" / "shorter" go by word count."""
    if rater == "judge":
        key = lambda r: judge(question, r)
    elif rater in ("longer", "shorter"):
        key = (lambda r: len(r.split())) if rater == "longer" else (lambda r: -len(r.split()))
    else:
        raise ValueError(f"rater must be one of {RATERS}, got {rater!r}")
    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def rater_pick(rater: str, question: Question, a: str, b: str, rng: random.Random) -> str:
    """A scripted rater's click: "A" or "B" as `rater_preference` says; with no preference (a tie), a coin."""
    preference = rater_preference(rater, question, a, b)
    return "A" if preference > 0 else "B" if preference < 0 else rng.choice("AB")


def _share_ordered(rewards, pairs: Sequence[tuple[int, int, int, bool]]) -> float:
    """Share of (question, i, j, i_first) pairs whose rewards order reply i above j exactly when `i_first` (a tie of
    the rewards: half, a coin); nan for no pairs."""
    right = sum(0.5 if rewards[q, i] == rewards[q, j] else float((rewards[q, i] > rewards[q, j]).item() == i_first)
                for q, i, j, i_first in pairs)
    return right / len(pairs) if pairs else float("nan")


class BradleyTerryLab:
    """Clicks train a Bradley-Terry reward model: a linear head over the frozen model's features of a reply.

    The first `n_train` questions of the pool are shown to the rater; the rest are held out. Each click adds one
    (winner, loser) pair and runs `steps_per_click` Adam steps of the Bradley-Terry loss
    -log sigmoid(r_winner - r_loser) over every pair so far; the loss of each step is kept. `agreement()` is the
    share of held-out reply pairs (different judge scores) that the head orders as the judge does (a tie: half).

    The learning rate (1e-3) is small enough that a click's steps show on the loss curve: on the course's pool the
    first click takes the loss from 0.69 to about 0.05 in its 8 steps (at 0.05 it reached 0.000 in one or two).
    """

    def __init__(self, pool: LabPool, n_train: int, steps_per_click: int = 8, learning_rate: float = 1e-3,
                 seed: int = 0):
        import torch

        if not 0 < n_train < len(pool.questions):
            raise ValueError(f"n_train must leave held-out questions: 0 < n_train < {len(pool.questions)}, got {n_train}")
        self.pool, self.n_train, self.steps_per_click = pool, n_train, steps_per_click
        self.learning_rate, self.seed = learning_rate, seed
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(pool.features.shape[-1], 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=learning_rate)
        self.picks: list[tuple[int, int, int]] = []  # (question, winner, loser)
        self.losses: list[float] = []
        self.agreements: list[float] = [self.agreement()]
        self.pending = self._draw()

    def _draw(self) -> tuple[int, int, int]:
        """The next pair to show: a training question and two of its replies with different texts."""
        for _ in range(1000):
            q = self.rng.randrange(self.n_train)
            i, j = self.rng.sample(range(len(self.pool.replies[q])), 2)
            if self.pool.replies[q][i] != self.pool.replies[q][j]:
                return q, i, j
        raise ValueError("the pool's training questions have no two different replies to show")

    def shown(self) -> tuple[str, str, str]:
        """(prompt, reply A, reply B) of the pair waiting for a click."""
        q, i, j = self.pending
        return self.pool.questions[q].prompt, self.pool.replies[q][i], self.pool.replies[q][j]

    def rewards(self):
        import torch

        with torch.no_grad():
            return self.head(self.pool.features).squeeze(-1)

    def click(self, choice: str) -> float:
        """Record "A" or "B" for the pair shown, train on every pick so far, draw the next pair; returns the loss."""
        import torch
        import torch.nn.functional as F

        if choice not in ("A", "B"):
            raise ValueError(f"choice must be 'A' or 'B', got {choice!r}")
        q, i, j = self.pending
        self.picks.append((q, i, j) if choice == "A" else (q, j, i))
        qs = torch.tensor([p[0] for p in self.picks])
        winners = self.pool.features[qs, torch.tensor([p[1] for p in self.picks])]
        losers = self.pool.features[qs, torch.tensor([p[2] for p in self.picks])]
        for _ in range(self.steps_per_click):
            loss = -F.logsigmoid(self.head(winners) - self.head(losers)).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())
        self.agreements.append(self.agreement())
        self.pending = self._draw()
        return self.losses[-1]

    def heldout(self) -> range:
        """The held-out questions: those after the first `n_train`."""
        return range(self.n_train, len(self.pool.questions))

    def agreement(self, questions: range | None = None) -> float:
        """Share of reply pairs (different judge scores) of the held-out questions ordered as the judge orders them."""
        pool = self.pool
        return _share_ordered(self.rewards(), [(q, i, j, pool.scores[q][i] > pool.scores[q][j])
                                               for q, i, j in judged_pairs(pool, questions or self.heldout())])

    def top_replies(self, k: int = 3) -> list[tuple[str, float, float]]:
        """For the first k held-out questions: the reply the head ranks first, its reward and its judge score."""
        rewards = self.rewards()
        rows = []
        for q in range(self.n_train, min(len(self.pool.questions), self.n_train + k)):
            best = int(rewards[q].argmax())
            rows.append((self.pool.replies[q][best], float(rewards[q, best]), self.pool.scores[q][best]))
        return rows

    def scripted(self, rater: str, clicks: int, skip_ties: bool = False) -> "BradleyTerryLab":
        """`clicks` picks by a scripted rater (headless runs: papermill, tests). A pair the rater has no preference
        on (a tie) gets a coin flip, or with `skip_ties` is passed over unclicked and the next pair drawn."""
        rng = random.Random(self.seed + 1)
        passed, target = 0, len(self.picks) + clicks
        while len(self.picks) < target:
            prompt, a, b = self.shown()
            question = self.pool.questions[self.pending[0]]
            if skip_ties and rater_preference(rater, question, a, b) == 0:
                passed += 1  # in a row
                if passed > 1000:
                    raise ValueError(f"rater {rater!r} has no preference on any pair the pool shows: nothing to click")
                self.pending = self._draw()
                continue
            passed = 0
            self.click(rater_pick(rater, question, a, b, rng))
        return self


def rule_agreement(lab: BradleyTerryLab, rater: str = "longer") -> float:
    """Share of the held-out reply pairs on which `rater`'s rule has a preference (for "longer": different word
    counts) that the lab's head orders as the rule does (a tie of the head: half). How far a head learned a habit."""
    pool, preferred = lab.pool, []
    for q in lab.heldout():
        for i in range(len(pool.replies[q])):
            for j in range(i + 1, len(pool.replies[q])):
                preference = rater_preference(rater, pool.questions[q], pool.replies[q][i], pool.replies[q][j])
                if preference:
                    preferred.append((q, i, j, preference > 0))
    return _share_ordered(lab.rewards(), preferred)


def lab_measurements(pool: LabPool, judge_runs: Sequence[BradleyTerryLab], no_ties_runs: Sequence[BradleyTerryLab],
                     longer_runs: Sequence[BradleyTerryLab]) -> dict:
    """What notebook 06's scripted lab runs measure (the `lab_*` fields of its course_results.json, the numbers
    `LAB_STATEMENTS` are tested on). Each list holds one rater's runs, one per order of pairs (the i-th run of each
    list was shown the same pairs in the same order): the judge rater, the same rater passing ties over, and the
    longer-reply rater. Agreements (with the judge, on the held-out questions' pairs) and final losses are means
    over the orders; `lab_agreement_first_click` pools the three raters' runs; `lab_loss_first` is the first
    step's loss, log 2 for every run (an untrained head ties every pair). The judge rater's real preferences are
    its clicks on pairs the judge does not tie; `lab_agreement_same_real_clicks` is the ties-passed-over run's
    agreement after exactly those clicks (the same pairs without the coin flips, when `lab_same_real_clicks`), and
    `lab_orders_*` count the orders in which a comparison of statement 3 or 4 held in that order alone."""
    import statistics

    runs = (judge_runs, no_ties_runs, longer_runs)
    if len({len(r) for r in runs}) != 1 or not judge_runs:
        raise ValueError(f"one run per order for each rater; got {[len(r) for r in runs]} runs.")
    tie = lambda pick: pool.scores[pick[0]][pick[1]] == pool.scores[pick[0]][pick[2]]  # noqa: E731
    real = [[pick for pick in run.picks if not tie(pick)] for run in judge_runs]
    at_real = [clean.agreements[len(r)] for clean, r in zip(no_ties_runs, real)]
    mean = statistics.fmean
    return {
        "lab_orders": len(judge_runs),
        "lab_agreement_judge": mean(run.agreements[-1] for run in judge_runs),
        "lab_agreement_judge_no_ties": mean(run.agreements[-1] for run in no_ties_runs),
        "lab_agreement_longer": mean(run.agreements[-1] for run in longer_runs),
        "lab_agreement_first_click": mean(run.agreements[1] for rater in runs for run in rater),
        "lab_agreement_same_real_clicks": mean(at_real),
        "lab_same_real_clicks": all(clean.picks[:len(r)] == r for clean, r in zip(no_ties_runs, real)),
        "lab_tie_clicks_judge": mean(len(run.picks) - len(r) for run, r in zip(judge_runs, real)),
        "lab_orders_coin_flips_cost": sum(a > run.agreements[-1] for a, run in zip(at_real, judge_runs)),
        "lab_orders_no_ties_above": sum(c.agreements[-1] > j.agreements[-1] for c, j in zip(no_ties_runs, judge_runs)),
        "lab_length_rule_agreement": rater_agreement(pool, "longer", judge_runs[0].heldout()),
        "lab_rule_agreement_longer": mean(rule_agreement(run, "longer") for run in longer_runs),
        "lab_rule_agreement_judge": mean(rule_agreement(run, "longer") for run in judge_runs),
        "lab_heldout_pairs": len(judged_pairs(pool, judge_runs[0].heldout())),
        "lab_loss_first": judge_runs[0].losses[0],
        "lab_loss_last_judge": mean(run.losses[-1] for run in judge_runs),
        "lab_loss_last_no_ties": mean(run.losses[-1] for run in no_ties_runs),
        "lab_loss_last_longer": mean(run.losses[-1] for run in longer_runs),
    }


# Notebook 06's statements about its scripted lab runs (means over the orders of pairs), each with its test on
# `lab_measurements`: the notebook prints each one's outcome on the learner's run, and tests/conftest.py checks
# them on the executed notebook's numbers (one source for both). Measured on the float32 and the bf16-autocast
# paths' pools, over three sets of 10 orders each (README, "06 holds on both paths"): every one held in all six.
LAB_STATEMENTS: tuple[tuple[str, Callable[[dict], bool]], ...] = (
    ("every rater's heads fit its clicks: on average over the orders, the final loss is under half of log 2",
     lambda r: max(r["lab_loss_last_judge"], r["lab_loss_last_no_ties"], r["lab_loss_last_longer"])
     < r["lab_loss_first"] / 2),
    ("the judge rater's clicks, coin flips included, are the hardest to fit: its mean final loss is the highest",
     lambda r: r["lab_loss_last_judge"] > max(r["lab_loss_last_no_ties"], r["lab_loss_last_longer"])),
    ("the coin flips cost agreement: on average, the judge rater's real clicks alone agree more with the judge "
     "than with its coin flips added",
     lambda r: r["lab_same_real_clicks"] and r["lab_tie_clicks_judge"] > 0
     and r["lab_agreement_same_real_clicks"] > r["lab_agreement_judge"]),
    ("passing ties over beats flipping a coin: on average those heads end above the coin-flipping ones",
     lambda r: r["lab_agreement_judge_no_ties"] > r["lab_agreement_judge"]),
    ("a habit is learned as a habit: the longer-reply rater's heads order >= 0.9 of held-out pairs of different "
     "lengths as 'longer is better' does, and agree with the judge within 0.1 of that rule (means)",
     lambda r: r["lab_rule_agreement_longer"] >= 0.9
     and abs(r["lab_agreement_longer"] - r["lab_length_rule_agreement"]) <= 0.1),
)


def lab_statements(measured: dict) -> dict[str, bool]:
    """Each of `LAB_STATEMENTS` and whether it holds on `measured` (`lab_measurements`)."""
    return {text: bool(test(measured)) for text, test in LAB_STATEMENTS}


def rlhf_lab_text(lab: BradleyTerryLab) -> str:
    last = f"{lab.losses[-1]:.3f}" if lab.losses else "-"
    lines = [f"clicks {len(lab.picks)}   Bradley-Terry loss {last}   held-out agreement with the judge "
             f"{lab.agreements[-1]:.2f} (0.50 = a coin)"]
    for reply, reward_, score in lab.top_replies():
        lines.append(f"  ranked first: {reply[:60]!r}  reward {reward_:+.2f}  judge {score:.1f}")
    return "\n".join(lines)


def rlhf_lab_figure(labs: dict):
    """Left: the Bradley-Terry loss per gradient step; right: held-out agreement with the judge per click. A value
    of `labs` is one lab, or a list of runs (one per order of pairs): then its mean, with the range shaded."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, runs in labs.items():
        runs = runs if isinstance(runs, (list, tuple)) else [runs]
        losses, agreements = np.array([r.losses for r in runs]), np.array([r.agreements for r in runs])
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)} orders)"
        line, = left.plot(range(1, losses.shape[1] + 1), losses.mean(0), label=label)
        right.plot(range(agreements.shape[1]), agreements.mean(0), marker=".", color=line.get_color(), label=label)
        if len(runs) > 1:
            right.fill_between(range(agreements.shape[1]), agreements.min(0), agreements.max(0),
                               color=line.get_color(), alpha=0.12, lw=0)
    left.set(xlabel="gradient step", ylabel="Bradley-Terry loss", title="loss while clicking")
    left.legend(loc="upper right", fontsize=8)
    right.axhline(0.5, color="grey", lw=0.8, ls=":")
    right.set(xlabel="clicks", ylabel="agreement with the judge", ylim=(0, 1), title="held-out ranking")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))  # clicks are whole
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def rlhf_lab_widget(lab: BradleyTerryLab):
    """Two real replies and buttons A / B: each click trains the lab's reward head; loss and ranking redrawn."""
    import html

    import ipywidgets as widgets
    from IPython.display import display

    from .labs import _figure_png, _mark, _pre, _shown

    shown, readout, image, errors = widgets.HTML(), widgets.HTML(), widgets.Image(format="png"), widgets.HTML()
    pick_a, pick_b = widgets.Button(description="A is better"), widgets.Button(description="B is better")

    def redraw():
        prompt, a, b = lab.shown()
        shown.value = (f"<pre style='margin:0'>{html.escape(prompt)}</pre><b>A:</b> {html.escape(a)}<br>"
                       f"<b>B:</b> {html.escape(b)}")
        readout.value = _pre(rlhf_lab_text(lab))
        image.value = _figure_png(rlhf_lab_figure({"your clicks": lab}))

    def clicked(choice):
        lab.click(choice)
        redraw()

    redraw()
    pick_a.on_click(_shown(lambda _: clicked("A"), errors))
    pick_b.on_click(_shown(lambda _: clicked("B"), errors))
    box = _mark(widgets.VBox([shown, widgets.HBox([pick_a, pick_b]), readout, errors, image]), "rlhf", readout,
                image, errors)
    display(box)
    return box
