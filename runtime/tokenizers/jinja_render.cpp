// The chat-template interpreter: statements, scopes, macros, globals and expression evaluation
// (the operators, methods, filters and tests it calls are in jinja_ops.h).
#include <unicode/uchar.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

#include "common/error.h"
#include "runtime/tokenizers/jinja.h"
#include "runtime/tokenizers/jinja_ops.h"
#include "runtime/tokenizers/jinja_parser.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {
namespace {

using unicode::next_cp;

constexpr const char* kLinePrefix = "chat template line ";

// Rejects unknown filters and tests when the template is compiled, as jinja2 does.
void validate(const Node& n) {
  if (n.kind == NodeKind::kFilter && !known_filters().count(n.name)) {
    TESSERA_FAIL(kLinePrefix, n.line, ": no filter named '", n.name, "'");
  }
  if (n.kind == NodeKind::kTest && !known_tests().count(n.name)) {
    TESSERA_FAIL(kLinePrefix, n.line, ": no test named '", n.name, "'");
  }
  for (const auto* list : {&n.kids, &n.kw, &n.body, &n.else_body}) {
    for (const auto& k : *list) {
      if (k) validate(*k);
    }
  }
}

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const Dict& vars) {
    scopes_.push_back(std::make_shared<Dict>(vars));
    root_ = scopes_.front();
  }
  // Namespaces are the only values a template changes after making them, so the only ones that
  // can hold themselves (`set ns.x = ns`) or chain without bound (`set h.x = namespace(p=h.x)` in
  // a loop). Emptying each one here, while the registry still holds the others, frees them with
  // neither a leak nor a deep recursion of destructors.
  ~Renderer() {
    for (auto& ns : *namespaces_) ns.mutable_dict().items.clear();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  std::string run(const Node& root) {
    std::string out;
    exec_body(root.body, out);
    return out;
  }

 private:
  using Scope = std::shared_ptr<Dict>;

  // Runs `f`, putting "chat template line N: " before an error that has no line yet.
  template <typename F>
  auto at_line(int line, F f) -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      if (e.message().rfind(kLinePrefix, 0) == 0) throw;
      TESSERA_FAIL(kLinePrefix, line, ": ", e.message());
    }
  }

  Flow exec_body(const std::vector<NodePtr>& body, std::string& out) {
    for (const auto& n : body) {
      const Flow f = exec(*n, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  // One statement, expression or loop iteration more: an error past kMaxRenderSteps.
  void step() {
    if (++steps_ > kMaxRenderSteps) {
      fail("rendering took more than " + std::to_string(kMaxRenderSteps) +
           " steps (statements, expressions and loop iterations); a chat template needs a few "
           "dozen per message");
    }
  }

  // The text rendered so far (or captured by a block) holds at most Value::kMaxStringBytes.
  static void check_size(const std::string& out, int line) {
    if (static_cast<int64_t>(out.size()) > Value::kMaxStringBytes) {
      TESSERA_FAIL(kLinePrefix, line, ": the rendered text is larger than ", Value::kMaxStringBytes,
                   " bytes");
    }
  }

  Flow exec(const Node& n, std::string& out) {
    step();
    switch (n.kind) {
      case NodeKind::kData:
        out += n.name;
        check_size(out, n.line);
        return Flow::kNormal;
      case NodeKind::kOutput:
        out += at_line(n.line, [&] { return eval(*n.kids[0]).to_str(); });
        check_size(out, n.line);
        return Flow::kNormal;
      case NodeKind::kIf:
        if (at_line(n.line, [&] { return eval(*n.kids[0]).truthy(); })) {
          return exec_body(n.body, out);
        }
        return exec_body(n.else_body, out);
      case NodeKind::kFor:
        return at_line(n.line, [&] { return exec_for(n, out); });
      case NodeKind::kSet:
        at_line(n.line, [&] { exec_set(n); });
        return Flow::kNormal;
      case NodeKind::kSetBlock: {
        std::string captured;
        exec_body(n.body, captured);
        Value v = Value::string(std::move(captured));
        if (!n.kids.empty()) v = at_line(n.line, [&] { return eval_filter(*n.kids[0], &v); });
        scopes_.back()->set(n.names[0], std::move(v));
        return Flow::kNormal;
      }
      case NodeKind::kMacro:
        define_macro(n);
        return Flow::kNormal;
      case NodeKind::kFilterBlock: {
        std::string captured;
        const Flow f = exec_body(n.body, captured);
        Value v = Value::string(std::move(captured));
        out += at_line(n.line, [&] { return eval_filter(*n.kids[0], &v).to_str(); });
        check_size(out, n.line);
        return f;
      }
      case NodeKind::kBreak:
        return Flow::kBreak;
      case NodeKind::kContinue:
        return Flow::kContinue;
      case NodeKind::kWith: {
        scopes_.push_back(std::make_shared<Dict>());
        for (size_t i = 0; i < n.names.size(); ++i) {
          Value v = at_line(n.line, [&] { return eval(*n.kids[i]); });
          scopes_.back()->set(n.names[i], std::move(v));
        }
        const Flow f = exec_body(n.body, out);
        scopes_.pop_back();
        return f;
      }
      default:
        TESSERA_FAIL(kLinePrefix, n.line, ": unexpected node");
    }
  }

  void bind(const std::vector<std::string>& targets, const Value& v, Dict& scope) {
    if (targets.size() == 1) {
      scope.set(targets[0], v);
      return;
    }
    if (!v.is_list() && !v.is_string()) {
      fail("cannot unpack non-iterable " + v.type_name() + " object");
    }
    const auto items = iterate(v);
    if (items.size() != targets.size()) {
      fail(items.size() > targets.size()
               ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
               : "not enough values to unpack (expected " + std::to_string(targets.size()) +
                     ", got " + std::to_string(items.size()) + ")");
    }
    for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], items[i]);
  }

  Flow exec_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.kids[0]);
    if (seq.is_none()) fail("'NoneType' object is not iterable");
    std::vector<Value> items = iterate(seq);
    if (!n.kw.empty()) {  // {% for x in xs if cond %}: filter before counting
      std::vector<Value> kept;
      for (const auto& it : items) {
        scopes_.push_back(std::make_shared<Dict>());
        bind(n.names, it, *scopes_.back());
        const bool keep = eval(*n.kw[0]).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(it);
      }
      items.swap(kept);
    }
    if (items.empty()) {
      scopes_.push_back(std::make_shared<Dict>());
      const Flow f = exec_body(n.else_body, out);
      scopes_.pop_back();
      return f == Flow::kBreak || f == Flow::kContinue ? Flow::kNormal : f;
    }
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      step();
      // Each iteration gets a fresh scope: a `set` inside the body does not outlive it.
      scopes_.push_back(std::make_shared<Dict>());
      bind(n.names, items[static_cast<size_t>(i)], *scopes_.back());
      Dict loop;
      loop.set("index", Value::integer(i + 1));
      loop.set("index0", Value::integer(i));
      loop.set("revindex", Value::integer(len - i));
      loop.set("revindex0", Value::integer(len - i - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i == len - 1));
      loop.set("length", Value::integer(len));
      loop.set("depth", Value::integer(1));
      loop.set("depth0", Value::integer(0));
      loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                 : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)]
                                       : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](Args& a) {
                 if (a.pos.empty()) fail("no items for cycling given");
                 return a.pos[static_cast<size_t>(i) % a.pos.size()];
               }));
      scopes_.back()->set("loop", Value::dict(std::move(loop)));
      const Flow f = exec_body(n.body, out);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void exec_set(const Node& n) {
    Value v = eval(*n.kids[0]);
    if (n.flag) {  // ns.attr = v
      const Value target = lookup(n.names[0]);
      if (!target.is_namespace()) {
        fail("cannot assign attribute on non-namespace object '" + n.names[0] + "'");
      }
      target.mutable_dict().set(n.names[1], std::move(v));
      return;
    }
    bind(n.names, v, *scopes_.back());
  }

  void define_macro(const Node& n) {
    const Node* node = &n;
    Renderer* self = this;
    scopes_.back()->set(
        n.name, Value::function(n.name, [self, node](Args& a) {
          if (self->macro_depth_ >= kMaxMacroDepth) {
            fail("maximum recursion depth exceeded in macro '" + node->name + "'");
          }
          struct Count {
            explicit Count(int& d) : d_(d) { ++d_; }
            ~Count() { --d_; }
            int& d_;
          } count(self->macro_depth_);
          // A macro sees the template's globals and its own arguments, not the caller's locals.
          auto saved = std::move(self->scopes_);
          self->scopes_ = {self->root_, std::make_shared<Dict>()};
          Dict& locals = *self->scopes_.back();
          if (a.pos.size() > node->names.size()) {
            self->scopes_ = std::move(saved);
            fail("macro '" + node->name + "' takes not more than " +
                 std::to_string(node->names.size()) + " argument(s)");
          }
          std::string out;
          try {
            for (size_t i = 0; i < node->names.size(); ++i) {
              const Value* given = arg(a, i, node->names[i].c_str());
              if (given) {
                locals.set(node->names[i], *given);
              } else if (node->kw[i]) {
                locals.set(node->names[i], self->eval(*node->kw[i]));
              } else {
                locals.set(node->names[i],
                           Value::undefined("parameter '" + node->names[i] + "' was not provided"));
              }
            }
            for (const auto& [k, v] : a.kw) {
              if (std::find(node->names.begin(), node->names.end(), k) == node->names.end()) {
                fail("macro '" + node->name + "' takes no keyword argument '" + k + "'");
              }
            }
            self->exec_body(node->body, out);
          } catch (...) {
            self->scopes_ = std::move(saved);
            throw;
          }
          self->scopes_ = std::move(saved);
          return Value::string(std::move(out));
        }));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      if (const Value* v = (*it)->find(name)) return *v;
    }
    if (name == "range") {
      return Value::function("range", [](Args& a) {
        int64_t start = 0, stop, step = 1;
        auto num = [](const Value& v) {
          if (!v.is_int() && !v.is_bool()) fail("range() arguments must be integers");
          return v.as_int();
        };
        if (a.pos.size() == 1) {
          stop = num(a.pos[0]);
        } else if (a.pos.size() == 2 || a.pos.size() == 3) {
          start = num(a.pos[0]);
          stop = num(a.pos[1]);
          if (a.pos.size() == 3) step = num(a.pos[2]);
        } else {
          fail("range expected 1 to 3 arguments");
        }
        if (step == 0) fail("range() arg 3 must not be zero");
        std::vector<Value> out;
        for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
          out.push_back(Value::integer(i));
          // As the sandbox transformers renders in (MAX_RANGE).
          if (out.size() > 100000) fail("range too big: the sandbox allows 100000 items");
          if (__builtin_add_overflow(i, step, &i)) break;  // past int64: past `stop` too
        }
        return Value::list(std::move(out));
      });
    }
    if (name == "namespace") {
      return Value::function("namespace", [made = namespaces_](Args& a) {
        Dict d;
        for (const auto& p : a.pos) {
          if (!p.is_dict()) fail("namespace() takes keyword arguments or a dict");
          for (const auto& [k, v] : p.dict().items) d.set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.set(k, v);
        made->push_back(Value::ns(std::move(d)));
        return made->back();
      });
    }
    if (name == "dict") {
      return Value::function("dict", [](Args& a) {
        Dict d;
        for (const auto& p : a.pos) {
          if (!p.is_dict()) fail("dict() takes keyword arguments or a dict");
          for (const auto& [k, v] : p.dict().items) d.set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.set(k, v);
        return Value::dict(std::move(d));
      });
    }
    if (name == "raise_exception") {
      return Value::function("raise_exception", [](Args& a) -> Value {
        fail("raise_exception: " + (a.pos.empty() ? std::string() : a.pos[0].to_str()));
      });
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  Args eval_args(const Node& n, size_t first_pos) {
    Args a;
    for (size_t i = first_pos; i < n.kids.size(); ++i) a.pos.push_back(eval(*n.kids[i]));
    for (size_t i = 0; i < n.kw.size(); ++i) a.kw.emplace_back(n.names[i], eval(*n.kw[i]));
    return a;
  }

  Value eval(const Node& n) {
    step();
    switch (n.kind) {
      case NodeKind::kConst:
        return n.value;
      case NodeKind::kName:
        return lookup(n.name);
      case NodeKind::kGetattr:
        return get_attr(eval(*n.kids[0]), n.name);
      case NodeKind::kGetitem:
        return get_item(eval(*n.kids[0]), eval(*n.kids[1]));
      case NodeKind::kSlice: {
        const Value obj = eval(*n.kids[0]);
        auto opt = [&](size_t k) { return n.kids[k] ? eval(*n.kids[k]) : Value::none(); };
        return slice(obj, opt(1), opt(2), opt(3));
      }
      case NodeKind::kCall: {
        const Value f = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        if (f.is_undefined()) undefined_error(f);
        if (!f.is_function()) fail("'" + f.type_name() + "' object is not callable");
        return f.fn()(a);
      }
      case NodeKind::kFilter:
        return eval_filter(n, nullptr);
      case NodeKind::kTest: {
        const Value v = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        const bool r = test(n.name, v, a);
        return Value::boolean(n.flag ? !r : r);
      }
      case NodeKind::kNeg:
      case NodeKind::kPos: {
        const Value v = eval(*n.kids[0]);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number())
          fail("bad operand type for unary " + std::string(n.kind == NodeKind::kNeg ? "-" : "+") +
               ": '" + v.type_name() + "'");
        if (n.kind == NodeKind::kPos) return v.is_float() ? v : Value::integer(v.as_int());
        if (v.is_float()) return Value::number(-v.as_double());
        if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow");
        return Value::integer(-v.as_int());
      }
      case NodeKind::kNot:
        return Value::boolean(!eval(*n.kids[0]).truthy());
      case NodeKind::kAnd: {
        Value l = eval(*n.kids[0]);
        return l.truthy() ? eval(*n.kids[1]) : l;
      }
      case NodeKind::kOr: {
        Value l = eval(*n.kids[0]);
        return l.truthy() ? l : eval(*n.kids[1]);
      }
      case NodeKind::kBinary:
        return binary_op(n.name, eval(*n.kids[0]), eval(*n.kids[1]));
      case NodeKind::kConcat: {
        std::string s;
        for (const auto& k : n.kids) s += eval(*k).to_str();
        return Value::string(std::move(s));
      }
      case NodeKind::kCompare: {
        Value left = eval(*n.kids[0]);
        for (size_t i = 0; i < n.ops.size(); ++i) {
          Value right = eval(*n.kids[i + 1]);
          const std::string& op = n.ops[i];
          bool r;
          if (op == "==") {
            r = equal(left, right);
          } else if (op == "!=") {
            r = !equal(left, right);
          } else if (op == "in") {
            r = contains(right, left);
          } else if (op == "notin") {
            r = !contains(right, left);
          } else {
            if (left.is_undefined() || right.is_undefined()) {
              undefined_error(left.is_undefined() ? left : right);
            }
            const int c = compare(left, right);
            r = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
          }
          if (!r) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case NodeKind::kCondExpr:
        if (eval(*n.kids[0]).truthy()) return eval(*n.kids[1]);
        if (n.kids.size() > 2) return eval(*n.kids[2]);
        return Value::undefined(
            "the inline if-expression evaluated to false and no else section "
            "was defined");
      case NodeKind::kList:
      case NodeKind::kTuple: {
        std::vector<Value> items;
        for (const auto& k : n.kids) items.push_back(eval(*k));
        return Value::list(std::move(items), n.kind == NodeKind::kTuple);
      }
      case NodeKind::kDict: {
        Dict d;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          const Value k = eval(*n.kids[i]);
          if (!k.is_string()) fail("dict literal keys must be strings here, got " + k.type_name());
          d.set(k.str(), eval(*n.kw[i]));
        }
        return Value::dict(std::move(d));
      }
      default:
        TESSERA_FAIL(kLinePrefix, n.line, ": unexpected expression");
    }
  }

  // A filter chain node; `input` replaces the innermost operand of a {% filter %} / block set.
  Value eval_filter(const Node& n, const Value* input) {
    Value v;
    if (!n.kids[0]) {
      v = *input;
    } else if (n.kids[0]->kind == NodeKind::kFilter) {
      v = eval_filter(*n.kids[0], input);
    } else {
      v = eval(*n.kids[0]);
    }
    Args a = eval_args(n, 1);
    return filter(n.name, v, a);
  }

  static constexpr int kMaxMacroDepth = 100;
  std::shared_ptr<std::vector<Value>> namespaces_ = std::make_shared<std::vector<Value>>();
  std::vector<Scope> scopes_;
  Scope root_;
  int macro_depth_ = 0;
  int64_t steps_ = 0;
};

}  // namespace

Template Template::parse(const std::string& source) {
  Template t;
  NodePtr root = parse_template(source);
  validate(*root);
  t.root_ = std::shared_ptr<const Node>(std::move(root));
  return t;
}

std::string Template::render(const Dict& vars) const {
  TESSERA_CHECK(root_ != nullptr, "chat template used before it was parsed");
  Renderer r(vars);
  return r.run(*root_);
}

}  // namespace tessera::tokenizers::jinja
