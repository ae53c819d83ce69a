"""Cream's teacher choice: the meta matching network, its Paddle optimizer, and the look-ahead it learns from.

The matcher only influences training through rho = sigmoid(-score) of the path it picks, and
learns from a one-step look-ahead of the student: d CE_held(W'(rho)) / d rho, chained into its
weights. The step W'(rho) is linear in rho, so that derivative is exact from first-order gradients
(`lookahead_hypergradient`); Paddle 3.3.1's double backward does not run through this supernet on
CPU (tests/test_cream.py shows where it fails). With rho as a function of the student's weights
(`board_rho`, Cream's code) the step also holds KD * d rho / dW. Every extra forward here leaves the
supernet's BN statistics and gradients as it found them, and its weights too unless the look-ahead's
step is applied for real (Cream's code, `real_step`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from track1.methods.board import BoardEntry, PathBoard
from track1.methods.losses import label_loss, soft_cross_entropy
from track1.space import Arch, SearchSpace, Widths


PICK_MODES = ("top1", "meta")
FEATURES = ("pairs", "flat")          # pairs: [d, |d|] per image, averaged | flat: all images, one row
INITS = ("normal", "uniform")         # normal: N(0, 0.01^2) | uniform: U(+-1/sqrt(fan_out)), timm's Linear init
LOOKAHEADS = ("full", "kd")           # the simulated student step: full Cream loss | rho * KD only
OPTIMIZERS = ("adam", "nesterov")


# -- the matching network -------------------------------------------------------------------------
class MetaMatcher(nn.Layer):
    """Scores a board path against the student from softmax outputs on the path's stored images.

    With d = p_student - p_path ([m, classes]): "pairs" maps [d, |d|] of each image through the
    layers and averages over images; "flat" (Cream's `meta_layer`) maps d flattened to one row of
    m * classes numbers, so every path must hold exactly `images` images. hidden > 0 adds a ReLU
    layer. The initialisation is a function of `rng` only.
    """

    def __init__(self, num_classes: int, images: int = 4, features: str = "pairs", hidden: int = 0,
                 init: str = "normal", rng: np.random.Generator | None = None):
        # Own name scope: parameter names (which key the optimizer's state) are the same for every
        # matcher built in any process, and never shared with the supernet.
        with paddle.utils.unique_name.guard("cream_matcher_"):
            super().__init__()
        if features not in FEATURES:
            raise ValueError(f"unknown matcher features {features!r}: expected one of {FEATURES}")
        if init not in INITS:
            raise ValueError(f"unknown matcher init {init!r}: expected one of {INITS}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_classes, self.images = int(num_classes), int(images)
        self.features, self.hidden = features, int(hidden)
        d_first = 2 * self.num_classes if features == "pairs" else self.num_classes * self.images
        dims = [d_first] + ([self.hidden] if self.hidden else []) + [1]
        self._layers: list[tuple[str, str]] = []
        with paddle.utils.unique_name.guard("cream_matcher_"):
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
                if init == "uniform":
                    bound = 1.0 / math.sqrt(d_out)
                    w = rng.uniform(-bound, bound, (d_in, d_out))
                else:
                    std = 0.01 if i == len(dims) - 2 else math.sqrt(2.0 / d_in)
                    w = rng.standard_normal((d_in, d_out)) * std
                self.add_parameter(f"w{i}", self.create_parameter(
                    [d_in, d_out], default_initializer=nn.initializer.Assign(w.astype("float32"))))
                self.add_parameter(f"b{i}", self.create_parameter(
                    [d_out], is_bias=True, default_initializer=nn.initializer.Constant(0.0)))
                self._layers.append((f"w{i}", f"b{i}"))

    def forward(self, student_probs: paddle.Tensor, path_probs: paddle.Tensor) -> paddle.Tensor:
        """Score (a 0-d tensor) of one path from [m, classes] softmax outputs on its inputs."""
        d = student_probs - path_probs
        if self.features == "flat":
            if d.shape[0] != self.images:
                raise ValueError(f"flat matcher features need {self.images} images, got {d.shape[0]}")
            h = d.reshape([1, -1])
        else:
            h = paddle.concat([d, d.abs()], axis=-1)
        for i, (w, b) in enumerate(self._layers):
            h = paddle.matmul(h, getattr(self, w)) + getattr(self, b)
            if i < len(self._layers) - 1:
                h = F.relu(h)
        return h.mean()

    def scores(self, student_probs: Sequence[paddle.Tensor], board: PathBoard) -> paddle.Tensor:
        """Scores of every board entry, [len(board)]."""
        return paddle.stack([self(s, paddle.to_tensor(e.soft))
                             for s, e in zip(student_probs, board.entries)])

    def weights(self) -> dict[str, np.ndarray]:
        return {n: p.numpy() for n, p in self.named_parameters()}

    def set_weights(self, weights: dict) -> None:
        own = dict(self.named_parameters())
        if set(weights) != set(own):
            raise ValueError(f"matcher state has parameters {sorted(weights)}, expected {sorted(own)}")
        for n, p in own.items():
            value = weights[n].numpy() if isinstance(weights[n], paddle.Tensor) else np.asarray(weights[n])
            if list(value.shape) != list(p.shape):
                raise ValueError(f"matcher parameter {n} has shape {value.shape}, expected {p.shape}")
            p.set_value(value.astype("float32"))


def matcher_optimizer(matcher: MetaMatcher, kind: str, lr: float,
                      momentum: float = 0.9) -> paddle.optimizer.Optimizer:
    """Adam, or SGD with Nesterov momentum (Cream's), on the matcher. No clipping of its own: Cream
    clips the look-ahead's gradient only, not the main step's (`apply_gradients` clips).

    Its accumulators are created now, under a fixed name scope, so that their names (the keys of
    its state dict) are the same in every process and a state saved before the first update loads.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown matcher optimizer {kind!r}: expected one of {OPTIMIZERS}")
    params = matcher.parameters()
    with paddle.utils.unique_name.guard("cream_matcher_opt_"):
        if kind == "adam":
            opt = paddle.optimizer.Adam(learning_rate=float(lr), parameters=params)
        else:
            opt = paddle.optimizer.Momentum(learning_rate=float(lr), momentum=float(momentum),
                                            parameters=params, use_nesterov=True)
        # Paddle has no public call for this (train.py does the same for the supernet's optimizer).
        opt._create_accumulators(paddle.static.default_main_program().global_block(), params)
    return opt


# -- teacher choice -------------------------------------------------------------------------------
@dataclasses.dataclass
class TeacherChoice:
    index: int            # position on the board
    entry: BoardEntry
    rho: float            # KD weight of cream_loss
    score: float | None   # the matcher's score (meta only)


def softmax_of(logits) -> paddle.Tensor:
    t = logits if isinstance(logits, paddle.Tensor) else paddle.to_tensor(np.asarray(logits))
    return F.softmax(t.detach().astype("float32"), axis=-1)


def choose_teacher(board: PathBoard, student_logits: Sequence | None = None, mode: str = "top1",
                   matcher: MetaMatcher | None = None, exclude: str | None = None,
                   top1_rho: float = 1.0) -> TeacherChoice | None:
    """The board path that teaches the student, or None if the board has no candidate.

    student_logits: the student's logits on each board entry's stored inputs, in board order
    ("meta" only). exclude: the student's own code (a path never teaches itself).
    "meta" (Cream's sign convention): the highest-scoring path teaches with rho = sigmoid(-score)
    of that same path; ties go to the better board entry. (Cream's released code takes rho from the
    LAST board entry's score, a loop-variable slip; we use the chosen path's.)
    """
    if mode not in PICK_MODES:
        raise ValueError(f"unknown teacher pick {mode!r}: expected one of {PICK_MODES}")
    candidates = [i for i, e in enumerate(board.entries) if e.code != exclude]
    if not candidates:
        return None
    if mode == "top1":
        return TeacherChoice(candidates[0], board.entries[candidates[0]], float(top1_rho), None)
    if matcher is None or student_logits is None:
        raise ValueError("teacher pick 'meta' needs the matcher and the student's logits")
    if len(student_logits) != len(board):
        raise ValueError(f"{len(student_logits)} student outputs for a board of {len(board)}")
    with paddle.no_grad():
        scores = matcher.scores([softmax_of(s) for s in student_logits], board).numpy()
    best = max(candidates, key=lambda i: (scores[i], -i))
    score = float(scores[best])
    return TeacherChoice(best, board.entries[best], _sigmoid(-score), score)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# -- supernet forwards that change nothing --------------------------------------------------------
@contextlib.contextmanager
def preserved_buffers(model: nn.Layer):
    """Run train-mode forwards that must not move the BN running statistics."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with paddle.no_grad():
            for b, value in saved:
                b.set_value(value)


def student_logits_on_board(model: nn.Layer, widths: Widths, board: PathBoard) -> list[paddle.Tensor]:
    """The student's logits on every entry's stored inputs: one no-grad forward per entry over its
    own images, as Cream's select_teacher (train-mode BN normalises by each entry's own batch)."""
    with paddle.no_grad(), preserved_buffers(model):
        return [model(paddle.to_tensor(e.inputs), widths) for e in board.entries]


def board_rho(model: nn.Layer, matcher: MetaMatcher, widths: Widths, entry: BoardEntry) -> paddle.Tensor:
    """rho = sigmoid(-score) of one board entry as a 0-d tensor with gradient to the matcher's and the
    student's weights (Cream's meta_value: the student's forward on the entry's images keeps its
    graph); BN statistics untouched."""
    with preserved_buffers(model):
        probs = F.softmax(model(paddle.to_tensor(entry.inputs), widths), axis=-1)
    return F.sigmoid(-matcher(probs, paddle.to_tensor(entry.soft)))


def teacher_probs(model: nn.Layer, widths: Widths, x: paddle.Tensor) -> paddle.Tensor:
    """The teacher path's detached softmax on a batch (train-mode BN, statistics untouched)."""
    with paddle.no_grad(), preserved_buffers(model):
        return F.softmax(model(x, widths), axis=-1)


