import numpy as np
import paddle
import pytest

from track1.methods.losses import rank_loss, rank_weight, soft_cross_entropy


def test_soft_cross_entropy_matches_numpy():
    logits = paddle.to_tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    target = paddle.to_tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    lg = logits.numpy()
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    expected = -(target.numpy() * logp).sum(1).mean()
    assert soft_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def _grads(kind, loss_a, loss_b, z_a, z_b, margin=0.0):
    """(rank loss, d/dL_a, d/dL_b) on a hand-made pair; None where no gradient reaches a loss."""
    la = paddle.to_tensor(loss_a, stop_gradient=False)
    lb = paddle.to_tensor(loss_b, stop_gradient=False)
    out = rank_loss(la, lb, z_a, z_b, kind, margin)
    if out.stop_gradient:  # a zero with no graph: nothing moves
        return out.item(), None, None
    out.backward()
    grad = lambda t: None if t.grad is None else t.grad.item()  # noqa: E731
    return out.item(), grad(la), grad(lb)


# Gradient descent moves a loss against its gradient: +1 pushes it down, -1 pushes it up.
@pytest.mark.parametrize("kind, la, lb, za, zb, expected", [
    # a better by the teacher but with the larger loss: only a's loss is pushed down.
    ("better_only", 2.0, 1.0, 5.0, 1.0, (1.0, 1.0, None)),
    ("better_only", 1.0, 2.0, 1.0, 5.0, (1.0, None, 1.0)),   # b better, b worse loss: b down
    ("better_only", 1.0, 2.0, 5.0, 1.0, (0.0, 0.0, None)),   # order agrees: no push
    ("better_only", 1.0, 2.0, 3.0, 3.0, (0.0, None, None)),  # a tie carries no order
    # The paper's margin loss moves both: the better-by-teacher one down, the other up.
    ("margin", 2.0, 1.0, 5.0, 1.0, (1.0, 1.0, -1.0)),
    ("margin", 1.0, 2.0, 1.0, 5.0, (1.0, -1.0, 1.0)),
    ("margin", 1.0, 2.0, 3.0, 3.0, (0.0, None, None)),
    # The authors' step: only b moves; down when b is better by the teacher...
    ("second_only", 1.0, 2.0, 1.0, 5.0, (1.0, None, 1.0)),
    ("second_only", 2.0, 1.0, 1.0, 5.0, (0.0, None, 0.0)),
    # ...else UP, until it is no lower than a's; ties take the else branch.
    ("second_only", 2.0, 1.0, 5.0, 1.0, (1.0, None, -1.0)),
    ("second_only", 2.0, 1.0, 3.0, 3.0, (1.0, None, -1.0)),
    ("second_only", 1.0, 2.0, 5.0, 1.0, (0.0, None, -0.0)),
])
def test_each_rank_loss_pushes_the_documented_loss(kind, la, lb, za, zb, expected):
    value, ga, gb = _grads(kind, la, lb, za, zb)
    assert value == pytest.approx(expected[0])
    assert (ga, gb) == (expected[1], expected[2])


def test_rank_loss_margin_and_unknown_kind():
    assert _grads("margin", 2.0, 1.0, 5.0, 1.0, margin=0.5)[0] == pytest.approx(1.5)
    assert _grads("margin", 1.0, 2.0, 5.0, 1.0, margin=0.5)[0] == 0.0
    assert _grads("second_only", 1.0, 1.0, 5.0, 1.0, margin=0.25)[0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown rank loss 'authors'"):
        rank_loss(paddle.to_tensor(1.0), paddle.to_tensor(2.0), 1.0, 2.0, "authors")


def test_rank_weight_schedules():
    assert rank_weight(5, 50, "linear", 2.0, 10) == 0.5
    # the authors' min(2, epoch/10.) on an integer epoch: 0 for the whole first epoch
    assert [rank_weight(e, 70, "staircase", 2.0, 10) for e in (0.0, 0.99, 1.0, 5.5, 19.9, 20.0, 69.5)] == \
        [0.0, 0.0, 0.1, 0.5, 1.9, 2.0, 2.0]
    assert rank_weight(40, 50, "linear", 2.0, 10) == 2.0
    assert rank_weight(25, 50, "sin", 2.0, 10) == pytest.approx(2 * np.sin(0.4 * np.pi))
