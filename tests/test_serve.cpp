// SPDX-License-Identifier: MIT
// tests/test_serve.cpp -- serve_buffers (pop and complete in one pass) against its reference,
// pop_buffers + complete(span) one chain at a time, on twin queue pairs; and the rules it
// enforces against a hostile driver and a careless caller, in both layouts.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
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
constexpr std::uint32_t max_len = 64;

/// The bytes a device reports for a buffer: a function of what it saw, so that both twins
/// report the same. `over` makes it one byte more than allowed (2.7.8.2).
std::uint32_t wrote_for(const popped_buffer& b, bool over) {
  const std::uint32_t cap = b.writable ? b.len : 0U;
  if (over) return cap + 1U;
  return cap == 0 ? 0U : (b.len * 7U + b.id) % (cap + 1U);
}

bool same(const popped_buffer& x, const popped_buffer& y) {
  return x.data == y.data && x.len == y.len && x.id == y.id && x.writable == y.writable;
}

/// Twin pairs over one arena: `a` serves with serve_buffers, `b` with pop_buffers +
/// complete(span) one chain at a time; everything else is the same call on both.
template <class Layout, class P>
struct twins {
  using pair = virtq_test::queue_pair<Layout, P>;

  explicit twins(features f)
      : f_(f), arena(ring_size * max_len), a(ring_size, f), b(ring_size, f) {}

  void check_same() const {
    const auto x = a.ring.bytes();
    const auto y = b.ring.bytes();
    RC_ASSERT(x.size() == y.size());
    // The first byte that differs (none: size), so that a failure says where.
    const auto diff =
        static_cast<std::size_t>(std::mismatch(x.begin(), x.end(), y.begin()).first - x.begin());
    RC_ASSERT(diff == x.size());
    RC_ASSERT(a.device.stats().popped == b.device.stats().popped);
    RC_ASSERT(a.device.stats().completed == b.device.stats().completed);
    RC_ASSERT(a.device.broken() == b.device.broken());
    RC_ASSERT(a.driver.broken() == b.driver.broken());
    RC_ASSERT(a.driver.num_free() == b.driver.num_free());
  }

