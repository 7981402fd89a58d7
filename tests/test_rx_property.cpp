// Stateful property test of the receive pool + queue: random interleavings of device receives
// (pops completed in random order), polls (into packets and into bursts), hand-over, pass-on,
// copies, releases (one, a run, a burst), keeping a packet out of a burst, refills, time, and
// shutdown (which resets the virtqueue). After every step:
//  * conservation: free + posted + held == total in both pools, states agree with counters;
//  * every buffer id is accounted for: a buffer is held exactly when a live handle or a live
//    burst names it, and the virtqueue holds exactly the posted buffers (one descriptor each);
//  * no frame is delivered twice, none is lost: completed == delivered + dropped (copy
//    failures) + not yet reaped; no caller misuse was reported (poisoning on).
// A hostile device may rewrite one completed, not yet reaped entry of the used ring (an id out
// of range, a length over the buffer): every frame before it is still delivered, that one and
// none after it, the poll that meets it reports the rule it broke (2.7.8 / 2.8.4), every later
// call the broken queue, and shutdown still gives every buffer back exactly once.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <rapidcheck/state.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "property.hpp"
#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;
using namespace std::chrono_literals;

namespace {

using poisoned = rx_pool_policy<true, spin_lock, /*Poison=*/true>;
/// One thread owns everything: the receive queue keeps the pool's repost list (released
/// buffers go straight into the ring's add arrays), with and without poisoning.
using single_poisoned = rx_pool_policy<false, no_lock, /*Poison=*/true>;
using single_plain = rx_pool_policy<false, no_lock, /*Poison=*/false>;

/// What an rx_system is made of: the ring layout and the pool policy.
template <class Layout, class PoolPolicy>
struct config {
  using layout = Layout;
  using policy = PoolPolicy;
};

struct model {
  bool stopped = false;
};

template <class Config>
struct rx_system {
  using rig_type = rx_rig<typename Config::layout, typename Config::policy>;
  using packet = typename rig_type::packet;
  using burst = rx_burst<typename rig_type::pool_type>;
  struct popped {
    std::uint16_t id;
    std::uint32_t len;
    std::uint64_t seq;
  };

  rx_system(std::uint32_t ring, std::uint32_t pool, bool reserve)
      : rig(ring, pool, [&] {
          rx_queue_options o;
          o.copy_reserve = reserve;
          o.reserve = 3;
          o.bounce_buffers = 4;
          o.repost_batch = 3;
          o.starvation_after = 5ms;
          o.loan_deadline = 20ms;
          return o;
        }()) {
    holders[0] = holder_stack;
    holders[1] = rig.rxq.register_holder("a");
    holders[2] = rig.rxq.register_holder("b");
  }

