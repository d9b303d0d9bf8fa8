// One fuzz target per parser of untrusted or semi-trusted bytes. A target is written once with
// TESSERA_FUZZ_TARGET and compiled two ways:
//  - in build-fuzz/ (clang, -DTESSERA_LIBFUZZER) as a libFuzzer program with ASan + UBSan
//    (scripts/fuzz.sh runs it);
//  - in the normal g++ build, registered by name, so fuzz_replay_test runs every input of its seed
//    corpus and every input that once crashed it (tests/fuzz_corpus/<name>/) on each ctest run.
// A target returns 0 and lets tessera::Error (a refusal that names the field) pass silently; any
// other exception, a crash or a broken property it checks (TESSERA_FUZZ_ASSERT) is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace tessera::fuzz {

using TargetFn = int (*)(const uint8_t* data, size_t size);

// Targets registered in this program (the replay test), by name.
inline std::map<std::string, TargetFn>& registry() {
  static std::map<std::string, TargetFn> targets;
  return targets;
}
inline bool register_target(const char* name, TargetFn fn) {
  registry()[name] = fn;
  return true;
}

// A property that must hold for every input: printed and aborted on (libFuzzer keeps the input).
[[noreturn]] inline void property_failed(const char* cond, const char* file, int line,
                                         const std::string& detail) {
  std::fprintf(stderr, "%s:%d: fuzz property failed: %s %s\n", file, line, cond, detail.c_str());
  std::abort();
}

}  // namespace tessera::fuzz

#define TESSERA_FUZZ_ASSERT(cond, detail)                                               \
  do {                                                                                  \
    if (!(cond)) ::tessera::fuzz::property_failed(#cond, __FILE__, __LINE__, (detail)); \
  } while (0)

#ifdef TESSERA_LIBFUZZER
#define TESSERA_FUZZ_TARGET(name)                                           \
  static int tessera_fuzz_##name(const uint8_t* data, size_t size);         \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    return tessera_fuzz_##name(data, size);                                 \
  }                                                                         \
  static int tessera_fuzz_##name(const uint8_t* data, size_t size)
#else
#define TESSERA_FUZZ_TARGET(name)                                     \
  static int tessera_fuzz_##name(const uint8_t* data, size_t size);   \
  [[maybe_unused]] static const bool tessera_fuzz_registered_##name = \
      ::tessera::fuzz::register_target(#name, &tessera_fuzz_##name);  \
  static int tessera_fuzz_##name(const uint8_t* data, size_t size)
#endif
