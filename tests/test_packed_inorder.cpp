// SPDX-License-Identifier: MIT
// The packed ring with VIRTIO_F_IN_ORDER (2.8.20 / 2.8.21): the batch fast paths of both sides
// (add_inbufs with ids taken from the head slots, pop_buffers recording each id at its slot,
// complete(span) bounded by the chains in flight, get_used(span) reaping one chain per used
// descriptor and handing a batched used descriptor to the general path).
//
// A property test drives one pair with batch calls and a twin pair with single calls only,
// both against a model of the spec's promise (chains come back in the order they were added;
// a batched used descriptor gives the earlier chains len 0 and the last its len), over odd and
// even sizes, multi-descriptor chains and batched used descriptors in the middle of runs.
// Named cases cover each rule a hostile device or driver can break on these paths.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <span>
#include <vector>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {

template <class P = default_policy>
features in_order_features() {
  return packed_features<P>().with(feature::in_order);
}

// ---------------------------------------------------------------------------------------------
// The property: batch calls == single calls == the spec's model
// ---------------------------------------------------------------------------------------------

/// The twin pairs with the spec's model: which chains are popped, added and used, in order.
template <class P>
struct twin : twin_pairs<P, twin<P>> {
  using base = twin_pairs<P, twin<P>>;
  using base::a;
  using base::b;
  using base::make_buffer;
  using base::next_token;
  using base::size;

  explicit twin(std::uint32_t ring_size) : base(ring_size, in_order_features<P>()) {}

  struct chain_rec {
    std::uint16_t id;
    std::uint32_t writable;  // the bound for its used len
  };
  std::deque<chain_rec> popped;  ///< popped, not completed, oldest first (the same in a and b)
  std::deque<token_t> added;     ///< added, not yet completed, in add order
  std::deque<used_buffer> used;  ///< completed, not yet reaped, in the order they must come back

  void check_same() const {
    base::check_same();
    RC_ASSERT(a.device.in_flight() == popped.size());
  }

  /// A batch of one-descriptor chains (add_inbufs / add_outbufs against add), or one chain of
  /// 1..3 descriptors through add() on both (several ring slots per id).
  void add(bool batch) {
    if (batch) {
      for (const token_t t : base::add_ones(true)) added.push_back(t);
      return;
    }
    const auto n = virtq_test::uniform<std::size_t>(1, 4);
    const auto n_out = virtq_test::uniform<std::size_t>(0, n + 1);
    std::vector<buffer> bufs;
    for (std::size_t i = 0; i < n; ++i) bufs.push_back(make_buffer());
    const std::span<const buffer> all(bufs);
    const errc ea = a.driver.add(all.first(n_out), all.subspan(n_out), next_token);
    const errc eb = b.driver.add(all.first(n_out), all.subspan(n_out), next_token);
    RC_ASSERT(ea == eb);
    RC_ASSERT(ea == errc::ok || ea == errc::no_space || ea == errc::invalid_argument);
    if (ea == errc::ok) added.push_back(next_token);
    ++next_token;
  }

  /// pop_buffers against pop(chain&); pop_buffers stops before a multi-descriptor chain, which
  /// the single variant of this step pops on both.
  void pop(bool batch) {
    chain c;
    if (!batch) {
      const errc ea = a.device.pop(c);
      RC_ASSERT(ea == errc::ok || ea == errc::empty);
      chain d;
      RC_ASSERT(b.device.pop(d) == ea);
      if (ea == errc::ok) {
        RC_ASSERT(c.id() == d.id());
        RC_ASSERT(c.writable_bytes() == d.writable_bytes());
        popped.push_back({c.id(), static_cast<std::uint32_t>(c.writable_bytes())});
      }
      return;
    }
    const auto k = virtq_test::uniform<std::uint32_t>(0, size() + 3);
    std::vector<popped_buffer> got(k);
    const result<std::size_t> r = a.device.pop_buffers(got);
    RC_ASSERT(r.has_value());
    for (std::size_t i = 0; i < *r; ++i) {
      RC_ASSERT(b.device.pop(c) == errc::ok);
      RC_ASSERT(c.id() == got[i].id);
      RC_ASSERT(c.readable_bytes() + c.writable_bytes() == got[i].len);
      popped.push_back({got[i].id, static_cast<std::uint32_t>(c.writable_bytes())});
    }
  }