  void check_invariants(bool stopped) {
    const auto c = rig.rxq.census();
    INFO(to_string(c));
    RC_ASSERT(c.conserved);
    const auto b = rig.rxq.bounce_census();
    RC_ASSERT(b.conserved);
    // Held exactly when a live handle names it.
    std::map<const void*, std::set<std::uint32_t>> named;
    for (const auto& p : live) {
      if (p.buffer) named[p.buffer.pool()].insert(p.buffer.index());
    }
    // A burst's own packets lie in the pool's buffers; its copies are bounce buffers.
    std::size_t burst_copies = 0;
    for (const auto& bu : bursts) {
      for (std::size_t k = 0; k < bu.size(); ++k) {
        if (bu.kept(k)) continue;
        if (bu.resources_low(k)) {
          ++burst_copies;
          continue;
        }
        const std::optional<std::uint32_t> i = buffer_index(rig.pool, bu.data(k));
        RC_ASSERT(i.has_value());
        // One burst entry per buffer, and no handle names it too.
        RC_ASSERT(named[&rig.pool].insert(*i).second);
      }
    }
    for (std::uint32_t i = 0; i < rig.pool.size(); ++i) {
      const bool has = named[&rig.pool].count(i) != 0;
      RC_ASSERT(has == (rig.pool.state(i) == rx_state::held));
    }
    std::size_t bounce_named = 0;
    for (const auto& [pool, ids] : named) {
      if (pool != &rig.pool) bounce_named += ids.size();
    }
    RC_ASSERT(bounce_named + burst_copies == b.held);
    // The ring holds exactly the posted buffers.
    const auto& q = rig.qp.driver;
    if (!stopped) RC_ASSERT(q.size() - q.num_free() == rig.pool.posted_count());
    if (stopped) RC_ASSERT(rig.pool.posted_count() == 0u);
    // Frames: none twice (checked at delivery), none lost.
    // Every completed frame was delivered, dropped for want of a bounce buffer, or is still in
    // the used ring; after a poll that found no more, nothing is in the used ring.
    const auto s = rig.rxq.stats();
    RC_ASSERT(completed_seqs.size() == completed);
    RC_ASSERT(used_order.size() == completed);
    RC_ASSERT(completed >= delivered.size() + s.copy_failures + reset_dropped);
    if (used_drained) {
      RC_ASSERT(completed == delivered.size() + s.copy_failures + reset_dropped);
    }
    // The corrupted entry is never consumed: the driver stops in front of it.
    if (corrupt_at && !stopped) RC_ASSERT(reaped() <= *corrupt_at);
    // Only a hostile device breaks the queue, and then with the rule it broke.
    const errc e = rig.qp.driver.error();
    RC_ASSERT((e == errc::ok || (corrupt_at && e == corrupt_error)));
    RC_ASSERT(s.bad_tokens == 0u);
    RC_ASSERT(rig.pool.misuse_total() == 0u);
  }

  /// A frame the driver hands over: written by the device, delivered once, and (with a hostile
  /// device) completed before the corrupted entry.
  void check_delivered(std::uint64_t q) {
    RC_ASSERT(completed_seqs.count(q) == 1u);  // the device wrote it
    RC_ASSERT(delivered.insert(q).second);     // and it comes once
    if (corrupt_at) RC_ASSERT(used_pos.at(q) < *corrupt_at);
  }

  /// After a poll that stopped short of its room: it reached the end of the used ring or, with
  /// a hostile device, the corrupted entry, and then the driver is broken.
  void poll_stopped_short() {
    if (!corrupt_at) {
      used_drained = true;
      return;
    }
    RC_ASSERT(reaped() == *corrupt_at);
    RC_ASSERT(rig.qp.driver.broken());
    saw_break = true;
  }

  /// A poll (or, `refill`, a refill) that failed: only after the ring was corrupted. The first
  /// poll to fail names the rule, later polls and every refill say broken.
  void failed(errc e, bool refill = false) {
    RC_ASSERT(corrupt_at.has_value());
    RC_ASSERT(rig.qp.driver.broken());
    if (!refill && poll_failures == 0) {
      RC_ASSERT(e == corrupt_error);
    } else {
      RC_ASSERT(e == errc::broken);
    }
    poll_failures += refill ? 0 : 1;
    saw_break = true;
  }

  /// Some burst still has a packet of its own (kept ones are handles in `live`).
  bool bursts_hold() const {
    for (const auto& bu : bursts) {
      for (std::size_t k = 0; k < bu.size(); ++k) {
        if (!bu.kept(k)) return true;
      }
    }
    return false;
  }

  /// Used entries the driver consumed (delivered or dropped for want of a bounce buffer).
  std::size_t reaped() const {
    return delivered.size() + static_cast<std::size_t>(rig.rxq.stats().copy_failures);
  }
  std::size_t unreaped() const { return completed - reaped() - reset_dropped; }

