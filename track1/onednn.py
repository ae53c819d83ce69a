"""oneDNN convolutions on the CPU, from the oneDNN library inside Paddle's own wheel, called through ctypes.

Why: in dynamic mode Paddle's CPU conv2d never reaches its oneDNN kernels (no flag selects them) and
runs an im2col and a small GEMM per image instead. The wheel ships oneDNN itself
(paddle/libs/libdnnl.so.3) but not its headers. So this module declares the few functions of
oneDNN's stable C API (v3.x: include/oneapi/dnnl/dnnl.h) that a convolution needs, with the enum
values of dnnl_types.h, and checks the loaded library's major version before any call.

Each shape gets a `ConvPlan`: a forward primitive, then, on first use, the backward-data and
backward-weights primitives. Their arguments let oneDNN pick its own blocked layouts (format 'any'),
because its JIT kernels want them; the plan reorders Paddle's NCHW tensors into them and back,
through three process-wide scratch buffers (one per argument, grown on demand: calls run one at a
time, and a per-call allocation cost as much as a small conv).
Plans are cached per shape (least recently used out first). Primitives run on the thread count
that OMP_NUM_THREADS gave the process (oneDNN's OpenMP runtime reads it).
"""
from __future__ import annotations

import ctypes
import glob
import os
from collections import OrderedDict

import numpy as np
import paddle

# oneDNN 3.x C API constants (dnnl_types.h, dnnl_common_types.h).
_F32, _TAG_ANY, _TAG_ABCD, _ENGINE_CPU, _STREAM_IN_ORDER = 3, 1, 5, 1, 1
_FORWARD_TRAINING, _FORWARD_INFERENCE = 64, 96
_CONV_DIRECT = 1
_Q_SRC, _Q_DIFF_SRC, _Q_WEIGHTS, _Q_DIFF_WEIGHTS, _Q_DST, _Q_DIFF_DST = 129, 130, 131, 132, 133, 134
_Q_IMPL_INFO = 8
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161

_vp = ctypes.c_void_p
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t


class _Arg(ctypes.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", _vp)]


class _Version(ctypes.Structure):  # dnnl_version_t
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


_P = ctypes.POINTER
_SIGNATURES = {
    "dnnl_version": (_P(_Version), []),
    "dnnl_engine_create": (ctypes.c_int, [_P(_vp), ctypes.c_int, ctypes.c_size_t]),
    "dnnl_stream_create": (ctypes.c_int, [_P(_vp), _vp, ctypes.c_uint]),
    "dnnl_memory_desc_create_with_tag": (ctypes.c_int, [_P(_vp), ctypes.c_int, _Dims, ctypes.c_int,
                                                        ctypes.c_int]),
    "dnnl_memory_desc_equal": (ctypes.c_int, [_vp, _vp]),
    "dnnl_memory_desc_get_size": (ctypes.c_size_t, [_vp]),
    "dnnl_memory_desc_destroy": (ctypes.c_int, [_vp]),
    "dnnl_memory_create": (ctypes.c_int, [_P(_vp), _vp, _vp, _vp]),
    "dnnl_memory_set_data_handle": (ctypes.c_int, [_vp, _vp]),
    "dnnl_memory_destroy": (ctypes.c_int, [_vp]),
    "dnnl_convolution_forward_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, ctypes.c_int, _vp, _vp, _vp, _vp,
                       _Dims, _Dims, _Dims, _Dims, _vp]),
    "dnnl_convolution_backward_data_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, _vp, _vp, _vp, _Dims, _Dims, _Dims, _Dims,
                       _vp, _vp]),
    "dnnl_convolution_backward_weights_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, _vp, _vp, _vp, _vp, _Dims, _Dims, _Dims, _Dims,
                       _vp, _vp]),
    "dnnl_reorder_primitive_desc_create": (ctypes.c_int, [_P(_vp), _vp, _vp, _vp, _vp, _vp]),
    "dnnl_primitive_desc_query_md": (_vp, [_vp, ctypes.c_int, ctypes.c_int]),
    "dnnl_primitive_desc_query": (ctypes.c_int, [_vp, ctypes.c_int, ctypes.c_int, _vp]),
    "dnnl_primitive_desc_destroy": (ctypes.c_int, [_vp]),
    "dnnl_primitive_create": (ctypes.c_int, [_P(_vp), _vp]),
    "dnnl_primitive_execute": (ctypes.c_int, [_vp, _vp, ctypes.c_int, _P(_Arg)]),
    "dnnl_primitive_destroy": (ctypes.c_int, [_vp]),
}


