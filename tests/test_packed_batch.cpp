// SPDX-License-Identifier: MIT
// The packed ring's batch calls: packed_driver::add_inbufs / add_outbufs and packed_device::
// pop_buffers / complete(span). A property test runs random interleavings of batch and single
// calls on one pair against single calls only (the general add(), pop(chain&), get_used()) on an
// identical second pair: same results, same statistics, and the same ring bytes after every
// step. Named cases cover each contract and each rule a hostile peer can break through them.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {

// ---------------------------------------------------------------------------------------------
// The property: batch calls == single calls
// ---------------------------------------------------------------------------------------------

/// The twin pairs with the model of this test: chains popped and not completed, tokens out.
template <class P>
struct twin : twin_pairs<P, twin<P>> {
  using base = twin_pairs<P, twin<P>>;
  using base::a;
  using base::b;
  using base::size;

  twin(std::uint32_t ring_size, features f)
      : base(ring_size, f), in_order(f.has(feature::in_order)) {}

  bool in_order;
  struct popped {
    std::uint16_t id;
    std::uint32_t writable;  // the bound for its used len
  };
  std::vector<popped> held;  ///< popped and not completed, in pop order (the same in a and b)
  std::set<token_t> out;     ///< tokens added and not reaped

  /// The shared checks, and the statistics of the suppression and full-ring paths as well.
  void check_same() const {
    base::check_same();
    const queue_stats& x = a.driver.stats();
    const queue_stats& y = b.driver.stats();
    RC_ASSERT(x.ring_full == y.ring_full);
    RC_ASSERT(x.min_free == y.min_free);
    RC_ASSERT(x.kicks_suppressed == y.kicks_suppressed);
    RC_ASSERT(a.device.stats().interrupts_suppressed == b.device.stats().interrupts_suppressed);
  }

  void add(bool batch) {
    for (const token_t t : base::add_ones(batch)) out.insert(t);
  }

  void pop(bool batch) {
    const auto k = batch ? virtq_test::uniform<std::uint32_t>(0, size() + 3) : 1U;
    std::vector<popped_buffer> got(k);
    std::size_t n = 0;
    if (batch) {
      const result<std::size_t> r = a.device.pop_buffers(got);
      RC_ASSERT(r.has_value());
      n = *r;
    } else {
      chain c;
      const errc e = a.device.pop(c);
      RC_ASSERT(e == errc::ok || e == errc::empty);
      if (e == errc::ok) {
        const bool w = c.writable_bytes() != 0 || c.readable().empty();
        const auto segs = w ? c.writable() : c.readable();
        got[0] = popped_buffer{segs.empty() ? nullptr : segs[0].data(),
                               static_cast<std::uint32_t>(c.writable_bytes() + c.readable_bytes()),
                               c.id(), w};
        n = 1;
      }
    }
    chain c;
    for (std::size_t i = 0; i < n; ++i) {
      RC_ASSERT(b.device.pop(c) == errc::ok);
      RC_ASSERT(c.id() == got[i].id);
      const std::uint64_t bytes = c.readable_bytes() + c.writable_bytes();
      RC_ASSERT(bytes == got[i].len);
      if (bytes != 0) {  // a zero-length buffer's direction is not visible in a chain
        RC_ASSERT((c.writable_bytes() != 0) == got[i].writable);
        const auto segs = got[i].writable ? c.writable() : c.readable();
        RC_ASSERT(segs.size() == 1U);
        RC_ASSERT(segs[0].data() == got[i].data);
      } else {
        RC_ASSERT(got[i].data == nullptr);
      }
      held.push_back({got[i].id, static_cast<std::uint32_t>(c.writable_bytes())});
    }
    if (n < k) RC_ASSERT(b.device.pop(c) == errc::empty);  // stopped where the ring did
  }

