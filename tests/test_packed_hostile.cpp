// SPDX-License-Identifier: MIT
// A hostile peer on a packed ring: every bad descriptor or used element is written by hand
// through the spec.hpp accessors. Each case gives its specific errc, a broken queue, and works
// again after reset.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {

constexpr std::uint64_t guest_base = 0x10000;
constexpr std::uint32_t guest_size = 64 * 1024;

/// A device over a ring whose driver is the test itself, with one region of guest memory.
struct hostile_driver {
  explicit hostile_driver(std::uint32_t size, virtq::features f = packed_features<>())
      : ring(size), data(guest_size, 64), device(ring.view(), f, mem) {
    mem.add_region(guest_base, guest_size, data.data());
  }
  const packed::ring_view& v() const { return ring.view(); }
  /// A guest address inside the region, and where the device will see it.
  static std::uint64_t ga(std::uint64_t off) { return guest_base + off; }
  std::byte* host(std::uint64_t off) const { return data.data() + off; }

  /// Writes an indirect table entry into guest memory at `off`.
  void table_entry(std::uint64_t off, std::uint32_t i, std::uint64_t addr, std::uint32_t len,
                   std::uint16_t flags) {
    packed::desc d;
    put<le>(d.addr, addr);
    put<le>(d.len, len);
    put<le>(d.id, 0);
    put<le>(d.flags, flags);
    std::memcpy(host(off + 16U * i), &d, sizeof d);
  }

  /// After a failure: reset the device, and as the (well-behaved again) driver re-initialise the
  /// ring, offer one good chain and check that it pops and completes.
  void check_recovery(errc expected) {
    REQUIRE(device.broken());
    REQUIRE(device.error() == expected);
    REQUIRE(device.stats().rejects[static_cast<std::size_t>(expected)] == 1);
    chain c;
    REQUIRE(device.pop(c) == errc::broken);  // refuses work until reset
    REQUIRE(device.complete(0, 0) == errc::broken);
    REQUIRE(device.complete_in_order(1, 0) == errc::broken);
    device.reset();
    std::memset(static_cast<void*>(v().ring), 0, 16U * v().size);
    REQUIRE_FALSE(device.broken());
    REQUIRE(device.pop(c) == errc::empty);
    put_desc(v(), 0, ga(0), 100, 0, A | WRITE);
    REQUIRE(device.pop(c) == errc::ok);
    REQUIRE(c.writable_bytes() == 100);
    REQUIRE(device.complete(c, 10) == errc::ok);
    (void)device.interrupt_prepare();
    REQUIRE(packed::is_used(flags_at(v(), 0), true));
  }

  /// Pops expecting a specific error; the chain is left empty.
  void expect_pop(errc e) {
    chain c;
    REQUIRE(device.pop(c) == e);
    REQUIRE(c.readable().empty());
    REQUIRE(c.writable().empty());
    check_recovery(e);
  }

  ring_memory<packed_layout> ring;
  aligned_buffer data;
  guest_memory mem;
  packed_device<default_policy, guest_memory> device;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Device side: the driver's ring is hostile
// ---------------------------------------------------------------------------------------------

TEST_CASE("device: AVAIL and USED both equal to the wrap counter at a head is packed_bad_flags") {
  hostile_driver h(8);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | U);
  h.expect_pop(errc::packed_bad_flags);
}

TEST_CASE("device: a chain continuing into a slot that is not available is packed_bad_flags") {
  hostile_driver h(8);
  // Second descriptor carries the previous lap's bits (AVAIL 0, USED 1 under wrap 1).
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, U | WRITE);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | NEXT);
  h.expect_pop(errc::packed_bad_flags);
}

