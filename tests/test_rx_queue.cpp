// Receive queue: refill/poll/repost, the reserve with copy fallback, the starvation detector,
// loan deadlines, shutdown drain, statistics -- over every layout.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;
using namespace std::chrono_literals;

namespace {
rx_queue_options no_reserve(std::string name = "rx0") {
  rx_queue_options o;
  o.name = std::move(name);
  o.copy_reserve = false;
  return o;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: a reserve that is not below the pool size is refused at construction", "[rx_queue]",
    all_layouts) {
  using rig_type = rx_rig<TestType>;
  const auto refused = [](std::uint32_t ring, std::uint32_t pool, rx_queue_options o) {
    try {
      rig_type rig(ring, pool, std::move(o));
    } catch (const virtq::error& e) {
      CHECK(e.value() == errc::invalid_argument);
      return true;
    }
    return false;
  };
  rx_queue_options o;
  o.reserve = 4;
  CHECK(refused(16, 4, o));  // K = pool: nothing could ever be lent
  CHECK(refused(16, 3, o));
  CHECK_FALSE(refused(16, 5, o));
  // The automatic reserve (an eighth, at least 2) against a pool of 2.
  CHECK(refused(16, 2, rx_queue_options{}));
  CHECK_FALSE(refused(16, 3, rx_queue_options{}));
  // Without the copy fallback there is no reserve to keep.
  o.copy_reserve = false;
  CHECK_FALSE(refused(16, 4, o));
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: refill posts the ring full and poll delivers what the device wrote", "[rx_queue]",
    all_layouts) {
  rx_rig<TestType> rig(16, 64, no_reserve());
  auto n = rig.rxq.refill();
  REQUIRE(n.has_value());
  CHECK(*n);  // the first batch: the device wants to hear about it
  CHECK(rig.rxq.posted() == 16);
  CHECK(rig.pool.free_count() == 48);

  CHECK(rig.send(10, 80) == 10);
  auto got = rig.poll_all();
  REQUIRE(got.size() == 10);
  for (std::size_t k = 0; k < got.size(); ++k) {
    CHECK(got[k].len == rx_frame_len);
    CHECK_FALSE(got[k].resources_low());
    CHECK(frame_port(got[k].data()) == 80);
    CHECK(frame_seq(got[k].data()) == k);
  }
  const auto s = rig.rxq.stats();
  CHECK(s.packets == 10);
  CHECK(s.packets_lent == 10);
  CHECK(s.allocations == 16 + 10);  // a full batch was free: the ring is topped up
  CHECK(rig.rxq.census().held == 10);
  CHECK(rig.rxq.census().conserved);
  got.clear();
  CHECK(rig.rxq.census().held == 0);
  CHECK(rig.rxq.census().conserved);
}

TEMPLATE_LIST_TEST_CASE("rx_queue: returned buffers are reposted in batches with one kick decision",
                        "[rx_queue]", all_layouts) {
  rx_queue_options o = no_reserve();
  o.repost_batch = 8;
  rx_rig<TestType> rig(16, 16, o);  // the pool is the ring: every buffer comes back through free
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.rxq.posted() == 16);
  CHECK(rig.send(4, 80) == 4);
  auto got = rig.poll_all();
  CHECK(got.size() == 4);
  got.clear();  // 4 free: under the batch, and 12 still posted: not low
  auto r = rig.rxq.refill();
  REQUIRE(r.has_value());
  CHECK_FALSE(*r);
  CHECK(rig.rxq.posted() == 12);
  CHECK(rig.send(4, 80) == 4);
  got = rig.poll_all();
  got.clear();  // 8 free: a batch
  const auto before = rig.rxq.stats();
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.rxq.posted() == 16);
  const auto after = rig.rxq.stats();
  CHECK(after.refills == before.refills + 1);
  CHECK(after.allocations == before.allocations + 8);
  CHECK(after.kicks + after.kicks_suppressed == before.kicks + before.kicks_suppressed + 1);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: the reserve keeps K buffers posted and delivers copies flagged "
    "resources_low",
    "[rx_queue]", all_layouts) {
  rx_queue_options o;
  o.reserve = 4;
  o.bounce_buffers = 8;
  rx_rig<TestType> rig(16, 16, o);
  REQUIRE(rig.rxq.refill().has_value());
  std::vector<typename rx_rig<TestType>::packet> kept;  // a consumer that keeps everything
  std::size_t copies = 0;
  for (int round = 0; round < 10; ++round) {
    CHECK(rig.send(2, 3034) == 2);  // a buffer is always posted
    for (auto& p : rig.poll_all()) {
      if (p.resources_low()) ++copies;
      CHECK(frame_port(p.data()) == 3034);
      kept.push_back(std::move(p));
    }
    CHECK(rig.rxq.posted() >= 4);
  }
  CHECK(kept.size() == 20);
  CHECK(copies == 20 - 12);  // 16 buffers, 4 never lent
  CHECK(rig.pool.held_count() == 12);
  const auto s = rig.rxq.stats();
  CHECK(s.packets_copied == 8);
  CHECK(s.reposts == 8);
  CHECK(s.copy_failures == 0);
  CHECK(s.min_posted >= 4);
  // The bounce pool is now exhausted too: further frames are dropped (counted), the ring stays.
  CHECK(rig.send(3, 3034) == 3);
  CHECK(rig.poll_all().empty());
  CHECK(rig.rxq.stats().copy_failures == 3);
  CHECK(rig.rxq.posted() == 4);
  const auto bc = rig.rxq.bounce_census();
  CHECK(bc.held == 8);
  CHECK(bc.conserved);
  // Copies carry the data of the frame.
  CHECK(frame_seq(kept.back().data()) == 19);
  CHECK(kept.back().resources_low());
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: the starvation detector reports once, names the holder, and "
    "re-arms",
    "[rx_queue]", all_layouts) {
  std::vector<starvation_report> reports;
  rx_queue_options o = no_reserve("eth1-rx0");
  o.starvation_after = 200ms;
  o.on_starvation = [&](const starvation_report& r) { reports.push_back(r); };
  rx_rig<TestType> rig(8, 8, o);
  const holder_id ftp = rig.rxq.register_holder("ftp-data:3034");
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(8, 3034) == 8);
  rig.time.advance(10ms);
  auto kept = rig.poll_all();
  for (auto& p : kept) CHECK(p.buffer.pass_to(ftp) == errc::ok);
  CHECK(rig.rxq.posted() == 0);
  CHECK(rig.send(1, 80) == 0);  // nothing to receive into

  CHECK_FALSE(rig.rxq.check_starvation(rig.time.now()));  // the episode starts
  rig.time.advance(199ms);
  CHECK_FALSE(rig.rxq.check_starvation(rig.time.now()));
  rig.time.advance(1ms);
  CHECK(rig.rxq.check_starvation(rig.time.now()));  // 200 ms: one report
  rig.time.advance(1s);
  CHECK_FALSE(rig.rxq.check_starvation(rig.time.now()));  // not twice
  REQUIRE(rig.poll_all().empty());
  REQUIRE(reports.size() == 1);
  const starvation_report& r = reports[0];
  CHECK(r.queue == "eth1-rx0");
  CHECK(r.starved_for == 200ms);
  CHECK(r.posted == 0);
  CHECK(r.held == 8);
  REQUIRE(r.census.holders.size() == 1);
  CHECK(r.census.holders[0].name == "ftp-data:3034");
  CHECK(r.census.holders[0].count == 8);
  CHECK(r.census.holders[0].oldest == 200ms);
  CHECK(r.census.conserved);
  CHECK(to_string(r).find("ftp-data:3034") != std::string::npos);

  kept.clear();  // the consumer reads again
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.rxq.posted() == 8);
  auto s = rig.rxq.stats();
  CHECK(s.starvation_reports == 1);
  CHECK(s.starvation_episodes == 1);
  CHECK(s.time_starved == 1200ms);
  CHECK(s.longest_starvation == 1200ms);
  // Re-armed: a second episode reports again.
  CHECK(rig.send(8, 3034) == 8);
  kept = rig.poll_all();
  rig.time.advance(300ms);
  CHECK(rig.rxq.check_starvation());
  CHECK(reports.size() == 2);
  kept.clear();
}