  void complete(bool batch) {
    if (held.empty()) return;
    const auto m = batch ? virtq_test::uniform<std::size_t>(0, held.size() + 1) : 1U;
    std::vector<std::size_t> pick(held.size());
    for (std::size_t i = 0; i < pick.size(); ++i) pick[i] = i;
    if (!in_order) {  // any completion order (Fisher-Yates)
      for (std::size_t i = pick.size(); i > 1; --i) {
        std::swap(pick[i - 1], pick[virtq_test::uniform<std::size_t>(0, i)]);
      }
    }
    pick.resize(m);
    std::vector<used_entry> done;
    for (const std::size_t i : pick) {
      done.push_back({held[i].id, virtq_test::uniform<std::uint32_t>(0, held[i].writable + 1)});
    }
    // Now and then one entry complete(id, len) refuses: the calls must stop right there.
    if (!done.empty() && virtq_test::uniform(0, 6) == 0) {
      const auto j = virtq_test::uniform<std::size_t>(0, done.size());
      switch (virtq_test::uniform(0, 3)) {
        case 0:
          done[j].len = held[pick[j]].writable + 1;  // over-states (2.7.8.2)
          break;
        case 1:
          done[j].id = static_cast<std::uint16_t>(size());  // out of range
          break;
        default:
          if (j != 0) done[j].id = done[0].id;  // no longer held
          break;
      }
    }
    const std::size_t n = base::complete_both(batch, done);
    std::vector<bool> gone(held.size(), false);
    for (std::size_t i = 0; i < n; ++i) gone[pick[i]] = true;
    std::vector<popped> keep;
    for (std::size_t i = 0; i < held.size(); ++i) {
      if (!gone[i]) keep.push_back(held[i]);
    }
    held = keep;
  }

  void reap(bool batch) {
    base::reap_both(batch, [&](const used_buffer& u) {
      RC_ASSERT(out.erase(u.token) == 1U);  // every token comes back exactly once
    });
  }
};

template <class P>
void batch_equals_single(bool in_order) {
  const auto size = *rc::gen::oneOf(rc::gen::element(1U, 3U, 7U, 255U),
                                    virtq_test::uniform_gen<std::uint32_t>(1, 20));
  features f = packed_features<P>();
  if (in_order) f = f.with(feature::in_order);
  twin<P> t(size, f);
  t.run();
}

}  // namespace

TEST_CASE("2.8.1 wrap counters: batch calls and single calls give the same rings and results") {
  rc::prop("event index", [] { batch_equals_single<virtq_test::event_policy>(false); });
  rc::prop("no suppression", [] { batch_equals_single<virtq_test::none_policy>(false); });
  rc::prop("flags", [] { batch_equals_single<virtq_test::flags_policy>(false); });
  rc::prop("checked mode", [] { batch_equals_single<virtq_test::checked_policy>(false); });
  rc::prop("2.8.11 IN_ORDER", [] { batch_equals_single<virtq_test::event_policy>(true); });
  rc::prop("2.8.11 IN_ORDER, checked",
           [] { batch_equals_single<virtq_test::checked_policy>(true); });
}

// ---------------------------------------------------------------------------------------------
// Driver: add_inbufs / add_outbufs
// ---------------------------------------------------------------------------------------------

TEST_CASE("add_inbufs: spans of different sizes are invalid_argument and stage nothing") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const buffer bufs[2] = {arena.at(0, 8), arena.at(8, 8)};
  const token_t tokens[1] = {1};
  REQUIRE(q.driver.add_inbufs(bufs, tokens).error() == errc::invalid_argument);
  REQUIRE(q.driver.add_outbufs(bufs, tokens).error() == errc::invalid_argument);
  REQUIRE(q.driver.num_free() == 8);
  REQUIRE(q.driver.stats().added == 0);
  REQUIRE_FALSE(q.driver.kick_prepare());  // nothing was staged
  REQUIRE_FALSE(q.driver.broken());
}

