"""The AAPE head's inference cosines on CPU as one numba kernel: float32, exact maths.

Per image and class the cosine needs x . w0_c, u = relu(pre_c + B h) (r values), u . W2^T x
and ||w0_c + W2 u||^2 = ||s0_c + R u||^2 with R upper triangular (ClassifierHead's
`_kernel_operands`). Eager PyTorch materialises u as [B, C, r], and each pass over it costs
more than the whole zero-shot GEMM; here u lives in L1 for one block of classes at a time and
only [B, C] is written. `logits` also folds in what AAPE.logits does around the head, so that
a single image pays for no torch op: x / ||x||, h(x) = W_h2 relu(W_h1 x + b_h1) + b_h2 through
B h = (B W_h2) relu(.) + B b_h2 (r r' multiply-adds per image, not d (r' + r)), and 1 / tau.

Classes are the SIMD dimension: a `_Block` holds LANES classes as one LLVM vector, and the
kernel is written with explicit vector operations because numba cannot tell LLVM that its
arrays do not alias (so LLVM would not vectorise loops over lanes) and LLVM picks 256-bit
vectors here when it vectorises by itself. Each lane's arithmetic is a fixed sequence of fused
multiply-adds, so the results do not depend on LANES and need no fastmath flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

# Classes per block: four AVX-512 registers, so that the 16 accumulators of `_norm_sq` and
# `_accumulate` (4 rows or images x 4 registers) and their operands fit the 32 registers.
# AVX2 has 16 registers: there a block of 16 classes is two.
LANES = 64 if binding.get_host_cpu_features().get("avx512f", False) else 16
ROWS = 4  # rows of R per pass over u: each load of u feeds ROWS fused multiply-adds

_VEC = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)
_VEC_I32 = ir.VectorType(_I32, LANES)


class _Block(types.Type):
    """LANES float32 values, one per class: an LLVM vector the backend splits into registers."""

    def __init__(self) -> None:
        super().__init__(name=f"f32x{LANES}")


_block = _Block()


@register_model(_Block)
class _BlockModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _VEC)


def _llvm_intrinsic(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Type]):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _item_pointer(context, builder, aryty, ary, i, j):
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [i, j], wraparound=False)


def _vec_pointer(context, builder, sig, args):
    return builder.bitcast(
        _item_pointer(context, builder, sig.args[0], *args[:3]), _VEC.as_pointer()
    )


def _splat_value(builder: ir.IRBuilder, x: ir.Value, vec: ir.VectorType = _VEC) -> ir.Value:
    v = builder.insert_element(ir.Constant(vec, None), x, _I32(0))
    return builder.shuffle_vector(v, v, ir.Constant(_VEC_I32, [0] * LANES))


def _first_lanes(builder: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """Mask of the lanes below n (n >= 1)."""
    n = builder.select(builder.icmp_signed(">", n, n.type(LANES)), n.type(LANES), n)
    bound = _splat_value(builder, builder.trunc(n, _I32), _VEC_I32)
    return builder.icmp_signed("<", ir.Constant(_VEC_I32, list(range(LANES))), bound)


@intrinsic
def _load(typingctx, arr, i, j):
    """arr[i, j : j + LANES]."""

    def codegen(context, builder, sig, args):
        return builder.load(_vec_pointer(context, builder, sig, args), align=4)

    return _block(arr, i, j), codegen


@intrinsic
def _store(typingctx, arr, i, j, v):
    """arr[i, j : j + LANES] = v."""

    def codegen(context, builder, sig, args):
        builder.store(args[3], _vec_pointer(context, builder, sig, args), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, j, v), codegen


@intrinsic
def _store_first(typingctx, arr, i, j, n, v):
    """arr[i, j : j + min(n, LANES)] = the first lanes of v."""

    def codegen(context, builder, sig, args):
        ptr = _vec_pointer(context, builder, sig, args)
        mask = _first_lanes(builder, args[3])
        fn = _llvm_intrinsic(
            builder,
            f"llvm.masked.store.v{LANES}f32.p0",
            ir.VoidType(),
            [_VEC, ptr.type, _I32, mask.type],
        )
        builder.call(fn, [args[4], ptr, _I32(4), mask])
        return context.get_dummy_value()

    return types.none(arr, i, j, n, v), codegen


@intrinsic
def _splat(typingctx, x):
    """x in every lane."""

    def codegen(context, builder, sig, args):
        return _splat_value(builder, args[0])

    return _block(types.float32), codegen


@intrinsic
def _splat_at(typingctx, arr, i, j):
    """arr[i, j] in every lane."""

    def codegen(context, builder, sig, args):
        return _splat_value(
            builder, builder.load(_item_pointer(context, builder, sig.args[0], *args))
        )

    return _block(arr, i, j), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c, rounded once."""

    def codegen(context, builder, sig, args):
        fn = _llvm_intrinsic(builder, f"llvm.fma.v{LANES}f32", _VEC, [_VEC] * 3)
        return builder.call(fn, args)

    return _block(a, b, c), codegen