TEST_CASE("device: a chain whose continuation after the wrap keeps the old wrap bits") {
  // size 3, start at slot 2 (after one 2-slot chain), continue into slot 0 which must carry the
  // flipped counter (AVAIL 0, USED 1); it carries the unflipped one.
  hostile_driver h(3);
  chain c;
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 1, A | WRITE);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 1, A | NEXT);
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(h.device.complete(c, 0) == errc::ok);  // slots 0-1 come back to the driver
  (void)h.device.interrupt_prepare();
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 2, A | WRITE);  // wrong: the old counter
  put_desc(h.v(), 2, hostile_driver::ga(128), 16, 2, A | NEXT);
  h.expect_pop(errc::packed_bad_flags);
}

TEST_CASE("device: a buffer id >= queue size is packed_bad_id") {
  hostile_driver h(8);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 8, A | WRITE);
  h.expect_pop(errc::packed_bad_id);
}

TEST_CASE(
    "device: a chain of several descriptors or an indirect one with id == queue size is "
    "packed_bad_id") {
  // pop(chain&) checks these ids after walking the chain, away from the one-descriptor path.
  SECTION("two descriptors, the id in the last") {
    hostile_driver h(8);
    put_desc(h.v(), 1, hostile_driver::ga(64), 16, 8, A | WRITE);
    put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | NEXT);
    h.expect_pop(errc::packed_bad_id);
  }
  SECTION("an indirect table") {
    hostile_driver h(8);
    h.table_entry(4096, 0, hostile_driver::ga(0), 16, WRITE);
    put_desc(h.v(), 0, hostile_driver::ga(4096), 16, 8, A | INDIRECT);
    h.expect_pop(errc::packed_bad_id);
  }
}

TEST_CASE("device: a buffer id already in flight is packed_bad_id") {
  hostile_driver h(8);
  chain c;
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 3, A | WRITE);
  REQUIRE(h.device.pop(c) == errc::ok);
  put_desc(h.v(), 1, hostile_driver::ga(0), 16, 3, A | WRITE);
  h.expect_pop(errc::packed_bad_id);
}

TEST_CASE("device: a chain of two descriptors whose id is in flight is packed_bad_id (2.8.4)") {
  // The one-descriptor path tests the id before walking; pop(chain&) tests a longer chain's id
  // (in its last descriptor) after the walk: that test on its own.
  hostile_driver h(8);
  chain c;
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 3, A | WRITE);
  REQUIRE(h.device.pop(c) == errc::ok);
  put_desc(h.v(), 2, hostile_driver::ga(128), 16, 3, A | WRITE);
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, A | NEXT);
  h.expect_pop(errc::packed_bad_id);
}

TEST_CASE("device: a queue broken with completions staged publishes none of them (2.8.21)") {
  // Chain A is completed but not yet published (interrupt_prepare publishes); then the driver
  // breaks the ring. A broken device must not publish: the driver sees nothing used.
  hostile_driver h(8);
  chain c;
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 5, A | WRITE);
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(h.device.complete(c, 4) == errc::ok);
  REQUIRE_FALSE(packed::is_used(flags_at(h.v(), 0), true));  // staged, not published
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 6, A | U);
  chain d;
  REQUIRE(h.device.pop(d) == errc::packed_bad_flags);
  CHECK_FALSE(h.device.interrupt_prepare());
  CHECK_FALSE(packed::is_used(flags_at(h.v(), 0), true));
}

TEST_CASE("device: the id is read from the chain's last descriptor (2.8.6)") {
  hostile_driver h(8);
  chain c;
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 6, A | WRITE);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 2, A | NEXT);
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(c.id() == 6);
  REQUIRE(c.ring_slots() == 2);
}

TEST_CASE("device: a chain that does not end within the queue size is packed_chain_overrun") {
  for (const std::uint32_t size : {1U, 4U, 7U}) {
    CAPTURE(size);
    hostile_driver h(size);
    for (std::uint32_t i = size; i-- > 0;) {
      put_desc(h.v(), i, hostile_driver::ga(16U * i), 16, 0, A | NEXT);
    }
    h.expect_pop(errc::packed_chain_overrun);
  }
}

