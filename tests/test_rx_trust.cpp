// SPDX-License-Identifier: MIT
// tests/test_rx_trust.cpp -- when a receive queue lends what the virtqueue returns without
// testing each token and length again (rx_queue::trusts_queue): only over a queue that vouches
// for its used elements (verifying_driver_queue), while nothing else adds to that queue and
// nothing else takes the pool's posted buffers. Each way of breaking that is tested here: the
// completion it produces must be counted as a bad token and never lent.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <span>
#include <tuple>
#include <vector>

#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;

namespace {

/// The pool's posted-exit count moves under both policies (free list and repost list).
using trust_rigs = rx_rigs;

static_assert(verifying_driver_queue<split_driver<default_policy>>);
static_assert(verifying_driver_queue<packed_driver<default_policy>>);
static_assert(!verifying_driver_queue<corrupting_queue<split_driver<default_policy>>>);

/// No reserve: every completion goes through the loop that lends without tests when trusted.
rx_queue_options no_reserve() {
  rx_queue_options o;
  o.copy_reserve = false;
  o.repost_batch = 1;
  return o;
}

/// Polls once, through poll(span) or poll(rx_burst); returns the sequence numbers of the
/// frames received (their buffers are released at once).
template <class Rig>
std::vector<std::uint64_t> poll_seqs(Rig& rig, bool burst) {
  std::vector<std::uint64_t> seqs;
  if (burst) {
    rx_burst<typename Rig::pool_type> b;
    auto r = rig.rxq.poll(b);
    REQUIRE(r.has_value());
    for (std::size_t k = 0; k < b.size(); ++k) seqs.push_back(frame_seq(b.data(k)));
    CHECK(b.release() == errc::ok);
  } else {
    std::array<typename Rig::packet, 16> out;
    auto r = rig.rxq.poll(out);
    REQUIRE(r.has_value());
    for (std::size_t k = 0; k < r->received; ++k) seqs.push_back(frame_seq(out[k].data()));
    CHECK(rig.rxq.release(std::span(out.data(), r->received)) == errc::ok);
  }
  return seqs;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("rx_queue trust: over split_driver and packed_driver polls lend untested",
                        "[rx_queue][trust]", trust_rigs) {
  using rig_type = typename TestType::type;
  for (const bool burst : {false, true}) {
    CAPTURE(burst);
    rig_type rig(16, 8, no_reserve());
    CHECK(rig.rxq.trusts_queue());
    for (int round = 0; round < 4; ++round) {
      REQUIRE(rig.rxq.refill().has_value());  // what the last round released
      REQUIRE(rig.send(8, 80) == 8);
      CHECK(poll_seqs(rig, burst).size() == 8);
      CHECK(rig.rxq.trusts_queue());  // its own posts, loans and reposts keep the counts equal
    }
    CHECK(rig.rxq.stats().bad_tokens == 0);
    CHECK(rig.rxq.census().conserved);
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue trust: a Queue that does not vouch for its completions is "
    "never trusted",
    "[rx_queue][trust]", all_layouts) {
  buggy_queue_rig<TestType> rig(false);
  CHECK_FALSE(rig.rxq.trusts_queue());
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue trust: a chain added to the queue behind the receive queue "
    "is counted and never lent",
    "[rx_queue][trust]", trust_rigs) {
  using rig_type = typename TestType::type;
  buffer_arena foreign(512);
  for (const bool burst : {false, true}) {
    for (const bool in_range : {false, true}) {
      CAPTURE(burst, in_range);
      rig_type rig(16, 8, no_reserve());
      REQUIRE(rig.rxq.refill().has_value());
      // One buffer of the pool is lent (held) when the foreign chain names it: lent again, two
      // consumers would share it. Out of range: lent, the pool would write past its slots.
      REQUIRE(rig.send(1, 80) == 1);
      std::array<typename rig_type::packet, 1> held;
      REQUIRE(rig.rxq.poll(held)->received == 1);
      const token_t named = in_range ? held[0].buffer.index() : token_t{rig.pool.size() + 3};
      REQUIRE(rig.qp.driver.add_inbuf(foreign.at(0, 256), named) == errc::ok);
      (void)rig.qp.driver.kick_prepare();
      CHECK_FALSE(rig.rxq.trusts_queue());
      // The device fills the pool's 7 posted buffers, then the foreign one.
      REQUIRE(rig.send(8, 80) == 8);
      const auto seqs = poll_seqs(rig, burst);
      CHECK(seqs.size() == 7);
      CHECK(rig.rxq.stats().bad_tokens == 1);
      CHECK(rig.pool.misuse_total() == 0);
      CHECK(rig.rxq.census().held == 1);  // `held` alone
      CHECK(held[0].buffer.release() == errc::ok);
      CHECK(rig.rxq.census().conserved);
      CHECK_FALSE(rig.rxq.trusts_queue());  // for good: the queue's count stays apart
    }
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue trust: a posted buffer unposted behind the receive queue is "
    "counted and never lent",
    "[rx_queue][trust]", trust_rigs) {
  using rig_type = typename TestType::type;
  for (const bool burst : {false, true}) {
    CAPTURE(burst);
    rig_type rig(16, 8, no_reserve());
    REQUIRE(rig.rxq.refill().has_value());
    std::uint32_t victim = rig.pool.size();
    for (std::uint32_t i = 0; i < rig.pool.size() && victim == rig.pool.size(); ++i) {
      if (rig.pool.state(i) == rx_state::posted) victim = i;
    }
    REQUIRE(victim < rig.pool.size());
    // The pool calls it free while the ring still has it: lent untested, a free buffer would
    // be held (and could be taken and lent a second time).
    REQUIRE(rig.pool.unpost(victim) == errc::ok);
    CHECK_FALSE(rig.rxq.trusts_queue());
    REQUIRE(rig.send(8, 80) == 8);
    CHECK(poll_seqs(rig, burst).size() == 7);
    CHECK(rig.rxq.stats().bad_tokens == 1);
    CHECK(rig.pool.misuse_total() == 0);
    CHECK(rig.rxq.census().held == 0);
    CHECK(rig.rxq.census().conserved);
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue trust: a queue that held chains when the receive queue was "
    "made is not trusted",
    "[rx_queue][trust]", all_layouts) {
  using pair_type = queue_pair<TestType, default_policy>;
  using pool_type = rx_pool<rx_single_thread_policy>;
  buffer_arena foreign(512);
  for (const bool burst : {false, true}) {
    CAPTURE(burst);
    pair_type qp(16);
    pool_type pool(8, 256, "rx");
    // Token 11: past the pool's 8 buffers (lent untested, the pool would write past its
    // slots).
    REQUIRE(qp.driver.add_inbuf(foreign.at(0, 256), 11) == errc::ok);
    rx_queue<typename pair_type::driver_type, pool_type> rxq(qp.driver, pool, no_reserve());
    CHECK_FALSE(rxq.trusts_queue());
    REQUIRE(rxq.refill().has_value());
    fake_nic<typename pair_type::device_type> nic{qp.device};
    for (std::uint64_t k = 0; k < 9; ++k) REQUIRE(nic.send(make_frame(80, k)) == errc::ok);
    nic.flush();
    std::size_t received = 0;
    if (burst) {
      rx_burst<pool_type> b;
      received = rxq.poll(b)->received;
      // The foreign chain came first: seq 0 went into it and was not delivered.
      for (std::size_t k = 0; k < b.size(); ++k) CHECK(frame_seq(b.data(k)) == k + 1);
      CHECK(b.release() == errc::ok);
    } else {
      std::array<typename decltype(rxq)::packet, 16> out;
      received = rxq.poll(out)->received;
      for (std::size_t k = 0; k < received; ++k) CHECK(frame_seq(out[k].data()) == k + 1);
      CHECK(rxq.release(std::span(out.data(), received)) == errc::ok);
    }
    CHECK(received == 8);
    CHECK(rxq.stats().bad_tokens == 1);
    CHECK(pool.misuse_total() == 0);
    CHECK(rxq.census().conserved);
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue trust: at shutdown a chain added behind the receive queue is "
    "a bad token and not the pool's misuse",
    "[rx_queue][trust]", trust_rigs) {
  using rig_type = typename TestType::type;
  buffer_arena foreign(512);
  rig_type rig(16, 8, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.pool.posted_count() == 8);
  // A second chain naming posted buffer 0 and one naming no buffer: the reset gives back
  // buffer 0 once (whichever of its chains comes first) and refuses the other two tokens.
  REQUIRE(rig.qp.driver.add_inbuf(foreign.at(0, 256), 0) == errc::ok);
  REQUIRE(rig.qp.driver.add_inbuf(foreign.at(256, 256), rig.pool.size() + 1) == errc::ok);
  rig.qp.device.reset();
  const auto rep = rig.rxq.shutdown(std::chrono::nanoseconds{0});
  CHECK(rep.returned_from_ring == 8);
  CHECK(rep.bad_tokens == 2);
  CHECK(rig.rxq.stats().bad_tokens == 2);
  CHECK(rig.pool.misuse_total() == 0);
  CHECK(rep.census.conserved);
  CHECK(rep.census.free == 8);
}
