// The device writes only what the driver made device-writable (each buffer is either
// device-readable or, with VIRTQ_DESC_F_WRITE, device-writable), and never past the writable space:
// chain::write scatters into the writable segments alone, stops where they end, and the
// device-readable bytes and the bytes around the buffers stay as the driver left them. Both
// layouts, direct and indirect chains, the single and the batch calls.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "layouts.hpp"

using namespace virtq;
using virtq_test::buffer_arena;

namespace {

constexpr std::byte readable_fill{0xA5};
constexpr std::byte guard_fill{0x5A};
constexpr std::byte written{0xEE};

bool all_are(const std::byte* p, std::size_t n, std::byte b) {
  return std::all_of(p, p + n, [b](std::byte x) { return x == b; });
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("the device writes only device-writable buffers and never past them",
                        "[chain]", virtq_test::all_layouts) {
  using Layout = TestType;
  const bool indirect = GENERATE(false, true);
  CAPTURE(indirect);
  driver_options o;
  o.indirect_max = indirect ? 4 : 0;
  o.indirect_threshold = 2;
  virtq_test::queue_pair<Layout> q(8, virtq_test::base_features<Layout>(), o);
  buffer_arena a(1024);
  // Readable 0..47 (two buffers), writable 128..143 and 160..167; everything else a guard.
  std::memset(a.data(), std::to_integer<int>(guard_fill), a.size());
  std::memset(a.data(), std::to_integer<int>(readable_fill), 48);
  const buffer out[] = {a.at(0, 32), a.at(32, 16)};
  const buffer in[] = {a.at(128, 16), a.at(160, 8)};
  REQUIRE(q.driver.add(out, in, 1) == errc::ok);
  q.driver.kick_prepare();
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(c.writable_bytes() == 24);
  const std::vector<std::byte> lots(100, written);
  CHECK(c.write(lots) == 24);             // clamped to the writable space
  CHECK(c.write(lots, 24) == 0);          // at its end: nothing
  CHECK(c.write(lots, 1ULL << 40) == 0);  // far past it: nothing, no overflow
  CHECK(c.write(std::span(lots).first(4), 22) == 2);
  CHECK(all_are(a.data(), 48, readable_fill));  // the device-readable bytes
  CHECK(all_are(a.data() + 128, 16, written));
  CHECK(all_are(a.data() + 160, 8, written));
  CHECK(all_are(a.data() + 48, 80, guard_fill));  // between and after the buffers
  CHECK(all_are(a.data() + 144, 16, guard_fill));
  CHECK(all_are(a.data() + 168, a.size() - 168, guard_fill));
  REQUIRE(q.device.complete(c, 24) == errc::ok);
  q.device.interrupt_prepare();
  const auto u = q.driver.get_used();
  REQUIRE(u);
  CHECK(u->len == 24);
}

TEMPLATE_LIST_TEST_CASE(
    "a device-readable buffer served in a batch is reported with no bytes written",
    "[chain][batch]", virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8);
  buffer_arena a(256);
  std::memset(a.data(), std::to_integer<int>(readable_fill), a.size());
  const buffer bufs[] = {a.at(0, 16), a.at(16, 16)};
  const token_t toks[] = {1, 2};
  REQUIRE(*q.driver.add_outbufs(bufs, toks) == 2);
  q.driver.kick_prepare();
  std::vector<bool> writable;
  // The handler sees each buffer as device-readable and reports what it wrote: nothing.
  REQUIRE(*q.device.serve_buffers(8, [&](const popped_buffer& b) noexcept {
    writable.push_back(b.writable);
    return 0U;
  }) == 2);
  CHECK(writable == std::vector<bool>{false, false});
  CHECK(all_are(a.data(), a.size(), readable_fill));
  q.device.interrupt_prepare();
  used_buffer u[2];
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 2);
  CHECK(u[0].len == 0);
  CHECK(u[1].len == 0);
}
