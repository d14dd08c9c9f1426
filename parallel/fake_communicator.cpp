#include "parallel/fake_communicator.h"

#include "parallel/comm_checks.h"
#include "trainer/core/error.h"

namespace lmtune {

namespace {

class DoneWork final : public CommWork {
 public:
  void wait() override {}
  bool done() override { return true; }
};

class FakeCommunicator final : public Communicator {
 public:
  FakeCommunicator(int rank, int size) : rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "fake"; }

  CommHandle all_reduce_async(Tensor& t, ReduceOp op) override {
    check_all_reduce(shape(), t, op);
    return done();
  }
  CommHandle reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    check_reduce_scatter(shape(), in, out, op);
    return done();
  }
  CommHandle all_gather_async(const Tensor& in, Tensor& out) override {
    check_all_gather(shape(), in, out);
    return done();
  }
  CommHandle broadcast_async(Tensor& t, int root) override {
    check_broadcast(shape(), t, root);
    return done();
  }
  CommHandle send_async(const Tensor& t, int dst, int tag) override {
    check_point_to_point(shape(), "send", t, dst, tag);
    return done();
  }
  CommHandle recv_async(Tensor& t, int src, int tag) override {
    check_point_to_point(shape(), "recv", t, src, tag);
    return done();
  }
  void barrier() override {}

  void all_reduce(std::span<double> values, ReduceOp op) override {
    if (op == ReduceOp::sum)
      for (double& v : values) v *= size_;
  }
  void all_reduce(std::span<int64_t> values, ReduceOp op) override {
    if (op == ReduceOp::sum)
      for (int64_t& v : values) v *= size_;
  }
  std::vector<std::string> all_gather_bytes(const std::string& mine) override {
    return std::vector<std::string>(static_cast<size_t>(size_), mine);
  }
  std::string broadcast_bytes(const std::string& mine, int root) override {
    check_root(shape(), "broadcast_bytes", root);
    return mine;
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    LMTUNE_THROW("split (color ", color, ", key ", key, ") of a fake communicator: it cannot know the colors of the ",
                 "other ranks; make the group communicators of a layout with make_fake_groups(rank, layout) or ",
                 "make_fake_communicator(rank, size)");
  }

 private:
  CommShape shape() const {
    return {rank_, size_, Device::meta(),
            "fake communicator (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")"};
  }
  static CommHandle done() { return std::make_unique<DoneWork>(); }

  int rank_, size_;
};

}  // namespace

std::unique_ptr<Communicator> make_fake_communicator(int rank, int size) {
  LMTUNE_ASSERT(size >= 1 && rank >= 0 && rank < size, "fake communicator: rank ", rank, " of ", size);
  return std::make_unique<FakeCommunicator>(rank, size);
}

}  // namespace lmtune