  /// complete_in_order on both: one used descriptor for the oldest 1..all chains in flight.
  static constexpr int more_steps = 1;
  void more_step(int) {
    if (popped.empty()) return;
    const auto count = virtq_test::uniform<std::size_t>(1, popped.size() + 1);
    const std::uint32_t bound = popped[count - 1].writable;
    const auto len = virtq_test::uniform<std::uint32_t>(0, bound + 1);
    const errc e = a.device.complete_in_order(static_cast<std::uint16_t>(count), len);
    RC_ASSERT(e == errc::ok);
    RC_ASSERT(b.device.complete_in_order(static_cast<std::uint16_t>(count), len) == errc::ok);
    for (std::size_t i = 0; i < count; ++i) {
      used.push_back({added.front(), i + 1 == count ? len : 0U});
      added.pop_front();
      popped.pop_front();
    }
  }

  /// complete(span) against complete(id, len): the m oldest popped chains, now and then with
  /// one entry complete(id, len) refuses (out of order, too long, out of range, or past the
  /// chains in flight).
  void complete(bool batch) {
    const auto m = batch ? virtq_test::uniform<std::size_t>(0, popped.size() + 2) : std::size_t{1};
    std::vector<used_entry> done;
    for (std::size_t i = 0; i < m; ++i) {
      if (i < popped.size()) {
        done.push_back(
            {popped[i].id, virtq_test::uniform<std::uint32_t>(0, popped[i].writable + 1)});
      } else {  // past the chains in flight: any id is refused
        done.push_back(
            {virtq_test::uniform<std::uint16_t>(0, static_cast<std::uint16_t>(size())), 0});
      }
    }
    if (!done.empty() && virtq_test::uniform(0, 5) == 0) {
      const auto j = virtq_test::uniform<std::size_t>(0, done.size());
      switch (virtq_test::uniform(0, 3)) {
        case 0:
          if (j < popped.size()) done[j].len = popped[j].writable + 1;  // 2.7.8.2
          break;
        case 1:
          done[j].id = static_cast<std::uint16_t>(size() + virtq_test::uniform(0U, 3U));
          break;
        default:
          if (j + 1 < popped.size()) done[j].id = popped[j + 1].id;  // not the oldest
          break;
      }
    }
    const std::size_t n = base::complete_both(batch, done);
    // 2.8.20: only the oldest chains, in order, can have been completed.
    for (std::size_t i = 0; i < n; ++i) {
      RC_ASSERT(done[i].id == popped.front().id);
      used.push_back({added.front(), done[i].len});
      added.pop_front();
      popped.pop_front();
    }
  }

  void reap(bool batch) {
    base::reap_both(batch, [&](const used_buffer& u) {
      // The model: in add order, with the len the device gave (0 inside a batched one).
      RC_ASSERT(!used.empty());
      RC_ASSERT(u.token == used.front().token);
      RC_ASSERT(u.len == used.front().len);
      used.pop_front();
    });
  }
};

template <class P>
void in_order_batch_equals_single() {
  const auto size = *rc::gen::oneOf(rc::gen::element(1U, 2U, 3U, 5U, 7U, 255U),
                                    virtq_test::uniform_gen<std::uint32_t>(1, 20));
  twin<P> t(size);
  t.run();
  // Everything still out comes back through reset, exactly once.
  std::vector<token_t> back;
  t.a.driver.reset([&](token_t tok) { back.push_back(tok); });
  RC_ASSERT(back.size() == t.added.size() + t.used.size());
}

}  // namespace

