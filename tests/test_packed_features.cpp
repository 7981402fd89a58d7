// SPDX-License-Identifier: MIT
// Packed ring features: indirect tables (2.8.7), IN_ORDER batches (2.8.11), notification data,
// reset (every token back exactly once), construction errors, checked mode.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "test_packed_common.hpp"

using namespace virtq;
using namespace packed_test;

namespace {
template <class F>
errc construction_error(F&& f) {
  try {
    f();
  } catch (const virtq::error& e) {
    return e.value();
  }
  return errc::ok;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Indirect descriptors
// ---------------------------------------------------------------------------------------------

TEST_CASE("indirect: a chain at or over the threshold takes one ring slot, data round-trips") {
  driver_options o;
  o.indirect_max = 4;
  o.indirect_threshold = 2;
  pair<> q(4, packed_features<>(), o);
  virtq_test::buffer_arena a(8192);
  const auto& v = q.ring.view();
  for (int round = 0; round < 5; ++round) {
    for (token_t t = 0; t < 4; ++t) {
      std::memset(a.data() + 1024 * t, static_cast<int>(t + 1), 16);
      const buffer out[] = {a.at(1024 * static_cast<std::size_t>(t), 16)};
      const buffer in[] = {a.at(1024 * static_cast<std::size_t>(t) + 256, 8),
                           a.at(1024 * static_cast<std::size_t>(t) + 512, 8)};
      const std::uint32_t slot = static_cast<std::uint32_t>(t);
      REQUIRE(q.driver.add(out, in, t) == errc::ok);
      REQUIRE(q.driver.num_free() == 3 - t);  // one slot per chain
      // The batch's first head keeps its flags until kick_prepare (D1).
      if (t != 0) REQUIRE((flags_at(v, slot) & packed::desc_f_indirect) != 0);
      REQUIRE(get<le>(v.ring[slot].len) == 48);  // three table entries
    }
    const buffer one[] = {a.at(0, 8)};
    REQUIRE(q.driver.add({}, one, 99) == errc::no_space);
    (void)q.driver.kick_prepare();
    REQUIRE((flags_at(v, 0) & packed::desc_f_indirect) != 0);
    for (token_t t = 0; t < 4; ++t) {
      chain c;
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(c.ring_slots() == 1);
      REQUIRE(c.descriptors() == 3);
      REQUIRE(c.readable().size() == 1);
      REQUIRE(c.writable_bytes() == 16);
      std::byte in[16];
      REQUIRE(c.read(in) == 16);
      REQUIRE(in[0] == static_cast<std::byte>(t + 1));
      const std::byte reply[12] = {std::byte{0xAB}};
      REQUIRE(c.write(reply) == 12);
      REQUIRE(q.device.complete(c, 12) == errc::ok);
    }
    (void)q.device.interrupt_prepare();
    for (token_t t = 0; t < 4; ++t) {
      const auto u = q.driver.get_used();
      REQUIRE(u);
      REQUIRE(u->token == t);
      REQUIRE(u->len == 12);
      REQUIRE(a.data()[1024 * t + 256] == std::byte{0xAB});
    }
  }
}

TEST_CASE("indirect: below the threshold or above indirect_max the chain is direct") {
  driver_options o;
  o.indirect_max = 2;
  o.indirect_threshold = 2;
  pair<> q(8, packed_features<>(), o);
  virtq_test::buffer_arena a(4096);
  const buffer one[] = {a.at(0, 8)};
  const buffer three[] = {a.at(0, 8), a.at(8, 8), a.at(16, 8)};
  REQUIRE(q.driver.add(one, {}, 1) == errc::ok);
  REQUIRE(q.driver.num_free() == 7);
  REQUIRE(q.driver.add({}, three, 2) == errc::ok);
  REQUIRE(q.driver.num_free() == 4);
  (void)q.driver.kick_prepare();
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(c.ring_slots() == 1);
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(c.ring_slots() == 3);
  REQUIRE(c.writable().size() == 3);
}

// ---------------------------------------------------------------------------------------------
// IN_ORDER
// ---------------------------------------------------------------------------------------------

TEST_CASE("IN_ORDER: one used descriptor stands for a batch and skips all its slots") {
  const features f = packed_features<>().with(feature::in_order);
  pair<> q(16, f);
  virtq_test::buffer_arena a(4096);
  const auto& v = q.ring.view();
  const std::uint32_t lens[] = {1, 2, 3, 1, 2};  // slots per chain: starts 0, 1, 3, 6, 7
  for (int lap = 0; lap < 6; ++lap) {
    CAPTURE(lap);
    for (token_t t = 0; t < 5; ++t) {
      std::vector<buffer> in(lens[t], a.at(64 * static_cast<std::size_t>(t), 16));
      REQUIRE(q.driver.add({}, in, t) == errc::ok);
    }
    (void)q.driver.kick_prepare();
    std::vector<chain> cs(5);
    for (auto& c : cs) REQUIRE(q.device.pop(c) == errc::ok);
    REQUIRE(q.device.complete(cs[1].id(), 0) == errc::invalid_argument);   // not the oldest
    REQUIRE(q.device.complete_in_order(6, 0) == errc::invalid_argument);   // only 5 held
    REQUIRE(q.device.complete_in_order(3, 49) == errc::invalid_argument);  // over-states
    REQUIRE(q.device.complete_in_order(3, 7) == errc::ok);
    (void)q.device.interrupt_prepare();
    // The used descriptor sits at the batch's first slot and carries the LAST chain's id.
    const position first = at_linear(static_cast<std::uint64_t>(lap) * 9, 16);
    REQUIRE(packed::is_used(flags_at(v, first.off), first.wrap));
    REQUIRE(get<le>(v.ring[first.off].id) == cs[2].id());
    for (token_t t = 0; t < 3; ++t) {
      const auto u = q.driver.get_used();
      REQUIRE(u);
      REQUIRE(u->token == t);
      REQUIRE(u->len == (t == 2 ? 7U : 0U));  // earlier chains of a batch carry no length
    }
    REQUIRE(q.driver.get_used().error() == errc::empty);
    REQUIRE(q.driver.num_free() == 16 - 3);
    REQUIRE(q.device.complete(cs[3], 1) == errc::ok);
    REQUIRE(q.device.complete_in_order(1, 2) == errc::ok);
    (void)q.device.interrupt_prepare();
    std::vector<used_buffer> out(4);
    const auto n = q.driver.get_used(out);
    REQUIRE(n);
    REQUIRE(*n == 2);
    REQUIRE(out[0].token == 3);
    REQUIRE(out[1].token == 4);
    REQUIRE(out[1].len == 2);
    REQUIRE(q.driver.num_free() == 16);
  }
}

TEST_CASE("IN_ORDER: complete_in_order needs the feature") {
  pair<> q(8);
  virtq_test::buffer_arena a(4096);
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 1) == errc::ok);
  (void)q.driver.kick_prepare();
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  REQUIRE(q.device.complete_in_order(1, 0) == errc::invalid_argument);
  REQUIRE_FALSE(q.device.broken());
}

