"""Knowledge distillation into a smaller student, gated by fidelity like every other pass.

The student is the teacher with layers dropped (evenly spaced layers kept, embeddings and heads copied), a
Hugging Face model directory the user gives, or, for plain PyTorch ``module`` teachers, another class from the
teacher's code (``student_class`` with ``student_kwargs``), trained from scratch; or, with
``student_from_input``, the pass's input itself (e.g. a pruned model), trained to reproduce the chain's source.
It is trained on the train split, optionally augmented (random crops, word dropout, concatenations of two
texts), optionally with int8 fake quantization (``qat``, see ``optimizers.passes.qat``), to reproduce the
teacher: MSE plus a cosine term on the pooled embeddings for encoders, KL divergence on
temperature-softened logits for classifiers, MSE on the relevance logit for rerankers (as sentence-transformers
distils cross-encoders; a reranker's (query, document) pairs are not augmented). Training stops when the loss on
the validation split has not improved for ``patience`` epochs; the best epoch is kept.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from tqdm import tqdm

from modelpkg.manifest import LOGIT_TASKS, Task
from modelpkg.runtimes.heads import HEADS_PER_LAYER
from optimizers.passes.base import Artifact, PassConfig, PassContext, PassOutput, out_path, register, torch_inputs
from optimizers.passes.qat import QAT_SCHEME, fake_quantized
from optimizers.source import SourceModel

log = logging.getLogger(__name__)


class DistillConfig(PassConfig):
    layers: int | None = Field(default=None, gt=0, description="student depth (layer dropping); or give student")
    keep_layers: tuple[int, ...] | None = Field(
        default=None, min_length=1, description="exactly which teacher layers the student keeps (searchable)"
    )
    student: str | None = Field(default=None, description="a Hugging Face model directory to train instead")
    student_class: str | None = Field(default=None, description="module teachers: a class in the teacher's code")
    student_kwargs: dict[str, Any] = Field(default={}, description="arguments of student_class")
    epochs: int = Field(default=8, gt=0)
    patience: int = Field(default=2, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    temperature: float = Field(default=2.0, gt=0, description="classifiers: softening of the logits")
    max_train_samples: int | None = Field(default=None, gt=0)
    cosine_weight: float = Field(default=1.0, ge=0, description="encoders: weight of (1 - cosine) beside the MSE")
    hidden_weight: float = Field(
        default=0.0,
        ge=0,
        description="layer-dropped or pruned encoders: weight of the token-level MSE between each student layer's "
        "hidden states and those of the teacher layer it was copied from (a pruned student: the same layer)",
    )
    augment: int = Field(default=0, ge=0, le=8, description="augmented copies of each training text")
    student_from_input: bool = Field(
        default=False, description="train the input model (e.g. pruned) to reproduce the chain's source model"
    )
    qat: bool = Field(default=False, description="train with int8 fake quantization (optimizers/passes/qat.py)")
    compute: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="training arithmetic: bf16 runs teacher and student under torch's bf16 autocast (about 1.7x "
        "faster on CPUs with AMX or AVX-512 BF16); weights, optimizer and the saved student stay fp32",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        given = [
            name
            for name, value in (
                ("layers", self.layers),
                ("keep_layers", self.keep_layers),
                ("student", self.student),
                ("student_class", self.student_class),
                ("student_from_input", self.student_from_input or None),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one way to make the student, not {' and '.join(given)}")
        if self.hidden_weight and not (self.layers or self.keep_layers or self.student_from_input):
            raise ValueError(
                "hidden_weight needs a layer-dropped (layers, keep_layers) or pruned (student_from_input) student: "
                "its layer map"
            )
        return self


def augmented(texts: list[str], copies: int, seed: int) -> list[str]:
    """``texts`` followed by ``copies`` variants of each: a random crop of at least half its words, the words
    with 10% dropped, or the text joined with another one (chosen at random, reproducibly from ``seed``)."""
    rng = random.Random(seed)
    extra = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            kind = rng.randrange(3)
            if kind == 0 and len(words) > 3:
                size = rng.randint((len(words) + 1) // 2, len(words))
                start = rng.randint(0, len(words) - size)
                variant = " ".join(words[start : start + size])
            elif kind == 1 and len(words) > 3:
                variant = " ".join(w for w in words if rng.random() > 0.1) or text
            else:
                variant = f"{text} {rng.choice(texts)}"
            extra.append(variant)
    return texts + extra


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced layer indices out of ``total``, always including the first and the last."""
    if not 0 < keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _layer_list(model: Any) -> tuple[Any, str]:
    """The module holding the transformer layers, and its attribute name (BERT-like or DistilBERT-like)."""
    base = getattr(model, "base_model", model)
    for holder, attr in ((getattr(base, "encoder", None), "layer"), (getattr(base, "transformer", None), "layer")):
        if holder is not None and hasattr(holder, attr):
            return holder, attr
    raise ValueError(f"cannot drop layers of {type(model).__name__}: no encoder.layer or transformer.layer")


