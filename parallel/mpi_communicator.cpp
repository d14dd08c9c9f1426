#include "parallel/mpi_communicator.h"

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "parallel/comm_checks.h"
#include "parallel/mpi_engine.h"
#include "parallel/run_context.h"
#include "trainer/core/error.h"

namespace lmtune {

namespace {

using mpi::Engine;
using std::chrono::milliseconds;

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::i32: return MPI_INT32_T;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;  // moved, never reduced
    case DType::u8: return MPI_UINT8_T;    // NF4 codes and absmax codes: moved, never reduced
    default: break;
  }
  LMTUNE_ASSERT(false, "no MPI type for ", dtype_name(t));
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

std::string seconds_str(milliseconds t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(t.count()) / 1000.0);
  return buf;
}

class MpiWork final : public CommWork {
 public:
  MpiWork(std::shared_ptr<Engine> engine, std::shared_future<void> f, std::string what, milliseconds timeout)
      : engine_(std::move(engine)), f_(std::move(f)), what_(std::move(what)), timeout_(timeout) {}

  void wait() override {
    if (!done()) {
      engine_->add_waiter();
      const auto status = f_.wait_for(timeout_);
      engine_->remove_waiter();
      LMTUNE_CHECK(status == std::future_status::ready, what_, " did not complete within ", seconds_str(timeout_),
                   " s: a peer rank may have died, hung or called a different collective (the timeout is ",
                   kCommTimeoutEnv, ")");
    }
    f_.get();
  }
  bool done() override { return f_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }

 private:
  std::shared_ptr<Engine> engine_;
  std::shared_future<void> f_;
  std::string what_;
  milliseconds timeout_;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(std::shared_ptr<Engine> engine, MPI_Comm comm, int rank, int size, std::string name,
                  milliseconds timeout)
      : engine_(std::move(engine)),
        comm_(comm),
        id_(engine_->next_comm_id()),
        rank_(rank),
        size_(size),
        name_(std::move(name)),
        timeout_(timeout) {}
  ~MpiCommunicator() override { engine_->free_comm(comm_, id_); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  CommHandle all_reduce_async(Tensor& t, ReduceOp op) override {
    check_all_reduce(shape(), t, op);
    const std::string what = describe_tensor_op("all_reduce", t) + " (" + reduce_op_name(op) + ")";
    return post(what, t.nbytes(), -1, [c = comm_, p = t.raw(), n = count(t), ty = mpi_type(t.dtype()), o = mpi_op(op)](
                              MPI_Request* r) { return MPI_Iallreduce(MPI_IN_PLACE, p, n, ty, o, c, r); });
  }

  CommHandle reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    const Aliasing a = check_reduce_scatter(shape(), in, out, op);
    const std::string what = describe_tensor_op("reduce_scatter", in) + " (" + reduce_op_name(op) + ")";
    const int n = count(out);
    const MPI_Datatype ty = mpi_type(in.dtype());
    if (a == Aliasing::separate)
      return post(what, in.nbytes(), -1, [c = comm_, src = in.raw(), dst = out.raw(), n, ty, o = mpi_op(op)](MPI_Request* r) {
        return MPI_Ireduce_scatter_block(src, dst, n, ty, o, c, r);
      });
    // In place: MPI leaves this rank's chunk at the start of the buffer; move it to chunk r.
    std::function<void()> finish;
    if (rank_ != 0 && n > 0)
      finish = [dst = out.raw(), src = in.raw(), bytes = out.nbytes()] { std::memcpy(dst, src, bytes); };
    return post(
        what, in.nbytes(), -1,
        [c = comm_, buf = in.raw(), n, ty, o = mpi_op(op)](MPI_Request* r) {
          return MPI_Ireduce_scatter_block(MPI_IN_PLACE, buf, n, ty, o, c, r);
        },
        std::move(finish));
  }