@intrinsic
def _add(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fadd(*args)

    return _block(a, b), codegen


@intrinsic
def _mul(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fmul(*args)

    return _block(a, b), codegen


@intrinsic
def _maximum(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.call(
            _llvm_intrinsic(builder, f"llvm.maxnum.v{LANES}f32", _VEC, [_VEC] * 2), args
        )

    return _block(a, b), codegen


@intrinsic
def _div_sqrt(typingctx, a, b):
    """a / sqrt(b), both correctly rounded (no reciprocal-square-root estimate)."""

    def codegen(context, builder, sig, args):
        sqrt = _llvm_intrinsic(builder, f"llvm.sqrt.v{LANES}f32", _VEC, [_VEC])
        return builder.fdiv(args[0], builder.call(sqrt, [args[1]]))

    return _block(a, b), codegen


_F32_2D = "float32[:, ::1]"


@njit
def _aligned_empty(rows: int, cols: int) -> np.ndarray:
    """Uninitialised float32 [rows, cols] on a 64-byte boundary (numba's own is 32): with cols a
    multiple of 16, every vector is one cache line (split loads cost ~30% here)."""
    raw = np.empty(rows * cols + 16, np.float32)
    start = (64 - raw.ctypes.data % 64) % 64 // 4
    return raw[start : start + rows * cols].reshape(rows, cols)


@njit
def _aligned_rows(n, row):
    """n copies of row [1, P] as `_aligned_empty(n, P)`."""
    out = _aligned_empty(n, row.shape[1])
    for b in range(n):  # element by element: numba's broadcasting assignment compiles for ~4 s
        for j in range(row.shape[1]):
            out[b, j] = row[0, j]
    return out


@njit
def _accumulate(acc, z, b0, m, row0, col):
    """acc[i] + sum_k z[b0 + i, k] m[row0 + k, col : col + LANES] for the four images from b0,
    so that each row of m read from L2 feeds four images. Images past the end repeat the last,
    so callers need no tail case."""
    last = z.shape[0] - 1
    b1, b2, b3 = min(b0 + 1, last), min(b0 + 2, last), min(b0 + 3, last)
    a0, a1, a2, a3 = acc
    for k in range(z.shape[1]):
        mk = _load(m, row0 + k, col)
        a0 = _fma(_splat_at(z, b0, k), mk, a0)
        a1 = _fma(_splat_at(z, b1, k), mk, a1)
        a2 = _fma(_splat_at(z, b2, k), mk, a2)
        a3 = _fma(_splat_at(z, b3, k), mk, a3)
    return a0, a1, a2, a3


@njit
def _project_into(out, z, m, row0):
    """out += z m[row0 : row0 + k] for z [B, k] and out [B, P], P a multiple of LANES."""
    last = len(out) - 1
    for b0 in range(0, len(out), 4):
        for p0 in range(0, out.shape[1], LANES):
            acc = (
                _load(out, b0, p0),
                _load(out, min(b0 + 1, last), p0),
                _load(out, min(b0 + 2, last), p0),
                _load(out, min(b0 + 3, last), p0),
            )
            _store4(out, b0, p0, _accumulate(acc, z, b0, m, row0, p0))


@njit
def _store4(dst, b0, col, acc) -> None:
    """dst[b0 + i, col : col + LANES] = acc[i] for the rows that exist."""
    for i in range(min(4, dst.shape[0] - b0)):
        _store(dst, b0 + i, col, acc[i])


@njit
def _norm_sq(u, s0_b, row0, r_pad):
    """||s0 + R u||^2 per class, ROWS rows of R at a time (R is zero below the diagonal, and
    the rows of s0 start at s0_b[row0])."""
    r = r_pad.shape[1]
    sq = _splat(np.float32(0.0))
    for i in range(0, r_pad.shape[0], ROWS):
        s_0 = _load(s0_b, row0 + i, 0)
        s_1 = _load(s0_b, row0 + i + 1, 0)
        s_2 = _load(s0_b, row0 + i + 2, 0)
        s_3 = _load(s0_b, row0 + i + 3, 0)
        for j in range(i, r):
            uj = _load(u, j, 0)
            s_0 = _fma(_splat_at(r_pad, i, j), uj, s_0)
            s_1 = _fma(_splat_at(r_pad, i + 1, j), uj, s_1)
            s_2 = _fma(_splat_at(r_pad, i + 2, j), uj, s_2)
            s_3 = _fma(_splat_at(r_pad, i + 3, j), uj, s_3)
        sq = _fma(s_0, s_0, sq)
        sq = _fma(s_1, s_1, sq)
        sq = _fma(s_2, s_2, sq)
        sq = _fma(s_3, s_3, sq)
    return sq


@njit
def _class_loop(n_classes, x, bh, w2x, w2x_col, scale, w0_b, pre_b, s0_b, r_pad):
    """scale[b] x[b] . w_c / ||w_c|| [B, C] for w_c = w0_c + W2 relu(pre_c + B h), with B h in
    bh[b, :r] and W2^T x[b] in w2x[b, w2x_col : w2x_col + r]."""
    n_images, dim = x.shape
    r = r_pad.shape[1]
    zero = _splat(np.float32(0.0))
    eps = _splat(np.float32(1e-12))
    zeros4 = (zero, zero, zero, zero)
    out = np.empty((n_images, n_classes), np.float32)
    u = _aligned_empty(r, LANES)
    xw0 = _aligned_empty(4, LANES)
    for blk in range(len(pre_b) // r):  # a block's pre and s0 stay in L1 for all images
        c0 = blk * LANES
        for b0 in range(0, n_images, 4):
            _store4(xw0, 0, 0, _accumulate(zeros4, x, b0, w0_b, blk * dim, 0))
            for b in range(b0, min(b0 + 4, n_images)):
                xu = zero
                for j in range(r):
                    uj = _maximum(_add(_load(pre_b, blk * r + j, 0), _splat_at(bh, b, j)), zero)
                    _store(u, j, 0, uj)
                    xu = _fma(_splat_at(w2x, b, w2x_col + j), uj, xu)
                sq = _norm_sq(u, s0_b, blk * len(r_pad), r_pad)
                xw = _mul(_add(_load(xw0, b - b0, 0), xu), _splat(scale[b]))
                _store_first(out, b, c0, n_classes - c0, _div_sqrt(xw, _maximum(sq, eps)))
    return out


@njit(f"{_F32_2D}(int64, {', '.join([_F32_2D] * 7)})", cache=True)
def _cosines(n_classes, x, h, w0_b, pre_b, s0_b, r_pad, proj):
    """cos(x, w_c(x)) [B, C] for x, h [B, d] and the operands of `KernelOperands`."""
    n_images, dim = x.shape
    if h.shape != x.shape or 2 * dim != len(proj):  # the loops trust the shapes
        raise ValueError("x and h must be [B, d] for the head's d")
    bhx = _aligned_rows(n_images, np.zeros((1, proj.shape[1]), np.float32))
    _project_into(bhx, h, proj, 0)  # [B h | W2^T x] per image
    _project_into(bhx, x, proj, dim)
    scale = np.ones(n_images, np.float32)
    return _class_loop(n_classes, x, bhx, bhx, r_pad.shape[1], scale, w0_b, pre_b, s0_b, r_pad)


@njit
def _inv_norm(x, b) -> float:
    """1 / max(||x[b]||, 1e-12), F.normalize's divisor (summed in float64)."""
    sq = 0.0
    for k in range(x.shape[1]):
        sq += np.float64(x[b, k]) ** 2
    return 1.0 / max(np.sqrt(sq), 1e-12)


@njit(f"{_F32_2D}(int64, {', '.join([_F32_2D] * 8)}, float32[::1], float64)", cache=True)
def _logits(n_classes, x, w0_b, pre_b, s0_b, r_pad, proj, mix, shift, h_bias, inv_tau):
    """cos(x / ||x||, w_c(x)) / tau [B, C] for x [B, d] of any norm and the operands of
    `KernelOperands` and `PromptOperands`. x is used as given, and each image's 1 / ||x|| scales
    its W_h1 x and, with 1 / tau, its result: normalising first would be one more pass."""
    if x.shape[1] != len(proj):  # the loops trust the shapes
        raise ValueError("x must be [B, d] for the model's d")
    n_images, rh = len(x), len(h_bias)
    xp = _aligned_rows(n_images, np.zeros((1, proj.shape[1]), np.float32))
    _project_into(xp, x, proj, 0)  # [W_h1 x | W2^T x] per image
    z = np.empty((n_images, rh), np.float32)  # h's hidden layer relu(W_h1 x / ||x|| + b_h1)
    scale = np.empty(n_images, np.float32)
    for b in range(n_images):
        inv = _inv_norm(x, b)
        for k in range(rh):
            z[b, k] = max(xp[b, k] * inv + h_bias[k], 0.0)
        scale[b] = inv * inv_tau
    bh = _aligned_rows(n_images, shift)
    _project_into(bh, z, mix, 0)  # B h = B b_h2 + (B W_h2) z
    return _class_loop(n_classes, x, bh, xp, rh, scale, w0_b, pre_b, s0_b, r_pad)


def _lanes(n: int) -> int:
    """n rounded up to whole blocks."""
    return -(-n // LANES) * LANES


def _class_blocks(m: torch.Tensor, rows: int) -> torch.Tensor:
    """m [C, k <= rows] as float32 [n_blocks * rows, LANES]: row blk * rows + j holds column j
    for the classes of block blk, zero-padded. A block is contiguous (rows 2^n bytes apart
    would share L1 sets), and torch's allocator aligns it to 64 bytes."""
    n, k = m.shape
    padded = m.new_zeros(_lanes(n), rows, dtype=torch.float32)
    padded[:n, :k] = m
    return padded.view(-1, LANES, rows).transpose(1, 2).contiguous().view(-1, LANES)


@dataclass(frozen=True)
class KernelOperands:
    """What the kernel needs per class list and weights, in its layout: classes in blocks of
    LANES (`_class_blocks`), rows of R padded with zeros to a multiple of ROWS."""

    n_classes: int
    w0_b: np.ndarray  # [n_blocks * d, LANES]   w0_c
    pre_b: np.ndarray  # [n_blocks * r, LANES]   A w_c + b1
    s0_b: np.ndarray  # [n_blocks * rp, LANES]  Q^T w0_c, ||w0_c - Q Q^T w0_c||, zeros
    r_pad: np.ndarray  # [rp, r]                 R, zero rows
    proj: np.ndarray  # [2d, P]  [[B^T, 0], [0, W2]], so [h | x] proj = [B h | W2^T x]

    @classmethod
    def pack(
        cls,
        w0: torch.Tensor,
        pre: torch.Tensor,
        s0: torch.Tensor,
        rest: torch.Tensor,
        r: torch.Tensor,
        b: torch.Tensor,
        w2: torch.Tensor,
    ) -> KernelOperands:
        """From w0 [C, d], pre [C, r], s0 = Q^T w0 [C, r], rest = ||w0 - Q Q^T w0|| [C],
        R [r, r], B [r, d] and W2 [d, r], of any float dtype."""
        (n_classes, dim), rank = w0.shape, len(r)
        rows = -(-(rank + 1) // ROWS) * ROWS
        r_pad = r.new_zeros(rows, rank, dtype=torch.float32)
        r_pad[:rank] = r
        proj = w2.new_zeros(2 * dim, _lanes(2 * rank), dtype=torch.float32)
        proj[:dim, :rank] = b.T
        proj[dim:, rank : 2 * rank] = w2
        tensors = (
            _class_blocks(w0, dim),
            _class_blocks(pre, rank),
            _class_blocks(torch.cat([s0, rest.unsqueeze(1)], 1), rows),
            r_pad,
            proj,
        )
        return cls(n_classes, *(t.numpy() for t in tensors))


@dataclass(frozen=True)
class PromptOperands:
    """What `logits` adds for h (W_h1, b_h1, W_h2, b_h2) and tau, per weights: B h(x) =
    B W_h2 relu(W_h1 x + b_h1) + B b_h2 needs only M = B W_h2 [r, r'] and B b_h2 (float64
    products, rounded once), and W_h1 x rides along with W2^T x in one pass over x."""

    proj: np.ndarray  # [d, P]   [W_h1^T | W2], so x proj = [W_h1 x | W2^T x]
    mix: np.ndarray  # [r', Pr]  M^T
    shift: np.ndarray  # [1, Pr]  B b_h2
    h_bias: np.ndarray  # [r']    b_h1
    inv_tau: float

    @classmethod
    def pack(
        cls,
        h_first: tuple[torch.Tensor, torch.Tensor],
        h_last: tuple[torch.Tensor, torch.Tensor],
        b: torch.Tensor,
        w2: torch.Tensor,
        tau: float,
    ) -> PromptOperands:
        """From h's layers (W_h1 [r', d], b_h1), (W_h2 [d, r'], b_h2), the head's B [r, d] and
        W2 [d, r] and tau. Copies: later changes to the weights do not reach the operands."""
        (w_h1, b_h1), (w_h2, b_h2) = h_first, h_last
        (rh, dim), rank = w_h1.shape, w2.shape[1]
        proj = w2.new_zeros(dim, _lanes(rh + rank), dtype=torch.float32)
        proj[:, :rh] = w_h1.T
        proj[:, rh : rh + rank] = w2
        b = b.double()
        mix = w2.new_zeros(rh, _lanes(rank), dtype=torch.float32)
        mix[:, :rank] = (b @ w_h2.double()).T
        shift = w2.new_zeros(1, _lanes(rank), dtype=torch.float32)
        shift[0, :rank] = b @ b_h2.double()
        h_bias = b_h1.detach().to(torch.float32, copy=True)
        return cls(*(t.numpy() for t in (proj, mix, shift, h_bias)), 1.0 / tau)

    def logits(self, x: torch.Tensor, ops: KernelOperands) -> torch.Tensor:
        """AAPE's logits cos(x / ||x||, w_c(x)) / tau [B, C], h(x / ||x||) included, for image
        embeddings x [B, d] of any norm, a CPU float32 tensor. A method, so that callers reach
        it without an import statement per call (~7 us for a single image)."""
        out = _logits(
            ops.n_classes,
            x.detach().contiguous().numpy(),
            ops.w0_b,
            ops.pre_b,
            ops.s0_b,
            ops.r_pad,
            self.proj,
            self.mix,
            self.shift,
            self.h_bias,
            self.inv_tau,
        )
        return torch.from_numpy(out)


def cosines(x: torch.Tensor, h: torch.Tensor, ops: KernelOperands) -> torch.Tensor:
    """cos(x, w_c(x)) [B, C] for x and h [B, d], CPU float32 tensors."""
    x, h = (t.detach().contiguous().numpy() for t in (x, h))
    out = _cosines(ops.n_classes, x, h, ops.w0_b, ops.pre_b, ops.s0_b, ops.r_pad, ops.proj)
    return torch.from_numpy(out)