def layer_dropped_student(teacher_dir: Path, task: str, keep: int | tuple[int, ...], target: Path) -> dict[str, Any]:
    """Write a student made of ``keep`` of the teacher's layers (a count, evenly spaced; or the indices) to
    ``target`` (safetensors)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from modelpkg.runtimes.torch import load_encoder, load_pretrained

    if task in LOGIT_TASKS:
        model = load_pretrained(AutoModelForSequenceClassification, teacher_dir)
    else:
        model = load_encoder(teacher_dir)  # without a pooler head, where the family has one
    holder, attr = _layer_list(model)
    layers = getattr(holder, attr)
    indices = kept_layers(len(layers), keep) if isinstance(keep, int) else sorted(set(keep))
    if not all(0 <= i < len(layers) for i in indices):
        raise ValueError(f"keep_layers {indices} must be indices of the teacher's {len(layers)} layers")
    keep = len(indices)
    setattr(holder, attr, torch.nn.ModuleList([layers[i] for i in indices]))
    heads = getattr(model.config, HEADS_PER_LAYER, None)
    if heads:  # a teacher whose heads were pruned: the kept layers' counts
        setattr(model.config, HEADS_PER_LAYER, [heads[i] for i in indices])
    for name in ("num_hidden_layers", "n_layers"):
        if hasattr(model.config, name):
            setattr(model.config, name, keep)
    model.save_pretrained(target, safe_serialization=True)
    return {"teacher_layers": len(layers), "kept_layers": indices}


@contextmanager
def layer_outputs(model: Any, indices: list[int]) -> Iterator[list[Any]]:
    """The hidden states leaving ``model``'s transformer layers ``indices`` on the next forward call, in order."""
    holder, attr = _layer_list(getattr(model, "encoder", None) or getattr(model, "classifier", model))
    layers = getattr(holder, attr)
    captured: dict[int, Any] = {}
    handles = [
        layers[i].register_forward_hook(
            lambda _m, _args, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i in indices
    ]
    found: list[Any] = []
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        found.extend(captured[i] for i in indices if i in captured)


def _batches(items: list[Any], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices. Texts are grouped by length first (sort, cut, shuffle the batches), so that
    little of each batch is padding; tensors are shuffled plainly."""
    order = list(range(len(items)))
    rng.shuffle(order)
    if items and isinstance(items[0], str):
        order.sort(key=lambda i: len(items[i]))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Distiller:
    """Trains ``student`` to reproduce ``teacher`` on tokenized text: MSE on pooled embeddings, or KL divergence
    on temperature-softened logits for classifiers, MSE on the logit for rerankers."""

    teacher: Any
    student: Any
    source: SourceModel
    task: Task
    config: DistillConfig
    layer_map: tuple[tuple[int, int], ...] = ()  # (student layer, teacher layer it was copied from)

    def tensors(self, items: list[Any]) -> tuple[Any, ...]:
        return torch_inputs(self.source, items)

    def arithmetic(self) -> Any:
        """The context every forward pass runs in: bf16 autocast, or plain fp32."""
        import torch

        if self.config.compute == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def teacher_outputs(self, texts: list[str]) -> Any:
        import torch

        with torch.inference_mode(), self.arithmetic():
            outputs = [self.teacher(*self.tensors(texts[i : i + 64])) for i in range(0, len(texts), 64)]
        return torch.cat(outputs).float()

    def loss(self, out: Any, ref: Any) -> Any:
        import torch.nn.functional as F  # noqa: N812

        if self.task == "rerank":
            return F.mse_loss(out, ref)
        if self.task == "classification":
            t = self.config.temperature
            soft = F.kl_div(
                F.log_softmax(out / t, -1), F.log_softmax(ref / t, -1), log_target=True, reduction="batchmean"
            )
            return soft * (t * t)
        mse = F.mse_loss(out, ref) * out.shape[-1]  # summed over dimensions, mean over rows
        if not self.config.cosine_weight:
            return mse
        return mse + self.config.cosine_weight * (1 - F.cosine_similarity(out, ref, dim=-1)).mean()

    def step_loss(self, texts: list[str], reference: Any) -> Any:
        """The training loss of one batch: on the outputs, plus the hidden-state term where configured."""
        inputs = self.tensors(texts)
        if not (self.config.hidden_weight and self.layer_map):
            with self.arithmetic():
                out = self.student(*inputs)
            return self.loss(out.float(), reference)
        import torch

        teacher_layers = [t for _, t in self.layer_map]
        with torch.inference_mode(), self.arithmetic(), layer_outputs(self.teacher, teacher_layers) as wanted:
            self.teacher(*inputs)
        with self.arithmetic(), layer_outputs(self.student, [s for s, _ in self.layer_map]) as got:
            out = self.student(*inputs)
        out = out.float()
        mask = inputs[1].unsqueeze(-1).to(out.dtype)
        hidden = sum(
            (((g.float() - w.float().clone()) ** 2) * mask).sum() / (mask.sum() * g.shape[-1])
            for g, w in zip(got, wanted, strict=True)
        )
        return self.loss(out, reference) + self.config.hidden_weight * hidden / len(self.layer_map)

    def validation_loss(self, texts: list[str], reference: Any) -> float:
        import torch

        self.student.eval()
        total = 0.0
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                chunk = texts[i : i + 64]
                with self.arithmetic():
                    out = self.student(*self.tensors(chunk))
                total += float(self.loss(out.float(), reference[i : i + 64])) * len(chunk)
        self.student.train()
        return total / len(texts)

    def fit(self, train: list[str], validation: list[str]) -> tuple[list[dict[str, float]], float]:
        """Train with early stopping; the student ends with its best epoch's weights. Returns the history."""
        import torch

        config, rng = self.config, random.Random(self.config.seed)
        train_ref, val_ref = self.teacher_outputs(train), self.teacher_outputs(validation)
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.learning_rate)
        steps = config.epochs * math.ceil(len(train) / config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, config.learning_rate, total_steps=steps, pct_start=0.1
        )
        history = [{"epoch": 0, "validation_loss": self.validation_loss(validation, val_ref)}]
        best, stale = history[0]["validation_loss"], 0
        best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}  # no epoch may beat it
        for epoch in range(1, config.epochs + 1):
            train_loss = 0.0
            for rows in tqdm(_batches(train, config.batch_size, rng), desc=f"distill epoch {epoch}", disable=None):
                loss = self.step_loss([train[i] for i in rows], train_ref[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                train_loss += float(loss.detach()) * len(rows)
            val_loss = self.validation_loss(validation, val_ref)
            history.append({"epoch": epoch, "train_loss": train_loss / len(train), "validation_loss": val_loss})
            log.info("distill epoch %d: %s", epoch, history[-1])
            if val_loss < best:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
        self.student.load_state_dict(best_state)
        return history, best


def _student(
    config: DistillConfig, source: SourceModel, target: Path, student_input: Path
) -> tuple[Any, dict[str, Any]]:
    """Write the untrained student to ``target``; return it (train mode) and what to report about it."""
    if source.format == "module":
        from dataclasses import replace

        from optimizers.modules import ModuleSpec, build_module, save_module

        if config.student_class is None:
            raise ValueError("distilling a module teacher needs `student_class` (a class in the teacher's code)")
        spec = replace(ModuleSpec.read(source.path), cls=config.student_class, kwargs=config.student_kwargs)
        student = build_module(source.path, spec)
        save_module(student, spec, source.path, target)
        return student.train(), {"student_class": config.student_class, "student_kwargs": config.student_kwargs}
    from modelpkg.runtimes.torch import load_model

    if config.student_from_input:
        shutil.copytree(student_input, target, dirs_exist_ok=True)
        return load_model(target, source.task, source.pooling).train(), {"student": "the pass's input"}
    dropping = config.layers or config.keep_layers
    if (dropping is None) == (config.student is None):
        raise ValueError(
            "distill needs one of `layers` / `keep_layers` (layer dropping) or `student` (a model directory)"
        )
    if config.student is not None:
        shutil.copytree(Path(config.student), target, dirs_exist_ok=True)
        details: dict[str, Any] = {"student": config.student}
    else:
        details = layer_dropped_student(source.path, source.task, dropping, target)  # type: ignore[arg-type]
    return load_model(target, source.task, source.pooling).train(), details


def _teacher(source: SourceModel) -> Any:
    if source.format == "module":
        from optimizers.modules import load_module

        return load_module(source.path)
    from modelpkg.runtimes.torch import load_model

    return load_model(source.path, source.task, source.pooling)


def _save_student(student: Any, source: SourceModel, target: Path) -> None:
    if source.format == "module":
        from optimizers.modules import ModuleSpec, save_module

        save_module(student, ModuleSpec.read(target), target, target)
        return
    inner = student.encoder if hasattr(student, "encoder") else student.classifier
    inner.save_pretrained(target, safe_serialization=True)


def _layer_map(details: dict[str, Any], student: Any, teacher: Any) -> tuple[tuple[int, int], ...]:
    """(student layer, teacher layer) pairs the hidden-state loss compares: the layers a layer-dropped student
    kept, or each layer with itself for a student as deep as its teacher (a pruned one); else none."""
    if "kept_layers" in details:
        return tuple(enumerate(details["kept_layers"]))
    try:
        inner = [getattr(m, "encoder", None) or m.classifier for m in (student, teacher)]
        depths = [len(getattr(*_layer_list(m))) for m in inner]
        widths = [m.config.hidden_size for m in inner]
    except (AttributeError, ValueError):  # a module student, an image classifier: no layer map
        return ()
    return tuple((i, i) for i in range(depths[0])) if depths[0] == depths[1] and widths[0] == widths[1] else ()


@register("distill", DistillConfig, accepts=("hf", "module"), libraries=("torch", "transformers"), version=5)
def distill(artifact: Artifact, config: DistillConfig, context: PassContext) -> PassOutput:
    """Train a smaller student (layer dropping, user-given, or a module class) to reproduce the teacher."""
    import torch

    source = context.source if config.student_from_input else context.source_for(artifact)
    target = out_path(context, "model")
    torch.manual_seed(config.seed)
    student, details = _student(config, source, target, artifact.path)
    teacher = _teacher(source)
    distiller = Distiller(
        teacher=teacher,
        student=student,
        source=source,
        task=source.task,
        config=config,
        layer_map=_layer_map(details, student, teacher),
    )
    if config.hidden_weight:
        if not distiller.layer_map:
            raise ValueError(
                "hidden_weight: the student's layers do not map onto the teacher's (different depth or width)"
            )
        details["hidden_state_layers"] = [list(pair) for pair in distiller.layer_map]
    train = context.train[: config.max_train_samples] if config.max_train_samples else context.train
    if config.augment and source.tokenizer is not None and source.task != "rerank":
        train = augmented(train, config.augment, config.seed)
    with fake_quantized(distiller.student) if config.qat else nullcontext(0) as quantized_layers:
        history, best = distiller.fit(train, context.validation)
    if config.qat:
        details["qat"] = {"scheme": QAT_SCHEME, "linear_layers": quantized_layers}
    _save_student(distiller.student, source, target)
    details.update(history=history, best_validation_loss=best, train_samples=len(train))
    return PassOutput(Artifact(target, artifact.format, "fp32"), details)
