// Whether a checkpoint may be resumed under the config of the run that resumes it.
//
// Design note. Resuming is correct only when the run continues the same optimisation: the
// same function being trained (model, base dtype, method and the LoRA adapters' shape and
// scaling) and the same stream of batches (the data, how it is cut into rows, their
// order, and how many rows make a micro-batch over all data-parallel ranks (micro_batch_size
// x dp) and a step), because the checkpoint's loader position counts rows of that stream. Those keys (resume_fixed_keys()) must equal
// the ones in the config.yaml saved with the checkpoint; every key that differs is named
// in one error. Everything else may change on resume, on purpose: the length and shape
// of the schedule (max_steps, epochs, lr, warmup, min_lr_ratio, schedule), the other
// AdamW hyper-parameters and clipping (their moments stay valid), LoRA dropout and
// train.seed (which only draw the dropout masks), threads, logging, evaluation, samples,
// checkpoint cadence, validation files, output, and parallel.* (a run will resume under
// another layout). A changed key of that kind still makes the run differ from one that
// never stopped, as it would in torchtune or the HF Trainer.
//
// Beyond the keys, the checkpoint records a fingerprint of the training rows (their count
// and a hash of their tokens and targets): files edited or added under the same
// data.train_files pattern, or another tokenizer, are caught too. Keys absent from an
// older checkpoint's config, and a fingerprint absent from an older checkpoint, are not
// compared.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "trainer/io/checkpoint.h"
#include "trainer/loop/train_config.h"

namespace lmtune {

// The dotted keys that must not change on resume (prompt_template only counts for alpaca
// data, chat_template only for chat data, method.lora.* only for LoRA).
const std::vector<std::string>& resume_fixed_keys();

// Compares `config` with the config.yaml saved in `checkpoint`; throws naming every fixed
// key that differs (saved and current value), or saying that a LoRA checkpoint cannot be
// resumed as full fine-tuning (and the reverse) and what to do instead.
void check_resume_config(const TrainConfig& config, const std::filesystem::path& checkpoint);

// Compares the training rows the run has now with the fingerprint the checkpoint saved.
void check_resume_data(const std::filesystem::path& checkpoint, const TrainerState& saved, const DataFingerprint& now,
                       const TrainConfig& config);

}  // namespace lmtune