  void add(std::uint32_t k, bool readable, std::uint32_t seed) {
    k = std::min(k, a.driver.num_free());
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::uint32_t i = 0; i < k; ++i) {
      const std::uint32_t slot = (next_buf_ + i) % ring_size;
      // Now and then an empty buffer (not translated: data null).
      const std::uint32_t len = (seed + i) % 11 == 0 ? 0U : 1U + (seed * 31U + i * 17U) % max_len;
      bufs.push_back(arena.at(std::size_t{slot} * max_len, len));
      toks.push_back(token_++);
    }
    next_buf_ = (next_buf_ + k) % ring_size;
    const auto ra = readable ? a.driver.add_outbufs(bufs, toks) : a.driver.add_inbufs(bufs, toks);
    const auto rb = readable ? b.driver.add_outbufs(bufs, toks) : b.driver.add_inbufs(bufs, toks);
    RC_ASSERT(ra.has_value() == rb.has_value());
    if (ra) RC_ASSERT(*ra == *rb);
    RC_ASSERT(a.driver.kick_prepare() == b.driver.kick_prepare());
  }

  /// Serve up to `m`; the `over_at`-th buffer (if any) is over-stated.
  void serve(std::uint32_t m, std::optional<std::uint32_t> over_at) {
    std::vector<popped_buffer> seen;
    const auto ra = a.device.serve_buffers(m, [&](const popped_buffer& pb) noexcept {
      const bool over = over_at && *over_at == seen.size();
      seen.push_back(pb);
      return wrote_for(pb, over);
    });
    // The reference.
    std::optional<result<std::size_t>> rb;
    std::vector<popped_buffer> popped;
    if (f_.has(feature::in_order) && !held.empty()) {
      rb = errc::invalid_argument;
    } else {
      std::size_t n = 0;
      while (n < m) {
        popped_buffer pb;
        const auto got = b.device.pop_buffers(std::span(&pb, 1));
        if (!got) {
          rb = n == 0 ? got : result<std::size_t>(n);
          break;
        }
        if (*got == 0) break;
        const bool over = over_at && *over_at == popped.size();
        popped.push_back(pb);
        const used_entry u{pb.id, wrote_for(pb, over)};
        const auto done = b.device.complete(std::span(&u, 1));
        if (!done) {
          RC_ASSERT(done.error() == errc::invalid_argument);
          held.push_back(pb);  // over-stated: it stays held
          rb = n == 0 ? result<std::size_t>(errc::invalid_argument) : result<std::size_t>(n);
          break;
        }
        ++n;
      }
      if (!rb) rb = result<std::size_t>(n);
    }
    RC_ASSERT(ra.has_value() == rb->has_value());
    if (ra) {
      RC_ASSERT(*ra == **rb);
    } else {
      RC_ASSERT(ra.error() == rb->error());
    }
    RC_ASSERT(seen.size() == popped.size());
    for (std::size_t i = 0; i < seen.size(); ++i) RC_ASSERT(same(seen[i], popped[i]));
  }

  /// Both devices pop up to `m` and keep them.
  void hold(std::uint32_t m) {
    std::vector<popped_buffer> x(m);
    std::vector<popped_buffer> y(m);
    const auto ra = a.device.pop_buffers(x);
    const auto rb = b.device.pop_buffers(y);
    RC_ASSERT(ra.has_value() == rb.has_value());
    if (!ra) return;
    RC_ASSERT(*ra == *rb);
    for (std::size_t i = 0; i < *ra; ++i) {
      RC_ASSERT(same(x[i], y[i]));
      held.push_back(x[i]);
    }
  }

  /// Both devices complete the `k` oldest held chains.
  void complete_held(std::uint32_t k) {
    k = std::min<std::uint32_t>(k, static_cast<std::uint32_t>(held.size()));
    std::vector<used_entry> done;
    for (std::uint32_t i = 0; i < k; ++i) done.push_back({held[i].id, wrote_for(held[i], false)});
    const auto ra = a.device.complete(done);
    const auto rb = b.device.complete(done);
    RC_ASSERT(ra.has_value() == rb.has_value());
    if (!ra) return;
    RC_ASSERT(*ra == *rb);
    held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(*ra));
  }

  void interrupt() { RC_ASSERT(a.device.interrupt_prepare() == b.device.interrupt_prepare()); }

  void reap() {
    used_buffer x[ring_size];
    used_buffer y[ring_size];
    const auto ra = a.driver.get_used(x);
    const auto rb = b.driver.get_used(y);
    RC_ASSERT(ra.has_value() == rb.has_value());
    if (!ra) return;
    RC_ASSERT(*ra == *rb);
    for (std::size_t i = 0; i < *ra; ++i) {
      RC_ASSERT(x[i].token == y[i].token);
      RC_ASSERT(x[i].len == y[i].len);
    }
  }

  void notifications(bool on) {
    if (on) {
      RC_ASSERT(a.device.enable_notifications() == b.device.enable_notifications());
    } else {
      a.device.disable_notifications();
      b.device.disable_notifications();
    }
  }

  features f_;
  buffer_arena arena;
  pair a;
  pair b;
  std::vector<popped_buffer> held;  ///< in pop order
  std::uint32_t next_buf_ = 0;
  token_t token_ = 1;
};