TEST_CASE("2.8.20 IN_ORDER: batch calls, single calls and the model agree on every ring size") {
  rc::prop("event index", [] { in_order_batch_equals_single<virtq_test::event_policy>(); });
  rc::prop("no suppression", [] { in_order_batch_equals_single<virtq_test::none_policy>(); });
  rc::prop("checked mode", [] { in_order_batch_equals_single<virtq_test::checked_policy>(); });
}

// ---------------------------------------------------------------------------------------------
// Driver: a hostile device against get_used(span) with IN_ORDER
// ---------------------------------------------------------------------------------------------

namespace {

/// An IN_ORDER pair with `n` 16-byte receive buffers added and published (tokens 1..n), the
/// test playing the device by writing used descriptors into the ring.
struct hostile_device {
  explicit hostile_device(std::uint32_t size, std::uint32_t n)
      : q(size, in_order_features()), arena(1024) {
    std::vector<buffer> bufs;
    std::vector<token_t> tokens;
    for (std::uint32_t i = 0; i < n; ++i) {
      bufs.push_back(arena.at(16U * i, 16));
      tokens.push_back(i + 1);
    }
    REQUIRE(*q.driver.add_inbufs(bufs, tokens) == n);
    q.driver.kick_prepare();
  }
  const packed::ring_view& v() const { return q.ring.view(); }
  /// The id the driver wrote for the chain at `slot` (what an honest device would read).
  std::uint16_t id_at(std::uint32_t slot) const { return get<le>(v().ring[slot].id); }
  result<std::size_t> reap(std::span<used_buffer> out) { return q.driver.get_used(out); }

  void expect_broken(errc e) {
    REQUIRE(q.driver.broken());
    REQUIRE(q.driver.error() == e);
    used_buffer u[2];
    REQUIRE(q.driver.get_used(std::span<used_buffer>(u)).error() == errc::broken);
  }

  pair<> q;
  virtq_test::buffer_arena arena;
};

}  // namespace

TEST_CASE("IN_ORDER get_used(span): per-chain used descriptors come back in order") {
  hostile_device h(8, 4);
  for (std::uint32_t i = 0; i < 4; ++i) put_used(h.v(), i, h.id_at(i), i + 1, true);
  used_buffer u[6];
  REQUIRE(*h.reap(u) == 4);
  for (std::uint32_t i = 0; i < 4; ++i) {
    REQUIRE(u[i].token == i + 1);
    REQUIRE(u[i].len == i + 1);
  }
  REQUIRE(h.q.driver.num_free() == 8);
  REQUIRE_FALSE(h.q.driver.broken());
}

TEST_CASE("2.8.4 IN_ORDER get_used(span): a used len without WRITE is reserved and reads 0") {
  SECTION("per-chain descriptors, one of them over the buffer") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, h.id_at(0), 9, true, false);
    put_used(h.v(), 1, h.id_at(1), 17, true, false);  // over 16, but reserved: not checked
    put_used(h.v(), 2, h.id_at(2), 5, true);          // WRITE: taken as written
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 3);
    REQUIRE(u[0].len == 0);
    REQUIRE(u[1].len == 0);
    REQUIRE(u[2].len == 5);
    REQUIRE_FALSE(h.q.driver.broken());
  }
  SECTION("a batched descriptor (the general path)") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, h.id_at(2), 40, true, false);
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 3);
    for (std::uint32_t i = 0; i < 3; ++i) REQUIRE(u[i].len == 0);
    REQUIRE(u[2].token == 3);
    REQUIRE_FALSE(h.q.driver.broken());
  }
}

