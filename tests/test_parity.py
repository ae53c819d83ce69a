"""Step-level parity of the authors' presets with their released code (issues 22, 28).

One step of configs/cream_authors.yaml and configs/rdnas_authors.yaml on a tiny supernet, through the
Trainer, against a reference step written here from the authors' formulas: microsoft/Cream
(lib/core/train.py, lib/models/MetaMatchingNetwork.py, PrioritizedBoard.py, lib/utils/util.py) and
pprp/CVPR2022-NAS-competition-Track1-3th-solution (train_supernet.py, hnas/utils/hapi_wrapper.py,
pairwise_rank.py, hnas/models/resnet_mish.py, their PaddleSlim SuperBatchNorm2D). The presets' own
optimizers run (momentum, Nesterov for Cream, weight decay, no clipping; Cream's matcher with its
Nesterov momentum and linearly decaying lr), after one earlier step so that momentum has a velocity
to carry; the reference takes the gradient of the authors' loss with paddle.grad, never through the
project's methods, and applies their optimizer's rule by hand. RD-NAS's reference runs the subnet
itself (`_authors_forward`: Mish after each residual add, BN on the starting network's running
statistics). Where the project departs on purpose (docs/METHODS.md) the reference follows the
documented choice and says so.

Mutations checked by hand to fail a test here (issue 28; each broken once, the file run, restored):
- RD-NAS rank term: the FLOPs_a > FLOPs_b branch replaced by 0; ties sent to 0; ties sent to the
  other branch (each order's batch is chosen so that the branch tested is non-zero on every pair);
- Cream: one concatenated forward over all board entries instead of one per entry (each entry
  stores images of its own batch);
- momentum 0 (student or matcher), Nesterov off in Cream / on in RD-NAS, the matcher's lr without
  its linear decay, Cream's student lr cosine instead of linear;
- train.bn_stats batch instead of frozen (rdnas_authors), space.act relu instead of mish;
- weight decay or gradient clipping present where the authors have none, or absent where they
  have it (read back from the built optimizer too: one step of a small decay is below tolerance).
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.methods.matcher import preserved_buffers
from track1.pipeline.config import load_config
from track1.pipeline.trainer import Trainer
from track1.ranking.evaluate import calibrate_bn
from track1.space import STEM_POOL, layer_sequence

from conftest import REPO

TINY = ["space.width_mult=0.125", "train.visualdl=false"]
# plain SGD (for the rho-gradient check only)
PLAIN = TINY + ["train.momentum=0.0", "train.weight_decay=0.0", "train.grad_clip=0.0", "train.warmup_epochs=0.0"]
STEPS_PER_EPOCH = 10


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (paddle.to_tensor(rng.standard_normal((n, 3, 32, 32)).astype("float32")),
            paddle.to_tensor(rng.integers(0, 10, n).astype("int64")))


def _params(model):
    return [p for p in model.parameters() if not p.stop_gradient]


def _values(params):
    return [p.numpy().copy() for p in params]


def _set(params, values):
    with paddle.no_grad():
        for p, v in zip(params, values):
            p.set_value(v)


def _sgd(params, grads, lr, scale=1.0):
    with paddle.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.set_value(p - lr * scale * g)


def _velocities(optimizer, params):
    acc = optimizer._accumulators["velocity"]
    return [acc[p.name].numpy().copy() for p in params]


def _momentum_step(params, grads, velocity, lr, mu, nesterov, decay, scale=1.0):
    """torch's SGD (= Paddle's Momentum) on the weights with a gradient: g = scale * grad + wd * w,
    v = mu * v + g, w -= lr * (g + mu * v) with Nesterov, else lr * v. `velocity` (numpy) is
    updated in place; weights without a gradient keep their value and velocity."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        w = p.numpy()
        g = scale * (g.numpy() if isinstance(g, paddle.Tensor) else g) + decay[i] * w
        velocity[i] = mu * velocity[i] + g
        _set([p], [w - lr * (g + mu * velocity[i] if nesterov else velocity[i])])


def _check_optimizer(opt, momentum, nesterov, weight_decay):
    """The built optimizer's settings, read back: a small weight decay or a clip that never bites
    moves one step by less than the tolerance below."""
    assert (opt._momentum, opt._use_nesterov, opt._grad_clip) == (momentum, nesterov, None)
    decay = {len(p.shape) > 1: g["regularization_coeff"] for g in opt._param_groups for p in g["params"]}
    assert decay == {True: pytest.approx(weight_decay), False: 0.0}  # none on BN and biases (both authors)