template <class Layout, class P>
void serve_matches_reference(features f) {
  twins<Layout, P> t(f);
  const auto steps = virtq_test::uniform(1, 80);
  for (int s = 0; s < steps; ++s) {
    switch (virtq_test::uniform(0, 8)) {
      case 0:
      case 1:
        t.add(virtq_test::uniform<std::uint32_t>(1, ring_size + 1), virtq_test::uniform(0, 5) == 0,
              virtq_test::uniform<std::uint32_t>(0, 1000));
        break;
      case 2:
      case 3: {
        const bool over = virtq_test::uniform(0, 6) == 0;
        t.serve(virtq_test::uniform<std::uint32_t>(0, ring_size + 2),
                over ? std::optional<std::uint32_t>(virtq_test::uniform<std::uint32_t>(0, 6))
                     : std::nullopt);
        break;
      }
      case 4:
        t.hold(virtq_test::uniform<std::uint32_t>(1, 4));
        break;
      case 5:
        t.complete_held(virtq_test::uniform<std::uint32_t>(1, 5));
        break;
      case 6:
        t.interrupt();
        t.reap();
        break;
      default:
        t.notifications(*rc::gen::arbitrary<bool>());
        break;
    }
    t.check_same();
  }
  // Drain: everything held is completed, published and reaped on both.
  t.complete_held(ring_size);
  t.serve(ring_size, std::nullopt);
  t.interrupt();
  t.reap();
  t.check_same();
  RC_ASSERT(t.a.driver.num_free() == ring_size);
}

template <class Layout>
void serve_properties() {
  const features f = virtq_test::base_features<Layout>();
  rc::prop("event index", [&] { serve_matches_reference<Layout, virtq_test::event_policy>(f); });
  rc::prop("no suppression", [&] {
    serve_matches_reference<Layout, virtq_test::none_policy>(
        virtq_test::features_for<Layout, virtq_test::none_policy>());
  });
  rc::prop("flags", [&] {
    serve_matches_reference<Layout, virtq_test::flags_policy>(
        virtq_test::features_for<Layout, virtq_test::flags_policy>());
  });
  rc::prop("checked mode", [&] { serve_matches_reference<Layout, virtq_test::checked_policy>(f); });
  rc::prop("IN_ORDER (2.7.9 / 2.8.20)", [&] {
    serve_matches_reference<Layout, virtq_test::event_policy>(f.with(feature::in_order));
  });
}

}  // namespace

TEST_CASE("serve_buffers gives the outcomes of pop_buffers + complete, split",
          "[serve][split][property]") {
  serve_properties<split_layout>();
}

TEST_CASE("serve_buffers gives the outcomes of pop_buffers + complete, packed",
          "[serve][packed][property]") {
  serve_properties<packed_layout>();
}

// --- the caller's errors, both layouts ---------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("serve_buffers: f over-stating a buffer leaves it held (2.7.8.2)",
                        "[serve]", virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8);
  buffer_arena arena(8 * max_len);
  const buffer bufs[] = {arena.at(0, 32), arena.at(64, 32), arena.at(128, 32)};
  const token_t toks[] = {10, 11, 12};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 3);
  q.driver.kick_prepare();

  SECTION("the first: invalid_argument, nothing served") {
    std::optional<popped_buffer> kept;
    const auto r = q.device.serve_buffers(8, [&](const popped_buffer& b) noexcept {
      kept = b;
      return 33U;  // one over the 32 writable bytes
    });
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::invalid_argument);
    CHECK_FALSE(q.device.broken());
    CHECK(q.device.stats().popped == 1);
    CHECK(q.device.stats().completed == 0);
    // Held: complete(id, len) takes it, with a length it can hold.
    REQUIRE(kept);
    CHECK(q.device.complete(kept->id, 33) == errc::invalid_argument);
    CHECK(q.device.complete(kept->id, 32) == errc::ok);
    q.device.interrupt_prepare();
    used_buffer out[4];
    REQUIRE(*q.driver.get_used(out) == 1);
    CHECK(out[0].token == 10);
    CHECK(out[0].len == 32);
  }
  SECTION("a later one: the count before it; the rest stay available") {
    int calls = 0;
    const auto r = q.device.serve_buffers(
        8, [&](const popped_buffer&) noexcept { return ++calls == 2 ? 40U : 5U; });
    REQUIRE(r);
    CHECK(*r == 1);
    CHECK(calls == 2);
    CHECK(q.device.stats().popped == 2);
    CHECK(q.device.stats().completed == 1);
    // The third is still available; serving continues (not IN_ORDER).
    CHECK(*q.device.serve_buffers(8, [](const popped_buffer&) noexcept { return 1U; }) == 1);
    q.device.interrupt_prepare();
    used_buffer out[4];
    REQUIRE(*q.driver.get_used(out) == 2);
    CHECK(out[0].token == 10);
    CHECK(out[1].token == 12);
  }
}

