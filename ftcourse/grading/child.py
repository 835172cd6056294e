"""The child process that runs learner code (started by `sandbox.run_learner_code`, never imported by a grader).

It reads one request on stdin: solution cells (grade_id and source), the names to define before them
(`grading.context`), the run's preset and seed, and an operation with its inputs. It runs the cells,
then the operation, which calls the learner's functions on the inputs and turns what they return into
plain data (lists, numbers, strings, tensors as base64). That data is its only answer, written as one
JSON object to the result channel; the grader checks it and compares it with the library's own result.
Nothing here decides a verdict, so nothing a learner patches here can produce one.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import json
import os
import sys
import traceback


class CellError(Exception):
    """What the learner's cells did not provide, or provided in the wrong shape."""


class EstimatorFunctionHidden(CellError):
    """Exercise 1.2's static_bytes reached a function of the estimator that counts the bytes for it. Its name is
    its message: under hidden inputs the grader shows a learner error's type and line, not its text."""


# ---------------------------------------------------------------- tensors as data

def encode_tensor(tensor) -> dict:
    """A tensor as plain data: dtype, shape and the raw bytes in base64 (exact, unlike decimal text)."""
    import torch

    tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
    return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "b64": base64.b64encode(tensor.numpy().tobytes()).decode()}


def decode_tensor(raw: dict):
    """The tensor `encode_tensor` described; a clear error for anything else."""
    import numpy as np
    import torch

    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "b64"}:
        raise ValueError("expected an encoded tensor {dtype, shape, b64}")
    dtypes = {"float32": np.float32, "float64": np.float64, "uint8": np.uint8, "int64": np.int64, "int32": np.int32,
              "int16": np.int16, "int8": np.int8, "bool": np.bool_}
    if raw["dtype"] not in dtypes:
        raise ValueError(f"unsupported tensor dtype {raw['dtype']!r}")
    import math

    shape = [int(x) for x in raw["shape"]]
    array = np.frombuffer(base64.b64decode(raw["b64"]), dtype=dtypes[raw["dtype"]])
    if any(d < 0 for d in shape) or array.size != math.prod(shape):  # exact: numpy's product can wrap to 0
        raise ValueError(f"tensor of shape {shape} carries {array.size} values")
    return torch.from_numpy(array.copy()).reshape(shape)