def all_reduce_mean(values: np.ndarray) -> np.ndarray:
    world = paddle.distributed.get_world_size()
    if world <= 1:
        return values
    t = paddle.to_tensor(values)
    paddle.distributed.all_reduce(t)
    return t.numpy() / world


def apply_gradients(optimizer: paddle.optimizer.Optimizer, pairs: list, clip: float = 0.0) -> None:
    """One real step of `optimizer` on the given (weight, gradient) pairs only: gradients averaged
    over ranks (as DataParallel would), the global norm capped at clip as torch's clip_grad_norm_
    does (clip / (norm + 1e-6)); weights not listed keep a None gradient and do not move. The
    listed weights' .grad must be None on entry (the gradient is handed over through backward)."""
    grads = [g.numpy() if isinstance(g, paddle.Tensor) else np.asarray(g, "float32") for _, g in pairs]
    flat = all_reduce_mean(np.concatenate([g.ravel() for g in grads]).astype("float32"))
    if clip > 0:
        flat = flat * min(1.0, clip / (float(np.sqrt(np.sum(flat.astype("float64") ** 2))) + 1e-6))
    offset, terms = 0, []
    for (p, _), g in zip(pairs, grads):
        terms.append((p * paddle.to_tensor(flat[offset:offset + g.size].reshape(g.shape))).sum())
        offset += g.size
    paddle.add_n(terms).backward()
    optimizer.step()
    optimizer.clear_grad(set_to_zero=False)