  rig_type rig;
  std::vector<packet> live;   // every handle the "stack" still has
  std::vector<burst> bursts;  // every burst it still has
  std::vector<popped> in_device;
  std::set<std::uint64_t> completed_seqs;
  std::vector<std::uint64_t> used_order;          // frames in the order the device used them
  std::map<std::uint64_t, std::size_t> used_pos;  // a frame's place in used_order
  std::optional<std::size_t> corrupt_at;          // the used entry a hostile device rewrote
  errc corrupt_error = errc::ok;                  // and the rule the driver must name
  std::size_t poll_failures = 0;                  // polls that failed since
  bool saw_break = false;                         // the driver met the corrupted entry
  std::set<std::uint64_t> delivered;
  std::size_t completed = 0;
  std::size_t reset_dropped = 0;
  bool used_drained = true;  // the last poll emptied the used ring, nothing completed since
  std::size_t max_poll = 0;  // most packets one poll(span) delivered
  std::uint64_t seq = 0;
  std::array<holder_id, 3> holders{};
};

template <class Config>
using cmd = rc::state::Command<model, rx_system<Config>>;

template <class L>
struct refill : cmd<L> {
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    const auto r = s.rig.rxq.refill();
    if (!r) s.failed(r.error(), /*refill=*/true);
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "refill"; }
};

template <class L>
struct device_pop : cmd<L> {
  // Now and then more than one poll reaps at a time (32), so that a poll runs several rounds.
  int n = virtq_test::uniform(0, 3) == 0 ? virtq_test::uniform(10, 48) : virtq_test::uniform(1, 9);
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    for (int k = 0; k < n; ++k) {
      if (s.rig.qp.device.pop(s.rig.nic.c) != errc::ok) break;
      const auto f = make_frame(80, s.seq);
      const auto len = static_cast<std::uint32_t>(s.rig.nic.c.write(f));
      RC_ASSERT(len == rx_frame_len);
      s.in_device.push_back({s.rig.nic.c.id(), len, s.seq++});
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "device_pop " << n; }
};

template <class L>
struct device_complete : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  int n = virtq_test::uniform(1, 9);
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    for (int k = 0; k < n && !s.in_device.empty(); ++k) {
      const std::size_t i = (pick + static_cast<unsigned>(k) * 7u) % s.in_device.size();
      const auto e = s.in_device[i];
      s.in_device.erase(s.in_device.begin() + static_cast<std::ptrdiff_t>(i));
      RC_ASSERT(s.rig.qp.device.complete(e.id, e.len) == errc::ok);
      RC_ASSERT(s.completed_seqs.insert(e.seq).second);
      s.used_pos[e.seq] = s.used_order.size();
      s.used_order.push_back(e.seq);
      ++s.completed;
      s.used_drained = false;
    }
    s.rig.nic.flush();
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "device_complete " << pick << " " << n; }
};

/// Pop up to n chains and complete them all, in a scrambled order.
template <class L>
struct device_receive : cmd<L> {
  device_pop<L> pop;
  device_complete<L> complete;
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    pop.run(m, s);
    for (std::size_t left = s.in_device.size(); left != 0; left = s.in_device.size()) {
      complete.run(m, s);
    }
  }
  void show(std::ostream& os) const override {
    os << "device_receive ";
    pop.show(os);
  }
};

template <class L>
struct poll : cmd<L> {
  int budget =
      virtq_test::uniform(0, 3) == 0 ? virtq_test::uniform(18, 70) : virtq_test::uniform(1, 17);
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    std::vector<typename rx_system<L>::packet> out(static_cast<std::size_t>(budget));
    auto r = s.rig.rxq.poll(out);
    if (!r) {
      s.failed(r.error());
      s.check_invariants(m.stopped);
      return;
    }
    for (std::size_t k = 0; k < r->received; ++k) {
      auto& p = out[k];
      RC_ASSERT(p.len == rx_frame_len);
      s.check_delivered(frame_seq(p.data()));
      s.live.push_back(std::move(p));
    }
    s.max_poll = std::max(s.max_poll, r->received);
    // Fewer than asked although frames remain in the used ring can only be drops.
    if (r->received < out.size()) s.poll_stopped_short();
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "poll " << budget; }
};