TEST_CASE("device: a head in a slot the device still holds is packed_chain_overrun") {
  // size 3: A takes slots 0-1 (id 0), B slot 2 (id 1); the device holds both, so no slot has
  // come back. The driver re-offers slot 0 in the next lap under the free id 2.
  hostile_driver h(3);
  chain a, b;
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, A | WRITE);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | NEXT);
  put_desc(h.v(), 2, hostile_driver::ga(128), 16, 1, A | WRITE);
  REQUIRE(h.device.pop(a) == errc::ok);
  REQUIRE(h.device.pop(b) == errc::ok);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 2, U | WRITE);  // lap 2: AVAIL 0, USED 1
  h.expect_pop(errc::packed_chain_overrun);
}

TEST_CASE("device: a chain running into slots the device still holds is packed_chain_overrun") {
  // size 4: A (slots 0-1) is completed, B (slots 2-3) is held. Slots 0-1 came back, so a
  // 2-slot chain there is fine; a 3-slot one would reach B's slot 2.
  for (const std::uint32_t len : {2U, 3U}) {
    CAPTURE(len);
    hostile_driver h(4);
    chain a, b, c;
    put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, A | WRITE);
    put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | NEXT);
    put_desc(h.v(), 3, hostile_driver::ga(192), 16, 1, A | WRITE);
    put_desc(h.v(), 2, hostile_driver::ga(128), 16, 1, A | NEXT);
    REQUIRE(h.device.pop(a) == errc::ok);
    REQUIRE(h.device.pop(b) == errc::ok);
    REQUIRE(h.device.complete(a, 0) == errc::ok);
    (void)h.device.interrupt_prepare();
    // Lap 2 (counter 0): AVAIL 0, USED 1; slot 2 is still B's.
    for (std::uint32_t i = len; i-- > 0;) {
      const bool more = i + 1 < len;
      put_desc(h.v(), i % 4, hostile_driver::ga(16U * i), 16, 2,
               static_cast<std::uint16_t>(U | WRITE | (more ? NEXT : 0)));
    }
    if (len == 2) {
      REQUIRE(h.device.pop(c) == errc::ok);
      REQUIRE(c.ring_slots() == 2);
    } else {
      h.expect_pop(errc::packed_chain_overrun);
    }
  }
}

TEST_CASE("device: indirect table of bad length is indirect_bad_length") {
  for (const std::uint32_t len : {0U, 15U, 17U, 24U, 9U * 16U}) {  // size 8: at most 128 bytes
    CAPTURE(len);
    hostile_driver h(8);
    for (std::uint32_t i = 0; i < 9; ++i) h.table_entry(4096, i, hostile_driver::ga(0), 8, 0);
    put_desc(h.v(), 0, hostile_driver::ga(4096), len, 0, A | INDIRECT);
    h.expect_pop(errc::indirect_bad_length);
  }
}

TEST_CASE("device: an indirect table of exactly queue-size entries is accepted") {
  hostile_driver h(8);
  for (std::uint32_t i = 0; i < 8; ++i) {
    h.table_entry(4096, i, hostile_driver::ga(16U * i), 16, i < 3 ? 0 : WRITE);
  }
  // WRITE on the descriptor pointing at the table is ignored (2.8.7).
  put_desc(h.v(), 0, hostile_driver::ga(4096), 128, 4, A | INDIRECT | WRITE);
  chain c;
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(c.readable().size() == 3);
  REQUIRE(c.writable().size() == 5);
  REQUIRE(c.ring_slots() == 1);
  REQUIRE(c.descriptors() == 8);
  REQUIRE(c.id() == 4);
}

TEST_CASE("device: INDIRECT inside an indirect table is indirect_nested") {
  hostile_driver h(8);
  h.table_entry(4096, 0, hostile_driver::ga(0), 16, 0);
  h.table_entry(4096, 1, hostile_driver::ga(8192), 16, INDIRECT);
  put_desc(h.v(), 0, hostile_driver::ga(4096), 32, 0, A | INDIRECT);
  h.expect_pop(errc::indirect_nested);
}

