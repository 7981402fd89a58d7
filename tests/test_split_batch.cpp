// The split ring's batch calls (virtq/split.hpp): split_driver::add_inbufs / add_outbufs,
// split_device::pop_buffers and complete(span). They promise exactly what the single calls
// promise, so most tests compare them with the single calls on a twin queue; the rest give a
// hostile peer or a careless caller to the batch paths, each named after the rule it enforces.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "layouts.hpp"
#include "property.hpp"
#include "test_split_common.hpp"
#include "virtq/split.hpp"

using namespace virtq;
using LE = little_endian;
using virtq_test::buffer_arena;

namespace {

features f_base() {
  return virtq_test::base_features<split_layout>();
}

template <class P = default_policy>
using split_pair = virtq_test::queue_pair<split_layout, P>;

// --- the property: batch calls == single calls ------------------------------------------------

/// Two identical queue pairs: `b` is driven through the batch calls, `s` through the single
/// calls. Every outcome (counts, errors, tokens, lengths, ids, kick and interrupt decisions,
/// statistics, ring contents) must match.
template <class P>
struct twin {
  twin(std::uint32_t size, features f, driver_options o)
      : b(size, f, o), s(size, f, o), arena(std::size_t{size} * 2 * 256), size_(size) {}

  split_pair<P> b;
  split_pair<P> s;
  buffer_arena arena;
  std::uint32_t size_;
  std::uint64_t next_token = 1;
  std::vector<std::uint16_t> held;              // popped, not completed, in pop order
  std::map<std::uint16_t, std::uint32_t> room;  // per held id: its writable bytes
  std::uint32_t rotor = 0;                      // where the next buffer goes in the arena

  buffer next_buffer(std::uint32_t len) {
    const buffer x = arena.at(std::size_t{rotor % (size_ * 2)} * 256, len);
    ++rotor;
    return x;
  }

  void add_batch(bool writable, std::size_t n, std::uint32_t seed) {
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::size_t i = 0; i < n; ++i) {
      bufs.push_back(next_buffer((seed + static_cast<std::uint32_t>(i) * 37U) % 200U));
      toks.push_back(next_token++);
    }
    const auto got = writable ? b.driver.add_inbufs(bufs, toks) : b.driver.add_outbufs(bufs, toks);
    std::size_t want = 0;
    errc first = errc::ok;
    for (; want < n; ++want) {
      const std::span<const buffer> one(&bufs[want], 1);
      const errc e =
          writable ? s.driver.add_inbuf(bufs[want], toks[want]) : s.driver.add(one, {}, toks[want]);
      if (e != errc::ok) {
        first = e;
        break;
      }
    }
    RC_ASSERT(got.has_value());
    RC_ASSERT(*got == want);
    RC_ASSERT(first == errc::ok || first == errc::no_space);
  }

  void add_pair(std::uint32_t seed) {
    const buffer out[] = {next_buffer(seed % 100U + 1U)};
    const buffer in[] = {next_buffer(seed % 150U + 1U)};
    const token_t t = next_token++;
    RC_ASSERT(b.driver.add(out, in, t) == s.driver.add(out, in, t));
  }

  void kick() { RC_ASSERT(b.driver.kick_prepare() == s.driver.kick_prepare()); }

  void pop_batch(std::size_t k) {
    std::vector<popped_buffer> out(k);
    const auto got = b.device.pop_buffers(out);
    RC_ASSERT(got.has_value());
    for (std::size_t i = 0; i < *got; ++i) {
      chain c;
      RC_ASSERT(s.device.pop(c) == errc::ok);
      RC_ASSERT(c.descriptors() == 1U);
      RC_ASSERT(out[i].id == c.id());
      RC_ASSERT(out[i].len == (out[i].writable ? c.writable_bytes() : c.readable_bytes()));
      RC_ASSERT(c.readable_bytes() + c.writable_bytes() == out[i].len);
      const std::byte* data = c.readable().empty()
                                  ? (c.writable().empty() ? nullptr : c.writable()[0].data())
                                  : c.readable()[0].data();
      RC_ASSERT(out[i].data == data);
      held.push_back(out[i].id);
      room[out[i].id] = out[i].writable ? out[i].len : 0U;
    }
    if (*got < k) {
      // Stopped: nothing available, or the next chain is not one direct descriptor. Either
      // way pop(chain&) on both sides must agree, and only such a chain may be left behind.
      chain cb;
      chain cs;
      const errc eb = b.device.pop(cb);
      RC_ASSERT(eb == s.device.pop(cs));
      if (eb == errc::ok) {
        RC_ASSERT(cb.id() == cs.id());
        const std::uint16_t flags = get<LE>(b.ring.view().table[cb.id()].flags);
        RC_ASSERT((flags & (split::desc_f_next | split::desc_f_indirect)) != 0);
        held.push_back(cb.id());
        room[cb.id()] = static_cast<std::uint32_t>(cb.writable_bytes());
      } else {
        RC_ASSERT(eb == errc::empty);
      }
    }
  }