# -- the look-ahead update ------------------------------------------------------------------------
def lookahead_hypergradient(model: nn.Layer, widths: Widths, t_probs: paddle.Tensor,
                            x_train: paddle.Tensor, y_train: paddle.Tensor, x_held: paddle.Tensor,
                            y_held: paddle.Tensor, lr: float, rho: float, kind: str = "full",
                            smoothing: float = 0.0, held_smoothing: float = 0.0,
                            real_step=None, rho_w: paddle.Tensor | None = None) -> tuple[float, float]:
    """(d CE_held(W'(rho)) / d rho, CE_held(W'(rho))) for one plain-SGD step W'(rho) of the student.

    kind "full": W' = W - lr * grad cream_loss(rho), so dW'/drho = -lr * (grad KD - grad CE) / 2.
    kind "kd" (Cream's code): W' = W - lr * rho * grad KD, so dW'/drho = -lr * grad KD.
    Either way the derivative is -lr * <grad CE_held(W'), dW'/drho / -lr>: exact, from first-order
    backward passes. The weights are put back afterwards; .grad is never touched (paddle.grad).
    rho_w (Cream's code): rho as a tensor of the student's weights (board_rho, value `rho`): the
    step then also holds d rho / dW times the loss's KD - CE part (kd: KD), as Cream's grad_1st; its
    graph is used up. The derivative's own dependence on dW/d rho through that term
    (a Jacobian-vector product, which needs double backward) is not taken.
    BN statistics do move: callers wrap this in preserved_buffers.
    real_step (Cream's code): a callable given [(weight, gradient of the look-ahead loss)] that
    updates the student for real; the held-out gradient is then taken at the updated weights,
    which stay.
    """
    if kind not in LOOKAHEADS:
        raise ValueError(f"unknown look-ahead {kind!r}: expected one of {LOOKAHEADS}")
    params = [p for p in model.parameters() if not p.stop_gradient]
    none = [None] * len(params)
    g_rho = paddle.grad(rho_w, params, allow_unused=True) if rho_w is not None else none
    out = model(x_train, widths)
    kd = soft_cross_entropy(out, t_probs.detach())
    if kind == "full":
        ce = label_loss(out, y_train, smoothing)
        g_kd = paddle.grad(kd, params, retain_graph=True, allow_unused=True)
        g_ce = paddle.grad(ce, params, allow_unused=True)
        rho_coef = (kd.item() - ce.item()) / 2   # d cream_loss / d rho
    else:
        g_kd = paddle.grad(kd, params, allow_unused=True)
        g_ce = none
        rho_coef = kd.item()
    used = [(p, a, b, c) for p, a, b, c in zip(params, g_kd, g_ce, g_rho)
            if a is not None or b is not None or c is not None]
    saved = [p.clone() for p, *_ in used] if real_step is None else []
    directions, steps = [], []  # dW'/drho / -lr, and the look-ahead loss's gradient
    with paddle.no_grad():
        for p, a, b, c in used:
            a = a if a is not None else paddle.zeros_like(p)
            if kind == "full":
                b = b if b is not None else paddle.zeros_like(p)
                step, direction = (rho * a + (2 - rho) * b) / 2, (a - b) / 2
            else:
                step, direction = rho * a, a
            steps.append(step + rho_coef * c if c is not None else step)
            directions.append(direction)
        if real_step is None:
            for (p, *_), g in zip(used, steps):
                p.set_value(p - lr * g)
    if real_step is not None:
        real_step([(p, g) for (p, *_), g in zip(used, steps)])
    try:
        held = label_loss(model(x_held, widths), y_held, held_smoothing)
        g_held = paddle.grad(held, [p for p, *_ in used], allow_unused=True)
    finally:
        with paddle.no_grad():
            for (p, *_), value in zip(used, saved):
                p.set_value(value)
    dot = sum(float((g * d).sum().item()) for g, d in zip(g_held, directions) if g is not None)
    return -lr * dot, float(held.item())


