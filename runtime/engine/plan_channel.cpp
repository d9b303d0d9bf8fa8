#include "runtime/engine/plan_channel.h"

#include <cstring>

#include "common/error.h"

namespace tessera::engine {

PlanChannel::PlanChannel(sharding::Communicator* comm)
    : comm_(comm != nullptr && comm->size() > 1 ? comm : nullptr) {
  header_ = torch::zeros({2}, torch::kLong);
}

void PlanChannel::send(Kind kind, std::span<const uint8_t> bytes) {
  if (comm_ == nullptr) return;
  TESSERA_CHECK(comm_->rank() == 0, "only rank 0 of the group sends plans, not rank ",
                comm_->rank());
  auto* h = header_.data_ptr<int64_t>();
  h[0] = static_cast<int64_t>(kind);
  h[1] = static_cast<int64_t>(bytes.size());
  comm_->broadcast(header_, 0);
  if (!bytes.empty()) {
    auto payload = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kByte);
    std::memcpy(payload.data_ptr<uint8_t>(), bytes.data(), bytes.size());
    comm_->broadcast(payload, 0);
  }
  ++messages_;
  bytes_ += static_cast<int64_t>(bytes.size());
}

void PlanChannel::send_error(const std::string& message) {
  send(Kind::kError,
       std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(message.data()), message.size()));
}

void PlanChannel::ping() {
  if (comm_ == nullptr) return;
  send(Kind::kPing);
  comm_->barrier();
}

PlanChannel::Message PlanChannel::receive() {
  TESSERA_CHECK(comm_ != nullptr, "PlanChannel::receive needs a group of more than one rank");
  comm_->broadcast(header_, 0);
  const auto* h = header_.data_ptr<int64_t>();
  Message m;
  TESSERA_CHECK(h[0] >= 1 && h[0] <= 4 && h[1] >= 0 && h[1] < (int64_t{1} << 40),
                "plan channel: bad header [", h[0], ", ", h[1], "]");
  m.kind = static_cast<Kind>(h[0]);
  if (h[1] > 0) {
    auto payload = torch::empty({h[1]}, torch::kByte);
    comm_->broadcast(payload, 0);
    m.bytes.assign(payload.data_ptr<uint8_t>(), payload.data_ptr<uint8_t>() + h[1]);
  }
  ++messages_;
  bytes_ += h[1];
  if (m.kind == Kind::kPing) comm_->barrier();
  return m;
}

}  // namespace tessera::engine
