// The Communicator interface — design note.
//
// Everything a rank says to its peers goes through a Communicator that is passed to what
// uses it (there is no global process-group state). This header is a core type, like the
// Allocator: the trainer (the step engine, the data loader, checkpoints) talks to the
// interface; the implementations live in parallel/ (MPI for CPU ranks, a fake one for the
// meta device, NCCL later) and are chosen by launch/.
//
// Contract, for every implementation:
//   * Collectives are called by every rank of the communicator, in the same order, with
//     tensors of the same dtype and numel. Tensors are contiguous and on the communicator's
//     device (cpu; meta for the fake one).
//   * The *_async forms start the operation and return a handle; the tensors must stay
//     alive and untouched until wait() returns. The blocking forms are async + wait().
//     Handles of one communicator complete in the order they were started.
//   * Any scratch an operation needs comes from the tensor's Allocator in category `comm`,
//     and the fake communicator takes exactly the same allocations, so a meta run predicts
//     a real rank's memory to the byte. (The MPI library's own internal buffers are not
//     tracked, as NCCL's are not: they are part of the per-device fixed overhead.)
//   * A failure (a peer that died, a mismatch) throws lmtune::Error naming the operation
//     and, where it is known, the peer rank.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "trainer/core/tensor.h"

namespace lmtune {

enum class ReduceOp { sum, max, min };

// A started operation. wait() blocks until it has completed (and rethrows its error).
class CommWork {
 public:
  virtual ~CommWork() = default;
  virtual void wait() = 0;
  // True once the operation has completed; never blocks.
  virtual bool done() = 0;
};
using CommHandle = std::unique_ptr<CommWork>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi", "fake", "local" — for messages and reports.
  virtual std::string backend() const = 0;

  // ---- tensor collectives (f32, i32, bf16, f16 or u8; sum/max/min for f32 and i32 only) ----
  // t = op over ranks of t, in place.
  virtual CommHandle all_reduce_async(Tensor& t, ReduceOp op) = 0;
  // in (size * n) -> out (n): rank r gets chunk r of the reduction. out may be chunk r of in.
  virtual CommHandle reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  // in (n) -> out (size * n): chunk r of out is rank r's in. in may be chunk rank() of out.
  virtual CommHandle all_gather_async(const Tensor& in, Tensor& out) = 0;
  // t of rank `root` to every rank.
  virtual CommHandle broadcast_async(Tensor& t, int root) = 0;
  // Point to point (pipeline stages). Matched by (peer, tag) in order.
  virtual CommHandle send_async(const Tensor& t, int dst, int tag) = 0;
  virtual CommHandle recv_async(Tensor& t, int src, int tag) = 0;

  void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum) { all_reduce_async(t, op)->wait(); }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(in, out, op)->wait();
  }
  void all_gather(const Tensor& in, Tensor& out) { all_gather_async(in, out)->wait(); }
  void broadcast(Tensor& t, int root) { broadcast_async(t, root)->wait(); }
  void send(const Tensor& t, int dst, int tag) { send_async(t, dst, tag)->wait(); }
  void recv(Tensor& t, int src, int tag) { recv_async(t, src, tag)->wait(); }

  virtual void barrier() = 0;

  // ---- small host values: loss sums, token counts, flags, hashes, reports ----
  // In place, blocking. The fake communicator treats every rank as holding the same
  // values (sum multiplies by size(); max and min leave them as they are).
  virtual void all_reduce(std::span<double> values, ReduceOp op) = 0;
  virtual void all_reduce(std::span<int64_t> values, ReduceOp op) = 0;
  // Every rank's bytes, in rank order (lengths may differ between ranks).
  virtual std::vector<std::string> all_gather_bytes(const std::string& mine) = 0;
  // Rank root's bytes on every rank.
  virtual std::string broadcast_bytes(const std::string& mine, int root) = 0;

  // A communicator over the ranks of this one that pass the same `color`, ordered by
  // `key` (then by rank), as MPI_Comm_split. Every rank of this communicator calls it.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// The communicator of a single process: size 1, every operation an identity (reduce of
// one rank) or a copy, no scratch. For training without parallelism.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace lmtune