TEMPLATE_LIST_TEST_CASE("rx_queue: a low watermark counts a nearly empty ring as starving",
                        "[rx_queue]", all_layouts) {
  int fired = 0;
  rx_queue_options o = no_reserve();
  o.low_watermark = 2;
  o.starvation_after = 50ms;
  o.on_starvation = [&](const starvation_report& r) {
    ++fired;
    CHECK(r.posted == 2);
    CHECK(r.low_watermark == 2);
  };
  rx_rig<TestType> rig(8, 8, o);
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(6, 80) == 6);
  auto kept = rig.poll_all();
  rig.time.advance(50ms);
  CHECK(rig.rxq.check_starvation());
  CHECK(fired == 1);
}

TEMPLATE_LIST_TEST_CASE("rx_queue: a holder past its loan deadline is asked to return",
                        "[rx_queue]", all_layouts) {
  std::vector<loan_overdue> asked;
  rx_queue_options o = no_reserve();
  o.loan_deadline = 1s;
  o.on_loan_overdue = [&](const loan_overdue& d) { asked.push_back(d); };
  rx_rig<TestType> rig(16, 32, o);
  const holder_id slow = rig.rxq.register_holder("slow");
  const holder_id fast = rig.rxq.register_holder("fast");
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(5, 80) == 5);
  auto kept = rig.poll_all();
  for (std::size_t k = 0; k < 3; ++k) CHECK(kept[k].buffer.pass_to(slow) == errc::ok);
  for (std::size_t k = 3; k < 5; ++k) CHECK(kept[k].buffer.pass_to(fast) == errc::ok);
  rig.time.advance(600ms);
  kept.erase(kept.begin() + 3, kept.end());  // fast returns its two
  CHECK_FALSE(rig.rxq.check_starvation());
  CHECK(asked.empty());
  rig.time.advance(500ms);  // slow's buffers are 1.1 s old
  rig.rxq.check_starvation();
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].holder.name == "slow");
  CHECK(asked[0].holder.count == 3);
  CHECK(asked[0].holder.oldest == 1100ms);
  CHECK(asked[0].deadline == 1s);
  CHECK(rig.rxq.stats().deadline_callbacks == 1);
  kept.clear();  // it complies
  rig.time.advance(1s);
  rig.rxq.check_starvation();
  CHECK(asked.size() == 1);
}