TEST_CASE("add_inbufs: a full ring stages what fits, counts ring_full once, then 0") {
  pair<> q(5);
  virtq_test::buffer_arena arena(1024);
  std::vector<buffer> bufs;
  std::vector<token_t> tokens;
  for (std::uint32_t i = 0; i < 8; ++i) {
    bufs.push_back(arena.at(64U * i, 64));
    tokens.push_back(10 + i);
  }
  const auto r = q.driver.add_inbufs(bufs, tokens);
  REQUIRE(r);
  REQUIRE(*r == 5);
  REQUIRE(q.driver.stats().ring_full == 1);
  REQUIRE(q.driver.stats().added == 5);
  REQUIRE(q.driver.stats().min_free == 0);
  REQUIRE(q.driver.num_free() == 0);
  const auto again = q.driver.add_inbufs(bufs, tokens);
  REQUIRE(again);
  REQUIRE(*again == 0);
  REQUIRE(q.driver.stats().ring_full == 2);
  // An empty batch is not a full ring.
  REQUIRE(*q.driver.add_inbufs({}, {}) == 0);
  REQUIRE(q.driver.stats().ring_full == 2);

  // Token i went with buffer i: the device sees the buffers in order, the driver gets the
  // tokens back with them.
  REQUIRE(q.driver.kick_prepare());
  popped_buffer got[8];
  const auto n = q.device.pop_buffers(got);
  REQUIRE(n);
  REQUIRE(*n == 5);
  std::vector<used_entry> done;
  for (std::size_t i = 0; i < 5; ++i) {
    REQUIRE(got[i].writable);
    REQUIRE(got[i].len == 64);
    REQUIRE(got[i].data == arena.data() + 64 * i);
    done.push_back({got[i].id, static_cast<std::uint32_t>(i)});
  }
  REQUIRE(*q.device.complete(done) == 5);
  (void)q.device.interrupt_prepare();
  used_buffer u[8];
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 5);
  for (std::uint32_t i = 0; i < 5; ++i) {
    REQUIRE(u[i].token == 10 + i);
    REQUIRE(u[i].len == i);
  }
}

TEST_CASE("add_outbufs: device-readable buffers; 2.7.8.2 their used len must be 0") {
  pair<> q(4);
  virtq_test::buffer_arena arena(256);
  const buffer bufs[2] = {arena.at(0, 16), arena.at(16, 32)};
  const token_t tokens[2] = {7, 8};
  REQUIRE(*q.driver.add_outbufs(bufs, tokens) == 2);
  REQUIRE(q.driver.kick_prepare());
  popped_buffer got[2];
  REQUIRE(*q.device.pop_buffers(got) == 2);
  REQUIRE_FALSE(got[0].writable);
  REQUIRE(got[1].len == 32);
  // The device must not report bytes written into a device-readable buffer.
  const used_entry over[1] = {{got[0].id, 1}};
  REQUIRE(q.device.complete(over).error() == errc::invalid_argument);
  const used_entry ok[2] = {{got[0].id, 0}, {got[1].id, 0}};
  REQUIRE(*q.device.complete(ok) == 2);
}

TEST_CASE("D1: a batch of adds is invisible to the device until kick_prepare") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const buffer bufs[3] = {arena.at(0, 8), arena.at(8, 8), arena.at(16, 8)};
  const token_t tokens[3] = {1, 2, 3};
  REQUIRE(*q.driver.add_inbufs(bufs, tokens) == 3);
  REQUIRE(flags_at(q.ring.view(), 0) == 0);  // the first head's flags are held back
  popped_buffer got[4];
  REQUIRE(*q.device.pop_buffers(got) == 0);
  REQUIRE(*q.driver.add_inbufs({bufs, 1}, {tokens, 1}) == 1);  // joins the same batch
  REQUIRE(flags_at(q.ring.view(), 0) == 0);
  REQUIRE(q.driver.kick_prepare());
  REQUIRE(*q.device.pop_buffers(got) == 4);
}