/// rx_queue::poll(rx_burst&): the packets arrive as one loan, kept in s.bursts.
template <class L>
struct poll_burst : cmd<L> {
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    typename rx_system<L>::burst b;
    const std::uint64_t failures = s.rig.rxq.stats().copy_failures;
    auto r = s.rig.rxq.poll(b);
    if (!r) {
      RC_ASSERT(b.empty());
      s.failed(r.error());
      s.check_invariants(m.stopped);
      return;
    }
    RC_ASSERT(r->received == b.size());
    for (std::size_t k = 0; k < b.size(); ++k) {
      RC_ASSERT(b.len(k) == rx_frame_len);
      RC_ASSERT(b.data(k).size() == rx_frame_len);
      s.check_delivered(frame_seq(b.data(k)));
    }
    // One reap of at most `capacity`: the used ring is empty when it reaped fewer, counting
    // the frames dropped for want of a bounce buffer (a ring of 64 holds more than one burst).
    const std::uint64_t dropped = s.rig.rxq.stats().copy_failures - failures;
    if (b.size() + dropped < b.capacity) s.poll_stopped_short();
    if (!b.empty()) s.bursts.push_back(std::move(b));
    RC_ASSERT(b.empty());  // moved from
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "poll_burst"; }
};

/// One packet leaves a burst as a handle of its own (rx_burst::keep).
template <class L>
struct keep_one : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  unsigned at = *rc::gen::arbitrary<unsigned>();
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.bursts.empty()) {
      auto& b = s.bursts[pick % s.bursts.size()];
      const std::size_t k = at % b.size();
      const bool was_kept = b.kept(k);
      const std::uint32_t len = b.len(k);
      auto h = b.keep(k);
      RC_ASSERT(static_cast<bool>(h) == !was_kept);
      RC_ASSERT(b.kept(k));
      RC_ASSERT(b.data(k).empty());
      if (h) s.live.push_back(typename rx_system<L>::packet{std::move(h), len, 0});
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "keep " << pick << " " << at; }
};

/// A burst handed on, then given back whole (rx_burst::pass_to, rx_burst::release).
template <class L>
struct release_burst : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  int holder = virtq_test::uniform(0, 3);
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.bursts.empty()) {
      const std::size_t i = pick % s.bursts.size();
      auto& b = s.bursts[i];
      RC_ASSERT(b.pass_to(s.holders[static_cast<std::size_t>(holder)]) == errc::ok);
      s.check_invariants(m.stopped);
      RC_ASSERT(b.release() == errc::ok);
      RC_ASSERT(b.empty());
      RC_ASSERT(b.release() == errc::ok);  // nothing left: a second release does nothing
      s.bursts.erase(s.bursts.begin() + static_cast<std::ptrdiff_t>(i));
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "release_burst " << pick << " " << holder; }
};

template <class L>
struct pass_on : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  int holder = virtq_test::uniform(0, 3);
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.live.empty()) {
      auto& p = s.live[pick % s.live.size()];
      RC_ASSERT(p.buffer.pass_to(s.holders[static_cast<std::size_t>(holder)]) == errc::ok);
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "pass_on " << pick << " " << holder; }
};

template <class L>
struct copy_handle : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.live.empty() && s.live.size() < 200) {
      auto c = s.live[pick % s.live.size()];
      s.live.push_back(std::move(c));
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "copy " << pick; }
};

template <class L>
struct release : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.live.empty()) {
      const std::size_t i = pick % s.live.size();
      RC_ASSERT(s.live[i].buffer.release() == errc::ok);
      s.live.erase(s.live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "release " << pick; }
};