def export(value, what: str):
    """A learner's value as JSON data: dataclasses become dicts, tuples lists; anything else is refused."""
    from ftcourse.training import CONFIG_TYPES, config_dict

    if type(value).__name__ in CONFIG_TYPES and hasattr(value, "to_dict"):  # the recipe's configs
        return export(config_dict(value, what), what)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: export(getattr(value, f.name), f"{what}.{f.name}") for f in dataclasses.fields(value)}
        if hasattr(value, "total") and not callable(value.total):  # MemoryBreakdown's derived total
            out["total"] = export(value.total, f"{what}.total")
        return out
    if isinstance(value, (list, tuple)):
        return [export(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): export(v, what) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CellError(f"{what} must be plain data (numbers, strings, lists) or a course dataclass, "
                    f"got {type(value).__name__}.")


def _need(namespace: dict, name: str):
    if name not in namespace:
        raise CellError(f"The solution cell does not define {name}.")
    return namespace[name]


# ---------------------------------------------------------------- operations: call the learner's code on inputs

def op_values(namespace: dict, inputs: dict):
    """The named values the cells defined (a LoraConfig and an SFTConfig, an SFTSetup, a TrainingPlan, numbers)."""
    return {name: export(_need(namespace, name), name) for name in inputs["names"]}


def op_decide(namespace: dict, inputs: dict):
    from ftcourse.decision import Scenario

    choose = _need(namespace, "choose_approach")
    answers = []
    for fields in inputs["scenarios"]:
        answer = choose(Scenario(**fields))
        if not isinstance(answer, str):
            raise CellError(f"choose_approach must return a string, got {type(answer).__name__}.")
        answers.append(answer)
    return answers


STATIC_PARTS = ("parameters", "gradients", "optimizer_states")  # what Exercise 1.2's static_bytes returns


def op_static_bytes(namespace: dict, inputs: dict):
    """The learner's `static_bytes` on each (shape, plan), with the estimator's own counts hidden while it runs:
    every module attribute and cell name bound to one of them is replaced by a stand-in that refuses. A deterrent
    with a clear message, not a wall: code that ran before this op could have kept a reference."""
    import sys

    import ftcourse.estimator as estimator

    count = _need(namespace, "static_bytes")
    names = ("estimate_memory", "parameter_bytes", "trainable_param_count", "lora_param_count")
    originals = {id(getattr(estimator, name)): name for name in names}

    def refused(name):
        def call(*args, **kwargs):
            raise EstimatorFunctionHidden(f"static_bytes must count the bytes itself; it reached the estimator's {name}().")
        return call

    stand_ins = {name: refused(name) for name in names}
    replaced = []  # (a module's or the cells' dict, key, original)
    places = [vars(module) for module in list(sys.modules.values()) if module is not None] + [namespace]
    try:
        for place in places:
            for key, value in list(place.items()):
                if callable(value) and id(value) in originals:
                    replaced.append((place, key, value))
                    place[key] = stand_ins[originals[id(value)]]
        rows = []
        for case in inputs["cases"]:
            out = count(estimator.ModelShape(**case["shape"]), estimator.TrainingPlan.from_data(case["plan"]))
            if not isinstance(out, dict) or set(STATIC_PARTS) - set(out):
                raise CellError(f"static_bytes must return a dict with {', '.join(STATIC_PARTS)}, got "
                                f"{sorted(out) if isinstance(out, dict) else type(out).__name__}.")
            row = {}
            for part in STATIC_PARTS:
                try:
                    row[part] = float(out[part])
                except (TypeError, ValueError, OverflowError):
                    raise CellError(f"static_bytes()[{part!r}] must be a number of bytes, got a "
                                    f"{type(out[part]).__name__}.") from None
            rows.append(row)
        return rows
    finally:
        for place, key, value in replaced:
            place[key] = value


def op_clean(namespace: dict, inputs: dict):
    from ftcourse.models import load_tokenizer
    from ftcourse.tasks import Example

    clean_dump = _need(namespace, "clean_dump")
    tests = [Example(prompt, answer) for prompt, answer in inputs["tests"]]
    out = clean_dump(list(inputs["lines"]), tests, load_tokenizer(), inputs["max_tokens"])
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise CellError("clean_dump must return (kept_rows, flags) with flags a dict {row index: problem}.")
    kept, flags = out
    return {"kept": len(kept), "flags": {str(int(index)): str(problem) for index, problem in flags.items()}}


def op_label_mask(namespace: dict, inputs: dict):
    from ftcourse.models import load_tokenizer

    build = _need(namespace, "build_chat_labels")
    tokenizer = load_tokenizer()
    rows = []
    for prompt, answer in inputs["pairs"]:
        out = build(tokenizer, prompt, answer)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CellError(f"build_chat_labels must return (input_ids, labels), got {type(out).__name__}.")
        rows.append([[int(x) for x in out[0]], [int(x) for x in out[1]]])
    return rows


def op_lora_layer(namespace: dict, inputs: dict):
    """Each case: the learner's layer around the given base, the given A and B copied in, one forward and backward."""
    import torch
    from torch import nn

    layer_cls = _need(namespace, "LoRALinear")
    results = []
    for case in inputs["cases"]:
        weight = decode_tensor(case["weight"])
        base = nn.Linear(weight.shape[1], weight.shape[0], bias=case["bias"] is not None)
        with torch.no_grad():
            base.weight.copy_(weight)
            if case["bias"] is not None:
                base.bias.copy_(decode_tensor(case["bias"]))
        layer = layer_cls(base, case["r"], case["alpha"])
        for name in ("lora_A", "lora_B"):
            if not isinstance(getattr(layer, name, None), nn.Parameter):
                raise CellError(f"The layer must have a trainable nn.Parameter `{name}`; "
                                f"found {type(getattr(layer, name, None)).__name__}.")
        shapes = {"lora_A": list(layer.lora_A.shape), "lora_B": list(layer.lora_B.shape)}
        b_start_max = float(layer.lora_B.detach().abs().max()) if layer.lora_B.numel() else 0.0
        a, b = decode_tensor(case["A"]), decode_tensor(case["B"])
        if list(a.shape) != shapes["lora_A"] or list(b.shape) != shapes["lora_B"]:
            results.append({"shapes": shapes})
            continue
        with torch.no_grad():
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
        x = decode_tensor(case["x"]).requires_grad_(True)
        out = layer(x)
        (out * decode_tensor(case["upstream"])).sum().backward()
        base_params = [p for n, p in layer.named_parameters() if not n.startswith("lora_")]
        results.append({
            "shapes": shapes, "b_start_max": b_start_max, "output": encode_tensor(out),
            "grad_A": encode_tensor(layer.lora_A.grad) if layer.lora_A.grad is not None else None,
            "grad_B": encode_tensor(layer.lora_B.grad) if layer.lora_B.grad is not None else None,
            "grad_x": encode_tensor(x.grad) if x.grad is not None else None,
            "trainable": sum(p.numel() for p in layer.parameters() if p.requires_grad),
            "base_frozen": bool(base_params) and not any(p.requires_grad for p in base_params),
        })
    return results


def op_nf4(namespace: dict, inputs: dict):
    import torch

    quantize, dequantize = _need(namespace, "nf4_quantize"), _need(namespace, "nf4_dequantize")
    code, block = decode_tensor(inputs["code"]), inputs["block_size"]
    quantized = []
    for raw in inputs["quantize"]:
        out = quantize(decode_tensor(raw), code.clone(), block)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CellError(f"nf4_quantize must return (indices, absmax), got {type(out).__name__}.")
        idx, absmax = (torch.as_tensor(x) for x in out)
        quantized.append({"indices": encode_tensor(idx.reshape(-1).to(torch.int64)),
                          "absmax": encode_tensor(absmax.reshape(-1).to(torch.float32))})
    restored = []
    for case in inputs["dequantize"]:
        out = dequantize(decode_tensor(case["indices"]).to(torch.uint8), decode_tensor(case["absmax"]), code.clone(),
                         tuple(case["shape"]), block)
        restored.append(encode_tensor(torch.as_tensor(out).to(torch.float32)))
    return {"quantized": quantized, "restored": restored}


def _check_mean_loss(loss, what: str, through: str) -> None:
    """A learner's loss must be a one-element tensor that gradients flow through."""
    import torch

    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        raise CellError(f"{what} must be a one-element tensor (the batch's mean loss), got "
                        f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}.")
    if not loss.requires_grad:
        raise CellError(f"{what} has no gradient: compute it with torch operations on {through}.")


class LibraryLossHidden(CellError):
    """A loss exercise reached the library loss it is compared with (a deterrent, as Exercise 1.2's)."""


def _hidden_library_function(*args, **kwargs):
    """The body a hidden library function runs while learner code does (however the learner reached it). It runs
    in the hidden function's own module, so it names only builtins."""
    raise PermissionError("your code reached a function the grader compares it with (or the task's checker), "
                          "which is hidden while it runs: compute the result yourself.")


@contextlib.contextmanager
def _library_loss_hidden(namespace: dict, function: str, module_functions: tuple[str, ...], methods: tuple[str, ...],
                         what: str = "the loss"):
    """While the learner's loss runs: the library functions it is compared with (`module.function` names) and, when
    their module is already imported, the TRL trainer methods (`module.Class.method`) refuse, wherever a module or
    the cells bound them. A deterrent with a clear message, not a wall: code that ran before could keep a reference."""
    import importlib

    def refused(name):
        def call(*args, **kwargs):
            raise LibraryLossHidden(f"{function} must compute {what} itself; it reached {name}().")
        return call

    originals, replaced, bodies = {}, [], []
    for dotted in module_functions:
        module, name = dotted.rsplit(".", 1)
        function = getattr(importlib.import_module(module), name)
        originals[id(function)] = dotted
        if getattr(function, "__closure__", 1) is None:  # a plain function: its body is hidden too, so a reference
            bodies.append((function, function.__code__))  # kept elsewhere (a default argument, a list) refuses
    try:
        for function, _ in bodies:
            function.__code__ = _hidden_library_function.__code__
        for place in [vars(m) for m in list(sys.modules.values()) if m is not None] + [namespace]:
            for key, value in list(place.items()):
                if callable(value) and id(value) in originals:
                    replaced.append((place, key, value))
                    place[key] = refused(originals[id(value)])
        for dotted in methods:
            module, cls, name = dotted.rsplit(".", 2)
            owner = getattr(sys.modules.get(module), cls, None)
            if owner is not None and name in vars(owner):
                method = vars(owner)[name]
                replaced.append((owner, name, method))
                setattr(owner, name, refused(f"{cls}.{name}"))
                if getattr(method, "__closure__", 1) is None:  # a reference kept to the method refuses too
                    bodies.append((method, method.__code__))
                    method.__code__ = _hidden_library_function.__code__
        yield
    finally:
        for function, code in bodies:
            function.__code__ = code
        for place, key, value in reversed(replaced):
            if isinstance(place, dict):
                place[key] = value
            else:
                setattr(place, key, value)


def _need_gradients(function: str, **inputs) -> None:
    """After the backward pass: every input the loss must depend on received a gradient."""
    for name, tensor in inputs.items():
        if tensor.grad is None:
            raise CellError(f"{function}'s loss does not depend on {name} (no gradient reached it): detach nothing "
                            "the loss is computed from.")


def op_bradley_terry(namespace: dict, inputs: dict):
    """Each case: the learner's loss on the given rewards, its value and its gradients with respect to them (with
    TRL's loss, the one it is compared with, hidden while it runs)."""
    loss_fn = _need(namespace, "bradley_terry_loss")
    with _library_loss_hidden(namespace, "bradley_terry_loss", ("ftcourse.preferences.reward_trainer_loss",),
                              ("trl.trainer.reward_trainer.RewardTrainer.compute_loss",)):
        return _bradley_terry_cases(loss_fn, inputs)


def _bradley_terry_cases(loss_fn, inputs: dict) -> list:
    import torch

    results = []
    for case in inputs["cases"]:
        chosen = decode_tensor(case["chosen"]).requires_grad_(True)
        rejected = decode_tensor(case["rejected"]).requires_grad_(True)
        margin = decode_tensor(case["margin"]) if case["margin"] is not None else None
        loss = loss_fn(chosen, rejected, margin=margin, center_rewards_coefficient=case["center"])
        _check_mean_loss(loss, "bradley_terry_loss's result", "the rewards (a reward model trains through this loss)")
        loss.reshape(()).backward()
        _need_gradients("bradley_terry_loss", rewards_chosen=chosen, rewards_rejected=rejected)
        results.append({"loss": loss.item(), "grad_chosen": encode_tensor(chosen.grad.to(torch.float32)),
                        "grad_rejected": encode_tensor(rejected.grad.to(torch.float32))})
    return results


def op_dpo_loss(namespace: dict, inputs: dict):
    """Each case: the learner's DPO loss on the given log-probabilities, its gradients with respect to the policy's,
    and the implicit rewards it returns (with TRL's loss, the one it is compared with, hidden while it runs)."""
    loss_fn = _need(namespace, "dpo_loss")
    with _library_loss_hidden(namespace, "dpo_loss", ("ftcourse.dpo.dpo_trainer_loss",),
                              ("trl.trainer.dpo_trainer.DPOTrainer._compute_loss",
                               "trl.trainer.dpo_trainer.DPOTrainer.compute_loss")):
        return _dpo_loss_cases(loss_fn, inputs)


def _dpo_loss_cases(loss_fn, inputs: dict) -> list:
    import torch

    results = []
    for case in inputs["cases"]:
        chosen = decode_tensor(case["policy_chosen"]).requires_grad_(True)
        rejected = decode_tensor(case["policy_rejected"]).requires_grad_(True)
        out = loss_fn(chosen, rejected, decode_tensor(case["ref_chosen"]), decode_tensor(case["ref_rejected"]),
                      case["beta"])
        if not (isinstance(out, tuple) and len(out) == 3):
            raise CellError(f"dpo_loss must return (loss, chosen_rewards, rejected_rewards), got {type(out).__name__}.")
        loss, chosen_rewards, rejected_rewards = out
        _check_mean_loss(loss, "dpo_loss's loss", "the policy's log-probabilities (the policy trains through this loss)")
        rewards = []
        for name, value in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
            if not isinstance(value, torch.Tensor):
                raise CellError(f"dpo_loss's {name} must be a tensor (one reward per pair), got {type(value).__name__}.")
            if value.requires_grad:
                raise CellError(f"dpo_loss's {name} carries a gradient: detach it (the rewards are logged, not trained).")
            rewards.append(encode_tensor(value.to(torch.float32)))
        loss.reshape(()).backward()
        _need_gradients("dpo_loss", policy_chosen_logps=chosen, policy_rejected_logps=rejected)
        results.append({"loss": loss.item(), "grad_chosen": encode_tensor(chosen.grad.to(torch.float32)),
                        "grad_rejected": encode_tensor(rejected.grad.to(torch.float32)),
                        "chosen_rewards": rewards[0], "rejected_rewards": rewards[1]})
    return results


def op_dpo_pairs(namespace: dict, inputs: dict):
    """The learner's `dpo_pair(question, rng)` on each training question, one rng seeded as the grader chose:
    {"pairs": [[chosen, rejected], ...], "values": the cell's `names`} as data (the grader checks every pair with
    the judge, and the configs as `op_values`' data)."""
    import random

    from ftcourse.preferences import Question

    make_pair = _need(namespace, "dpo_pair")
    rng, pairs = random.Random(inputs["seed"]), []
    for row, raw in enumerate(inputs["questions"]):
        out = make_pair(Question(*raw), rng)
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, str) for t in out)):
            raise CellError(f"dpo_pair must return (chosen, rejected), two strings; for question {row} it returned "
                            f"{str(out)[:120]}.")
        pairs.append(list(out))
    return {"pairs": pairs, "values": op_values(namespace, {"names": inputs["names"]})}