// ---------------------------------------------------------------------------------------------
// Notification data
// ---------------------------------------------------------------------------------------------

TEST_CASE("notification data names the next offset and wrap after the last publish") {
  const features f = packed_features<>().with(feature::notification_data);
  pair<> q(5, f);
  virtq_test::buffer_arena a(4096);
  REQUIRE(q.driver.notification_data(0x1234) == encode_notification({0x1234, 0, true}));
  const buffer three[] = {a.at(0, 8), a.at(8, 8), a.at(16, 8)};
  REQUIRE(q.driver.add({}, three, 1) == errc::ok);
  // Staged, not published: the value still names the published position.
  REQUIRE(q.driver.notification_data(7) == encode_notification({7, 0, true}));
  (void)q.driver.kick_prepare();
  REQUIRE(q.driver.notification_data(7) == encode_notification({7, 3, true}));
  REQUIRE(q.driver.add({}, three, 2) == errc::no_space);  // two slots left
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 3) == errc::ok);
  REQUIRE(q.driver.add_inbuf(a.at(0, 8), 4) == errc::ok);
  (void)q.driver.kick_prepare();
  // Past the last slot: offset 0 with the flipped wrap counter.
  REQUIRE(q.driver.notification_data(7) == encode_notification({7, 0, false}));
  REQUIRE(decode_notification(q.driver.notification_data(7)).vqn == 7);
}

// ---------------------------------------------------------------------------------------------
// Reset
// ---------------------------------------------------------------------------------------------

