// SPDX-License-Identifier: MIT
// tests/test_split_common.hpp -- a split device fed by a ring the test writes by hand, as a
// hostile driver would, over one region of guest memory (so that addresses can be
// untranslatable). Shared by the batch and serve tests; each adds its own expectations.
#pragma once

#include <cstddef>
#include <cstdint>

#include "layouts.hpp"
#include "virtq/memory.hpp"
#include "virtq/spec.hpp"
#include "virtq/split.hpp"

namespace split_test {

inline constexpr std::uint64_t guest_base = 0x10000;
inline constexpr std::uint64_t guest_size = 0x10000;

struct hand {
  using LE = virtq::little_endian;

  explicit hand(virtq::features f = virtq_test::base_features<virtq::split_layout>())
      : ring(8), guest(guest_size, 64), device(ring.view(), f, mem) {
    mem.add_region(guest_base, guest_size, guest.data());
  }
  /// Descriptor `i` as one buffer (no NEXT).
  void set(std::uint32_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags) const {
    virtq::split::desc& d = ring.view().table[i];
    virtq::put<LE>(d.addr, addr);
    virtq::put<LE>(d.len, len);
    virtq::put<LE>(d.flags, flags);
    virtq::put<LE>(d.next, 0);
  }
  /// The next avail entry names `head` (published by publish()).
  void offer(std::uint16_t head) {
    virtq::put<LE>(ring.view().avail.ring(next_avail & 7U), head);
    ++next_avail;
  }
  void publish() { virtq::store_release<LE>(ring.view().avail.idx(), next_avail); }

  virtq::ring_memory<virtq::split_layout> ring;
  virtq::aligned_buffer guest;
  virtq::guest_memory mem;
  virtq::split_device<virtq::default_policy, virtq::guest_memory> device;
  std::uint16_t next_avail = 0;
};

}  // namespace split_test