def op_group_advantages(namespace: dict, inputs: dict):
    """Each case: the learner's `group_advantages(rewards, reward_weights, num_generations)` on the given rewards
    ([completions, functions], NaN where a function returned None), as a tensor (with the mirror of TRL's advantage
    it is compared with hidden while it runs)."""
    import torch

    function = _need(namespace, "group_advantages")
    results = []
    with _library_loss_hidden(namespace, "group_advantages", ("ftcourse.grpo.trl_group_advantages",), (),
                              "the advantages"):
        for case in inputs["cases"]:
            rewards = decode_tensor(case["rewards"])
            out = function(rewards.clone(), torch.tensor(case["weights"]), case["num_generations"])
            if not isinstance(out, torch.Tensor):
                raise CellError(f"group_advantages must return a tensor (one advantage per completion), got "
                                f"{type(out).__name__}.")
            results.append(encode_tensor(out.detach().to(torch.float32)))
    return results


def op_info_nce(namespace: dict, inputs: dict):
    """Each case: the learner's `info_nce_loss(query_embeddings, document_embeddings, scale)`, its value and its
    gradients with respect to both (with sentence-transformers' loss, the one it is compared with, hidden)."""
    import torch

    loss_fn = _need(namespace, "info_nce_loss")
    module = "sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking"
    importlib.import_module(module)  # imported first, so a loss that imports it only when called finds it hidden
    where = f"{module}.MultipleNegativesRankingLoss"
    results = []
    with _library_loss_hidden(namespace, "info_nce_loss", (),
                              (f"{where}.compute_loss_from_embeddings", f"{where}.forward")):
        for case in inputs["cases"]:
            queries = decode_tensor(case["queries"]).requires_grad_(True)
            documents = decode_tensor(case["documents"]).requires_grad_(True)
            loss = loss_fn(queries, documents, case["scale"])
            _check_mean_loss(loss, "info_nce_loss's result", "the embeddings (the model trains through this loss)")
            loss.reshape(()).backward()
            _need_gradients("info_nce_loss", query_embeddings=queries, document_embeddings=documents)
            results.append({"loss": loss.item(), "grad_queries": encode_tensor(queries.grad.to(torch.float32)),
                            "grad_documents": encode_tensor(documents.grad.to(torch.float32))})
    return results