  void complete_batch(std::size_t k, std::uint32_t seed) {
    std::vector<used_entry> done;
    std::vector<std::uint16_t> pool = held;
    for (std::size_t i = 0; i < k && !pool.empty(); ++i) {
      // Mostly the oldest held chain with a fitting length; now and then another one (an
      // IN_ORDER violation), a length one too large, or an id never popped.
      const std::uint32_t r = (seed >> (i % 16)) + static_cast<std::uint32_t>(i) * 7U;
      const std::size_t at = r % 5U == 0 ? r % pool.size() : 0;
      const std::uint16_t id = pool[at];
      std::uint32_t len = room[id] == 0 ? 0 : r % (room[id] + 1U);
      if (r % 11U == 3U) len = room[id] + 1U;
      done.push_back(
          used_entry{r % 13U == 5U ? static_cast<std::uint16_t>(r % (size_ + 4U)) : id, len});
      pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(at));
    }
    const auto got = b.device.complete(done);
    std::size_t want = 0;
    errc first = errc::ok;
    for (; want < done.size(); ++want) {
      first = s.device.complete(done[want].id, done[want].len);
      if (first != errc::ok) break;
    }
    if (first == errc::ok) {
      RC_ASSERT(got.has_value());
      RC_ASSERT(*got == done.size());
    } else if (want == 0) {
      RC_ASSERT(got.error() == first);
    } else {
      RC_ASSERT(got.has_value());
      RC_ASSERT(*got == want);
    }
    RC_ASSERT(!b.device.broken());
    for (std::size_t i = 0; i < want; ++i) {
      held.erase(std::find(held.begin(), held.end(), done[i].id));
      room.erase(done[i].id);
    }
  }

  // 2.7.9: one used element standing for the next `count` held chains, which the driver's
  // batch reap must split into chains as reap_one does. Now and then more chains than are held,
  // or a length too large for the last: refused on both sides (without IN_ORDER, always).
  void complete_in_order(std::uint32_t seed) {
    const auto count = static_cast<std::uint16_t>(seed % (held.size() + 2U));
    std::uint32_t len = 0;
    if (count != 0 && count <= held.size()) {
      const std::uint32_t r = room[held[count - 1U]];
      len = (seed >> 8) % 11U == 3U ? r + 1U : (seed >> 12) % (r + 1U);
    }
    const errc e = b.device.complete_in_order(count, len);
    RC_ASSERT(e == s.device.complete_in_order(count, len));
    RC_ASSERT(!b.device.broken());
    if (e != errc::ok) return;
    for (std::uint16_t i = 0; i < count; ++i) room.erase(held[i]);
    held.erase(held.begin(), held.begin() + count);
  }

  void interrupt() { RC_ASSERT(b.device.interrupt_prepare() == s.device.interrupt_prepare()); }

  void reap(std::size_t k) {
    std::vector<used_buffer> out(k);
    const auto got = b.driver.get_used(out);
    RC_ASSERT(got.has_value());
    std::size_t n = 0;
    for (; n < k; ++n) {
      const auto u = s.driver.get_used();
      if (!u) {
        RC_ASSERT(u.error() == errc::empty);
        break;
      }
      RC_ASSERT(n < *got);
      RC_ASSERT(out[n].token == u->token);
      RC_ASSERT(out[n].len == u->len);
    }
    RC_ASSERT(n == *got);
  }

  void compare_rings() const {
    const split::ring_view vb = b.ring.view();
    const split::ring_view vs = s.ring.view();
    for (std::uint32_t i = 0; i < size_; ++i) {
      const split::desc& x = vb.table[i];
      const split::desc& y = vs.table[i];
      // An indirect table lives in its queue's own memory: only its presence must match.
      if ((get<LE>(x.flags) & split::desc_f_indirect) == 0) {
        RC_ASSERT(get<LE>(x.addr) == get<LE>(y.addr));
      }
      RC_ASSERT(get<LE>(x.len) == get<LE>(y.len));
      RC_ASSERT(get<LE>(x.flags) == get<LE>(y.flags));
      // Without NEXT the device never reads `next` (2.7.5): only a linked one must match.
      if ((get<LE>(x.flags) & split::desc_f_next) != 0) {
        RC_ASSERT(get<LE>(x.next) == get<LE>(y.next));
      }
      RC_ASSERT(get<LE>(vb.avail.ring(i)) == get<LE>(vs.avail.ring(i)));
      RC_ASSERT(get<LE>(vb.used.ring(i).id) == get<LE>(vs.used.ring(i).id));
      RC_ASSERT(get<LE>(vb.used.ring(i).len) == get<LE>(vs.used.ring(i).len));
    }
    RC_ASSERT(load_relaxed<LE>(vb.avail.idx()) == load_relaxed<LE>(vs.avail.idx()));
    RC_ASSERT(load_relaxed<LE>(vb.avail.flags()) == load_relaxed<LE>(vs.avail.flags()));
    RC_ASSERT(load_relaxed<LE>(vb.avail.used_event()) == load_relaxed<LE>(vs.avail.used_event()));
    RC_ASSERT(load_relaxed<LE>(vb.used.idx()) == load_relaxed<LE>(vs.used.idx()));
    RC_ASSERT(load_relaxed<LE>(vb.used.flags()) == load_relaxed<LE>(vs.used.flags()));
    RC_ASSERT(load_relaxed<LE>(vb.used.avail_event()) == load_relaxed<LE>(vs.used.avail_event()));
  }

  void compare_stats() const {
    const auto same = [](const queue_stats& x, const queue_stats& y) {
      RC_ASSERT(x.added == y.added);
      RC_ASSERT(x.popped == y.popped);
      RC_ASSERT(x.completed == y.completed);
      RC_ASSERT(x.reaped == y.reaped);
      RC_ASSERT(x.kicks == y.kicks);
      RC_ASSERT(x.kicks_suppressed == y.kicks_suppressed);
      RC_ASSERT(x.interrupts == y.interrupts);
      RC_ASSERT(x.interrupts_suppressed == y.interrupts_suppressed);
      RC_ASSERT(x.rejected() == y.rejected());
    };
    same(b.driver.stats(), s.driver.stats());
    same(b.device.stats(), s.device.stats());
    RC_ASSERT(b.driver.num_free() == s.driver.num_free());
    // ring_full: once per short batch; the single calls stop at their first no_space.
    RC_ASSERT(b.driver.stats().ring_full == s.driver.stats().ring_full);
    RC_ASSERT(b.driver.stats().min_free == s.driver.stats().min_free);
  }
};

