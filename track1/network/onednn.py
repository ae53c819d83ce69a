"""oneDNN convolutions (and the training step's conv + batch norm + ReLU + max pool) on the CPU, from
the oneDNN library inside Paddle's own wheel, called through ctypes.

Why: in dynamic mode Paddle's CPU conv2d never reaches its oneDNN kernels (no flag selects them) and
runs an im2col and a small GEMM per image instead. The wheel ships oneDNN itself
(paddle/libs/libdnnl.so.3) but not its headers. So this module declares the few functions of
oneDNN's stable C API (v3.x: include/oneapi/dnnl/dnnl.h) that it calls, with the enum values of
dnnl_types.h, and checks the loaded library's major version before any call.

A plan holds the primitives of one shape: `ConvPlan` a convolution's forward, then, on first use,
its backward-data and backward-weights; `ConvBNPlan` a training step's conv -> batch norm (-> ReLU,
-> max pool) forward and backward, the intermediate maps never leaving oneDNN's layout. Primitive
arguments let oneDNN pick its own blocked layouts (format 'any'), because its JIT kernels want
them; a plan reorders Paddle's NCHW tensors into them and back, through process-wide scratch
buffers (grown on demand: calls run one at a time, and a per-call allocation costs as much as a
small conv). Argument lists are packed once per plan; a call only re-points memories at tensors.
Plans are cached per shape (least recently used out first); a plan's oneDNN objects go when its
last holder lets go of it (the cache, or the autograd node of a pending backward). Primitives run
on the thread count that OMP_NUM_THREADS gave the process (oneDNN's OpenMP runtime reads it: a
library built for another CPU runtime is refused).
"""
from __future__ import annotations

import ctypes
import glob
import os
import weakref
from collections import OrderedDict

import numpy as np
import paddle

from track1.space import conv_out


# oneDNN 3.x C API constants (dnnl_types.h, dnnl_common_types.h).
_F32, _TAG_ANY, _TAG_A, _TAG_ABCD, _ENGINE_CPU, _STREAM_IN_ORDER = 3, 1, 2, 5, 1, 1
_FORWARD_TRAINING, _FORWARD_INFERENCE, _BACKWARD = 64, 96, 128
_CONV_DIRECT, _POOLING_MAX = 1, 0x1FF  # dnnl_alg_kind_t
_BN_SCALE, _BN_SHIFT, _BN_RELU = 0x2, 0x4, 0x8  # dnnl_normalization_flags_t
_Q_SRC, _Q_DIFF_SRC, _Q_WEIGHTS, _Q_DIFF_WEIGHTS, _Q_DST, _Q_DIFF_DST = 129, 130, 131, 132, 133, 134
_Q_WORKSPACE = 135
_Q_IMPL_INFO = 8
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_ARG_MEAN, _ARG_VARIANCE, _ARG_SCALE, _ARG_SHIFT, _ARG_WORKSPACE = 49, 50, 51, 52, 64
_ARG_DIFF_SCALE, _ARG_DIFF_SHIFT = 255, 256
# dnnl_version_t.cpu_runtime: DNNL_RUNTIME_* (dnnl_common_types.h in 3.0, dnnl_config.h later).
_RUNTIME_SEQ, _RUNTIME_OMP = 1, 2
_RUNTIMES = {0: "none", 1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool", 256: "OpenCL",
             512: "SYCL"}

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
    "dnnl_memory_desc_create_with_strides": (ctypes.c_int, [_P(_vp), ctypes.c_int, _Dims, ctypes.c_int,
                                                           _Dims]),
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
    "dnnl_batch_normalization_forward_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, _vp, _vp, ctypes.c_float, ctypes.c_uint, _vp]),
    "dnnl_batch_normalization_backward_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, _vp, _vp, _vp, ctypes.c_float, ctypes.c_uint, _vp,
                       _vp]),
    "dnnl_pooling_forward_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, ctypes.c_int, _vp, _vp, _Dims, _Dims, _Dims, _Dims,
                       _Dims, _vp]),
    "dnnl_pooling_backward_primitive_desc_create": (
        ctypes.c_int, [_P(_vp), _vp, ctypes.c_int, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _Dims, _vp,
                       _vp]),
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
        # Thread counts come from OMP_NUM_THREADS (and results stay bit-identical run to run) only
        # with OpenMP's runtime, or none at all.
        if v.cpu_runtime not in (_RUNTIME_SEQ, _RUNTIME_OMP):
            runtime = _RUNTIMES.get(v.cpu_runtime, f"unknown ({v.cpu_runtime})")
            raise OneDNNError(f"{path}'s CPU runtime is {runtime}: this module needs OpenMP "
                              "(threads from OMP_NUM_THREADS) or sequential")
        self.engine, self.stream = _vp(), _vp()
        self.call("dnnl_engine_create", ctypes.byref(self.engine), _ENGINE_CPU, 0)
        self.call("dnnl_stream_create", ctypes.byref(self.stream), self.engine, _STREAM_IN_ORDER)
        self._execute = self.dll.dnnl_primitive_execute
        self.set_handle = self.dll.dnnl_memory_set_data_handle

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

    def run(self, primitive: _vp, nargs: int, args) -> None:
        """Execute a primitive on its packed (_Arg * nargs) arguments: the per-call hot path."""
        status = self._execute(primitive, self.stream, nargs, args)
        if status != 0:
            raise OneDNNError(f"dnnl_primitive_execute failed with oneDNN status {status}")

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
            _WHY_NOT = " ".join(str(e).split()) or type(e).__name__  # one line
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