TEST_CASE("reset returns every outstanding token exactly once: staged, published, used") {
  for (const bool in_order : {false, true}) {
    CAPTURE(in_order);
    features f = packed_features<>();
    if (in_order) f = f.with(feature::in_order);
    pair<> q(8, f);
    virtq_test::buffer_arena a(4096);
    // 0: used and reaped (must NOT come back). 1: used, not reaped. 2: popped, held by the
    // device. 3, 4: published only. 5: staged, not kicked.
    for (token_t t = 0; t < 5; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), t) == errc::ok);
    (void)q.driver.kick_prepare();
    std::vector<chain> cs(3);
    for (auto& c : cs) REQUIRE(q.device.pop(c) == errc::ok);
    if (in_order) {
      REQUIRE(q.device.complete_in_order(2, 8) == errc::ok);
    } else {
      REQUIRE(q.device.complete(cs[0], 8) == errc::ok);
      REQUIRE(q.device.complete(cs[1], 8) == errc::ok);
    }
    (void)q.device.interrupt_prepare();
    // Reap one of the two used (with IN_ORDER the batch is then half-reaped).
    const auto u = q.driver.get_used();
    REQUIRE(u);
    REQUIRE(u->token == 0);
    REQUIRE(q.driver.add_inbuf(a.at(0, 8), 5) == errc::ok);
    std::map<token_t, int> back;
    q.driver.reset([&](token_t t) { ++back[t]; });
    REQUIRE(back == std::map<token_t, int>{{1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}});
    q.device.reset();
    // A second reset has nothing left to return.
    back.clear();
    q.driver.reset([&](token_t t) { ++back[t]; });
    REQUIRE(back.empty());
    // Both sides start over from slot 0, wrap 1.
    REQUIRE(q.driver.num_free() == 8);
    REQUIRE(q.driver.notification_data(0) == encode_notification({0, 0, true}));
    chain c;
    REQUIRE(q.device.pop(c) == errc::empty);
    for (token_t t = 10; t < 18; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), t) == errc::ok);
    (void)q.driver.kick_prepare();
    for (token_t t = 10; t < 18; ++t) {
      REQUIRE(q.device.pop(c) == errc::ok);
      REQUIRE(q.device.complete(c, 1) == errc::ok);
    }
    (void)q.device.interrupt_prepare();
    for (token_t t = 10; t < 18; ++t) {
      const auto r = q.driver.get_used();
      REQUIRE(r);
      REQUIRE(r->token == t);
    }
  }
}

TEST_CASE("after a reset the device neither uses buffers nor notifies") {
  // 2.6.1 (queue reset): the device forgets the chains it held and the used descriptors it
  // wrote but did not publish; none of them reaches the driver afterwards.
  for (const bool in_order : {false, true}) {
    CAPTURE(in_order);
    features f = packed_features<>();
    if (in_order) f = f.with(feature::in_order);
    pair<> q(8, f);
    virtq_test::buffer_arena a(4096);
    const auto& v = q.ring.view();
    for (token_t t = 0; t < 3; ++t) REQUIRE(q.driver.add_inbuf(a.at(0, 8), 100 + t) == errc::ok);
    (void)q.driver.kick_prepare();
    std::vector<chain> cs(3);
    for (auto& c : cs) REQUIRE(q.device.pop(c) == errc::ok);
    if (in_order) {
      REQUIRE(q.device.complete_in_order(2, 8) == errc::ok);
    } else {
      REQUIRE(q.device.complete(cs[1], 8) == errc::ok);  // written, not published
      REQUIRE(q.device.complete(cs[0], 8) == errc::ok);
    }
    const std::vector<std::byte> before(q.ring.bytes().begin(), q.ring.bytes().end());
    q.device.reset();
    CHECK(q.device.complete(cs[2], 8) == errc::invalid_argument);
    if (in_order) CHECK(q.device.complete_in_order(1, 8) == errc::invalid_argument);
    CHECK_FALSE(q.device.interrupt_prepare());
    CHECK_FALSE(q.device.broken());
    // The ring is as the reset found it: the first used descriptor's flags never published.
    CHECK(std::vector<std::byte>(q.ring.bytes().begin(), q.ring.bytes().end()) == before);
    CHECK_FALSE(packed::is_used(flags_at(v, 0), true));
    CHECK(q.driver.get_used().error() == errc::empty);
    std::map<token_t, int> back;
    q.driver.reset([&](token_t t) { ++back[t]; });
    CHECK(back == std::map<token_t, int>{{100, 1}, {101, 1}, {102, 1}});
  }
}

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------

