// A device stopped and started again over a ring in use (vhost-user's GET_VRING_BASE then
// SET_VRING_BASE, a VMM's live migration): avail_position() says where the device stopped,
// device_options resumes a new device there, and the driver's traffic carries on untouched.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <vector>

#include "layouts.hpp"

using namespace virtq;
using virtq_test::buffer_arena;

namespace {

/// Moves `n` one-buffer chains through driver and device; returns the tokens reaped in order.
template <class Driver, class Device>
std::vector<token_t> traffic(Driver& drv, Device& dev, buffer_arena& a, token_t first,
                             std::size_t n) {
  std::vector<token_t> got;
  for (std::size_t k = 0; k < n; ++k) {
    REQUIRE(drv.add_inbuf(a.at((first + k) % 8 * 64, 64), first + k) == errc::ok);
    (void)drv.kick_prepare();
    chain c;
    REQUIRE(dev.pop(c) == errc::ok);
    REQUIRE(dev.complete(c, 8) == errc::ok);
    (void)dev.interrupt_prepare();
    const result<used_buffer> u = drv.get_used();
    REQUIRE(u.has_value());
    got.push_back(u->token);
  }
  return got;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("avail_position: a device resumed where another stopped carries on",
                        "[resume]", virtq_test::all_layouts) {
  using Layout = TestType;
  using device_t = typename Layout::template device<default_policy, identity_memory>;
  // A size that is not a power of 2 for packed: positions wrap by compare-and-subtract.
  const std::uint32_t size = Layout::is_packed ? 6 : 8;
  const features f = virtq_test::base_features<Layout>();
  ring_memory<Layout> ring(size);
  identity_memory mem;
  buffer_arena a(8 * 64);
  typename Layout::template driver<default_policy> drv(ring.view(), f);

  token_t next = 0;
  auto dev = std::make_unique<device_t>(ring.view(), f, mem);
  for (std::size_t stop = 0; stop < 6; ++stop) {
    // 1..n chains, then stop the device and start another where it left off: after a few
    // rounds the positions have crossed the ring's end (packed: the wrap counter flipped).
    const std::size_t n = 1 + stop * 3 % 5;
    const std::vector<token_t> got = traffic(drv, *dev, a, next, n);
    for (std::size_t k = 0; k < n; ++k) CHECK(got[k] == next + k);
    next += n;
    const std::uint16_t pos = dev->avail_position();
    if constexpr (Layout::is_packed) {
      CHECK((pos & 0x7FFFU) == next % size);
      CHECK(((pos & 0x8000U) != 0) == ((next / size) % 2 == 0));  // 2.8.1: flips every lap
    } else {
      CHECK(pos == static_cast<std::uint16_t>(next));
    }
    device_options o;
    o.initial_index = pos;  // split
    o.packed_start = pos;   // packed
    dev = std::make_unique<device_t>(ring.view(), f, mem, o);
    CHECK(dev->avail_position() == pos);
  }
  CHECK_FALSE(drv.broken());
  CHECK_FALSE(dev->broken());
}

TEST_CASE("packed_start: an offset outside the ring is refused at construction", "[resume]") {
  const features f = virtq_test::base_features<packed_layout>();
  ring_memory<packed_layout> ring(6);
  identity_memory mem;
  device_options o;
  o.packed_start = 0x8000 | 6;  // offset 6 of a 6-descriptor ring
  CHECK_THROWS_AS((packed_device<default_policy, identity_memory>(ring.view(), f, mem, o)),
                  virtq::error);
  o.packed_start = 5;  // offset 5, wrap counter 0: a valid place to resume
  packed_device<default_policy, identity_memory> dev(ring.view(), f, mem, o);
  CHECK(dev.avail_position() == 5);
}