/// The stack gives back a run of packets at once (rx_queue::release(span)): copies of the same
/// buffer may sit in the run, so a buffer loses several references in one call.
template <class L>
struct release_bulk : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  unsigned count = virtq_test::uniform(1U, 9U);
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.live.empty()) {
      const std::size_t first = pick % s.live.size();
      const std::size_t n = std::min<std::size_t>(count, s.live.size() - first);
      auto run = std::span(s.live).subspan(first, n);
      RC_ASSERT(s.rig.rxq.release(run) == errc::ok);
      for (const auto& p : run) RC_ASSERT(!p.buffer);
      s.live.erase(s.live.begin() + static_cast<std::ptrdiff_t>(first),
                   s.live.begin() + static_cast<std::ptrdiff_t>(first + n));
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "release_bulk " << pick << " " << count; }
};

template <class L>
struct advance : cmd<L> {
  int ms = virtq_test::uniform(0, 30);
  void run(const model& m, rx_system<L>& s) const override {
    s.rig.time.advance(std::chrono::milliseconds(ms));
    (void)s.rig.rxq.check_starvation();
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "advance " << ms << "ms"; }
};

/// A hostile device rewrites one completed entry the driver has not reaped yet: its id out of
/// range (2.7.8 / 2.8.4: a used id names a buffer the driver gave) or its length over the
/// buffer's writable bytes (2.7.8.2). The device's own state is untouched: it goes on
/// receiving, and what it completes after that entry is never delivered.
template <class L>
struct device_corrupt : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  bool bad_len = *rc::gen::arbitrary<bool>();
  unsigned value = *rc::gen::arbitrary<unsigned>();
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    if (!s.corrupt_at && s.unreaped() != 0) {
      // The driver consumes the used ring in the order the device wrote it, from its start
      // (index 0, one slot per one-descriptor chain): entry k of used_order is at slot k.
      const std::size_t at = s.reaped() + pick % s.unreaped();
      const auto& v = s.rig.qp.ring.view();
      const std::uint32_t size = v.size;
      const auto slot = static_cast<std::uint32_t>(at % size);
      // Over the 256-byte buffer, or at or over the ring size (split ids are 32 bits on the
      // wire, packed ids 16).
      const std::uint32_t len = 257U + value % (0xFFFFFFFFU - 257U);
      const std::uint32_t id =
          size + value % ((L::layout::is_packed ? 0x10000U : 0xFFFFFFFFU) - size);
      using LE = little_endian;
      if constexpr (L::layout::is_packed) {
        packed::desc& d = v.ring[slot];
        if (bad_len) {
          put<LE>(d.len, len);
        } else {
          put<LE>(d.id, static_cast<std::uint16_t>(id));
        }
      } else {
        if (bad_len) {
          put<LE>(v.used.ring(slot).len, len);
        } else {
          put<LE>(v.used.ring(slot).id, id);
        }
      }
      s.corrupt_at = at;
      s.corrupt_error = bad_len ? errc::used_len_too_large : errc::used_id_out_of_range;
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override {
    os << "device_corrupt " << pick << (bad_len ? " len " : " id ") << value;
  }
};

template <class L>
struct shutdown : cmd<L> {
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void apply(model& m) const override { m.stopped = true; }
  void run(const model& m, rx_system<L>& s) const override {
    const std::uint32_t posted = s.rig.pool.posted_count();
    s.rig.qp.device.reset();
    s.in_device.clear();  // popped by the device, never completed: they come back by reset
    const auto rep = s.rig.rxq.shutdown(0ms);
    RC_ASSERT(rep.returned_from_ring == posted);  // exactly once each, broken ring or not
    RC_ASSERT(rep.bad_tokens == 0u);
    RC_ASSERT(rep.census.conserved);
    RC_ASSERT(rep.drained == (s.live.empty() && !s.bursts_hold()));
    // Completed but unreaped frames went back with their buffers: dropped by the reset, counted.
    s.reset_dropped += s.unreaped();
    s.used_drained = true;
    (void)m;
    s.check_invariants(true);
  }
  void show(std::ostream& os) const override { os << "shutdown"; }
};