class OneDNNError(RuntimeError):
    pass


class _Library:
    """The loaded library, its CPU engine and one in-order stream."""

    def __init__(self, path: str):
        self.dll = ctypes.CDLL(path)
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.dll, name)
            fn.restype, fn.argtypes = restype, argtypes
        v = self.dll.dnnl_version().contents
        self.version = (v.major, v.minor, v.patch)
        if v.major != 3:
            raise OneDNNError(f"{path} is oneDNN {v.major}.{v.minor}: the declarations here are 3.x's")
        self.engine, self.stream = _vp(), _vp()
        self.call("dnnl_engine_create", ctypes.byref(self.engine), _ENGINE_CPU, 0)
        self.call("dnnl_stream_create", ctypes.byref(self.stream), self.engine, _STREAM_IN_ORDER)

    def call(self, name: str, *args) -> None:
        status = getattr(self.dll, name)(*args)
        if status != 0:
            raise OneDNNError(f"{name} failed with oneDNN status {status}")

    def new(self, name: str, *args) -> _vp:
        handle = _vp()
        self.call(name, ctypes.byref(handle), *args)
        return handle

    def desc(self, dims: list[int], tag: int) -> _vp:
        return self.new("dnnl_memory_desc_create_with_tag", len(dims), _Dims(*dims), _F32, tag)

    def memory(self, md) -> _vp:
        return self.new("dnnl_memory_create", md, self.engine, None)  # handle set per call

    def execute(self, primitive: _vp, args: list[tuple[int, _vp]]) -> None:
        packed = (_Arg * len(args))(*[_Arg(a, m) for a, m in args])
        self.call("dnnl_primitive_execute", primitive, self.stream, len(args), packed)

    def impl_name(self, pd: _vp) -> str:
        name = ctypes.c_char_p()
        self.call("dnnl_primitive_desc_query", pd, _Q_IMPL_INFO, 0, ctypes.byref(name))
        return name.value.decode()


_LIB: _Library | None = None
_WHY_NOT: str | None = None


def _library() -> _Library | None:
    global _LIB, _WHY_NOT
    if _LIB is None and _WHY_NOT is None:
        found = sorted(glob.glob(os.path.join(os.path.dirname(paddle.__file__), "libs", "libdnnl.so*")))
        try:
            if not found:
                raise OneDNNError("this Paddle wheel ships no libdnnl")
            _LIB = _Library(found[-1])
        except (OSError, AttributeError, OneDNNError) as e:
            _WHY_NOT = str(e)
    return _LIB


def available() -> bool:
    return _library() is not None


def why_unavailable() -> str | None:
    """None when oneDNN loaded; else the reason, one line."""
    _library()
    return _WHY_NOT


def version() -> tuple[int, int, int] | None:
    lib = _library()
    return lib.version if lib else None


