// SPDX-License-Identifier: MIT
// virtq/spec.hpp -- the VIRTIO 1.2/1.3 wire layout of virtqueues.
//
// Everything here is a fact of the specification ("Basic Facilities of a Virtio Device"):
// structure layouts (2.7 split, 2.8 packed), flag and feature bits (6 Reserved Feature Bits),
// the event-index test (2.7.10 / 2.8.10), notification data (4.1.5.2 etc.), and ring geometry.
//
// Wire fields are wire<T>: the raw value is private, so no code can load or store one without
// going through the endian-aware accessors below (get/put for fields no other party touches at
// the same time; load_acquire/store_release/load_relaxed/store_relaxed for fields the other side
// reads or writes concurrently: indices, flags, event fields). Modern devices
// (VIRTIO_F_VERSION_1) are little-endian on the wire (1.4 "Structure Specifications");
// legacy devices use guest-native order, which a policy selects at compile time.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "virtq/error.hpp"

namespace virtq {

// ---------------------------------------------------------------------------------------------
// Byte order
// ---------------------------------------------------------------------------------------------

/// Byte-order policies. A virtqueue is told at compile time which order its ring uses.
struct little_endian {
  static constexpr std::endian order = std::endian::little;
};
struct big_endian {
  static constexpr std::endian order = std::endian::big;
};
/// Legacy (pre-VERSION_1) devices: the guest's native order. In-process that is the host's.
using native_endian =
    std::conditional_t<std::endian::native == std::endian::little, little_endian, big_endian>;

template <class E>
concept byte_order = requires {
  E::order;
}
&&(E::order == std::endian::little || E::order == std::endian::big);

namespace detail {
template <class T>
constexpr T byteswap(T v) noexcept {
  if constexpr (sizeof(T) == 1) {
    return v;
  } else if constexpr (sizeof(T) == 2) {
    return static_cast<T>(__builtin_bswap16(v));
  } else if constexpr (sizeof(T) == 4) {
    return static_cast<T>(__builtin_bswap32(v));
  } else {
    static_assert(sizeof(T) == 8);
    return static_cast<T>(__builtin_bswap64(v));
  }
}
template <class E, class T>
constexpr T convert(T v) noexcept {  // wire <-> host; an involution
  if constexpr (E::order == std::endian::native) {
    return v;
  } else {
    return byteswap(v);
  }
}
struct wire_access;
}  // namespace detail

/// A field of a structure shared with the other side. Only the accessors can touch it.
template <class T>
class wire {
  static_assert(std::is_unsigned_v<T>);

 public:
  using value_type = T;

