// SPDX-License-Identifier: MIT
// tests/test_packed_common.hpp -- helpers shared by the packed-ring tests: a driver+device pair
// (layouts.hpp's queue_pair), hand-written descriptors through the spec.hpp accessors, and a
// reference model of where a ring position is after `n` slots (computed with division, which
// the implementation never uses: an independent oracle).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "layouts.hpp"
#include "virtq/packed.hpp"

namespace packed_test {

using virtq::packed_layout;
using le = virtq::little_endian;

/// Features of a packed pair for policy P (EVENT_IDX only with suppress_event_idx... and with
/// suppress_none, where it is harmless).
template <class P = virtq::default_policy>
virtq::features packed_features() {
  return virtq_test::features_for<packed_layout, P>();
}

template <class P = virtq::default_policy>
using pair = virtq_test::queue_pair<packed_layout, P>;

/// Linear ring position -> (offset, wrap counter) as the spec defines them (2.8.1): the counter
/// starts at 1 and flips every lap.
struct position {
  std::uint16_t off;
  bool wrap;
};
inline position at_linear(std::uint64_t lin, std::uint32_t size) {
  return {static_cast<std::uint16_t>(lin % size), (lin / size) % 2 == 0};
}

/// Writes one descriptor by hand, flags last with a release store (what an honest driver does).
inline void put_desc(const virtq::packed::ring_view& v, std::uint32_t slot, std::uint64_t addr,
                     std::uint32_t len, std::uint16_t id, std::uint16_t flags) {
  virtq::packed::desc& d = v.ring[slot];
  virtq::put<le>(d.addr, addr);
  virtq::put<le>(d.len, len);
  virtq::put<le>(d.id, id);
  virtq::store_release<le>(d.flags, flags);
}

/// Writes a used descriptor by hand (what a device does), flags last.
/// A used descriptor as a device writes it: WRITE set when it wrote something (2.8.3), unless
/// `write_flag` says otherwise (a device that leaves len reserved, 2.8.4).
inline void put_used(const virtq::packed::ring_view& v, std::uint32_t slot, std::uint16_t id,
                     std::uint32_t len, bool wrap, std::optional<bool> write_flag = {}) {
  virtq::packed::desc& d = v.ring[slot];
  virtq::put<le>(d.id, id);
  virtq::put<le>(d.len, len);
  const bool w = write_flag.value_or(len != 0);
  virtq::store_release<le>(d.flags,
                           static_cast<std::uint16_t>(virtq::packed::used_bits(wrap) |
                                                      (w ? virtq::packed::desc_f_write : 0U)));
}

inline std::uint16_t flags_at(const virtq::packed::ring_view& v, std::uint32_t slot) {
  return virtq::load_relaxed<le>(v.ring[slot].flags);
}

}  // namespace packed_test
