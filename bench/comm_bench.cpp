// All-reduce bandwidth of the MPI communicator, in the style of nccl-tests' all_reduce_perf.
// Run it on several ranks through the launcher (which holds lmtune's Open MPI settings):
//
//   build/lmtune launch --nproc-per-node 2 --program build/bench/comm_bench [-- MIN_BYTES MAX_BYTES]
//
// For each size (f32, sum, in place; powers of two from 4 KiB to 64 MiB by default) it
// times `Communicator::all_reduce` (a nonblocking MPI_Iallreduce driven by the progress
// thread, what data parallelism uses) and, as the peer in the same run, a plain blocking
// MPI_Allreduce issued on the same MPI thread (and MPI_Iallreduce + MPI_Wait there, the same
// algorithm as ours without our polling). Time per operation is the slowest rank's
// mean; algbw = bytes / time; busbw = algbw * 2 (n - 1) / n (the bytes each rank's link
// carries in a ring, so numbers compare across rank counts, as nccl-tests defines them).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "parallel/mpi_communicator.h"
#include "parallel/mpi_engine.h"
#include "parallel/run_context.h"

namespace {

using namespace lmtune;
using Clock = std::chrono::steady_clock;

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Mean seconds per call of fn over `iters` calls, the slowest rank's.
template <typename F>
double time_per_call(Communicator& world, int iters, F fn) {
  world.barrier();
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) fn();
  std::vector<double> s = {std::chrono::duration<double>(Clock::now() - t0).count() / iters};
  world.all_reduce(std::span<double>(s), ReduceOp::max);
  return s[0];
}

}  // namespace

int main(int argc, char** argv) {
  install_launch_signal_relay();
  try {
    const RunContext ctx = detect_run_context();
    auto world = make_mpi_world_communicator(ctx);
    const int64_t min_bytes = argc > 1 ? std::atoll(argv[1]) : 4 << 10;
    const int64_t max_bytes = argc > 2 ? std::atoll(argv[2]) : 64 << 20;
    auto engine = mpi::Engine::instance();
    auto alloc = Allocator::create(Device::cpu());
    Tensor buf = Tensor::zeros(*alloc, {max_bytes / 4}, DType::f32, MemCategory::comm);
    const int n = world->size();
    const double bus = 2.0 * (n - 1) / n;
    std::string library;
    engine->call(
        "MPI_Get_library_version",
        [&library] {
          char v[MPI_MAX_LIBRARY_VERSION_STRING] = {};
          int len = 0;
          MPI_Get_library_version(v, &len);
          library = std::string(v, static_cast<size_t>(len));
          library = library.substr(0, library.find_first_of(",\n"));
        },
        std::chrono::minutes(1));
    if (ctx.rank == 0) {
      char host[256] = {};
      gethostname(host, sizeof host - 1);
      std::printf("# comm_bench: all_reduce f32 sum in place, %d ranks on %s (%s, %ld cores), %s\n", n, host,
                  cpu_model().c_str(), sysconf(_SC_NPROCESSORS_ONLN), library.c_str());
      std::printf("# OMP_NUM_THREADS=%s; lmtune = Communicator::all_reduce (MPI_Iallreduce driven by the progress "
                  "thread), mpi = blocking MPI_Allreduce on that thread, ratio = mpi time / lmtune time, mpi-nb = "
                  "MPI_Iallreduce + MPI_Wait on that thread; bandwidths in GB/s; load average %s\n",
                  std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "unset", load_average().c_str());
      std::printf("%12s %10s %11s %9s %9s %11s %9s %9s %7s %11s %9s\n", "size(B)", "count", "lmtune(us)", "algbw",
                  "busbw", "mpi(us)", "algbw", "busbw", "ratio", "mpi-nb(us)", "busbw");
    }
    for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
      Tensor t = buf.view(0, {bytes / 4});
      const int count = static_cast<int>(bytes / 4);
      // about 0.3 s per measurement, at least 5 calls
      const int iters = static_cast<int>(std::clamp<int64_t>((int64_t{300} << 20) / bytes, 5, 2000));
      auto ours = [&] { world->all_reduce(t, ReduceOp::sum); };
      auto nonblocking = [&] {
        engine->call(
            "MPI_Iallreduce + MPI_Wait",
            [p = t.raw(), count] {
              MPI_Request r;
              MPI_Iallreduce(MPI_IN_PLACE, p, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
              MPI_Wait(&r, MPI_STATUS_IGNORE);
            },
            std::chrono::minutes(5));
      };
      auto plain = [&] {
        engine->call(
            "MPI_Allreduce",
            [p = t.raw(), count] { MPI_Allreduce(MPI_IN_PLACE, p, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); },
            std::chrono::minutes(5));
      };
      time_per_call(*world, std::max(2, iters / 10), ours);  // warm-up
      time_per_call(*world, std::max(2, iters / 10), plain);
      time_per_call(*world, std::max(2, iters / 10), nonblocking);
      const double a = time_per_call(*world, iters, ours);
      const double b = time_per_call(*world, iters, plain);
      const double c = time_per_call(*world, iters, nonblocking);
      if (ctx.rank == 0) {
        const double ga = bytes / a / 1e9, gb = bytes / b / 1e9;
        std::printf("%12lld %10d %11.1f %9.3f %9.3f %11.1f %9.3f %9.3f %7.2f %11.1f %9.3f\n",
                    static_cast<long long>(bytes), count, a * 1e6, ga, ga * bus, b * 1e6, gb, gb * bus, b / a, c * 1e6,
                    bytes / c / 1e9 * bus);
        std::fflush(stdout);
      }
    }
    if (ctx.rank == 0) std::printf("# load average at the end: %s\n", load_average().c_str());
    return 0;
  } catch (const std::exception& e) {
    abort_run(std::string("error: ") + e.what(), 1);
  }
}