def op_distillation_loss(namespace: dict, inputs: dict):
    """Each case: the learner's `distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)`, its
    value and its gradient with respect to the student's logits (with PyTorch's `kl_div` and the course's loss, the
    ones it is compared with, hidden while it runs)."""
    import torch

    loss_fn = _need(namespace, "distillation_loss")
    results = []
    with _library_loss_hidden(namespace, "distillation_loss",
                              ("ftcourse.distill.distillation_loss", "torch.nn.functional.kl_div", "torch.kl_div"),
                              ()):
        for case in inputs["cases"]:
            student = decode_tensor(case["student"]).requires_grad_(True)
            teacher = decode_tensor(case["teacher"])
            labels = torch.tensor(case["labels"], dtype=torch.long)
            loss = loss_fn(student, teacher, labels, case["temperature"], case["alpha"])
            _check_mean_loss(loss, "distillation_loss's result", "the student's logits (the student trains through it)")
            loss.reshape(()).backward()
            _need_gradients("distillation_loss", student_logits=student)
            results.append({"loss": loss.item(), "grad_student": encode_tensor(student.grad.to(torch.float32))})
    return results


MAX_REWARD = 1e6  # a reward's largest size: TRL's float32 sums of weighted rewards stay finite
REWARD_CALL_KEYS = ("prompts", "completions", "completion_ids", "answer", "item")  # what TRL passes a reward function