def meta_step(model: nn.Layer, matcher: MetaMatcher, opt: paddle.optimizer.Optimizer,
              board: PathBoard, space: SearchSpace, student: Arch, x_train: paddle.Tensor,
              y_train: paddle.Tensor, x_held: paddle.Tensor, y_held: paddle.Tensor, lr: float,
              kind: str = "full", smoothing: float = 0.0, held_smoothing: float = 0.0,
              real_step=None, rho_grad: bool = False, clip: float = 0.0) -> dict:
    """One update of the matcher by a look-ahead of the student; returns scalars to log.

    rho(theta) = sigmoid(-score_theta(picked path)); the matcher's gradient is
    d CE_held(W'(rho)) / d rho * d rho / d theta, averaged over ranks, its global norm capped at
    clip (torch's formula, as Cream), and `opt` takes the step. lr is the look-ahead's step size.
    Momentum, weight decay and clipping of the student's own optimizer are not simulated.
    rho_grad (Cream's code): rho is also a function of the student's weights (board_rho), so the
    look-ahead's step holds its d rho / dW term. real_step: see lookahead_hypergradient (the only
    way this changes the supernet's weights).
    """
    if len(board) == 0:
        return {}
    widths = space.widths(student)
    model.train()
    with preserved_buffers(model):
        logits = student_logits_on_board(model, widths, board)
        choice = choose_teacher(board, logits, "meta", matcher, exclude=student.code)
        if choice is None:
            return {}
        if rho_grad:
            rho = board_rho(model, matcher, widths, choice.entry)
        else:
            rho = F.sigmoid(-matcher(softmax_of(logits[choice.index]), paddle.to_tensor(choice.entry.soft)))
        rho0 = float(rho.item())
        params = matcher.parameters()
        # d rho / d theta now, before a real step moves the student weights rho's graph holds
        g_theta = paddle.grad(rho, params, retain_graph=rho_grad, allow_unused=True)
        t_probs = teacher_probs(model, space.widths(choice.entry.code), x_train)
        d_rho, held = lookahead_hypergradient(model, widths, t_probs, x_train, y_train, x_held,
                                              y_held, lr, rho0, kind, smoothing, held_smoothing,
                                              real_step, rho if rho_grad else None)

    grads = [g * d_rho if g is not None else paddle.zeros(p.shape, "float32") for g, p in zip(g_theta, params)]
    opt.clear_grad(set_to_zero=False)
    apply_gradients(opt, list(zip(params, grads)), clip)
    return {"cream/meta_held_loss": held, "cream/meta_rho": rho0,
            "cream/meta_drho": d_rho, "cream/meta_teacher": float(choice.index)}