template <class P>
void batch_matches_single(features f, driver_options o) {
  const auto ops = *rc::gen::container<std::vector<std::tuple<int, int, std::uint32_t>>>(
      rc::gen::tuple(virtq_test::uniform_gen(0, 10), virtq_test::uniform_gen(0, 20),
                     rc::gen::arbitrary<std::uint32_t>()));
  twin<P> t(16, f, o);
  for (const auto& [kind, param, seed] : ops) {
    const auto n = static_cast<std::size_t>(param);
    switch (kind) {
      case 0:
        t.add_batch(true, n, seed);
        break;
      case 1:
        t.add_batch(false, n, seed);
        break;
      case 2:
        t.add_pair(seed);
        break;
      case 3:
        t.kick();
        break;
      case 4:
        t.pop_batch(n + 1);
        break;
      case 5:
        t.complete_batch(n + 1, seed);
        break;
      case 6:
        t.interrupt();
        break;
      case 7:
        t.reap(n + 1);
        break;
      case 8:
        t.complete_in_order(seed);
        break;
      default:  // a whole cycle, as the receive path runs it
        t.add_batch(true, n, seed);
        t.kick();
        t.pop_batch(n + 1);
        t.complete_batch(n + 1, seed);
        t.interrupt();
        t.reap(n + 1);
        break;
    }
    t.compare_rings();
    t.compare_stats();
  }
  // Both hand back the same outstanding tokens on reset.
  std::vector<token_t> tb;
  std::vector<token_t> ts;
  t.b.device.reset();
  t.s.device.reset();
  t.b.driver.reset([&](token_t x) { tb.push_back(x); });
  t.s.driver.reset([&](token_t x) { ts.push_back(x); });
  std::sort(tb.begin(), tb.end());
  std::sort(ts.begin(), ts.end());
  RC_ASSERT(tb == ts);
}

}  // namespace

TEST_CASE("batch calls give the outcomes of the single calls (2.7.13, 2.7.8, 2.7.9)",
          "[split][batch][property]") {
  const driver_options near_wrap{0, 2, nullptr, nullptr, 65530};
  rc::prop("event index", [] { batch_matches_single<default_policy>(f_base(), {}); });
  rc::prop("event index, indices wrapping 2^16",
           [&] { batch_matches_single<default_policy>(f_base(), near_wrap); });
  rc::prop("no suppression", [] {
    batch_matches_single<virtq_test::none_policy>(
        virtq_test::features_for<split_layout, virtq_test::none_policy>(), {});
  });
  rc::prop("flags", [] {
    batch_matches_single<virtq_test::flags_policy>(
        virtq_test::features_for<split_layout, virtq_test::flags_policy>(), {});
  });
  rc::prop("IN_ORDER (2.7.9)",
           [] { batch_matches_single<default_policy>(f_base().with(feature::in_order), {}); });
  rc::prop("IN_ORDER, indices wrapping 2^16", [&] {
    batch_matches_single<default_policy>(f_base().with(feature::in_order), near_wrap);
  });
  rc::prop("IN_ORDER, no suppression", [] {
    batch_matches_single<virtq_test::none_policy>(
        virtq_test::features_for<split_layout, virtq_test::none_policy>().with(feature::in_order),
        {});
  });
  rc::prop("checked mode (the general path)",
           [] { batch_matches_single<checked_policy>(f_base(), {}); });
  rc::prop("single buffers go indirect (the general path)", [] {
    driver_options o;
    o.indirect_max = 4;
    o.indirect_threshold = 1;
    batch_matches_single<default_policy>(f_base(), o);
  });
}

