// SPDX-License-Identifier: MIT
// tests/test_chain_sizes.cpp -- the drivers' batch reaps over chains of one descriptor and of
// several, both layouts, with and without IN_ORDER.
//
// While every chain in use has one descriptor (one ring slot) the drivers' batch reaps read no
// descriptor count: the next used element or descriptor is one on, and the free descriptor
// (split) goes back without following links. A chain of several switches them to reading the
// count. These cases alternate the two over many laps of a small ring, so that a count not
// kept, a descriptor given back twice or not at all, or a wrong step shows as a wrong token or
// length, a chain the device cannot pop, or a wrong num_free().
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "layouts.hpp"

using namespace virtq;

TEMPLATE_LIST_TEST_CASE("get_used(span): chains of several descriptors and of one, over many laps",
                        "[batch]", virtq_test::all_layouts) {
  using Layout = TestType;
  const bool in_order = GENERATE(false, true);
  CAPTURE(in_order);
  const features f = virtq_test::base_features<Layout>();
  virtq_test::queue_pair<Layout, default_policy> q(8, in_order ? f.with(feature::in_order) : f);
  virtq_test::buffer_arena arena(1024);
  used_buffer u[8];
  token_t next_token = 1;
  for (int round = 0; round < 24; ++round) {
    // Chains of 1, 3, 1, 2 descriptors (7 of the 8), or five of one.
    const bool mixed = round % 3 != 2;
    const std::vector<std::uint32_t> shape =
        mixed ? std::vector<std::uint32_t>{1, 3, 1, 2} : std::vector<std::uint32_t>{1, 1, 1, 1, 1};
    std::vector<token_t> added;
    for (const std::uint32_t n : shape) {
      std::vector<buffer> in;
      for (std::uint32_t k = 0; k < n; ++k) in.push_back(arena.at(64 * in.size(), 32));
      const token_t t = next_token++;
      if (n == 1 && round % 2 == 0) {
        REQUIRE(*q.driver.add_inbufs(std::span<const buffer>(in),
                                     std::span<const token_t>(&t, 1)) == 1);
      } else {
        REQUIRE(q.driver.add({}, in, t) == errc::ok);
      }
      added.push_back(t);
    }
    q.driver.kick_prepare();
    std::vector<std::uint16_t> popped;
    chain c;
    for (std::size_t k = 0; k < shape.size(); ++k) {
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(c.writable_bytes() == 32U * shape[k]);
      popped.push_back(c.id());
    }
    REQUIRE(q.device.pop(c) == errc::empty);
    std::vector<token_t> expect(added);
    if (!in_order) {
      // 2.7.8 / 2.8.9: any completion order; the last popped first, then the rest in order.
      std::rotate(popped.begin(), popped.end() - 1, popped.end());
      std::rotate(expect.begin(), expect.end() - 1, expect.end());
    }
    for (std::size_t k = 0; k < popped.size(); ++k) {
      REQUIRE(q.device.complete(popped[k], static_cast<std::uint32_t>(k + 1)) == errc::ok);
    }
    q.device.interrupt_prepare();
    REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == shape.size());
    for (std::size_t k = 0; k < shape.size(); ++k) {
      REQUIRE(u[k].token == expect[k]);
      REQUIRE(u[k].len == k + 1);
    }
    REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 0);
    REQUIRE_FALSE(q.driver.broken());
    REQUIRE(q.driver.num_free() == 8);
  }
}