  CommHandle all_gather_async(const Tensor& in, Tensor& out) override {
    const Aliasing a = check_all_gather(shape(), in, out);
    const std::string what = describe_tensor_op("all_gather", out);
    const int n = count(in);
    const MPI_Datatype ty = mpi_type(in.dtype());
    if (a == Aliasing::own_chunk)
      return post(what, out.nbytes(), -1, [c = comm_, dst = out.raw(), n, ty](MPI_Request* r) {
        return MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, dst, n, ty, c, r);
      });
    return post(what, out.nbytes(), -1, [c = comm_, src = in.raw(), dst = out.raw(), n, ty](MPI_Request* r) {
      return MPI_Iallgather(src, n, ty, dst, n, ty, c, r);
    });
  }

  CommHandle broadcast_async(Tensor& t, int root) override {
    check_broadcast(shape(), t, root);
    const std::string what = describe_tensor_op("broadcast", t) + " from rank " + std::to_string(root);
    return post(what, t.nbytes(), root, [c = comm_, p = t.raw(), n = count(t), ty = mpi_type(t.dtype()), root](MPI_Request* r) {
      return MPI_Ibcast(p, n, ty, root, c, r);
    });
  }

  CommHandle send_async(const Tensor& t, int dst, int tag) override {
    check_point_to_point(shape(), "send", t, dst, tag);
    const std::string what = describe_tensor_op("send", t) + " to rank " + std::to_string(dst) + " (tag " +
                             std::to_string(tag) + ")";
    return post(what, t.nbytes(), dst, [c = comm_, p = t.raw(), n = count(t), ty = mpi_type(t.dtype()), dst, tag](MPI_Request* r) {
      return MPI_Isend(p, n, ty, dst, tag, c, r);
    });
  }

  CommHandle recv_async(Tensor& t, int src, int tag) override {
    check_point_to_point(shape(), "recv", t, src, tag);
    const std::string what = describe_tensor_op("recv", t) + " from rank " + std::to_string(src) + " (tag " +
                             std::to_string(tag) + ")";
    return post(what, t.nbytes(), src, [c = comm_, p = t.raw(), n = count(t), ty = mpi_type(t.dtype()), src, tag](MPI_Request* r) {
      return MPI_Irecv(p, n, ty, src, tag, c, r);
    });
  }

  void barrier() override {
    post("barrier", 0, -1, [c = comm_](MPI_Request* r) { return MPI_Ibarrier(c, r); })->wait();
  }

  void all_reduce(std::span<double> values, ReduceOp op) override {
    host_all_reduce(values.data(), values.size(), MPI_DOUBLE, "doubles", op);
  }
  void all_reduce(std::span<int64_t> values, ReduceOp op) override {
    host_all_reduce(values.data(), values.size(), MPI_INT64_T, "int64s", op);
  }

  std::vector<std::string> all_gather_bytes(const std::string& mine) override {
    LMTUNE_CHECK(mine.size() <= INT_MAX, "all_gather_bytes of ", mine.size(), " bytes on ", where(),
                 ": at most 2^31 - 1 bytes");
    struct Buffers {
      int64_t mine_len = 0;
      std::vector<int64_t> lens;
      std::string mine, all;
      std::vector<int> counts, displs;
    };
    auto b = std::make_shared<Buffers>();
    b->mine = mine;
    b->mine_len = static_cast<int64_t>(mine.size());
    b->lens.resize(size_);
    post(
        "all_gather_bytes (lengths)", 8 * size_, -1,
        [c = comm_, b = b.get()](MPI_Request* r) {
          return MPI_Iallgather(&b->mine_len, 1, MPI_INT64_T, b->lens.data(), 1, MPI_INT64_T, c, r);
        },
        {}, b)
        ->wait();
    int64_t total = 0;
    for (int i = 0; i < size_; ++i) {
      b->counts.push_back(static_cast<int>(b->lens[i]));
      b->displs.push_back(static_cast<int>(total));
      total += b->lens[i];
    }
    LMTUNE_CHECK(total <= INT_MAX, "all_gather_bytes of ", total, " bytes in all on ", where(),
                 ": at most 2^31 - 1 bytes");
    b->all.resize(static_cast<size_t>(total));
    post(
        "all_gather_bytes of " + std::to_string(total) + " bytes", total, -1,
        [c = comm_, b = b.get()](MPI_Request* r) {
          return MPI_Iallgatherv(b->mine.data(), static_cast<int>(b->mine_len), MPI_BYTE, b->all.data(),
                                 b->counts.data(), b->displs.data(), MPI_BYTE, c, r);
        },
        {}, b)
        ->wait();
    std::vector<std::string> out;
    for (int i = 0; i < size_; ++i) out.push_back(b->all.substr(b->displs[i], b->counts[i]));
    return out;
  }

  std::string broadcast_bytes(const std::string& mine, int root) override {
    check_root(shape(), "broadcast_bytes", root);
    LMTUNE_CHECK(mine.size() <= INT_MAX, "broadcast_bytes of ", mine.size(), " bytes on ", where(),
                 ": at most 2^31 - 1 bytes");
    struct Buffers {
      int64_t len = 0;
      std::string data;
    };
    auto b = std::make_shared<Buffers>();
    if (rank_ == root) {
      b->data = mine;
      b->len = static_cast<int64_t>(mine.size());
    }
    const std::string from = " from rank " + std::to_string(root);
    post(
        "broadcast_bytes (length)" + from, 8, root,
        [c = comm_, b = b.get(), root](MPI_Request* r) { return MPI_Ibcast(&b->len, 1, MPI_INT64_T, root, c, r); }, {},
        b)
        ->wait();
    b->data.resize(static_cast<size_t>(b->len));
    post(
        "broadcast_bytes of " + std::to_string(b->len) + " bytes" + from, b->len, root,
        [c = comm_, b = b.get(), root](MPI_Request* r) {
          return MPI_Ibcast(b->data.data(), static_cast<int>(b->len), MPI_BYTE, root, c, r);
        },
        {}, b)
        ->wait();
    return b->data;
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    LMTUNE_ASSERT(color >= 0, "split with color ", color, " on ", where(), ": colors are non-negative");
    struct Result {
      MPI_Comm comm = MPI_COMM_NULL;
      int rank = -1, size = 0;
    };
    auto res = std::make_shared<Result>();
    const std::string what =
        "split (color " + std::to_string(color) + ", key " + std::to_string(key) + ") of " + where();
    engine_->call(
        what,
        [c = comm_, color, key, res, what] {
          const int rc = MPI_Comm_split(c, color, key, &res->comm);
          LMTUNE_CHECK(rc == MPI_SUCCESS, "MPI error in ", what, ": ", mpi::error_string(rc));
          MPI_Comm_set_errhandler(res->comm, MPI_ERRORS_RETURN);
          MPI_Comm_rank(res->comm, &res->rank);
          MPI_Comm_size(res->comm, &res->size);
        },
        timeout_);
    return std::make_unique<MpiCommunicator>(engine_, res->comm, res->rank, res->size,
                                             name_ + "/" + std::to_string(color), timeout_);
  }

 private:
  std::string where() const {
    return "communicator " + name_ + " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
  }
  CommShape shape() const { return {rank_, size_, Device::cpu(), where()}; }
  static int count(const Tensor& t) { return static_cast<int>(t.numel()); }

  CommHandle post(const std::string& what, int64_t bytes, int peer, std::function<int(MPI_Request*)> start,
                  std::function<void()> finish = {}, std::shared_ptr<void> keep_alive = {}) {
    mpi::Operation op;
    op.bytes = bytes;
    op.what = what;
    op.where = where();
    op.peer = peer;
    op.comm_id = id_;
    op.start = std::move(start);
    op.finish = std::move(finish);
    op.keep_alive = std::move(keep_alive);
    std::shared_future<void> f = engine_->post(std::move(op));
    return std::make_unique<MpiWork>(engine_, std::move(f), what + " on " + where(), timeout_);
  }

  void host_all_reduce(void* data, size_t n, MPI_Datatype ty, const char* kind, ReduceOp op) {
    LMTUNE_CHECK(n <= INT_MAX, "all_reduce of ", n, " ", kind, ": too many values");
    const std::string what = "all_reduce of " + std::to_string(n) + " " + kind + " (" + reduce_op_name(op) + ")";
    post(what, static_cast<int64_t>(n) * 8, -1, [c = comm_, data, n = static_cast<int>(n), ty, o = mpi_op(op)](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, n, ty, o, c, r);
    })->wait();
  }

  std::shared_ptr<Engine> engine_;
  MPI_Comm comm_;
  uint64_t id_;
  int rank_, size_;
  std::string name_;
  milliseconds timeout_;
};

}  // namespace