 private:
  friend struct detail::wire_access;
  T raw_;
};

namespace detail {
struct wire_access {
  template <class T>
  static constexpr T& raw(wire<T>& w) noexcept {
    return w.raw_;
  }
  template <class T>
  static constexpr const T& raw(const wire<T>& w) noexcept {
    return w.raw_;
  }
};
}  // namespace detail

/// Plain read of a field that no other party writes concurrently (e.g. a descriptor the device
/// reads after it acquired the avail index that published it).
template <byte_order E, class T>
constexpr T get(const wire<T>& f) noexcept {
  return detail::convert<E>(detail::wire_access::raw(f));
}
/// Plain write of a field that no other party reads concurrently.
template <byte_order E, class T>
constexpr void put(wire<T>& f, std::type_identity_t<T> v) noexcept {
  detail::wire_access::raw(f) = detail::convert<E>(v);
}

// Atomic accessors for fields that both sides touch at the same time. A plain access there
// would be a data race in the C++ model (and a ThreadSanitizer report), even where the hardware
// makes aligned 16-bit accesses single-copy atomic. On x86 and arm64 these compile to the same
// plain loads/stores (plus the ordering the memory_order asks for).
template <byte_order E, class T>
inline T load_acquire(const wire<T>& f) noexcept {
  auto& raw = const_cast<T&>(detail::wire_access::raw(f));  // atomic_ref<const T> is C++26
  return detail::convert<E>(std::atomic_ref<T>(raw).load(std::memory_order_acquire));
}
template <byte_order E, class T>
inline T load_relaxed(const wire<T>& f) noexcept {
  auto& raw = const_cast<T&>(detail::wire_access::raw(f));
  return detail::convert<E>(std::atomic_ref<T>(raw).load(std::memory_order_relaxed));
}
template <byte_order E, class T>
inline void store_release(wire<T>& f, std::type_identity_t<T> v) noexcept {
  std::atomic_ref<T>(detail::wire_access::raw(f))
      .store(detail::convert<E>(v), std::memory_order_release);
}
template <byte_order E, class T>
inline void store_relaxed(wire<T>& f, std::type_identity_t<T> v) noexcept {
  std::atomic_ref<T>(detail::wire_access::raw(f))
      .store(detail::convert<E>(v), std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// Feature bits (6 "Reserved Feature Bits") and the negotiated set
// ---------------------------------------------------------------------------------------------
namespace feature {
inline constexpr unsigned any_layout = 27;         // legacy: no framing assumptions
inline constexpr unsigned indirect_desc = 28;      // VIRTIO_F_INDIRECT_DESC (2.7.5.3 / 2.8.7)
inline constexpr unsigned event_idx = 29;          // VIRTIO_F_EVENT_IDX (2.7.7, 2.7.10, 2.8.10)
inline constexpr unsigned version_1 = 32;          // VIRTIO_F_VERSION_1: little-endian wire
inline constexpr unsigned access_platform = 33;    // VIRTIO_F_ACCESS_PLATFORM (IOMMU)
inline constexpr unsigned ring_packed = 34;        // VIRTIO_F_RING_PACKED (2.8)
inline constexpr unsigned in_order = 35;           // VIRTIO_F_IN_ORDER (2.7.9 / 2.8.11)
inline constexpr unsigned order_platform = 36;     // VIRTIO_F_ORDER_PLATFORM: platform barriers
inline constexpr unsigned sr_iov = 37;             // VIRTIO_F_SR_IOV
inline constexpr unsigned notification_data = 38;  // VIRTIO_F_NOTIFICATION_DATA
inline constexpr unsigned notif_config_data = 39;  // VIRTIO_F_NOTIF_CONFIG_DATA
inline constexpr unsigned ring_reset = 40;         // VIRTIO_F_RING_RESET (queue reset)
}  // namespace feature

/// The feature set both sides agreed on (negotiation itself belongs to the transport).
class features {
 public:
  constexpr features() noexcept = default;
  constexpr explicit features(std::uint64_t bits) noexcept : bits_(bits) {}
  constexpr bool has(unsigned bit) const noexcept { return bit < 64 && ((bits_ >> bit) & 1U); }
  /// Feature bits are 0..63; a larger bit number is ignored rather than shifted out of range.
  constexpr features with(unsigned bit) const noexcept {
    return bit < 64 ? features(bits_ | (std::uint64_t{1} << bit)) : *this;
  }
  constexpr features without(unsigned bit) const noexcept {
    return bit < 64 ? features(bits_ & ~(std::uint64_t{1} << bit)) : *this;
  }
  constexpr std::uint64_t bits() const noexcept { return bits_; }
  friend constexpr bool operator==(features, features) noexcept = default;

 private:
  std::uint64_t bits_ = 0;
};

/// The maximum Queue Size of either layout (2.7: split power of 2 <= 32768; 2.8: packed <= 2^15,
/// because the event offset has 15 bits).
inline constexpr std::uint32_t max_queue_size = 32768;

// ---------------------------------------------------------------------------------------------
// Split virtqueue (2.7)
// ---------------------------------------------------------------------------------------------
namespace split {

inline constexpr std::uint16_t desc_f_next = 1;           // VIRTQ_DESC_F_NEXT
inline constexpr std::uint16_t desc_f_write = 2;          // VIRTQ_DESC_F_WRITE: device-writable
inline constexpr std::uint16_t desc_f_indirect = 4;       // VIRTQ_DESC_F_INDIRECT
inline constexpr std::uint16_t avail_f_no_interrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr std::uint16_t used_f_no_notify = 1;      // VIRTQ_USED_F_NO_NOTIFY

/// 2.7.5 The Virtqueue Descriptor Table: 16 bytes, 16-byte aligned table.
struct desc {
  wire<std::uint64_t> addr;
  wire<std::uint32_t> len;
  wire<std::uint16_t> flags;
  wire<std::uint16_t> next;
};
static_assert(sizeof(desc) == 16 && alignof(desc) == alignof(std::uint64_t));
static_assert(offsetof(desc, addr) == 0 && offsetof(desc, len) == 8);
static_assert(offsetof(desc, flags) == 12 && offsetof(desc, next) == 14);

/// 2.7.6 The Virtqueue Available Ring: flags, idx, ring[size], used_event. 2-byte aligned.
/// Its length depends on the queue size, so it is a view over raw memory, not a C++ struct.
struct avail_header {
  wire<std::uint16_t> flags;
  wire<std::uint16_t> idx;
};
static_assert(sizeof(avail_header) == 4 && alignof(avail_header) == 2);
static_assert(offsetof(avail_header, flags) == 0 && offsetof(avail_header, idx) == 2);

/// 2.7.8 The Virtqueue Used Ring: element {id, len}.
struct used_elem {
  wire<std::uint32_t> id;
  wire<std::uint32_t> len;
};
static_assert(sizeof(used_elem) == 8 && alignof(used_elem) == 4);
static_assert(offsetof(used_elem, id) == 0 && offsetof(used_elem, len) == 4);

/// Used ring header: flags, idx, then ring[size] of used_elem, then avail_event. 4-byte aligned.
struct used_header {
  wire<std::uint16_t> flags;
  wire<std::uint16_t> idx;
};
static_assert(sizeof(used_header) == 4);
static_assert(offsetof(used_header, flags) == 0 && offsetof(used_header, idx) == 2);

inline constexpr std::size_t desc_align = 16;  // 2.7 table "Virtqueue Part Alignment"
inline constexpr std::size_t avail_align = 2;
inline constexpr std::size_t used_align = 4;

constexpr std::size_t desc_table_bytes(std::uint32_t n) noexcept {
  return 16U * std::size_t{n};
}
/// flags + idx + ring[n] + used_event (the last only used with EVENT_IDX, but always laid out).
constexpr std::size_t avail_bytes(std::uint32_t n) noexcept {
  return 6U + 2U * std::size_t{n};
}
/// flags + idx + ring[n] + avail_event.
constexpr std::size_t used_bytes(std::uint32_t n) noexcept {
  return 6U + 8U * std::size_t{n};
}

/// View of the available ring in memory.
struct avail_ring {
  avail_header* hdr;
  std::uint32_t size;
  wire<std::uint16_t>& flags() const noexcept { return hdr->flags; }
  wire<std::uint16_t>& idx() const noexcept { return hdr->idx; }
  wire<std::uint16_t>& ring(std::uint32_t i) const noexcept {
    return reinterpret_cast<wire<std::uint16_t>*>(hdr + 1)[i];
  }
  /// 2.7.7: used_event sits after ring[size]; the device reads it with EVENT_IDX.
  wire<std::uint16_t>& used_event() const noexcept { return ring(size); }
};

/// View of the used ring in memory.
struct used_ring {
  used_header* hdr;
  std::uint32_t size;
  wire<std::uint16_t>& flags() const noexcept { return hdr->flags; }
  wire<std::uint16_t>& idx() const noexcept { return hdr->idx; }
  used_elem& ring(std::uint32_t i) const noexcept {
    return reinterpret_cast<used_elem*>(hdr + 1)[i];
  }
  /// 2.7.7: avail_event sits after ring[size]; the driver reads it with EVENT_IDX.
  wire<std::uint16_t>& avail_event() const noexcept {
    return *reinterpret_cast<wire<std::uint16_t>*>(&ring(size));
  }
};

/// The three areas of one split ring in this process's memory. A driver makes it from memory it
/// allocated; a device from the ring addresses the driver gave, after translating them.
struct ring_view {
  desc* table = nullptr;
  avail_ring avail{};
  used_ring used{};
  std::uint32_t size = 0;

  /// Checks the queue size (power of 2 <= 32768) and each area's alignment (2.7 table
  /// "Virtqueue Part Alignment": 16, 2, 4).
  static result<ring_view> make(void* table, void* avail, void* used, std::uint32_t size) noexcept {
    if (size == 0 || size > max_queue_size || (size & (size - 1)) != 0) return errc::bad_queue_size;
    const auto a = [](void* p, std::size_t al) {
      return p != nullptr && reinterpret_cast<std::uintptr_t>(p) % al == 0;
    };
    if (!a(table, desc_align) || !a(avail, avail_align) || !a(used, used_align)) {
      return errc::bad_alignment;
    }
    return ring_view{static_cast<desc*>(table), avail_ring{static_cast<avail_header*>(avail), size},
                     used_ring{static_cast<used_header*>(used), size}, size};
  }
};

}  // namespace split

// ---------------------------------------------------------------------------------------------
// Packed virtqueue (2.8)
// ---------------------------------------------------------------------------------------------
namespace packed {

inline constexpr std::uint16_t desc_f_next = 1;
inline constexpr std::uint16_t desc_f_write = 2;
inline constexpr std::uint16_t desc_f_indirect = 4;
inline constexpr std::uint16_t desc_f_avail = 1U << 7;  // VIRTQ_DESC_F_AVAIL
inline constexpr std::uint16_t desc_f_used = 1U << 15;  // VIRTQ_DESC_F_USED

// 2.8.14 Event Suppression Structure Format: flags values (their use: 2.8.10).
inline constexpr std::uint16_t event_flags_enable = 0;   // RING_EVENT_FLAGS_ENABLE
inline constexpr std::uint16_t event_flags_disable = 1;  // RING_EVENT_FLAGS_DISABLE
inline constexpr std::uint16_t event_flags_desc = 2;     // RING_EVENT_FLAGS_DESC (EVENT_IDX only)

/// 2.8.13 Packed virtqueue descriptor: 16 bytes; the ring is 16-byte aligned.
struct desc {
  wire<std::uint64_t> addr;
  wire<std::uint32_t> len;
  wire<std::uint16_t> id;
  wire<std::uint16_t> flags;
};
static_assert(sizeof(desc) == 16 && alignof(desc) == alignof(std::uint64_t));
static_assert(offsetof(desc, addr) == 0 && offsetof(desc, len) == 8);
static_assert(offsetof(desc, id) == 12 && offsetof(desc, flags) == 14);

/// 2.8.14: the driver and device event suppression areas {off_wrap, flags}, 4-byte aligned.
struct event_suppress {
  wire<std::uint16_t> off_wrap;  // desc_event_off : 15 | desc_event_wrap : 1
  wire<std::uint16_t> flags;
};
static_assert(sizeof(event_suppress) == 4);
static_assert(offsetof(event_suppress, off_wrap) == 0 && offsetof(event_suppress, flags) == 2);

inline constexpr std::size_t desc_align = 16;
inline constexpr std::size_t event_align = 4;

constexpr std::uint16_t make_off_wrap(std::uint16_t off, bool wrap) noexcept {
  return static_cast<std::uint16_t>((off & 0x7FFFU) | (wrap ? 0x8000U : 0U));
}
constexpr std::uint16_t off_of(std::uint16_t off_wrap) noexcept {
  return static_cast<std::uint16_t>(off_wrap & 0x7FFFU);
}
constexpr bool wrap_of(std::uint16_t off_wrap) noexcept {
  return (off_wrap & 0x8000U) != 0;
}

/// 2.8.1: a descriptor is available when AVAIL == wrap counter and USED != wrap counter; used
/// when AVAIL == USED == wrap counter (of the reader).
constexpr bool is_avail(std::uint16_t flags, bool wrap) noexcept {
  return ((flags & desc_f_avail) != 0) == wrap && ((flags & desc_f_used) != 0) != wrap;
}
constexpr bool is_used(std::uint16_t flags, bool wrap) noexcept {
  return ((flags & desc_f_avail) != 0) == wrap && ((flags & desc_f_used) != 0) == wrap;
}
/// The AVAIL/USED bits a driver writes to make a descriptor available under wrap counter `wrap`.
constexpr std::uint16_t avail_bits(bool wrap) noexcept {
  return wrap ? desc_f_avail : desc_f_used;
}
/// The AVAIL/USED bits a device writes to mark a descriptor used under wrap counter `wrap`.
constexpr std::uint16_t used_bits(bool wrap) noexcept {
  return wrap ? static_cast<std::uint16_t>(desc_f_avail | desc_f_used) : std::uint16_t{0};
}

/// The descriptor ring and the two event suppression areas of one packed ring.
struct ring_view {
  desc* ring = nullptr;
  event_suppress* driver_event = nullptr;  ///< written by the driver, read by the device
  event_suppress* device_event = nullptr;  ///< written by the device, read by the driver
  std::uint32_t size = 0;

  /// Checks the queue size (1..32768) and alignments (2.8: ring 16, event areas 4).
  static result<ring_view> make(void* ring, void* driver_event, void* device_event,
                                std::uint32_t size) noexcept {
    if (size == 0 || size > max_queue_size) return errc::bad_queue_size;
    const auto a = [](void* p, std::size_t al) {
      return p != nullptr && reinterpret_cast<std::uintptr_t>(p) % al == 0;
    };
    if (!a(ring, desc_align) || !a(driver_event, event_align) || !a(device_event, event_align)) {
      return errc::bad_alignment;
    }
    return ring_view{static_cast<desc*>(ring), static_cast<event_suppress*>(driver_event),
                     static_cast<event_suppress*>(device_event), size};
  }
};

}  // namespace packed

// ---------------------------------------------------------------------------------------------
// Event index (2.7.10 split, 2.8.10 packed)
// ---------------------------------------------------------------------------------------------

/// True if moving an index from `old_idx` to `new_idx` passed `event_idx`, i.e. the other side
/// asked to be told once the index went past `event_idx`. All arithmetic is modulo 2^16.
constexpr bool need_event(std::uint16_t event_idx, std::uint16_t new_idx,
                          std::uint16_t old_idx) noexcept {
  return static_cast<std::uint16_t>(new_idx - event_idx - 1) <
         static_cast<std::uint16_t>(new_idx - old_idx);
}

// Compile-time proof over a small domain (mod 8 arithmetic embedded in u16): for every old and
// step 0..7, need_event fires iff event lies in [old, old+step) (modulo 2^16).
namespace detail {
constexpr bool need_event_small_domain_ok() {
  for (unsigned old = 65530; old < 65530 + 12; ++old) {
    for (unsigned step = 0; step < 8; ++step) {
      for (unsigned ev = old - 4; ev < old + 12; ++ev) {
        const auto o = static_cast<std::uint16_t>(old);
        const auto n = static_cast<std::uint16_t>(old + step);
        const auto e = static_cast<std::uint16_t>(ev);
        const bool expect = ev >= old && ev < old + step;
        if (need_event(e, n, o) != expect) return false;
      }
    }
  }
  return true;
}
static_assert(need_event_small_domain_ok());
}  // namespace detail

/// 2.8.10 for the packed ring: the other side's off_wrap names a ring offset and the wrap counter
/// it is valid for. The index moved from (new_off - added) to new_off, new_off being valid for
/// wrap counter `new_wrap`. When off_wrap's wrap bit differs from new_wrap, the event offset
/// belongs to the previous lap, so the queue size is taken off before the need_event test.
constexpr bool packed_need_event(std::uint16_t off_wrap, std::uint16_t new_off, bool new_wrap,
                                 std::uint32_t added, std::uint32_t queue_size) noexcept {
  // Up to one whole lap (added == queue_size) the 16-bit test below is exact: an event in the
  // current lap ahead of new_off is not reached, one left behind from an earlier lap is stale.
  // Beyond a lap, offset and wrap bit no longer say which lap the event belongs to: notify.
  if (added > queue_size) return true;
  auto event = packed::off_of(off_wrap);
  if (packed::wrap_of(off_wrap) != new_wrap) event = static_cast<std::uint16_t>(event - queue_size);
  const auto old_off = static_cast<std::uint16_t>(new_off - added);
  return need_event(event, new_off, old_off);
}

// ---------------------------------------------------------------------------------------------
// Notification data (VIRTIO_F_NOTIFICATION_DATA; e.g. 4.1.5.2 for PCI)
// ---------------------------------------------------------------------------------------------

/// What a driver writes to the notify address: vqn | next << 16. For split rings `next` is the
/// 16-bit avail idx (next_off with the wrap bit folded in); for packed rings it is
/// next_off (15 bits) | next_wrap << 15.
struct notification {
  std::uint16_t vqn;
  std::uint16_t next_off;  ///< split: avail idx (all 16 bits); packed: offset (15 bits)
  bool next_wrap;          ///< packed only; split: bit 15 of the avail idx
};

constexpr std::uint32_t encode_notification(const notification& n) noexcept {
  const std::uint32_t next = (n.next_off & 0x7FFFU) | (n.next_wrap ? 0x8000U : 0U);
  return n.vqn | (next << 16);
}
constexpr std::uint32_t encode_split_notification(std::uint16_t vqn,
                                                  std::uint16_t avail_idx) noexcept {
  return vqn | (std::uint32_t{avail_idx} << 16);
}
constexpr notification decode_notification(std::uint32_t v) noexcept {
  return {static_cast<std::uint16_t>(v & 0xFFFFU), static_cast<std::uint16_t>((v >> 16) & 0x7FFFU),
          ((v >> 31) & 1U) != 0};
}
/// Split rings: the full 16-bit avail idx of a notification value.
constexpr std::uint16_t split_notification_idx(std::uint32_t v) noexcept {
  return static_cast<std::uint16_t>(v >> 16);
}
static_assert(decode_notification(encode_notification({3, 0x1234, true})).next_off == 0x1234);
static_assert(decode_notification(encode_notification({3, 0x1234, true})).next_wrap);
static_assert(split_notification_idx(encode_split_notification(1, 0xBEEF)) == 0xBEEF);

// ---------------------------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------------------------

constexpr bool valid_split_size(std::uint32_t n) noexcept {
  return n != 0 && n <= max_queue_size && std::has_single_bit(n);
}
constexpr bool valid_packed_size(std::uint32_t n) noexcept {
  return n >= 1 && n <= max_queue_size;
}

constexpr std::size_t align_up(std::size_t v, std::size_t a) noexcept {
  return (v + a - 1) & ~(a - 1);
}

/// Where each area of a split ring lies when the three are laid out in one block (the legacy
/// layout 2.7.2, which modern drivers may also use): descriptor table at 0, available ring right
/// after it, used ring at the next multiple of `align`. `total` equals Linux's vring_size().
struct split_geometry {
  std::uint32_t size = 0;
  std::size_t align = 0;
  std::size_t desc_offset = 0;
  std::size_t desc_bytes = 0;
  std::size_t avail_offset = 0;
  std::size_t avail_bytes = 0;
  std::size_t used_offset = 0;
  std::size_t used_bytes = 0;
  std::size_t total = 0;

  /// Rejects a size that is not a power of 2 in [1, 32768] and an alignment that is not a power
  /// of 2 of at least 4 (the used ring's own alignment, 2.7).
  static constexpr result<split_geometry> make(std::uint32_t size, std::size_t align = 4096) {
    if (!valid_split_size(size)) return errc::bad_queue_size;
    if (align < split::used_align || !std::has_single_bit(align)) return errc::bad_alignment;
    split_geometry g;
    g.size = size;
    g.align = align;
    g.desc_offset = 0;
    g.desc_bytes = split::desc_table_bytes(size);
    g.avail_offset = g.desc_bytes;
    g.avail_bytes = split::avail_bytes(size);
    g.used_offset = align_up(g.avail_offset + g.avail_bytes, align);
    g.used_bytes = split::used_bytes(size);
    g.total = g.used_offset + g.used_bytes;
    return g;
  }
};

/// A packed ring: descriptor ring at 0, driver event area after it, device event area after that.
struct packed_geometry {
  std::uint32_t size = 0;
  std::size_t desc_offset = 0;
  std::size_t desc_bytes = 0;
  std::size_t driver_event_offset = 0;
  std::size_t device_event_offset = 0;
  std::size_t total = 0;

  static constexpr result<packed_geometry> make(std::uint32_t size) {
    if (!valid_packed_size(size)) return errc::bad_queue_size;
    packed_geometry g;
    g.size = size;
    g.desc_bytes = 16U * std::size_t{size};
    g.driver_event_offset = align_up(g.desc_bytes, packed::event_align);
    g.device_event_offset = g.driver_event_offset + sizeof(packed::event_suppress);
    g.total = g.device_event_offset + sizeof(packed::event_suppress);
    return g;
  }
};

/// Views over one block laid out by a geometry (base must be aligned to at least 16 and to the
/// split geometry's align).
inline result<split::ring_view> split_view_at(void* base, const split_geometry& g) noexcept {
  auto* b = static_cast<std::byte*>(base);
  return split::ring_view::make(b + g.desc_offset, b + g.avail_offset, b + g.used_offset, g.size);
}
inline result<packed::ring_view> packed_view_at(void* base, const packed_geometry& g) noexcept {
  auto* b = static_cast<std::byte*>(base);
  return packed::ring_view::make(b + g.desc_offset, b + g.driver_event_offset,
                                 b + g.device_event_offset, g.size);
}

// Geometry facts proved at compile time.
static_assert(split_geometry::make(256, 4096)->total == 10246);  // 4096+518 -> 8192, + 2054
static_assert(features{}.with(64).bits() == 0 && !features{}.with(63).has(64));
static_assert(split_geometry::make(1, 4)->used_offset == 24);
static_assert(split_geometry::make(3).error() == errc::bad_queue_size);
static_assert(split_geometry::make(65536).error() == errc::bad_queue_size);
static_assert(split_geometry::make(0).error() == errc::bad_queue_size);
static_assert(split_geometry::make(8, 3).error() == errc::bad_alignment);
static_assert(packed_geometry::make(3)->total == 56);
static_assert(packed_geometry::make(0).error() == errc::bad_queue_size);
static_assert(packed_geometry::make(32769).error() == errc::bad_queue_size);

}  // namespace virtq