TEMPLATE_LIST_TEST_CASE("rx_queue: a loan exactly as old as the deadline is not overdue; older is",
                        "[rx_queue]", all_layouts) {
  std::vector<loan_overdue> asked;
  rx_queue_options o = no_reserve();
  o.loan_deadline = 1s;  // checked every 250 ms
  o.on_loan_overdue = [&](const loan_overdue& d) { asked.push_back(d); };
  rx_rig<TestType> rig(16, 32, o);
  REQUIRE(rig.rxq.refill().has_value());  // the first check: due at 250 ms
  CHECK(rig.send(2, 80) == 2);
  auto kept = rig.poll_all();  // lent at 0
  REQUIRE(kept.size() == 2);
  rig.time.advance(1s);
  rig.rxq.check_starvation();  // a check is due: the loans are 1 s old, not older
  CHECK(asked.empty());
  CHECK(rig.rxq.stats().deadline_callbacks == 0);
  rig.time.advance(250ms);  // the next check
  rig.rxq.check_starvation();
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].holder.oldest == 1250ms);
  CHECK(asked[0].holder.count == 2);
}

TEMPLATE_LIST_TEST_CASE("rx_queue: shutdown returns every posted buffer once and reports holders",
                        "[rx_queue]", all_layouts) {
  rx_rig<TestType> rig(16, 32, no_reserve());
  const holder_id ftp = rig.rxq.register_holder("ftp-data:3034");
  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.send(5, 3034) == 5);
  rig.time.advance(3s);
  auto kept = rig.poll_all();
  for (auto& p : kept) CHECK(p.buffer.pass_to(ftp) == errc::ok);
  const std::uint32_t posted = rig.rxq.posted();
  rig.time.advance(2s);
  rig.qp.device.reset();  // the device stops first
  const auto rep = rig.rxq.shutdown(0ms);
  CHECK(rep.returned_from_ring == posted);
  CHECK(rep.bad_tokens == 0);
  CHECK_FALSE(rep.drained);
  CHECK(rep.census.conserved);
  CHECK(rep.census.posted == 0);
  REQUIRE(rep.census.holders.size() == 1);
  CHECK(rep.census.holders[0].name == "ftp-data:3034");
  CHECK(rep.census.holders[0].count == 5);
  CHECK(rep.census.holders[0].oldest == 2s);
  CHECK(to_string(rep).find("ftp-data:3034") != std::string::npos);
  CHECK(rig.rxq.refill().error() == errc::broken);
  std::array<typename rx_rig<TestType>::packet, 4> out;
  CHECK(rig.rxq.poll(out).error() == errc::broken);

  // A second call waits (bounded) for a holder that releases on another thread.
  std::thread t([&] {
    std::this_thread::sleep_for(5ms);
    kept.clear();
  });
  const auto rep2 = rig.rxq.shutdown(30s);
  t.join();
  CHECK(rep2.drained);
  CHECK(rep2.returned_from_ring == 0);  // already given back: not twice
  CHECK(rep2.census.free == 32);
  CHECK(rep2.census.conserved);
}