// --- driver: add_inbufs / add_outbufs ---------------------------------------------------------

TEST_CASE("add_inbufs: spans of different sizes are invalid_argument and stage nothing",
          "[split][batch]") {
  split_pair<> q(8);
  buffer_arena arena(4096);
  const buffer bufs[] = {arena.at(0, 64), arena.at(64, 64)};
  const token_t toks[] = {1};
  CHECK(q.driver.add_inbufs(bufs, toks).error() == errc::invalid_argument);
  CHECK(q.driver.add_outbufs(bufs, toks).error() == errc::invalid_argument);
  CHECK(q.driver.num_free() == 8);
  CHECK(q.driver.stats().added == 0);
  CHECK_FALSE(q.driver.kick_prepare());  // nothing staged
  CHECK_FALSE(q.driver.broken());
}

TEST_CASE("add_inbufs: a full ring stages what fits and counts ring_full once (2.7.5.2)",
          "[split][batch]") {
  split_pair<> q(8);
  buffer_arena arena(4096);
  std::vector<buffer> bufs;
  std::vector<token_t> toks;
  for (std::uint32_t i = 0; i < 5; ++i) {
    bufs.push_back(arena.at(i * 64, 64));
    toks.push_back(i);
  }
  auto got = q.driver.add_inbufs(bufs, toks);
  REQUIRE(got);
  CHECK(*got == 5);
  CHECK(q.driver.stats().ring_full == 0);
  got = q.driver.add_inbufs(bufs, toks);
  REQUIRE(got);
  CHECK(*got == 3);  // 8 descriptors: 3 left
  CHECK(q.driver.stats().ring_full == 1);
  CHECK(q.driver.num_free() == 0);
  CHECK(q.driver.stats().added == 8);
  CHECK(q.driver.stats().min_free == 0);
  got = q.driver.add_inbufs(std::span(bufs).first(1), std::span(toks).first(1));
  REQUIRE(got);
  CHECK(*got == 0);
  CHECK(q.driver.stats().ring_full == 2);
  // An empty batch is not a full ring.
  got = q.driver.add_inbufs({}, {});
  REQUIRE(got);
  CHECK(*got == 0);
  CHECK(q.driver.stats().ring_full == 2);
  CHECK(q.driver.kick_prepare());
  std::vector<popped_buffer> out(16);
  const auto popped = q.device.pop_buffers(out);
  REQUIRE(popped);
  REQUIRE(*popped == 8);
  for (std::size_t i = 0; i < 8; ++i) {
    CHECK(out[i].writable);
    CHECK(out[i].len == 64);
    CHECK(out[i].data == arena.data() + (i % 5) * 64);
  }
}

TEST_CASE("add_outbufs: device-readable buffers reach the device as such (2.7.4.2)",
          "[split][batch]") {
  split_pair<> q(8);
  buffer_arena arena(4096);
  std::memset(arena.data(), 0x3C, 128);
  const buffer bufs[] = {arena.at(0, 100), arena.at(100, 28)};
  const token_t toks[] = {7, 8};
  REQUIRE(*q.driver.add_outbufs(bufs, toks) == 2);
  q.driver.kick_prepare();
  popped_buffer out[4];
  REQUIRE(*q.device.pop_buffers(out) == 2);
  CHECK_FALSE(out[0].writable);
  CHECK(out[0].len == 100);
  CHECK(std::to_integer<int>(out[0].data[99]) == 0x3C);
  // 2.7.8.2: nothing may be reported written into a device-readable buffer.
  const used_entry too_long[] = {{out[0].id, 1}};
  CHECK(q.device.complete(too_long).error() == errc::invalid_argument);
  const used_entry done[] = {{out[0].id, 0}, {out[1].id, 0}};
  CHECK(*q.device.complete(done) == 2);
  q.device.interrupt_prepare();
  used_buffer u[4];
  REQUIRE(*q.driver.get_used(u) == 2);
  CHECK(u[0].token == 7);
  CHECK(u[1].token == 8);
  CHECK(q.driver.num_free() == 8);
}

TEST_CASE("add_inbufs: a broken driver refuses with errc::broken", "[split][batch]") {
  split_pair<> q(8);
  buffer_arena arena(4096);
  const buffer bufs[] = {arena.at(0, 64)};
  const token_t toks[] = {1};
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 1);
  q.driver.kick_prepare();
  // A hostile device: used idx two ahead with one chain outstanding.
  store_release<LE>(q.ring.view().used.idx(), 2);
  used_buffer u[4];
  CHECK(q.driver.get_used(u).error() == errc::used_idx_jump);
  CHECK(q.driver.add_inbufs(bufs, toks).error() == errc::broken);
  CHECK(q.driver.add_outbufs(bufs, toks).error() == errc::broken);
  CHECK(q.driver.stats().added == 1);
}