TEMPLATE_LIST_TEST_CASE("serve_buffers: a device-readable buffer reports 0 bytes (2.7.8.2)",
                        "[serve]", virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8);
  buffer_arena arena(8 * max_len);
  const buffer bufs[] = {arena.at(0, 32)};
  const token_t toks[] = {7};
  REQUIRE(*q.driver.add_outbufs(bufs, toks) == 1);
  q.driver.kick_prepare();
  bool writable = true;
  const auto r = q.device.serve_buffers(8, [&](const popped_buffer& b) noexcept {
    writable = b.writable;
    return 1U;
  });
  CHECK_FALSE(writable);
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::invalid_argument);
  CHECK_FALSE(q.device.broken());
}

TEMPLATE_LIST_TEST_CASE("serve_buffers with IN_ORDER: held chains are used first (2.7.9)",
                        "[serve]", virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8, virtq_test::base_features<Layout>().with(feature::in_order));
  buffer_arena arena(8 * max_len);
  const buffer bufs[] = {arena.at(0, 32), arena.at(64, 32)};
  const token_t toks[] = {1, 2};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 2);
  q.driver.kick_prepare();
  popped_buffer first[1];
  REQUIRE(*q.device.pop_buffers(first) == 1);
  int calls = 0;
  const auto f = [&](const popped_buffer&) noexcept {
    ++calls;
    return 0U;
  };
  const auto r = q.device.serve_buffers(8, f);
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::invalid_argument);
  CHECK(calls == 0);
  CHECK(q.device.stats().popped == 1);
  // Once the held chain is used, serving goes on in order.
  REQUIRE(q.device.complete(first[0].id, 3) == errc::ok);
  CHECK(*q.device.serve_buffers(8, f) == 1);
  q.device.interrupt_prepare();
  used_buffer out[4];
  REQUIRE(*q.driver.get_used(out) == 2);
  CHECK(out[0].token == 1);
  CHECK(out[0].len == 3);
  CHECK(out[1].token == 2);
}

TEMPLATE_LIST_TEST_CASE("serve_buffers: stops before a NEXT chain; pop(chain&) walks it (2.7.5)",
                        "[serve]", virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8);
  buffer_arena arena(8 * max_len);
  const buffer one[] = {arena.at(0, 32)};
  const token_t t1[] = {1};
  REQUIRE(*q.driver.add_inbufs(one, t1) == 1);
  const buffer two[] = {arena.at(64, 16), arena.at(128, 16)};
  REQUIRE(q.driver.add({}, two, 2) == errc::ok);
  REQUIRE(*q.driver.add_inbufs(std::span(one), std::span(t1)) == 1);
  q.driver.kick_prepare();
  const auto f = [](const popped_buffer& b) noexcept { return b.len; };
  CHECK(*q.device.serve_buffers(8, f) == 1);
  CHECK(*q.device.serve_buffers(8, f) == 0);  // the two-descriptor chain is next
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  CHECK(c.writable_bytes() == 32);
  REQUIRE(q.device.complete(c, 20) == errc::ok);
  CHECK(*q.device.serve_buffers(8, f) == 1);
  q.device.interrupt_prepare();
  used_buffer out[4];
  REQUIRE(*q.driver.get_used(out) == 3);
  CHECK(out[0].token == 1);
  CHECK(out[1].token == 2);
  CHECK(out[1].len == 20);
  CHECK(out[2].token == 1);
}