milliseconds comm_timeout_from_env() {
  const char* v = std::getenv(kCommTimeoutEnv);
  if (v == nullptr || *v == '\0') return milliseconds(static_cast<int64_t>(kDefaultCommTimeoutSeconds * 1000));
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  LMTUNE_CHECK(*end == '\0' && std::isfinite(s) && s > 0 && s < 1e9, kCommTimeoutEnv, "='", v,
               "' is not a positive number of seconds");
  return milliseconds(std::max<int64_t>(1, static_cast<int64_t>(s * 1000)));
}

std::unique_ptr<Communicator> make_mpi_world_communicator(const RunContext& ctx, milliseconds timeout) {
  std::shared_ptr<Engine> engine = Engine::instance();
  struct Result {
    MPI_Comm comm = MPI_COMM_NULL;
    int rank = -1, size = 0;
  };
  auto res = std::make_shared<Result>();
  engine->call(
      "creating the world communicator",
      [res] {
        const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &res->comm);
        LMTUNE_CHECK(rc == MPI_SUCCESS, "MPI_Comm_dup(MPI_COMM_WORLD) failed: ", mpi::error_string(rc));
        MPI_Comm_set_errhandler(res->comm, MPI_ERRORS_RETURN);
        MPI_Comm_rank(res->comm, &res->rank);
        MPI_Comm_size(res->comm, &res->size);
      },
      timeout);
  auto comm = std::make_unique<MpiCommunicator>(engine, res->comm, res->rank, res->size, "world", timeout);
  LMTUNE_CHECK(res->rank == ctx.rank && res->size == ctx.world, "MPI says this process is rank ", res->rank, " of ",
               res->size, ", but the launcher's environment (", kRunContextVariables, ") says rank ", ctx.rank, " of ",
               ctx.world,
               res->size == 1 ? "; was this process started by mpirun or srun (inside a Slurm allocation, run it "
                                "through srun --mpi=pmix or lmtune launch)?"
                              : "");
  return comm;
}

void abort_run(const std::string& message, int exit_code) {
  std::cout.flush();
  int rank = Engine::world_rank();
  if (rank < 0) rank = rank_from_environment().value_or(-1);
  std::cerr << "lmtune: " << (rank >= 0 ? "rank " + std::to_string(rank) + ": " : std::string()) << message << "\n";
  std::cerr.flush();
  Engine::abort_job(exit_code);
}

}  // namespace lmtune