TEST_CASE("add_inbufs with IN_ORDER: descriptors in ring order, batch used elements (2.7.9)",
          "[split][batch][in_order]") {
  split_pair<> q(8, f_base().with(feature::in_order));
  buffer_arena arena(4096);
  for (int round = 0; round < 5; ++round) {
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::uint32_t i = 0; i < 6; ++i) {
      bufs.push_back(arena.at(i * 64, 64));
      toks.push_back(static_cast<token_t>(round * 10) + i);
    }
    REQUIRE(*q.driver.add_inbufs(bufs, toks) == 6);
    q.driver.kick_prepare();
    popped_buffer out[8];
    REQUIRE(*q.device.pop_buffers(out) == 6);
    for (std::size_t i = 1; i < 6; ++i) {
      CHECK(out[i].id == ((out[i - 1].id + 1U) & 7U));  // 2.7.9: ring order
    }
    // Out of order is refused; the oldest first is fine.
    const used_entry wrong[] = {{out[1].id, 1}};
    CHECK(q.device.complete(wrong).error() == errc::invalid_argument);
    const used_entry first[] = {{out[0].id, 1}, {out[1].id, 2}};
    CHECK(*q.device.complete(first) == 2);
    // The rest as one used element naming the last (2.7.9).
    REQUIRE(q.device.complete_in_order(4, 6) == errc::ok);
    q.device.interrupt_prepare();
    used_buffer u[8];
    REQUIRE(*q.driver.get_used(u) == 6);
    CHECK(u[0].len == 1);
    CHECK(u[1].len == 2);
    CHECK(u[5].len == 6);
    for (std::size_t i = 0; i < 6; ++i) CHECK(u[i].token == toks[i]);
  }
}

// --- device: pop_buffers ----------------------------------------------------------------------

TEST_CASE("pop_buffers stops before a NEXT chain and an INDIRECT chain; pop(chain&) takes them",
          "[split][batch]") {
  driver_options o;
  o.indirect_max = 4;
  split_pair<> q(16, f_base(), o);
  buffer_arena arena(8192);
  const buffer one[] = {arena.at(0, 64), arena.at(64, 64)};
  const token_t toks[] = {1, 2};
  REQUIRE(*q.driver.add_inbufs(one, toks) == 2);
  const buffer out2[] = {arena.at(1024, 16)};
  const buffer in2[] = {arena.at(2048, 32)};
  REQUIRE(q.driver.add(out2, in2, 3) == errc::ok);  // 2 buffers: indirect
  REQUIRE(*q.driver.add_inbufs(std::span(one).first(1), std::span(toks).first(1)) == 1);
  REQUIRE(q.driver.kick_prepare());

  popped_buffer out[8];
  auto got = q.device.pop_buffers(out);
  REQUIRE(got);
  CHECK(*got == 2);
  got = q.device.pop_buffers(out);
  REQUIRE(got);
  CHECK(*got == 0);  // the next one needs pop(chain&)
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  CHECK(c.descriptors() == 2);
  CHECK(c.readable_bytes() == 16);
  CHECK(c.writable_bytes() == 32);
  got = q.device.pop_buffers(out);
  REQUIRE(got);
  CHECK(*got == 1);
  CHECK(q.device.stats().popped == 4);

  // The same with a linked (NEXT) chain: no indirect tables on this queue.
  split_pair<> d(16);
  REQUIRE(*d.driver.add_inbufs(one, toks) == 2);
  REQUIRE(d.driver.add(out2, in2, 3) == errc::ok);
  REQUIRE(*d.driver.add_inbufs(one, toks) == 2);
  d.driver.kick_prepare();
  REQUIRE(*d.device.pop_buffers(out) == 2);
  CHECK(*d.device.pop_buffers(out) == 0);
  REQUIRE(d.device.pop(c) == errc::ok);
  CHECK(c.ring_slots() == 2);
  REQUIRE(*d.device.pop_buffers(out) == 2);
  CHECK(*d.device.pop_buffers(out) == 0);
  CHECK(d.device.pop(c) == errc::empty);  // 0 here means empty
  CHECK_FALSE(d.device.broken());
}

TEST_CASE("pop_buffers keeps avail_event at the next entry to read (2.7.10)",
          "[split][batch][event_idx]") {
  split_pair<> q(16);
  buffer_arena arena(8192);
  std::vector<buffer> bufs;
  std::vector<token_t> toks;
  for (std::uint32_t i = 0; i < 10; ++i) {
    bufs.push_back(arena.at(i * 64, 64));
    toks.push_back(i);
  }
  REQUIRE(*q.driver.add_inbufs(bufs, toks) == 10);
  q.driver.kick_prepare();
  popped_buffer out[4];
  REQUIRE(*q.device.pop_buffers(out) == 4);
  CHECK(load_relaxed<LE>(q.ring.view().used.avail_event()) == 4);
  // Notifications off: avail_event stays.
  q.device.disable_notifications();
  REQUIRE(*q.device.pop_buffers(out) == 4);
  CHECK(load_relaxed<LE>(q.ring.view().used.avail_event()) == 4);
  CHECK(q.device.enable_notifications());  // two more are waiting
  CHECK(load_relaxed<LE>(q.ring.view().used.avail_event()) == 8);
  REQUIRE(*q.device.pop_buffers(out) == 2);
  CHECK(load_relaxed<LE>(q.ring.view().used.avail_event()) == 10);
  // The driver's next batch notifies: the device has read everything (2.7.10).
  REQUIRE(*q.driver.add_inbufs(std::span(bufs).first(1), std::span(toks).first(1)) == 1);
  CHECK(q.driver.kick_prepare());
}