TEST_CASE("device: an indirect entry with a flag other than WRITE is indirect_bad_flags") {
  for (const std::uint16_t bad : {NEXT, A, U, std::uint16_t(0x0100)}) {
    CAPTURE(bad);
    hostile_driver h(8);
    h.table_entry(4096, 0, hostile_driver::ga(0), 16, 0);
    h.table_entry(4096, 1, hostile_driver::ga(64), 16, static_cast<std::uint16_t>(bad | WRITE));
    put_desc(h.v(), 0, hostile_driver::ga(4096), 32, 0, A | INDIRECT);
    h.expect_pop(errc::indirect_bad_flags);
  }
}

TEST_CASE("device: INDIRECT together with NEXT is indirect_with_next") {
  hostile_driver h(8);
  h.table_entry(4096, 0, hostile_driver::ga(0), 16, 0);
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, A | WRITE);
  put_desc(h.v(), 0, hostile_driver::ga(4096), 16, 0, A | INDIRECT | NEXT);
  h.expect_pop(errc::indirect_with_next);
}

TEST_CASE("device: direct descriptors followed by an indirect one are indirect_with_next") {
  // 2.8.7: no INDIRECT in a list linked by NEXT: a packed chain never mixes the two.
  hostile_driver h(8);
  h.table_entry(4096, 0, hostile_driver::ga(0), 16, WRITE);
  put_desc(h.v(), 1, hostile_driver::ga(4096), 16, 0, A | INDIRECT);
  put_desc(h.v(), 0, hostile_driver::ga(64), 16, 0, A | NEXT);
  h.expect_pop(errc::indirect_with_next);
}

TEST_CASE("device: INDIRECT without VIRTIO_F_INDIRECT_DESC is indirect_not_negotiated") {
  hostile_driver h(8, packed_features<>().without(feature::indirect_desc));
  h.table_entry(4096, 0, hostile_driver::ga(0), 16, 0);
  put_desc(h.v(), 0, hostile_driver::ga(4096), 16, 0, A | INDIRECT);
  h.expect_pop(errc::indirect_not_negotiated);
}

TEST_CASE("device: an indirect table outside guest memory is address_out_of_range") {
  hostile_driver h(8);
  put_desc(h.v(), 0, 0x100, 32, 0, A | INDIRECT);
  h.expect_pop(errc::address_out_of_range);
}

TEST_CASE("device: address + length wrapping 2^64 is address_overflow") {
  hostile_driver h(8);
  put_desc(h.v(), 0, ~std::uint64_t{0} - 10, 100, 0, A | WRITE);
  h.expect_pop(errc::address_overflow);
}

TEST_CASE("device: a buffer outside guest memory is address_out_of_range") {
  hostile_driver h(8);
  put_desc(h.v(), 0, guest_base + guest_size + 4096, 16, 0, A);
  h.expect_pop(errc::address_out_of_range);
}

TEST_CASE("device: a buffer running past the end of its region is crosses_region_end") {
  hostile_driver h(8);
  put_desc(h.v(), 0, guest_base + guest_size - 8, 16, 0, A);
  h.expect_pop(errc::crosses_region_end);
}

TEST_CASE("device: a chain over 2^32 bytes in total is chain_too_large") {
  hostile_driver h(8);
  // A 1 GiB guest region that is only translated, never touched (a host with 32-bit pointers
  // has room for it too). 2.8.4 / 2.7.5.2: at most 2^32 bytes in total; four descriptors of
  // 1 GiB make exactly that (allowed), a fifth byte is one too many. The head's flags go last.
  constexpr std::uint64_t base = std::uint64_t{1} << 40;
  constexpr std::uint32_t gib = 1U << 30;
  {
    hostile_driver ok(8);
    ok.mem.add_region(base, gib, ok.data.data());
    put_desc(ok.v(), 3, base, gib, 0, A | WRITE);
    for (std::uint16_t i = 3; i-- > 0;) put_desc(ok.v(), i, base, gib, 0, A | NEXT | WRITE);
    chain c;
    REQUIRE(ok.device.pop(c) == errc::ok);
    CHECK(c.writable_bytes() == std::uint64_t{1} << 32);
  }
  h.mem.add_region(base, gib, h.data.data());
  put_desc(h.v(), 4, base, 1, 0, A | WRITE);
  for (std::uint16_t i = 4; i-- > 0;) put_desc(h.v(), i, base, gib, 0, A | NEXT | WRITE);
  h.expect_pop(errc::chain_too_large);
}

