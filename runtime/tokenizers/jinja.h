// A compiled chat template: the Jinja subset of Hugging Face chat templates, rendered as
// transformers renders them (jinja2's ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks, transformers' tojson and raise_exception). Where jinja2 returns a generator
// (select, reject, selectattr, rejectattr, map, unique) this returns a list.
#pragma once

#include <memory>
#include <string>

#include "runtime/tokenizers/jinja_value.h"

namespace tessera::tokenizers::jinja {

struct Node;

class Template {
 public:
  // Throws tessera::Error "chat template line N: ..." on syntax it does not support.
  static Template parse(const std::string& source);
  // `vars` are the template's globals (messages, add_generation_prompt, bos_token, ...).
  // Throws tessera::Error "chat template line N: ..." on a runtime error or raise_exception.
  std::string render(const Dict& vars) const;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace tessera::tokenizers::jinja
