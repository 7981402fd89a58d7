// SPDX-License-Identifier: MIT
// virtq/error.hpp -- every way a virtqueue operation can fail, and a small result type.
//
// Two kinds of failure are kept apart (style guide habit 9):
//  * a faulty *peer* (a hostile ring, a bad address, a length that does not add up) is reported
//    as an errc value and, on a queue, marks it broken (Linux's BAD_RING): a broken queue refuses
//    further work until reset, so nothing is lost or corrupted after the first sign of trouble;
//  * a faulty *caller* (misuse of our own API) gets errc::invalid_argument where it is cheap to
//    check, and an assertion in debug builds elsewhere.
// Construction-time configuration errors (bad queue size, features that do not fit the chosen
// policies) throw virtq::error, a std::system_error carrying the errc.
#pragma once

#include <cstdint>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace virtq {

enum class errc : std::uint8_t {
  ok = 0,
  // --- not failures: nothing to do right now -------------------------------------------------
  empty,     ///< nothing available / nothing used yet
  no_space,  ///< the ring has too few free descriptors for this chain
  // --- caller errors ---------------------------------------------------------------------------
  invalid_argument,  ///< an argument of ours that can never be right (zero-length chain, ...)
  broken,            ///< the queue was marked broken earlier; reset it first
  // --- configuration ---------------------------------------------------------------------------
  bad_queue_size,    ///< 2.7: split size is a power of 2 <= 32768; 2.8: packed 1..32768
  bad_alignment,     ///< ring area not aligned as 2.7 / 2.8 require
  feature_missing,   ///< a policy needs a feature that was not negotiated (EVENT_IDX, ...)
  feature_conflict,  ///< a negotiated feature contradicts the chosen layout or policy
  // --- guest memory (2.7.5 / 2.8.6: buffers are guest-physical address ranges) ---------------
  address_out_of_range,  ///< address not inside any guest memory region
  address_overflow,      ///< address + length wraps around 2^64
  crosses_region_end,    ///< range starts inside a region but runs past its end
  // --- device side: the driver's ring is hostile --------------------------------------------
  avail_idx_jump,           ///< 2.7.6: avail idx moved by more than the queue size
  desc_index_out_of_range,  ///< 2.7.5: head index >= queue size
  next_out_of_range,        ///< 2.7.5: next >= queue size (or >= indirect table length)
  chain_loop,               ///< 2.7.5.2: a loop in a chain (walk exceeded the number of entries)
  chain_too_long,           ///< 2.7.5.2 / 2.8.4: chain longer than the queue size
  chain_too_large,          ///< 2.7.5.2: total length of a chain over 2^32 bytes
  write_before_read,        ///< 2.7.4.2 / 2.8.4: a readable descriptor after a writable one
  indirect_bad_length,      ///< 2.7.5.3.1: table length zero, not a multiple of 16, or too large
  indirect_nested,          ///< 2.7.5.3.1: INDIRECT inside an indirect table
  indirect_with_next,       ///< 2.7.5.3.1: INDIRECT and NEXT on the same descriptor
  indirect_not_negotiated,  ///< INDIRECT flag without VIRTIO_F_INDIRECT_DESC
  indirect_bad_flags,       ///< 2.8.7: packed indirect entry with flags other than WRITE
  packed_bad_flags,         ///< 2.8.1: AVAIL/USED bits inconsistent within a chain
  packed_bad_id,            ///< 2.8.4: buffer id >= queue size or already in flight
  packed_chain_overrun,     ///< 2.8.4: chain does not end within the queue size
  // --- driver side: the device is hostile ---------------------------------------------------
  used_id_out_of_range,     ///< used id >= queue size
  used_id_not_outstanding,  ///< used id is not the head of a chain the device holds
  used_len_too_large,       ///< used len exceeds the chain's writable space (2.7.8.2)
  used_idx_jump,            ///< used idx moved by more than the number of outstanding chains
  used_unexpected,          ///< packed: a used descriptor where none can be
  // --- shadow-state checker ---------------------------------------------------------------
  state_violation,  ///< checked mode: a descriptor made an impossible transition
  // --- receive-buffer pool: caller misuse (rx_pool.hpp) -----------------------------------
  double_release,     ///< a reference to a buffer that is already back in its pool
  foreign_buffer,     ///< a buffer (or handle) of another pool
  stale_handle,       ///< a handle from an earlier loan of a buffer that was reused since
  use_after_release,  ///< debug poisoning: a free buffer was written after its release
  count_              // number of values; keep last
};

inline constexpr std::size_t errc_count = static_cast<std::size_t>(errc::count_);

/// True for the values that mean "a peer misbehaved": they break the queue.
constexpr bool is_fatal(errc e) noexcept {
  return e != errc::ok && e != errc::empty && e != errc::no_space && e != errc::invalid_argument &&
         e != errc::double_release && e != errc::foreign_buffer && e != errc::stale_handle &&
         e != errc::use_after_release;
}