TEST_CASE("construction errors throw virtq::error with the reason") {
  ring_memory<packed_layout> ring(8);
  const features good = packed_features<>();
  identity_memory mem;
  CHECK(construction_error([&] { packed_driver<> d(ring.view(), good); }) == errc::ok);
  CHECK(construction_error([&] {
          packed_driver<> d(ring.view(), good.without(feature::ring_packed));
        }) == errc::feature_conflict);
  CHECK(construction_error([&] {
          packed_device<> d(ring.view(), good.without(feature::ring_packed), mem);
        }) == errc::feature_conflict);
  CHECK(construction_error([&] {
          packed_driver<> d(ring.view(), good.without(feature::version_1));
        }) == errc::feature_missing);
  CHECK(construction_error([&] {
          packed_device<> d(ring.view(), good.without(feature::event_idx), mem);
        }) == errc::feature_missing);  // suppress_event_idx needs EVENT_IDX
  CHECK(construction_error([&] {
          packed_driver<> d(ring.view(), good.with(feature::order_platform));
        }) == errc::feature_conflict);
  CHECK(construction_error([&] {
          packed_driver<queue_policy<no_lock, suppress_event_idx, platform_barriers>> d(
              ring.view(), good.with(feature::order_platform));
        }) == errc::ok);
  driver_options o;
  o.indirect_max = 4;
  CHECK(construction_error([&] {
          packed_driver<> d(ring.view(), good.without(feature::indirect_desc), o);
        }) == errc::feature_missing);
  o.indirect_max = 9;
  CHECK(construction_error([&] { packed_driver<> d(ring.view(), good, o); }) ==
        errc::invalid_argument);
  CHECK(construction_error([&] { packed_driver<> d(packed::ring_view{}, good); }) ==
        errc::invalid_argument);
  packed::ring_view big = ring.view();
  big.size = 40000;
  CHECK(construction_error([&] { packed_device<> d(big, good, mem); }) == errc::bad_queue_size);
  CHECK(construction_error([] { ring_memory<packed_layout> r(0); }) == errc::bad_queue_size);
  CHECK(construction_error([] { ring_memory<packed_layout> r(32769); }) == errc::bad_queue_size);
  CHECK(construction_error([] { ring_memory<packed_layout> r(32768); }) == errc::ok);
  // A big-endian policy cannot name a packed queue at all (2.8: VERSION_1 only).
  STATIC_REQUIRE_FALSE(
      packed_queue_policy<queue_policy<no_lock, suppress_event_idx, smp_barriers, big_endian>>);
  STATIC_REQUIRE(packed_queue_policy<default_policy>);
}

TEST_CASE("packed_layout describes the ring for generic code") {
  STATIC_REQUIRE(packed_layout::is_packed);
  STATIC_REQUIRE(packed_layout::valid_size(3));
  STATIC_REQUIRE(packed_layout::valid_size(32768));
  STATIC_REQUIRE_FALSE(packed_layout::valid_size(0));
  STATIC_REQUIRE(packed_layout::geometry_for(3)->total == 56);
  STATIC_REQUIRE(driver_queue<packed_layout::driver<default_policy>>);
  STATIC_REQUIRE(device_queue<packed_layout::device<default_policy, guest_memory>>);
}

// ---------------------------------------------------------------------------------------------
// Checked mode and statistics
// ---------------------------------------------------------------------------------------------

TEST_CASE("checked mode: a long mixed workload passes every shadow transition") {
  pair<checked_policy> q(7);
  virtq_test::buffer_arena a(4096);
  std::uint64_t reaped = 0;
  std::vector<chain> held;
  for (int round = 0; round < 300; ++round) {
    const std::size_t n = 1 + static_cast<std::size_t>(round) % 3;
    std::vector<buffer> in(n, a.at(0, 8));
    while (q.driver.add({}, in, static_cast<token_t>(round)) == errc::ok) {
    }
    (void)q.driver.kick_prepare();
    chain c;
    while (q.device.pop(c) == errc::ok) held.push_back(c);
    // Complete newest first: out of order.
    while (!held.empty()) {
      REQUIRE(q.device.complete(held.back(), 0) == errc::ok);
      held.pop_back();
    }
    (void)q.device.interrupt_prepare();
    while (q.driver.get_used()) ++reaped;
    REQUIRE_FALSE(q.driver.broken());
    REQUIRE_FALSE(q.device.broken());
  }
  const queue_stats& ds = q.driver.stats();
  REQUIRE(ds.added == reaped);
  REQUIRE(ds.reaped == reaped);
  REQUIRE(ds.ring_full == 300);
  REQUIRE(ds.min_free == 0);
  REQUIRE(q.device.stats().popped == reaped);
  REQUIRE(q.device.stats().completed == reaped);
  REQUIRE(ds.rejected() == 0);
}

TEST_CASE("caller errors do not break the queue") {
  pair<> q(4);
  virtq_test::buffer_arena a(4096);
  REQUIRE(q.driver.add({}, {}, 1) == errc::invalid_argument);
  const buffer five[] = {a.at(0, 8), a.at(0, 8), a.at(0, 8), a.at(0, 8), a.at(0, 8)};
  REQUIRE(q.driver.add({}, five, 1) == errc::invalid_argument);  // longer than the queue
  const buffer huge[] = {{a.at(0, 8).addr, 0xFFFFFFFFU}, {a.at(0, 8).addr, 2}};
  REQUIRE(q.driver.add(huge, {}, 1) == errc::invalid_argument);  // over 2^32 bytes
  REQUIRE_FALSE(q.driver.broken());
  REQUIRE(q.driver.num_free() == 4);
  REQUIRE_FALSE(q.driver.kick_prepare());  // nothing staged: nothing to tell
  REQUIRE(q.driver.stats().kicks + q.driver.stats().kicks_suppressed == 0);
}