// A VMM's device: buffers in two regions of a guest_memory table, translated through the
// device's own guest_memory_cursor (which remembers the last region found). Each buffer must
// land at its own region's host bytes, the cursor's region changing from buffer to buffer;
// a range across a region's end is refused as the table refuses it (2.7.5 / 2.8.6).
TEMPLATE_LIST_TEST_CASE("serve_buffers through a guest_memory_cursor: two regions (2.7.5)",
                        "[serve][memory]", virtq_test::all_layouts) {
  using Layout = TestType;
  constexpr std::uint64_t low = 0x10000;
  constexpr std::uint64_t high = 0x1'0000'0000;
  aligned_buffer a(4096, 64);
  aligned_buffer b(4096, 64);
  guest_memory table;
  table.add_region(low, a.size(), a.data());
  table.add_region(high, b.size(), b.data());
  const guest_memory_cursor cursor(table);
  const features f = virtq_test::base_features<Layout>();
  ring_memory<Layout> ring(8);
  typename Layout::template driver<default_policy> drv(ring.view(), f, driver_options{});
  typename Layout::template device<default_policy, guest_memory_cursor> dev(ring.view(), f, cursor);
  // Alternating regions, then twice the same, then a buffer ending at its region's end.
  const buffer bufs[] = {{low, 64},        {high, 64},       {low + 64, 64},
                         {high + 128, 64}, {high + 192, 64}, {low + 4096 - 32, 32}};
  const token_t toks[] = {0, 1, 2, 3, 4, 5};
  {
    const auto got = drv.add_inbufs(bufs, toks);
    REQUIRE(got);
    REQUIRE(*got == 6);
  }
  drv.kick_prepare();
  std::vector<std::byte*> seen;
  const auto fill = [&](const popped_buffer& p) noexcept {
    seen.push_back(p.data);
    std::memset(p.data, 0x40 + static_cast<int>(seen.size()), p.len);
    return p.len;
  };
  {
    const auto got = dev.serve_buffers(8, fill);
    REQUIRE(got);
    REQUIRE(*got == 6);
  }
  const std::byte* const want[] = {a.data(),       b.data(),       a.data() + 64,
                                   b.data() + 128, b.data() + 192, a.data() + 4096 - 32};
  REQUIRE(seen.size() == 6);
  for (std::size_t k = 0; k < 6; ++k) {
    CAPTURE(k);
    CHECK(seen[k] == want[k]);
    CHECK(want[k][0] == std::byte{static_cast<unsigned char>(0x41 + k)});
  }
  dev.interrupt_prepare();
  used_buffer used[6];
  {
    const auto got = drv.get_used(std::span(used));
    REQUIRE(got);
    REQUIRE(*got == 6);
  }

  // One byte past the low region's end: crosses_region_end, the queue broken, f not called.
  const buffer across[] = {{low + 4096 - 32, 33}};
  const token_t tok[] = {6};
  {
    const auto got = drv.add_inbufs(across, tok);
    REQUIRE(got);
    REQUIRE(*got == 1);
  }
  drv.kick_prepare();
  seen.clear();
  const auto r = dev.serve_buffers(8, fill);
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::crosses_region_end);
  CHECK(seen.empty());
  CHECK(dev.broken());
}

TEMPLATE_LIST_TEST_CASE("serve_buffers on a broken queue says broken", "[serve]",
                        virtq_test::all_layouts) {
  using Layout = TestType;
  virtq_test::queue_pair<Layout> q(8);
  // A hostile driver breaks the queue with an impossible state (split: avail idx jump, 2.7.6;
  // packed: AVAIL == USED == the device's wrap, 2.8.1).
  if constexpr (Layout::is_packed) {
    const auto& v = q.ring.view();
    store_release<little_endian>(v.ring[0].flags, packed::used_bits(true));
  } else {
    store_release<little_endian>(q.ring.view().avail.idx(), std::uint16_t{9});
  }
  int calls = 0;
  const auto f = [&](const popped_buffer&) noexcept {
    ++calls;
    return 0U;
  };
  const auto r = q.device.serve_buffers(4, f);
  REQUIRE_FALSE(r);
  CHECK(r.error() == (Layout::is_packed ? errc::packed_bad_flags : errc::avail_idx_jump));
  CHECK(q.device.broken());
  CHECK(q.device.serve_buffers(4, f).error() == errc::broken);
  CHECK(calls == 0);
}