TEST_CASE("device: a readable descriptor after a writable one is write_before_read") {
  hostile_driver h(8);
  put_desc(h.v(), 1, hostile_driver::ga(64), 16, 0, A);
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 0, A | NEXT | WRITE);
  h.expect_pop(errc::write_before_read);
}

TEST_CASE("device: a readable entry after a writable one inside an indirect table") {
  hostile_driver h(8);
  h.table_entry(4096, 0, hostile_driver::ga(0), 16, WRITE);
  h.table_entry(4096, 1, hostile_driver::ga(64), 16, 0);
  put_desc(h.v(), 0, hostile_driver::ga(4096), 32, 0, A | INDIRECT);
  h.expect_pop(errc::write_before_read);
}

TEST_CASE("device: completing an id that was never popped is the caller's error, not broken") {
  hostile_driver h(8);
  REQUIRE(h.device.complete(3, 0) == errc::invalid_argument);
  REQUIRE(h.device.complete(200, 0) == errc::invalid_argument);
  chain c;
  put_desc(h.v(), 0, hostile_driver::ga(0), 16, 2, A | WRITE);
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(h.device.complete(2, 17) == errc::invalid_argument);  // over-states the length
  REQUIRE(h.device.complete(c, 16) == errc::ok);
  REQUIRE(h.device.complete(c, 16) == errc::invalid_argument);  // twice
  REQUIRE_FALSE(h.device.broken());
}

// ---------------------------------------------------------------------------------------------
// Driver side: the device is hostile
// ---------------------------------------------------------------------------------------------

namespace {

struct hostile_device {
  explicit hostile_device(std::uint32_t size)
      : ring(size), arena(4096), driver(ring.view(), packed_features<>()) {}
  const packed::ring_view& v() const { return ring.view(); }

  /// Adds and publishes `n` single-buffer chains with tokens 100.. (ids as the driver chose;
  /// read back from the ring).
  std::vector<std::uint16_t> publish(std::uint32_t n, std::uint32_t len = 64) {
    std::vector<std::uint16_t> ids;
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint32_t slot = next_slot;
      REQUIRE(driver.add_inbuf(arena.at(0, len), 100 + issued++) == errc::ok);
      ids.push_back(get<le>(v().ring[slot].id));
      ++next_slot;
    }
    (void)driver.kick_prepare();
    return ids;
  }

  /// The driver is broken with `e`; reset hands back every token once; a real device then
  /// works with it again.
  void check_recovery(errc e) {
    REQUIRE(driver.broken());
    REQUIRE(driver.error() == e);
    REQUIRE(driver.stats().rejects[static_cast<std::size_t>(e)] == 1);
    REQUIRE(driver.get_used().error() == errc::broken);
    REQUIRE(driver.add_inbuf(arena.at(0, 8), 1) == errc::broken);
    const buffer in = arena.at(0, 8);
    REQUIRE(driver.add({}, {&in, 1}, 1) == errc::broken);
    std::multiset<token_t> back;
    driver.reset([&](token_t t) { back.insert(t); });
    REQUIRE(back.size() == issued);
    for (token_t t = 100; t < 100 + issued; ++t) REQUIRE(back.count(t) == 1);
    REQUIRE_FALSE(driver.broken());
    REQUIRE(driver.num_free() == driver.size());
    packed_device<> device(v(), packed_features<>(), mem);
    REQUIRE(driver.add_inbuf(arena.at(0, 8), 42) == errc::ok);
    (void)driver.kick_prepare();
    chain c;
    REQUIRE(device.pop(c) == errc::ok);
    REQUIRE(device.complete(c, 8) == errc::ok);
    (void)device.interrupt_prepare();
    const auto u = driver.get_used();
    REQUIRE(u);
    REQUIRE(u->token == 42);
  }