TEST_CASE("2.8.20 IN_ORDER get_used(span): a batched used descriptor mid-run") {
  hostile_device h(8, 6);
  // Chain 0 alone; chains 1..3 under one descriptor naming chain 3 (at chain 1's slot); then
  // chains 4 and 5 alone again, at the slots after the batch's.
  put_used(h.v(), 0, h.id_at(0), 5, true);
  put_used(h.v(), 1, h.id_at(3), 9, true);
  put_used(h.v(), 4, h.id_at(4), 7, true);
  put_used(h.v(), 5, h.id_at(5), 8, true);
  used_buffer u[8];
  REQUIRE(*h.reap(u) == 6);
  const std::uint32_t lens[6] = {5, 0, 0, 9, 7, 8};
  for (std::uint32_t i = 0; i < 6; ++i) {
    CAPTURE(i);
    REQUIRE(u[i].token == i + 1);
    REQUIRE(u[i].len == lens[i]);
  }
  REQUIRE(h.q.driver.num_free() == 8);
  REQUIRE_FALSE(h.q.driver.broken());
  SECTION("and the batch split over two calls") {
    // Nothing left: the slots after the last used descriptor hold no used one.
    REQUIRE(*h.reap(u) == 0);
  }
}

TEST_CASE("2.8.20 IN_ORDER get_used(span): a batched used descriptor split across calls") {
  hostile_device h(8, 4);
  put_used(h.v(), 0, h.id_at(2), 11, true);  // chains 0..2
  put_used(h.v(), 3, h.id_at(3), 4, true);
  used_buffer u[2];
  REQUIRE(*h.reap(u) == 2);
  REQUIRE(u[0].token == 1);
  REQUIRE(u[0].len == 0);
  REQUIRE(u[1].token == 2);
  REQUIRE(*h.reap(u) == 2);
  REQUIRE(u[0].token == 3);
  REQUIRE(u[0].len == 11);
  REQUIRE(u[1].token == 4);
  REQUIRE(u[1].len == 4);
  REQUIRE_FALSE(h.q.driver.broken());
}

TEST_CASE("IN_ORDER get_used(span): an id out of range breaks the driver") {
  SECTION("first") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, 8, 1, true);
    used_buffer u[4];
    REQUIRE(h.reap(u).error() == errc::used_id_out_of_range);
    h.expect_broken(errc::used_id_out_of_range);
  }
  SECTION("mid-run: the ones before are returned") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, h.id_at(0), 1, true);
    put_used(h.v(), 1, 0xFFFF, 1, true);
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 1);
    REQUIRE(u[0].token == 1);
    h.expect_broken(errc::used_id_out_of_range);
  }
}

TEST_CASE("IN_ORDER get_used(span): an id not outstanding breaks the driver") {
  SECTION("a chain staged but not published") {
    hostile_device h(8, 2);
    const buffer b = h.arena.at(512, 16);
    const token_t t = 99;
    REQUIRE(*h.q.driver.add_inbufs({&b, 1}, {&t, 1}) == 1);  // slot 2, no kick
    put_used(h.v(), 0, h.id_at(0), 1, true);
    put_used(h.v(), 1, h.id_at(2), 1, true);
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 1);
    h.expect_broken(errc::used_id_not_outstanding);
  }
  SECTION("a chain already reaped") {
    hostile_device h(8, 3);
    const std::uint16_t first = h.id_at(0);
    put_used(h.v(), 0, first, 1, true);
    put_used(h.v(), 1, first, 1, true);
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 1);
    h.expect_broken(errc::used_id_not_outstanding);
  }
}

TEST_CASE("IN_ORDER get_used(span): an id inside a chain (not its head) is not outstanding") {
  pair<> q(8, in_order_features());
  virtq_test::buffer_arena arena(256);
  const buffer three[3] = {arena.at(0, 8), arena.at(8, 8), arena.at(16, 8)};
  REQUIRE(q.driver.add({}, std::span<const buffer>(three, 3), 7) == errc::ok);  // slots 0..2
  REQUIRE(q.driver.add({}, std::span<const buffer>(three, 1), 8) == errc::ok);  // slot 3
  q.driver.kick_prepare();
  REQUIRE(get<le>(q.ring.view().ring[2].id) == 0);  // the first chain's id, in every slot
  put_used(q.ring.view(), 0, 1, 0, true);           // slot 1 is no chain's head
  used_buffer u[4];
  REQUIRE(q.driver.get_used(std::span<used_buffer>(u)).error() == errc::used_id_not_outstanding);
  // Reset hands back both tokens, published and not reaped, exactly once.
  std::vector<token_t> back;
  q.driver.reset([&](token_t t) { back.push_back(t); });
  REQUIRE(back == std::vector<token_t>{7, 8});
}