def _torch_clip(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s factor, as Cream calls it."""
    norm = math.sqrt(sum(float((g.astype("float64") ** 2).sum().item()) for g in grads if g is not None))
    return min(1.0, max_norm / (norm + 1e-6))


def _soft_ce(logits, probs):  # Cream's cross_entropy_loss_with_soft_target
    return -(probs * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


def _smoothed_ce(logits, y, s):  # timm's LabelSmoothingCrossEntropy
    logp = F.log_softmax(logits, axis=-1)
    nll = -paddle.take_along_axis(logp, y.reshape([-1, 1]), axis=1).reshape([-1])
    return ((1 - s) * nll + s * (-logp.mean(axis=-1))).mean()


def _assert_same_updates(before, after_ref, after_run, names):
    """Every parameter's update equal to float tolerance (absolute: 1e-4 of the largest update, the
    float32 resolution of the weights the updates are read from); returns the largest update."""
    largest = max(float(np.abs(r - b).max()) for b, r in zip(before, after_ref))
    for b, r, a, n in zip(before, after_ref, after_run, names):
        np.testing.assert_allclose(a - b, r - b, rtol=2e-4, atol=1e-4 * largest, err_msg=n)
    return largest


# -- Cream ----------------------------------------------------------------------------------------
# create_optimizer_supernet: SGD, momentum 0.9, Nesterov, WEIGHT_DECAY 1e-4 but none on 1-D weights and
# biases (add_weight_decay_supernet), no clipping of the main step; LambdaLR(LR - step / ITERS).
CREAM_MOMENTUM, CREAM_DECAY, CREAM_LR, CREAM_META_LR = 0.9, 1e-4, 0.125, 0.05
CREAM_STEPS = 6 * STEPS_PER_EPOCH


def _cream_trainer(tmp_path):
    cfg = load_config(REPO / "configs" / "cream_authors.yaml", TINY + [
        f"run.output_dir={tmp_path}", "train.cream.board_size=3", "train.cream.meta_every_steps=4",
        f"train.cream.meta_lr={CREAM_META_LR}"])
    tr = Trainer(cfg, STEPS_PER_EPOCH)
    return tr, tr.methods[0]


def _select_teacher(model, matcher, board, widths, exclude):
    """PrioritizedBoard.select_teacher, pick meta: per entry one forward over its own images, the
    flat difference through meta_layer; the highest score teaches with rho = sigmoid(-score) (of
    that path: the documented fix of their loop-variable slip), rho keeping its graph."""
    scores = []
    with preserved_buffers(model):  # BN statistics: the documented choice
        for e in board.entries:
            p = F.softmax(model(paddle.to_tensor(e.inputs), widths), axis=-1)
            d = (p - paddle.to_tensor(e.soft)).reshape([1, -1])
            scores.append((paddle.matmul(d, matcher.w0) + matcher.b0).reshape([]))
    best = max((i for i, e in enumerate(board.entries) if e.code != exclude),
               key=lambda i: (scores[i].item(), -i))
    return best, F.sigmoid(-scores[best])


def _cream_meta_reference(model, matcher, board, space, student, x, y, lr, meta_lr, smoothing, vel):
    """MetaMatchingNetwork.run_update: kd_loss = meta_value * KD on input[:4]; grad_1st (with
    KD * d meta_value / dW); update_student_weights_only: the student's optimizer (momentum,
    Nesterov, weight decay) on grad_1st clipped to norm 1; validation CE on input[4:8] at the
    updated weights; the matcher's hypergradient (documented: every weight, first order in rho)
    clipped to 1, a Nesterov step at the meta lr."""
    ws, params, theta = space.widths(student), _params(model), [matcher.w0, matcher.b0]
    best, rho = _select_teacher(model, matcher, board, ws, student.code)
    x1, x2, y2 = x[:4], x[4:8], y[4:8]   # KD needs no labels
    with paddle.no_grad(), preserved_buffers(model):
        t = F.softmax(model(x1, space.widths(board.entries[best].code)), axis=-1)
    with preserved_buffers(model):
        kd = _soft_ce(model(x1, ws), t)
    g_kd = paddle.grad(kd, params, retain_graph=True, allow_unused=True)
    g_1st = paddle.grad(rho * kd, params, retain_graph=True, allow_unused=True)
    g_rho_theta = paddle.grad(rho, theta)
    g_1st = [g.numpy() if g is not None else None for g in g_1st]
    _momentum_step(params, g_1st, vel["w"], lr, CREAM_MOMENTUM, True, vel["decay"], _torch_clip(g_1st, 1.0))
    with preserved_buffers(model):
        val = _smoothed_ce(model(x2, ws), y2, smoothing)
    g_val = paddle.grad(val, params, allow_unused=True)
    dot = sum(float((a * b).sum().item()) for a, b in zip(g_val, g_kd) if a is not None and b is not None)
    g_theta = [(-meta_lr * dot * g).numpy() for g in g_rho_theta]
    _momentum_step(theta, g_theta, vel["theta"], meta_lr, CREAM_MOMENTUM, True, [0.0, 0.0],
                   _torch_clip(g_theta, 1.0))


def _cream_main_reference(model, matcher, board, space, student, x, y, lr, meta_lr, smoothing, vel):
    """core/train.py after warm-up: loss = (meta_value * KD + (2 - meta_value) * CE) / 2 with the
    teacher's softmax on the whole batch (no grad); one backward reaches the student and meta_layer
    (its optimizer group at the meta lr, no weight decay, no clipping); one optimizer step."""
    ws, params, theta = space.widths(student), _params(model), [matcher.w0, matcher.b0]
    best, rho = _select_teacher(model, matcher, board, ws, student.code)
    with paddle.no_grad(), preserved_buffers(model):
        t = F.softmax(model(x, space.widths(board.entries[best].code)), axis=-1)
    with preserved_buffers(model):
        out = model(x, ws)
    loss = (rho * _soft_ce(out, t) + (2 - rho) * _smoothed_ce(out, y, smoothing)) / 2
    grads = paddle.grad(loss, params + theta, allow_unused=True)
    _momentum_step(params, grads[:len(params)], vel["w"], lr, CREAM_MOMENTUM, True, vel["decay"])
    _momentum_step(theta, grads[len(params):], vel["theta"], meta_lr, CREAM_MOMENTUM, True, [0.0, 0.0])


@pytest.mark.parametrize("meta_update", [True, False], ids=["meta-update step", "plain step"])
def test_cream_authors_step_matches_the_authors_formulas(tmp_path, meta_update):
    tr, cr = _cream_trainer(tmp_path)
    model, space, matcher = tr.model, tr.space, cr.matcher
    _check_optimizer(tr.optimizer, CREAM_MOMENTUM, True, CREAM_DECAY)
    step = 20 if meta_update else 21                   # past the warm-up (10 of 60 steps)
    (student,) = [a for _, a in tr.subnets(step)]
    rng = np.random.default_rng(3)
    model.train()
    while len(cr.board) < 3:                           # a full board of other paths, each on its own images
        a = space.sample(rng)
        if a != student:
            xa, ya = _batch(seed=10 + len(cr.board))
            with paddle.no_grad(), preserved_buffers(model):
                cr.observe(a, model(xa, space.widths(a)), xa, ya)
    tr.scheduler.step(step - 1)                        # the schedule where a run would be
    tr.step(*_batch(seed=30), step - 1)               # momentum gets a velocity (and a matcher update at 20)
    x, y = _batch()
    assert cr.active(step) and cr.meta_due(step) == meta_update and len(cr.board) == 3
    assert len({e.inputs.tobytes() for e in cr.board.entries}) == 3
    params, theta = list(model.parameters()), matcher.parameters()
    names = [p.name for p in params] + ["meta.w0", "meta.b0"]
    before, buffers = _values(params + theta), [b.numpy().copy() for b in model.buffers()]
    vel = {"w": _velocities(tr.optimizer, _params(model)), "theta": _velocities(cr.matcher_opt, theta),
           "decay": [CREAM_DECAY if len(p.shape) > 1 else 0.0 for p in _params(model)]}
    lr, meta_lr, smoothing = tr.optimizer.get_lr(), cr.meta_lr(step), cr.smoothing
    # LambdaLR(LR - step / ITERS) for the student and the matcher's group, ITERS = the run's steps
    assert lr == pytest.approx(CREAM_LR * (1 - step / CREAM_STEPS))
    assert meta_lr == pytest.approx(CREAM_META_LR * (1 - step / CREAM_STEPS)) and smoothing == 0.1

    # the reference, then the weights put back and the preset's own step
    if meta_update:
        _cream_meta_reference(model, matcher, cr.board, space, student, x, y, lr, meta_lr, smoothing, vel)
    _cream_main_reference(model, matcher, cr.board, space, student, x, y, lr, meta_lr, smoothing, vel)
    reference = _values(params + theta)
    _set(params + theta, before)
    _set(list(model.buffers()), buffers)
    scalars = tr.step(x, y, step)
    assert ("cream/meta_rho" in scalars) == meta_update and scalars["cream/taught"] == 1.0
    largest = _assert_same_updates(before, reference, _values(params + theta), names)
    assert largest > 1e-3
    # the main step alone trains the matcher (rho keeps its gradient), on every step
    assert not np.array_equal(before[-2], matcher.w0.numpy())


def test_cream_authors_rho_gradient_reaches_the_student(tmp_path):
    """Without rho's gradient to the student (rho_grad false) the same step gives other weights:
    the parity above is sensitive to the term."""
    updates = []
    for rho_grad in ("true", "false"):
        cfg = load_config(REPO / "configs" / "cream_authors.yaml", PLAIN + [
            f"run.output_dir={tmp_path}", "train.cream.board_size=2", f"train.cream.rho_grad={rho_grad}"])
        tr = Trainer(cfg, STEPS_PER_EPOCH)
        cr, x, y = tr.methods[0], *_batch()
        for seed in (5, 6):
            a = tr.space.sample(np.random.default_rng(seed))
            with paddle.no_grad(), preserved_buffers(tr.model):
                cr.observe(a, tr.model(x, tr.space.widths(a)), x, y)
        before = tr.model.stem_conv.weight.numpy().copy()
        tr.step(x, y, 21)
        updates.append(tr.model.stem_conv.weight.numpy() - before)
    assert np.abs(updates[0] - updates[1]).max() > 1e-4 * np.abs(updates[0]).max()


# -- RD-NAS ---------------------------------------------------------------------------------------
# train_supernet.py: paddle.optimizer.Momentum(momentum=0.9) (no Nesterov), weight_decay 0, no grad_clip;
# LinearWarmup(..., warmup_step, 0., lr) that their run never leaves (docs/METHODS.md).
RDNAS_LR, RDNAS_WARMUP_STEPS = 0.5, 53               # -o train.lr=0.5 for a visible step; 5.3 epochs x 10


def _authors_forward(model, widths, x):
    """Their resnet48_mish as ResOFA runs a subnet, on the supernet's weights (leading slices): stem
    conv-BN-ReLU-max-pool, blocks conv1-BN-ReLU-conv2-BN (+ projection), Mish after the residual add,
    average pool, fc. Every BN as their SuperBatchNorm2D with _use_global_stats fixed: the running
    statistics, which nothing updates (Paddle's batch_norm with global statistics, eval semantics)."""
    def conv(layer, x, out):
        return F.conv2d(x, layer.weight[:out, :x.shape[1]], stride=layer.stride, padding=layer.padding)

    def bn(layer, y):
        c = y.shape[1]
        return F.batch_norm(y, layer._mean[:c], layer._variance[:c], layer.weight[:c], layer.bias[:c],
                            training=False, epsilon=layer.epsilon)

    for item in layer_sequence(widths):
        if item[0] == "stem":
            x = F.max_pool2d(F.relu(bn(model.stem_bn, conv(model.stem_conv, x, item[1]))), *STEM_POOL)
            continue
        stage, index, mid, out = item
        blk = model.stages[stage][index]
        y = bn(blk.bn2, conv(blk.conv2, F.relu(bn(blk.bn1, conv(blk.conv1, x, mid))), out))
        shortcut = bn(blk.shortcut_bn, conv(blk.shortcut_conv, x, out)) if blk.projection else x
        x = F.mish(y + shortcut)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), model.fc.weight[:x.shape[1]], model.fc.bias)