  ring_memory<packed_layout> ring;
  virtq_test::buffer_arena arena;
  identity_memory mem;
  packed_driver<> driver;
  std::uint32_t next_slot = 0;
  std::uint32_t issued = 0;
};

}  // namespace

TEST_CASE("driver: a queue broken with a chain staged does not publish it at the kick (2.8.21)") {
  // The head's flags are the batch's publish store, made by kick_prepare(). Once the device
  // broke the queue, the staged chain must stay unpublished and no kick be asked for.
  hostile_device h(8);
  h.publish(1);
  REQUIRE(h.driver.add_inbuf(h.arena.at(0, 64), 7) == errc::ok);  // slot 1, staged
  const std::uint16_t staged = flags_at(h.v(), 1);
  put_used(h.v(), 0, 8, 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_id_out_of_range);
  const std::uint64_t kicks = h.driver.stats().kicks;
  CHECK_FALSE(h.driver.kick_prepare());
  CHECK(h.driver.stats().kicks == kicks);
  CHECK(flags_at(h.v(), 1) == staged);
}

TEST_CASE("driver: a used id >= queue size is used_id_out_of_range") {
  hostile_device h(8);
  h.publish(2);
  put_used(h.v(), 0, 8, 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_id_out_of_range);
  h.check_recovery(errc::used_id_out_of_range);
}

TEST_CASE("driver: a used id that is free is used_id_not_outstanding") {
  hostile_device h(8);
  const auto ids = h.publish(2);
  std::uint16_t unused = 0;
  while (unused == ids[0] || unused == ids[1]) ++unused;
  put_used(h.v(), 0, unused, 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_id_not_outstanding);
  h.check_recovery(errc::used_id_not_outstanding);
}

TEST_CASE("driver: a used id that is staged but not yet published is used_id_not_outstanding") {
  hostile_device h(8);
  h.publish(1);
  const std::uint32_t slot = h.next_slot;
  REQUIRE(h.driver.add_inbuf(h.arena.at(0, 8), 100 + h.issued++) == errc::ok);  // no kick
  const std::uint16_t staged = get<le>(h.v().ring[slot].id);
  put_used(h.v(), 0, staged, 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_id_not_outstanding);
  h.check_recovery(errc::used_id_not_outstanding);
}

TEST_CASE("driver: an id used twice is used_id_not_outstanding") {
  hostile_device h(8);
  const auto ids = h.publish(2);
  put_used(h.v(), 0, ids[0], 0, true);
  const auto u = h.driver.get_used();
  REQUIRE(u);
  REQUIRE(u->token == 100);
  put_used(h.v(), 1, ids[0], 0, true);  // the same id again
  REQUIRE(h.driver.get_used().error() == errc::used_id_not_outstanding);
  REQUIRE(h.driver.broken());
  std::multiset<token_t> back;  // token 100 was reaped: only 101 comes back
  h.driver.reset([&](token_t t) { back.insert(t); });
  REQUIRE(back == std::multiset<token_t>{101});
}

