"""Prioritized-path distillation (track1/methods/board.py, matcher.py, cream.py, losses.cream_loss): the
board's rules, the stored outputs, the loss, teacher choice, the matcher, its optimizer and
look-ahead, resume, the authors' preset, and what Paddle's double backward can do here."""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from track1.pipeline import checkpoint
from track1.methods import cream as C
from track1.methods import matcher as M
from track1.methods.board import PathBoard
from track1.pipeline.config import ConfigError, load_config
from track1.methods.losses import cream_loss, label_loss, soft_cross_entropy
from track1.space import SearchSpace
from track1.network.supernet import SuperNet
from track1.network.build import build_supernet
from track1.pipeline.train import train

from conftest import REPO, tiny_config

SPACE = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)


def entry(board, acc, flops, code, m=2, classes=10):
    inputs = np.full((m, 3, 4, 4), acc, np.float32)
    soft = np.full((m, classes), 1.0 / classes, np.float32)
    return board.consider(acc, flops, code, inputs, soft)


def table(board):
    return [(e.acc, e.flops, e.code) for e in board.entries]


@pytest.fixture(scope="module")
def net():
    paddle.seed(0)
    model = SuperNet(SPACE)
    model.train()
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((16, 3, 32, 32)).astype("float32"))
    y = paddle.to_tensor(rng.integers(0, 10, 16).astype("int64"))
    return x, y


# -- the board ------------------------------------------------------------------------------------
def test_board_enters_while_room_and_sorts_best_first():
    b = PathBoard(capacity=3)
    assert entry(b, 0.5, 100, "a") and entry(b, 0.2, 100, "b") and entry(b, 0.5, 50, "c")
    # best by accuracy, ties broken by fewer FLOPs
    assert table(b) == [(0.5, 50, "c"), (0.5, 100, "a"), (0.2, 100, "b")]
    assert b.best().code == "c" and b.best(exclude="c").code == "a"
    assert len(b) == 3 and b.mean_acc == pytest.approx(0.4) and b.mean_flops == pytest.approx(250 / 3)


def test_board_rejects_a_worse_path_when_full():
    b = PathBoard(capacity=2, gap=0.0)
    entry(b, 0.6, 100, "a"), entry(b, 0.4, 100, "b")
    assert not entry(b, 0.3, 10, "c")          # less accurate, even with fewer FLOPs
    assert not entry(b, 0.4, 100, "d")         # equal accuracy, equal FLOPs
    assert not entry(b, 0.4, 200, "e")         # equal accuracy, more FLOPs
    assert table(b) == [(0.6, 100, "a"), (0.4, 100, "b")]


def test_board_replaces_the_worst_by_an_accuracy_gap():
    b = PathBoard(capacity=2, gap=0.1)
    entry(b, 0.6, 100, "a"), entry(b, 0.4, 100, "b")
    assert not entry(b, 0.45, 500, "c")        # beats the worst, but not by more than the gap
    assert entry(b, 0.55, 500, "d")            # beats it by 0.15 > gap, FLOPs do not matter
    assert table(b) == [(0.6, 100, "a"), (0.55, 500, "d")]


def test_board_replaces_the_worst_by_fewer_flops_at_equal_or_better_accuracy():
    b = PathBoard(capacity=2, gap=0.5)       # a gap no path here can clear
    entry(b, 0.6, 100, "a"), entry(b, 0.4, 100, "b")
    assert entry(b, 0.4, 90, "c")              # equal accuracy, fewer FLOPs
    assert table(b) == [(0.6, 100, "a"), (0.4, 90, "c")]
    assert entry(b, 0.45, 80, "d")             # better accuracy (within the gap), fewer FLOPs
    assert table(b) == [(0.6, 100, "a"), (0.45, 80, "d")]
    assert not entry(b, 0.5, 85, "e")          # better accuracy within the gap, more FLOPs