TEST_CASE("add_inbufs: a broken driver says broken") {
  pair<> q(4);
  virtq_test::buffer_arena arena(256);
  const buffer bufs[1] = {arena.at(0, 8)};
  const token_t tokens[1] = {1};
  REQUIRE(*q.driver.add_inbufs(bufs, tokens) == 1);
  REQUIRE(q.driver.kick_prepare());
  put_used(q.ring.view(), 0, 9, 0, true);  // a hostile device: id out of range
  REQUIRE(q.driver.get_used().error() == errc::used_id_out_of_range);
  REQUIRE(q.driver.add_inbufs(bufs, tokens).error() == errc::broken);
  REQUIRE(q.driver.add_outbufs(bufs, tokens).error() == errc::broken);
  REQUIRE(q.driver.add_inbuf(bufs[0], 2) == errc::broken);
}

TEST_CASE("2.8.1: add_inbufs on rings of sizes 1..9 flips the wrap counter at each lap") {
  for (std::uint32_t size = 1; size <= 9; ++size) {
    pair<> q(size);
    virtq_test::buffer_arena arena(4096);
    std::uint64_t lin = 0;  // linear count of slots used
    for (std::uint32_t round = 0; round < 3 * size + 2; ++round) {
      const std::uint32_t k = 1 + round % size;
      std::vector<buffer> bufs(k, arena.at(0, 32));
      std::vector<token_t> tokens(k, round);
      REQUIRE(*q.driver.add_inbufs(bufs, tokens) == k);
      q.driver.kick_prepare();
      for (std::uint32_t i = 0; i < k; ++i) {
        const position p = at_linear(lin + i, size);
        REQUIRE(flags_at(q.ring.view(), p.off) == (packed::avail_bits(p.wrap) | WRITE));
      }
      std::vector<popped_buffer> got(k + 1);
      REQUIRE(*q.device.pop_buffers(got) == k);
      std::vector<used_entry> done;
      for (std::uint32_t i = 0; i < k; ++i) done.push_back({got[i].id, 1});
      REQUIRE(*q.device.complete(done) == k);
      q.device.interrupt_prepare();
      for (std::uint32_t i = 0; i < k; ++i) {
        const position p = at_linear(lin + i, size);
        // 2.8.3: each wrote 1 byte, so WRITE is set.
        REQUIRE(flags_at(q.ring.view(), p.off) == (packed::used_bits(p.wrap) | WRITE));
      }
      std::vector<used_buffer> u(k + 1);
      REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == k);
      lin += k;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Device: pop_buffers stops before chains it does not take
// ---------------------------------------------------------------------------------------------

TEST_CASE("pop_buffers: stops before a NEXT chain, which pop(chain&) then walks") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const buffer one = arena.at(0, 8);
  const buffer two[2] = {arena.at(8, 8), arena.at(16, 8)};
  REQUIRE(q.driver.add_inbuf(one, 1) == errc::ok);
  REQUIRE(q.driver.add(two, {}, 2) == errc::ok);  // NEXT on its first descriptor
  REQUIRE(q.driver.add_inbuf(one, 3) == errc::ok);
  REQUIRE(q.driver.kick_prepare());
  popped_buffer got[4];
  REQUIRE(*q.device.pop_buffers(got) == 1);
  REQUIRE(*q.device.pop_buffers(got) == 0);  // the next one needs pop(chain&)
  REQUIRE_FALSE(q.device.broken());
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(c.readable().size() == 2);
  REQUIRE(*q.device.pop_buffers(got) == 1);
  REQUIRE(*q.device.pop_buffers(got) == 0);  // empty
  REQUIRE(q.device.pop(c) == errc::empty);
  REQUIRE(q.device.in_flight() == 3);
}

TEST_CASE("pop_buffers: stops before an INDIRECT chain, which pop(chain&) then walks") {
  driver_options o;
  o.indirect_max = 4;
  pair<> q(8, packed_features<>(), o);
  virtq_test::buffer_arena arena(256);
  const buffer one = arena.at(0, 8);
  const buffer three[3] = {arena.at(8, 8), arena.at(16, 8), arena.at(24, 8)};
  REQUIRE(q.driver.add_inbuf(one, 1) == errc::ok);
  REQUIRE(q.driver.add({}, three, 2) == errc::ok);  // through an indirect table
  REQUIRE(q.driver.kick_prepare());
  REQUIRE((flags_at(q.ring.view(), 1) & packed::desc_f_indirect) != 0);
  popped_buffer got[4];
  REQUIRE(*q.device.pop_buffers(got) == 1);
  REQUIRE(*q.device.pop_buffers(got) == 0);
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(c.writable().size() == 3);
  REQUIRE_FALSE(q.device.broken());
}

// ---------------------------------------------------------------------------------------------
// Device: a hostile driver through pop_buffers
// ---------------------------------------------------------------------------------------------

namespace {

constexpr std::uint64_t guest_base = 0x10000;
constexpr std::uint32_t guest_size = 4096;

/// A device over a ring whose driver is the test itself, with one region of guest memory.
struct hostile_driver {
  explicit hostile_driver(std::uint32_t size)
      : ring(size), data(guest_size, 64), device(ring.view(), packed_features<>(), mem) {
    mem.add_region(guest_base, guest_size, data.data());
  }
  const packed::ring_view& v() const { return ring.view(); }
  static std::uint64_t ga(std::uint64_t off) { return guest_base + off; }

  /// `e` broke the queue after `popped` were handed out; it stays broken until reset.
  void expect_broken(errc e) {
    REQUIRE(device.broken());
    REQUIRE(device.error() == e);
    REQUIRE(device.stats().rejects[static_cast<std::size_t>(e)] == 1);
    popped_buffer got[2];
    REQUIRE(device.pop_buffers(got).error() == errc::broken);
    const used_entry u[1] = {{0, 0}};
    REQUIRE(device.complete(u).error() == errc::broken);
    device.reset();
    std::memset(static_cast<void*>(v().ring), 0, 16U * v().size);
    put_desc(v(), 0, ga(0), 100, 0, A | WRITE);
    REQUIRE(*device.pop_buffers(got) == 1);
    REQUIRE(got[0].data == data.data());
  }

  ring_memory<packed_layout> ring;
  aligned_buffer data;
  guest_memory mem;
  packed_device<default_policy, guest_memory> device;
};

}  // namespace

TEST_CASE("2.8.4 pop_buffers: an id >= queue size first is packed_bad_id, nothing popped") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 4, A | WRITE);
  popped_buffer got[4];
  REQUIRE(h.device.pop_buffers(got).error() == errc::packed_bad_id);
  h.expect_broken(errc::packed_bad_id);
}

