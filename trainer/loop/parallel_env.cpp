#include "trainer/loop/parallel_env.h"

namespace lmtune {

SingleProcess::SingleProcess() : world_(make_local_communicator()), meta_(make_local_communicator()) {
  env_.world = world_.get();
  env_.groups = {world_.get(), world_.get(), world_.get()};
  env_.meta_groups = {meta_.get(), meta_.get(), meta_.get()};
}

}  // namespace lmtune