def test_board_capacity_bound_and_no_duplicate_codes():
    b = PathBoard(capacity=4)
    rng = np.random.default_rng(1)
    for i in range(50):
        entry(b, float(rng.random()), int(rng.integers(1, 1000)), f"p{i % 7}")
        assert len(b) <= 4
        codes = [e.code for e in b.entries]
        assert len(codes) == len(set(codes))
        assert table(b) == sorted(table(b), key=lambda t: (-t[0], t[1]))
    # an existing code is updated in place with its new measurement, even a worse one
    b = PathBoard(capacity=3)
    entry(b, 0.9, 100, "a"), entry(b, 0.5, 100, "b")
    assert entry(b, 0.1, 70, "a")
    assert table(b) == [(0.5, 100, "b"), (0.1, 70, "a")]
    assert b.entries[1].inputs[0, 0, 0, 0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        PathBoard(capacity=0)


def test_board_round_trips_through_paddle_save(tmp_path):
    b = PathBoard(capacity=3, gap=0.02)
    rng = np.random.default_rng(2)
    for i, acc in enumerate((0.3, 0.7, 0.5)):
        b.consider(acc, 10 ** 10 + i, f"code{i}", rng.standard_normal((2, 3, 8, 8)).astype("float32"),
                   rng.dirichlet(np.ones(10), 2).astype("float32"))
    path = str(tmp_path / "board.pdopt")
    paddle.save({"cream": b.state_dict()}, path)
    loaded = paddle.load(path)["cream"]       # paddle.load hands the arrays back as Tensors
    c = PathBoard()
    c.set_state_dict(loaded)
    assert (c.capacity, c.gap) == (3, 0.02) and table(c) == table(b)
    for e, f in zip(b.entries, c.entries):
        assert isinstance(f.inputs, np.ndarray) and isinstance(f.soft, np.ndarray)
        np.testing.assert_array_equal(e.inputs, f.inputs)
        np.testing.assert_array_equal(e.soft, f.soft)
    # the restored board behaves as the original
    assert entry(c, 0.4, 1, "new") == entry(b, 0.4, 1, "new") and table(c) == table(b)


def test_authors_board_rule_on_hand_made_entries():
    """Cream's PrioritizedBoard: fewer FLOPs needs strictly higher accuracy, and equal accuracy
    sorts more FLOPs first (their tuples sort descending); the project rule differs on both."""
    a = PathBoard(capacity=3, gap=0.05, rule="authors")
    p = PathBoard(capacity=3, gap=0.05, rule="project")
    for b in (a, p):
        entry(b, 0.5, 100, "x"), entry(b, 0.5, 300, "y"), entry(b, 0.2, 200, "z")
    assert table(a) == [(0.5, 300, "y"), (0.5, 100, "x"), (0.2, 200, "z")]
    assert table(p) == [(0.5, 100, "x"), (0.5, 300, "y"), (0.2, 200, "z")]
    # equal accuracy with fewer FLOPs: enters under the project rule only
    assert not entry(a, 0.2, 150, "e") and entry(p, 0.2, 150, "e")
    assert table(p)[-1] == (0.2, 150, "e")
    # better within the gap and fewer FLOPs: enters under both
    assert entry(a, 0.22, 150, "f") and table(a)[-1] == (0.22, 150, "f")
    # better within the gap but more FLOPs: enters under neither
    assert not entry(a, 0.24, 900, "g") and not entry(p, 0.24, 900, "g")
    # beyond the gap: enters whatever its FLOPs; the worst by the rule's order leaves
    assert entry(a, 0.5, 50, "h")
    assert table(a) == [(0.5, 300, "y"), (0.5, 100, "x"), (0.5, 50, "h")]
    assert entry(a, 0.56, 999, "i")          # 0.56 > 0.5 + 0.05: replaces h (fewest FLOPs last)
    assert table(a) == [(0.56, 999, "i"), (0.5, 300, "y"), (0.5, 100, "x")]
    with pytest.raises(ValueError):
        PathBoard(rule="paper")
    c = PathBoard()
    c.set_state_dict(a.state_dict())
    assert c.rule == "authors" and table(c) == table(a)


# -- the loss -------------------------------------------------------------------------------------
def test_cream_loss_weighting_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4)).astype("float32")
    teacher = rng.dirichlet(np.ones(4), 5).astype("float32")
    labels = rng.integers(0, 4, 5)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    kd = -(teacher * logp).sum(1).mean()
    ce = -logp[np.arange(5), labels].mean()
    args = (paddle.to_tensor(logits), paddle.to_tensor(teacher), paddle.to_tensor(labels))
    assert cream_loss(*args, 1.0).item() == pytest.approx((kd + ce) / 2, rel=1e-5)
    assert cream_loss(*args, 0.0).item() == pytest.approx(ce, rel=1e-5)
    assert cream_loss(*args, 0.3).item() == pytest.approx((0.3 * kd + 1.7 * ce) / 2, rel=1e-5)
    rho = paddle.to_tensor(0.3, stop_gradient=False)
    loss = cream_loss(*args, rho)
    (d,) = paddle.grad(loss, [rho])
    assert d.item() == pytest.approx((kd - ce) / 2, rel=1e-4)  # linear in rho


# -- teacher choice -------------------------------------------------------------------------------
def test_choose_teacher_top1():
    b = PathBoard(capacity=3)
    assert M.choose_teacher(b, None, "top1") is None
    entry(b, 0.9, 100, "a"), entry(b, 0.5, 100, "b")
    choice = M.choose_teacher(b, None, "top1")
    assert (choice.index, choice.entry.code, choice.rho, choice.score) == (0, "a", 1.0, None)
    assert M.choose_teacher(b, None, "top1", exclude="a").entry.code == "b"  # never itself
    assert M.choose_teacher(b, None, "top1", top1_rho=0.5).rho == 0.5    # Cream's code
    assert M.choose_teacher(PathBoard(), None, "top1") is None
    with pytest.raises(ValueError):
        M.choose_teacher(b, None, "best")


def test_choose_teacher_meta_picks_the_highest_score_with_rho_sigmoid_minus_score():
    classes, m = 4, 3
    rng = np.random.default_rng(4)
    b = PathBoard(capacity=4)
    for i, acc in enumerate((0.9, 0.8, 0.7, 0.6)):
        b.consider(acc, 100, f"p{i}", np.zeros((m, 3, 2, 2), np.float32),
                   rng.dirichlet(np.ones(classes), m).astype("float32"))
    matcher = M.MetaMatcher(classes, hidden=0, rng=np.random.default_rng(0))
    w = rng.standard_normal((2 * classes, 1)).astype("float32")
    matcher.w0.set_value(w)
    matcher.b0.set_value(np.array([0.3], np.float32))
    student_logits = [rng.standard_normal((m, classes)).astype("float32") for _ in range(4)]

    def score(logits, soft):
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        d = p - soft
        return float((np.concatenate([d, np.abs(d)], 1) @ w + 0.3).mean())

    scores = [score(s, e.soft) for s, e in zip(student_logits, b.entries)]
    np.testing.assert_allclose(matcher.scores([M.softmax_of(s) for s in student_logits], b).numpy(),
                               scores, rtol=1e-5, atol=1e-6)
    choice = M.choose_teacher(b, student_logits, "meta", matcher)
    best = int(np.argmax(scores))
    assert choice.index == best and choice.entry.code == f"p{best}"
    assert choice.score == pytest.approx(scores[best], rel=1e-5, abs=1e-6)
    assert choice.rho == pytest.approx(1 / (1 + math.exp(scores[best])), rel=1e-5)
    # excluding the winner gives the runner-up
    second = int(np.argsort(scores)[-2])
    assert M.choose_teacher(b, student_logits, "meta", matcher, exclude=f"p{best}").index == second
    with pytest.raises(ValueError):
        M.choose_teacher(b, student_logits[:2], "meta", matcher)