TEST_CASE("IN_ORDER reset: staged, published, used and half-reaped chains come back once") {
  hostile_device h(8, 4);
  const buffer b = h.arena.at(512, 16);
  const token_t t = 5;
  REQUIRE(*h.q.driver.add_inbufs({&b, 1}, {&t, 1}) == 1);  // staged, not published
  put_used(h.v(), 0, h.id_at(2), 3, true);                 // chains 0..2 at once
  used_buffer u[1];
  REQUIRE(*h.reap(u) == 1);  // chain 0 reaped; 1 and 2 used, not yet reaped
  std::vector<token_t> back;
  h.q.driver.reset([&](token_t tok) { back.push_back(tok); });
  std::sort(back.begin(), back.end());
  REQUIRE(back == std::vector<token_t>{2, 3, 4, 5});
}

TEST_CASE("2.7.8.2 IN_ORDER get_used(span): a used len over the writable bytes breaks it") {
  SECTION("a per-chain descriptor mid-run") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, h.id_at(0), 16, true);
    put_used(h.v(), 1, h.id_at(1), 17, true);
    used_buffer u[4];
    REQUIRE(*h.reap(u) == 1);
    REQUIRE(u[0].len == 16);
    h.expect_broken(errc::used_len_too_large);
  }
  SECTION("a batched descriptor: the last chain's bound") {
    hostile_device h(8, 3);
    put_used(h.v(), 0, h.id_at(2), 17, true);
    used_buffer u[4];
    REQUIRE(h.reap(u).error() == errc::used_len_too_large);
    h.expect_broken(errc::used_len_too_large);
  }
}

TEST_CASE("2.8.1 IN_ORDER get_used(span): wrap bits of another lap are not a used descriptor") {
  hostile_device h(4, 4);
  put_used(h.v(), 0, h.id_at(0), 1, true);
  put_used(h.v(), 1, h.id_at(1), 1, false);  // lap 0's bits in lap 1: not used yet
  used_buffer u[4];
  REQUIRE(*h.reap(u) == 1);
  REQUIRE_FALSE(h.q.driver.broken());
  // AVAIL != USED (the driver's own available descriptor): not used either.
  REQUIRE(*h.reap(u) == 0);
  REQUIRE(flags_at(h.v(), 2) == (A | WRITE));
  REQUIRE_FALSE(h.q.driver.broken());
}

TEST_CASE("2.8.1 IN_ORDER get_used(span): a used descriptor with nothing outstanding") {
  hostile_device h(8, 2);
  put_used(h.v(), 0, h.id_at(0), 1, true);
  put_used(h.v(), 1, h.id_at(1), 1, true);
  put_used(h.v(), 2, 2, 1, true);  // slot 2 was never made available
  used_buffer u[4];
  REQUIRE(*h.reap(u) == 2);
  h.expect_broken(errc::used_unexpected);
}

