// SPDX-License-Identifier: MIT
// virtq/detail/shadow.hpp -- the checked mode: a shadow state per descriptor that verifies every
// transition. With Checked == false every member is an empty inline function on an empty type
// (stored [[no_unique_address]]), so it compiles to nothing.
#pragma once

#include <cstdint>
#include <vector>

namespace virtq::detail {

/// The life of a descriptor slot, as one side sees it.
enum class desc_state : std::uint8_t {
  free,    ///< owned by the driver, not in any chain
  avail,   ///< written by the driver into a chain, not yet published
  device,  ///< published: the device may read it / holds it
  used,    ///< returned by the device, not yet reclaimed by the driver
};

template <bool Checked>
class shadow_state {
 public:
  void resize(std::uint32_t) noexcept {}
  void reset() noexcept {}
  /// True if slot `i` was in `from`; it is then in `to`.
  constexpr bool move(std::uint32_t, desc_state, desc_state) noexcept { return true; }
  constexpr bool is(std::uint32_t, desc_state) const noexcept { return true; }
};

template <>
class shadow_state<true> {
 public:
  void resize(std::uint32_t n) { s_.assign(n, desc_state::free); }
  void reset() noexcept {
    for (auto& s : s_) s = desc_state::free;
  }
  bool move(std::uint32_t i, desc_state from, desc_state to) noexcept {
    if (i >= s_.size() || s_[i] != from) return false;
    s_[i] = to;
    return true;
  }
  bool is(std::uint32_t i, desc_state st) const noexcept { return i < s_.size() && s_[i] == st; }

 private:
  std::vector<desc_state> s_;
};

}  // namespace virtq::detail
