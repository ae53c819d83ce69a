"""Convolution as large matrix products (forward, input and weight gradients), for training and scoring.

Paddle's CPU conv2d runs an im2col and a small GEMM per image; on the small feature maps of a 32 px
supernet one GEMM over the whole batch is several times faster. Each shape takes the path
`conv_kind` picks (measured per shape: benchmarks/bench_conv.py):

  dense   maps of at most 4x4: the conv is the linear map [N, C*H*W] @ D[C*H*W, O*Ho*Wo], D the
          kernel times a one-hot tap matrix (zero where a tap falls in the padding); its weight
          gradient is the transposed product;
  im2col  the batch channel-last, k*k shifted slices concatenated into [N*Ho*Wo, k*k*C] columns,
          one GEMM; the input gradient of a 'same' stride-1 conv is the same conv of the output
          gradient with the flipped kernel, other strides scatter the column gradient back phase
          by phase. Chosen for 1x1 convs only: for 3x3 and 7x7 kernels Paddle's CPU concat and pad
          cost more than the stock kernel;
  stock   F.conv2d (3x3 convs on 8x8 and larger maps, the 7x7 stem), at the configured thread
          count (on a quiet machine its 2-thread kernels beat 1-thread ones run inside a 2-thread
          step: benchmarks/bench_conv.py).

Each path has its own backward (paddle.autograd.PyLayer); gradients reach a sliced weight's full
parameter through the slice. Results equal F.conv2d to float rounding (other summation orders).
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

MODES = ("fast", "stock")


def out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@functools.lru_cache(maxsize=None)
def _dense_taps(h: int, w: int, k: int, s: int, p: int) -> tuple[np.ndarray, int]:
    """[H*W, Ho*Wo] kernel tap linking input (iy, ix) to output (oy, ox), k*k where none; and the
    number of real taps (the conv's multiply-adds per channel pair)."""
    ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
    iy, ix = np.divmod(np.arange(h * w), w)
    oy, ox = np.divmod(np.arange(ho * wo), wo)
    ty = iy[:, None] - oy[None, :] * s + p
    tx = ix[:, None] - ox[None, :] * s + p
    inside = (ty >= 0) & (ty < k) & (tx >= 0) & (tx < k)
    idx = np.where(inside, ty * k + tx, k * k).astype(np.int64)
    return idx, int(inside.sum())


@functools.lru_cache(maxsize=None)
def _tap_matrix(h: int, w: int, k: int, s: int, p: int) -> paddle.Tensor:
    """[k*k, H*W*Ho*Wo] one-hot of the kernel tap linking each (input, output) position pair (a
    zero column where none): D is the kernel times it, and its transpose sums D's gradient back
    onto the taps. Matrix products, because Paddle's CPU gather and concat are slow."""
    idx, _ = _dense_taps(h, w, k, s, p)
    flat = idx.reshape(-1)
    onehot = np.zeros((k * k + 1, flat.size), dtype=np.float32)
    onehot[flat, np.arange(flat.size)] = 1.0
    return paddle.to_tensor(onehot[:k * k])


def dense_matrix(weight: paddle.Tensor, h: int, w: int, s: int, p: int) -> paddle.Tensor:
    """D [C*H*W, O*Ho*Wo] of a conv with this [O, C, k, k] weight on H x W maps."""
    o, c, k = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
    dense = paddle.matmul(weight.reshape([o * c, k * k]), _tap_matrix(h, w, k, s, p))
    dense = dense.reshape([o, c, h * w, ho * wo]).transpose([1, 2, 0, 3])
    return dense.reshape([c * h * w, o * ho * wo])


def dense_waste(h: int, w: int, k: int, s: int, p: int) -> float:
    """Multiply-adds of the dense product over those of the conv itself."""
    idx, useful = _dense_taps(h, w, k, s, p)
    return idx.size / max(useful, 1)


def _columns(xh: paddle.Tensor, k: int, s: int, p: int) -> paddle.Tensor:
    """[N*Ho*Wo, k*k*C] columns (tap-major, channel-minor) of a channel-last batch [N, H, W, C]."""
    n, h, w, c = xh.shape
    ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
    if p:
        xh = F.pad(xh, [p, p, p, p], data_format="NHWC")
    if k == 1:
        cols = xh if s == 1 else xh[:, ::s, ::s, :]
    else:
        taps = [xh[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                for i in range(k) for j in range(k)]
        cols = paddle.concat(taps, axis=3)
    return cols.reshape([n * ho * wo, k * k * c])


def _im2col_nhwc(xh: paddle.Tensor, wmat: paddle.Tensor, k: int, s: int, p: int):
    """Channel-last conv: ([N, Ho, Wo, O] output, the columns)."""
    n, h, w, _ = xh.shape
    cols = _columns(xh, k, s, p)
    out = paddle.matmul(cols, wmat, transpose_y=True)
    return out.reshape([n, out_size(h, k, s, p), out_size(w, k, s, p), wmat.shape[0]]), cols


def _scatter_columns(dcols: paddle.Tensor, shape, k: int, s: int, p: int) -> paddle.Tensor:
    """The adjoint of _columns: [N*Ho*Wo, k*k*C] column gradients summed back into [N, H, W, C].

    Taps are grouped by phase (i mod s, j mod s); within a phase each tap is a shift on the
    stride-s grid, so a phase is a sum of zero-padded shifts, and the phases interleave."""
    n, h, w, c = shape
    ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
    dcols = dcols.reshape([n, ho, wo, k * k, c])
    taps = paddle.unbind(dcols, axis=3) if k > 1 else [dcols.reshape([n, ho, wo, c])]
    gh, gw = ho + (k - 1) // s, wo + (k - 1) // s  # phase grid covering the padded input
    phases = []
    for py in range(s):
        row = []
        for px in range(s):
            acc = None
            for i in range(py, k, s):
                for j in range(px, k, s):
                    a, b = i // s, j // s
                    # F.pad's 4-element list is [left, right, top, bottom]
                    t = F.pad(taps[i * k + j], [b, gw - wo - b, a, gh - ho - a],
                              data_format="NHWC")
                    acc = t if acc is None else acc + t
            row.append(acc if acc is not None else paddle.zeros([n, gh, gw, c], dcols.dtype))
        phases.append(paddle.stack(row, axis=3))  # [N, gh, gw, s, C]
    full = paddle.stack(phases, axis=2).reshape([n, gh * s, gw * s, c])
    hp, wp = h + 2 * p, w + 2 * p
    if gh * s < hp or gw * s < wp:
        full = F.pad(full, [0, max(0, wp - gw * s), 0, max(0, hp - gh * s)], data_format="NHWC")
    return full[:, p:p + h, p:p + w, :]


class _Im2col(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        o, c, k = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
        wmat = weight.transpose([0, 2, 3, 1]).reshape([o, k * k * c])
        out, cols = _im2col_nhwc(x.transpose([0, 2, 3, 1]), wmat, k, stride, padding)
        ctx.conf = (tuple(x.shape), k, stride, padding, not x.stop_gradient)
        ctx.save_for_backward(cols, wmat)
        return out.transpose([0, 3, 1, 2])

    @staticmethod
    def backward(ctx, dy):
        cols, wmat = ctx.saved_tensor()
        (n, c, h, w), k, s, p, need_dx = ctx.conf
        o = int(wmat.shape[0])
        dyh = dy.transpose([0, 2, 3, 1])
        dym = dyh.reshape([-1, o])
        dw = paddle.matmul(dym, cols, transpose_x=True)
        dw = dw.reshape([o, k, k, c]).transpose([0, 3, 1, 2])
        if not need_dx:
            return None, dw
        if s == 1 and 2 * p == k - 1:
            # Input gradient of a 'same' conv: the same conv of dy with the flipped, transposed kernel.
            wflip = wmat.reshape([o, k, k, c]).flip([1, 2]).transpose([3, 1, 2, 0])
            dxh, _ = _im2col_nhwc(dyh, wflip.reshape([c, k * k * o]), k, 1, k - 1 - p)
        else:
            dxh = _scatter_columns(paddle.matmul(dym, wmat), (n, h, w, c), k, s, p)
        return dxh.transpose([0, 3, 1, 2]), dw


class _Dense(PyLayer):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        n, c, h, w = x.shape
        o, k = int(weight.shape[0]), int(weight.shape[2])
        ho, wo = out_size(h, k, stride, padding), out_size(w, k, stride, padding)
        dense = dense_matrix(weight, h, w, stride, padding)
        xm = x.reshape([n, c * h * w])
        ctx.conf = (tuple(x.shape), tuple(weight.shape), stride, padding, not x.stop_gradient)
        ctx.save_for_backward(xm, dense)
        return paddle.matmul(xm, dense).reshape([n, o, ho, wo])

    @staticmethod
    def backward(ctx, dy):
        xm, dense = ctx.saved_tensor()
        (n, c, h, w), (o, _, k, _), s, p, need_dx = ctx.conf
        dym = dy.reshape([n, -1])
        dx = None
        if need_dx:
            dx = paddle.matmul(dym, dense, transpose_y=True).reshape([n, c, h, w])
        dd = paddle.matmul(xm, dym, transpose_x=True)  # [C*H*W, O*Ho*Wo]
        hw, l = h * w, int(dy.shape[2]) * int(dy.shape[3])
        dd = dd.reshape([c, hw, o, l]).transpose([2, 0, 1, 3]).reshape([o * c, hw * l])
        dw = paddle.matmul(dd, _tap_matrix(h, w, k, s, p), transpose_y=True).reshape([o, c, k, k])
        return dx, dw


def conv_kind(h: int, w: int, k: int, s: int, p: int) -> str:
    """The path for a conv on H x W maps (per-shape times: benchmarks/bench_conv.py)."""
    if h * w <= 16 and dense_waste(h, w, k, s, p) <= 3.0:
        return "dense"
    if k == 1:
        return "im2col"  # a strided subsample and one GEMM
    return "stock"


def conv2d(x: paddle.Tensor, weight: paddle.Tensor, stride: int = 1, padding: int = 0,
           mode: str = "fast") -> paddle.Tensor:
    """F.conv2d(x, weight, stride=stride, padding=padding) (NCHW, no bias, square kernel), computed
    by the fastest path for its shape when mode is 'fast'; differentiable in x and weight."""
    if mode == "stock":
        return F.conv2d(x, weight, stride=stride, padding=padding)
    if mode != "fast":
        raise ValueError(f"unknown conv mode {mode!r}: expected one of {', '.join(MODES)}")
    h, w, k = int(x.shape[2]), int(x.shape[3]), int(weight.shape[2])
    kind = conv_kind(h, w, k, stride, padding)
    if kind == "dense":
        return _Dense.apply(x, weight, stride, padding)
    if kind == "im2col":
        return _Im2col.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, stride=stride, padding=padding)


class Conv2D(nn.Conv2D):
    """A bias-free nn.Conv2D (same parameter name, shape and initialisation) whose forward is
    conv2d(..., mode): state dicts and seeds carry over between the two modes unchanged.
    paddle.flops matches layers by exact type: pass it custom_ops={Conv2D: count_convNd}
    (paddle.hapi.dynamic_flops) to count these."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, mode: str = "stock"):
        if mode not in MODES:
            raise ValueError(f"unknown conv mode {mode!r}: expected one of {', '.join(MODES)}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias_attr=False)
        self.mode, self.square_stride, self.square_padding = mode, stride, padding

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return conv2d(x, self.weight, self.square_stride, self.square_padding, self.mode)


class FastConv:
    """Inference conv2d with a DynamicConv2D's leading weights, its prepared weights cached.

    The paths of `conv2d` without autograd: dense where D holds at most `max_waste` times the
    conv's multiply-adds, im2col for other 1x1 convs, stock F.conv2d for the rest. Prepared weights
    (D, or the [O, C] matrix) are cached per (conv, C, O, H, W), least recently used first out once
    they exceed `cache_bytes`; the cache assumes the weights do not change while it is alive
    (score_tree makes one per call, under no_grad).
    """

    def __init__(self, max_waste: float = 3.0, cache_bytes: int = 256 << 20):
        self.max_waste, self.cache_bytes = max_waste, cache_bytes
        self._cache: OrderedDict[tuple, tuple[str, paddle.Tensor | None]] = OrderedDict()
        self._bytes = 0

    def __call__(self, conv, x: paddle.Tensor, out_channels: int) -> paddle.Tensor:
        n, c, h, w = x.shape
        k, s, p = int(conv.weight.shape[2]), conv.stride, conv.padding
        key = (id(conv), c, out_channels, h, w)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._prepare(conv, c, out_channels, h, w)
            self._store(key, entry)
        else:
            self._cache.move_to_end(key)
        kind, mat = entry
        if kind == "dense":
            ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
            return paddle.matmul(x.reshape([n, c * h * w]), mat).reshape([n, out_channels, ho, wo])
        if kind == "im2col":
            ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
            if s == 1 and ho * wo >= 32:
                # Batched [O, C] @ [C, L] per image: no transposes, and L is long enough.
                return paddle.matmul(mat, x.reshape([n, c, h * w])).reshape([n, -1, ho, wo])
            out, _ = _im2col_nhwc(x.transpose([0, 2, 3, 1]), mat, k, s, p)
            return out.transpose([0, 3, 1, 2])
        return F.conv2d(x, conv.weight[:out_channels, :c], stride=s, padding=p)

    def _prepare(self, conv, c: int, o: int, h: int, w: int) -> tuple[str, paddle.Tensor | None]:
        k, s, p = int(conv.weight.shape[2]), conv.stride, conv.padding
        weight = conv.weight[:o, :c]
        if dense_waste(h, w, k, s, p) <= self.max_waste:
            return "dense", dense_matrix(weight, h, w, s, p)
        if k == 1:
            return "im2col", weight.reshape([o, c])
        return "stock", None

    def _store(self, key: tuple, entry: tuple[str, paddle.Tensor | None]) -> None:
        self._cache[key] = entry
        if entry[1] is not None:
            self._bytes += int(entry[1].numel()) * 4
        while self._bytes > self.cache_bytes and len(self._cache) > 1:
            _, (_, old) = self._cache.popitem(last=False)
            if old is not None:
                self._bytes -= int(old.numel()) * 4