// --- a hostile driver: split ---------------------------------------------------------------------

namespace {

using split_test::guest_base;
using split_test::guest_size;
using LE = little_endian;

/// serve_buffers with f = "the whole buffer", counting f's calls, and what a fatal peer error
/// must leave: the count served before it (or the errc), a broken queue naming the rule, and f
/// never called for the bad chain. Self has a `device`.
template <class Self>
struct serving {
  result<std::size_t> serve(std::size_t max = 8) {
    return static_cast<Self&>(*this).device.serve_buffers(max,
                                                          [this](const popped_buffer& b) noexcept {
                                                            ++calls;
                                                            return b.writable ? b.len : 0U;
                                                          });
  }
  void expect(result<std::size_t> got, std::size_t served, errc e) {
    const auto& device = static_cast<Self&>(*this).device;
    if (served == 0) {
      REQUIRE_FALSE(got);
      CHECK(got.error() == e);
    } else {
      REQUIRE(got);
      CHECK(*got == served);
    }
    CHECK(calls == static_cast<int>(served));
    CHECK(device.broken());
    CHECK(device.error() == e);
    CHECK(device.stats().rejects[static_cast<std::size_t>(e)] == 1);
    CHECK(serve().error() == errc::broken);
  }
  int calls = 0;
};

/// A split device fed by hand-written avail entries (tests/test_split_common.hpp).
struct split_hand : split_test::hand, serving<split_hand> {
  using hand::hand;
};

}  // namespace

TEST_CASE("serve_buffers, hostile split driver: head index >= queue size mid-batch (2.7.6)",
          "[serve][split][hostile]") {
  split_hand h;
  h.set(0, guest_base, 64, split::desc_f_write);
  h.offer(0);
  h.offer(8);
  h.publish();
  h.expect(h.serve(), 1, errc::desc_index_out_of_range);
}

TEST_CASE("serve_buffers, hostile split driver: a held head offered again (2.7.13.1)",
          "[serve][split][hostile]") {
  split_hand h;
  h.set(0, guest_base, 64, split::desc_f_write);
  h.set(1, guest_base + 64, 64, split::desc_f_write);
  h.offer(0);
  h.publish();
  popped_buffer held[1];
  REQUIRE(*h.device.pop_buffers(held) == 1);
  h.offer(1);
  h.offer(0);  // still held by the device
  h.publish();
  h.expect(h.serve(), 1, errc::state_violation);
}

TEST_CASE(
    "serve_buffers, hostile split driver: avail idx moved by more than the queue size (2.7.6)",
    "[serve][split][hostile]") {
  split_hand h;
  h.next_avail = 9;
  h.publish();
  h.expect(h.serve(), 0, errc::avail_idx_jump);
}

TEST_CASE("serve_buffers, hostile split driver: buffers outside guest memory (2.7.5)",
          "[serve][split][hostile]") {
  SECTION("out of range") {
    split_hand h;
    h.set(0, guest_base, 64, split::desc_f_write);
    h.set(1, guest_base + guest_size, 64, split::desc_f_write);
    h.offer(0);
    h.offer(1);
    h.publish();
    h.expect(h.serve(), 1, errc::address_out_of_range);
  }
  SECTION("crossing the region's end") {
    split_hand h;
    h.set(0, guest_base + guest_size - 32, 64, split::desc_f_write);
    h.offer(0);
    h.publish();
    h.expect(h.serve(), 0, errc::crosses_region_end);
  }
  SECTION("wrapping past 2^64") {
    split_hand h;
    h.set(0, ~std::uint64_t{0} - 8, 64, split::desc_f_write);
    h.offer(0);
    h.publish();
    h.expect(h.serve(), 0, errc::address_overflow);
  }
}