def test_flat_matcher_scores_one_linear_layer_on_the_flattened_difference():
    """Cream's meta_layer: Linear(classes * images, 1) on (p_student - p_path).view(1, -1)."""
    classes, m = 5, 4
    rng = np.random.default_rng(10)
    matcher = M.MetaMatcher(classes, images=m, features="flat", init="uniform",
                            rng=np.random.default_rng(1))
    w = matcher.w0.numpy()
    assert w.shape == (classes * m, 1) and np.abs(w).max() <= 1.0 and np.abs(w).max() > 0.5
    s = rng.dirichlet(np.ones(classes), m).astype("float32")
    t = rng.dirichlet(np.ones(classes), m).astype("float32")
    expected = float((s - t).reshape(1, -1) @ w)
    assert matcher(paddle.to_tensor(s), paddle.to_tensor(t)).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        matcher(paddle.to_tensor(s[:3]), paddle.to_tensor(t[:3]))


def test_nesterov_matcher_optimizer_steps_clipped_only_when_asked():
    """First Nesterov step from zero velocity: p -= lr * (1 + mu) * g, with g scaled to norm 1 by
    the look-ahead's clip (torch's clip / (norm + 1e-6)); the main step's gradient unclipped."""
    matcher = M.MetaMatcher(3, images=2, features="flat", rng=np.random.default_rng(2))
    opt = M.matcher_optimizer(matcher, "nesterov", lr=0.1, momentum=0.9)
    before = [p.numpy().copy() for p in matcher.parameters()]
    g = [np.full(p.shape, 3.0, "float32") for p in matcher.parameters()]  # global norm 3 * sqrt(7)
    M.apply_gradients(opt, list(zip(matcher.parameters(), g)), clip=1.0)
    scale = 1.0 / (3.0 * math.sqrt(7) + 1e-6)
    for p, b, v in zip(matcher.parameters(), before, g):
        np.testing.assert_allclose(p.numpy(), b - 0.1 * 1.9 * v * scale, rtol=1e-5, atol=1e-7)
    # second step, no clip: velocity v1 = 0.9 v0 + g, p -= lr * (g + 0.9 v1)
    mid = [p.numpy().copy() for p in matcher.parameters()]
    M.apply_gradients(opt, list(zip(matcher.parameters(), g)))
    for p, m, v in zip(matcher.parameters(), mid, g):
        v1 = 0.9 * v * scale + v
        np.testing.assert_allclose(p.numpy(), m - 0.1 * (v + 0.9 * v1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        M.matcher_optimizer(matcher, "rmsprop", lr=0.1)


def test_student_step_moves_only_the_listed_weights_with_the_clipped_gradient():
    """Cream's update_student_weights_only: the supernet's optimizer steps on the given gradients,
    their global norm clipped to 1; other weights keep a None gradient and stay."""
    paddle.seed(3)
    used, idle = paddle.nn.Linear(3, 2), paddle.nn.Linear(2, 2)
    params = used.parameters() + idle.parameters()
    opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=params,
                                    use_nesterov=True, weight_decay=0.0)
    before = [p.numpy().copy() for p in params]
    grads = [paddle.full(p.shape, 2.0) for p in used.parameters()]   # norm 2 * sqrt(8)
    M.apply_gradients(opt, list(zip(used.parameters(), grads)), clip=1.0)
    scale = 1.0 / (2.0 * math.sqrt(8) + 1e-6)
    for p, b in zip(used.parameters(), before):
        np.testing.assert_allclose(p.numpy(), b - 0.1 * 1.9 * 2.0 * scale, rtol=1e-5)
    for p, b in zip(idle.parameters(), before[2:]):
        np.testing.assert_array_equal(p.numpy(), b)
    assert all(p.grad is None for p in params)


def test_board_outputs_are_one_forward_per_entry_over_its_own_images(net):
    """Cream's select_teacher forwards each entry's stored images alone: under train-mode BN a
    forward of all entries at once would normalise each by the others' statistics."""
    b = PathBoard(capacity=3)
    rng = np.random.default_rng(11)
    for i in range(3):
        b.consider(0.5 + i / 10, 100, f"p{i}", (rng.standard_normal((4, 3, 32, 32)) * (i + 1)).astype("float32"),
                   rng.dirichlet(np.ones(10), 4).astype("float32"))
    widths = SPACE.widths(SPACE.largest())
    got = M.student_logits_on_board(net, widths, b)
    with paddle.no_grad(), M.preserved_buffers(net):
        alone = [net(paddle.to_tensor(e.inputs), widths).numpy() for e in b.entries]
        together = net(paddle.to_tensor(np.concatenate([e.inputs for e in b.entries])), widths).numpy()
    for g, a in zip(got, alone):
        np.testing.assert_allclose(g.numpy(), a, rtol=1e-5, atol=1e-6)
    assert np.abs(together[:4] - alone[0]).max() > 1e-3


# -- the matcher's look-ahead update --------------------------------------------------------------
def settings(**kw):
    """Cream's settings: configs/default.yaml's train.cream (the project variant) with changes."""
    return C.Settings.from_config({**load_config()["train"]["cream"], **kw})


def _settings(**kw):
    base = dict(board_size=3, store_images=4, pick="meta", meta_interval=1 / 16, meta_lr=1e-2)
    base.update(kw)
    return settings(**base)


def _filled_cream(net, batch, **kw):
    x, y = batch
    cr = C.Cream(SPACE, 16, _settings(**kw))
    rng = np.random.default_rng(5)
    archs = [SPACE.sample(rng) for _ in range(4)]
    for a in archs[:3]:
        with paddle.no_grad(), M.preserved_buffers(net):
            cr.observe(a, net(x, SPACE.widths(a)), x, y)
    return cr, archs


def _matcher_moments(cr):
    return {k: np.asarray(v.numpy() if isinstance(v, paddle.Tensor) else v)
            for k, v in cr.matcher_opt.state_dict().items() if k != "LR_Scheduler"}


@pytest.mark.parametrize("preset", ["project", "authors"])
def test_meta_step_changes_the_matcher_and_nothing_else(net, batch, preset):
    x, y = batch
    kw = {} if preset == "project" else dict(
        meta_lookahead="kd", meta_batch=4, meta_features="flat", meta_init="uniform",
        meta_optimizer="nesterov", meta_decay="linear", meta_clip=1.0, meta_lr=1e-1)
    cr, archs = _filled_cream(net, batch, **kw)
    assert len(cr.board) == 3
    before = {n: p.numpy().copy() for n, p in cr.matcher.named_parameters()}
    moments = _matcher_moments(cr)
    assert moments and all(not np.any(v) for k, v in moments.items() if "pow" not in k)
    weights = [p.numpy().copy() for p in net.parameters()]
    buffers = [b.numpy().copy() for b in net.buffers()]
    scalars = cr.meta_step(net, archs[3], x, y, step=4, student_lr=0.1)
    assert set(scalars) == {"cream/meta_held_loss", "cream/meta_rho", "cream/meta_drho",
                            "cream/meta_teacher", "cream/meta_lr"}
    assert scalars["cream/meta_lr"] == pytest.approx(0.1 * 12 / 16 if preset == "authors" else 1e-2)
    assert 0 < scalars["cream/meta_rho"] < 1 and math.isfinite(scalars["cream/meta_drho"])
    assert any(not np.array_equal(before[n], p.numpy()) for n, p in cr.matcher.named_parameters())
    assert any(np.any(v) for k, v in _matcher_moments(cr).items() if "pow" not in k)
    assert all(np.array_equal(w, p.numpy()) for w, p in zip(weights, net.parameters()))
    assert all(np.array_equal(v, b.numpy()) for v, b in zip(buffers, net.buffers()))
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is None for p in cr.matcher.parameters())


