#include "parallel/rank_model.h"

#include "parallel/data_parallel.h"
#include "parallel/zero.h"

namespace lmtune {

RankModel build_rank_model(const TrainConfig& c, const ModelSource& source, Allocator& device, Allocator& host,
                           const RankGroups& groups) {
  Communicator& dp = *groups.dp;
  const OverlapGradReduce overlap = c.parallel.overlap_grad_reduce ? OverlapGradReduce::on : OverlapGradReduce::off;
  RankModel r;
  if (c.parallel.zero == 0) {
    r.model = build_dense_model(source, device);
    r.state = make_replicated_state(*r.model, dp, grad_bucket_bytes(c), overlap);
    return r;
  }
  r.model = std::make_unique<LlamaModel>(source.model_config(), device, source.options(), ParamStorage::external);
  ZeroOptions z;
  z.stage = static_cast<int>(c.parallel.zero);
  z.bucket_bytes = grad_bucket_bytes(c);
  z.overlap = overlap;
  z.prefetch = static_cast<int>(c.parallel.prefetch);
  z.offload_params = c.parallel.offload == Offload::params;
  r.state = z.stage == 3 ? make_zero3_state(*r.model, source, dp, host, z) : make_zero_bucket_state(*r.model, source, dp, z);
  return r;
}

}  // namespace lmtune