def op_grpo_setup(namespace: dict, inputs: dict):
    """Exercise 8.2's choices: the names of the functions in `reward_funcs` and the configs `names` (data), checked
    once before the grader trains."""
    funcs = _need(namespace, "reward_funcs")
    if not (isinstance(funcs, (list, tuple)) and funcs and all(callable(f) for f in funcs)):
        raise CellError(f"reward_funcs must be a non-empty list of reward functions, got {str(funcs)[:120]}.")
    return {"reward_functions": [str(getattr(f, "__name__", f"reward_{i}"))[:60] for i, f in enumerate(funcs)],
            "values": op_values(namespace, {"names": inputs["names"]})}


def op_grpo_rewards(namespace: dict, inputs: dict):
    """Each of the learner's `reward_funcs` on one GRPO batch (the grader's completions of its training prompts, in
    TRL's conversational form): [[reward or None per completion] per function]. The task's checker and the
    course's judge are hidden while they run: the correctness reward is the learner's to write."""
    import math

    funcs = _need(namespace, "reward_funcs")
    kwargs = {key: inputs[key] for key in REWARD_CALL_KEYS}
    n = len(kwargs["completions"])
    out = []
    hidden = ("ftcourse.grpo.task_checker", "ftcourse.grpo.checker_reward", "ftcourse.preferences.judge",
              "ftcourse.rlhf.judge_reward", "ftcourse.rlhf.judge_replies")
    with _library_loss_hidden(namespace, "reward_funcs", hidden, (), "its rewards"):
        for i, func in enumerate(funcs):
            name = getattr(func, "__name__", f"reward_funcs[{i}]")
            rewards = func(**{k: list(v) for k, v in kwargs.items()}, trainer_state=None)
            if not isinstance(rewards, (list, tuple)) or len(rewards) != n:
                raise CellError(f"{name} must return a list of {n} rewards (one per completion), got "
                                f"{str(rewards)[:120]}.")
            values = []
            for row, reward in enumerate(rewards):
                if reward is not None:
                    try:
                        reward = float(reward)
                    except (TypeError, ValueError, OverflowError):
                        raise CellError(f"{name} returned {str(reward)[:60]!r} for completion {row}: a reward is a "
                                        "number (or None: no opinion).") from None
                    if not (math.isfinite(reward) and abs(reward) <= MAX_REWARD):
                        raise CellError(f"{name} returned {reward} for completion {row}: a reward must be finite, "
                                        f"at most {MAX_REWARD:g} in size.")
                values.append(reward)
            out.append(values)
    return out