constexpr const char* to_string(errc e) noexcept {
  switch (e) {
    case errc::ok:
      return "ok";
    case errc::empty:
      return "nothing available";
    case errc::no_space:
      return "not enough free descriptors";
    case errc::invalid_argument:
      return "invalid argument";
    case errc::broken:
      return "queue is broken; reset it";
    case errc::bad_queue_size:
      return "invalid queue size (split: power of 2 <= 32768; packed: 1..32768)";
    case errc::bad_alignment:
      return "ring area is misaligned";
    case errc::feature_missing:
      return "a required feature was not negotiated";
    case errc::feature_conflict:
      return "negotiated features conflict with the layout or policy";
    case errc::address_out_of_range:
      return "guest address outside every memory region";
    case errc::address_overflow:
      return "guest address + length wraps around 2^64";
    case errc::crosses_region_end:
      return "guest address range crosses the end of its region";
    case errc::avail_idx_jump:
      return "avail idx moved by more than the queue size";
    case errc::desc_index_out_of_range:
      return "descriptor index out of range";
    case errc::next_out_of_range:
      return "descriptor next out of range";
    case errc::chain_loop:
      return "descriptor chain loops";
    case errc::chain_too_long:
      return "descriptor chain longer than the queue size";
    case errc::chain_too_large:
      return "descriptor chain total length over 2^32";
    case errc::write_before_read:
      return "device-readable descriptor after a device-writable one";
    case errc::indirect_bad_length:
      return "indirect table length zero, not a multiple of 16, or too large";
    case errc::indirect_nested:
      return "indirect descriptor inside an indirect table";
    case errc::indirect_with_next:
      return "INDIRECT together with NEXT";
    case errc::indirect_not_negotiated:
      return "INDIRECT used without VIRTIO_F_INDIRECT_DESC";
    case errc::indirect_bad_flags:
      return "packed indirect entry with flags other than WRITE";
    case errc::packed_bad_flags:
      return "packed descriptor AVAIL/USED bits inconsistent";
    case errc::packed_bad_id:
      return "packed buffer id out of range or already in flight";
    case errc::packed_chain_overrun:
      return "packed chain does not end within the queue size";
    case errc::used_id_out_of_range:
      return "used id out of range";
    case errc::used_id_not_outstanding:
      return "used id is not an outstanding chain head";
    case errc::used_len_too_large:
      return "used len larger than the chain's writable space";
    case errc::used_idx_jump:
      return "used idx moved by more than the outstanding chains";
    case errc::used_unexpected:
      return "used descriptor where none can be";
    case errc::state_violation:
      return "descriptor state transition violated (checked mode)";
    case errc::double_release:
      return "buffer released twice (it is already free)";
    case errc::foreign_buffer:
      return "buffer belongs to another pool";
    case errc::stale_handle:
      return "stale handle: the buffer was returned and reused since";
    case errc::use_after_release:
      return "a free buffer was written after its release";
    case errc::count_:
      break;
  }
  return "unknown virtq error";
}

class error_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "virtq"; }
  std::string message(int v) const override { return to_string(static_cast<errc>(v)); }
};

inline const std::error_category& error_category() noexcept {
  static const error_category_impl cat;
  return cat;
}

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// Thrown only by constructors and set-up functions, never on a hot path.
class error : public std::system_error {
 public:
  explicit error(errc e, const std::string& what = {})
      : std::system_error(make_error_code(e), what), code_(e) {}
  errc value() const noexcept { return code_; }

 private:
  errc code_;
};

namespace detail {
[[noreturn]] [[gnu::noinline, gnu::cold]] inline void throw_error(errc e, const char* what) {
  throw error(e, what);
}
}  // namespace detail

/// A value or an errc. Deliberately tiny: C++20 has no std::expected.
template <class T>
class [[nodiscard]] result {
 public:
  constexpr result(T v) noexcept(std::is_nothrow_move_constructible_v<T>)  // NOLINT
      : value_(std::move(v)), err_(errc::ok) {}
  constexpr result(errc e) noexcept : value_{}, err_(e) {}  // NOLINT

  constexpr bool has_value() const noexcept { return err_ == errc::ok; }
  constexpr explicit operator bool() const noexcept { return has_value(); }
  constexpr errc error() const noexcept { return err_; }
  constexpr const T& value() const& noexcept { return value_; }
  constexpr T& value() & noexcept { return value_; }
  constexpr const T& operator*() const& noexcept { return value_; }
  constexpr const T* operator->() const noexcept { return &value_; }

 private:
  T value_;
  errc err_;
};

}  // namespace virtq

template <>
struct std::is_error_code_enum<virtq::errc> : std::true_type {};