# Process-wide scratch buffers for oneDNN-layout copies, by role: calls run one at a time, and
# within a call the copies that are alive together use different buffers (each `_Step` checks its
# own: distinct scratches when built, no source in one it overwrites when run).
_S_X, _S_W, _S_Y, _S_DZ, _S_TMP = (_Scratch() for _ in range(5))


def _empty(shape: list[int]) -> paddle.Tensor:
    """An uninitialised float32 CPU tensor (the op itself: paddle.empty's argument checks cost
    as much again)."""
    return paddle._C_ops.empty(shape, paddle.float32, _CPU)


def _zeros(shape: list[int]) -> paddle.Tensor:
    return paddle._C_ops.full(shape, 0.0, paddle.float32, _CPU)


_CPU = paddle.CPUPlace()


def _contiguous(t: paddle.Tensor) -> paddle.Tensor:
    """A dense float32 copy where `t` is a strided view (Paddle's slices are views)."""
    if t.dtype != paddle.float32:
        raise OneDNNError(f"oneDNN conv takes float32 tensors, not {t.dtype}")
    return t if t.is_contiguous() else paddle.assign(t)


def _floats(ptr: int, n: int) -> np.ndarray:
    """A numpy view of n float32 values at ptr (a Paddle CPU tensor's memory)."""
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr))