def test_meta_step_is_sgd_on_drho_times_drho_dtheta(net, batch):
    """Plain SGD on a flat matcher (Nesterov, momentum 0) and a board of one path, so the teacher
    cannot change: theta moves by -lr * drho * d rho / d theta, written out in numpy
    (rho = sigmoid(-(w . d + b)), d the flattened softmax difference), and rho moves against drho."""
    x, y = batch
    cr, archs = _filled_cream(net, batch, board_size=1, meta_features="flat", meta_optimizer="nesterov",
                              meta_momentum=0.0, meta_lr=1.0, meta_init="uniform")
    (e,) = cr.board.entries
    with paddle.no_grad(), M.preserved_buffers(net):
        p = F.softmax(net(paddle.to_tensor(e.inputs), SPACE.widths(archs[3])), axis=-1).numpy()
    d = (p - e.soft).reshape(1, -1).astype("float64")
    w0, b0 = cr.matcher.w0.numpy().astype("float64"), cr.matcher.b0.numpy().astype("float64")
    rho = 1 / (1 + np.exp((d @ w0 + b0).item()))
    first = cr.meta_step(net, archs[3], x, y, step=4, student_lr=0.5)
    drho = first["cream/meta_drho"]
    assert first["cream/meta_rho"] == pytest.approx(rho, rel=1e-5) and abs(drho) > 1e-6
    dsig = -rho * (1 - rho)                      # d rho / d score-argument
    np.testing.assert_allclose(cr.matcher.w0.numpy(), w0 - 1.0 * drho * dsig * d.T, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(cr.matcher.b0.numpy(), b0 - 1.0 * drho * dsig, rtol=1e-4, atol=1e-7)
    again = cr.meta_step(net, archs[3], x, y, step=5, student_lr=0.5)
    assert again["cream/meta_teacher"] == first["cream/meta_teacher"] == 0.0
    assert (again["cream/meta_rho"] - first["cream/meta_rho"]) * drho < 0
    # (That drho is the look-ahead's true derivative is test_lookahead_hypergradient_matches_finite_differences.)


def test_meta_student_step_updates_the_student_and_not_the_bn_statistics(batch):
    x, y = batch
    paddle.seed(4)
    net = SuperNet(SPACE)
    net.train()
    opt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=net.parameters(),
                                    use_nesterov=True)
    cr, archs = _filled_cream(net, batch, meta_lookahead="kd", meta_batch=4, meta_clip=1.0,
                              meta_student_step=True)
    weights = [p.numpy().copy() for p in net.parameters()]
    stem = net.stem_conv.weight.numpy().copy()            # every path uses the stem
    buffers = [b.numpy().copy() for b in net.buffers()]
    with pytest.raises(ValueError):
        cr.meta_step(net, archs[3], x, y, step=4, student_lr=0.05)      # no optimizer given
    scalars = cr.meta_step(net, archs[3], x, y, step=4, student_lr=0.05, optimizer=opt)
    assert math.isfinite(scalars["cream/meta_drho"])
    moved = [not np.array_equal(w, p.numpy()) for w, p in zip(weights, net.parameters())]
    assert any(moved) and not all(moved)          # the student's weights only
    assert not np.array_equal(stem, net.stem_conv.weight.numpy())
    assert all(np.array_equal(v, b.numpy()) for v, b in zip(buffers, net.buffers()))
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("kind", ["full", "kd"])
def test_lookahead_hypergradient_matches_finite_differences(kind):
    """The exact first-order formula against CE_held(W'(rho)) itself, for both look-aheads.

    In float64: the look-ahead loss has ReLU/max-pool kinks as little as 1e-5 apart in rho, so only
    a small step (1e-6) measures its derivative, and float32 cannot resolve that step. The KD-only
    step moves the weights along one direction only and meets kinks more densely: 1e-7 there.
    """
    default = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        paddle.seed(1)
        net = SuperNet(SPACE)
        net.train()
    finally:
        paddle.set_default_dtype(default)
    rng = np.random.default_rng(6)
    x = paddle.to_tensor(rng.standard_normal((16, 3, 32, 32)))
    y = paddle.to_tensor(rng.integers(0, 10, 16).astype("int64"))
    student, teacher = SPACE.sample(rng), SPACE.sample(rng)
    xt, yt, xh, yh = x[:8], y[:8], x[8:], y[8:]
    lr, rho0, eps, smooth = (0.1, 0.4, 1e-6, 0.0) if kind == "full" else (0.1, 0.4, 1e-7, 0.1)
    with M.preserved_buffers(net):
        t_probs = M.teacher_probs(net, SPACE.widths(teacher), xt)
        d_rho, held0 = M.lookahead_hypergradient(net, SPACE.widths(student), t_probs, xt, yt, xh, yh,
                                                 lr, rho0, kind, held_smoothing=smooth)

    def held_after_step(rho):
        params = [p for p in net.parameters() if not p.stop_gradient]
        with M.preserved_buffers(net):
            out = net(xt, SPACE.widths(student))
            loss = (cream_loss(out, t_probs, yt, rho) if kind == "full"
                    else rho * soft_cross_entropy(out, t_probs))
            grads = paddle.grad(loss, params, allow_unused=True)
            saved = [p.numpy().copy() for p in params]
            for p, g in zip(params, grads):
                if g is not None:
                    p.set_value(p.numpy() - lr * g.numpy())
            held = label_loss(net(xh, SPACE.widths(student)), yh, smooth).item()
            for p, v in zip(params, saved):
                p.set_value(v)
        return held

    assert held_after_step(rho0) == pytest.approx(held0, rel=1e-10)
    fd = (held_after_step(rho0 + eps) - held_after_step(rho0 - eps)) / (2 * eps)
    assert abs(d_rho) > 1e-2
    assert d_rho == pytest.approx(fd, rel=1e-4)


