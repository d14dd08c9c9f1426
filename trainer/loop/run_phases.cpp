#include "trainer/loop/run_phases.h"

#include <algorithm>
#include <span>

#include "trainer/loop/inference.h"

namespace lmtune {

bool evaluates_after(const TrainConfig& c, int64_t done, int64_t total) {
  return (c.train.eval_every > 0 && done % c.train.eval_every == 0) || done == total;
}

EvalResult evaluate(LlamaModel& model, const PackedDataset& val, int64_t B, int64_t max_batches, Communicator& dp,
                    UnitHooks* hooks, Lockstep lockstep) {
  EvalResult r;
  if (val.num_rows() == 0) return r;
  Allocator& alloc = model.allocator();
  const int64_t T = val.seq_len(), G = B * dp.size();
  double sums[1] = {0.0};
  int64_t tokens[1] = {0};
  for (int64_t b = 0; b < max_batches && b * G < val.num_rows(); ++b) {
    const int64_t first = b * G + dp.rank() * B;
    int64_t n = std::min(B, val.num_rows() - first);
    std::vector<int32_t> tok, tgt;
    if (n <= 0) {
      if (lockstep == Lockstep::no) continue;
      n = 1;  // one row of the set, every target ignored: the forward happens, the loss is 0 of 0
      const auto in = val.inputs(0);
      tok.assign(in.begin(), in.end());
      tgt.assign(in.size(), -1);
    }
    if (tok.empty())
      for (int64_t row = first; row < first + n; ++row) {
        const auto in = val.inputs(row), out = val.targets(row);
        tok.insert(tok.end(), in.begin(), in.end());
        tgt.insert(tgt.end(), out.begin(), out.end());
      }
    const LossResult l =
        model.forward_loss(make_token_tensor(alloc, tok, n, T), make_token_tensor(alloc, tgt, n, T), hooks);
    sums[0] += l.sum;
    tokens[0] += l.count;
  }
  dp.all_reduce(std::span<double>(sums), ReduceOp::sum);
  dp.all_reduce(std::span<int64_t>(tokens), ReduceOp::sum);
  r.tokens = tokens[0];
  r.loss = r.tokens ? sums[0] / static_cast<double>(r.tokens) : 0.0;
  return r;
}

std::vector<int32_t> sample_ids(LlamaModel& model, const std::vector<int32_t>& prompt, const TrainConfig& c,
                                UnitHooks* hooks) {
  SamplingOptions s;
  s.temperature = 0.0f;
  s.max_new_tokens = std::min<int64_t>(c.train.sample_tokens,
                                       model.config().max_position_embeddings - static_cast<int64_t>(prompt.size()));
  std::vector<int32_t> all = prompt;
  if (s.max_new_tokens <= 0) return all;
  const std::vector<int32_t> ids = generate(model, prompt, s, nullptr, StopAtEos::yes, hooks);
  all.insert(all.end(), ids.begin(), ids.end());
  return all;
}

}  // namespace lmtune