TEST_CASE("2.8.4 pop_buffers: an id out of range mid-batch returns the ones before, then broken") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 0, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 1, A | WRITE);
  put_desc(h.v(), 2, h.ga(16), 8, 9, A | WRITE);
  popped_buffer got[4];
  const auto r = h.device.pop_buffers(got);
  REQUIRE(r);
  REQUIRE(*r == 2);  // the caller owns these two and must be told so
  REQUIRE(got[1].id == 1);
  REQUIRE(h.device.in_flight() == 2);
  h.expect_broken(errc::packed_bad_id);
}

TEST_CASE("2.8.4 pop_buffers: a zero-length buffer with id == queue size is packed_bad_id") {
  // A zero-length buffer leaves the batch's fast path (it is not translated); its id is checked
  // there as well.
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 0, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 0, 4, A | WRITE);
  popped_buffer got[4];
  const auto r = h.device.pop_buffers(got);
  REQUIRE(r);
  REQUIRE(*r == 1);
  h.expect_broken(errc::packed_bad_id);
}

TEST_CASE("2.8.4 pop_buffers: an id already held (earlier batch or same batch) is packed_bad_id") {
  SECTION("held from an earlier call") {
    hostile_driver h(4);
    put_desc(h.v(), 0, h.ga(0), 8, 2, A | WRITE);
    popped_buffer got[4];
    REQUIRE(*h.device.pop_buffers(got) == 1);
    put_desc(h.v(), 1, h.ga(0), 8, 2, A | WRITE);
    REQUIRE(h.device.pop_buffers(got).error() == errc::packed_bad_id);
    h.expect_broken(errc::packed_bad_id);
  }
  SECTION("twice in one batch") {
    hostile_driver h(4);
    put_desc(h.v(), 0, h.ga(0), 8, 3, A | WRITE);
    put_desc(h.v(), 1, h.ga(8), 8, 3, A | WRITE);
    popped_buffer got[4];
    REQUIRE(*h.device.pop_buffers(got) == 1);
    h.expect_broken(errc::packed_bad_id);
  }
}

