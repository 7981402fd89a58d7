// SPDX-License-Identifier: MIT
// tests/test_add_from.cpp -- add_inbufs_from (the batch add that reads its buffers from a
// buffer_source as it goes: the receive queue reposts its pool's buffers by index this way)
// against add_inbufs, on twin queue pairs: the same ring bytes after every step, the same
// counts, the same completions; and how much of the source it reads.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "layouts.hpp"
#include "property.hpp"
#include "test_packed_common.hpp"
#include "test_split_common.hpp"
#include "virtq/packed.hpp"
#include "virtq/split.hpp"

namespace {

using namespace virtq;
using virtq_test::buffer_arena;

constexpr std::uint32_t ring_size = 16;
constexpr std::uint32_t buf_len = 64;
constexpr std::uint32_t table_size = 48;  // buffers the "pool" has, more than the ring

/// A pool's buffers by index: buffer t is table[t], whole. Counts what the add read.
struct indexed_source {
  const token_t* t;
  const std::uint64_t* table;
  std::uint32_t* advanced;  // shared by the add's copies
  std::uint64_t addr() const noexcept { return table[*t]; }
  std::uint32_t len() const noexcept { return buf_len; }
  token_t token() const noexcept { return *t; }
  void advance() noexcept {
    ++t;
    ++*advanced;
  }
};
static_assert(buffer_source<indexed_source>);
static_assert(buffer_source<buffer_arrays>);

template <class Layout>
struct twins {
  using pair = virtq_test::queue_pair<Layout, default_policy>;

  explicit twins(features f) : arena(table_size * buf_len), a(ring_size, f), b(ring_size, f) {
    for (std::uint32_t t = 0; t < table_size; ++t) {
      table.push_back(arena.at(std::size_t{t} * buf_len, buf_len).addr);
    }
  }

  void check_same() const {
    const auto x = a.ring.bytes();
    const auto y = b.ring.bytes();
    const auto diff =
        static_cast<std::size_t>(std::mismatch(x.begin(), x.end(), y.begin()).first - x.begin());
    RC_ASSERT(diff == x.size());
    RC_ASSERT(a.driver.num_free() == b.driver.num_free());
    RC_ASSERT(a.driver.stats().added == b.driver.stats().added);
    RC_ASSERT(a.driver.stats().ring_full == b.driver.stats().ring_full);
  }

  /// Adds `tokens` (buffer indices) to a with add_inbufs and to b with add_inbufs_from.
  void add(const std::vector<token_t>& tokens) {
    std::vector<buffer> bufs;
    for (const token_t t : tokens)
      bufs.push_back(buffer{table[static_cast<std::size_t>(t)], buf_len});
    const auto ra = a.driver.add_inbufs(bufs, tokens);
    std::uint32_t advanced = 0;
    const auto rb = b.driver.add_inbufs_from(
        tokens.size(), indexed_source{tokens.data(), table.data(), &advanced});
    RC_ASSERT(ra.has_value() == rb.has_value());
    if (ra) {
      RC_ASSERT(*ra == *rb);
      RC_ASSERT(advanced == *rb);  // read exactly the buffers it staged
    } else {
      RC_ASSERT(ra.error() == rb.error());
      RC_ASSERT(advanced == 0u);
    }
  }

  buffer_arena arena;
  std::vector<std::uint64_t> table;
  pair a;
  pair b;
};

template <class Layout>
void run(bool in_order) {
  features f = virtq_test::base_features<Layout>();
  if (in_order) f = f.with(feature::in_order);
  twins<Layout> t(f);
  std::vector<token_t> in_device_a, in_device_b;
  std::uint32_t next = 0;
  const int steps = virtq_test::uniform(1, 60);
  for (int s = 0; s < steps; ++s) {
    switch (virtq_test::uniform(0, 3)) {
      case 0: {  // a batch, at times more than the ring has room for
        const std::uint32_t k = virtq_test::uniform<std::uint32_t>(0, ring_size + 4);
        std::vector<token_t> tokens;
        for (std::uint32_t i = 0; i < k; ++i) tokens.push_back((next + i) % table_size);
        next = (next + k) % table_size;
        t.add(tokens);
        RC_ASSERT(t.a.driver.kick_prepare() == t.b.driver.kick_prepare());
        break;
      }
      case 1: {  // the devices take what is available and complete it, in order
        const auto serve = [](auto& p) {
          chain c;
          std::vector<std::uint16_t> ids;
          while (p.device.pop(c) == errc::ok) {
            RC_ASSERT(c.writable_bytes() == buf_len);
            ids.push_back(c.id());
          }
          for (const std::uint16_t id : ids) RC_ASSERT(p.device.complete(id, 8) == errc::ok);
          (void)p.device.interrupt_prepare();
          return ids;
        };
        RC_ASSERT(serve(t.a) == serve(t.b));
        break;
      }
      default: {  // the drivers reap
        std::vector<used_buffer> ua(ring_size), ub(ring_size);
        const auto ra = t.a.driver.get_used(ua);
        const auto rb = t.b.driver.get_used(ub);
        RC_ASSERT(ra.has_value() && rb.has_value());
        RC_ASSERT(*ra == *rb);
        for (std::size_t k = 0; k < *ra; ++k) {
          RC_ASSERT(ua[k].token == ub[k].token);
          RC_ASSERT(ua[k].len == ub[k].len);
        }
        break;
      }
    }
    t.check_same();
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("add_inbufs_from stages what add_inbufs stages, and reads no buffer more",
                        "[add_from]", virtq_test::all_layouts) {
  rc::prop("any order", [] { run<TestType>(false); });
  rc::prop("IN_ORDER", [] { run<TestType>(true); });
}

TEMPLATE_LIST_TEST_CASE("add_inbufs_from on a broken queue stages nothing and reads nothing",
                        "[add_from]", virtq_test::all_layouts) {
  twins<TestType> t(virtq_test::base_features<TestType>());
  auto& q = t.b;
  const std::vector<token_t> one{0};
  std::uint32_t advanced = 0;
  REQUIRE(*q.driver.add_inbufs_from(1, indexed_source{one.data(), t.table.data(), &advanced}) == 1);
  REQUIRE(advanced == 1);
  (void)q.driver.kick_prepare();
  // A hostile device completes a chain that does not exist: the driver breaks.
  if constexpr (TestType::is_packed) {
    packed_test::put_used(q.ring.view(), 0, 99, 0, true);
    REQUIRE(q.driver.get_used().error() == errc::used_id_out_of_range);
  } else {
    store_release<little_endian>(q.ring.view().used.idx(), 2);
    REQUIRE(q.driver.get_used().error() == errc::used_idx_jump);
  }
  const std::vector<token_t> toks{1, 2};
  advanced = 0;
  const auto r =
      q.driver.add_inbufs_from(toks.size(), indexed_source{toks.data(), t.table.data(), &advanced});
  CHECK(r.error() == errc::broken);
  CHECK(advanced == 0);
  CHECK(q.driver.stats().added == 1);
}
