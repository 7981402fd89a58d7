// SPDX-License-Identifier: MIT
// Packed ring wrap counters (2.8.1) and event offsets across the wrap (2.8.10), checked against
// an oracle that computes every position from a linear slot count with division and modulo.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {

std::uint32_t rnd(std::mt19937& rng, std::uint64_t n) {
  return static_cast<std::uint32_t>(rng() % n);
}

const std::uint32_t sizes[] = {1, 2, 3, 5, 7, 255, 1000};

/// One single-slot chain through the whole pair: add, kick, pop, complete, publish, reap.
void cycle_one(pair<>& q, const virtq_test::buffer_arena& a, token_t token) {
  REQUIRE(q.driver.add_inbuf(a.at(0, 64), token) == errc::ok);
  (void)q.driver.kick_prepare();
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 8) == errc::ok);
  (void)q.device.interrupt_prepare();
  const auto u = q.driver.get_used();
  REQUIRE(u);
  REQUIRE(u->token == token);
}

}  // namespace

TEST_CASE("single-slot chains: avail and used flags follow the wrap counter lap after lap") {
  for (const std::uint32_t size : sizes) {
    CAPTURE(size);
    pair<> q(size);
    virtq_test::buffer_arena a(4096);
    const auto& v = q.ring.view();
    const std::uint64_t total = std::uint64_t{size} * 5 + 3;
    for (std::uint64_t i = 0; i < total; ++i) {
      CAPTURE(i);
      const position p = at_linear(i, size);
      REQUIRE(q.driver.add_inbuf(a.at(0, 64), i) == errc::ok);
      (void)q.driver.kick_prepare();
      // 2.8.1: available means AVAIL == driver wrap counter, USED == its inverse.
      REQUIRE(packed::is_avail(flags_at(v, p.off), p.wrap));
      const notification n = decode_notification(q.driver.notification_data(0));
      const position next = at_linear(i + 1, size);
      REQUIRE(n.next_off == next.off);
      REQUIRE(n.next_wrap == next.wrap);
      chain c;
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(c.ring_slots() == 1);
      REQUIRE(q.device.complete(c, 8) == errc::ok);
      (void)q.device.interrupt_prepare();
      // Used: AVAIL == USED == device wrap counter.
      REQUIRE(packed::is_used(flags_at(v, p.off), p.wrap));
      const auto u = q.driver.get_used();
      REQUIRE(u);
      REQUIRE(u->token == i);
      REQUIRE(u->len == 8);
    }
    REQUIRE(q.driver.num_free() == size);
  }
}

TEST_CASE("a chain exactly as long as the queue flips driver and device wrap exactly once") {
  for (const std::uint32_t size : {1U, 2U, 3U, 5U, 7U, 255U}) {
    for (const std::uint32_t start : {0U, 1U, size - 1}) {
      if (start >= size) continue;
      CAPTURE(size, start);
      pair<> q(size);
      virtq_test::buffer_arena a(std::size_t{size} * 16 + 64);
      const auto& v = q.ring.view();
      std::uint64_t lin = 0;
      for (; lin < start; ++lin) cycle_one(q, a, 1000 + lin);

      for (int lap = 0; lap < 3; ++lap) {
        CAPTURE(lap);
        std::vector<buffer> out, in;
        for (std::uint32_t j = 0; j < size; ++j) {
          (j < size / 2 ? out : in).push_back(a.at(j * 16, 16));
        }
        const token_t tok = 7 + static_cast<token_t>(lap);
        REQUIRE(q.driver.add(out, in, tok) == errc::ok);
        REQUIRE(q.driver.num_free() == 0);
        (void)q.driver.kick_prepare();
        // Every descriptor carries the wrap counter of its own slot: the ones past the last slot
        // carry the flipped counter.
        for (std::uint32_t j = 0; j < size; ++j) {
          const position p = at_linear(lin + j, size);
          CAPTURE(j);
          REQUIRE(packed::is_avail(flags_at(v, p.off), p.wrap));
        }
        // The next position is the same offset, one lap (one flip) later.
        const notification n = decode_notification(q.driver.notification_data(3));
        const position after = at_linear(lin + size, size);
        REQUIRE(n.next_off == after.off);
        REQUIRE(n.next_wrap == after.wrap);
        REQUIRE(n.next_wrap != at_linear(lin, size).wrap);

        chain c;
        REQUIRE(q.device.pop(c) == errc::ok);
        REQUIRE(c.descriptors() == size);
        REQUIRE(c.ring_slots() == size);
        REQUIRE(c.readable().size() == size / 2);
        REQUIRE(c.writable().size() == size - size / 2);
        REQUIRE(q.device.pop(c) == errc::empty);  // the device's counter flipped: nothing more
        REQUIRE(q.device.complete(c, 16) == errc::ok);
        REQUIRE(q.device.interrupt_prepare());
        // One used descriptor at the chain's first slot, under the device's wrap of that lap.
        const position first = at_linear(lin, size);
        REQUIRE(packed::is_used(flags_at(v, first.off), first.wrap));
        const auto u = q.driver.get_used();
        REQUIRE(u);
        REQUIRE(u->token == tok);
        REQUIRE(q.driver.get_used().error() == errc::empty);
        REQUIRE(q.driver.num_free() == size);
        lin += size;
        // A single chain right after: both sides agree on the flipped counters.
        cycle_one(q, a, 500 + lin);
        ++lin;
      }
    }
  }
}