namespace {

using split_test::guest_base;
using split_test::guest_size;

/// A device over a ring the test writes by hand (tests/test_split_common.hpp).
struct hostile_driver : split_test::hand {
  using hand::hand;

  /// `got` with `popped` good buffers before failure `e`: then broken, and the next call says so.
  /// `total` counts the buffers popped by earlier calls too.
  void expect(result<std::size_t> got, std::size_t popped, errc e, std::size_t total = 0) {
    if (popped == 0) {
      CHECK(got.error() == e);
    } else {
      REQUIRE(got);
      CHECK(*got == popped);
    }
    CHECK(device.broken());
    CHECK(device.error() == e);
    CHECK(device.stats().rejects[static_cast<std::size_t>(e)] == 1);
    CHECK(device.stats().popped == std::max(popped, total));
    popped_buffer out[4];
    CHECK(device.pop_buffers(out).error() == errc::broken);
    const used_entry done[] = {{0, 0}};
    CHECK(device.complete(done).error() == errc::broken);
    chain c;
    CHECK(device.pop(c) == errc::broken);
  }
};

}  // namespace

TEST_CASE("pop_buffers, hostile driver: head index >= queue size (2.7.6)",
          "[split][batch][hostile]") {
  hostile_driver h;
  h.set(0, guest_base, 64, split::desc_f_write);
  h.offer(8);
  h.publish();
  popped_buffer out[4];
  h.expect(h.device.pop_buffers(out), 0, errc::desc_index_out_of_range);
}

TEST_CASE("pop_buffers, hostile driver: bad head mid-batch returns what came before (2.7.6)",
          "[split][batch][hostile]") {
  hostile_driver h;
  h.set(0, guest_base, 64, split::desc_f_write);
  h.set(1, guest_base + 64, 32, 0);
  h.offer(0);
  h.offer(1);
  h.offer(65535);
  h.publish();
  popped_buffer out[4];
  const auto got = h.device.pop_buffers(out);
  h.expect(got, 2, errc::desc_index_out_of_range);
  CHECK(out[0].id == 0);
  CHECK(out[0].data == h.guest.data());
  CHECK(out[0].writable);
  CHECK(out[1].id == 1);
  CHECK(out[1].len == 32);
  CHECK_FALSE(out[1].writable);
}

TEST_CASE("pop_buffers, hostile driver: a held head offered again (2.7.13.1)",
          "[split][batch][hostile]") {
  SECTION("in a later batch") {
    hostile_driver h;
    h.set(0, guest_base, 64, split::desc_f_write);
    h.offer(0);
    h.publish();
    popped_buffer out[4];
    REQUIRE(*h.device.pop_buffers(out) == 1);
    h.offer(0);
    h.publish();
    h.expect(h.device.pop_buffers(out), 0, errc::state_violation, 1);
  }
  SECTION("twice in one batch") {
    hostile_driver h;
    h.set(3, guest_base, 64, split::desc_f_write);
    h.offer(3);
    h.offer(3);
    h.publish();
    popped_buffer out[4];
    h.expect(h.device.pop_buffers(out), 1, errc::state_violation);
  }
  SECTION("after completing it, it may come back") {
    hostile_driver h;
    h.set(3, guest_base, 64, split::desc_f_write);
    h.offer(3);
    h.publish();
    popped_buffer out[4];
    REQUIRE(*h.device.pop_buffers(out) == 1);
    const used_entry done[] = {{3, 64}};
    REQUIRE(*h.device.complete(done) == 1);
    h.offer(3);
    h.publish();
    REQUIRE(*h.device.pop_buffers(out) == 1);
    CHECK_FALSE(h.device.broken());
  }
}

TEST_CASE("pop_buffers, hostile driver: avail idx moved by more than the queue size (2.7.6)",
          "[split][batch][hostile]") {
  hostile_driver h;
  store_release<LE>(h.ring.view().avail.idx(), 9);
  popped_buffer out[4];
  h.expect(h.device.pop_buffers(out), 0, errc::avail_idx_jump);
}