TEST_CASE("2.8.6 pop_buffers: an address outside guest memory is not translated") {
  SECTION("outside every region") {
    hostile_driver h(4);
    put_desc(h.v(), 0, 0x1000, 8, 0, A | WRITE);
    popped_buffer got[4];
    REQUIRE(h.device.pop_buffers(got).error() == errc::address_out_of_range);
    h.expect_broken(errc::address_out_of_range);
  }
  SECTION("running past the region's end, mid-batch") {
    hostile_driver h(4);
    put_desc(h.v(), 0, h.ga(0), 8, 0, A);
    put_desc(h.v(), 1, h.ga(guest_size - 4), 8, 1, A);
    popped_buffer got[4];
    REQUIRE(*h.device.pop_buffers(got) == 1);
    REQUIRE_FALSE(got[0].writable);
    h.expect_broken(errc::crosses_region_end);
  }
  SECTION("wrapping 2^64") {
    hostile_driver h(4);
    put_desc(h.v(), 0, ~std::uint64_t{0} - 2, 8, 0, A | WRITE);
    popped_buffer got[4];
    REQUIRE(h.device.pop_buffers(got).error() == errc::address_overflow);
    h.expect_broken(errc::address_overflow);
  }
}

TEST_CASE("pop_buffers: a zero-length buffer is not translated and has no data pointer") {
  hostile_driver h(4);
  put_desc(h.v(), 0, 0xDEAD0000, 0, 1, A | WRITE);  // no such guest address: never used
  put_desc(h.v(), 1, h.ga(0), 4, 2, A | WRITE);
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 2);
  REQUIRE(got[0].data == nullptr);
  REQUIRE(got[0].len == 0);
  REQUIRE(got[0].id == 1);
  REQUIRE(got[0].writable);
  REQUIRE(got[1].data == h.data.data());
  REQUIRE_FALSE(h.device.broken());
  // 2.7.8.2: nothing can be written into it.
  const used_entry over[1] = {{1, 1}};
  REQUIRE(h.device.complete(over).error() == errc::invalid_argument);
}

TEST_CASE("2.8.1 pop_buffers: AVAIL == USED == our wrap counter is packed_bad_flags") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 0, A | WRITE);
  put_desc(h.v(), 1, h.ga(0), 8, 1, A | U | WRITE);
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 1);
  h.expect_broken(errc::packed_bad_flags);
}

TEST_CASE("2.8.4 pop_buffers: a head available while the device holds every slot is an overrun") {
  hostile_driver h(2);
  put_desc(h.v(), 0, h.ga(0), 8, 0, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 1, A | WRITE);
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 2);
  REQUIRE(*h.device.pop_buffers(got) == 0);  // slot 0 still holds lap 1's descriptor: empty
  REQUIRE_FALSE(h.device.broken());
  // The driver cannot reuse slot 0 before the device gave it back; this one pretends to.
  put_desc(h.v(), 0, h.ga(0), 8, 0, U | WRITE);  // available in lap 0
  REQUIRE(h.device.pop_buffers(got).error() == errc::packed_chain_overrun);
  h.expect_broken(errc::packed_chain_overrun);
}