# -- the training-loop facade ---------------------------------------------------------------------
def test_cream_plan_and_observe_own_outputs(net, batch):
    x, y = batch
    buffers = [b.numpy().copy() for b in net.buffers()]
    cr = C.Cream(SPACE, 16, settings(board_size=3, store_images=4))
    rng = np.random.default_rng(7)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    assert cr.plan(net, [a], x) == [None]                    # empty board: plain CE
    with paddle.no_grad(), M.preserved_buffers(net):
        out = net(x, SPACE.widths(a))
    assert cr.observe(a, out, x, y)
    e = cr.board.entries[0]
    assert e.code == a.code and e.flops == SPACE.flops(a) and e.inputs.shape == (4, 3, 32, 32)
    assert e.acc == pytest.approx(float((out.numpy().argmax(1) == y.numpy()).mean()))
    np.testing.assert_allclose(e.soft, F.softmax(out[:4], axis=-1).numpy(), rtol=1e-6)
    plans = cr.plan(net, [a, b], x)
    assert plans[0] is None                                   # a path never teaches itself
    assert plans[1].teacher_code == a.code and plans[1].rho == 1.0
    assert plans[1].teacher_probs.shape == [16, 10] and plans[1].teacher_probs.stop_gradient
    np.testing.assert_allclose(plans[1].teacher_probs.sum(axis=-1).numpy(), 1.0, rtol=1e-5)
    assert all(np.array_equal(v, buf.numpy()) for v, buf in zip(buffers, net.buffers()))
    # own outputs: b is stored with its own softmax even though a taught it
    with paddle.no_grad(), M.preserved_buffers(net):
        out_b = net(x, SPACE.widths(b))
    assert cr.observe(b, out_b, x, y, plans[1])
    stored = next(e for e in cr.board.entries if e.code == b.code)
    np.testing.assert_allclose(stored.soft, F.softmax(out_b[:4], axis=-1).numpy(), rtol=1e-6)


def test_cream_stores_the_teachers_outputs_once_the_board_has_one(net, batch):
    """store_outputs: teacher (Cream's code): the first entry keeps its own softmax (no teacher
    yet), later ones the softmax of the path that taught them on that step."""
    x, y = batch
    cr = C.Cream(SPACE, 16, settings(board_size=3, store_images=4, store_outputs="teacher",
                                       top1_rho=0.5))
    rng = np.random.default_rng(8)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    with paddle.no_grad(), M.preserved_buffers(net):
        out_a, out_b = net(x, SPACE.widths(a)), net(x, SPACE.widths(b))
    assert cr.observe(a, out_a, x, y, None)
    np.testing.assert_allclose(cr.board.entries[0].soft, F.softmax(out_a[:4], axis=-1).numpy(),
                               rtol=1e-6)
    (plan,) = cr.plan(net, [b], x)
    assert plan.teacher_code == a.code and plan.rho == 0.5
    assert cr.observe(b, out_b, x, y, plan)
    stored = next(e for e in cr.board.entries if e.code == b.code)
    np.testing.assert_allclose(stored.soft, plan.teacher_probs[:4].numpy(), rtol=1e-6)
    assert not np.allclose(stored.soft, F.softmax(out_b[:4], axis=-1).numpy(), atol=1e-4)