template <class L, class... Extra>
auto command_gen() {
  // Repeats weigh the choice: receiving is common.
  return rc::state::gen::execOneOfWithArgs<
      refill<L>, refill<L>, device_pop<L>, device_complete<L>, device_receive<L>, device_receive<L>,
      device_receive<L>, poll<L>, poll<L>, poll<L>, pass_on<L>, copy_handle<L>, release<L>,
      release<L>, release<L>, release_bulk<L>, advance<L>, poll_burst<L>, keep_one<L>,
      release_burst<L>, Extra...>();
}

/// Runs a generated sequence (scaled up to a few hundred steps so pools run dry and the
/// reserve and the detector come into play), then shuts down and checks everything came back.
enum class ending { none, shutdown, hostile };

template <class L, ending End>
void run_property(std::uint32_t ring, std::uint32_t pool, bool reserve) {
  rx_system<L> s(ring, pool, reserve);
  RC_ASSERT(s.rig.rxq.refill().has_value());  // a receive queue starts with its ring posted
  const auto gen = [] {
    if constexpr (End == ending::shutdown) {
      return command_gen<L, shutdown<L>>();
    } else if constexpr (End == ending::hostile) {
      return command_gen<L, device_corrupt<L>>();
    } else {
      return command_gen<L>();
    }
  }();
  const auto cmds = *rc::gen::scale(5.0, rc::state::gen::commands(model{}, gen));
  rc::state::runAll(cmds, model{}, s);
  if (!s.rig.rxq.stopped()) shutdown<L>{}.run(model{}, s);
  s.live.clear();
  s.bursts.clear();
  RC_ASSERT(s.rig.rxq.census().held == 0u);
  RC_ASSERT(s.rig.rxq.census().free == pool);
  RC_CLASSIFY(s.delivered.size() > 50, "more than 50 frames delivered");
  RC_CLASSIFY(s.rig.rxq.stats().packets_copied > 0, "copies");
  RC_CLASSIFY(s.rig.rxq.stats().copy_failures > 0, "copy failures");
  RC_CLASSIFY(s.rig.rxq.stats().starvation_reports > 0, "starvation reported");
  RC_CLASSIFY(s.max_poll > 32, "a poll of several reaps");
  RC_CLASSIFY(s.saw_break, "the driver met the hostile entry");
}

}  // namespace

template <class C>
void run_all() {
  constexpr auto plain = ending::none;
  rc::prop("pool == ring, reserve on", [] { run_property<C, plain>(8, 8, true); });
  rc::prop("pool == ring, reserve off", [] { run_property<C, plain>(8, 8, false); });
  rc::prop("pool > ring, reserve on", [] { run_property<C, plain>(8, 20, true); });
  rc::prop("pool < ring, reserve off", [] { run_property<C, plain>(16, 6, false); });
  // Rings larger than one reap: a poll with a large budget takes several rounds of 32.
  rc::prop("ring 64, pool 80, reserve on", [] { run_property<C, plain>(64, 80, true); });
  rc::prop("ring 64, pool 48, reserve off", [] { run_property<C, plain>(64, 48, false); });
  rc::prop("shutdown mid-run, reserve on", [] { run_property<C, ending::shutdown>(8, 12, true); });
  rc::prop("shutdown mid-run, reserve off", [] { run_property<C, ending::shutdown>(8, 8, false); });
  // A hostile device: a small ring (the error soon met) and one of several reaps.
  rc::prop("hostile device, reserve on", [] { run_property<C, ending::hostile>(8, 12, true); });
  rc::prop("hostile device, ring 64, reserve off",
           [] { run_property<C, ending::hostile>(64, 48, false); });
}

TEMPLATE_LIST_TEST_CASE("rx property: conservation and exact accounting under random interleavings",
                        "[rx_property]", all_layouts) {
  SECTION("atomic counts, spin lock, poisoning") {
    run_all<config<TestType, poisoned>>();
  }
  SECTION("one thread (repost list), poisoning") {
    run_all<config<TestType, single_poisoned>>();
  }
  SECTION("one thread (repost list)") {
    run_all<config<TestType, single_plain>>();
  }
}