def _rdnas_reference(model, space, subnets, pairs, z, x, y, lam):
    """hapi_wrapper.train_batch_sandwich_with_rank: the largest on the labels, the smallest and the
    2 random subnets on the largest's detached softmax, then per pair loss3 (first, no backward of
    its own) and loss4: lam * PairwiseRankLoss = relu(loss4 - sg(loss3)) if z_a < z_b else
    relu(sg(loss3) - loss4); every backward summed into one step."""
    out = {}
    for role, arch in subnets:
        out.setdefault(arch, _authors_forward(model, space.widths(arch), x))
    largest = subnets[0][1]
    total = F.cross_entropy(out[largest], y)
    teacher = F.softmax(out[largest], axis=-1).detach()
    for role, arch in subnets[1:]:
        if role in ("smallest", "random"):
            total = total + _soft_ce(out[arch], teacher)
    for a, b, _ in pairs:
        loss3, loss4 = F.cross_entropy(out[a], y).detach(), F.cross_entropy(out[b], y)
        total = total + lam * (F.relu(loss4 - loss3) if z[a] < z[b] else F.relu(loss3 - loss4))
    return paddle.grad(total, _params(model), allow_unused=True)


def _pair_losses(model, space, pairs, x, y):
    with paddle.no_grad():
        ce = {a: F.cross_entropy(_authors_forward(model, space.widths(a), x), y).item() for p in pairs for a in p[:2]}
    return [ce[b] - ce[a] for a, b, _ in pairs]