TEST_CASE("serve_buffers, split: an empty buffer is served untranslated (2.7.5)",
          "[serve][split]") {
  split_hand h;
  h.set(0, 0xdead0000, 0, split::desc_f_write);  // no guest memory there: never translated
  h.offer(0);
  h.publish();
  std::byte* data = reinterpret_cast<std::byte*>(1);
  const auto r = h.device.serve_buffers(8, [&](const popped_buffer& b) noexcept {
    data = b.data;
    return 0U;
  });
  REQUIRE(r);
  CHECK(*r == 1);
  CHECK(data == nullptr);
  CHECK_FALSE(h.device.broken());
}

TEST_CASE(
    "serve_buffers, split: a head offered twice in one batch is served twice and the "
    "driver refuses the second used element (2.7.8)",
    "[serve][split][hostile]") {
  // The documented limit: with nothing held, the device keeps no record of a chain it serves,
  // so the duplicate reaches the driver, whose reaping is the check (2.7.8: an id it did not
  // make available, or one already used).
  virtq_test::queue_pair<split_layout> q(8);
  buffer_arena arena(8 * max_len);
  const buffer bufs[] = {arena.at(0, 32)};
  const token_t toks[] = {5};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 1);
  q.driver.kick_prepare();
  // The driver's one head, offered a second time behind its back.
  const auto& v = q.ring.view();
  const std::uint16_t head = get<LE>(v.avail.ring(0));
  put<LE>(v.avail.ring(1), head);
  store_release<LE>(v.avail.idx(), std::uint16_t{2});
  CHECK(*q.device.serve_buffers(8, [](const popped_buffer&) noexcept { return 1U; }) == 2);
  q.device.interrupt_prepare();
  // Two used elements for one chain in flight: the driver refuses the used idx before reading
  // either (2.7.8: the device cannot use more chains than the driver made available).
  used_buffer out[4];
  const auto got = q.driver.get_used(out);
  REQUIRE_FALSE(got);
  CHECK(got.error() == errc::used_idx_jump);
  CHECK(q.driver.broken());
}

TEST_CASE("serve_buffers, split, EVENT_IDX: avail_event follows the served chains (2.7.10)",
          "[serve][split]") {
  virtq_test::queue_pair<split_layout> q(8);
  buffer_arena arena(8 * max_len);
  REQUIRE_FALSE(q.device.enable_notifications());
  const buffer bufs[] = {arena.at(0, 32), arena.at(64, 32), arena.at(128, 32)};
  const token_t toks[] = {1, 2, 3};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 3);
  CHECK(q.driver.kick_prepare());
  CHECK(*q.device.serve_buffers(2, [](const popped_buffer&) noexcept { return 0U; }) == 2);
  CHECK(load_relaxed<LE>(q.ring.view().used.avail_event()) == 2);
}

// --- a hostile driver: packed --------------------------------------------------------------------

namespace {

/// A packed device over guest memory fed by hand-written descriptors.
struct packed_hand : serving<packed_hand> {
  explicit packed_hand(features f = virtq_test::base_features<packed_layout>())
      : ring(8), guest(guest_size, 64), device(ring.view(), f, mem) {
    mem.add_region(guest_base, guest_size, guest.data());
  }
  /// A one-descriptor chain at `slot`, available in the first lap.
  void offer(std::uint32_t slot, std::uint64_t addr, std::uint32_t len, std::uint16_t id,
             std::uint16_t extra = packed::desc_f_write) const {
    packed_test::put_desc(ring.view(), slot, addr, len, id,
                          static_cast<std::uint16_t>(packed::avail_bits(true) | extra));
  }

  ring_memory<packed_layout> ring;
  aligned_buffer guest;
  guest_memory mem;
  packed_device<default_policy, guest_memory> device;
};

}  // namespace

TEST_CASE("serve_buffers, hostile packed driver: buffer id >= queue size mid-batch (2.8.4)",
          "[serve][packed][hostile]") {
  packed_hand h;
  h.offer(0, guest_base, 64, 0);
  h.offer(1, guest_base + 64, 64, 8);
  h.expect(h.serve(), 1, errc::packed_bad_id);
}