def test_warmup_and_matcher_interval_are_fractions_of_the_run():
    short = C.Cream(SPACE, 938, _settings(warmup=0.175, meta_interval=0.05, meta_decay="linear"))
    long = C.Cream(SPACE, 150_000, _settings(warmup=0.175, meta_interval=0.05, meta_decay="linear"))
    assert (short.warmup_steps, short.meta_every) == (164, 47)
    assert (long.warmup_steps, long.meta_every) == (26_250, 7_500)
    assert not short.active(163) and short.active(164)
    assert short.meta_lr(0) == pytest.approx(1e-2) and short.meta_lr(469) == pytest.approx(5e-3)
    assert long.meta_lr(150_000) == 0.0
    assert C.Cream(SPACE, 16, _settings()).meta_lr(8) == 1e-2   # constant by default
    cr = C.Cream(SPACE, 16, _settings(warmup=0.25, meta_interval=0.125))
    cr.board.consider(0.5, 1, "x", np.zeros((4, 3, 2, 2), "float32"), np.zeros((4, 10), "float32"))
    assert [s for s in range(16) if cr.meta_due(s)] == [4, 6, 8, 10, 12, 14]
    assert not C.Cream(SPACE, 16, _settings(pick="top1")).meta_due(4)   # top1 has no matcher


def test_settings_reject_bad_values_with_a_config_error():
    for bad in ("pick=best", "board_rule=paper", "store_outputs=mean", "meta_optimizer=sgd", "warmup=1.5",
                "meta_interval=0.0", "store_images=0", "meta_every_steps=-1"):
        with pytest.raises(ConfigError, match=f"train.cream.{bad.split('=')[0]}"):
            load_config(None, [f"train.cream.{bad}"])
    from track1.methods.base import RunContext
    fp16 = load_config(REPO / "configs" / "cream_authors.yaml", ["train.amp=fp16"])
    with pytest.raises(ConfigError, match="train.cream.rho_grad"):
        C.Cream.from_config(fp16, RunContext(SPACE, 10, 100))
    with pytest.raises(TypeError):  # a key that is not one of the section's
        C.Settings.from_config({**load_config()["train"]["cream"], "warmup_epochs": 0.17})
    cr = C.Cream(SPACE, 16, _settings(meta_batch=9))
    x = paddle.zeros([16, 3, 32, 32])
    with pytest.raises(ConfigError):
        cr.meta_step(None, SPACE.largest(), x, paddle.zeros([16], "int64"), 4, 0.1)
    flat = C.Cream(SPACE, 16, _settings(store_images=20, meta_features="flat"))
    with pytest.raises(ConfigError):
        flat.observe(SPACE.largest(), paddle.zeros([16, 10]), x, paddle.zeros([16], "int64"))


def test_authors_preset_selects_every_authors_choice():
    cfg = load_config(REPO / "configs" / "cream_authors.yaml", [])
    s = C.Settings.from_config(cfg["train"]["cream"])
    assert cfg["train"]["label_smoothing"] == 0.1 and cfg["train"]["sampler"] == "spos"
    assert (s.board_size, s.board_rule, s.gap, s.store_images, s.store_outputs, s.top1_rho) == \
        (10, "authors", 0.05, 4, "teacher", 0.5)
    assert (s.pick, s.meta_order, s.meta_lookahead, s.meta_batch, s.meta_features, s.meta_init) == \
        ("meta", "before", "kd", 4, "flat", "uniform")
    assert (s.meta_optimizer, s.meta_lr, s.meta_momentum, s.meta_decay, s.meta_clip,
            s.meta_student_step) == ("nesterov", 1e-4, 0.9, "linear", 1.0, True)
    assert (s.rho_grad, s.meta_every_steps) == (True, 200)
    run = C.Cream(SPACE, 150_000, s)
    assert (run.warmup_steps, run.meta_every) == (26_250, 200)   # epoch 21 of 120; UPDATE_ITER
    assert C.Cream(SPACE, 2814, s).meta_every == 200             # the same 0.5% of a CPU run's steps