def op_draw(namespace: dict, inputs: dict):
    """`n` distinct examples from the learner's `make_example`, drawn with the seed the grader chose."""
    from ftcourse.capstone import draw_task

    examples = draw_task(_need(namespace, "make_example"), inputs["n"], inputs["seed"])
    return [[e.prompt, e.answer] for e in examples]


OPS = {"values": op_values, "decide": op_decide, "static_bytes": op_static_bytes, "clean": op_clean, "label_mask": op_label_mask,
       "lora_layer": op_lora_layer, "nf4": op_nf4, "draw": op_draw, "bradley_terry": op_bradley_terry,
       "dpo_loss": op_dpo_loss, "dpo_pairs": op_dpo_pairs, "group_advantages": op_group_advantages,
       "grpo_setup": op_grpo_setup, "grpo_rewards": op_grpo_rewards, "info_nce": op_info_nce,
       "distillation_loss": op_distillation_loss}


# ---------------------------------------------------------------- the process

def _where(error: BaseException) -> str:
    """'cell <grade_id>, line N' of the deepest frame in a learner's cell."""
    where = ""
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.startswith("<cell "):
            where = f"{frame.filename.strip('<>')}, line {frame.lineno}"
    return where


def _message(error: BaseException) -> str:
    try:
        return str(error)[:2000]
    except BaseException:  # noqa: BLE001 - a learner's exception whose str() fails
        return ""


