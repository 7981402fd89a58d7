// SPDX-License-Identifier: MIT
// tests/layouts.hpp -- generic test helpers: every layout x every policy, and a driver+device
// pair over one ring, so that one test body runs over every variant (style guide habit 12).
//
// To add a layout, append it to VIRTQ_LAYOUTS; every TEMPLATE_LIST_TEST_CASE over
// layout_policy_combos or all_layouts picks it up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <tuple>
#include <type_traits>
#include <vector>

#include "virtq/memory.hpp"
#include "virtq/packed.hpp"
#include "virtq/policy.hpp"
#include "virtq/spec.hpp"
#include "virtq/split.hpp"
#include "virtq/virtqueue.hpp"

#define VIRTQ_LAYOUTS virtq::split_layout, virtq::packed_layout

namespace virtq_test {

using all_layouts = std::tuple<VIRTQ_LAYOUTS>;

using none_policy = virtq::queue_policy<virtq::no_lock, virtq::suppress_none>;
using flags_policy = virtq::flags_policy;
using event_policy = virtq::default_policy;
using checked_flags_policy = virtq::queue_policy<virtq::no_lock, virtq::suppress_flags,
                                                 virtq::smp_barriers, virtq::little_endian, true>;
using checked_policy = virtq::checked_policy;
using spin_policy = virtq::queue_policy<virtq::spin_lock, virtq::suppress_event_idx>;

using all_policies = std::tuple<none_policy, flags_policy, event_policy, checked_policy>;
using suppression_policies = std::tuple<none_policy, flags_policy, event_policy>;

/// One (layout, policy) variant.
template <class L, class P>
struct combo {
  using layout = L;
  using policy = P;
};

namespace detail {
template <class L, class Ps>
struct with_policies;
template <class L, class... Ps>
struct with_policies<L, std::tuple<Ps...>> {
  using type = std::tuple<combo<L, Ps>...>;
};
template <class Ls, class Ps>
struct product;
template <class... Ls, class Ps>
struct product<std::tuple<Ls...>, Ps> {
  using type = decltype(std::tuple_cat(std::declval<typename with_policies<Ls, Ps>::type>()...));
};
}  // namespace detail

/// Every layout combined with every policy in Ps.
template <class Ps>
using combos_with = typename detail::product<all_layouts, Ps>::type;
using layout_policy_combos = combos_with<all_policies>;
using layout_suppression_combos = combos_with<suppression_policies>;

/// The features a layout needs plus the ones most tests want.
template <class Layout>
virtq::features base_features() {
  virtq::features f = virtq::features{}
                          .with(virtq::feature::version_1)
                          .with(virtq::feature::event_idx)
                          .with(virtq::feature::indirect_desc);
  if constexpr (Layout::is_packed) f = f.with(virtq::feature::ring_packed);
  return f;
}

/// The features a policy can work with: EVENT_IDX off for suppress_flags, so that the flags
/// are what the peers really use (with EVENT_IDX negotiated the flags are ignored, 2.7.10).
template <class Layout, class Policy>
virtq::features features_for() {
  virtq::features f = base_features<Layout>();
  if constexpr (std::is_same_v<typename Policy::suppression, virtq::suppress_flags>) {
    f = f.without(virtq::feature::event_idx);
  }
  return f;
}

/// A driver and a device over one ring in this process (identity guest memory).
template <class Layout, class Policy = virtq::default_policy>
struct queue_pair {
  using driver_type = typename Layout::template driver<Policy>;
  using device_type = typename Layout::template device<Policy, virtq::identity_memory>;

  queue_pair(std::uint32_t size, virtq::features f, virtq::driver_options dopts = {})
      : ring(size),
        driver(ring.view(), f, dopts),
        device(ring.view(), f, memory, virtq::device_options{dopts.initial_index}) {}
  explicit queue_pair(std::uint32_t size) : queue_pair(size, features_for<Layout, Policy>()) {}

  virtq::ring_memory<Layout> ring;
  virtq::identity_memory memory{};
  driver_type driver;
  device_type device;
};

/// Host memory for test buffers, handed out as guest addresses (identity).
class buffer_arena {
 public:
  explicit buffer_arena(std::size_t bytes) : mem_(bytes, 64) {}
  std::byte* data() const noexcept { return mem_.data(); }
  std::size_t size() const noexcept { return mem_.size(); }
  virtq::buffer at(std::size_t offset, std::uint32_t len) const noexcept {
    return {static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(mem_.data() + offset)),
            len};
  }
  std::byte* host(const virtq::buffer& b) const noexcept {
    return reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(b.addr));
  }

 private:
  virtq::aligned_buffer mem_;
};

/// The byte a device writes at `offset` of a chain carrying `token`: content checks end to end.
inline std::byte pattern(std::uint64_t token, std::uint64_t offset) noexcept {
  const std::uint64_t x = (token * 0x9E3779B97F4A7C15ULL) ^ (offset * 0xBF58476D1CE4E5B9ULL);
  return static_cast<std::byte>((x >> 56) ^ (x >> 13));
}

}  // namespace virtq_test