def test_cream_state_round_trip_with_matcher_optimizer(net, batch, tmp_path):
    x, y = batch
    kw = dict(meta_optimizer="nesterov", meta_clip=1.0, meta_decay="linear")
    cr, archs = _filled_cream(net, batch, **kw)
    cr.meta_step(net, archs[3], x, y, step=4, student_lr=0.1)
    path = str(tmp_path / "train.pdopt")
    paddle.save({"optimizer": {}, "cream": cr.state_dict()}, path)
    other = C.Cream(SPACE, 16, _settings(meta_seed=99, **kw))
    assert not np.array_equal(other.matcher.w0.numpy(), cr.matcher.w0.numpy())
    other.set_state_dict(paddle.load(path)["cream"])
    assert table(other.board) == table(cr.board)
    saved, restored = _matcher_moments(cr), _matcher_moments(other)
    assert saved.keys() == restored.keys() and any(np.any(v) for v in saved.values())
    for k in saved:
        np.testing.assert_array_equal(saved[k], restored[k], err_msg=k)
    for (n, p), (_, q) in zip(cr.matcher.named_parameters(), other.matcher.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    # the resumed matcher takes exactly the same next step (momentum included)
    s1 = cr.meta_step(net, archs[3], x, y, step=6, student_lr=0.1)
    s2 = other.meta_step(net, archs[3], x, y, step=6, student_lr=0.1)
    assert s1 == s2
    for p, q in zip(cr.matcher.parameters(), other.matcher.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    with pytest.raises(ValueError):
        other.set_state_dict({"board": cr.board.state_dict(), "matcher": None})


def test_matcher_initialisation_is_a_function_of_its_generator():
    a = M.MetaMatcher(10, hidden=8, rng=np.random.default_rng(3))
    b = M.MetaMatcher(10, hidden=8, rng=np.random.default_rng(3))
    c = M.MetaMatcher(10, hidden=8, rng=np.random.default_rng(4))
    assert [n for n, _ in a.named_parameters()] == ["w0", "b0", "w1", "b1"]
    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a.parameters(), b.parameters()))
    assert not np.array_equal(a.w0.numpy(), c.w0.numpy())


# -- what Paddle 3.3.1's double backward can do ---------------------------------------------------
def _rho_second_derivative(build):
    """d/d rho |grad_W (rho * f(W))|^2 by double backward (None if Paddle drops the path)."""
    rng = np.random.default_rng(8)
    w = paddle.to_tensor(rng.standard_normal((4, 3, 3, 3)).astype("float32"), stop_gradient=False)
    rho = paddle.to_tensor(0.7, stop_gradient=False)
    (g,) = paddle.grad(rho * build(w), [w], create_graph=True)
    (d,) = paddle.grad((g * g).sum(), [rho], allow_unused=True)
    return d, float((g * g).sum().item())


def test_double_backward_works_for_matmul_but_conv2d_drops_the_upstream_gradient():
    x = paddle.to_tensor(np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype("float32"))
    # matmul: d/d rho (rho^2 |grad f|^2) = 2 |g|^2 / rho, as it should
    d, sq = _rho_second_derivative(lambda w: paddle.matmul(x.reshape([2, -1])[:, :27],
                                                           w.reshape([4, 27]).T).sum())
    assert d is not None and d.item() == pytest.approx(2 * sq / 0.7, rel=1e-4)
    # conv2d: the same quantity comes back as None, silently (Paddle 3.3.1, CPU)
    d, sq = _rho_second_derivative(lambda w: F.conv2d(x, w, padding=1).sum())
    assert sq > 0
    _pinned_paddle("conv2d's double backward (revisit track1/methods/matcher.py if it works now)")
    assert d is None, "conv2d double backward works now: revisit track1/methods/matcher.py"


def _pinned_paddle(what: str) -> None:
    """These tests pin Paddle 3.3.1's behaviour; on another version they fail, asking for a re-check."""
    if paddle.__version__ != "3.3.1":
        pytest.fail(f"Paddle {paddle.__version__}, not 3.3.1: re-check {what}, then update this test")


def double_backward_probe(model, widths, x, y):
    """Can paddle.grad(create_graph=True) differentiate a gradient of cream_loss w.r.t. rho?

    Returns (works, reason). "works" also requires the value to agree with the closed form
    d/d rho |g(rho)|^2 = <g(rho), g_kd - g_ce>, so that a silently dropped path counts as a
    failure. Runs in train mode and leaves the BN statistics unchanged.
    """
    params = [p for p in model.parameters() if not p.stop_gradient]
    with M.preserved_buffers(model):
        classes = model.space.num_classes
        t_probs = paddle.full([x.shape[0], classes], 1.0 / classes, "float32")
        rho = paddle.to_tensor(0.5, stop_gradient=False)
        try:
            out = model(x, widths)
            gs = paddle.grad(cream_loss(out, t_probs, y, rho), params, create_graph=True,
                             allow_unused=True)
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


def test_double_backward_probe_on_the_supernet(net, batch):
    """Why matcher.py uses the exact first-order formula (checked above): second order through
    the supernet does not run on Paddle 3.3.1."""
    x, y = batch
    buffers = [b.numpy().copy() for b in net.buffers()]
    works, reason = double_backward_probe(net, SPACE.widths(SPACE.smallest()), x[:8], y[:8])
    assert isinstance(reason, str) and reason
    assert all(np.array_equal(v, b.numpy()) for v, b in zip(buffers, net.buffers()))
    _pinned_paddle("second order through the supernet (revisit track1/methods/matcher.py if it works now)")
    assert not works, reason


# -- Cream inside the training loop -------------------------------------------------------------
CREAM = ["train.sampler=spos", "train.cream.enabled=true", "train.cream.warmup=0.25",
         "train.cream.board_size=3", "train.cream.store_images=4", "train.visualdl=false"]
AUTHORS = ["train.cream.board_rule=authors", "train.cream.gap=0.05", "train.cream.store_outputs=teacher",
           "train.label_smoothing=0.1", "train.cream.meta_order=before", "train.cream.meta_lookahead=kd",
           "train.cream.meta_batch=4", "train.cream.meta_features=flat", "train.cream.meta_init=uniform",
           "train.cream.meta_optimizer=nesterov", "train.cream.meta_lr=0.1", "train.cream.meta_decay=linear",
           "train.cream.meta_clip=1.0", "train.cream.meta_student_step=true", "train.cream.rho_grad=true"]


def _weights(path):
    return {k: np.asarray(v) for k, v in paddle.load(str(path / "model.pdparams")).items()}


