// SPDX-License-Identifier: MIT
// tests/test_packed_common.hpp -- helpers shared by the packed-ring tests: a driver+device pair
// (layouts.hpp's queue_pair), hand-written descriptors through the spec.hpp accessors, a
// reference model of where a ring position is after `n` slots (computed with division, which
// the implementation never uses: an independent oracle), and the twin pairs that the batch
// property tests hold batch calls against single calls with.
#pragma once

#include <rapidcheck.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "layouts.hpp"
#include "property.hpp"
#include "virtq/packed.hpp"

namespace packed_test {

/// Descriptor flag bits, as the hand-written rings of the packed tests spell them (A: AVAIL,
/// which with U clear means "available" under wrap counter 1).
inline constexpr std::uint16_t A = virtq::packed::desc_f_avail;
inline constexpr std::uint16_t U = virtq::packed::desc_f_used;
inline constexpr std::uint16_t NEXT = virtq::packed::desc_f_next;
inline constexpr std::uint16_t WRITE = virtq::packed::desc_f_write;
inline constexpr std::uint16_t INDIRECT = virtq::packed::desc_f_indirect;

using virtq::packed_layout;
using le = virtq::little_endian;

/// Features of a packed pair for policy P (EVENT_IDX only with suppress_event_idx... and with
/// suppress_none, where it is harmless).
template <class P = virtq::default_policy>
virtq::features packed_features() {
  return virtq_test::features_for<packed_layout, P>();
}

template <class P = virtq::default_policy>
using pair = virtq_test::queue_pair<packed_layout, P>;

/// Linear ring position -> (offset, wrap counter) as the spec defines them (2.8.1): the counter
/// starts at 1 and flips every lap.
struct position {
  std::uint16_t off;
  bool wrap;
};
inline position at_linear(std::uint64_t lin, std::uint32_t size) {
  return {static_cast<std::uint16_t>(lin % size), (lin / size) % 2 == 0};
}

/// Writes one descriptor by hand, flags last with a release store (what an honest driver does).
inline void put_desc(const virtq::packed::ring_view& v, std::uint32_t slot, std::uint64_t addr,
                     std::uint32_t len, std::uint16_t id, std::uint16_t flags) {
  virtq::packed::desc& d = v.ring[slot];
  virtq::put<le>(d.addr, addr);
  virtq::put<le>(d.len, len);
  virtq::put<le>(d.id, id);
  virtq::store_release<le>(d.flags, flags);
}

/// Writes a used descriptor by hand (what a device does), flags last.
/// A used descriptor as a device writes it: WRITE set when it wrote something (2.8.3), unless
/// `write_flag` says otherwise (a device that leaves len reserved, 2.8.4).
inline void put_used(const virtq::packed::ring_view& v, std::uint32_t slot, std::uint16_t id,
                     std::uint32_t len, bool wrap, std::optional<bool> write_flag = {}) {
  virtq::packed::desc& d = v.ring[slot];
  virtq::put<le>(d.id, id);
  virtq::put<le>(d.len, len);
  const bool w = write_flag.value_or(len != 0);
  virtq::store_release<le>(d.flags,
                           static_cast<std::uint16_t>(virtq::packed::used_bits(wrap) |
                                                      (w ? virtq::packed::desc_f_write : 0U)));
}

inline std::uint16_t flags_at(const virtq::packed::ring_view& v, std::uint32_t slot) {
  return virtq::load_relaxed<le>(v.ring[slot].flags);
}

/// Two identical pairs over one arena of buffers, driven by the same random commands: `a` with
/// batch calls where a step has them, `b` with single calls through the general paths only, so
/// that the general paths are the reference for the batch fast paths. `Model` derives from it
/// (CRTP), keeps its own model of what is in flight and has the steps whose checks need that
/// model: add, pop, complete and reap, each told whether `a` takes the batch call, plus
/// `more_steps` of its own (more_step(i)). The steps whose checks need no model are here.
template <class P, class Model>
struct twin_pairs {
  twin_pairs(std::uint32_t size, virtq::features f)
      : arena(std::size_t{4096}), a(size, f), b(size, f) {}

