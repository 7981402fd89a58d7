// Receive bursts (rx_burst): poll(rx_burst&) lends up to 32 packets as one loan; release()
// gives them back at once. The census, the detector, the reserve and shutdown see a burst's
// buffers like any other loan -- over every layout and both pool policies.
#include <catch2/catch.hpp>

#include <chrono>
#include <tuple>
#include <utility>

#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;
using namespace std::chrono_literals;

namespace {
rx_queue_options no_reserve() {
  rx_queue_options o;
  o.copy_reserve = false;
  return o;
}

/// A burst's release takes a different path with each pool policy (see rx_rigs).
using burst_rigs = rx_rigs;

template <class Rig>
using burst_of = rx_burst<typename Rig::pool_type>;

/// The index of the pool buffer packet k of `b` lies in.
template <class Rig>
std::uint32_t buffer_of(const Rig& rig, const burst_of<Rig>& b, std::size_t k) {
  const std::optional<std::uint32_t> i = buffer_index(rig.pool, b.data(k));
  REQUIRE(i.has_value());
  return *i;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("rx_burst: poll delivers what the device wrote; release gives it all back",
                        "[rx_burst]", burst_rigs) {
  using rig_type = typename TestType::type;
  rig_type rig(16, 64, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(10, 80) == 10);
  burst_of<rig_type> b;
  CHECK(b.empty());
  auto r = rig.rxq.poll(b);
  REQUIRE(r.has_value());
  REQUIRE(r->received == 10);
  REQUIRE(b.size() == 10);
  for (std::size_t k = 0; k < b.size(); ++k) {
    CHECK(b.len(k) == rx_frame_len);
    CHECK(b.data(k).size() == rx_frame_len);
    CHECK_FALSE(b.resources_low(k));
    CHECK_FALSE(b.kept(k));
    CHECK(frame_port(b.data(k)) == 80);
    CHECK(frame_seq(b.data(k)) == k);
    CHECK(rig.pool.state(buffer_of(rig, b, k)) == rx_state::held);
  }
  // Past the end: nothing, and no crash.
  CHECK(b.len(10) == 0);
  CHECK(b.data(10).empty());
  CHECK_FALSE(b.keep(10));
  auto c = rig.rxq.census();
  CHECK(c.held == 10);
  CHECK(c.conserved);
  REQUIRE(c.holders.size() == 1);
  CHECK(c.holders[0].name == "stack");
  const auto s = rig.rxq.stats();
  CHECK(s.packets == 10);
  CHECK(s.packets_lent == 10);

  CHECK(b.release() == errc::ok);
  CHECK(b.empty());
  CHECK(b.release() == errc::ok);  // nothing left to give back
  c = rig.rxq.census();
  CHECK(c.held == 0);
  CHECK(c.conserved);
  CHECK(rig.pool.misuse_total() == 0);
  // The buffers go round again.
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.rxq.posted() == 16);
  CHECK(rig.send(16, 81) == 16);
  r = rig.rxq.poll(b);
  REQUIRE(r.has_value());
  CHECK(b.size() == 16);
  CHECK(frame_port(b.data(15)) == 81);
}

TEMPLATE_LIST_TEST_CASE("rx_burst: a burst takes at most its capacity; the next poll the rest",
                        "[rx_burst]", burst_rigs) {
  using rig_type = typename TestType::type;
  rig_type rig(64, 128, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(40, 80) == 40);
  burst_of<rig_type> b1, b2;
  REQUIRE(rig.rxq.poll(b1).has_value());
  CHECK(b1.size() == b1.capacity);
  REQUIRE(rig.rxq.poll(b2).has_value());
  CHECK(b2.size() == 8);
  CHECK(frame_seq(b2.data(0)) == 32);
  CHECK(rig.rxq.census().held == 40);
  // Polling into a burst that still holds packets gives those back first.
  CHECK(rig.send(3, 80) == 3);
  REQUIRE(rig.rxq.poll(b1).has_value());
  CHECK(b1.size() == 3);
  CHECK(frame_seq(b1.data(0)) == 40);
  CHECK(rig.rxq.census().held == 11);
  CHECK(rig.rxq.census().conserved);
}

TEMPLATE_LIST_TEST_CASE("rx_burst: keep() takes one packet out as a handle that outlives the burst",
                        "[rx_burst]", burst_rigs) {
  using rig_type = typename TestType::type;
  rig_type rig(16, 32, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(5, 80) == 5);
  burst_of<rig_type> b;
  REQUIRE(rig.rxq.poll(b).has_value());
  REQUIRE(b.size() == 5);
  const std::uint32_t idx = buffer_of(rig, b, 3);
  auto h = b.keep(3);
  REQUIRE(h);
  CHECK(h.index() == idx);
  CHECK(b.kept(3));
  CHECK(b.data(3).empty());
  CHECK(b.len(3) == rx_frame_len);  // positions stay
  CHECK_FALSE(b.keep(3));           // once
  CHECK(frame_seq(h.data()) == 3);
  CHECK(b.release() == errc::ok);
  CHECK(rig.rxq.census().held == 1);
  CHECK(rig.pool.state(idx) == rx_state::held);
  // The handle is a handle like any other: copied, passed on, released once.
  const holder_id app = rig.rxq.register_holder("app");
  auto h2 = h;
  CHECK(h2.pass_to(app) == errc::ok);
  CHECK(h.release() == errc::ok);
  CHECK(rig.rxq.census().find("app")->count == 1);
  CHECK(h2.release() == errc::ok);
  CHECK(rig.rxq.census().held == 0);
  CHECK(rig.rxq.census().conserved);
  CHECK(rig.pool.misuse_total() == 0);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_burst: held bursts starve the ring and the detector names their holder; the reserve "
    "keeps K buffers in the ring and delivers copies",
    "[rx_burst]", burst_rigs) {
  using rig_type = typename TestType::type;
  SECTION("reserve off: the ring starves, the report names the holder") {
    std::vector<starvation_report> reports;
    rx_queue_options o = no_reserve();
    o.starvation_after = 100ms;
    o.on_starvation = [&](const starvation_report& r) { reports.push_back(r); };
    rig_type rig(8, 8, o);
    const holder_id ftp = rig.rxq.register_holder("ftp-data:3034");
    REQUIRE(rig.rxq.refill().has_value());
    CHECK(rig.send(8, 3034) == 8);
    burst_of<rig_type> b;
    REQUIRE(rig.rxq.poll(b).has_value());
    REQUIRE(b.size() == 8);
    CHECK(b.pass_to(ftp) == errc::ok);
    CHECK(b.pass_to(holder_id{999}) == errc::invalid_argument);  // not registered
    CHECK(rig.rxq.posted() == 0);
    CHECK_FALSE(rig.rxq.check_starvation());
    rig.time.advance(100ms);
    CHECK(rig.rxq.check_starvation());
    REQUIRE(reports.size() == 1);
    REQUIRE(reports[0].census.holders.size() == 1);
    CHECK(reports[0].census.holders[0].name == "ftp-data:3034");
    CHECK(reports[0].census.holders[0].count == 8);
    CHECK(reports[0].census.holders[0].oldest == 100ms);
    CHECK(b.release() == errc::ok);
    REQUIRE(rig.rxq.refill().has_value());
    CHECK(rig.rxq.posted() == 8);
  }
  SECTION("reserve on: bursts carry copies once only K buffers are left") {
    rx_queue_options o;
    o.reserve = 4;
    o.bounce_buffers = 8;
    rig_type rig(8, 12, o);  // 12 buffers, K = 4: 8 may be lent
    REQUIRE(rig.rxq.refill().has_value());
    std::vector<burst_of<rig_type>> held;
    std::size_t lent = 0, copies = 0;
    for (int round = 0; round < 4; ++round) {
      CHECK(rig.send(4, 80) == 4);
      burst_of<rig_type> b;
      REQUIRE(rig.rxq.poll(b).has_value());
      CHECK(b.size() == 4);  // nothing dropped: copies while bounce buffers last
      for (std::size_t k = 0; k < b.size(); ++k) {
        CHECK(frame_seq(b.data(k)) == 4U * static_cast<unsigned>(round) + k);
        CHECK(b.len(k) == rx_frame_len);
        (b.resources_low(k) ? copies : lent) += 1;
      }
      CHECK(rig.rxq.posted() >= 4);  // the reserve stays in the ring
      held.push_back(std::move(b));
    }
    CHECK(lent == 8);
    CHECK(copies == 8);
    CHECK(rig.rxq.stats().packets_copied == 8);
    CHECK(rig.rxq.bounce_census().held == 8);
    CHECK(rig.rxq.census().conserved);
    // keep() on a copy hands out the copy's handle.
    auto c = held.back().keep(0);
    REQUIRE(c);
    CHECK(c.pool() != &rig.pool);
    CHECK(held.back().kept(0));
    CHECK_FALSE(held.back().resources_low(0));
    held.clear();  // destroying a burst releases it
    CHECK(rig.rxq.census().held == 0);
    CHECK(rig.rxq.bounce_census().held == 1);
    CHECK(c.release() == errc::ok);
    CHECK(rig.rxq.bounce_census().held == 0);
    CHECK(rig.rxq.census().conserved);
    CHECK(rig.rxq.bounce_census().conserved);
  }
}

TEMPLATE_LIST_TEST_CASE("rx_burst: moves carry the loan; shutdown waits for bursts", "[rx_burst]",
                        burst_rigs) {
  using rig_type = typename TestType::type;
  rig_type rig(8, 16, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(6, 80) == 6);
  burst_of<rig_type> a;
  REQUIRE(rig.rxq.poll(a).has_value());
  burst_of<rig_type> b(std::move(a));
  CHECK(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty, by contract
  CHECK(b.size() == 6);
  CHECK(a.release() == errc::ok);  // NOLINT(bugprone-use-after-move)
  CHECK(rig.rxq.census().held == 6);
  burst_of<rig_type> c;
  CHECK(rig.send(2, 80) == 2);
  REQUIRE(rig.rxq.poll(c).has_value());
  c = std::move(b);  // c's two go back, b's six move in
  CHECK(rig.rxq.census().held == 6);
  CHECK(c.size() == 6);
  CHECK(frame_seq(c.data(5)) == 5);

  rig.qp.device.reset();
  auto rep = rig.rxq.shutdown(0ms);
  CHECK_FALSE(rep.drained);
  CHECK(rep.census.held == 6);
  CHECK(rep.census.conserved);
  burst_of<rig_type> d;
  CHECK(rig.rxq.poll(d).error() == errc::broken);
  CHECK(d.empty());
  CHECK(c.release() == errc::ok);
  rep = rig.rxq.shutdown(0ms);
  CHECK(rep.drained);
  CHECK(rep.census.free == 16);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_burst: completions a buggy Queue corrupts are counted, never lent, and lengths are "
    "clamped to the buffer",
    "[rx_burst]", all_layouts) {
  for (const bool reserve : {false, true}) {
    CAPTURE(reserve);
    buggy_queue_rig<TestType> rig(reserve);
    auto& [qp, bad, pool, rxq] = rig;
    // Completion 0 names buffer 0 (posted: lent); 1: buffer 0 again (held by then: the loop
    // that lends in place must refuse it itself); 2: not posted; 3: far out of range. 4 and 5
    // are good and move down over the bad ones.
    bad.replace = {0, 0, 60, token_t{1} << 40};
    bad.long_len = 100'000;
    rx_burst<typename buggy_queue_rig<TestType>::pool_type> b;
    auto r = rxq.poll(b);
    REQUIRE(r.has_value());
    CHECK(rxq.stats().bad_tokens == 3);
    CHECK(r->received == 3);
    REQUIRE(b.size() == 3);
    CHECK(frame_seq(b.data(0)) == 0);
    CHECK(frame_seq(b.data(1)) == 4);
    CHECK(frame_seq(b.data(2)) == 5);
    for (std::size_t k = 0; k < b.size(); ++k) CHECK(b.len(k) == pool.buffer_size());
    CHECK(rxq.census().held == 3);
    CHECK(b.release() == errc::ok);
    CHECK(rxq.census().held == 0);
    CHECK(rxq.census().conserved);
    CHECK(pool.misuse_total() == 0);
  }
}
