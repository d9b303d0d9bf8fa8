// Training configs (`tessera train --config FILE`): the first byte chooses the file's extension
// (even: .json, odd: .toml, our TOML subset), the rest is the file, read by TrainConfig::read_file
// and from_json, then validate(). Properties: refusals are tessera::Error; a config validate()
// accepts writes itself out (to_json) and reads back to the same config; what the trainer derives
// from it stays defined: accumulation steps for 1..8 ranks (a value or an error), the learning
// rate at every boundary step (finite, in [0, lr]), the gradient bucket's element count (an
// int64, as data_parallel.cpp converts it).
#include <cmath>
#include <string>

#include "common/error.h"
#include "runtime/training/train_config.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/fuzz_util.h"

using tessera::training::TrainConfig;

TESSERA_FUZZ_TARGET(train_config) {
  if (size == 0) return 0;
  static const std::string json_path = tessera::fuzz::scratch_dir() + "/train.json";
  static const std::string toml_path = tessera::fuzz::scratch_dir() + "/train.toml";
  const std::string& path = data[0] % 2 == 0 ? json_path : toml_path;
  tessera::fuzz::write_file(path, data + 1, size - 1);
  TrainConfig c;
  try {
    c = TrainConfig::from_json(TrainConfig::read_file(path));
    c.validate();
  } catch (const tessera::Error&) {
    return 0;
  }
  TrainConfig again;
  try {
    again = TrainConfig::from_json(c.to_json());
  } catch (const tessera::Error& e) {
    TESSERA_FUZZ_ASSERT(false, std::string("its own to_json is refused: ") + e.what());
  }
  TESSERA_FUZZ_ASSERT(again.to_json() == c.to_json(), "to_json does not read back the same");
  for (int world = 1; world <= 8; ++world) {
    try {
      const int64_t acc = c.accumulation_steps(world);
      TESSERA_FUZZ_ASSERT(acc >= 1, "accumulation steps " + std::to_string(acc));
    } catch (const tessera::Error&) {
    }
  }
  for (int64_t step : {int64_t{0}, c.warmup_steps - 1, c.warmup_steps, c.steps - 1, c.steps}) {
    if (step < 0) continue;
    const double lr = tessera::training::learning_rate(c, step);
    TESSERA_FUZZ_ASSERT(std::isfinite(lr) && lr >= 0 && lr <= c.lr * (1 + 1e-12),
                        "learning rate " + std::to_string(lr) + " at step " + std::to_string(step) +
                            " (lr " + std::to_string(c.lr) + ")");
  }
  const double bucket_elements = c.bucket_mb * 1024 * 1024 / sizeof(float);
  TESSERA_FUZZ_ASSERT(bucket_elements < 9.2e18, "bucket_mb " + std::to_string(c.bucket_mb) +
                                                    " is not an int64 count of elements");
  return 0;
}
