#include "trainer/core/communicator.h"

#include "trainer/core/error.h"

namespace lmtune {

namespace {

class DoneWork final : public CommWork {
 public:
  void wait() override {}
  bool done() override { return true; }
};

// One rank: reductions are identities, gathers and scatters copies.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }

  CommHandle all_reduce_async(Tensor&, ReduceOp) override { return done(); }
  CommHandle reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp) override { return copy(in, out); }
  CommHandle all_gather_async(const Tensor& in, Tensor& out) override { return copy(in, out); }
  CommHandle broadcast_async(Tensor&, int root) override {
    check_peer(root, "broadcast");
    return done();
  }
  CommHandle send_async(const Tensor&, int dst, int) override {
    LMTUNE_THROW("send to rank ", dst, " in a single-process run (no peers)");
  }
  CommHandle recv_async(Tensor&, int src, int) override {
    LMTUNE_THROW("recv from rank ", src, " in a single-process run (no peers)");
  }
  void barrier() override {}
  void all_reduce(std::span<double>, ReduceOp) override {}
  void all_reduce(std::span<int64_t>, ReduceOp) override {}
  std::vector<std::string> all_gather_bytes(const std::string& mine) override { return {mine}; }
  std::string broadcast_bytes(const std::string& mine, int root) override {
    check_peer(root, "broadcast");
    return mine;
  }
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<LocalCommunicator>(); }

 private:
  static CommHandle done() { return std::make_unique<DoneWork>(); }
  static void check_peer(int r, const char* op) {
    LMTUNE_ASSERT(r == 0, op, " from rank ", r, " in a single-process run");
  }
  static CommHandle copy(const Tensor& in, Tensor& out) {
    LMTUNE_ASSERT(in.numel() == out.numel() && in.dtype() == out.dtype(), "a collective of ", shape_str(in.shape()),
                  " into ", shape_str(out.shape()));
    if (in.raw() != out.raw() && !out.is_meta()) out.copy_(in);
    return done();
  }
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace lmtune