TEST_CASE("serve_buffers, hostile packed driver: an id in flight offered again (2.8.4)",
          "[serve][packed][hostile]") {
  packed_hand h;
  h.offer(0, guest_base, 64, 3);
  popped_buffer held[1];
  REQUIRE(*h.device.pop_buffers(held) == 1);
  h.offer(1, guest_base + 64, 64, 4);
  h.offer(2, guest_base + 128, 64, 3);  // still in flight
  h.expect(h.serve(), 1, errc::packed_bad_id);
}

TEST_CASE("serve_buffers, hostile packed driver: AVAIL == USED == the device's wrap (2.8.1)",
          "[serve][packed][hostile]") {
  packed_hand h;
  h.offer(0, guest_base, 64, 0);
  packed_test::put_desc(h.ring.view(), 1, guest_base, 64, 1, packed::used_bits(true));
  h.expect(h.serve(), 1, errc::packed_bad_flags);
}

TEST_CASE("serve_buffers, hostile packed driver: buffers outside guest memory (2.8.6, 2.7.5)",
          "[serve][packed][hostile]") {
  SECTION("out of range") {
    packed_hand h;
    h.offer(0, guest_base, 64, 0);
    h.offer(1, guest_base + guest_size, 64, 1);
    h.expect(h.serve(), 1, errc::address_out_of_range);
  }
  SECTION("wrapping past 2^64") {
    packed_hand h;
    h.offer(0, ~std::uint64_t{0} - 8, 64, 0);
    h.expect(h.serve(), 0, errc::address_overflow);
  }
}

TEST_CASE(
    "serve_buffers, packed: used descriptors in place, the first published last (2.8.9, "
    "2.8.21.2)",
    "[serve][packed]") {
  packed_hand h;
  h.offer(0, guest_base, 64, 5);
  h.offer(1, guest_base + 64, 64, 6, 0);  // device-readable
  const auto r = h.device.serve_buffers(
      8, [](const popped_buffer& b) noexcept { return b.writable ? 10U : 0U; });
  REQUIRE(r);
  CHECK(*r == 2);
  const auto& v = h.ring.view();
  // Before interrupt_prepare the first still reads available: the driver cannot pass it.
  CHECK(packed::is_avail(packed_test::flags_at(v, 0), true));
  // The second is used, without WRITE: it wrote nothing (2.8.3).
  CHECK(packed_test::flags_at(v, 1) == packed::used_bits(true));
  h.device.interrupt_prepare();
  CHECK(packed_test::flags_at(v, 0) ==
        static_cast<std::uint16_t>(packed::used_bits(true) | packed::desc_f_write));
  CHECK(get<LE>(v.ring[0].id) == 5);
  CHECK(get<LE>(v.ring[0].len) == 10);
  CHECK(get<LE>(v.ring[1].id) == 6);
}

TEST_CASE("serve_buffers, packed: a wrapping batch flips the used wrap counter (2.8.1)",
          "[serve][packed]") {
  virtq_test::queue_pair<packed_layout> q(8);
  buffer_arena arena(8 * max_len);
  std::vector<buffer> bufs;
  std::vector<token_t> toks;
  for (std::uint32_t i = 0; i < 8; ++i) {
    bufs.push_back(arena.at(std::size_t{i} * max_len, 32));
    toks.push_back(i);
  }
  const auto f = [](const popped_buffer& b) noexcept { return b.len; };
  used_buffer out[8];
  for (int lap = 0; lap < 5; ++lap) {
    // 5 per round: batches cross the ring's end in most rounds.
    REQUIRE(*q.driver.add_inbufs(std::span(bufs).first(5), std::span(toks).first(5)) == 5);
    q.driver.kick_prepare();
    REQUIRE(*q.device.serve_buffers(8, f) == 5);
    q.device.interrupt_prepare();
    REQUIRE(*q.driver.get_used(out) == 5);
    for (std::uint32_t i = 0; i < 5; ++i) CHECK(out[i].token == i);
  }
  CHECK_FALSE(q.device.broken());
  CHECK_FALSE(q.driver.broken());
}