TEST_CASE("rx_queue: the single-thread pool policy (no atomics, no lock) behaves the same",
          "[rx_queue]") {
  rx_queue_options o;
  o.reserve = 2;
  o.bounce_buffers = 2;
  rx_rig<split_layout, rx_single_thread_policy> rig(8, 8, o);
  REQUIRE(rig.rxq.refill().has_value());
  std::vector<rx_rig<split_layout, rx_single_thread_policy>::packet> kept;
  for (int k = 0; k < 4; ++k) {
    CHECK(rig.send(2, 80) == 2);
    for (auto& p : rig.poll_all()) kept.push_back(std::move(p));
  }
  const auto s = rig.rxq.stats();
  CHECK(s.packets_lent == 6);
  CHECK(s.packets_copied == 2);
  CHECK(s.min_posted >= 2);
  CHECK(rig.rxq.census().conserved);
  auto copy = kept[0];
  kept.clear();
  CHECK(rig.pool.held_count() == 1);  // the copy still holds one
  copy = {};
  CHECK(rig.pool.held_count() == 0);
  CHECK(rig.rxq.bounce_census().held == 0);
}

TEMPLATE_LIST_TEST_CASE("rx_queue: buffers carved from guest memory reach a translating device",
                        "[rx_queue]", all_layouts) {
  using policy = default_policy;
  ring_memory<TestType> ring(8);
  aligned_buffer region(16 * 512);
  guest_memory gm;
  gm.add_region(0x4000'0000, region.size(), region.data());
  const auto f = features_for<TestType, policy>();
  typename TestType::template driver<policy> driver(ring.view(), f);
  typename TestType::template device<policy, guest_memory> device(ring.view(), f, gm);
  rx_pool<> pool(16, 512, region.span(), gm, "guest");
  rx_queue_options o;
  o.copy_reserve = false;
  rx_queue rxq(driver, pool, o);
  REQUIRE(rxq.refill().has_value());

  fake_nic<decltype(device)> nic{device};
  for (std::uint64_t s = 0; s < 20; ++s) {
    const auto frame = make_frame(80, s);
    REQUIRE(nic.send(frame) == errc::ok);  // the device translated a guest address
    nic.flush();
    std::array<typename decltype(rxq)::packet, 4> out;
    auto r = rxq.poll(out);
    REQUIRE(r.has_value());
    REQUIRE(r->received == 1);
    CHECK(frame_seq(out[0].data()) == s);
    // The bytes landed in the region, where the pool's guest address says.
    const std::uint64_t ga = out[0].buffer.guest_address();
    CHECK(ga >= 0x4000'0000);
    CHECK(out[0].data().data() == region.data() + (ga - 0x4000'0000));
  }
  CHECK(rxq.census().conserved);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: release(span) gives back lent packets and bounce copies alike, and the next poll "
    "reposts them",
    "[rx_queue]", all_layouts) {
  rx_queue_options o;
  o.reserve = 4;
  o.bounce_buffers = 8;
  rx_rig<TestType> rig(16, 16, o);
  REQUIRE(rig.rxq.refill().has_value());
  std::vector<typename rx_rig<TestType>::packet> kept;
  for (int round = 0; round < 8; ++round) {
    REQUIRE(rig.send(2, 80) == 2);
    for (auto& p : rig.poll_all()) kept.push_back(std::move(p));
  }
  REQUIRE(kept.size() == 16);
  std::size_t copies = 0;
  for (const auto& p : kept) copies += p.resources_low() ? 1U : 0U;
  CHECK(copies == 4);  // 12 lent, then the reserve: copies
  CHECK(rig.pool.held_count() == 12);
  CHECK(rig.rxq.bounce_census().held == 4);

  CHECK(rig.rxq.release(std::span(kept)) == errc::ok);
  for (const auto& p : kept) CHECK_FALSE(p.buffer);
  CHECK(rig.pool.held_count() == 0);
  CHECK(rig.rxq.bounce_census().held == 0);
  CHECK(rig.pool.misuse_total() == 0);
  // Released twice: each packet's handle is empty now, nothing happens, nothing is counted.
  CHECK(rig.rxq.release(std::span(kept)) == errc::ok);
  CHECK(rig.pool.misuse_total() == 0);

  REQUIRE(rig.rxq.refill().has_value());
  CHECK(rig.rxq.posted() == 16);
  CHECK(rig.rxq.census().conserved);
  CHECK(rig.send(16, 80) == 16);
  auto again = rig.poll_all();
  CHECK(again.size() == 16);
  CHECK(rig.rxq.release(std::span(again)) == errc::ok);
  CHECK(rig.rxq.census().conserved);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: completions a buggy Queue corrupts are counted, never lent, "
    "and lengths are clamped to the buffer",
    "[rx_queue]", all_layouts) {
  for (const bool reserve : {false, true}) {
    CAPTURE(reserve);
    buggy_queue_rig<TestType> rig(reserve);
    auto& [qp, bad, pool, rxq] = rig;
    // Completion 0 names buffer 0 (posted: it is lent); 1: far out of range; 2: buffer 0 again
    // (held by then); 3: an index that is not posted (free, or past the end of the small
    // pool). Every length: longer than the buffer.
    bad.replace = {0, token_t{1} << 40, 0, 60};
    bad.long_len = 100'000;
    std::array<typename decltype(rxq)::packet, 16> out;
    auto r = rxq.poll(out);
    REQUIRE(r.has_value());
    const auto s = rxq.stats();
    CHECK(s.bad_tokens == 3);
    CHECK(r->received == 3);
    for (std::size_t k = 0; k < r->received; ++k) {
      CHECK(out[k].len == pool.buffer_size());
      CHECK(out[k].data().size() == pool.buffer_size());
    }
    for (std::size_t k = 0; k < r->received; ++k) out[k].buffer.release();
    CHECK(rxq.census().conserved);
  }
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: a completion naming a buffer on the pool's repost list is counted, never lent, "
    "and the buffer is posted once",
    "[rx_queue][repost]", all_layouts) {
  using pair_type = queue_pair<TestType, default_policy>;
  using pool_type = rx_pool<rx_single_thread_policy>;  // one thread: the repost list is on
  using queue_type = rx_queue<corrupting_queue<typename pair_type::driver_type>, pool_type>;
  pair_type qp(16);
  corrupting_queue<typename pair_type::driver_type> bad{qp.driver, {}, 0, 0};
  pool_type pool(16, 128, "rx");  // the pool is the ring: refill posts every buffer
  rx_queue_options o;
  o.copy_reserve = false;
  o.repost_batch = 1;
  std::uint32_t named = 0;
  {
    queue_type rxq(bad, pool, o);
    REQUIRE(rxq.refill().has_value());
    fake_nic<typename pair_type::device_type> nic{qp.device};
    REQUIRE(nic.send(make_frame(80, 0)) == errc::ok);
    nic.flush();
    std::array<typename queue_type::packet, 4> out;
    auto r = rxq.poll(out);
    REQUIRE(r.has_value());
    REQUIRE(r->received == 1);
    named = out[0].buffer.index();
    CHECK(out[0].buffer.release() == errc::ok);  // on the repost list until the next post
    REQUIRE(pool.state(named) == rx_state::ready);
    REQUIRE(pool.ready_count() == 1);

    // Two frames; the buggy Queue reports the first under the listed buffer's token.
    for (std::uint64_t k = 1; k < 3; ++k) REQUIRE(nic.send(make_frame(80, k)) == errc::ok);
    nic.flush();
    bad.replace.assign(bad.seen + 1, 0);
    bad.replace.back() = named;
    r = rxq.poll(out);
    REQUIRE(r.has_value());
    CHECK(r->received == 1);  // the second frame only
    CHECK(frame_seq(out[0].data()) == 2);
    CHECK(out[0].buffer.index() != named);
    CHECK(rxq.stats().bad_tokens == 1);
    // The poll posted the list: the buffer is in the ring once, not lent.
    CHECK(pool.state(named) == rx_state::posted);
    CHECK(pool.ready_count() == 0);
    CHECK(rxq.census().conserved);
    CHECK(pool.misuse_total() == 0);
    CHECK(out[0].buffer.release() == errc::ok);
    CHECK(pool.ready_count() == 1);
  }
  // The queue is gone: its pool's repost list went to the free list.
  CHECK(pool.ready_count() == 0);
  CHECK(pool.held_count() == 0);
  CHECK(pool.census(0).conserved);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: a poll wider than one reap batch reaches the reserve in its second batch and "
    "lends no more than pool - K",
    "[rx_queue]", all_layouts) {
  // Ring and pool of 64, K = 8: the first reap batch (32) is lent by the loop without the
  // reserve test; the second (32) runs into the reserve after 24 loans, counting the first
  // batch's loans (not yet booked in the pool) as lent.
  rx_queue_options o;
  o.reserve = 8;
  o.bounce_buffers = 16;
  rx_rig<TestType> rig(64, 64, o);
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.rxq.posted() == 64);
  REQUIRE(rig.send(64, 80) == 64);
  std::array<typename rx_rig<TestType>::packet, 64> out;
  auto r = rig.rxq.poll(out);
  REQUIRE(r.has_value());
  REQUIRE(r->received == 64);
  std::size_t copies = 0;
  for (std::size_t k = 0; k < r->received; ++k) {
    CHECK(frame_seq(out[k].data()) == k);
    if (out[k].resources_low()) {
      ++copies;
      CHECK(k >= 56);  // copies only once 56 are lent
    }
  }
  CHECK(copies == 8);
  CHECK(rig.pool.held_count() == 56);
  const auto s = rig.rxq.stats();
  CHECK(s.packets_lent == 56);
  CHECK(s.packets_copied == 8);
  CHECK(s.min_posted >= 8);  // the reserve is back in the ring
  CHECK(rig.rxq.posted() == 8);
  CHECK(rig.rxq.census().conserved);
  CHECK(rig.rxq.release(std::span(out)) == errc::ok);
  CHECK(rig.rxq.census().conserved);
}

namespace {
/// The device writes the next used element (split) or used descriptor (packed) naming a
/// buffer id the ring does not have, and publishes it: the driver must break on it.
template <class Layout, class Rig>
void complete_bogus_id(Rig& rig, std::uint16_t at) {
  const auto& v = rig.qp.ring.view();
  using LE = little_endian;
  if constexpr (Layout::is_packed) {
    packed::desc& d = v.ring[at];
    put<LE>(d.id, std::uint16_t{999});
    put<LE>(d.len, 8U);
    store_release<LE>(d.flags,
                      static_cast<std::uint16_t>(packed::used_bits(true) | packed::desc_f_write));
  } else {
    put<LE>(v.used.ring(at & (v.size - 1)).id, 999U);
    put<LE>(v.used.ring(at & (v.size - 1)).len, 8U);
    store_release<LE>(v.used.idx(), static_cast<std::uint16_t>(at + 1U));
  }
}
}  // namespace

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: a device that breaks the ring mid-poll: what was received is delivered, the "
    "error follows, and shutdown gives every buffer back",
    "[rx_queue]", all_layouts) {
  rx_rig<TestType> rig(64, 128, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.send(32, 80) == 32);       // 32 good frames...
  complete_bogus_id<TestType>(rig, 32);  // ...then a used id out of range
  // A poll with room for more than one reap (32 at a time) delivers the 32 good frames; the
  // driver broke on the 33rd, which the next poll reports.
  std::vector<typename rx_rig<TestType>::packet> out(48);
  const auto r = rig.rxq.poll(out);
  REQUIRE(r.has_value());
  REQUIRE(r->received == 32);
  for (std::size_t k = 0; k < 32; ++k) CHECK(frame_seq(out[k].data()) == k);
  CHECK(rig.rxq.poll(out).error() == errc::used_id_out_of_range);
  CHECK(rig.rxq.poll(out).error() == errc::broken);
  CHECK(rig.rxq.stats().queue_errors == 2);
  // The stack gives the packets back as usual; the ring's buffers come back at shutdown.
  CHECK(rig.rxq.release(std::span(out).first(32)) == errc::ok);
  rig.qp.device.reset();
  const auto rep = rig.rxq.shutdown(0ms);
  CHECK(rep.returned_from_ring == 32);
  CHECK(rep.bad_tokens == 0);
  CHECK(rep.drained);
  CHECK(rep.census.conserved);
  CHECK(rep.census.free == 128);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: on a broken ring the buffers of copied packets are free and not counted as "
    "posted",
    "[rx_queue]", all_layouts) {
  rx_queue_options o;
  o.reserve = 3;
  o.bounce_buffers = 4;
  rx_rig<TestType> rig(8, 8, o);
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.send(7, 80) == 7);
  complete_bogus_id<TestType>(rig, 7);
  // 8 posted, K = 3: five frames are lent, the next two go up as copies and their ring buffers
  // wait to be reposted; the eighth used entry breaks the ring, which takes nothing back.
  std::vector<typename rx_rig<TestType>::packet> out(16);
  const auto r = rig.rxq.poll(out);
  REQUIRE(r.has_value());
  REQUIRE(r->received == 7);
  CHECK(rig.rxq.stats().packets_copied == 2);
  CHECK(rig.qp.driver.error() == errc::used_id_out_of_range);
  // The census matches the ring: one buffer is still there (the one the bad entry hid).
  const auto c = rig.rxq.census();
  CHECK(c.conserved);
  CHECK(c.posted == rig.qp.driver.size() - rig.qp.driver.num_free());
  CHECK(c.posted == 1);
  CHECK(c.held == 5);
  CHECK(c.free == 2);
  CHECK(rig.rxq.poll(out).error() == errc::used_id_out_of_range);  // the rule, once
  CHECK(rig.rxq.poll(out).error() == errc::broken);
  CHECK(rig.rxq.release(std::span(out).first(7)) == errc::ok);
  rig.qp.device.reset();
  const auto rep = rig.rxq.shutdown(0ms);
  CHECK(rep.returned_from_ring == 1);
  CHECK(rep.drained);
  CHECK(rep.census.free == 8);
  CHECK(rep.bounce.free == 4);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: refill on a broken ring is broken and posts nothing though buffers are free",
    "[rx_queue]", all_layouts) {
  rx_rig<TestType> rig(8, 16, no_reserve());  // more buffers than ring slots: 8 stay free
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.send(3, 80) == 3);
  complete_bogus_id<TestType>(rig, 3);
  std::vector<typename rx_rig<TestType>::packet> out(16);
  const auto r = rig.rxq.poll(out);
  REQUIRE(r.has_value());
  REQUIRE(r->received == 3);
  REQUIRE(rig.qp.driver.broken());
  const auto before = rig.rxq.census();
  REQUIRE(before.free == 8);
  const auto refills = rig.rxq.stats().refills;
  // Not stopped, only broken: refill is refused all the same, and takes no free buffer.
  const auto f = rig.rxq.refill();
  REQUIRE_FALSE(f.has_value());
  CHECK(f.error() == errc::broken);
  const auto after = rig.rxq.census();
  CHECK(after.conserved);
  CHECK(after.free == before.free);
  CHECK(after.posted == before.posted);
  CHECK(rig.rxq.stats().refills == refills);
  CHECK(rig.rxq.release(std::span(out).first(3)) == errc::ok);
  rig.qp.device.reset();
  const auto rep = rig.rxq.shutdown(0ms);
  CHECK(rep.drained);
  CHECK(rep.census.free == 16);
}