// ---------------------------------------------------------------------------------------------
// Device: complete(span)
// ---------------------------------------------------------------------------------------------

namespace {

/// Pops `n` writable 64-byte buffers on a fresh pair; returns their ids in pop order.
template <class Q>
std::vector<std::uint16_t> pop_n(Q& q, virtq_test::buffer_arena& arena, std::uint32_t n) {
  std::vector<buffer> bufs(n, arena.at(0, 64));
  std::vector<token_t> tokens;
  for (std::uint32_t i = 0; i < n; ++i) tokens.push_back(100 + i);
  REQUIRE(*q.driver.add_inbufs(bufs, tokens) == n);
  q.driver.kick_prepare();
  std::vector<popped_buffer> got(n);
  REQUIRE(*q.device.pop_buffers(got) == n);
  std::vector<std::uint16_t> ids;
  for (const auto& p : got) ids.push_back(p.id);
  return ids;
}

/// Completes the rest, publishes and checks the driver reaps all `n` in order of completion.
template <class Q>
void finish(Q& q, std::vector<used_entry> rest, std::size_t n) {
  REQUIRE(*q.device.complete(rest) == rest.size());
  REQUIRE_FALSE(q.device.broken());
  q.device.interrupt_prepare();
  std::vector<used_buffer> u(n + 1);
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == n);
  REQUIRE(q.device.in_flight() == 0);
}

}  // namespace

TEST_CASE("complete(span): an invalid entry stops the batch; the queue stays usable") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const auto ids = pop_n(q, arena, 4);
  SECTION("id >= queue size") {
    const used_entry d[3] = {{ids[0], 1}, {8, 1}, {ids[1], 1}};
    REQUIRE(*q.device.complete(d) == 1);
    const used_entry first[1] = {{9, 0}};
    REQUIRE(q.device.complete(first).error() == errc::invalid_argument);
    finish(q, {{ids[1], 1}, {ids[2], 1}, {ids[3], 1}}, 4);
  }
  SECTION("2.7.8.2 len larger than the writable bytes") {
    const used_entry d[3] = {{ids[0], 64}, {ids[1], 65}, {ids[2], 1}};
    REQUIRE(*q.device.complete(d) == 1);
    finish(q, {{ids[1], 64}, {ids[2], 1}, {ids[3], 1}}, 4);
  }
  SECTION("an id not held (completed twice)") {
    const used_entry d[3] = {{ids[2], 1}, {ids[3], 1}, {ids[2], 1}};
    REQUIRE(*q.device.complete(d) == 2);
    REQUIRE(q.device.stats().completed == 2);
    finish(q, {{ids[0], 1}, {ids[1], 1}}, 4);
  }
  SECTION("an empty span completes nothing") {
    REQUIRE(*q.device.complete(std::span<const used_entry>{}) == 0);
    REQUIRE_FALSE(q.device.interrupt_prepare());
    finish(q, {{ids[3], 1}, {ids[0], 1}, {ids[1], 1}, {ids[2], 1}}, 4);
  }
  REQUIRE_FALSE(q.device.broken());
}

TEST_CASE("2.8.11 IN_ORDER complete(span): out of order stops with the count so far") {
  pair<> q(8, packed_features<>().with(feature::in_order));
  virtq_test::buffer_arena arena(256);
  const auto ids = pop_n(q, arena, 4);
  const used_entry skip_first[1] = {{ids[1], 1}};
  REQUIRE(q.device.complete(skip_first).error() == errc::invalid_argument);
  const used_entry d[3] = {{ids[0], 1}, {ids[2], 1}, {ids[1], 1}};
  REQUIRE(*q.device.complete(d) == 1);
  REQUIRE(q.device.in_flight() == 3);
  finish(q, {{ids[1], 2}, {ids[2], 3}, {ids[3], 4}}, 4);
}