TEST_CASE("pop_buffers, hostile driver: untranslatable buffers (2.7.5)",
          "[split][batch][hostile]") {
  SECTION("outside guest memory, mid-batch") {
    hostile_driver h;
    h.set(0, guest_base, 64, split::desc_f_write);
    h.set(1, guest_base + guest_size, 64, split::desc_f_write);
    h.offer(0);
    h.offer(1);
    h.publish();
    popped_buffer out[4];
    h.expect(h.device.pop_buffers(out), 1, errc::address_out_of_range);
  }
  SECTION("running past the end of its region") {
    hostile_driver h;
    h.set(0, guest_base + guest_size - 16, 32, split::desc_f_write);
    h.offer(0);
    h.publish();
    popped_buffer out[4];
    h.expect(h.device.pop_buffers(out), 0, errc::crosses_region_end);
  }
  SECTION("address + length overflowing 2^64") {
    hostile_driver h;
    h.set(0, ~std::uint64_t{0} - 8, 64, 0);
    h.offer(0);
    h.publish();
    popped_buffer out[4];
    h.expect(h.device.pop_buffers(out), 0, errc::address_overflow);
  }
  SECTION("a zero-length buffer is not translated") {
    hostile_driver h;
    h.set(0, 0xdead0000ULL, 0, split::desc_f_write);
    h.offer(0);
    h.publish();
    popped_buffer out[4];
    REQUIRE(*h.device.pop_buffers(out) == 1);
    CHECK(out[0].data == nullptr);
    CHECK(out[0].len == 0);
    CHECK_FALSE(h.device.broken());
    const used_entry too_long[] = {{0, 1}};
    CHECK(h.device.complete(too_long).error() == errc::invalid_argument);
    const used_entry done[] = {{0, 0}};
    CHECK(*h.device.complete(done) == 1);
  }
}

TEST_CASE("pop_buffers, checked mode: a held descriptor linked into a new chain (2.7.13.1)",
          "[split][batch][checked]") {
  ring_memory<split_layout> ring(8);
  buffer_arena arena(4096);
  identity_memory mem;
  split_device<checked_policy, identity_memory> device(ring.view(), f_base(), mem);
  const auto& v = ring.view();
  const auto set = [&](std::uint32_t i, std::uint32_t len, std::uint16_t flags, std::uint16_t nx) {
    put<LE>(v.table[i].addr, arena.at(i * 64, len).addr);
    put<LE>(v.table[i].len, len);
    put<LE>(v.table[i].flags, flags);
    put<LE>(v.table[i].next, nx);
  };
  set(2, 64, split::desc_f_write, 0);
  put<LE>(v.avail.ring(0), 2);
  store_release<LE>(v.avail.idx(), 1);
  popped_buffer out[4];
  REQUIRE(*device.pop_buffers(out) == 1);
  // A new chain 5 -> 2 while 2 is held.
  set(5, 64, split::desc_f_write | split::desc_f_next, 2);
  put<LE>(v.avail.ring(1), 5);
  store_release<LE>(v.avail.idx(), 2);
  chain c;
  CHECK(device.pop(c) == errc::state_violation);
  CHECK(device.broken());
}

// --- device: complete(span) -------------------------------------------------------------------