TEST_CASE("many laps: mixed chain lengths, batches and out-of-order completion") {
  std::mt19937 rng(12345);
  for (const std::uint32_t size : {1U, 2U, 3U, 5U, 7U, 17U, 255U, 256U, 1000U}) {
    CAPTURE(size);
    pair<> q(size);
    virtq_test::buffer_arena a(4096);
    std::uint64_t lin = 0;  // slots published so far
    token_t next_token = 1;
    std::vector<chain> held;
    std::vector<token_t> expected;
    for (int round = 0; round < 400; ++round) {
      // Stage a batch of chains of random length while they fit, publish it with one kick.
      const std::uint32_t batch = 1 + rnd(rng, 4);
      std::vector<std::pair<token_t, std::uint32_t>> staged;
      for (std::uint32_t b = 0; b < batch; ++b) {
        const std::uint32_t n = 1 + rnd(rng, std::min<std::uint32_t>(size, 6));
        std::vector<buffer> out(n - n / 2, a.at(0, 32)), in(n / 2, a.at(64, 32));
        const errc e = q.driver.add(out, in, next_token);
        if (e == errc::no_space) break;
        REQUIRE(e == errc::ok);
        staged.emplace_back(next_token++, n);
        lin += n;
      }
      (void)q.driver.kick_prepare();
      const notification nd = decode_notification(q.driver.notification_data(0));
      const position p = at_linear(lin, size);
      REQUIRE(nd.next_off == p.off);
      REQUIRE(nd.next_wrap == p.wrap);
      for (;;) {
        chain c;
        const errc e = q.device.pop(c);
        if (e == errc::empty) break;
        REQUIRE(e == errc::ok);
        held.push_back(c);
      }
      // Complete a random subset in random order: used descriptors skip by ring slots.
      std::shuffle(held.begin(), held.end(), rng);
      const std::size_t k = held.empty() ? 0 : 1 + rnd(rng, held.size());
      for (std::size_t i = 0; i < k; ++i) {
        REQUIRE(q.device.complete(held.back(), 0) == errc::ok);
        held.pop_back();
      }
      (void)q.device.interrupt_prepare();
      std::size_t reaped = 0;
      while (auto u = q.driver.get_used()) {
        expected.push_back(u->token);
        ++reaped;
      }
      REQUIRE(reaped == k);
      REQUIRE(!q.driver.broken());
      REQUIRE(!q.device.broken());
    }
    // Drain: every token comes back exactly once.
    for (const chain& c : held) REQUIRE(q.device.complete(c, 0) == errc::ok);
    (void)q.device.interrupt_prepare();
    while (auto u = q.driver.get_used()) expected.push_back(u->token);
    std::sort(expected.begin(), expected.end());
    REQUIRE(expected.size() == next_token - 1);
    for (std::size_t i = 0; i < expected.size(); ++i) REQUIRE(expected[i] == i + 1);
    REQUIRE(q.driver.num_free() == size);
    REQUIRE(lin > 3 * size);  // several laps
  }
}