  virtq_test::buffer_arena arena;
  pair<P> a;  ///< batch calls where there are any
  pair<P> b;  ///< single calls only
  virtq::token_t next_token = 1;
  static constexpr int more_steps = 0;  ///< a Model with steps of its own says how many

  std::uint32_t size() const { return a.driver.size(); }

  /// Enough random steps for many laps of the small rings, so that both wrap counters flip
  /// many times, mid-batch too.
  void run() {
    const auto steps = virtq_test::uniform(50, 400);
    for (int i = 0; i < steps; ++i) step();
  }

  /// One step, then the model's check_same() (which includes this one's). Two in three that
  /// have a batch call take it. The kind is drawn at full size (tests/property.hpp), so every
  /// case mixes every kind of step.
  void step() {
    Model& m = static_cast<Model&>(*this);
    const bool batch = virtq_test::uniform(0, 3) != 0;
    const int pick = virtq_test::uniform(0, 6 + Model::more_steps);
    const int own = pick - 4;  // the model's own steps are numbered after complete
    if (own >= 0 && own < Model::more_steps) {
      if constexpr (Model::more_steps != 0) m.more_step(own);
    } else {
      switch (own < 0 ? pick : pick - Model::more_steps) {
        case 0:
          m.add(batch);
          break;
        case 1:
          kick();
          break;
        case 2:
          m.pop(batch);
          break;
        case 3:
          m.complete(batch);
          break;
        case 4:
          interrupt();
          break;
        default:
          m.reap(batch);
          break;
      }
    }
    m.check_same();
  }

  /// 0..64 bytes anywhere in the arena: buffers may overlap, neither queue touches their bytes.
  virtq::buffer make_buffer() {
    const auto len = virtq_test::uniform<std::uint32_t>(0, 65);
    const auto off = virtq_test::uniform<std::size_t>(0, 4096 - 64);
    return arena.at(off, len);
  }

  /// Both sides must look the same from outside, and the rings must hold the same bytes.
  void check_same() const {
    RC_ASSERT(a.driver.num_free() == b.driver.num_free());
    RC_ASSERT(a.device.in_flight() == b.device.in_flight());
    RC_ASSERT(!a.driver.broken());
    RC_ASSERT(!a.device.broken());
    RC_ASSERT(!b.driver.broken());
    RC_ASSERT(!b.device.broken());
    const virtq::queue_stats& x = a.driver.stats();
    const virtq::queue_stats& y = b.driver.stats();
    RC_ASSERT(x.added == y.added);
    RC_ASSERT(x.reaped == y.reaped);
    RC_ASSERT(x.kicks == y.kicks);
    const virtq::queue_stats& v = a.device.stats();
    const virtq::queue_stats& w = b.device.stats();
    RC_ASSERT(v.popped == w.popped);
    RC_ASSERT(v.completed == w.completed);
    RC_ASSERT(v.interrupts == w.interrupts);
    const auto ra = a.ring.bytes();
    const auto rb = b.ring.bytes();
    RC_ASSERT(ra.size() == rb.size());
    RC_ASSERT(std::memcmp(ra.data(), rb.data(), ra.size()) == 0);
  }