TEMPLATE_LIST_TEST_CASE(
    "rx_queue: a device that breaks the ring behind a burst: the burst keeps the good frames",
    "[rx_queue][rx_burst]", all_layouts) {
  using rig_type = rx_rig<TestType, rx_pool_policy<false, no_lock, false>>;  // repost list on
  rig_type rig(16, 32, no_reserve());
  REQUIRE(rig.rxq.refill().has_value());
  REQUIRE(rig.send(5, 80) == 5);
  complete_bogus_id<TestType>(rig, 5);
  rx_burst<typename rig_type::pool_type> b;
  const auto r = rig.rxq.poll(b);
  REQUIRE(r.has_value());
  REQUIRE(b.size() == 5);
  for (std::size_t k = 0; k < 5; ++k) CHECK(frame_seq(b.data(k)) == k);
  const auto again = rig.rxq.poll(b);  // releases the burst first, then meets the broken ring
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error() == errc::used_id_out_of_range);  // the rule, once
  CHECK(rig.rxq.poll(b).error() == errc::broken);
  CHECK(b.empty());
  rig.qp.device.reset();
  const auto rep = rig.rxq.shutdown(0ms);
  CHECK(rep.returned_from_ring == 11);
  CHECK(rep.drained);
  CHECK(rep.census.conserved);
  CHECK(rep.census.free == 32);
}