namespace {
/// The oracle for 2.8.10: the event (off, wrap) was passed iff one of the linear positions
/// [from, from + n) is that offset in a lap with that wrap counter.
bool passes(std::uint64_t from, std::uint32_t n, std::uint16_t off_wrap, std::uint32_t size) {
  for (std::uint64_t p = from; p < from + n; ++p) {
    const position q = at_linear(p, size);
    if (q.off == packed::off_of(off_wrap) && q.wrap == packed::wrap_of(off_wrap)) return true;
  }
  return false;
}
}  // namespace

TEST_CASE("desc-mode events across the wrap point: kick and interrupt decisions") {
  std::mt19937 rng(777);
  for (const std::uint32_t size : {1U, 2U, 3U, 5U, 7U, 255U}) {
    CAPTURE(size);
    pair<> q(size);  // suppress_event_idx
    virtq_test::buffer_arena a(4096);
    const auto& v = q.ring.view();
    std::uint64_t lin = 0;
    int kicks = 0, quiet = 0, irqs = 0, irq_quiet = 0;
    for (int step = 0; step < 3000; ++step) {
      const std::uint32_t k = 1 + rnd(rng, size);  // single-slot chains this step
      // The device asks for a notification at a position near the current one, before or
      // after it, possibly in the previous or next lap.
      const auto r = static_cast<std::int64_t>(rnd(rng, 2 * size + 1)) - std::int64_t{size};
      const position e = at_linear(
          static_cast<std::uint64_t>(static_cast<std::int64_t>(lin + 2 * size) + r), size);
      store_relaxed<le>(v.device_event->off_wrap, packed::make_off_wrap(e.off, e.wrap));
      store_relaxed<le>(v.device_event->flags, packed::event_flags_desc);
      for (std::uint32_t i = 0; i < k; ++i) {
        REQUIRE(q.driver.add_inbuf(a.at(0, 16), lin + i) == errc::ok);
      }
      const bool expect = passes(lin, k, packed::make_off_wrap(e.off, e.wrap), size);
      CAPTURE(step, lin, k, e.off, e.wrap);
      const bool kick = q.driver.kick_prepare();
      REQUIRE(kick == expect);
      ++(kick ? kicks : quiet);

      std::vector<chain> cs(k);
      for (auto& c : cs) REQUIRE(q.device.pop(c) == errc::ok);
      // Same for the driver's event area and the device's interrupt decision.
      const auto r2 = static_cast<std::int64_t>(rnd(rng, 2 * size + 1)) - std::int64_t{size};
      const position e2 = at_linear(
          static_cast<std::uint64_t>(static_cast<std::int64_t>(lin + 2 * size) + r2), size);
      store_relaxed<le>(v.driver_event->off_wrap, packed::make_off_wrap(e2.off, e2.wrap));
      store_relaxed<le>(v.driver_event->flags, packed::event_flags_desc);
      for (auto& c : cs) REQUIRE(q.device.complete(c, 0) == errc::ok);
      const bool expect_irq = passes(lin, k, packed::make_off_wrap(e2.off, e2.wrap), size);
      const bool irq = q.device.interrupt_prepare();
      REQUIRE(irq == expect_irq);
      ++(irq ? irqs : irq_quiet);
      for (std::uint32_t i = 0; i < k; ++i) REQUIRE(q.driver.get_used());
      lin += k;
    }
    // Both outcomes were exercised (the oracle is not trivially true or false).
    if (size > 1) {
      REQUIRE(kicks > 0);
      REQUIRE(quiet > 0);
      REQUIRE(irqs > 0);
      REQUIRE(irq_quiet > 0);
    }
  }
}