  /// One-descriptor chains, all device-writable or all device-readable: a batch of 0..size+2
  /// through add_inbufs / add_outbufs on `a` (one through add_inbuf / add when !batch), each
  /// through add() on `b` until the ring is full. Returns the tokens that went in, in order.
  std::vector<virtq::token_t> add_ones(bool batch) {
    const bool writable = *rc::gen::arbitrary<bool>();
    const auto k = batch ? virtq_test::uniform<std::uint32_t>(0, size() + 3) : 1U;
    std::vector<virtq::buffer> bufs;
    std::vector<virtq::token_t> tokens;
    for (std::uint32_t i = 0; i < k; ++i) {
      bufs.push_back(make_buffer());
      tokens.push_back(next_token + i);
    }
    std::size_t got = 0;
    if (batch) {
      const virtq::result<std::size_t> r =
          writable ? a.driver.add_inbufs(bufs, tokens) : a.driver.add_outbufs(bufs, tokens);
      RC_ASSERT(r.has_value());
      got = *r;
    } else {
      const virtq::errc e = writable ? a.driver.add_inbuf(bufs[0], tokens[0])
                                     : a.driver.add({&bufs[0], 1}, {}, tokens[0]);
      RC_ASSERT(e == virtq::errc::ok || e == virtq::errc::no_space);
      got = e == virtq::errc::ok ? 1 : 0;
    }
    std::size_t ref = 0;
    for (std::uint32_t i = 0; i < k; ++i) {
      const std::span<const virtq::buffer> one{&bufs[i], 1};
      const virtq::errc e =
          writable ? b.driver.add({}, one, tokens[i]) : b.driver.add(one, {}, tokens[i]);
      if (e == virtq::errc::no_space) break;
      RC_ASSERT(e == virtq::errc::ok);
      ++ref;
    }
    RC_ASSERT(got == ref);
    next_token += k;
    tokens.resize(got);
    return tokens;
  }

  void kick() { RC_ASSERT(a.driver.kick_prepare() == b.driver.kick_prepare()); }

  /// `done` through complete(span) on `a` (its first entry through complete(id, len) when
  /// !batch), then entry by entry through complete(id, len) on `b`: both must stop at the same
  /// refused entry. Returns how many were completed.
  std::size_t complete_both(bool batch, std::span<const virtq::used_entry> done) {
    std::size_t n = 0;
    if (batch) {
      const virtq::result<std::size_t> r = a.device.complete(done);
      if (r) {
        n = *r;
        RC_ASSERT(n != 0 || done.empty());
      } else {
        RC_ASSERT(r.error() == virtq::errc::invalid_argument);
      }
    } else if (!done.empty()) {
      const virtq::errc e = a.device.complete(done[0].id, done[0].len);
      RC_ASSERT(e == virtq::errc::ok || e == virtq::errc::invalid_argument);
      n = e == virtq::errc::ok ? 1 : 0;
    }
    const auto tried = batch ? done : done.first(std::min<std::size_t>(1, done.size()));
    std::size_t ref = 0;
    for (const virtq::used_entry& u : tried) {
      const virtq::errc e = b.device.complete(u.id, u.len);
      if (e != virtq::errc::ok) {
        RC_ASSERT(e == virtq::errc::invalid_argument);
        break;
      }
      ++ref;
    }
    RC_ASSERT(n == ref);
    return n;
  }

  void interrupt() { RC_ASSERT(a.device.interrupt_prepare() == b.device.interrupt_prepare()); }

  /// get_used(span) of 1..size+2 on `a` (one get_used() when !batch) against get_used() on `b`;
  /// `check` holds each reaped buffer against the test's own model.
  template <class F>
  void reap_both(bool batch, F&& check) {
    const auto k = batch ? virtq_test::uniform<std::uint32_t>(1, size() + 3) : 1U;
    std::vector<virtq::used_buffer> got(k);
    std::size_t n = 0;
    if (batch) {
      const virtq::result<std::size_t> r = a.driver.get_used(std::span<virtq::used_buffer>(got));
      RC_ASSERT(r.has_value());
      n = *r;
    } else {
      const virtq::result<virtq::used_buffer> r = a.driver.get_used();
      if (r) {
        got[0] = *r;
        n = 1;
      } else {
        RC_ASSERT(r.error() == virtq::errc::empty);
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const virtq::result<virtq::used_buffer> r = b.driver.get_used();
      RC_ASSERT(r.has_value());
      RC_ASSERT(r->token == got[i].token);
      RC_ASSERT(r->len == got[i].len);
      check(got[i]);
    }
    if (n < k) RC_ASSERT(b.driver.get_used().error() == virtq::errc::empty);
  }
};

}  // namespace packed_test