@pytest.mark.parametrize("pick", ["top1", "meta", "authors"])
def test_cream_run_resumes_to_the_same_weights_board_and_matcher(tmp_path, pick):
    over = CREAM + ["train.cream.meta_interval=0.125"] + (
        [f"train.cream.pick={pick}"] if pick != "authors" else ["train.cream.pick=meta"] + AUTHORS)
    full = train(tiny_config(tmp_path / "a", *over), progress=False)
    part = train(tiny_config(tmp_path / "b", *over, "train.max_steps=11"), progress=False)
    assert part.name == "step_0000011"
    resumed = train(tiny_config(tmp_path / "b", *over), resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    _, fresh = build_supernet(tiny_config(tmp_path / "c", *over))
    assert not np.array_equal(a["stem_conv.weight"], fresh.stem_conv.weight.numpy())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    sa, sb = checkpoint.load_state(full)["cream"], checkpoint.load_state(resumed)["cream"]
    assert len(sa["board"]["entries"]) == 3
    assert [e["code"] for e in sa["board"]["entries"]] == [e["code"] for e in sb["board"]["entries"]]
    assert [e["acc"] for e in sa["board"]["entries"]] == [e["acc"] for e in sb["board"]["entries"]]
    if pick == "top1":
        assert sa["matcher"] is None
        return
    for n in sa["matcher"]["weights"]:
        np.testing.assert_array_equal(np.asarray(sa["matcher"]["weights"][n]),
                                      np.asarray(sb["matcher"]["weights"][n]))
    oa, ob = sa["matcher"]["optimizer"], sb["matcher"]["optimizer"]
    assert oa.keys() == ob.keys()
    moments = [k for k in oa if "pow" not in k and k != "LR_Scheduler"]
    assert moments and any(np.any(np.asarray(oa[k])) for k in moments)   # the matcher did learn
    for k in oa:
        if k != "LR_Scheduler":
            np.testing.assert_array_equal(np.asarray(oa[k]), np.asarray(ob[k]), err_msg=k)


def test_cream_on_sandwich_random_roles(tmp_path):
    """With the sandwich rule only the random subnets learn from and enter the board; the matcher
    learns."""
    cfg = tiny_config(tmp_path, *CREAM[1:], "train.sampler=sandwich", "train.max_steps=10",
                      "train.cream.pick=meta", "train.cream.meta_interval=0.2")
    ckpt = train(cfg, progress=False)
    assert ckpt.name == "step_0000010"
    state = checkpoint.load_state(ckpt)["cream"]
    codes = [e["code"] for e in state["board"]["entries"]]
    assert len(codes) == 3 and not {SPACE.largest().code, SPACE.smallest().code} & set(codes)
    init = M.MetaMatcher(10, images=4, rng=np.random.default_rng(0)).weights()
    assert not np.array_equal(np.asarray(state["matcher"]["weights"]["w0"]), init["w0"])


RANK_SCRIPT = '''
import sys
import numpy as np
import paddle
from track1.methods import cream as C
from track1.network.supernet import SuperNet
from track1.pipeline.config import load_config
from track1.space import SearchSpace

settings = lambda **kw: C.Settings.from_config({**load_config()["train"]["cream"], **kw})  # noqa: E731
paddle.distributed.init_parallel_env()
rank = paddle.distributed.get_rank()
space = SearchSpace(width_mult=0.125, resolution=32, num_classes=10)
paddle.seed(0)
net = SuperNet(space)
net.train()
opt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=net.parameters(),
                                use_nesterov=True)
cr = C.Cream(space, 16, settings(board_size=3, store_images=4, pick="meta", meta_lookahead="kd",
                                   meta_batch=4, meta_features="flat", meta_optimizer="nesterov",
                                   meta_lr=0.1, meta_clip=1.0, meta_student_step=True))
rng = np.random.default_rng(100 + rank)          # each rank its own batch, as under DataParallel
x = paddle.to_tensor(rng.standard_normal((8, 3, 32, 32)).astype("float32"))
y = paddle.to_tensor(rng.integers(0, 10, 8).astype("int64"))
archs = [space.sample(np.random.default_rng(i)) for i in range(4)]   # the same paths on every rank
for a in archs[:3]:
    with paddle.no_grad():
        cr.observe(a, net(x, space.widths(a)), x, y)
for step in (4, 6):
    cr.meta_step(net, archs[3], x, y, step, 0.05, opt)
np.save(sys.argv[1] + f"/matcher.{rank}.npy", cr.matcher.w0.numpy())
np.save(sys.argv[1] + f"/stem.{rank}.npy", net.stem_conv.weight.numpy())
'''


def test_two_ranks_keep_the_same_matcher_and_student(tmp_path):
    """Ranks see different batches; the matcher's and the extra student step's gradients are
    averaged over them, so both stay identical across ranks."""
    import os
    import subprocess
    import sys
    from conftest import REPO
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                          "--log_dir", str(tmp_path / "log"), str(script), str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    logs = "".join((tmp_path / "log" / f"workerlog.{r}").read_text()[-1500:] for r in range(2)
                   if (tmp_path / "log" / f"workerlog.{r}").exists())
    assert run.returncode == 0, logs
    m0, m1 = np.load(tmp_path / "matcher.0.npy"), np.load(tmp_path / "matcher.1.npy")
    s0, s1 = np.load(tmp_path / "stem.0.npy"), np.load(tmp_path / "stem.1.npy")
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(s0, s1)
    init = M.MetaMatcher(10, images=4, features="flat", rng=np.random.default_rng(0)).w0.numpy()
    assert not np.array_equal(m0, init)               # the matcher did learn