TEST_CASE("IN_ORDER driver: ids follow the ring slots over laps and multi-slot chains") {
  // 2.8.4 asks only for ids below the queue size that are not in use; a chain's id is the
  // slot of its head, free again when the chain is reaped. Five slots: laps wrap mid-chain.
  pair<> q(5, in_order_features());
  virtq_test::buffer_arena arena(1024);
  const buffer two[2] = {arena.at(0, 8), arena.at(8, 8)};
  std::uint32_t head = 0;
  for (token_t t = 1; t <= 12; ++t) {
    const std::size_t n = t % 3 == 0 ? 2 : 1;
    REQUIRE(q.driver.add({}, std::span<const buffer>(two, n), t) == errc::ok);
    q.driver.kick_prepare();
    const std::uint32_t last = (head + static_cast<std::uint32_t>(n) - 1) % 5;
    REQUIRE(get<le>(q.ring.view().ring[last].id) == head);
    chain c;
    REQUIRE(q.device.pop(c) == errc::ok);
    REQUIRE(c.id() == head);
    REQUIRE(q.device.complete(c, 1) == errc::ok);
    q.device.interrupt_prepare();
    used_buffer u[2];
    REQUIRE(*q.driver.get_used(std::span<used_buffer>(u)) == 1);
    REQUIRE(u[0].token == t);
    head = (head + static_cast<std::uint32_t>(n)) % 5;
  }
}

// ---------------------------------------------------------------------------------------------
// Device: a hostile driver against pop_buffers and complete(span) with IN_ORDER
// ---------------------------------------------------------------------------------------------

namespace {

constexpr std::uint64_t guest_base = 0x10000;
constexpr std::uint32_t guest_size = 4096;

/// An IN_ORDER device whose driver is the test (any ids it likes), over one guest region.
struct hostile_driver {
  explicit hostile_driver(std::uint32_t size)
      : ring(size), data(guest_size, 64), device(ring.view(), in_order_features(), mem) {
    mem.add_region(guest_base, guest_size, data.data());
  }
  const packed::ring_view& v() const { return ring.view(); }
  static std::uint64_t ga(std::uint64_t off) { return guest_base + off; }

  ring_memory<packed_layout> ring;
  aligned_buffer data;
  guest_memory mem;
  packed_device<default_policy, guest_memory> device;
};

}  // namespace

TEST_CASE("2.8.4 IN_ORDER pop_buffers: a bad id mid-batch returns the ones before") {
  SECTION("out of range") {
    hostile_driver h(4);
    put_desc(h.v(), 0, h.ga(0), 8, 3, A | WRITE);
    put_desc(h.v(), 1, h.ga(8), 8, 4, A | WRITE);
    popped_buffer got[4];
    REQUIRE(*h.device.pop_buffers(got) == 1);
    REQUIRE(h.device.error() == errc::packed_bad_id);
    REQUIRE(h.device.pop_buffers(got).error() == errc::broken);
  }
  SECTION("already in flight") {
    hostile_driver h(4);
    put_desc(h.v(), 0, h.ga(0), 8, 2, A | WRITE);
    put_desc(h.v(), 1, h.ga(8), 8, 0, A | WRITE);
    put_desc(h.v(), 2, h.ga(8), 8, 2, A | WRITE);
    popped_buffer got[4];
    REQUIRE(*h.device.pop_buffers(got) == 2);
    REQUIRE(h.device.error() == errc::packed_bad_id);
  }
}

TEST_CASE("2.8.1 IN_ORDER pop_buffers: wrap bits no driver writes stop the batch, broken") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 1, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 2, A | U | WRITE);  // AVAIL == USED == our counter
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 1);
  REQUIRE(got[0].id == 1);
  REQUIRE(h.device.error() == errc::packed_bad_flags);
  REQUIRE(h.device.pop_buffers(got).error() == errc::broken);
}

TEST_CASE("2.8.1 IN_ORDER pop_buffers: the previous lap's AVAIL bit is not available") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 1, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 2, U | WRITE);  // available in lap 0, we are in lap 1
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 1);
  REQUIRE_FALSE(h.device.broken());
  REQUIRE(*h.device.pop_buffers(got) == 0);
}