TEST_CASE("2.8.4 driver: a used len without WRITE is reserved: ignored, reported as 0") {
  hostile_device h(8);
  SECTION("a device-writable buffer: any len, even one over the buffer") {
    const auto ids = h.publish(2, 64);
    put_used(h.v(), 0, ids[0], 65, true, false);
    put_used(h.v(), 1, ids[1], 0xFFFFFFFFU, true, false);
    used_buffer u[2];
    REQUIRE(*h.driver.get_used(std::span<used_buffer>(u)) == 2);
    REQUIRE(u[0].token == 100);
    REQUIRE(u[0].len == 0);
    REQUIRE(u[1].token == 101);
    REQUIRE(u[1].len == 0);
  }
  SECTION("a device-readable buffer completed with the driver's own length (DPDK's vhost)") {
    const buffer frame = h.arena.at(0, 72);
    const token_t token = 7;
    REQUIRE(*h.driver.add_outbufs({&frame, 1}, {&token, 1}) == 1);
    (void)h.driver.kick_prepare();
    put_used(h.v(), 0, get<le>(h.v().ring[0].id), 72, true, false);
    const auto u = h.driver.get_used();
    REQUIRE(u);
    REQUIRE(u->token == 7);
    REQUIRE(u->len == 0);
  }
  REQUIRE_FALSE(h.driver.broken());
  REQUIRE(h.driver.stats().rejected() == 0);
}

TEST_CASE("2.8.3 device: WRITE is set in a used descriptor exactly when it wrote") {
  pair<> q(8);
  virtq_test::buffer_arena arena(4096);
  const buffer in[2] = {arena.at(0, 64), arena.at(64, 64)};
  const token_t tokens[2] = {1, 2};
  REQUIRE(*q.driver.add_inbufs(in, tokens) == 2);
  (void)q.driver.kick_prepare();
  popped_buffer p[2];
  REQUIRE(*q.device.pop_buffers(p) == 2);
  const used_entry done[2] = {{p[0].id, 40}, {p[1].id, 0}};
  REQUIRE(*q.device.complete(done) == 2);
  (void)q.device.interrupt_prepare();
  REQUIRE((flags_at(q.ring.view(), 0) & packed::desc_f_write) != 0);
  REQUIRE((flags_at(q.ring.view(), 1) & packed::desc_f_write) == 0);
  used_buffer u[2];
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 2);
  REQUIRE(u[0].len == 40);
  REQUIRE(u[1].len == 0);
}

TEST_CASE("driver: a used len larger than the writable space is used_len_too_large") {
  hostile_device h(8);
  const auto ids = h.publish(1, 64);
  put_used(h.v(), 0, ids[0], 65, true);
  REQUIRE(h.driver.get_used().error() == errc::used_len_too_large);
  h.check_recovery(errc::used_len_too_large);
}

TEST_CASE("driver: a used descriptor while nothing is outstanding is used_unexpected") {
  hostile_device h(8);
  put_used(h.v(), 0, 0, 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_unexpected);
  h.check_recovery(errc::used_unexpected);
}

TEST_CASE("driver: a used descriptor after everything was reaped is used_unexpected") {
  hostile_device h(4);
  const auto ids = h.publish(1);
  put_used(h.v(), 0, ids[0], 0, true);
  REQUIRE(h.driver.get_used());
  put_used(h.v(), 1, ids[0], 0, true);
  REQUIRE(h.driver.get_used().error() == errc::used_unexpected);
  h.issued = 0;  // the only token was reaped
  h.check_recovery(errc::used_unexpected);
}

TEST_CASE("driver: a bulk get_used keeps what it reaped before the device misbehaved") {
  hostile_device h(8);
  const auto ids = h.publish(3);
  put_used(h.v(), 1, ids[1], 0, true);  // second element first: flags order matters
  put_used(h.v(), 0, ids[0], 0, true);
  put_used(h.v(), 2, 77, 0, true);  // out of range
  std::vector<used_buffer> out(8);
  const auto n = h.driver.get_used(out);
  REQUIRE(n);
  REQUIRE(*n == 2);
  REQUIRE(h.driver.broken());
  REQUIRE(h.driver.error() == errc::used_id_out_of_range);
  std::multiset<token_t> back;
  h.driver.reset([&](token_t t) { back.insert(t); });
  REQUIRE(back == std::multiset<token_t>{102});
}
