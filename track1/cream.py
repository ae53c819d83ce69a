"""Prioritized-path distillation (Cream of the Crop): the path board, teacher choice and its loss.

Cream (Peng et al., NeurIPS 2020) keeps a board of the K best paths seen during supernet training
and distils each sampled path from one of them with

    loss = (rho * KD + (2 - rho) * CE) / 2,

KD being the soft cross-entropy to the teacher path's detached softmax on the current batch and
CE the label cross-entropy. The teacher is the best board path ("top1", rho = 1) or the one a
small matching network scores highest against the student ("meta", rho = sigmoid(-score)).

The matching network only influences training through rho, and is learnt by a one-step
look-ahead of the student (`meta_step`): d CE_held(W - lr * grad L(W, rho)) / d rho, chained
into the matcher. Paddle 3.3.1's double backward cannot take that derivative through this
supernet on CPU (see `double_backward_probe`: conv2d's double grad silently drops the path
through its upstream gradient, and max_pool2d, batch_norm, flatten, log_softmax and
cross_entropy have no usable double grad). It is not needed: L is linear in rho, so

    d grad_W L / d rho = (grad_W KD - grad_W CE) / 2,

and the look-ahead hypergradient is exactly
    d CE_held(W') / d rho = -lr / 2 * < grad CE_held(W'), grad KD(W) - grad CE(W) >,
which takes three first-order backward passes and no second derivatives (`meta_step`).

Nothing here touches a global RNG: the board is deterministic given its inputs, the matcher is
initialised from a numpy Generator, and every extra forward (teacher, board probes, look-ahead)
leaves the supernet's BN statistics as it found them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .losses import label_loss, soft_cross_entropy
from .space import Arch, SearchSpace, Widths

PICK_MODES = ("top1", "meta")


# -- the board ------------------------------------------------------------------------------------
@dataclasses.dataclass
class BoardEntry:
    acc: float          # the path's top-1 on the training batch it was recorded on
    flops: int
    code: str
    inputs: np.ndarray  # [m, C, H, W] a slice of that batch
    soft: np.ndarray    # [m, classes] the path's softmax on those inputs at recording time

    def state(self) -> dict:
        return {"acc": float(self.acc), "flops": int(self.flops), "code": str(self.code),
                "inputs": np.asarray(self.inputs), "soft": np.asarray(self.soft)}


def _numpy(value) -> np.ndarray:
    """paddle.load turns the numpy arrays of a saved dict into Tensors; turn them back."""
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    return np.asarray(value)


class PathBoard:
    """The K best paths seen, best first: higher batch accuracy, ties broken by fewer FLOPs.

    A path enters if the board has room, or its accuracy beats the worst entry's by more than
    `gap`, or it is at least as accurate as the worst entry with fewer FLOPs; it then replaces
    the worst entry. A code already on the board is updated in place with the new measurement
    (the supernet has moved on since the old one), so no code is ever held twice.
    """

    def __init__(self, capacity: int = 10, gap: float = 0.0):
        if capacity < 1:
            raise ValueError(f"board capacity must be at least 1, got {capacity}")
        self.capacity, self.gap = int(capacity), float(gap)
        self.entries: list[BoardEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, code: str) -> bool:
        return any(e.code == code for e in self.entries)

    def _sort(self) -> None:
        self.entries.sort(key=lambda e: (-e.acc, e.flops))

    def consider(self, acc: float, flops: int, code: str, inputs, soft) -> bool:
        """Offer a path to the board; True if it is on the board afterwards."""
        entry = BoardEntry(float(acc), int(flops), str(code), _numpy(inputs).copy(),
                           _numpy(soft).copy())
        for i, e in enumerate(self.entries):
            if e.code == entry.code:
                self.entries[i] = entry
                self._sort()
                return True
        if len(self.entries) < self.capacity:
            self.entries.append(entry)
            self._sort()
            return True
        worst = self.entries[-1]
        if entry.acc > worst.acc + self.gap or (entry.acc >= worst.acc and entry.flops < worst.flops):
            self.entries[-1] = entry
            self._sort()
            return True
        return False

    def best(self, exclude: str | None = None) -> BoardEntry | None:
        for e in self.entries:
            if e.code != exclude:
                return e
        return None

    @property
    def mean_acc(self) -> float:
        return float(np.mean([e.acc for e in self.entries])) if self.entries else float("nan")

    @property
    def mean_flops(self) -> float:
        return float(np.mean([e.flops for e in self.entries])) if self.entries else float("nan")

    def state_dict(self) -> dict:
        """Plain Python and numpy values only, so that paddle.save/paddle.load round-trip it."""
        return {"capacity": self.capacity, "gap": self.gap,
                "entries": [e.state() for e in self.entries]}

    def set_state_dict(self, state: dict) -> None:
        self.capacity, self.gap = int(state["capacity"]), float(state["gap"])
        self.entries = [BoardEntry(float(e["acc"]), int(e["flops"]), str(e["code"]),
                                   _numpy(e["inputs"]), _numpy(e["soft"]))
                        for e in state["entries"]]
        self._sort()


# -- the loss -------------------------------------------------------------------------------------
def cream_loss(student_logits: paddle.Tensor, teacher_probs: paddle.Tensor, labels: paddle.Tensor,
               rho, smoothing: float = 0.0) -> paddle.Tensor:
    """(rho * KD + (2 - rho) * CE) / 2: rho = 1 gives (KD + CE) / 2, rho = 0 gives CE.

    teacher_probs is detached here whatever the caller passes; rho may be a float or a Tensor
    (the look-ahead differentiates through it).
    """
    kd = soft_cross_entropy(student_logits, teacher_probs.detach())
    ce = label_loss(student_logits, labels, smoothing)
    return (rho * kd + (2 - rho) * ce) / 2


# -- the matching network -------------------------------------------------------------------------
class MetaMatcher(nn.Layer):
    """Scores a board path against the student on the path's stored inputs.

    Features per stored image: [p_student - p_path, |p_student - p_path|] (softmax outputs);
    one linear layer (hidden=0) or a ReLU MLP maps them to a number; the score of the path is
    the mean over its stored images. It carries its own Adam state, kept in `state_dict()`,
    so a checkpoint restores the matcher and its optimizer together.
    """

    def __init__(self, num_classes: int, hidden: int = 0, lr: float = 1e-3,
                 rng: np.random.Generator | None = None, init_std: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_classes, self.hidden = int(num_classes), int(hidden)
        self.lr, self.betas, self.eps = float(lr), tuple(betas), float(eps)
        dims = [2 * self.num_classes] + ([self.hidden] if self.hidden else []) + [1]
        self._layers: list[tuple[str, str]] = []
        # Own name prefix: the matcher never shares a global parameter name with the supernet.
        with paddle.utils.unique_name.guard("cream_matcher_"):
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
                std = init_std if i == len(dims) - 2 else math.sqrt(2.0 / d_in)
                w = rng.standard_normal((d_in, d_out)).astype("float32") * std
                self.add_parameter(f"w{i}", self.create_parameter(
                    [d_in, d_out], default_initializer=nn.initializer.Assign(w)))
                self.add_parameter(f"b{i}", self.create_parameter(
                    [d_out], is_bias=True, default_initializer=nn.initializer.Constant(0.0)))
                self._layers.append((f"w{i}", f"b{i}"))
        self.adam_t = 0
        self.adam_m = {n: np.zeros(p.shape, "float32") for n, p in self.named_parameters()}
        self.adam_v = {n: np.zeros(p.shape, "float32") for n, p in self.named_parameters()}

    def forward(self, student_probs: paddle.Tensor, path_probs: paddle.Tensor) -> paddle.Tensor:
        """Score (a 0-d tensor) of one path from [m, classes] softmax outputs on its inputs."""
        d = student_probs - path_probs
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

    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        """One Adam step from named numpy gradients."""
        b1, b2 = self.betas
        self.adam_t += 1
        for name, p in self.named_parameters():
            g = grads[name]
            self.adam_m[name] = b1 * self.adam_m[name] + (1 - b1) * g
            self.adam_v[name] = b2 * self.adam_v[name] + (1 - b2) * g * g
            m_hat = self.adam_m[name] / (1 - b1 ** self.adam_t)
            v_hat = self.adam_v[name] / (1 - b2 ** self.adam_t)
            p.set_value((p.numpy() - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype("float32"))

    # Not the nn.Layer format: plain numpy plus the optimizer, like every other training extra.
    def state_dict(self, *args, **kwargs) -> dict:  # type: ignore[override]
        return {"weights": {n: p.numpy() for n, p in self.named_parameters()},
                "adam": {"t": int(self.adam_t), "m": dict(self.adam_m), "v": dict(self.adam_v)}}

    def set_state_dict(self, state: dict, *args, **kwargs) -> None:  # type: ignore[override]
        own = dict(self.named_parameters())
        weights = state["weights"]
        if set(weights) != set(own):
            raise ValueError(f"matcher state has parameters {sorted(weights)}, expected {sorted(own)}")
        for n, p in own.items():
            value = _numpy(weights[n])
            if list(value.shape) != list(p.shape):
                raise ValueError(f"matcher parameter {n} has shape {value.shape}, expected {p.shape}")
            p.set_value(value.astype("float32"))
        self.adam_t = int(state["adam"]["t"])
        self.adam_m = {n: _numpy(v).astype("float32") for n, v in state["adam"]["m"].items()}
        self.adam_v = {n: _numpy(v).astype("float32") for n, v in state["adam"]["v"].items()}


# -- teacher choice -------------------------------------------------------------------------------
@dataclasses.dataclass
class TeacherChoice:
    index: int            # position on the board
    entry: BoardEntry
    rho: float            # KD weight of cream_loss
    score: float | None   # the matcher's score (meta only)


def _probs(logits) -> paddle.Tensor:
    t = logits if isinstance(logits, paddle.Tensor) else paddle.to_tensor(np.asarray(logits))
    return F.softmax(t.detach().astype("float32"), axis=-1)


def choose_teacher(board: PathBoard, student_logits: Sequence | None = None, mode: str = "top1",
                   matcher: MetaMatcher | None = None, exclude: str | None = None,
                   top1_rho: float = 1.0) -> TeacherChoice | None:
    """The board path that teaches the student, or None if the board has no candidate.

    student_logits: the student's logits on each board entry's stored inputs, in board order
    (needed by "meta" only). exclude: the student's own code (a path never teaches itself).
    top1_rho: the KD weight of "top1" (1 here; Cream's released code uses 0.5).

    Sign convention of "meta" (Cream's code): the highest-scoring path teaches with
    rho = sigmoid(-score). The score reads as a learned *mismatch*: the path the student is most
    off from has the most to teach, and the farther off it is, the less its soft labels are
    trusted against the true labels (KD weight rho down, CE weight 2 - rho up), so a remote
    teacher cannot drag the student far in one step. Since the matcher learns only through rho
    (the argmax is not differentiable), the look-ahead decides what a high score must mean.
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
        scores = matcher.scores([_probs(s) for s in student_logits], board).numpy()
    best = max(candidates, key=lambda i: (scores[i], -i))  # ties: the better board entry
    score = float(scores[best])
    return TeacherChoice(best, board.entries[best], float(_sigmoid(-score)), score)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# -- supernet helpers -----------------------------------------------------------------------------
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
    """The student's logits on every entry's stored inputs (one no-grad forward, train-mode BN)."""
    if not board.entries:
        return []
    x = paddle.to_tensor(np.concatenate([e.inputs for e in board.entries]))
    with paddle.no_grad(), preserved_buffers(model):
        out = model(x, widths)
    sizes = [len(e.inputs) for e in board.entries]
    return list(paddle.split(out, sizes, axis=0)) if len(sizes) > 1 else [out]


def teacher_probs(model: nn.Layer, widths: Widths, x: paddle.Tensor) -> paddle.Tensor:
    """The teacher path's detached softmax on a batch (train-mode BN, statistics untouched)."""
    with paddle.no_grad(), preserved_buffers(model):
        return F.softmax(model(x, widths), axis=-1)


def _all_reduce_mean(values: np.ndarray) -> np.ndarray:
    world = paddle.distributed.get_world_size()
    if world <= 1:
        return values
    t = paddle.to_tensor(values)
    paddle.distributed.all_reduce(t)
    return t.numpy() / world


# -- the meta update ------------------------------------------------------------------------------
def lookahead_hypergradient(model: nn.Layer, widths: Widths, t_probs: paddle.Tensor,
                            x_train: paddle.Tensor, y_train: paddle.Tensor, x_held: paddle.Tensor,
                            y_held: paddle.Tensor, lr: float, rho: float,
                            smoothing: float = 0.0) -> tuple[float, float]:
    """(d CE_held(W'(rho)) / d rho, CE_held(W'(rho))) for W'(rho) = W - lr * grad cream_loss(rho).

    cream_loss is linear in rho, so d W' / d rho = -lr * (grad KD(W) - grad CE(W)) / 2 and the
    derivative is -lr / 2 * <grad CE_held(W'), grad KD(W) - grad CE(W)>: exact, from three
    first-order backward passes. The weights are put back afterwards; .grad is never touched
    (paddle.grad). BN statistics do move: callers wrap this in preserved_buffers.
    """
    params = [p for p in model.parameters() if not p.stop_gradient]
    out = model(x_train, widths)
    kd = soft_cross_entropy(out, t_probs.detach())
    ce = label_loss(out, y_train, smoothing)
    g_kd = paddle.grad(kd, params, retain_graph=True, allow_unused=True)
    g_ce = paddle.grad(ce, params, allow_unused=True)
    used = [(p, a, b) for p, a, b in zip(params, g_kd, g_ce) if a is not None or b is not None]
    saved = [p.clone() for p, _, _ in used]
    diffs = []
    with paddle.no_grad():
        for p, a, b in used:
            a = a if a is not None else paddle.zeros_like(p)
            b = b if b is not None else paddle.zeros_like(p)
            p.set_value(p - lr * (rho * a + (2 - rho) * b) / 2)
            diffs.append(a - b)
    try:
        held = label_loss(model(x_held, widths), y_held)
        g_held = paddle.grad(held, [p for p, _, _ in used], allow_unused=True)
    finally:
        with paddle.no_grad():
            for (p, _, _), value in zip(used, saved):
                p.set_value(value)
    dot = sum(float((g * d).sum().item()) for g, d in zip(g_held, diffs) if g is not None)
    return -lr / 2 * dot, float(held.item())


def meta_step(model: nn.Layer, matcher: MetaMatcher, board: PathBoard, space: SearchSpace,
              student: Arch, x_train: paddle.Tensor, y_train: paddle.Tensor,
              x_held: paddle.Tensor, y_held: paddle.Tensor, lr: float,
              smoothing: float = 0.0) -> dict:
    """One update of the matcher by a one-step look-ahead of the student; returns scalars to log.

    rho(theta) = sigmoid(-score_theta(chosen path)); the student's simulated SGD step on
    cream_loss(rho) over (x_train, y_train) gives W'(rho); the matcher descends
    CE(W'(rho); x_held, y_held). The derivative is exact for that plain-SGD step, computed from
    first-order gradients only (module docstring): Paddle's double backward is not usable here.
    Momentum, weight decay and clipping of the real optimizer are not simulated. The supernet's
    weights, BN statistics and .grad are left unchanged; lr is the student's current lr.
    With several ranks the matcher's gradient is averaged over them (identical matchers).
    """
    if len(board) == 0:
        return {}
    widths = space.widths(student)
    model.train()
    with preserved_buffers(model):
        # The teacher the matcher picks now, and rho as a function of the matcher's weights.
        logits = student_logits_on_board(model, widths, board)
        probs = [_probs(s) for s in logits]
        choice = choose_teacher(board, logits, "meta", matcher, exclude=student.code)
        if choice is None:
            return {}
        score = matcher(probs[choice.index], paddle.to_tensor(choice.entry.soft))
        rho = F.sigmoid(-score)
        rho0 = float(rho.item())
        t_probs = teacher_probs(model, space.widths(choice.entry.code), x_train)

        d_rho, held = lookahead_hypergradient(model, widths, t_probs, x_train, y_train, x_held,
                                              y_held, lr, rho0, smoothing)

    # Chain rule into the matcher: grad_theta = d_rho * d rho / d theta.
    names = [n for n, _ in matcher.named_parameters()]
    grads = paddle.grad(rho * d_rho, [p for _, p in matcher.named_parameters()], allow_unused=True)
    grads = {n: (g.numpy() if g is not None else np.zeros(p.shape, "float32"))
             for n, g, (_, p) in zip(names, grads, matcher.named_parameters())}
    if paddle.distributed.get_world_size() > 1:
        flat = _all_reduce_mean(np.concatenate([grads[n].ravel() for n in names]))
        offset = 0
        for n in names:
            size = grads[n].size
            grads[n] = flat[offset:offset + size].reshape(grads[n].shape).astype("float32")
            offset += size
    matcher.apply_gradients(grads)
    return {"cream/meta_held_loss": held, "cream/meta_rho": rho0,
            "cream/meta_drho": d_rho, "cream/meta_teacher": float(choice.index)}


def double_backward_probe(model: nn.Layer, widths: Widths, x: paddle.Tensor,
                          y: paddle.Tensor) -> tuple[bool, str]:
    """Can paddle.grad(create_graph=True) differentiate a gradient of cream_loss w.r.t. rho?

    Returns (works, reason). "works" also requires the value to agree with the closed form
    d/d rho |g(rho)|^2 = <g(rho), g_kd - g_ce>, so that a silently dropped path counts as a
    failure. Runs in train mode and leaves the BN statistics unchanged.
    """
    params = [p for p in model.parameters() if not p.stop_gradient]
    with preserved_buffers(model):
        t_probs = F.softmax(paddle.to_tensor(
            np.full([x.shape[0], model.space.num_classes], 1.0 / model.space.num_classes,
                    "float32")), axis=-1)
        rho = paddle.to_tensor(0.5, stop_gradient=False)
        try:
            out = model(x, widths)
            loss = cream_loss(out, t_probs, y, rho)
            gs = paddle.grad(loss, params, create_graph=True, allow_unused=True)
            sq = paddle.add_n([(g * g).sum() for g in gs if g is not None])
            (d,) = paddle.grad(sq, [rho], allow_unused=True)
        except Exception as e:  # Paddle raises RuntimeError/ValueError for missing double grads
            return False, f"double backward raises: {str(e).splitlines()[0][:200]}"
        if d is None:
            return False, "double backward silently returns no gradient for rho"
        out = model(x, widths)
        g_kd = paddle.grad(soft_cross_entropy(out, t_probs), params, retain_graph=True,
                           allow_unused=True)
        g_ce = paddle.grad(label_loss(out, y), params, allow_unused=True)
    exact = 0.0
    for g, a, b in zip(gs, g_kd, g_ce):
        if g is not None:
            a = a if a is not None else paddle.zeros_like(g)
            b = b if b is not None else paddle.zeros_like(g)
            exact += float((g.detach() * (a - b)).sum().item())
    if not np.isclose(float(d.item()), exact, rtol=1e-3, atol=1e-6):
        return False, f"double backward gives {float(d.item()):.6g}, the closed form {exact:.6g}"
    return True, "double backward agrees with the closed form"


# -- the training-loop facade ---------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """What one student learns from this step."""

    teacher_code: str
    teacher_probs: paddle.Tensor
    rho: float
    score: float | None
    rank: int  # the teacher's place on the board, 0 = best batch accuracy


class Cream:
    """Board + teacher choice + matcher, driven by the train.cream config section.

    The loop calls `plan` before the step's forward (teachers' soft labels), `observe` with each
    student's training logits (board update), `meta_step` after the optimizer step when
    `meta_due`, and `state_dict`/`set_state_dict` with the checkpoints.
    """

    def __init__(self, space: SearchSpace, capacity: int = 10, gap: float = 0.0,
                 pick: str = "top1", warmup_epochs: float = 1.0,
                 roles: Iterable[str] = ("random",), store_images: int = 8,
                 meta_every: int = 200, meta_lr: float = 1e-3, meta_hidden: int = 0,
                 meta_seed: int = 0, smoothing: float = 0.0, top1_rho: float = 1.0):
        if pick not in PICK_MODES:
            raise ValueError(f"unknown teacher pick {pick!r}: expected one of {PICK_MODES}")
        self.space, self.pick, self.warmup_epochs = space, pick, float(warmup_epochs)
        self.roles, self.store_images = tuple(roles), int(store_images)
        self.meta_every, self.smoothing = int(meta_every), float(smoothing)
        self.top1_rho = float(top1_rho)
        self.board = PathBoard(capacity, gap)
        self.matcher = (MetaMatcher(space.num_classes, meta_hidden, meta_lr,
                                    np.random.default_rng(int(meta_seed)))
                        if pick == "meta" else None)

    @classmethod
    def from_config(cls, cfg: dict, space: SearchSpace) -> "Cream":
        c = cfg["train"]["cream"]
        return cls(space, capacity=int(c["board_size"]), gap=float(c["gap"]), pick=c["pick"],
                   warmup_epochs=float(c["warmup_epochs"]), roles=list(c["roles"]),
                   store_images=int(c["store_images"]), meta_every=int(c["meta_every"]),
                   meta_lr=float(c["meta_lr"]), meta_hidden=int(c["meta_hidden"]),
                   meta_seed=int(c["meta_seed"]), top1_rho=float(c["top1_rho"]),
                   smoothing=float(cfg["train"]["label_smoothing"]))

    def active(self, epoch: float) -> bool:
        """Board recording and distillation start after the warm-up."""
        return epoch >= self.warmup_epochs

    def plan(self, model: nn.Layer, students: Sequence[Arch], x: paddle.Tensor) -> list[Plan | None]:
        """Each student's teacher and its soft labels on x (None: no teacher, plain CE).

        Teacher forwards are no-grad and shared between students with the same teacher.
        """
        plans: list[Plan | None] = []
        cache: dict[str, paddle.Tensor] = {}
        for arch in students:
            logits = (student_logits_on_board(model, self.space.widths(arch), self.board)
                      if self.pick == "meta" and len(self.board) else None)
            choice = choose_teacher(self.board, logits, self.pick, self.matcher, exclude=arch.code,
                                    top1_rho=self.top1_rho)
            if choice is None:
                plans.append(None)
                continue
            code = choice.entry.code
            if code not in cache:
                cache[code] = teacher_probs(model, self.space.widths(code), x)
            plans.append(Plan(code, cache[code], choice.rho, choice.score, choice.index))
        return plans

    def observe(self, arch: Arch, logits: paddle.Tensor, x: paddle.Tensor, y: paddle.Tensor) -> bool:
        """Offer a student to the board with its training-batch accuracy (averaged over ranks)."""
        out = logits.detach()
        acc = (out.argmax(axis=-1) == y.reshape([-1]).astype("int64")).astype("float32").mean().item()
        acc = float(_all_reduce_mean(np.array([acc], "float32"))[0])
        m = min(self.store_images, x.shape[0])
        return self.board.consider(acc, self.space.flops(arch), arch.code, x[:m].numpy(),
                                   F.softmax(out[:m], axis=-1).numpy())

    def meta_due(self, step: int, epoch: float) -> bool:
        return (self.matcher is not None and self.active(epoch) and step > 0
                and step % self.meta_every == 0 and len(self.board) > 0)

    def meta_step(self, model: nn.Layer, student: Arch, x: paddle.Tensor, y: paddle.Tensor,
                  lr: float) -> dict:
        """The matcher's update on this batch: look-ahead on its first half, held-out CE on the
        second (as Cream slices its batch)."""
        h = x.shape[0] // 2
        return meta_step(model, self.matcher, self.board, self.space, student, x[:h], y[:h],
                         x[h:], y[h:], lr, self.smoothing)

    def scalars(self) -> dict:
        out = {"cream/board_size": float(len(self.board))}
        if len(self.board):
            out.update({"cream/board_acc": self.board.mean_acc,
                        "cream/board_mflops": self.board.mean_flops / 1e6})
        return out

    def state_dict(self) -> dict:
        return {"board": self.board.state_dict(),
                "matcher": self.matcher.state_dict() if self.matcher is not None else None}

    def set_state_dict(self, state: dict) -> None:
        self.board.set_state_dict(state["board"])
        if self.matcher is not None:
            if state.get("matcher") is None:
                raise ValueError("checkpoint has no matcher state but teacher pick is 'meta'")
            self.matcher.set_state_dict(state["matcher"])