class _Mem:
    """A oneDNN memory object of one layout; `point` re-targets it (skipped when unchanged)."""

    def __init__(self, lib: _Library, md):
        self.lib, self.md, self.ptr = lib, md, None
        self.handle = lib.memory(md)
        self.nbytes = int(lib.dll.dnnl_memory_desc_get_size(md))

    def point(self, ptr: int) -> None:
        if ptr != self.ptr:
            self.lib.set_handle(self.handle, ptr)
            self.ptr = ptr

    def tensor(self) -> paddle.Tensor:
        """A new Paddle tensor (float32 words) that holds this memory, pointed at."""
        t = _empty([(self.nbytes + 3) // 4])
        self.point(t.data_ptr())
        return t


class _Prim:
    """A primitive and its argument list, packed once: a call only re-points the memories."""

    def __init__(self, lib: _Library, pd, args: list[tuple[int, _Mem]]):
        self.lib, self.n = lib, len(args)
        self.name = lib.impl_name(pd)
        self.handle = lib.new("dnnl_primitive_create", pd)
        self.args = (_Arg * len(args))(*[_Arg(a, m.handle) for a, m in args])

    def run(self) -> None:
        self.lib.run(self.handle, self.n, self.args)


class _Step:
    """One primitive on memories given by address: each read through a reorder into the layout
    the primitive chose (a scratch copy) when it differs, the written one likewise back out of it.
    `fixed` arguments (statistics, workspaces) are pointed by the caller; `name` (the plan's and
    the step's) is what errors call it."""

    def __init__(self, plan: "_Plan", name: str, pd, reads, write, fixed=()):
        """reads: (arg, source memory, query, scratch) each; write: the same for the output."""
        self.name = f"{type(plan).__name__} {name}"
        # The copies of one step are alive together: each needs a scratch of its own.
        scratches = [scratch for *_, scratch in (*reads, write) if scratch is not None]
        if len(set(scratches)) < len(scratches):
            raise OneDNNError(f"oneDNN step {self.name}: two of its copies share a scratch buffer")
        self.reads = []
        for arg, src, query, scratch in reads:
            mem, reorder = plan.layout_of(src, pd, query, into=True)
            _check_scratch(reorder, scratch)
            self.reads.append((arg, src, mem, reorder, scratch))
        arg, self.dst, query, self.scratch = write
        self.out, self.store = plan.layout_of(self.dst, pd, query, into=False)
        _check_scratch(self.store, self.scratch)
        args = [(a, mem) for a, _, mem, _, _ in self.reads] + [(arg, self.out), *fixed]
        self.prim = plan.prim(pd, args)
        # The scratches this step writes: its reorders' targets, its output before the store.
        self.overwrites = tuple([scratch for _, _, _, reorder, scratch in self.reads
                                 if reorder is not None] + ([self.scratch] if self.store else []))

    def run(self, read_ptrs: list[int], write_ptr: int) -> None:
        # A source in a scratch this step writes would be overwritten (or freed, were the buffer
        # to grow) before the primitive reads it.
        for scratch in self.overwrites:
            if scratch.ptr in read_ptrs and scratch.ptr:
                raise OneDNNError(f"oneDNN step {self.name}: a source lies in a scratch buffer "
                                  "the step overwrites")
        for (_, src, mem, reorder, scratch), ptr in zip(self.reads, read_ptrs):
            src.point(ptr)
            if reorder is not None:
                mem.point(scratch.get(mem.nbytes))
                reorder.run()
        self.dst.point(write_ptr)
        if self.store is not None:
            self.out.point(self.scratch.get(self.out.nbytes))
        self.prim.run()
        if self.store is not None:
            self.store.run()


def _check_scratch(reorder, scratch) -> None:
    # No scratch is given where the layouts are expected to agree (a batch norm on its conv's
    # output); should oneDNN ever pick another, fail at plan time rather than mid-step.
    if reorder is not None and scratch is None:
        raise OneDNNError("oneDNN chose a layout this plan did not expect; use train.conv=stock")


def _destroy(lib: _Library, prims: list, mems: list, pds: list, mds: list) -> None:
    """Destroy a plan's oneDNN objects, each before what it was made from: the plan's finalizer,
    so it takes bare handles, never the plan."""
    for fn, handles in (("dnnl_primitive_destroy", prims), ("dnnl_memory_destroy", mems),
                        ("dnnl_primitive_desc_destroy", pds), ("dnnl_memory_desc_destroy", mds)):
        for handle in handles:
            lib.call(fn, handle)


class _Plan:
    """What a plan of primitives shares: the descriptors, memories and primitives it owns (released
    when the plan goes, or by `close`), the conv's geometry, and the `_Step`s it runs
    (`impl_names`)."""

    def __init__(self, lib: _Library, x_shape, w_dims, s: int, p: int):
        n, c, h, w = x_shape
        o, _, k, _ = w_dims
        ho, wo = conv_out(h, k, s, p), conv_out(w, k, s, p)
        self.lib = lib
        self.x_shape, self.y_shape = [n, c, h, w], [n, o, ho, wo]
        # The handles the plan owns go with the plan, not with its eviction from the cache: a
        # pending backward's autograd node may still hold it. The finalizer holds these lists, not
        # the plan (else the plan would never go). Not at exit: the process releases everything.
        self._prims, self._mems, self._pds, self._mds, self._steps = [], [], [], [], []
        self._release = weakref.finalize(self, _destroy, lib, self._prims, self._mems, self._pds,
                                         self._mds)
        self._release.atexit = False
        self._any = [self._owned(lib.desc(d, _TAG_ANY)) for d in (self.x_shape, w_dims, self.y_shape)]
        # oneDNN's padding_r makes the output size exact; its dilation 0 means none.
        self._geometry = (_Dims(s, s), _Dims(0, 0), _Dims(p, p),
                          _Dims((ho - 1) * s + k - h - p, (wo - 1) * s + k - w - p))

    def _owned(self, md):
        self._mds.append(md)
        return md

    def _pd(self, fn: str, *args) -> _vp:
        pd = self.lib.new(fn, *args)
        self._pds.append(pd)
        return pd

    def mem(self, md) -> _Mem:
        mem = _Mem(self.lib, md)
        self._mems.append(mem.handle)
        return mem

    def prim(self, pd, args: list[tuple[int, _Mem]]) -> _Prim:
        prim = _Prim(self.lib, pd, args)
        self._prims.append(prim.handle)
        return prim

    def step(self, name: str, pd, reads, write, fixed=()) -> _Step:
        self._steps.append(_Step(self, name, pd, reads, write, fixed))
        return self._steps[-1]

    def _conv_pd(self, kind: str, prop_or_hint) -> _vp:
        """The forward (given its prop kind), backward-data or backward-weights (given the forward
        as hint) convolution of this geometry, layouts left to oneDNN."""
        x_any, w_any, y_any = self._any
        engine = self.lib.engine
        if kind == "forward":
            return self._pd("dnnl_convolution_forward_primitive_desc_create", engine, prop_or_hint,
                            _CONV_DIRECT, x_any, w_any, None, y_any, *self._geometry, None)
        if kind == "data":
            return self._pd("dnnl_convolution_backward_data_primitive_desc_create", engine,
                            _CONV_DIRECT, x_any, w_any, y_any, *self._geometry, prop_or_hint, None)
        return self._pd("dnnl_convolution_backward_weights_primitive_desc_create", engine,
                        _CONV_DIRECT, x_any, w_any, None, y_any, *self._geometry, prop_or_hint, None)

    def _query(self, pd, what: int):
        return self.lib.dll.dnnl_primitive_desc_query_md(pd, what, 0)

    def layout_of(self, mem: _Mem, pd, query: int, into: bool) -> tuple[_Mem, _Prim | None]:
        """The memory a primitive uses for `mem`: `mem` itself when the primitive's layout (its
        `query`) is mem's, else a memory of that layout and the reorder into it from `mem` (into)
        or out of it to `mem`."""
        want = self._query(pd, query)
        if self.lib.dll.dnnl_memory_desc_equal(want, mem.md):
            return mem, None
        other = self.mem(want)
        src, dst = (mem, other) if into else (other, mem)
        reorder = self._pd("dnnl_reorder_primitive_desc_create", src.md, self.lib.engine, dst.md,
                           self.lib.engine, None)
        return other, self.prim(reorder, [(_ARG_SRC, src), (_ARG_DST, dst)])

    def impl_names(self) -> list[str]:
        return [step.prim.name for step in self._steps]

    def close(self) -> None:
        """Release the oneDNN objects now rather than when the plan goes; the plan must not run
        again (nor be held by a pending backward)."""
        self._release()


class ConvPlan(_Plan):
    """The convolution of an [N, C, H, W] batch by an [O, C, k, k] kernel (stride s, padding p,
    no bias), as oneDNN primitives; backward primitives are built on first use."""

    def __init__(self, lib: _Library, x_shape, w_shape, s: int, p: int, training: bool):
        super().__init__(lib, x_shape, w_shape, s, p)
        self.w_shape = list(w_shape)
        x_md, w_md, y_md = (self._owned(lib.desc(d, _TAG_ABCD))
                            for d in (self.x_shape, self.w_shape, self.y_shape))
        self.x, self.w, self.y = self.mem(x_md), self.mem(w_md), self.mem(y_md)
        self.dx, self.dw, self.dy = self.mem(x_md), self.mem(w_md), self.mem(y_md)
        self._fwd_pd = self._conv_pd("forward", _FORWARD_TRAINING if training else _FORWARD_INFERENCE)
        self.fwd = self.step("forward", self._fwd_pd,
                             [(_ARG_SRC, self.x, _Q_SRC, _S_X), (_ARG_WEIGHTS, self.w, _Q_WEIGHTS, _S_W)],
                             (_ARG_DST, self.y, _Q_DST, _S_Y))
        self.data = self.weights = None

    # Each tensor is bound to a name for the whole call: a temporary contiguous copy would be
    # freed as soon as its pointer is taken.
    def forward(self, x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        x, weight, y = _contiguous(x), _contiguous(weight), _empty(self.y_shape)
        self.fwd.run([x.data_ptr(), weight.data_ptr()], y.data_ptr())
        return y

    def backward_data(self, dy: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        if self.data is None:
            self.data = self.step("backward data", self._conv_pd("data", self._fwd_pd),
                                  [(_ARG_DIFF_DST, self.dy, _Q_DIFF_DST, _S_Y),
                                   (_ARG_WEIGHTS, self.w, _Q_WEIGHTS, _S_W)],
                                  (_ARG_DIFF_SRC, self.dx, _Q_DIFF_SRC, _S_X))
        dy, weight, dx = _contiguous(dy), _contiguous(weight), _empty(self.x_shape)
        self.data.run([dy.data_ptr(), weight.data_ptr()], dx.data_ptr())
        return dx

    def backward_weights(self, x: paddle.Tensor, dy: paddle.Tensor) -> paddle.Tensor:
        if self.weights is None:
            self.weights = self.step("backward weights", self._conv_pd("weights", self._fwd_pd),
                                     [(_ARG_SRC, self.x, _Q_SRC, _S_X),
                                      (_ARG_DIFF_DST, self.dy, _Q_DIFF_DST, _S_Y)],
                                     (_ARG_DIFF_WEIGHTS, self.dw, _Q_DIFF_WEIGHTS, _S_W))
        x, dy, dw = _contiguous(x), _contiguous(dy), _empty(self.w_shape)
        self.weights.run([x.data_ptr(), dy.data_ptr()], dw.data_ptr())
        return dw


# conv -> batch norm (-> ReLU) of a training step, fused: the conv output stays in oneDNN's layout
# for the batch norm (no reorder between them), the batch norm and its ReLU run as one oneDNN
# primitive (threaded, unlike Paddle's CPU batch_norm), the weight's leading block is read and its
# gradient written in place (no slicing ops), and one autograd node replaces the five to seven of
# the layers one by one (weight and BN slices, conv, batch_norm, relu): on this small network the
# per-op cost of dynamic mode is as large as the arithmetic.
class ConvBNPlan(_Plan):
    """relu?(batch_norm(conv(x, w[:o, :c]))) in training mode, forward and backward, for an
    [N, c, H, W] batch and the leading [o, c] block of an [O, C, k, k] weight (stride s, padding p),
    batch norm over the o channels with batch statistics (biased variance, as Paddle's); then,
    with `max_pool` (kernel, stride, padding), a max pool (the ResNet stem's), still in oneDNN's
    layout: Paddle only sees the pooled output."""

    def __init__(self, lib: _Library, x_shape, o: int, w_full, s: int, p: int, relu: bool,
                 eps: float, max_pool: tuple[int, int, int] | None = None):
        big_c, k = int(w_full[1]), int(w_full[2])
        c = int(x_shape[1])
        super().__init__(lib, x_shape, [o, c, k, k], s, p)
        self.relu, self.eps, self.o, self.w_full = relu, eps, o, [int(d) for d in w_full]
        self.max_pool = max_pool
        conv = self._conv_fwd = self._conv_pd("forward", _FORWARD_TRAINING)
        z_md = self._query(conv, _Q_DST)
        self.flags = _BN_SCALE | _BN_SHIFT | (_BN_RELU if relu else 0)
        bn = self._bn_fwd = self._pd("dnnl_batch_normalization_forward_primitive_desc_create",
                                     lib.engine, _FORWARD_TRAINING, z_md, z_md, eps, self.flags, None)
        if max_pool:
            n, _, h, w = self.y_shape
            pk, ps, pp = max_pool
            hp, wp = conv_out(h, pk, ps, pp), conv_out(w, pk, ps, pp)
            self.y_shape = [n, o, hp, wp]
            self._pool_geometry = (_Dims(ps, ps), _Dims(pk, pk), _Dims(0, 0), _Dims(pp, pp),
                                   _Dims((hp - 1) * ps + pk - h - pp, (wp - 1) * ps + pk - w - pp))
            self._pool_any = self._owned(lib.desc(self.y_shape, _TAG_ANY))
            pool = self._pool_fwd = self._pd("dnnl_pooling_forward_primitive_desc_create",
                                             lib.engine, _FORWARD_TRAINING, _POOLING_MAX, z_md,
                                             self._pool_any, *self._pool_geometry, None)
        x_md, y_md = (self._owned(lib.desc(d, _TAG_ABCD)) for d in (self.x_shape, self.y_shape))
        w_md = self._owned(lib.new("dnnl_memory_desc_create_with_strides", 4, _Dims(o, c, k, k),
                                   _F32, _Dims(big_c * k * k, k * k, k, 1)))
        stat_md = self._owned(lib.desc([o], _TAG_A))
        # Paddle's plain tensors (the weight: its leading block, in place), the conv output in
        # oneDNN's layout, the batch statistics and BN parameters.
        self.x, self.w, self.y = self.mem(x_md), self.mem(w_md), self.mem(y_md)
        self.dx, self.dw, self.dy = self.mem(x_md), self.mem(w_md), self.mem(y_md)
        self.z = self.mem(z_md)
        self.mean, self.var, self.scale, self.shift, self.dscale, self.dshift = (
            self.mem(stat_md) for _ in range(6))
        self.ws = self.mem(self._query(bn, _Q_WORKSPACE)) if relu else None
        self.conv = self.step("conv", conv, [(_ARG_SRC, self.x, _Q_SRC, _S_X),
                                             (_ARG_WEIGHTS, self.w, _Q_WEIGHTS, _S_W)],
                              (_ARG_DST, self.z, _Q_DST, None))
        stats = [(_ARG_MEAN, self.mean), (_ARG_VARIANCE, self.var), (_ARG_SCALE, self.scale),
                 (_ARG_SHIFT, self.shift), *self._workspace()]
        if max_pool:
            self.a = self.mem(self._query(bn, _Q_DST))  # the batch norm's output, pooled next
            self.bn = self.step("batch norm", bn, [(_ARG_SRC, self.z, _Q_SRC, None)],
                                (_ARG_DST, self.a, _Q_DST, None), stats)
            self.pool_ws = self.mem(self._query(pool, _Q_WORKSPACE))
            self.pool = self.step("max pool", pool, [(_ARG_SRC, self.a, _Q_SRC, None)],
                                  (_ARG_DST, self.y, _Q_DST, _S_Y), [(_ARG_WORKSPACE, self.pool_ws)])
        else:
            self.bn = self.step("batch norm", bn, [(_ARG_SRC, self.z, _Q_SRC, None)],
                                (_ARG_DST, self.y, _Q_DST, _S_Y), stats)
        self.bn_bwd = None  # the backward steps, built on first use

    def _workspace(self) -> list[tuple[int, _Mem]]:
        return [(_ARG_WORKSPACE, self.ws)] if self.relu else []

    def _build_backward(self) -> None:
        lib, z_md = self.lib, self.z.md
        bn = self._pd("dnnl_batch_normalization_backward_primitive_desc_create", lib.engine,
                      _BACKWARD, z_md, z_md, z_md, self.eps, self.flags, self._bn_fwd, None)
        self.dz = self.mem(self._query(bn, _Q_DIFF_SRC))
        fixed = [(_ARG_SRC, self.z), (_ARG_MEAN, self.mean), (_ARG_VARIANCE, self.var),
                 (_ARG_SCALE, self.scale), (_ARG_DIFF_SCALE, self.dscale),
                 (_ARG_DIFF_SHIFT, self.dshift), *self._workspace()]
        if self.max_pool:
            pool = self._pd("dnnl_pooling_backward_primitive_desc_create", lib.engine, _POOLING_MAX,
                            z_md, self._pool_any, *self._pool_geometry, self._pool_fwd, None)
            self.da = self.mem(self._query(bn, _Q_DIFF_DST))  # the pool's input gradient
            self.pool_bwd = self.step("max pool backward", pool,
                                      [(_ARG_DIFF_DST, self.dy, _Q_DIFF_DST, _S_Y)],
                                      (_ARG_DIFF_SRC, self.da, _Q_DIFF_SRC, None),
                                      [(_ARG_WORKSPACE, self.pool_ws)])
            bn_reads = [(_ARG_DIFF_DST, self.da, _Q_DIFF_DST, None)]
        else:
            bn_reads = [(_ARG_DIFF_DST, self.dy, _Q_DIFF_DST, _S_Y)]
        self.bn_bwd = self.step("batch norm backward", bn, bn_reads,
                                (_ARG_DIFF_SRC, self.dz, _Q_DIFF_SRC, None), fixed)
        self.data = self.step("conv backward data", self._conv_pd("data", self._conv_fwd),
                              [(_ARG_DIFF_DST, self.dz, _Q_DIFF_DST, _S_TMP),
                               (_ARG_WEIGHTS, self.w, _Q_WEIGHTS, _S_W)],
                              (_ARG_DIFF_SRC, self.dx, _Q_DIFF_SRC, _S_X))
        self.weights = self.step("conv backward weights", self._conv_pd("weights", self._conv_fwd),
                                 [(_ARG_SRC, self.x, _Q_SRC, _S_X),
                                  (_ARG_DIFF_DST, self.dz, _Q_DIFF_DST, _S_TMP)],
                                 (_ARG_DIFF_WEIGHTS, self.dw, _Q_DIFF_WEIGHTS, _S_Y))

    def forward(self, x, weight, gamma, beta, running_mean, running_var, momentum: float):
        """y and the tensors backward needs. Updates the leading o running statistics in place
        (running = momentum * running + (1 - momentum) * batch), as Paddle's batch_norm does."""
        x, weight, gamma, beta = (_contiguous(t) for t in (x, weight, gamma, beta))
        z = self.z.tensor()
        self.conv.run([x.data_ptr(), weight.data_ptr()], z.data_ptr())
        mean, var = self.mean.tensor(), self.var.tensor()
        ws = self.ws.tensor() if self.relu else None
        self.scale.point(gamma.data_ptr())
        self.shift.point(beta.data_ptr())
        y = _empty(self.y_shape)
        pool_ws = None
        if self.max_pool:
            a = _S_TMP.get(self.a.nbytes)
            self.bn.run([z.data_ptr()], a)
            pool_ws = self.pool_ws.tensor()
            self.pool.run([a], y.data_ptr())
        else:
            self.bn.run([z.data_ptr()], y.data_ptr())
        for running, batch in ((running_mean, mean), (running_var, var)):
            r = _floats(running.data_ptr(), self.o)
            r *= np.float32(momentum)
            r += _floats(batch.data_ptr(), self.o) * np.float32(1.0 - momentum)
        return y, (x, z, mean, var, ws, pool_ws)

    def backward(self, dy, saved, weight, gamma, need_dx: bool, need_dw: bool, need_dgamma: bool,
                 need_dbeta: bool):
        """(dx, d weight (full shape, zero outside the block), d gamma, d beta (full length))."""
        if self.bn_bwd is None:
            self._build_backward()
        x, z, mean, var, ws, pool_ws = saved
        dy, weight, gamma = _contiguous(dy), _contiguous(weight), _contiguous(gamma)
        for mem, t in ((self.z, z), (self.mean, mean), (self.var, var), (self.scale, gamma)):
            mem.point(t.data_ptr())
        if ws is not None:
            self.ws.point(ws.data_ptr())
        full = int(gamma.shape[0])
        dgamma, dbeta = (_empty([full]) if full == self.o else _zeros([full]) for _ in range(2))
        self.dscale.point(dgamma.data_ptr())
        self.dshift.point(dbeta.data_ptr())
        dz = _S_DZ.get(self.dz.nbytes)
        if self.max_pool:
            self.pool_ws.point(pool_ws.data_ptr())
            da = _S_TMP.get(self.da.nbytes)
            self.pool_bwd.run([dy.data_ptr()], da)
            self.bn_bwd.run([da], dz)
        else:
            self.bn_bwd.run([dy.data_ptr()], dz)
        dx = dw = None
        if need_dx:
            dx = _empty(self.x_shape)
            self.data.run([dz, weight.data_ptr()], dx.data_ptr())
        if need_dw:
            whole = self.w_full[:2] == [self.o, self.x_shape[1]]
            dw = _empty(self.w_full) if whole else _zeros(self.w_full)
            self.weights.run([x.data_ptr(), dz], dw.data_ptr())
        return dx, dw, (dgamma if need_dgamma else None), (dbeta if need_dbeta else None)


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
MAX_PLANS = 2048  # a supernet's distinct shapes: widths x maps x batch sizes


def _cached(key: tuple, build) -> _Plan:
    lib = _library()
    if lib is None:
        raise OneDNNError(f"oneDNN is unavailable: {_WHY_NOT}")
    found = _PLANS.get(key)
    if found is not None:
        _PLANS.move_to_end(key)
        return found
    found = _PLANS[key] = build(lib)
    while len(_PLANS) > MAX_PLANS:
        _PLANS.popitem(last=False)  # released when no pending backward holds it either
    return found


def plan(x_shape, w_shape, stride: int, padding: int, training: bool = True) -> ConvPlan:
    """The cached plan for this shape (raises OneDNNError when oneDNN is unavailable)."""
    x_shape, w_shape = [int(d) for d in x_shape], [int(d) for d in w_shape]
    key = (*x_shape, w_shape[0], w_shape[2], stride, padding, training)
    return _cached(key, lambda lib: ConvPlan(lib, x_shape, w_shape, stride, padding, training))


def conv_bn_plan(x_shape, w_shape, out_channels: int, stride: int, padding: int, relu: bool,
                 eps: float, max_pool: tuple[int, int, int] | None = None) -> ConvBNPlan:
    """The cached fused plan for this shape; w_shape is the whole weight's, of which the conv
    uses the leading [out_channels, x_shape[1]] block (raises OneDNNError without oneDNN)."""
    x_shape, w_shape = [int(d) for d in x_shape], [int(d) for d in w_shape]
    max_pool = tuple(max_pool) if max_pool else None
    key = ("conv_bn", *x_shape, *w_shape, out_channels, stride, padding, relu, eps, max_pool)
    return _cached(key, lambda lib: ConvBNPlan(lib, x_shape, out_channels, w_shape, stride,
                                               padding, relu, eps, max_pool))