namespace {

struct served {
  explicit served(features f = f_base()) : q(8, f), arena(4096) {
    std::vector<buffer> bufs;
    std::vector<token_t> toks;
    for (std::uint32_t i = 0; i < 4; ++i) {
      bufs.push_back(arena.at(i * 64, 64));
      toks.push_back(100 + i);
    }
    REQUIRE(*q.driver.add_inbufs(bufs, toks) == 4);
    q.driver.kick_prepare();
    REQUIRE(*q.device.pop_buffers(out) == 4);
  }
  /// The caller's error: the device is not broken and completes the rest afterwards.
  void still_usable(std::size_t done_before) {
    CHECK_FALSE(q.device.broken());
    CHECK(q.device.stats().completed == done_before);
    std::vector<used_entry> rest;
    for (std::size_t i = done_before; i < 4; ++i) rest.push_back({out[i].id, 10});
    const auto got = q.device.complete(rest);
    REQUIRE(got);
    CHECK(*got == rest.size());
    q.device.interrupt_prepare();
    used_buffer u[8];
    REQUIRE(*q.driver.get_used(u) == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(u[i].token == 100 + i);
    CHECK(q.driver.num_free() == 8);
  }
  split_pair<> q;
  buffer_arena arena;
  popped_buffer out[4];
};

}  // namespace

TEST_CASE("complete(span): an id out of range is the caller's error", "[split][batch]") {
  served s;
  const used_entry bad[] = {{8, 0}, {s.out[0].id, 1}};
  CHECK(s.q.device.complete(bad).error() == errc::invalid_argument);
  s.still_usable(0);
}

TEST_CASE("complete(span): len beyond the writable bytes (2.7.8.2) stops the batch there",
          "[split][batch]") {
  served s;
  const used_entry e[] = {{s.out[0].id, 64}, {s.out[1].id, 65}, {s.out[2].id, 1}};
  const auto got = s.q.device.complete(e);
  REQUIRE(got);
  CHECK(*got == 1);
  s.still_usable(1);
}

TEST_CASE("complete(span): a chain not held, or completed twice in one batch", "[split][batch]") {
  SECTION("never popped") {
    served s;
    std::uint16_t free_id = 0;
    while (std::any_of(std::begin(s.out), std::end(s.out),
                       [&](const popped_buffer& p) { return p.id == free_id; })) {
      ++free_id;
    }
    const used_entry e[] = {{free_id, 0}};
    CHECK(s.q.device.complete(e).error() == errc::invalid_argument);
    s.still_usable(0);
  }
  SECTION("twice") {
    served s;
    const used_entry e[] = {{s.out[0].id, 3}, {s.out[1].id, 3}, {s.out[0].id, 3}};
    const auto got = s.q.device.complete(e);
    REQUIRE(got);
    CHECK(*got == 2);
    s.still_usable(2);
  }
}

TEST_CASE("complete(span) with IN_ORDER: out of order stops the batch (2.7.9)",
          "[split][batch][in_order]") {
  served s(f_base().with(feature::in_order));
  const used_entry e[] = {{s.out[0].id, 5}, {s.out[2].id, 5}};
  const auto got = s.q.device.complete(e);
  REQUIRE(got);
  CHECK(*got == 1);
  const used_entry first_wrong[] = {{s.out[3].id, 5}};
  CHECK(s.q.device.complete(first_wrong).error() == errc::invalid_argument);
  s.still_usable(1);
}

// --- driver: a hostile device after batch adds ------------------------------------------------

namespace {

struct batch_added {
  batch_added() : q(8), arena(4096) {
    const buffer in[] = {arena.at(0, 64), arena.at(64, 32)};
    const token_t t[] = {1, 2};
    REQUIRE(*q.driver.add_inbufs(in, t) == 2);
    q.driver.kick_prepare();
    const buffer out[] = {arena.at(128, 16)};
    const token_t t3[] = {3};
    REQUIRE(*q.driver.add_outbufs(out, t3) == 1);
    q.driver.kick_prepare();
    const buffer staged[] = {arena.at(256, 64)};
    const token_t t4[] = {4};
    REQUIRE(*q.driver.add_inbufs(staged, t4) == 1);  // staged, never published
    for (std::uint16_t i = 0; i < 4; ++i) heads[i] = get<LE>(q.ring.view().avail.ring(i));
  }
  void used(std::uint16_t n, std::uint32_t id, std::uint32_t len) {
    const auto& v = q.ring.view();
    put<LE>(v.used.ring(n).id, id);
    put<LE>(v.used.ring(n).len, len);
  }
  void publish(std::uint16_t idx) { store_release<LE>(q.ring.view().used.idx(), idx); }
  void expect(result<std::size_t> got, std::size_t reaped, errc e) {
    if (reaped == 0) {
      CHECK(got.error() == e);
    } else {
      REQUIRE(got);
      CHECK(*got == reaped);
    }
    CHECK(q.driver.broken());
    CHECK(q.driver.error() == e);
    CHECK(q.driver.stats().rejects[static_cast<std::size_t>(e)] == 1);
    used_buffer u[4];
    CHECK(q.driver.get_used(u).error() == errc::broken);
  }
  split_pair<> q;
  buffer_arena arena;
  std::uint16_t heads[4] = {};
};

}  // namespace

TEST_CASE("untrusted device after batch adds: a staged, unpublished id (2.7.8)",
          "[split][batch][hostile]") {
  batch_added d;
  d.used(0, d.heads[0], 64);
  d.used(1, d.heads[3], 0);
  d.publish(2);
  used_buffer u[4];
  const auto got = d.q.driver.get_used(u);
  d.expect(got, 1, errc::used_id_not_outstanding);
  CHECK(u[0].token == 1);
  CHECK(u[0].len == 64);
}

TEST_CASE("untrusted device after batch adds: len beyond the writable bytes (2.7.8.2)",
          "[split][batch][hostile]") {
  SECTION("device-writable buffer") {
    batch_added d;
    d.used(0, d.heads[1], 33);
    d.publish(1);
    used_buffer u[4];
    d.expect(d.q.driver.get_used(u), 0, errc::used_len_too_large);
  }
  SECTION("device-readable buffer") {
    batch_added d;
    d.used(0, d.heads[2], 1);
    d.publish(1);
    const auto u = d.q.driver.get_used();
    CHECK(u.error() == errc::used_len_too_large);
    CHECK(d.q.driver.broken());
  }
  SECTION("exactly the writable bytes is fine") {
    batch_added d;
    d.used(0, d.heads[1], 32);
    d.used(1, d.heads[2], 0);
    d.publish(2);
    used_buffer u[4];
    REQUIRE(*d.q.driver.get_used(u) == 2);
    CHECK(u[0].token == 2);
    CHECK(u[0].len == 32);
    CHECK(u[1].token == 3);
    CHECK_FALSE(d.q.driver.broken());
  }
}

TEST_CASE("untrusted device after batch adds: id out of range, reaped twice (2.7.8)",
          "[split][batch][hostile]") {
  SECTION("out of range") {
    batch_added d;
    d.used(0, 8, 0);
    d.publish(1);
    used_buffer u[4];
    d.expect(d.q.driver.get_used(u), 0, errc::used_id_out_of_range);
  }
  SECTION("twice in one batch") {
    batch_added d;
    d.used(0, d.heads[0], 0);
    d.used(1, d.heads[0], 0);
    d.publish(2);
    used_buffer u[4];
    d.expect(d.q.driver.get_used(u), 1, errc::used_id_not_outstanding);
  }
}
