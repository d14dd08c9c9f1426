#include "parallel/comm_checks.h"

#include <climits>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

bool reducible(DType t) { return t == DType::f32 || t == DType::i32; }
bool movable(DType t) { return reducible(t) || t == DType::bf16 || t == DType::f16 || t == DType::u8; }

void check_tensor(const CommShape& c, const char* op, const Tensor& t) {
  LMTUNE_ASSERT(t.defined(), op, " of an undefined tensor on ", c.where);
  LMTUNE_ASSERT(t.device() == c.device, op, " of a tensor on ", t.device().str(), " on ", c.where, ", whose tensors live on ",
                c.device.str());
  LMTUNE_ASSERT(movable(t.dtype()), op, " of a ", dtype_name(t.dtype()),
                " tensor: communicators move f32, i32, bf16, f16 and u8 tensors");
  LMTUNE_CHECK(t.numel() <= INT_MAX, op, " of ", t.numel(), " elements on ", c.where,
               ": one collective moves at most 2^31 - 1 elements (MPI counts are int); split the buffer");
}

void check_reducible(const char* op, const Tensor& t, ReduceOp rop) {
  LMTUNE_ASSERT(reducible(t.dtype()), op, " (", reduce_op_name(rop), ") of a ", dtype_name(t.dtype()),
                " tensor: reductions take f32 or i32");
}

// Whether [a, a + na) and [b, b + nb) share a byte.
bool overlaps(const Tensor& a, const Tensor& b) {
  const auto* pa = static_cast<const char*>(a.raw());
  const auto* pb = static_cast<const char*>(b.raw());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// `small` must be chunk `rank` of `big` or share no byte with it.
Aliasing aliasing(const char* op, const Tensor& big, const Tensor& small, int rank) {
  if (small.numel() == 0 || !overlaps(big, small)) return Aliasing::separate;
  const auto* own = static_cast<const char*>(big.raw()) + static_cast<size_t>(rank) * small.nbytes();
  LMTUNE_ASSERT(small.raw() == own, op, ": the chunk buffer overlaps the full buffer but is not chunk ", rank,
                " of it (the only overlap allowed)");
  return Aliasing::own_chunk;
}

}  // namespace

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

std::string describe_tensor_op(const char* op, const Tensor& t) {
  return std::string(op) + " of " + std::to_string(t.numel()) + " " + std::string(dtype_name(t.dtype()));
}

void check_root(const CommShape& c, const char* op, int root) {
  LMTUNE_ASSERT(root >= 0 && root < c.size, op, " names rank ", root, ", which is not a rank of ", c.where);
}

void check_all_reduce(const CommShape& c, const Tensor& t, ReduceOp op) {
  check_tensor(c, "all_reduce", t);
  check_reducible("all_reduce", t, op);
}

Aliasing check_reduce_scatter(const CommShape& c, const Tensor& in, const Tensor& out, ReduceOp op) {
  check_tensor(c, "reduce_scatter", in);
  check_tensor(c, "reduce_scatter", out);
  check_reducible("reduce_scatter", in, op);
  LMTUNE_ASSERT(in.dtype() == out.dtype(), "reduce_scatter from ", dtype_name(in.dtype()), " into ",
                dtype_name(out.dtype()));
  LMTUNE_ASSERT(in.numel() == out.numel() * c.size, "reduce_scatter of ", in.numel(), " elements into chunks of ",
                out.numel(), " on ", c.where, " (", c.size, " ranks): in must hold size * out elements");
  return aliasing("reduce_scatter", in, out, c.rank);
}

Aliasing check_all_gather(const CommShape& c, const Tensor& in, const Tensor& out) {
  check_tensor(c, "all_gather", in);
  check_tensor(c, "all_gather", out);
  LMTUNE_ASSERT(in.dtype() == out.dtype(), "all_gather from ", dtype_name(in.dtype()), " into ",
                dtype_name(out.dtype()));
  LMTUNE_ASSERT(out.numel() == in.numel() * c.size, "all_gather of chunks of ", in.numel(), " elements into ",
                out.numel(), " on ", c.where, " (", c.size, " ranks): out must hold size * in elements");
  return aliasing("all_gather", out, in, c.rank);
}

void check_broadcast(const CommShape& c, const Tensor& t, int root) {
  check_tensor(c, "broadcast", t);
  check_root(c, "broadcast", root);
}

void check_point_to_point(const CommShape& c, const char* op, const Tensor& t, int peer, int tag) {
  check_tensor(c, op, t);
  check_root(c, op, peer);
  LMTUNE_ASSERT(peer != c.rank, op, " to itself (rank ", peer, ") on ", c.where);
  LMTUNE_ASSERT(tag >= 0 && tag <= kMaxTag, op, " with tag ", tag, ": tags are 0..", kMaxTag);
}

}  // namespace lmtune
