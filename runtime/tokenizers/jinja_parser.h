// Lexer and parser of the Jinja subset that chat templates use, following jinja2 3.1's lexer and
// parser with the options transformers sets (trim_blocks, lstrip_blocks, keep_trailing_newline
// off): whitespace control ({%- -%} {%+ +%}), raw blocks, comments, and jinja2's operator
// precedence. Unsupported syntax fails with "chat template line N: ...".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizers/jinja_value.h"

namespace tessera::tokenizers::jinja {

enum class NodeKind {
  // expressions
  kConst,
  kName,
  kGetattr,
  kGetitem,
  kSlice,
  kCall,
  kFilter,
  kTest,
  kNeg,
  kPos,
  kNot,
  kAnd,
  kOr,
  kBinary,
  kConcat,
  kCompare,
  kCondExpr,
  kList,
  kTuple,
  kDict,
  // statements
  kTemplate,
  kData,
  kOutput,
  kIf,
  kFor,
  kSet,
  kSetBlock,
  kMacro,
  kFilterBlock,
  kBreak,
  kContinue,
  kWith,
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Node {
  NodeKind kind;
  int line = 0;
  std::string name;  // Name, Getattr attribute, Filter/Test/Macro name, operator, Data text
  Value value;       // Const
  std::vector<NodePtr> kids;             // operands, arguments, list items, dict keys/values...
  std::vector<std::string> names;        // keyword argument names (parallel to kw), targets
  std::vector<NodePtr> kw;               // keyword argument values, macro defaults
  std::vector<NodePtr> body, else_body;  // statement bodies
  std::vector<std::string> ops;          // Compare operators
  bool flag = false;                     // Test: negated; Set: namespace attribute target
};

// Throws tessera::Error "chat template line N: ..." on unsupported or malformed syntax.
NodePtr parse_template(const std::string& source);

}  // namespace tessera::tokenizers::jinja
