// Argument checks shared by every Communicator implementation (MPI, fake): written once,
// so that a meta-device run rejects exactly what a real run rejects.
//   * Tensors are defined and on the communicator's device; element counts fit MPI's int.
//   * Reductions take f32 or i32; data movement (gather, broadcast, send/recv) also bf16/f16/u8.
//   * reduce_scatter: in has size * n elements, out n, same dtype; out is either disjoint
//     from in or exactly chunk rank() of in. all_gather mirrors it.
//   * Peers and roots are ranks of the communicator; tags are in [0, kMaxTag].
#pragma once

#include <string>

#include "trainer/core/communicator.h"

namespace lmtune {

// The largest tag every MPI library accepts (the standard's lower bound for MPI_TAG_UB).
inline constexpr int kMaxTag = 32767;

const char* reduce_op_name(ReduceOp op);

// "all_reduce of 1024 f32 (sum)" and the like, for messages.
std::string describe_tensor_op(const char* op, const Tensor& t);

// How a reduce_scatter's out / an all_gather's in relates to the big buffer.
enum class Aliasing { separate, own_chunk };

struct CommShape {
  int rank;
  int size;
  Device device;          // where the communicator's tensors live
  std::string where;      // "communicator world (rank 0 of 2)"
};

void check_all_reduce(const CommShape& c, const Tensor& t, ReduceOp op);
Aliasing check_reduce_scatter(const CommShape& c, const Tensor& in, const Tensor& out, ReduceOp op);
Aliasing check_all_gather(const CommShape& c, const Tensor& in, const Tensor& out);
void check_broadcast(const CommShape& c, const Tensor& t, int root);
void check_point_to_point(const CommShape& c, const char* op, const Tensor& t, int peer, int tag);
void check_root(const CommShape& c, const char* op, int root);

}  // namespace lmtune
