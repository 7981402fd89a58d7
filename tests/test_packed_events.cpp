// SPDX-License-Identifier: MIT
// Packed ring event suppression (2.8.10): the flags each side writes into its event area for
// each suppression policy, how the other side decides, and the race-free re-enable.
#include <catch2/catch.hpp>

#include <cstdint>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {
using none_policy = virtq_test::none_policy;

template <class P>
void round_trip(pair<P>& q, const virtq_test::buffer_arena& a, bool expect_kick, bool expect_irq) {
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
  REQUIRE(q.driver.kick_prepare() == expect_kick);
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  REQUIRE(q.device.interrupt_prepare() == expect_irq);
  REQUIRE(q.driver.get_used());
}
}  // namespace

TEST_CASE("flags policy: enable 0 / disable 1 in both event areas decide kick and interrupt") {
  pair<flags_policy> q(5);  // EVENT_IDX not negotiated
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  round_trip(q, a, true, true);  // a fresh ring asks for everything
  q.device.disable_notifications();
  REQUIRE(load_relaxed<le>(v.device_event->flags) == packed::event_flags_disable);
  round_trip(q, a, false, true);
  REQUIRE_FALSE(q.device.enable_notifications());
  REQUIRE(load_relaxed<le>(v.device_event->flags) == packed::event_flags_enable);
  round_trip(q, a, true, true);
  q.driver.disable_interrupts();
  REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_disable);
  round_trip(q, a, true, false);
  REQUIRE_FALSE(q.driver.enable_interrupts());
  REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_enable);
  round_trip(q, a, true, true);
  const queue_stats& ds = q.driver.stats();
  REQUIRE(ds.kicks == 4);
  REQUIRE(ds.kicks_suppressed == 1);
  REQUIRE(q.device.stats().interrupts == 4);
  REQUIRE(q.device.stats().interrupts_suppressed == 1);
}

TEST_CASE("event policy: desc mode fires once when the named slot is passed") {
  pair<> q(4);
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  REQUIRE_FALSE(q.device.enable_notifications());
  REQUIRE(load_relaxed<le>(v.device_event->flags) == packed::event_flags_desc);
  REQUIRE(load_relaxed<le>(v.device_event->off_wrap) == packed::make_off_wrap(0, true));
  REQUIRE_FALSE(q.driver.enable_interrupts());
  REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_desc);
  round_trip(q, a, true, true);  // both events at slot 0: passed
  // While enabled, each event follows its side's position (the device's on pop, the driver's
  // on reap), so the next publish is signalled again without a new enable call.
  REQUIRE(load_relaxed<le>(v.device_event->off_wrap) == packed::make_off_wrap(1, true));
  REQUIRE(load_relaxed<le>(v.driver_event->off_wrap) == packed::make_off_wrap(1, true));
  round_trip(q, a, true, true);
  // An event left behind (as a peer that does not follow would leave it) is not signalled.
  store_relaxed<le>(v.device_event->off_wrap, packed::make_off_wrap(1, true));
  store_relaxed<le>(v.driver_event->off_wrap, packed::make_off_wrap(1, true));
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
  REQUIRE_FALSE(q.driver.kick_prepare());
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);  // the device's event follows again: slot 3
  store_relaxed<le>(v.driver_event->off_wrap, packed::make_off_wrap(1, true));
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  REQUIRE_FALSE(q.device.interrupt_prepare());
  REQUIRE(q.driver.get_used());  // and the driver's: slot 3
  REQUIRE(load_relaxed<le>(v.device_event->off_wrap) == packed::make_off_wrap(3, true));
  REQUIRE(load_relaxed<le>(v.driver_event->off_wrap) == packed::make_off_wrap(3, true));
  round_trip(q, a, true, true);
  // Flags still override desc mode: disable wins.
  q.device.disable_notifications();
  q.driver.disable_interrupts();
  REQUIRE(load_relaxed<le>(v.device_event->flags) == packed::event_flags_disable);
  REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_disable);
  round_trip(q, a, false, false);
  // An explicitly enabled area (flags 0, as a peer without EVENT_IDX use would write) means
  // every publish.
  store_relaxed<le>(v.device_event->flags, packed::event_flags_enable);
  store_relaxed<le>(v.driver_event->flags, packed::event_flags_enable);
  round_trip(q, a, true, true);
  round_trip(q, a, true, true);
}

TEST_CASE("none policy: never writes an event area, always kicks and interrupts") {
  pair<none_policy> q(3);
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  store_relaxed<le>(v.device_event->flags, packed::event_flags_disable);
  store_relaxed<le>(v.driver_event->flags, packed::event_flags_disable);
  q.driver.disable_interrupts();
  q.device.disable_notifications();
  REQUIRE_FALSE(q.driver.enable_interrupts());
  REQUIRE_FALSE(q.device.enable_notifications());
  // The areas still say what the test wrote: suppress_none leaves them alone...
  REQUIRE(load_relaxed<le>(v.device_event->flags) == packed::event_flags_disable);
  REQUIRE(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_disable);
  // ...and ignores the peer's hints.
  for (int i = 0; i < 5; ++i) round_trip(q, a, true, true);
}