TEST_CASE("2.8.20 IN_ORDER complete(span): ids of any value, completed in pop order only") {
  hostile_driver h(5);
  // A driver may pick any free ids (2.8.4); this one picks 4, 1, 3, then a two-descriptor
  // chain with id 0 (its id in the last descriptor), then 2.
  put_desc(h.v(), 0, h.ga(0), 8, 4, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 1, A | WRITE);
  put_desc(h.v(), 2, h.ga(16), 8, 3, A | WRITE);
  popped_buffer got[5];
  REQUIRE(*h.device.pop_buffers(got) == 3);
  put_desc(h.v(), 4, h.ga(32), 8, 0, A | WRITE);
  put_desc(h.v(), 3, h.ga(24), 8, 0, A | WRITE | packed::desc_f_next);
  chain c;
  REQUIRE(h.device.pop(c) == errc::ok);
  REQUIRE(c.id() == 0);
  REQUIRE(c.writable_bytes() == 16);
  REQUIRE(h.device.in_flight() == 4);

  SECTION("not the oldest, first or mid-batch") {
    const used_entry first[1] = {{1, 1}};
    REQUIRE(h.device.complete(first).error() == errc::invalid_argument);
    const used_entry d[3] = {{4, 8}, {3, 1}, {1, 1}};
    REQUIRE(*h.device.complete(d) == 1);
    REQUIRE(h.device.in_flight() == 3);
  }
  SECTION("2.7.8.2 len over the oldest's writable bytes") {
    const used_entry d[2] = {{4, 8}, {1, 9}};
    REQUIRE(*h.device.complete(d) == 1);
  }
  SECTION("out of range") {
    const used_entry d[2] = {{4, 8}, {5, 0}};
    REQUIRE(*h.device.complete(d) == 1);
  }
  SECTION("past the chains in flight, even naming the last one again") {
    const used_entry d[5] = {{4, 8}, {1, 8}, {3, 8}, {0, 16}, {0, 0}};
    REQUIRE(*h.device.complete(d) == 4);
    REQUIRE(h.device.in_flight() == 0);
    const used_entry again[1] = {{0, 0}};
    REQUIRE(h.device.complete(again).error() == errc::invalid_argument);
    // One used descriptor per chain, the two-slot chain's skipping both its slots (2.8.9).
    h.device.interrupt_prepare();
    REQUIRE(get<le>(h.v().ring[0].id) == 4);
    REQUIRE(get<le>(h.v().ring[3].id) == 0);
    REQUIRE(get<le>(h.v().ring[3].len) == 16);
  }
  REQUIRE_FALSE(h.device.broken());
}

TEST_CASE("2.8.20 IN_ORDER complete_in_order after pop_buffers: one descriptor, all slots") {
  hostile_driver h(4);
  put_desc(h.v(), 0, h.ga(0), 8, 2, A | WRITE);
  put_desc(h.v(), 1, h.ga(8), 8, 0, A | WRITE);
  put_desc(h.v(), 2, h.ga(16), 8, 3, A | WRITE);
  popped_buffer got[4];
  REQUIRE(*h.device.pop_buffers(got) == 3);
  // A batch of no chains is the caller's error: it would write a used descriptor for none.
  REQUIRE(h.device.complete_in_order(0, 0) == errc::invalid_argument);
  REQUIRE(h.device.complete_in_order(2, 9) == errc::invalid_argument);  // 2.7.8.2: 8 bytes
  REQUIRE(h.device.complete_in_order(2, 8) == errc::ok);
  // The oldest in flight is now id 3 at slot 2.
  const used_entry wrong[1] = {{2, 0}};
  REQUIRE(h.device.complete(wrong).error() == errc::invalid_argument);
  const used_entry right[1] = {{3, 1}};
  REQUIRE(*h.device.complete(right) == 1);
  h.device.interrupt_prepare();
  REQUIRE(get<le>(h.v().ring[0].id) == 0);  // the batch's last id, at the batch's first slot
  REQUIRE(get<le>(h.v().ring[2].id) == 3);
  REQUIRE_FALSE(h.device.broken());
}