TEST_CASE("hand-computed kick decisions just before and just after the wrap") {
  // size 5, driver at offset 3 of lap 0 (wrap 1); it publishes 3 slots: 3, 4 (wrap 1), 0 (wrap 0).
  pair<> q(5);
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  for (token_t t = 0; t < 3; ++t) cycle_one(q, a, t);
  const auto kick_with_event = [&](std::uint16_t off, bool wrap) {
    store_relaxed<le>(v.device_event->off_wrap, packed::make_off_wrap(off, wrap));
    store_relaxed<le>(v.device_event->flags, packed::event_flags_desc);
    for (int i = 0; i < 3; ++i) REQUIRE(q.driver.add_inbuf(a.at(0, 16), 99) == errc::ok);
    const bool kick = q.driver.kick_prepare();
    chain c;
    for (int i = 0; i < 3; ++i) {
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(q.device.complete(c, 0) == errc::ok);
    }
    (void)q.device.interrupt_prepare();
    for (int i = 0; i < 3; ++i) REQUIRE(q.driver.get_used());
    return kick;
  };
  // Published: (3,w1) (4,w1) (0,w0). Now at (1, w0).
  REQUIRE(kick_with_event(4, true));  // last slot before the wrap
  // Published: (1,w0) (2,w0) (3,w0). Now at (4, w0).
  REQUIRE_FALSE(kick_with_event(0, false));  // (0,w0) was the lap before: already passed
  // Published: (4,w0) (0,w1) (1,w1). Now at (2, w1).
  REQUIRE(kick_with_event(0, true));  // first slot after the wrap
  // Published: (2,w1) (3,w1) (4,w1). Now at (0, w0).
  REQUIRE_FALSE(kick_with_event(0, false));  // the next slot, not yet published
  // Published: (0,w0) (1,w0) (2,w0).
  REQUIRE(kick_with_event(0, false));
}

TEST_CASE("event offsets the two sides write name their next position, with its wrap") {
  for (const std::uint32_t size : {3U, 7U, 255U}) {
    CAPTURE(size);
    pair<> q(size);
    virtq_test::buffer_arena a(4096);
    const auto& v = q.ring.view();
    std::uint64_t lin = 0;
    for (int round = 0; round < 40; ++round) {
      const std::uint32_t outstanding = 1 + static_cast<std::uint32_t>(round) % size;
      for (std::uint32_t i = 0; i < outstanding; ++i) {
        REQUIRE(q.driver.add_inbuf(a.at(0, 16), i) == errc::ok);
      }
      (void)q.driver.kick_prepare();
      // Device: desc mode at the next slot it will look at.
      {
        const position p = at_linear(lin, size);
        REQUIRE(q.device.enable_notifications());  // chains are waiting
        const std::uint16_t ow = load_relaxed<le>(v.device_event->off_wrap);
        REQUIRE(packed::off_of(ow) == p.off);
        REQUIRE(packed::wrap_of(ow) == p.wrap);
      }
      // Driver: delayed enable asks for the used slot ~3/4 of the outstanding ones ahead.
      REQUIRE_FALSE(q.driver.enable_interrupts_delayed());
      const position d = at_linear(lin + (outstanding * 3) / 4, size);
      const std::uint16_t dow = load_relaxed<le>(v.driver_event->off_wrap);
      REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_desc);
      REQUIRE(packed::off_of(dow) == d.off);
      REQUIRE(packed::wrap_of(dow) == d.wrap);
      chain c;
      for (std::uint32_t i = 0; i < outstanding; ++i) {
        REQUIRE(q.device.pop(c) == errc::ok);
        REQUIRE(q.device.complete(c, 0) == errc::ok);
      }
      (void)q.device.interrupt_prepare();
      REQUIRE(q.driver.enable_interrupts());  // used descriptors are pending
      const position u = at_linear(lin, size);
      const std::uint16_t uow = load_relaxed<le>(v.driver_event->off_wrap);
      REQUIRE(packed::off_of(uow) == u.off);
      REQUIRE(packed::wrap_of(uow) == u.wrap);
      for (std::uint32_t i = 0; i < outstanding; ++i) REQUIRE(q.driver.get_used());
      REQUIRE_FALSE(q.driver.enable_interrupts());
      lin += outstanding;
    }
  }
}