TEST_CASE("re-enabling reports work that arrived while disabled (no lost wake-up)") {
  pair<> q(8);
  virtq_test::buffer_arena a(4096);
  q.device.disable_notifications();
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
  REQUIRE_FALSE(q.driver.kick_prepare());    // device said: don't
  REQUIRE(q.device.enable_notifications());  // ...so it must find the chain on re-enable
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE_FALSE(q.device.enable_notifications());

  q.driver.disable_interrupts();
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  REQUIRE_FALSE(q.device.interrupt_prepare());  // driver said: don't
  REQUIRE(q.driver.enable_interrupts());        // ...so it must find the used one
  REQUIRE(q.driver.get_used());
  REQUIRE_FALSE(q.driver.enable_interrupts());

  // Delayed: pending work is reported the same way.
  for (token_t t = 0; t < 4; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), t) == errc::ok);
  (void)q.driver.kick_prepare();
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  (void)q.device.interrupt_prepare();
  REQUIRE(q.driver.enable_interrupts_delayed());
}

TEST_CASE("delayed enable: the event does not follow reaps") {
  pair<> q(16);
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  for (token_t t = 0; t < 8; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), t) == errc::ok);
  (void)q.driver.kick_prepare();
  REQUIRE_FALSE(q.driver.enable_interrupts_delayed());  // event at slot 6
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  (void)q.device.interrupt_prepare();
  REQUIRE(q.driver.get_used());
  REQUIRE(load_relaxed<le>(v.driver_event->off_wrap) == packed::make_off_wrap(6, true));
  REQUIRE_FALSE(q.driver.enable_interrupts());  // a plain enable follows again
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete(c, 0) == errc::ok);
  (void)q.device.interrupt_prepare();
  REQUIRE(q.driver.get_used());
  REQUIRE(load_relaxed<le>(v.driver_event->off_wrap) == packed::make_off_wrap(2, true));
}

TEST_CASE("delayed enable: the interrupt comes after ~3/4 of the outstanding slots") {
  pair<> q(16);
  virtq_test::buffer_arena a(4096);
  for (token_t t = 0; t < 8; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), t) == errc::ok);
  (void)q.driver.kick_prepare();
  REQUIRE_FALSE(q.driver.enable_interrupts_delayed());  // event at slot 0 + 6
  chain c;
  int irqs_before = 0;
  for (int i = 0; i < 8; ++i) {
    REQUIRE(q.device.pop(c) == errc::ok);
    REQUIRE(q.device.complete(c, 0) == errc::ok);
    const bool irq = q.device.interrupt_prepare();
    if (i < 6) irqs_before += irq ? 1 : 0;
    if (i == 6) REQUIRE(irq);  // the used descriptor at slot 6 passes the event
    if (i == 7) REQUIRE_FALSE(irq);
  }
  REQUIRE(irqs_before == 0);
}

TEST_CASE("an interrupt_prepare or kick_prepare with nothing new says no and counts nothing") {
  pair<flags_policy> q(4);
  REQUIRE_FALSE(q.driver.kick_prepare());
  REQUIRE_FALSE(q.device.interrupt_prepare());
  REQUIRE(q.driver.stats().kicks_suppressed == 0);
  REQUIRE(q.device.stats().interrupts_suppressed == 0);
}

TEST_CASE("2.8.10 DESC without EVENT_IDX means nothing: the peer is still told") {
  // RING_EVENT_FLAGS_DESC is only defined with VIRTIO_F_EVENT_IDX. A side that did not
  // negotiate it cannot read an offset into the area, and must not go silent because of it.
  pair<flags_policy> q(5);  // EVENT_IDX not negotiated
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  for (const std::uint16_t slot : {std::uint16_t{4}, std::uint16_t{0}}) {
    store_relaxed<le>(v.device_event->off_wrap, packed::make_off_wrap(slot, false));
    store_relaxed<le>(v.device_event->flags, packed::event_flags_desc);
    store_relaxed<le>(v.driver_event->off_wrap, packed::make_off_wrap(slot, false));
    store_relaxed<le>(v.driver_event->flags, packed::event_flags_desc);
    round_trip(q, a, true, true);
    round_trip(q, a, true, true);
  }
  // And our own sides, without EVENT_IDX, write only enable and disable.
  q.driver.disable_interrupts();
  q.device.disable_notifications();
  CHECK(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_disable);
  CHECK(load_relaxed<le>(v.device_event->flags) == packed::event_flags_disable);
  CHECK_FALSE(q.driver.enable_interrupts());
  CHECK_FALSE(q.device.enable_notifications());
  CHECK(load_relaxed<le>(v.driver_event->flags) == packed::event_flags_enable);
  CHECK(load_relaxed<le>(v.device_event->flags) == packed::event_flags_enable);
}

TEST_CASE("2.8.10 the reserved flags value 3 suppresses nothing, and is never written") {
  virtq_test::buffer_arena a(4096);
  const auto reserved_means_tell = [&](auto& q) {
    const auto& v = q.ring.view();
    store_relaxed<le>(v.device_event->flags, std::uint16_t{3});
    store_relaxed<le>(v.driver_event->flags, std::uint16_t{3});
    round_trip(q, a, true, true);
    round_trip(q, a, true, true);
    // Whatever each side writes into its own area afterwards is one of 0, 1, 2.
    q.driver.disable_interrupts();
    q.device.disable_notifications();
    CHECK(load_relaxed<le>(v.driver_event->flags) <= packed::event_flags_desc);
    CHECK(load_relaxed<le>(v.device_event->flags) <= packed::event_flags_desc);
    (void)q.driver.enable_interrupts();
    (void)q.device.enable_notifications();
    (void)q.driver.enable_interrupts_delayed();
    CHECK(load_relaxed<le>(v.driver_event->flags) <= packed::event_flags_desc);
    CHECK(load_relaxed<le>(v.device_event->flags) <= packed::event_flags_desc);
  };
  SECTION("event policy") {
    pair<> q(5);
    reserved_means_tell(q);
  }
  SECTION("flags policy") {
    pair<flags_policy> q(5);
    reserved_means_tell(q);
  }
}
