// Stop strings over streamed text (the job of the scheduler branch's OutputProcessor,
// runtime/engine/output_processor.h, which has not landed on main yet: this is serving's own small
// one behind the same seam, text delta in -> text to emit + stopped). It holds back the longest
// tail of the text that could still grow into a stop string, so no emitted byte is ever taken back.
// The stop string that completes first ends the text (at equal ends, the longer one), so the
// result does not depend on how the text was cut into deltas.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tessera::serving {

class StopStringProcessor {
 public:
  // Empty strings are ignored. include_stop: the matched stop string is part of the output.
  StopStringProcessor(std::vector<std::string> stops, bool include_stop);

  struct Result {
    std::string emit;      // text that can go to the client now
    bool stopped = false;  // a stop string matched: the output ends with `emit`
    std::string matched;   // which one
  };
  Result push(std::string_view delta);
  std::string finish();  // the held-back text, when generation ended for another reason

 private:
  std::vector<std::string> stops_;
  bool include_stop_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace tessera::serving
