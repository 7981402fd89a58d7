// Conformance of virtq/spec.hpp with the Linux UAPI description of virtqueues.
//
// <linux/virtio_ring.h> and <linux/virtio_config.h> are an independent statement of the VIRTIO
// wire format (the one every Linux guest and vhost backend uses), so this file checks our
// structures, constants and helper arithmetic against them:
//   * size, alignment and offset of every field of every ring structure;
//   * every flag and feature-bit value the UAPI headers define;
//   * the split-ring geometry against vring_size() / vring_init() for every legal queue size
//     and the alignments 4, 16, 64 and 4096;
//   * need_event() against vring_need_event(), exhaustively near 0 and 65535 and by property
//     over the whole 16-bit domain;
//   * the byte order the wire<> accessors produce.
//
// The legacy half of <linux/virtio_ring.h> (vring_init, vring_size, the *_event macros) does not
// compile as C++, so it is included here with VIRTIO_RING_NO_LEGACY and reached through the C
// wrapper in conformance/linux_virtio_ring.c.
#define VIRTIO_RING_NO_LEGACY 1
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#undef VIRTIO_RING_NO_LEGACY

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include "linux_virtio_ring.h"
#include "property.hpp"
#include "virtq/spec.hpp"

namespace {

namespace split = virtq::split;
namespace packed = virtq::packed;

// ------------------------------------------------------------------------------------------
// Structure layout: compile-time, field by field.
// ------------------------------------------------------------------------------------------

#define VIRTQ_SAME_FIELD(ours, linux_type, ours_field, linux_field)               \
  static_assert(offsetof(ours, ours_field) == offsetof(linux_type, linux_field)); \
  static_assert(sizeof(std::declval<ours&>().ours_field) ==                       \
                sizeof(std::declval<linux_type&>().linux_field))

// Split descriptor: struct vring_desc {addr, len, flags, next}.
static_assert(sizeof(split::desc) == sizeof(struct vring_desc));
static_assert(alignof(split::desc) == alignof(struct vring_desc));
VIRTQ_SAME_FIELD(split::desc, struct vring_desc, addr, addr);
VIRTQ_SAME_FIELD(split::desc, struct vring_desc, len, len);
VIRTQ_SAME_FIELD(split::desc, struct vring_desc, flags, flags);
VIRTQ_SAME_FIELD(split::desc, struct vring_desc, next, next);

// Available ring header: struct vring_avail {flags, idx, ring[]}; the ring starts right after.
static_assert(sizeof(split::avail_header) == offsetof(struct vring_avail, ring));
static_assert(alignof(split::avail_header) == alignof(struct vring_avail));
VIRTQ_SAME_FIELD(split::avail_header, struct vring_avail, flags, flags);
VIRTQ_SAME_FIELD(split::avail_header, struct vring_avail, idx, idx);
static_assert(sizeof(std::declval<struct vring_avail&>().ring[0]) == sizeof(std::uint16_t));

// Used element and used ring header: struct vring_used_elem {id, len},
// struct vring_used {flags, idx, ring[]}.
static_assert(sizeof(split::used_elem) == sizeof(struct vring_used_elem));
static_assert(alignof(split::used_elem) == alignof(struct vring_used_elem));
VIRTQ_SAME_FIELD(split::used_elem, struct vring_used_elem, id, id);
VIRTQ_SAME_FIELD(split::used_elem, struct vring_used_elem, len, len);
static_assert(sizeof(split::used_header) == offsetof(struct vring_used, ring));
VIRTQ_SAME_FIELD(split::used_header, struct vring_used, flags, flags);
VIRTQ_SAME_FIELD(split::used_header, struct vring_used, idx, idx);
static_assert(sizeof(std::declval<struct vring_used&>().ring[0]) == sizeof(split::used_elem));

// Packed descriptor: struct vring_packed_desc {addr, len, id, flags}.
static_assert(sizeof(packed::desc) == sizeof(struct vring_packed_desc));
static_assert(alignof(packed::desc) == alignof(struct vring_packed_desc));
VIRTQ_SAME_FIELD(packed::desc, struct vring_packed_desc, addr, addr);
VIRTQ_SAME_FIELD(packed::desc, struct vring_packed_desc, len, len);
VIRTQ_SAME_FIELD(packed::desc, struct vring_packed_desc, id, id);
VIRTQ_SAME_FIELD(packed::desc, struct vring_packed_desc, flags, flags);

// Event suppression: struct vring_packed_desc_event {off_wrap, flags}.
static_assert(sizeof(packed::event_suppress) == sizeof(struct vring_packed_desc_event));
static_assert(alignof(packed::event_suppress) == alignof(struct vring_packed_desc_event));
VIRTQ_SAME_FIELD(packed::event_suppress, struct vring_packed_desc_event, off_wrap, off_wrap);
VIRTQ_SAME_FIELD(packed::event_suppress, struct vring_packed_desc_event, flags, flags);

#undef VIRTQ_SAME_FIELD

// Whatever the wire<> wrapper hides, the structures must stay plain memory.
template <class T>
constexpr bool plain_memory = std::is_standard_layout_v<T>&& std::is_trivially_copyable_v<T>&&
    std::is_trivially_default_constructible_v<T>;
static_assert(plain_memory<split::desc> && plain_memory<split::avail_header>);
static_assert(plain_memory<split::used_elem> && plain_memory<split::used_header>);
static_assert(plain_memory<packed::desc> && plain_memory<packed::event_suppress>);
static_assert(sizeof(virtq::wire<std::uint16_t>) == 2 && alignof(virtq::wire<std::uint16_t>) == 2);
static_assert(sizeof(virtq::wire<std::uint32_t>) == 4 && alignof(virtq::wire<std::uint32_t>) == 4);
static_assert(sizeof(virtq::wire<std::uint64_t>) == 8 && alignof(virtq::wire<std::uint64_t>) == 8);

// Part alignments (2.7 "Virtqueue Part Alignment" table).
static_assert(split::desc_align == VRING_DESC_ALIGN_SIZE);
static_assert(split::avail_align == VRING_AVAIL_ALIGN_SIZE);
static_assert(split::used_align == VRING_USED_ALIGN_SIZE);
static_assert(packed::desc_align == VRING_DESC_ALIGN_SIZE);

// ------------------------------------------------------------------------------------------
// Flag and feature values.
// ------------------------------------------------------------------------------------------

static_assert(split::desc_f_next == VRING_DESC_F_NEXT);
static_assert(split::desc_f_write == VRING_DESC_F_WRITE);
static_assert(split::desc_f_indirect == VRING_DESC_F_INDIRECT);
static_assert(split::avail_f_no_interrupt == VRING_AVAIL_F_NO_INTERRUPT);
static_assert(split::used_f_no_notify == VRING_USED_F_NO_NOTIFY);

// The packed ring shares NEXT/WRITE/INDIRECT with the split ring; AVAIL and USED are given by
// Linux as bit numbers.
static_assert(packed::desc_f_next == VRING_DESC_F_NEXT);
static_assert(packed::desc_f_write == VRING_DESC_F_WRITE);
static_assert(packed::desc_f_indirect == VRING_DESC_F_INDIRECT);
static_assert(packed::desc_f_avail == (1U << VRING_PACKED_DESC_F_AVAIL));
static_assert(packed::desc_f_used == (1U << VRING_PACKED_DESC_F_USED));
static_assert(packed::event_flags_enable == VRING_PACKED_EVENT_FLAG_ENABLE);
static_assert(packed::event_flags_disable == VRING_PACKED_EVENT_FLAG_DISABLE);
static_assert(packed::event_flags_desc == VRING_PACKED_EVENT_FLAG_DESC);
static_assert(packed::make_off_wrap(0, true) == (1U << VRING_PACKED_EVENT_F_WRAP_CTR));
static_assert(packed::make_off_wrap(0x7FFF, false) == (1U << VRING_PACKED_EVENT_F_WRAP_CTR) - 1);

namespace feature = virtq::feature;
static_assert(feature::indirect_desc == VIRTIO_RING_F_INDIRECT_DESC);
static_assert(feature::event_idx == VIRTIO_RING_F_EVENT_IDX);
static_assert(feature::any_layout == VIRTIO_F_ANY_LAYOUT);
static_assert(feature::version_1 == VIRTIO_F_VERSION_1);
static_assert(feature::access_platform == VIRTIO_F_ACCESS_PLATFORM);
static_assert(feature::ring_packed == VIRTIO_F_RING_PACKED);
static_assert(feature::in_order == VIRTIO_F_IN_ORDER);
static_assert(feature::order_platform == VIRTIO_F_ORDER_PLATFORM);
static_assert(feature::sr_iov == VIRTIO_F_SR_IOV);
// Newer bits are missing from older UAPI headers (Debian 12 ships Linux 6.1's): where the header
// lacks them, check against the numbers of VIRTIO 1.2 section 6 instead.
#ifdef VIRTIO_F_NOTIFICATION_DATA
static_assert(feature::notification_data == VIRTIO_F_NOTIFICATION_DATA);
#else
static_assert(feature::notification_data == 38);
#endif
#ifdef VIRTIO_F_NOTIF_CONFIG_DATA
static_assert(feature::notif_config_data == VIRTIO_F_NOTIF_CONFIG_DATA);
#else
static_assert(feature::notif_config_data == 39);
#endif
#ifdef VIRTIO_F_RING_RESET
static_assert(feature::ring_reset == VIRTIO_F_RING_RESET);
#else
static_assert(feature::ring_reset == 40);
#endif
// Every transport/ring feature lies in the reserved range 28..41 (except legacy ANY_LAYOUT).
static_assert(VIRTIO_TRANSPORT_F_START == feature::indirect_desc);
static_assert(feature::ring_reset < VIRTIO_TRANSPORT_F_END);

// ------------------------------------------------------------------------------------------
// Split geometry: compile-time facts.
// ------------------------------------------------------------------------------------------

/// vring_size() of <linux/virtio_ring.h>, restated as a constant expression: descriptor table
/// and available ring (flags, idx, ring[num], used_event), padded to `align`, then the used ring
/// (flags, idx, ring[num], avail_event). The runtime tests below compare this against the real
/// vring_size() too, so the restatement cannot drift.
constexpr std::size_t linux_vring_size_constexpr(std::size_t num, std::size_t align) {
  return ((16 * num + 2 * (3 + num) + align - 1) & ~(align - 1)) + 2 * 3 + 8 * num;
}

constexpr std::array<std::size_t, 4> kAlignments{4, 16, 64, 4096};

constexpr bool geometry_matches_linux_formula() {
  for (std::uint32_t n = 1; n <= virtq::max_queue_size; n *= 2) {
    for (const std::size_t a : kAlignments) {
      const auto g = virtq::split_geometry::make(n, a);
      if (!g) return false;
      if (g->total != linux_vring_size_constexpr(n, a)) return false;
      if (g->desc_offset != 0 || g->desc_bytes != 16U * n) return false;
      if (g->avail_offset != 16U * n || g->avail_bytes != 6U + 2U * n) return false;
      if (g->used_offset % a != 0 || g->used_bytes != 6U + 8U * n) return false;
      if (g->used_offset < g->avail_offset + g->avail_bytes) return false;
      if (g->used_offset >= g->avail_offset + g->avail_bytes + a) return false;
    }
  }
  return true;
}
static_assert(geometry_matches_linux_formula());

constexpr bool geometry_rejects_invalid() {
  for (std::uint32_t n = 0; n <= 2 * virtq::max_queue_size; ++n) {
    const bool legal = n != 0 && n <= 32768 && (n & (n - 1)) == 0;
    if (virtq::split_geometry::make(n, 4096).has_value() != legal) return false;
  }
  for (std::size_t a = 0; a <= 8192; ++a) {
    const bool legal = a >= 4 && (a & (a - 1)) == 0;
    if (virtq::split_geometry::make(16, a).has_value() != legal) return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// need_event: compile-time proof on a window around the 16-bit wrap.
// ------------------------------------------------------------------------------------------

/// The meaning of need_event, independent of its formula: the index moved from old to new
/// (a step of (new - old) mod 2^16) and passed event iff event lies in [old, new) mod 2^16.
constexpr bool need_event_model(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old) {
  const auto step = static_cast<std::uint16_t>(new_idx - old);
  const auto dist = static_cast<std::uint16_t>(event - old);
  return dist < step;
}

constexpr bool need_event_matches_model(unsigned base, unsigned width) {
  for (unsigned o = base; o < base + width; ++o) {
    for (unsigned n = base; n < base + width; ++n) {
      for (unsigned e = base; e < base + width; ++e) {
        const auto eo = static_cast<std::uint16_t>(e);
        const auto no = static_cast<std::uint16_t>(n);
        const auto oo = static_cast<std::uint16_t>(o);
        if (virtq::need_event(eo, no, oo) != need_event_model(eo, no, oo)) return false;
      }
    }
  }
  return true;
}
static_assert(need_event_matches_model(0, 16));
static_assert(need_event_matches_model(65536 - 8, 16));  // straddles the wrap
static_assert(need_event_matches_model(32768 - 8, 16));  // straddles the sign bit

// ------------------------------------------------------------------------------------------
// Helpers.
// ------------------------------------------------------------------------------------------

/// 1 MiB, 4096-aligned: enough for the largest split ring (32768 entries, align 4096).
struct ring_memory {
  static constexpr std::size_t kBytes = std::size_t{1} << 20;
  std::byte* p = static_cast<std::byte*>(::operator new (kBytes, std::align_val_t{4096}));
  ring_memory() = default;
  ring_memory(const ring_memory&) = delete;
  ring_memory& operator=(const ring_memory&) = delete;
  ~ring_memory() { ::operator delete (p, std::align_val_t{4096}); }
};

std::vector<std::uint16_t> window_values() {
  std::vector<std::uint16_t> v;
  for (unsigned i = 0; i < 64; ++i) v.push_back(static_cast<std::uint16_t>(i));
  for (unsigned i = 65472; i < 65536; ++i) v.push_back(static_cast<std::uint16_t>(i));
  return v;
}

template <class T>
std::array<unsigned char, sizeof(T)> bytes_of(const T& v) {
  std::array<unsigned char, sizeof(T)> out{};
  std::memcpy(out.data(), &v, sizeof(T));
  return out;
}

}  // namespace

// ==========================================================================================
// Tests
// ==========================================================================================

TEST_CASE("split geometry total equals Linux vring_size", "[spec][geometry]") {
  STATIC_REQUIRE(geometry_matches_linux_formula());
  // `total` and vring_size() mean the same quantity: the bytes from the start of the descriptor
  // table to the end of the used ring's avail_event field, the used ring starting at the first
  // multiple of `align` after the available ring's used_event field.
  for (std::uint32_t n = 1; n <= virtq::max_queue_size; n *= 2) {
    for (const std::size_t a : kAlignments) {
      CAPTURE(n, a);
      const auto g = virtq::split_geometry::make(n, a);
      REQUIRE(g.has_value());
      REQUIRE(g->total == linux_vring_size(n, a));
      REQUIRE(g->total == linux_vring_size_constexpr(n, a));
    }
  }
}

TEST_CASE("split geometry rejects sizes and alignments Linux cannot lay out", "[spec][geometry]") {
  REQUIRE(geometry_rejects_invalid());
}

TEST_CASE("split ring parts sit where Linux vring_init puts them", "[spec][geometry]") {
  ring_memory mem;
  for (std::uint32_t n = 1; n <= virtq::max_queue_size; n *= 2) {
    for (const std::size_t a : kAlignments) {
      CAPTURE(n, a);
      const auto g = virtq::split_geometry::make(n, a);
      REQUIRE(g.has_value());
      REQUIRE(g->total <= ring_memory::kBytes);
      const linux_vring_layout lx = linux_vring_init(n, mem.p, a);
      REQUIRE(g->desc_offset == lx.desc_offset);
      REQUIRE(g->avail_offset == lx.avail_offset);
      REQUIRE(g->used_offset == lx.used_offset);

      // Our ring views must find the event fields where Linux's macros do.
      const split::avail_ring avail{reinterpret_cast<split::avail_header*>(mem.p + g->avail_offset),
                                    n};
      const split::used_ring used{reinterpret_cast<split::used_header*>(mem.p + g->used_offset), n};
      const auto off = [&](const void* q) {
        return static_cast<std::size_t>(static_cast<const std::byte*>(q) - mem.p);
      };
      REQUIRE(off(&avail.flags()) == lx.avail_offset);
      REQUIRE(off(&avail.idx()) == lx.avail_offset + 2);
      REQUIRE(off(&avail.ring(0)) == lx.avail_offset + 4);
      REQUIRE(off(&avail.used_event()) == lx.used_event_offset);
      REQUIRE(off(&used.flags()) == lx.used_offset);
      REQUIRE(off(&used.idx()) == lx.used_offset + 2);
      REQUIRE(off(&used.ring(0)) == lx.used_offset + 4);
      REQUIRE(off(&used.avail_event()) == lx.avail_event_offset);
      // The last field of each area ends exactly at the area's byte count.
      REQUIRE(lx.used_event_offset + 2 == g->avail_offset + g->avail_bytes);
      REQUIRE(lx.avail_event_offset + 2 == g->used_offset + g->used_bytes);
      REQUIRE(lx.avail_event_offset + 2 == g->total);
    }
  }
}

TEST_CASE("packed geometry honours the packed part alignments", "[spec][geometry]") {
  for (std::uint32_t n = 1; n <= virtq::max_queue_size; n = n < 64 ? n + 1 : n * 2 + 1) {
    CAPTURE(n);
    const auto g = virtq::packed_geometry::make(n);
    REQUIRE(g.has_value());
    REQUIRE(g->desc_offset % packed::desc_align == 0);
    REQUIRE(g->desc_bytes == n * sizeof(struct vring_packed_desc));
    REQUIRE(g->driver_event_offset % packed::event_align == 0);
    REQUIRE(g->device_event_offset % packed::event_align == 0);
    REQUIRE(g->driver_event_offset >= g->desc_offset + g->desc_bytes);
    REQUIRE(g->device_event_offset >= g->driver_event_offset + sizeof(vring_packed_desc_event));
    REQUIRE(g->total == g->device_event_offset + sizeof(vring_packed_desc_event));
  }
  REQUIRE_FALSE(virtq::packed_geometry::make(0).has_value());
  REQUIRE(virtq::packed_geometry::make(32768).has_value());
  REQUIRE_FALSE(virtq::packed_geometry::make(32769).has_value());
}

TEST_CASE("need_event equals vring_need_event near 0 and 65535 (exhaustive)", "[spec][event]") {
  STATIC_REQUIRE(need_event_matches_model(65536 - 8, 16));
  const auto w = window_values();
  std::size_t mismatches = 0;
  std::size_t model_mismatches = 0;
  for (const auto e : w) {
    for (const auto n : w) {
      for (const auto o : w) {
        const bool ours = virtq::need_event(e, n, o);
        if (ours != (vring_need_event(e, n, o) != 0)) ++mismatches;
        if (ours != (linux_vring_need_event(e, n, o) != 0)) ++mismatches;
        if (ours != need_event_model(e, n, o)) ++model_mismatches;
      }
    }
  }
  REQUIRE(mismatches == 0);
  REQUIRE(model_mismatches == 0);
}

TEST_CASE("need_event equals vring_need_event over the whole 16-bit domain", "[spec][event]") {
  rc::prop("need_event(e, n, o) == vring_need_event(e, n, o)",
           [](std::uint16_t e, std::uint16_t n, std::uint16_t o) {
             RC_ASSERT(virtq::need_event(e, n, o) == (vring_need_event(e, n, o) != 0));
           });
  rc::prop("uniform over 0..65535, and it means: event in [old, new) mod 2^16", [] {
    const auto u16 = rc::gen::cast<std::uint16_t>(virtq_test::uniform_gen<std::uint32_t>(0, 65536));
    const auto e = *u16;
    const auto n = *u16;
    const auto o = *u16;
    RC_ASSERT(virtq::need_event(e, n, o) == (vring_need_event(e, n, o) != 0));
    RC_ASSERT(virtq::need_event(e, n, o) == need_event_model(e, n, o));
  });
  rc::prop("a step of k from old fires for exactly the k events old..old+k-1", [] {
    const auto o = *rc::gen::cast<std::uint16_t>(virtq_test::uniform_gen<std::uint32_t>(0, 65536));
    const auto k = virtq_test::uniform<std::uint32_t>(0, 65536);
    const auto d = virtq_test::uniform<std::uint32_t>(0, 65536);
    const auto n = static_cast<std::uint16_t>(o + k);
    const auto e = static_cast<std::uint16_t>(o + d);
    RC_ASSERT(virtq::need_event(e, n, o) == (d < k));
  });
}

TEST_CASE("packed_need_event follows the Linux driver's packed kick test", "[spec][event]") {
  // Linux (virtqueue_kick_prepare_packed) reads the device's off_wrap, subtracts the ring size
  // from the event offset when its wrap counter differs from the driver's, and then applies
  // vring_need_event(event, new, new - added) in 16-bit arithmetic. Up to a whole ring of
  // additions virtq must decide exactly the same; more than a ring always notifies (offset and
  // wrap bit can no longer say which lap the event is in).
  rc::prop("same decision as Linux for added <= size; true for added > size", [] {
    const auto size = virtq_test::uniform<std::uint32_t>(1, virtq::max_queue_size + 1);
    const auto new_off = static_cast<std::uint16_t>(virtq_test::uniform<std::uint32_t>(0, size));
    const bool new_wrap = *rc::gen::arbitrary<bool>();
    const auto ev_off = static_cast<std::uint16_t>(virtq_test::uniform<std::uint32_t>(0, size));
    const bool ev_wrap = *rc::gen::arbitrary<bool>();
    const auto added = virtq_test::uniform<std::uint32_t>(0, 2 * size + 1);
    const auto off_wrap = packed::make_off_wrap(ev_off, ev_wrap);

    const bool ours = virtq::packed_need_event(off_wrap, new_off, new_wrap, added, size);
    if (added > size) {
      RC_ASSERT(ours);
    } else {
      auto event = static_cast<std::uint16_t>(off_wrap & ~(1U << VRING_PACKED_EVENT_F_WRAP_CTR));
      const bool wrap = (off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR) != 0;
      if (wrap != new_wrap) event = static_cast<std::uint16_t>(event - size);
      const auto old_off = static_cast<std::uint16_t>(new_off - added);
      RC_ASSERT(ours == (vring_need_event(event, new_off, old_off) != 0));
    }
  });
}

TEST_CASE("wire fields are little-endian for VERSION_1 and native for legacy", "[spec][endian]") {
  split::desc d{};
  virtq::put<virtq::little_endian>(d.addr, 0x1122334455667788ULL);
  virtq::put<virtq::little_endian>(d.len, 0xA1B2C3D4U);
  virtq::put<virtq::little_endian>(d.flags, std::uint16_t{0x0102});
  virtq::put<virtq::little_endian>(d.next, std::uint16_t{0x0304});
  const auto b = bytes_of(d);
  const std::array<unsigned char, 16> expect_le{0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
                                                0xD4, 0xC3, 0xB2, 0xA1, 0x02, 0x01, 0x04, 0x03};
  REQUIRE(b == expect_le);
  REQUIRE(virtq::get<virtq::little_endian>(d.addr) == 0x1122334455667788ULL);
  REQUIRE(virtq::get<virtq::little_endian>(d.len) == 0xA1B2C3D4U);
  REQUIRE(virtq::get<virtq::little_endian>(d.next) == 0x0304);

  // The same bytes read through Linux's struct (whose __virtio/__le fields a little-endian
  // host reads as-is).
  struct vring_desc lx {};
  std::memcpy(&lx, &d, sizeof lx);
  if constexpr (std::endian::native == std::endian::little) {
    REQUIRE(lx.addr == 0x1122334455667788ULL);
    REQUIRE(lx.len == 0xA1B2C3D4U);
    REQUIRE(lx.flags == 0x0102);
    REQUIRE(lx.next == 0x0304);
  }

  split::desc big{};
  virtq::put<virtq::big_endian>(big.addr, 0x1122334455667788ULL);
  virtq::put<virtq::big_endian>(big.len, 0xA1B2C3D4U);
  virtq::put<virtq::big_endian>(big.flags, std::uint16_t{0x0102});
  virtq::put<virtq::big_endian>(big.next, std::uint16_t{0x0304});
  const std::array<unsigned char, 16> expect_be{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                                                0xA1, 0xB2, 0xC3, 0xD4, 0x01, 0x02, 0x03, 0x04};
  REQUIRE(bytes_of(big) == expect_be);
  REQUIRE(virtq::get<virtq::big_endian>(big.len) == 0xA1B2C3D4U);

  // Legacy devices use the guest's (here: the host's) order.
  split::used_elem u{};
  virtq::put<virtq::native_endian>(u.id, 7U);
  std::uint32_t raw = 0;
  std::memcpy(&raw, &u, sizeof raw);
  REQUIRE(raw == 7U);

  // The atomic accessors use the same byte order as get/put.
  split::avail_header h{};
  virtq::store_release<virtq::little_endian>(h.idx, std::uint16_t{0xBEEF});
  REQUIRE(bytes_of(h)[2] == 0xEF);
  REQUIRE(bytes_of(h)[3] == 0xBE);
  REQUIRE(virtq::load_acquire<virtq::little_endian>(h.idx) == 0xBEEF);
  virtq::store_relaxed<virtq::big_endian>(h.flags, std::uint16_t{0x0001});
  REQUIRE(bytes_of(h)[0] == 0x00);
  REQUIRE(bytes_of(h)[1] == 0x01);
  REQUIRE(virtq::load_relaxed<virtq::big_endian>(h.flags) == 0x0001);
}

TEST_CASE("packed flags and off_wrap encode as the spec says", "[spec][packed]") {
  // 2.8.1: the driver makes a descriptor available by setting AVAIL to its wrap counter and
  // USED to the inverse; the device marks it used by setting both to its wrap counter.
  for (const bool wrap : {false, true}) {
    CAPTURE(wrap);
    REQUIRE(packed::is_avail(packed::avail_bits(wrap), wrap));
    REQUIRE_FALSE(packed::is_used(packed::avail_bits(wrap), wrap));
    REQUIRE(packed::is_used(packed::used_bits(wrap), wrap));
    REQUIRE_FALSE(packed::is_avail(packed::used_bits(wrap), wrap));
    // A descriptor made available in the previous lap is neither available nor used now.
    REQUIRE_FALSE(packed::is_avail(packed::avail_bits(!wrap), wrap));
  }
  for (std::uint32_t off = 0; off < 0x8000; ++off) {
    for (const bool wrap : {false, true}) {
      const auto ow = packed::make_off_wrap(static_cast<std::uint16_t>(off), wrap);
      REQUIRE(packed::off_of(ow) == off);
      REQUIRE(packed::wrap_of(ow) == wrap);
    }
  }
}

TEST_CASE("notification data follows the VIRTIO_F_NOTIFICATION_DATA layout", "[spec][notify]") {
  // le32: vqn in bits 0..15, next_off in 16..30, next_wrap in bit 31 (packed); split rings put
  // the whole 16-bit avail idx in bits 16..31.
  REQUIRE(virtq::encode_notification({5, 0x1234, false}) == 0x12340005U);
  REQUIRE(virtq::encode_notification({5, 0x1234, true}) == 0x92340005U);
  REQUIRE(virtq::encode_split_notification(5, 0x9234) == 0x92340005U);
  const auto n = virtq::decode_notification(0x92340005U);
  REQUIRE(n.vqn == 5);
  REQUIRE(n.next_off == 0x1234);
  REQUIRE(n.next_wrap);
  REQUIRE(virtq::split_notification_idx(0x92340005U) == 0x9234);
}
