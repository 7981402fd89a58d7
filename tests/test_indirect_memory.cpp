// SPDX-License-Identifier: MIT
// tests/test_indirect_memory.cpp -- driver_options::indirect_memory: the indirect tables in
// memory the caller provides (and the device can see), both layouts.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "layouts.hpp"
#include "virtq/memory.hpp"
#include "virtq/packed.hpp"
#include "virtq/split.hpp"

namespace {

using namespace virtq;

constexpr std::uint32_t ring_size = 8;
constexpr std::uint32_t indirect_max = 4;
constexpr std::uint64_t guest_base = 0x40000;
constexpr std::size_t table_bytes = std::size_t{ring_size} * indirect_max * 16;
constexpr std::size_t buffer_area = 4096;

/// One region of guest memory holding the tables (first) and the buffers (after them), as a
/// user-space driver over vhost-user lays out its shared region; the device translates it.
struct shared_region {
  shared_region() : mem(table_bytes + buffer_area, 64) {
    map.add_region(guest_base, mem.size(), mem.data());
  }
  std::span<std::byte> tables() const { return {mem.data(), table_bytes}; }
  std::uint64_t buffer(std::size_t off) const { return guest_base + table_bytes + off; }
  std::byte* host(std::uint64_t guest) const { return mem.data() + (guest - guest_base); }

  /// driver_options::to_guest for this region.
  static result<std::uint64_t> to_guest(const void* host, void* ctx) {
    const auto* r = static_cast<const shared_region*>(ctx);
    const auto* p = static_cast<const std::byte*>(host);
    if (p < r->mem.data() || p >= r->mem.data() + r->mem.size()) {
      return errc::address_out_of_range;
    }
    return guest_base + static_cast<std::uint64_t>(p - r->mem.data());
  }

  aligned_buffer mem;
  guest_memory map;
};

driver_options with_tables(shared_region& r, std::span<std::byte> tables) {
  driver_options o;
  o.indirect_max = indirect_max;
  o.indirect_threshold = 2;
  o.to_guest = &shared_region::to_guest;
  o.to_guest_ctx = &r;
  o.indirect_memory = tables;
  return o;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "indirect_memory: the tables live where the caller put them (2.7.5.3, "
    "2.8.7)",
    "[indirect]", virtq_test::all_layouts) {
  using Layout = TestType;
  shared_region r;
  const features f = virtq_test::base_features<Layout>();
  ring_memory<Layout> ring(ring_size);
  typename Layout::template driver<default_policy> drv(ring.view(), f, with_tables(r, r.tables()));
  typename Layout::template device<default_policy, guest_memory> dev(ring.view(), f, r.map);

  // A three-buffer chain goes through a table (threshold 2): the device can read it only if
  // the table is in the shared region, at the guest address to_guest gave.
  const buffer out[] = {{r.buffer(0), 8}};
  const buffer in[] = {{r.buffer(64), 16}, {r.buffer(128), 32}};
  std::memcpy(r.host(r.buffer(0)), "request", 8);
  REQUIRE(drv.add(out, in, 77) == errc::ok);
  drv.kick_prepare();
  bool tables_written = false;
  for (std::byte b : r.tables()) tables_written |= b != std::byte{0};
  CHECK(tables_written);

  chain c;
  REQUIRE(dev.pop(c) == errc::ok);
  CHECK(c.descriptors() == 3);
  CHECK(c.readable_bytes() == 8);
  CHECK(c.writable_bytes() == 48);
  char req[8];
  REQUIRE(c.read(std::as_writable_bytes(std::span(req))) == 8);
  CHECK(std::memcmp(req, "request", 8) == 0);
  const char reply[] = "a reply of 20 bytes";
  REQUIRE(c.write(std::as_bytes(std::span(reply)).first(20)) == 20);
  REQUIRE(dev.complete(c, 20) == errc::ok);
  dev.interrupt_prepare();
  const auto u = drv.get_used();
  REQUIRE(u);
  CHECK(u->token == 77);
  CHECK(u->len == 20);
  CHECK(std::memcmp(r.host(r.buffer(64)), reply, 16) == 0);
  CHECK(std::memcmp(r.host(r.buffer(128)), reply + 16, 4) == 0);
}

TEMPLATE_LIST_TEST_CASE("indirect_memory: too small or misaligned is the caller's error",
                        "[indirect]", virtq_test::all_layouts) {
  using Layout = TestType;
  shared_region r;
  const features f = virtq_test::base_features<Layout>();
  ring_memory<Layout> ring(ring_size);
  using driver_t = typename Layout::template driver<default_policy>;
  const auto refused = [&](std::span<std::byte> tables) {
    try {
      driver_t drv(ring.view(), f, with_tables(r, tables));
    } catch (const virtq::error& e) {
      return e.value() == errc::invalid_argument;
    }
    return false;
  };
  CHECK(refused(r.tables().first(table_bytes - 16)));
  CHECK(refused(std::span(r.mem.data() + 8, table_bytes)));
  // Exactly Queue Size x indirect_max x 16 bytes, aligned: accepted.
  CHECK_NOTHROW(driver_t(ring.view(), f, with_tables(r, r.tables())));
}

TEMPLATE_LIST_TEST_CASE("indirect_memory: to_guest refusing the memory fails construction",
                        "[indirect]", virtq_test::all_layouts) {
  using Layout = TestType;
  shared_region r;
  aligned_buffer elsewhere(table_bytes, 64);  // not in the shared region
  const features f = virtq_test::base_features<Layout>();
  ring_memory<Layout> ring(ring_size);
  using driver_t = typename Layout::template driver<default_policy>;
  try {
    driver_t drv(ring.view(), f, with_tables(r, elsewhere.span()));
    FAIL("constructed with tables the device cannot see");
  } catch (const virtq::error& e) {
    CHECK(e.value() == errc::address_out_of_range);
  }
}