@pytest.mark.parametrize("order", ["teacher orders", "tie"])
def test_rdnas_authors_step_matches_the_authors_formulas(tmp_path, order):
    """The step of a run at epoch 1, on a step whose two pairs have opposite label-loss orders: with
    the teacher ordering each pair so that its branch is non-zero, both branches fire; with a tie,
    the else branch fires on the pair whose first loss is higher and stays 0 on the other."""
    cfg = load_config(REPO / "configs" / "rdnas_authors.yaml", TINY + [
        f"run.output_dir={tmp_path}", f"train.lr={RDNAS_LR}"])
    tr = Trainer(cfg, STEPS_PER_EPOCH)
    _check_optimizer(tr.optimizer, 0.9, False, 0.0)
    rd = tr.methods[0]
    model, space = tr.model, tr.space
    # the statistics of a starting network: the full network's on other images (as the pretrain stage's)
    calibrate_bn(model, space.widths(space.largest()), [_batch(n=64, seed=4)[0]])
    rng = np.random.default_rng(7)                      # momentum has a velocity (a step of their run here
    for p in _params(model):                            # would blow up: an untrained network, no clipping)
        tr.optimizer._accumulators["velocity"][p.name].set_value(rng.normal(0, 0.01, p.shape).astype("float32"))
    x, y = _batch(seed=1)
    step = next(s for s in range(11, 20)                # epoch 1: lambda = min(2, 1 / 0.286) = 2
                if (tr.subnets(s) and len({d > 0 for d in _pair_losses(model, space, rd.pairs, x, y)}) == 2))
    tr.scheduler.step(step)
    subnets = tr.subnets(step)
    assert [r for r, _ in subnets] == ["largest", "smallest", "random", "random"] + ["pair"] * 4
    assert subnets[1][1].code == "1222277777000000777700000077770000000000007777000000"
    pairs = list(rd.pairs)
    assert rd.lam == 2.0
    # the teacher's values: each pair ordered so that its branch is non-zero (L_b > L_a: z_a < z_b), or tied
    z = {}
    for (a, b, _), d in zip(pairs, _pair_losses(model, space, pairs, x, y)):
        assert abs(d) > 1e-3
        z[a], z[b] = (1.0, 1.0) if order == "tie" else (1.0, 2.0) if d > 0 else (2.0, 1.0)
    by_widths = {space.widths(a): v for a, v in z.items()}
    rd.teacher = lambda widths: by_widths[widths]

    model.train()
    params = _params(model)
    before, buffers = _values(params), [b.numpy().copy() for b in model.buffers()]
    velocity = _velocities(tr.optimizer, params)
    lr = tr.optimizer.get_lr()
    assert lr == pytest.approx(RDNAS_LR * (step + 1) / RDNAS_WARMUP_STEPS)  # theirs: step / warmup_step
    grads = _rdnas_reference(model, space, subnets, pairs, z, x, y, rd.lam)
    _momentum_step(params, grads, velocity, lr, 0.9, False, [0.0] * len(params))
    reference = _values(params)
    _set(params, before)
    tr.step(x, y, step)
    largest = _assert_same_updates(before, reference, _values(params), [p.name for p in params])
    assert largest > 1e-3
    for b, saved in zip(model.buffers(), buffers):      # frozen: no statistic moved
        np.testing.assert_array_equal(b.numpy(), saved)
