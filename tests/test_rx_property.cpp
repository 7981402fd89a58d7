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
// Something behind the receive queue's back may add chains of its own to the virtqueue (tokens
// past the pool, or naming any of its buffers) or unpost posted buffers (their chains stay in the
// ring, stale): from the first such act the receive queue stops trusting the virtqueue
// (trusts_queue), and every poll lends exactly the completions that name a buffer posted at that
// moment, in used-ring order, counting each other one as a bad token (a model of the pool's
// states decides which); the ring holds the posted buffers plus the foreign and stale chains.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <rapidcheck/state.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <vector>

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
  /// The buffer a completed chain wrote into: one of the pool's (`token` is its index) or a
  /// foreign chain's (`token` is what it was added with, `slot` its buffer in foreign_mem).
  struct target {
    bool foreign = false;
    token_t token = 0;
    std::size_t slot = 0;
  };
  struct popped {
    std::uint16_t id;
    std::uint32_t len;
    std::uint64_t seq;
    target to;
  };
  /// A packet a poll delivered: its pool buffer and bytes.
  struct delivery {
    std::uint32_t index;
    std::span<const std::byte> data;
  };
  static constexpr std::size_t foreign_slots = 6;
  static constexpr std::uint32_t foreign_len = 256;

  rx_system(std::uint32_t ring, std::uint32_t pool, bool reserve, bool foreign_actors = false)
      : foreign_mode(foreign_actors), rig(ring, pool, [&] {
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
    // The ring holds exactly the posted buffers, and the chains added or left behind the
    // receive queue's back.
    const auto& q = rig.qp.driver;
    if (!stopped) {
      RC_ASSERT(q.size() - q.num_free() == rig.pool.posted_count() + foreign_out + stale_out);
    }
    if (stopped) RC_ASSERT(rig.pool.posted_count() == 0u);
    // Trusted exactly until something else touched the queue or the pool's posted buffers.
    RC_ASSERT(rig.rxq.trusts_queue() == !foreign_acted);
    // Frames: none twice (checked at delivery), none lost.
    // Every completed frame was delivered, dropped for want of a bounce buffer, or is still in
    // the used ring; after a poll that found no more, nothing is in the used ring.
    const auto s = rig.rxq.stats();
    RC_ASSERT(completed_seqs.size() == completed);
    RC_ASSERT(used_order.size() == completed);
    RC_ASSERT(completed >= reaped() + reset_dropped);
    if (used_drained) RC_ASSERT(completed == reaped() + reset_dropped);
    if (!foreign_mode) RC_ASSERT(delivered.size() == lent_count);
    // The corrupted entry is never consumed: the driver stops in front of it.
    if (corrupt_at && !stopped) RC_ASSERT(reaped() <= *corrupt_at);
    // Only a hostile device breaks the queue, and then with the rule it broke.
    const errc e = rig.qp.driver.error();
    RC_ASSERT((e == errc::ok || (corrupt_at && e == corrupt_error)));
    RC_ASSERT(s.bad_tokens == poll_bad + shutdown_bad);
    RC_ASSERT(foreign_acted || s.bad_tokens == 0u);
    // A buffer the device wrote while the pool called it free (through a stale chain) is
    // caught when it is next taken, once, if the pool poisons; nothing else is misuse.
    for (auto it = dirty.begin(); it != dirty.end();) {
      const rx_state st = rig.pool.state(*it);
      if (st == rx_state::free || st == rx_state::ready) {
        ++it;
        continue;
      }
      if (Config::policy::poison) ++written_while_free;
      it = dirty.erase(it);
    }
    RC_ASSERT(rig.pool.misuse(errc::use_after_release) == written_while_free);
    RC_ASSERT(rig.pool.misuse_total() == written_while_free);
  }

  /// The pool's buffer states (foreign_mode: what a poll may lend is decided from them).
  std::vector<rx_state> states() const {
    std::vector<rx_state> st(rig.pool.size());
    for (std::uint32_t i = 0; i < rig.pool.size(); ++i) st[i] = rig.pool.state(i);
    return st;
  }

  /// foreign_mode, after a poll that delivered `got` (in order) and counted `bad` bad tokens,
  /// the pool's states before it being `st`: it consumed the next got.size() + bad used
  /// entries, lending exactly those that named a buffer posted at that point of the poll. A
  /// buffer no foreign act has touched holds the frame of its own entry (delivered once).
  void check_consumed(std::vector<rx_state> st, std::span<const delivery> got, std::uint64_t bad) {
    const std::size_t from = reaped();
    const std::size_t n = got.size() + static_cast<std::size_t>(bad);
    RC_ASSERT(from + n <= used_order.size());
    std::size_t k = 0;
    std::uint64_t refused = 0;
    for (std::size_t e = from; e < from + n; ++e) {
      const target t = used_targets[e];
      // The index only after the range test (a 32-bit host's size_t is narrower than a token).
      const bool lendable =
          t.token < st.size() && st[static_cast<std::size_t>(t.token)] == rx_state::posted;
      if (t.foreign) {
        foreign_slot[t.slot].reset();
        --foreign_out;
      }
      if (!lendable) {
        ++refused;
        if (!t.foreign) --stale_out;  // a buffer not posted: its chain was a stale one
        continue;
      }
      st[static_cast<std::size_t>(t.token)] = rx_state::held;
      RC_ASSERT(k < got.size());
      RC_ASSERT(got[k].index == t.token);
      if (t.foreign) ++stale_out;  // the buffer is lent: its own chain is stale now
      if (!t.foreign && tainted.count(static_cast<std::uint32_t>(t.token)) == 0) {
        RC_ASSERT(frame_seq(got[k].data) == used_order[e]);
        check_delivered(used_order[e]);
      }
      ++k;
    }
    RC_ASSERT(k == got.size());
    RC_ASSERT(refused == bad);
    lent_count += k;
    poll_bad += bad;
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

  /// Used entries the driver consumed (delivered, dropped for want of a bounce buffer, or
  /// counted as a bad token).
  std::size_t reaped() const {
    return lent_count + static_cast<std::size_t>(rig.rxq.stats().copy_failures + poll_bad);
  }

  /// What the device's chain wrote into (its one writable buffer).
  target target_of(const chain& c) const {
    const std::span<const std::byte> d = c.writable()[0];
    if (const auto i = buffer_index(rig.pool, d)) return target{false, *i, 0};
    const auto at = static_cast<std::size_t>(d.data() - foreign_mem.data());
    RC_ASSERT(d.data() >= foreign_mem.data() && at < foreign_mem.size());
    const std::size_t slot = at / foreign_len;
    RC_ASSERT(foreign_slot[slot].has_value());
    return target{true, *foreign_slot[slot], slot};
  }
  std::size_t unreaped() const { return completed - reaped() - reset_dropped; }

  bool foreign_mode;  // foreign acts may come: polls are checked against the state model
  rig_type rig;
  std::vector<packet> live;   // every handle the "stack" still has
  std::vector<burst> bursts;  // every burst it still has
  std::vector<popped> in_device;
  std::set<std::uint64_t> completed_seqs;
  std::vector<std::uint64_t> used_order;          // frames in the order the device used them
  std::vector<target> used_targets;               // and the buffer each went into
  std::map<std::uint64_t, std::size_t> used_pos;  // a frame's place in used_order
  std::optional<std::size_t> corrupt_at;          // the used entry a hostile device rewrote
  errc corrupt_error = errc::ok;                  // and the rule the driver must name
  std::size_t poll_failures = 0;                  // polls that failed since
  bool saw_break = false;                         // the driver met the corrupted entry
  std::set<std::uint64_t> delivered;
  std::size_t completed = 0;
  std::size_t reset_dropped = 0;
  bool used_drained = true;        // the last poll emptied the used ring, nothing completed since
  std::size_t max_poll = 0;        // most packets one poll(span) delivered
  std::size_t lent_count = 0;      // packets polls delivered
  std::uint64_t poll_bad = 0;      // completions polls counted as bad tokens
  std::uint64_t shutdown_bad = 0;  // chains the reset gave back that were not posted buffers
  // Foreign acts: chains added behind the receive queue (buffers in foreign_mem, slot -> token
  // while outstanding) and chains of buffers unposted behind it (stale).
  bool foreign_acted = false;
  buffer_arena foreign_mem{foreign_slots * foreign_len};
  std::array<std::optional<token_t>, foreign_slots> foreign_slot{};
  std::size_t foreign_out = 0;
  std::size_t stale_out = 0;
  std::set<std::uint32_t> tainted;  // buffers unposted or named by a foreign chain
  std::set<std::uint32_t> dirty;    // written by the device while free, not taken since
  std::uint64_t written_while_free = 0;
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
      const auto to = s.target_of(s.rig.nic.c);
      if (!to.foreign) {
        const rx_state st = s.rig.pool.state(static_cast<std::uint32_t>(to.token));
        if (st == rx_state::free || st == rx_state::ready) {
          s.dirty.insert(static_cast<std::uint32_t>(to.token));
        }
      }
      s.in_device.push_back({s.rig.nic.c.id(), len, s.seq++, to});
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
      s.used_targets.push_back(e.to);
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
    const auto before = s.foreign_mode ? s.states() : std::vector<rx_state>{};  // the model's
    const std::uint64_t bad = s.rig.rxq.stats().bad_tokens;
    auto r = s.rig.rxq.poll(out);
    if (!r) {
      s.failed(r.error());
      s.check_invariants(m.stopped);
      return;
    }
    std::vector<typename rx_system<L>::delivery> got;
    for (std::size_t k = 0; k < r->received; ++k) {
      auto& p = out[k];
      RC_ASSERT(p.len == rx_frame_len);
      got.push_back({p.buffer.index(), p.data()});
    }
    if (s.foreign_mode) {
      s.check_consumed(before, got, s.rig.rxq.stats().bad_tokens - bad);
    } else {
      for (const auto& d : got) s.check_delivered(frame_seq(d.data));
      s.lent_count += got.size();
    }
    for (std::size_t k = 0; k < r->received; ++k) s.live.push_back(std::move(out[k]));
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
    const std::uint64_t bad = s.rig.rxq.stats().bad_tokens;
    const auto before = s.foreign_mode ? s.states() : std::vector<rx_state>{};  // the model's
    auto r = s.rig.rxq.poll(b);
    if (!r) {
      RC_ASSERT(b.empty());
      s.failed(r.error());
      s.check_invariants(m.stopped);
      return;
    }
    RC_ASSERT(r->received == b.size());
    std::vector<typename rx_system<L>::delivery> got;
    for (std::size_t k = 0; k < b.size(); ++k) {
      RC_ASSERT(b.len(k) == rx_frame_len);
      RC_ASSERT(b.data(k).size() == rx_frame_len);
      if (s.foreign_mode) {
        const auto i = buffer_index(s.rig.pool, b.data(k));
        RC_ASSERT(i.has_value());
        got.push_back({*i, b.data(k)});
      } else {
        s.check_delivered(frame_seq(b.data(k)));
      }
    }
    const std::uint64_t refused = s.rig.rxq.stats().bad_tokens - bad;
    if (s.foreign_mode) {
      s.check_consumed(before, got, refused);
    } else {
      s.lent_count += b.size();
    }
    // One reap of at most `capacity`: the used ring is empty when it reaped fewer, counting
    // the frames dropped for want of a bounce buffer (a ring of 64 holds more than one burst)
    // and the completions refused as bad tokens.
    const std::uint64_t dropped = s.rig.rxq.stats().copy_failures - failures;
    if (b.size() + dropped + refused < b.capacity) s.poll_stopped_short();
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

/// Something behind the receive queue's back (a second user of the virtqueue, or a bug) adds a
/// chain of its own buffer: its token past the pool (lent, the pool would index past its
/// slots) or naming one of the pool's buffers in whatever state it is (lent while held, the
/// buffer would have two owners).
template <class L>
struct foreign_add : cmd<L> {
  bool in_range = *rc::gen::arbitrary<bool>();
  unsigned value = *rc::gen::arbitrary<unsigned>();
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    auto& slots = s.foreign_slot;
    const auto free_slot = std::find(slots.begin(), slots.end(), std::nullopt);
    if (free_slot != slots.end()) {
      const std::uint32_t size = s.rig.pool.size();
      const token_t t = in_range ? token_t{value % size} : token_t{size} + value;
      const auto k = static_cast<std::size_t>(free_slot - slots.begin());
      const buffer b = s.foreign_mem.at(k * rx_system<L>::foreign_len, rx_system<L>::foreign_len);
      if (s.rig.qp.driver.add_inbuf(b, t) == errc::ok) {
        (void)s.rig.qp.driver.kick_prepare();
        *free_slot = t;
        ++s.foreign_out;
        s.foreign_acted = true;
        if (in_range) s.tainted.insert(static_cast<std::uint32_t>(t));
      }
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override {
    os << "foreign_add " << (in_range ? "in range " : "past the pool ") << value;
  }
};

/// Something behind the receive queue's back unposts a posted buffer: the pool calls it free
/// while its chain stays in the ring (stale), so that buffer may be taken and posted again.
template <class L>
struct foreign_unpost : cmd<L> {
  unsigned pick = *rc::gen::arbitrary<unsigned>();
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void run(const model& m, rx_system<L>& s) const override {
    std::vector<std::uint32_t> posted;
    for (std::uint32_t i = 0; i < s.rig.pool.size(); ++i) {
      if (s.rig.pool.state(i) == rx_state::posted) posted.push_back(i);
    }
    if (!posted.empty()) {
      const std::uint32_t i = posted[pick % posted.size()];
      RC_ASSERT(s.rig.pool.unpost(i) == errc::ok);
      ++s.stale_out;
      s.foreign_acted = true;
      s.tainted.insert(i);
    }
    s.check_invariants(m.stopped);
  }
  void show(std::ostream& os) const override { os << "foreign_unpost " << pick; }
};

template <class L>
struct shutdown : cmd<L> {
  void checkPreconditions(const model& m) const override { RC_PRE(!m.stopped); }
  void apply(model& m) const override { m.stopped = true; }
  void run(const model& m, rx_system<L>& s) const override {
    const std::uint32_t posted = s.rig.pool.posted_count();
    const auto& q = s.rig.qp.driver;
    const std::uint32_t in_ring = q.size() - q.num_free();
    s.rig.qp.device.reset();
    s.in_device.clear();  // popped by the device, never completed: they come back by reset
    const auto rep = s.rig.rxq.shutdown(0ms);
    RC_ASSERT(rep.returned_from_ring == posted);  // exactly once each, broken ring or not
    // Each posted buffer has a chain in the ring; every other chain (foreign, stale, or a
    // second chain of a posted buffer) is a token the reset refuses. A broken ring gives back
    // what it holds all the same.
    RC_ASSERT(rep.bad_tokens == (s.foreign_acted ? in_ring - posted : 0u));
    s.shutdown_bad += rep.bad_tokens;
    s.foreign_slot.fill(std::nullopt);
    s.foreign_out = s.stale_out = 0;
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
enum class ending { none, shutdown, hostile, foreign };

template <class L, ending End>
void run_property(std::uint32_t ring, std::uint32_t pool, bool reserve) {
  rx_system<L> s(ring, pool, reserve, End == ending::foreign);
  RC_ASSERT(s.rig.rxq.refill().has_value());  // a receive queue starts with its ring posted
  const auto gen = [] {
    if constexpr (End == ending::shutdown) {
      return command_gen<L, shutdown<L>>();
    } else if constexpr (End == ending::hostile) {
      return command_gen<L, device_corrupt<L>>();
    } else if constexpr (End == ending::foreign) {
      return command_gen<L, foreign_add<L>, foreign_add<L>, foreign_unpost<L>, shutdown<L>>();
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
  RC_CLASSIFY(s.poll_bad > 0, "bad tokens refused");
  RC_CLASSIFY(s.written_while_free > 0, "a write into a free buffer caught");
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
  // Chains added and buffers unposted behind the receive queue (no reserve: every completion
  // goes through the lend loops the model checks).
  rc::prop("foreign acts, reserve off", [] { run_property<C, ending::foreign>(8, 12, false); });
  rc::prop("foreign acts, ring 64, reserve off",
           [] { run_property<C, ending::foreign>(64, 48, false); });
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