class _Scratch:
    """A growing, 64-byte aligned host buffer."""

    def __init__(self):
        self.buf, self.ptr, self.size = None, 0, 0

    def get(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.size = nbytes
            self.buf = np.empty(self.size + 64, dtype=np.uint8)
            self.ptr = (self.buf.ctypes.data + 63) // 64 * 64
        return self.ptr


_SCRATCH = (_Scratch(), _Scratch(), _Scratch())  # one per primitive argument position


class _Operand:
    """One primitive argument: Paddle's plain NCHW/OIHW tensor, and the layout the primitive wants
    (the same, or a blocked one reached by a reorder through a scratch buffer)."""

    def __init__(self, lib: _Library, plain_md: _vp, pd: _vp, query: int, position: int):
        self.lib, self.scratch = lib, _SCRATCH[position]
        want = lib.dll.dnnl_primitive_desc_query_md(pd, query, 0)
        self.plain = lib.memory(plain_md)
        self.blocked = None
        if not lib.dll.dnnl_memory_desc_equal(want, plain_md):
            self.blocked = lib.memory(want)
            self.nbytes = int(lib.dll.dnnl_memory_desc_get_size(want))
            self.to_blocked = self._reorder(plain_md, want)
            self.to_plain = self._reorder(want, plain_md)
        self.memory = self.plain if self.blocked is None else self.blocked

    def _reorder(self, src, dst) -> _vp:
        pd = self.lib.new("dnnl_reorder_primitive_desc_create", src, self.lib.engine, dst,
                          self.lib.engine, None)
        try:
            return self.lib.new("dnnl_primitive_create", pd)
        finally:
            self.lib.call("dnnl_primitive_desc_destroy", pd)

    def bind(self, ptr: int, load: bool) -> None:
        """Point `memory` at Paddle's tensor (through the scratch buffer when blocked); `load`
        copies the tensor's data in."""
        self.lib.dll.dnnl_memory_set_data_handle(self.plain, _vp(ptr))
        if self.blocked is not None:
            self.lib.dll.dnnl_memory_set_data_handle(self.blocked, _vp(self.scratch.get(self.nbytes)))
            if load:
                self.lib.execute(self.to_blocked, [(_ARG_SRC, self.plain), (_ARG_DST, self.blocked)])

    def store(self) -> None:
        """After a primitive wrote the blocked memory: copy it back to Paddle's tensor."""
        if self.blocked is not None:
            self.lib.execute(self.to_plain, [(_ARG_SRC, self.blocked), (_ARG_DST, self.plain)])

    def close(self) -> None:
        for m in (self.plain, self.blocked):
            if m is not None:
                self.lib.call("dnnl_memory_destroy", m)
        if self.blocked is not None:
            self.lib.call("dnnl_primitive_destroy", self.to_blocked)
            self.lib.call("dnnl_primitive_destroy", self.to_plain)


def _contiguous(t: paddle.Tensor) -> paddle.Tensor:
    """A dense float32 copy where `t` is a strided view (Paddle's slices are views)."""
    if t.dtype != paddle.float32:
        raise OneDNNError(f"oneDNN conv takes float32 tensors, not {t.dtype}")
    return t if t.is_contiguous() else paddle.assign(t)


class ConvPlan:
    """The convolution of an [N, C, H, W] batch by an [O, C, k, k] kernel (stride s, padding p,
    no bias), as oneDNN primitives; backward primitives are built on first use."""

    def __init__(self, lib: _Library, n: int, c: int, h: int, w: int, o: int, k: int, s: int,
                 p: int, training: bool):
        self.lib = lib
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        self.x_shape, self.w_shape, self.y_shape = [n, c, h, w], [o, c, k, k], [n, o, ho, wo]
        self._mds = [lib.desc(d, _TAG_ABCD) for d in (self.x_shape, self.w_shape, self.y_shape)]
        self._any = [lib.desc(d, _TAG_ANY) for d in (self.x_shape, self.w_shape, self.y_shape)]
        # oneDNN's padding_r makes the output size exact; its dilation 0 means none.
        self._geometry = (_Dims(s, s), _Dims(0, 0), _Dims(p, p),
                          _Dims((ho - 1) * s + k - h - p, (wo - 1) * s + k - w - p))
        prop = _FORWARD_TRAINING if training else _FORWARD_INFERENCE
        x_any, w_any, y_any = self._any
        self._fwd_pd = lib.new("dnnl_convolution_forward_primitive_desc_create", lib.engine, prop,
                               _CONV_DIRECT, x_any, w_any, None, y_any, *self._geometry, None)
        self._fwd = self._primitive(self._fwd_pd, (_Q_SRC, _Q_WEIGHTS, _Q_DST),
                                    (_ARG_SRC, _ARG_WEIGHTS, _ARG_DST))
        self._bwd_data = self._bwd_weights = None

    def _primitive(self, pd: _vp, queries: tuple[int, int, int], arg_ids: tuple[int, int, int]):
        operands = [_Operand(self.lib, md, pd, q, i) for i, (md, q) in enumerate(zip(self._mds, queries))]
        args = (_Arg * 3)(*[_Arg(a, op.memory) for a, op in zip(arg_ids, operands)])
        return self.lib.new("dnnl_primitive_create", pd), operands, self.lib.impl_name(pd), args

    def impl_names(self) -> list[str]:
        return [prim[2] for prim in (self._fwd, self._bwd_data, self._bwd_weights) if prim]

    def _run(self, prim, tensors: list, out_index: int):
        """Execute on (x-like, w-like, y-like) tensors; the one at out_index is written."""
        primitive, operands, _, args = prim
        for i, (op, t) in enumerate(zip(operands, tensors)):
            op.bind(t.data_ptr(), load=i != out_index)
        self.lib.call("dnnl_primitive_execute", primitive, self.lib.stream, 3, args)
        operands[out_index].store()

    def forward(self, x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        y = paddle.empty(self.y_shape, dtype="float32")
        self._run(self._fwd, [_contiguous(x), _contiguous(weight), y], 2)
        return y

    def backward_data(self, dy: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        if self._bwd_data is None:
            x_any, w_any, y_any = self._any
            pd = self.lib.new("dnnl_convolution_backward_data_primitive_desc_create", self.lib.engine,
                              _CONV_DIRECT, x_any, w_any, y_any, *self._geometry, self._fwd_pd, None)
            self._bwd_data = self._primitive(pd, (_Q_DIFF_SRC, _Q_WEIGHTS, _Q_DIFF_DST),
                                             (_ARG_DIFF_SRC, _ARG_WEIGHTS, _ARG_DIFF_DST))
            self.lib.call("dnnl_primitive_desc_destroy", pd)
        dx = paddle.empty(self.x_shape, dtype="float32")
        self._run(self._bwd_data, [dx, _contiguous(weight), _contiguous(dy)], 0)
        return dx

    def backward_weights(self, x: paddle.Tensor, dy: paddle.Tensor) -> paddle.Tensor:
        if self._bwd_weights is None:
            x_any, w_any, y_any = self._any
            pd = self.lib.new("dnnl_convolution_backward_weights_primitive_desc_create",
                              self.lib.engine, _CONV_DIRECT, x_any, w_any, None, y_any,
                              *self._geometry, self._fwd_pd, None)
            self._bwd_weights = self._primitive(pd, (_Q_SRC, _Q_DIFF_WEIGHTS, _Q_DIFF_DST),
                                                (_ARG_SRC, _ARG_DIFF_WEIGHTS, _ARG_DIFF_DST))
            self.lib.call("dnnl_primitive_desc_destroy", pd)
        dw = paddle.empty(self.w_shape, dtype="float32")
        self._run(self._bwd_weights, [_contiguous(x), dw, _contiguous(dy)], 1)
        return dw

    def close(self) -> None:
        for prim in (self._fwd, self._bwd_data, self._bwd_weights):
            if prim:
                self.lib.call("dnnl_primitive_destroy", prim[0])
                for op in prim[1]:
                    op.close()
        self.lib.call("dnnl_primitive_desc_destroy", self._fwd_pd)
        for md in self._mds + self._any:
            self.lib.call("dnnl_memory_desc_destroy", md)


_PLANS: OrderedDict[tuple, ConvPlan] = OrderedDict()
MAX_PLANS = 2048  # a supernet's distinct shapes: widths x maps x batch sizes


def plan(x_shape, w_shape, stride: int, padding: int, training: bool = True) -> ConvPlan:
    """The cached plan for this shape (raises OneDNNError when oneDNN is unavailable)."""
    lib = _library()
    if lib is None:
        raise OneDNNError(f"oneDNN is unavailable: {_WHY_NOT}")
    n, c, h, w = (int(d) for d in x_shape)
    o, _, k, _ = (int(d) for d in w_shape)
    key = (n, c, h, w, o, k, stride, padding, training)
    found = _PLANS.get(key)
    if found is not None:
        _PLANS.move_to_end(key)
        return found
    found = _PLANS[key] = ConvPlan(lib, n, c, h, w, o, k, stride, padding, training)
    while len(_PLANS) > MAX_PLANS:
        _PLANS.popitem(last=False)[1].close()
    return found
