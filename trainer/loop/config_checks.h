// Checks of a training config against the model it names, made before any data is read or
// any weight is loaded, so that a value the model cannot take is blamed on its key (and not
// on the data or on a later failure): data.seq_len against the model's context,
// method.lora.rank against the dimensions of every layer it adapts.
//
// And the advice a training run's out-of-memory error gives: only knobs that exist in this
// release and would lower memory for this config. Keep it current as features land
// (ZeRO, offload, QLoRA, `lmtune plan`).
#pragma once

#include <filesystem>
#include <string>

#include "trainer/loop/train_config.h"
#include "trainer/model/config.h"

namespace lmtune {

// `config_json` is where `model` was read from (named in errors).
void check_config_against_model(const TrainConfig& config, const LlamaConfig& model,
                                const std::filesystem::path& config_json);

// "a smaller train.micro_batch_size (now 8) with more train.grad_accum_steps (now 1), ..."
std::string train_oom_advice(const TrainConfig& config);

}  // namespace lmtune
