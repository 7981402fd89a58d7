// Shared by the libFuzzer targets: how the first input bytes choose a queue configuration, and
// a reader that never runs out (an exhausted input reads as zeros, so every prefix of an input
// is itself a valid input and the fuzzer can shrink freely).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "virtq/packed.hpp"
#include "virtq/policy.hpp"
#include "virtq/spec.hpp"
#include "virtq/split.hpp"
#include "virtq/virtqueue.hpp"

// An invariant the library promises was broken: stop the fuzzer here, with a stack.
#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) {       \
      __builtin_trap();  \
    }                    \
  } while (false)

namespace virtq_fuzz {

class reader {
 public:
  reader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}
  std::uint8_t u8() noexcept { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }
  std::uint16_t u16() noexcept {
    const auto lo = u8();
    return static_cast<std::uint16_t>(lo | (u8() << 8));
  }
  std::uint32_t u32() noexcept {
    const std::uint32_t lo = u16();
    return lo | (std::uint32_t{u16()} << 16);
  }
  /// Copies up to `out.size()` input bytes into `out` (the rest untouched); returns the count.
  std::size_t bytes(std::span<std::byte> out) noexcept {
    const std::size_t n = std::min(out.size(), size_ - pos_);
    if (n != 0) std::memcpy(out.data(), data_ + pos_, n);
    pos_ += n;
    return n;
  }
  std::size_t left() const noexcept { return size_ - pos_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

using none_policy = virtq::queue_policy<virtq::no_lock, virtq::suppress_none>;

/// The configuration the header bytes select.
struct config {
  bool packed = false;
  std::uint32_t size = 1;
  virtq::features features;
  unsigned policy = 0;  ///< 0 none, 1 flags, 2 event idx (default), 3 checked
  bool cursor = false;  ///< fuzz_device: translate through a guest_memory_cursor too
};

/// byte 0: bit 0 packed, bit 1 EVENT_IDX, bit 2 INDIRECT_DESC, bit 3 IN_ORDER, bits 4-5 policy,
/// bit 6 cursor.
/// byte 1: the queue size (split: 2^(b % 7), packed: 1 + b % 64).
inline config read_config(reader& in) noexcept {
  config c;
  const std::uint8_t b0 = in.u8();
  const std::uint8_t b1 = in.u8();
  c.packed = (b0 & 1U) != 0;
  c.policy = (b0 >> 4) & 3U;
  c.cursor = (b0 & 0x40U) != 0;
  c.size = c.packed ? 1U + b1 % 64U : 1U << (b1 % 7U);
  virtq::features f = virtq::features{}.with(virtq::feature::version_1);
  if (c.packed) f = f.with(virtq::feature::ring_packed);
  // The event-idx policies require the feature (check_features); the others take it or not.
  if ((b0 & 2U) != 0 || c.policy >= 2) f = f.with(virtq::feature::event_idx);
  if ((b0 & 4U) != 0) f = f.with(virtq::feature::indirect_desc);
  if ((b0 & 8U) != 0) f = f.with(virtq::feature::in_order);
  c.features = f;
  return c;
}

/// The byte ranges of the ring a device is allowed to write: split, the used ring (avail_event
/// included); packed, the descriptor slots and the device event area.
template <class Layout>
std::vector<std::span<std::byte>> device_areas(const virtq::ring_memory<Layout>& ring) {
  const auto& geo = ring.geometry();
  const std::span<std::byte> all = ring.bytes();
  if constexpr (Layout::is_packed) {
    return {all.subspan(geo.desc_offset, geo.desc_bytes),
            all.subspan(geo.device_event_offset, sizeof(virtq::packed::event_suppress))};
  } else {
    return {all.subspan(geo.used_offset, geo.used_bytes)};
  }
}

/// Calls `fn.template operator()<Layout, Policy>()` for the configuration's instantiation.
template <class F>
void dispatch(const config& c, F&& fn) {
  const auto with_layout = [&]<class L>() {
    switch (c.policy) {
      case 0:
        fn.template operator()<L, none_policy>();
        break;
      case 1:
        fn.template operator()<L, virtq::flags_policy>();
        break;
      case 2:
        fn.template operator()<L, virtq::default_policy>();
        break;
      default:
        fn.template operator()<L, virtq::checked_policy>();
        break;
    }
  };
  if (c.packed) {
    with_layout.template operator()<virtq::packed_layout>();
  } else {
    with_layout.template operator()<virtq::split_layout>();
  }
}

}  // namespace virtq_fuzz
