#include "runtime/serving/router_policy.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <tuple>

namespace tessera::serving {

struct PrefixTree::Node {
  std::string edge;  // the text from the parent to here
  Node* parent = nullptr;
  std::map<char, std::unique_ptr<Node>> children;
  std::map<int, uint64_t> workers;  // worker -> last use
};

PrefixTree::PrefixTree() : root_(std::make_unique<Node>()) {}
PrefixTree::~PrefixTree() = default;

namespace {
size_t common_prefix(std::string_view a, std::string_view b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}
}  // namespace

void PrefixTree::insert(std::string_view text, int worker) {
  const uint64_t now = ++clock_;
  Node* node = root_.get();
  node->workers[worker] = now;
  while (!text.empty()) {
    auto it = node->children.find(text[0]);
    if (it == node->children.end()) {
      auto child = std::make_unique<Node>();
      child->edge = std::string(text);
      child->parent = node;
      child->workers[worker] = now;
      chars_[worker] += text.size();
      node->children[text[0]] = std::move(child);
      return;
    }
    Node* child = it->second.get();
    const size_t l = common_prefix(child->edge, text);
    if (l < child->edge.size()) {
      // Split the edge: a middle node holds the shared part, with every worker the child had.
      auto mid = std::make_unique<Node>();
      mid->edge = child->edge.substr(0, l);
      mid->parent = node;
      mid->workers = child->workers;
      std::unique_ptr<Node> old = std::move(it->second);
      old->edge = old->edge.substr(l);
      old->parent = mid.get();
      mid->children[old->edge[0]] = std::move(old);
      it->second = std::move(mid);
      child = it->second.get();  // a worker on both halves still counts each char once
    }
    if (!child->workers.count(worker)) chars_[worker] += child->edge.size();
    child->workers[worker] = now;
    node = child;
    text.remove_prefix(l);
  }
}

PrefixTree::Match PrefixTree::longest_match(std::string_view text,
                                            const std::vector<int>& allowed) const {
  Match best;
  uint64_t best_time = 0;
  const Node* node = root_.get();
  size_t depth = 0;
  auto consider = [&](const Node* n, size_t chars) {
    for (int w : allowed) {
      auto it = n->workers.find(w);
      if (it == n->workers.end()) continue;
      if (chars > best.chars || (chars == best.chars && it->second > best_time)) {
        best = {chars, w};
        best_time = it->second;
      }
    }
  };
  consider(node, 0);
  while (depth < text.size()) {
    auto it = node->children.find(text[depth]);
    if (it == node->children.end()) break;
    const Node* child = it->second.get();
    const size_t l = common_prefix(child->edge, text.substr(depth));
    consider(child, depth + l);
    if (l < child->edge.size()) break;
    depth += l;
    node = child;
  }
  if (best.chars == 0) best.worker = -1;
  return best;
}

void PrefixTree::remove_worker(int worker) {
  std::function<void(Node*)> walk = [&](Node* n) {
    n->workers.erase(worker);
    for (auto it = n->children.begin(); it != n->children.end();) {
      walk(it->second.get());
      if (it->second->workers.empty() && it->second->children.empty()) {
        it = n->children.erase(it);
      } else {
        ++it;
      }
    }
  };
  walk(root_.get());
  chars_.erase(worker);
}

size_t PrefixTree::worker_chars(int worker) const {
  auto it = chars_.find(worker);
  return it == chars_.end() ? 0 : it->second;
}

void PrefixTree::evict(int worker, size_t max_chars) {
  if (worker_chars(worker) <= max_chars) return;
  // The worker's leaves (nodes of it with no child of it), oldest first.
  using Item = std::pair<uint64_t, Node*>;
  std::priority_queue<Item, std::vector<Item>, std::greater<>> leaves;
  auto is_leaf = [&](const Node* n) {
    if (n == root_.get() || !n->workers.count(worker)) return false;
    for (const auto& [c, ch] : n->children) {
      if (ch->workers.count(worker)) return false;
    }
    return true;
  };
  std::function<void(Node*)> collect = [&](Node* n) {
    if (is_leaf(n)) leaves.push({n->workers[worker], n});
    for (auto& [c, ch] : n->children) collect(ch.get());
  };
  collect(root_.get());
  while (chars_[worker] > max_chars && !leaves.empty()) {
    Node* n = leaves.top().second;
    leaves.pop();
    if (!n->workers.count(worker)) continue;
    n->workers.erase(worker);
    chars_[worker] -= n->edge.size();
    Node* parent = n->parent;
    if (n->workers.empty() && n->children.empty()) parent->children.erase(n->edge[0]);
    if (is_leaf(parent)) leaves.push({parent->workers[worker], parent});
  }
}

size_t PrefixTree::nodes() const {
  std::function<size_t(const Node*)> count = [&](const Node* n) {
    size_t c = 1;
    for (const auto& [k, ch] : n->children) c += count(ch.get());
    return c;
  };
  return count(root_.get());
}

CacheAwarePolicy::CacheAwarePolicy(RouterPolicyConfig config) : config_(config) {}

CacheAwarePolicy::Choice CacheAwarePolicy::select(std::string_view text,
                                                  const std::vector<WorkerLoad>& candidates) {
  Choice c;
  if (candidates.empty()) return c;
  auto least = std::min_element(candidates.begin(), candidates.end(),
                                [](const WorkerLoad& a, const WorkerLoad& b) {
                                  return a.load < b.load || (a.load == b.load && a.id < b.id);
                                });
  const int64_t min_load = least->load;
  const int64_t max_load =
      std::max_element(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
        return a.load < b.load;
      })->load;
  const bool imbalanced =
      max_load - min_load > config_.balance_abs_threshold &&
      static_cast<double>(max_load) > config_.balance_rel_threshold * static_cast<double>(min_load);
  std::lock_guard lock(mu_);
  c.worker = least->id;
  if (!imbalanced && !text.empty()) {
    std::vector<int> ids;
    for (const auto& w : candidates) ids.push_back(w.id);
    const auto m = tree_.longest_match(text, ids);
    c.match_rate = static_cast<double>(m.chars) / static_cast<double>(text.size());
    if (m.worker >= 0 && c.match_rate > config_.cache_threshold) {
      c.worker = m.worker;
      c.by_cache = true;
    } else {
      // No worker holds enough of it: the one with the smallest tree (the most room to cache),
      // then the least loaded.
      auto key = [&](const WorkerLoad& w) {
        return std::tuple(tree_.worker_chars(w.id), w.load, w.id);
      };
      c.worker =
          std::min_element(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
            return key(a) < key(b);
          })->id;
    }
  }
  if (!text.empty()) {
    tree_.insert(text, c.worker);
    tree_.evict(c.worker, config_.max_chars_per_worker);
  }
  return c;
}

void CacheAwarePolicy::remove_worker(int worker) {
  std::lock_guard lock(mu_);
  tree_.remove_worker(worker);
}

size_t CacheAwarePolicy::worker_chars(int worker) const {
  std::lock_guard lock(mu_);
  return tree_.worker_chars(worker);
}

}  // namespace tessera::serving