TEST_CASE("V2: completed used descriptors are invisible to the driver until interrupt_prepare") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const auto ids = pop_n(q, arena, 3);
  const used_entry d[3] = {{ids[2], 3}, {ids[0], 1}, {ids[1], 2}};
  REQUIRE(*q.device.complete(d) == 3);
  REQUIRE(q.driver.get_used().error() == errc::empty);
  // The first used descriptor's flags are the ones held back; the others are written.
  REQUIRE(flags_at(q.ring.view(), 0) == (packed::avail_bits(true) | WRITE));
  REQUIRE(flags_at(q.ring.view(), 1) == (packed::used_bits(true) | WRITE));  // 2.8.3: it wrote
  REQUIRE(q.device.interrupt_prepare());
  used_buffer u[4];
  REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 3);
  // Completion order, not pop order (2.8.9).
  REQUIRE(u[0].token == 102);
  REQUIRE(u[0].len == 3);
  REQUIRE(u[1].token == 100);
  REQUIRE(u[2].token == 101);
}

// ---------------------------------------------------------------------------------------------
// Driver: a hostile device after batch adds
// ---------------------------------------------------------------------------------------------

TEST_CASE("hostile device after add_inbufs: each bad used descriptor breaks the driver") {
  pair<> q(8);
  virtq_test::buffer_arena arena(256);
  const buffer bufs[3] = {arena.at(0, 16), arena.at(16, 16), arena.at(32, 16)};
  const token_t tokens[3] = {1, 2, 3};
  REQUIRE(*q.driver.add_inbufs(bufs, tokens) == 3);
  q.driver.kick_prepare();
  const std::uint16_t id0 = get<le>(q.ring.view().ring[0].id);
  const std::uint16_t id1 = get<le>(q.ring.view().ring[1].id);
  used_buffer u[4];
  SECTION("used id out of range") {
    put_used(q.ring.view(), 0, 8, 0, true);
    REQUIRE(q.driver.get_used(std::span<used_buffer>(u)).error() == errc::used_id_out_of_range);
    REQUIRE(q.driver.error() == errc::used_id_out_of_range);
  }
  SECTION("2.7.8.2 used len over the buffer's writable bytes, after one good one") {
    put_used(q.ring.view(), 0, id0, 16, true);
    put_used(q.ring.view(), 1, id1, 17, true);
    REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 1);
    REQUIRE(u[0].token == 1);
    REQUIRE(q.driver.error() == errc::used_len_too_large);
    REQUIRE(q.driver.get_used(std::span<used_buffer>(u)).error() == errc::broken);
  }
  SECTION("a used id staged by a later add_inbufs but not yet published") {
    REQUIRE(*q.driver.add_inbufs({bufs, 1}, {tokens, 1}) == 1);  // no kick
    const std::uint16_t staged = get<le>(q.ring.view().ring[3].id);
    put_used(q.ring.view(), 0, staged, 0, true);
    REQUIRE(q.driver.get_used(std::span<used_buffer>(u)).error() == errc::used_id_not_outstanding);
  }
  SECTION("a device-readable buffer reported as written") {
    pair<> r(4);
    REQUIRE(*r.driver.add_outbufs(bufs, tokens) == 3);
    r.driver.kick_prepare();
    put_used(r.ring.view(), 0, get<le>(r.ring.view().ring[0].id), 1, true);
    REQUIRE(r.driver.get_used().error() == errc::used_len_too_large);
    return;
  }
  REQUIRE(q.driver.broken());
  REQUIRE(q.driver.add_inbufs(bufs, tokens).error() == errc::broken);
  std::multiset<token_t> back;
  q.driver.reset([&](token_t t) { back.insert(t); });
  REQUIRE(back.size() >= 2);  // every token not reaped comes back once
  REQUIRE(back.count(2) == 1);
  REQUIRE(back.count(3) == 1);
}