def _answer(run) -> str:
    """`run()`'s data as the grader's JSON result, or the learner's exception as data."""
    try:
        answer = {"ok": True, "data": run()}
    except BaseException as error:  # noqa: BLE001 - any failure of learner code is data for the grader
        answer = {"ok": False, "error": {"type": type(error).__name__, "message": _message(error),
                                         "where": _where(error)}}
    try:
        return json.dumps(answer)
    except (TypeError, ValueError) as error:
        return json.dumps({"ok": False, "error": {"type": "CellError", "where": "",
                                                  "message": f"the result is not plain data ({error})"}})


def main(result_fd: int) -> None:
    """One request (a JSON line on stdin): run the cells, then its operation, and write the answer. A request whose
    op is "session" (`sandbox.LearnerSession`) answers once the cells ran, then reads one call per line
    ({"op", "inputs"}) and answers each on its own line, until stdin closes."""
    result = os.fdopen(result_fd, "w")
    import warnings

    warnings.filterwarnings("ignore")
    namespace: dict = {}
    request: dict = {}

    def start():
        request.update(json.loads(sys.stdin.readline()))
        from ftcourse.grading.context import build

        namespace.update(build(request["provides"], request["preset"], request["seed"]))
        for grade_id, source in request["cells"]:
            exec(compile(source, f"<cell {grade_id}>", "exec"), namespace)
        return None if request["op"] == "session" else OPS[request["op"]](namespace, request["inputs"])

    first = _answer(start)
    result.write(first + "\n")
    result.flush()
    while request.get("op") == "session" and first.startswith('{"ok": true'):
        line = sys.stdin.readline()
        if not line:
            break
        call = json.loads(line)
        result.write(_answer(lambda: OPS[call["op"]](namespace, call["inputs"])) + "\n")
        result.flush()
    os._exit(0)  # no atexit handler or finaliser of learner code runs after the answer
