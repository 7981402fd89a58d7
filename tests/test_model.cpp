// Stateful property test (rapidcheck rc::state) of a driver + device pair in one thread against
// a reference model, for every layout x policy (tests/layouts.hpp), with and without IN_ORDER.
//
// The model is written from the spec, not from the code: it keeps the chains in each place of
// their life (staged, available, held by the device, completed, used, reaped), the free
// descriptor count, the indices, and the suppression state each side asked for. Kick and
// interrupt decisions, and the "pending" answers of the enable calls, are computed from that
// state with the 2.7.10 event test written out here again, never by asking the code under test.
// Content is checked end to end: the driver fills readable buffers with a pattern of the token,
// the device checks it and writes another pattern of the token into the writable buffers, the
// driver checks that on reap.
//
// Queue sizes 1..16 and (split) starting indices near 65535 make every run cross the 16-bit wrap.
// Kick and interrupt decisions are predicted exactly for both layouts. Split: 2.7.10 on the
// 16-bit indices. Packed: the model counts ring slots linearly from the last reset (driver
// published, device popped, device used, driver reaped), keeps the flags and the event position
// each side last wrote into its event suppression area (2.8.14), and applies 2.8.10 to them: an
// off_wrap names a slot and a lap parity (2.8.1), i.e. a linear position modulo 2 * size, and a
// notification is due iff one of the positions just published has it. The areas in ring memory
// are compared with the model after every step. Packed sizes include non-powers of 2.
//
// The batch calls run in the same sequences as the single ones: add_inbufs (as many as fit),
// pop_buffers (stops at the first chain that is not one direct descriptor) and complete(span);
// the kick and interrupt predictions hold whichever way the chains went in and out.
//
// Hostile peers (both layouts): corrupt_used writes a used element/descriptor by hand that the
// driver must reject, corrupt_avail an avail idx/descriptor the device must reject; each checks
// the specific errc and broken(), then a reset of both sides returns every outstanding token
// exactly once.
#include <algorithm>
#include <cstdint>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <ostream>
#include <type_traits>
#include <vector>

#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <rapidcheck/state.h>
#include <catch2/catch.hpp>

#include "layouts.hpp"
#include "property.hpp"

namespace {

using namespace virtq;

enum class smode { none, flags, event };

struct mchain {
  token_t token = 0;
  std::vector<std::uint32_t> rd, wr;
  std::uint32_t ndesc = 0;  ///< ring descriptors it takes (1 if indirect)
  std::uint64_t rbytes = 0, wbytes = 0;
};
struct mused {
  token_t token;
  std::uint32_t len;
  std::uint32_t ndesc;  ///< descriptors it gives back when reaped
};
using mentry = std::vector<mused>;  // one used element: one chain, or an IN_ORDER batch

/// 2.7.10, written out independently of spec.hpp's need_event.
bool passes(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old_idx) {
  const std::uint32_t moved = static_cast<std::uint16_t>(new_idx - old_idx);
  const std::uint32_t dist = static_cast<std::uint16_t>(event - old_idx);  // event - old, mod 2^16
  return dist < moved;
}

/// 2.8.14 flags of an event suppression area, as the model knows them.
enum class area : std::uint16_t { enable = 0, disable = 1, desc = 2 };

/// What one side last wrote into its event suppression area: flags, and (desc mode) the linear
/// ring position its off_wrap names.
struct event_area {
  area flags = area::enable;
  std::uint64_t at = 0;
};

/// 2.8.1 from a linear slot count: the slot, and the wrap counter (1 on even laps).
std::uint16_t off_at(std::uint64_t lin, std::uint32_t size) {
  return static_cast<std::uint16_t>(lin % size);
}
bool wrap_at(std::uint64_t lin, std::uint32_t size) {
  return (lin / size) % 2 == 0;
}

/// 2.8.10, written out independently of spec.hpp's packed_need_event: off_wrap pins a position
/// modulo 2 * size (slot and lap parity); the publisher of the positions [from, to) notifies iff
/// one of them is that position.
bool packed_passes(std::uint64_t event, std::uint64_t from, std::uint64_t to, std::uint32_t size) {
  const std::uint64_t period = 2ULL * size;
  for (std::uint64_t k = from; k < to; ++k) {
    if (k % period == event % period) return true;
  }
  return false;
}

// 2.8.10 over exactly one lap: a batch of queue-size slots covers each offset under one wrap
// parity only, so an event naming the other parity (a delayed driver event the driver has reaped
// past) was not passed. The model needs no special case for it (see the named test at the end).

bool packed_decision(const event_area& a, std::uint64_t from, std::uint64_t to, smode mode,
                     std::uint32_t size) {
  if (mode == smode::none) return true;
  if (a.flags == area::desc) {
    return packed_passes(a.at, from, to, size);
  }
  return a.flags != area::disable;
}

std::uint16_t add16(std::uint16_t a, std::size_t b) {
  return static_cast<std::uint16_t>(a + static_cast<std::uint16_t>(b));
}

struct model {
  // configuration
  std::uint32_t size = 0;
  bool in_order = false;
  bool packed = false;
  smode mode = smode::event;
  bool event_negotiated = true;
  std::uint32_t indirect_max = 0, indirect_min = 3;
  // chains
  token_t next_token = 1;
  std::uint32_t num_free = 0;
  std::deque<mchain> staged, published;
  std::vector<mchain> held;
  std::vector<mentry> completed;  // used elements not yet published
  std::deque<mentry> used;        // published used elements not fully reaped
  std::size_t front_reaped = 0;   // chains of used.front() already reaped (IN_ORDER batch)
  // indices
  std::uint16_t initial = 0;
  std::uint16_t avail_pub = 0, last_avail = 0, used_pub = 0, consumed = 0;
  // what the device asked of the driver
  bool notif_on = true, no_notify = false;
  std::uint16_t avail_event = 0;
  // what the driver asked of the device
  bool irq_on = true, delayed = false, no_interrupt = false;
  std::uint16_t used_event = 0;
  // packed (2.8): linear slot positions since the last reset
  std::uint64_t p_avail = 0;      // published by the driver
  std::uint64_t p_popped = 0;     // the device's next avail position
  std::uint64_t p_used_pub = 0;   // covered by used descriptors the device published
  std::uint64_t p_reaped = 0;     // the driver's next used position
  event_area dev_area, drv_area;  // device event area (device writes), driver event area
  bool p_delayed = false;         // the driver's desc event is a delayed one: no follow

  static std::uint64_t slots_of(const std::deque<mchain>& q) {
    std::uint64_t n = 0;
    for (const auto& c : q) n += c.ndesc;
    return n;
  }
  std::uint64_t completed_slots() const {
    std::uint64_t n = 0;
    for (const auto& e : completed) {
      for (const auto& u : e) n += u.ndesc;
    }
    return n;
  }
  /// The device's next used position: published plus staged used descriptors.
  std::uint64_t p_used() const { return p_used_pub + completed_slots(); }

  void reset_state() {
    staged.clear();
    published.clear();
    held.clear();
    completed.clear();
    used.clear();
    front_reaped = 0;
    num_free = size;
    avail_pub = last_avail = used_pub = consumed = initial;
    notif_on = true;
    no_notify = false;
    avail_event = initial;
    irq_on = true;
    delayed = false;
    no_interrupt = false;
    used_event = initial;
    p_avail = p_popped = p_used_pub = p_reaped = 0;
    // The driver zeroes the ring on reset: both areas say RING_EVENT_FLAGS_ENABLE.
    dev_area = event_area{};
    drv_area = event_area{};
    p_delayed = false;
  }
  std::size_t outstanding() const {
    std::size_t n = staged.size() + published.size() + held.size();
    for (const auto& e : completed) n += e.size();
    for (const auto& e : used) n += e.size();
    return n - front_reaped;
  }
  bool kick_decision() const {
    if (packed) return packed_decision(dev_area, p_avail, p_avail + slots_of(staged), mode, size);
    const std::uint16_t new_idx = add16(avail_pub, staged.size());
    switch (mode) {
      case smode::none:
        return true;
      case smode::flags:
        return !no_notify;
      case smode::event:
        return passes(avail_event, new_idx, avail_pub);
    }
    return true;
  }
  bool irq_decision() const {
    if (packed) {
      return packed_decision(drv_area, p_used_pub, p_used_pub + completed_slots(), mode, size);
    }
    const std::uint16_t new_idx = add16(used_pub, completed.size());
    switch (mode) {
      case smode::none:
        return true;
      case smode::flags:
        return !no_interrupt;
      case smode::event:
        return passes(used_event, new_idx, used_pub);
    }
    return true;
  }
};

// Choices are drawn at full size (tests/property.hpp): uniform from the first run on.
using virtq_test::at_full_size;
using virtq_test::uniform;
using virtq_test::uniform_gen;

constexpr std::size_t slot_bytes = 512;
constexpr std::size_t slots = 64;
constexpr std::size_t writable_at = 128;
constexpr token_t read_salt = 0xABCDEF;

template <class Layout, class Policy>
struct sut {
  sut(std::uint32_t size, features f, driver_options o) : q(size, f, o), arena(slot_bytes * slots) {
    for (std::size_t i = 0; i < slots; ++i) free_slots.push_back(i);
  }
  std::size_t take_slot(token_t t) {
    RC_ASSERT(!free_slots.empty());
    const std::size_t s = free_slots.back();
    free_slots.pop_back();
    slot_of[t] = s;
    return s;
  }
  void give_back(token_t t) {
    const auto it = slot_of.find(t);
    RC_ASSERT(it != slot_of.end());
    free_slots.push_back(it->second);
    slot_of.erase(it);
    held_chains.erase(t);
    id_of.erase(t);
  }
  virtq_test::queue_pair<Layout, Policy> q;
  virtq_test::buffer_arena arena;
  std::vector<std::size_t> free_slots;
  std::map<token_t, std::size_t> slot_of;
  std::map<token_t, chain> held_chains;
  /// Packed: the buffer id each chain carries on the wire (read right after add: 2.8.6, the
  /// last descriptor; a used descriptor may overwrite that slot later).
  std::map<token_t, std::uint16_t> id_of;
};

template <class Layout, class Policy>
struct op : rc::state::Command<model, sut<Layout, Policy>> {
  using S = sut<Layout, Policy>;
  enum kind_t : int {
    add,
    add_inbuf,
    kick,
    pop,
    complete,
    complete_batch,
    irq,
    reap_one,
    reap_many,
    disable_irq,
    enable_irq,
    enable_irq_delayed,
    disable_notif,
    enable_notif,
    reset,
    corrupt_used,
    corrupt_avail,
    add_batch,
    pop_batch,
    complete_span
  };
  int kind = add;
  std::vector<std::uint32_t> rd, wr;
  std::uint32_t pick = 0, len_pct = 0, count = 1;

  explicit op(const model& m) {
    std::vector<std::pair<std::size_t, int>> w = {{6, add},
                                                  {4, add_inbuf},
                                                  {5, kick},
                                                  {6, pop},
                                                  {6, complete},
                                                  {4, irq},
                                                  {4, reap_one},
                                                  {2, reap_many},
                                                  {1, disable_irq},
                                                  {2, enable_irq},
                                                  {1, enable_irq_delayed},
                                                  {1, disable_notif},
                                                  {2, enable_notif},
                                                  {1, reset}};
    if (m.in_order) w.push_back({3, complete_batch});
    w.push_back({3, add_batch});
    w.push_back({3, pop_batch});
    w.push_back({3, complete_span});
    w.push_back({1, corrupt_used});
    w.push_back({1, corrupt_avail});
    std::size_t total = 0;
    for (const auto& [weight, k] : w) total += weight;
    std::size_t r = uniform<std::size_t>(0, total);
    for (const auto& [weight, k] : w) {
      if (r < weight) {
        kind = k;
        break;
      }
      r -= weight;
    }
    rd = *rc::gen::container<std::vector<std::uint32_t>>(uniform<std::size_t>(0, 4),
                                                         uniform_gen<std::uint32_t>(1, 33));
    wr = *rc::gen::container<std::vector<std::uint32_t>>(uniform<std::size_t>(0, 4),
                                                         uniform_gen<std::uint32_t>(1, 33));
    pick = uniform<std::uint32_t>(0, 1000);
    len_pct = uniform<std::uint32_t>(0, 101);
    count = uniform<std::uint32_t>(1, 5);
  }

  void checkPreconditions(const model& m) const override {
    if (kind == complete || kind == complete_batch || kind == complete_span) {
      RC_PRE(!m.held.empty());
    }
    if (kind == corrupt_used) RC_PRE(m.used.empty());
    // Packed: the device has popped everything published, so the hostile descriptor is the
    // very next one it reads.
    if (kind == corrupt_avail && m.packed) RC_PRE(m.published.empty());
  }
  void apply(model& m) const override { step(m, nullptr); }
  void run(const model& m0, S& s) const override {
    model m = m0;
    step(m, &s);
    RC_ASSERT(!s.q.driver.broken());
    RC_ASSERT(!s.q.device.broken());
    RC_ASSERT(s.q.driver.num_free() == m.num_free);
    if constexpr (Layout::is_packed) check_areas(m, s);
  }
  void show(std::ostream& os) const override {
    static const char* names[] = {
        "add",           "add_inbuf",      "kick",       "pop",
        "complete",      "complete_batch", "irq",        "reap_one",
        "reap_many",     "disable_irq",    "enable_irq", "enable_irq_delayed",
        "disable_notif", "enable_notif",   "reset",      "corrupt_used",
        "corrupt_avail", "add_batch",      "pop_batch",  "complete_span"};
    os << names[kind] << " rd=" << rd.size() << " wr=" << wr.size() << " pick=" << pick
       << " len%=" << len_pct << " count=" << count;
  }

 private:
  /// The event suppression areas in ring memory hold what the model says each side wrote:
  /// the flags, and in desc mode the off_wrap of the model's linear position (2.8.1, 2.8.14).
  static void check_areas(const model& m, S& s) {
    const auto& v = s.q.ring.view();
    const auto check = [&](const packed::event_suppress& a, const event_area& want) {
      RC_ASSERT(get<little_endian>(a.flags) == static_cast<std::uint16_t>(want.flags));
      if (want.flags == area::desc) {
        const std::uint16_t ow = get<little_endian>(a.off_wrap);
        RC_ASSERT((ow & 0x7FFFU) == off_at(want.at, m.size));
        RC_ASSERT(((ow & 0x8000U) != 0) == wrap_at(want.at, m.size));
      }
    };
    check(*v.device_event, m.dev_area);
    check(*v.driver_event, m.drv_area);
  }

  static std::uint64_t sum(const std::vector<std::uint32_t>& v) {
    std::uint64_t s = 0;
    for (auto x : v) s += x;
    return s;
  }

  void do_add(model& m, S* s, const std::vector<std::uint32_t>& r,
              const std::vector<std::uint32_t>& w, bool inbuf) const {
    const std::size_t n = r.size() + w.size();
    const token_t token = m.next_token++;
    const bool indirect = n >= m.indirect_min && n <= m.indirect_max;
    const auto needed = static_cast<std::uint32_t>(indirect ? 1 : n);
    errc expect = errc::ok;
    if (n == 0 || n > m.size) {
      expect = errc::invalid_argument;
    } else if (needed > m.num_free) {
      expect = errc::no_space;
    }
    if (s != nullptr) {
      const std::size_t slot = s->take_slot(token);
      std::byte* base = s->arena.data() + slot * slot_bytes;
      std::fill(base, base + slot_bytes, std::byte{0});
      std::vector<buffer> out, in;
      std::size_t off = 0;
      for (auto len : r) {
        for (std::size_t i = 0; i < len; ++i)
          base[off + i] = virtq_test::pattern(token ^ read_salt, off + i);
        out.push_back(s->arena.at(slot * slot_bytes + off, len));
        off += len;
      }
      off = writable_at;
      for (auto len : w) {
        in.push_back(s->arena.at(slot * slot_bytes + off, len));
        off += len;
      }
      const errc got =
          inbuf ? s->q.driver.add_inbuf(in[0], token) : s->q.driver.add(out, in, token);
      RC_ASSERT(got == expect);
      if (got != errc::ok) s->give_back(token);
      if constexpr (Layout::is_packed) {
        if (got == errc::ok) {
          const std::uint64_t last = m.p_avail + model::slots_of(m.staged) + needed - 1;
          s->id_of[token] = get<little_endian>(s->q.ring.view().ring[off_at(last, m.size)].id);
        }
      }
    }
    if (expect == errc::ok) {
      m.staged.push_back(mchain{token, r, w, needed, sum(r), sum(w)});
      m.num_free -= needed;
    }
  }

  // Reaps one chain from the model (the front of the used elements); false if none.
  static bool model_reap(model& m, mused& out) {
    if (m.used.empty()) return false;
    if (m.front_reaped == 0) ++m.consumed;  // the driver reads the used element
    out = m.used.front()[m.front_reaped];
    ++m.front_reaped;
    if (m.front_reaped == m.used.front().size()) {
      m.used.pop_front();
      m.front_reaped = 0;
    }
    m.num_free += out.ndesc;
    m.p_reaped += out.ndesc;
    return true;
  }

  void check_reaped(S& s, const used_buffer& u, const mused& want) const {
    RC_ASSERT(u.token == want.token);
    RC_ASSERT(u.len == want.len);
    const std::byte* base = s.arena.data() + s.slot_of.at(u.token) * slot_bytes + writable_at;
    for (std::size_t i = 0; i < u.len; ++i) RC_ASSERT(base[i] == virtq_test::pattern(u.token, i));
    s.give_back(u.token);
  }

  void after_reap(model& m) const {
    // Packed desc mode, not delayed: the driver's event follows its next used position.
    if (m.packed) {
      if (m.drv_area.flags == area::desc && !m.p_delayed) m.drv_area.at = m.p_reaped;
      return;
    }
    if (!m.event_negotiated) return;
    if (m.mode == smode::none || (m.mode == smode::event && m.irq_on && !m.delayed)) {
      m.used_event = m.consumed;
    }
  }

  // Resets both sides: every outstanding token comes back exactly once.
  static void reset_both(model& m, S* s) {
    std::vector<token_t> expect;
    for (const auto& c : m.staged) expect.push_back(c.token);
    for (const auto& c : m.published) expect.push_back(c.token);
    for (const auto& c : m.held) expect.push_back(c.token);
    for (const auto& e : m.completed) {
      for (const auto& u : e) expect.push_back(u.token);
    }
    for (std::size_t k = 0; k < m.used.size(); ++k) {
      for (std::size_t j = (k == 0 ? m.front_reaped : 0); j < m.used[k].size(); ++j) {
        expect.push_back(m.used[k][j].token);
      }
    }
    if (s != nullptr) {
      std::vector<token_t> got;
      s->q.device.reset();
      s->q.driver.reset([&](token_t t) { got.push_back(t); });
      std::sort(got.begin(), got.end());
      std::sort(expect.begin(), expect.end());
      RC_ASSERT(got == expect);
      for (token_t t : got) s->give_back(t);
    }
    m.reset_state();
  }

  // 2.8.1: the AVAIL (bit 7) and USED (bit 15) flags a writer sets under wrap counter `wrap`.
  static std::uint16_t avail_flags(bool wrap) { return wrap ? 0x0080 : 0x8000; }
  static std::uint16_t used_flags(bool wrap) { return wrap ? 0x8080 : 0x0000; }

  static void write_desc(const packed::ring_view& v, std::uint64_t lin, std::uint32_t size,
                         std::uint64_t addr, std::uint32_t len, std::uint16_t id,
                         std::uint16_t flags) {
    packed::desc& d = v.ring[off_at(lin, size)];
    put<little_endian>(d.addr, addr);
    put<little_endian>(d.len, len);
    put<little_endian>(d.id, id);
    store_release<little_endian>(d.flags, flags);
  }

  // A hostile device writes one used descriptor at the driver's next used position (the driver
  // has reaped every published one). Checked in the order a driver must: a used descriptor
  // with no chain published cannot be (used_unexpected), else its id must be below the queue
  // size, name a published chain, and state no more than its writable bytes. A descriptor whose
  // bits do not say "used" under the driver's wrap counter is no used descriptor at all.
  void packed_corrupt_used(const model& m, S& s) const {
    std::vector<std::uint16_t> in_use, staged_ids;
    std::vector<std::pair<std::uint16_t, std::uint64_t>> sent;  // published: id, writable bytes
    for (const auto& c : m.staged) {
      staged_ids.push_back(s.id_of.at(c.token));
      in_use.push_back(staged_ids.back());
    }
    for (const auto& c : m.published) sent.push_back({s.id_of.at(c.token), c.wbytes});
    for (const auto& c : m.held) sent.push_back({s.id_of.at(c.token), c.wbytes});
    const std::size_t with_len = sent.size();  // completed chains: length bound not kept here
    for (const auto& e : m.completed) {
      for (const auto& u : e) sent.push_back({s.id_of.at(u.token), 0});
    }
    for (const auto& e : sent) in_use.push_back(e.first);
    std::uint16_t free_id = 0;
    while (free_id < m.size && std::find(in_use.begin(), in_use.end(), free_id) != in_use.end()) {
      ++free_id;
    }
    std::uint16_t id = static_cast<std::uint16_t>(m.size + pick % 7);
    std::uint32_t len = 0;
    std::uint16_t flags = used_flags(wrap_at(m.p_reaped, m.size));
    errc expect = errc::used_id_out_of_range;
    const std::uint32_t variant = pick % 5;
    if (variant == 1 && free_id < m.size) {
      id = free_id;
      expect = errc::used_id_not_outstanding;
    } else if (variant == 2 && !staged_ids.empty()) {
      id = staged_ids[pick % staged_ids.size()];  // not published yet: not the device's
      expect = errc::used_id_not_outstanding;
    } else if (variant == 3 && with_len != 0) {
      const auto& [pid, wbytes] = sent[pick % with_len];
      id = pid;
      len = static_cast<std::uint32_t>(wbytes + 1);  // 2.7.8.2: more than it could write
      flags = static_cast<std::uint16_t>(flags | packed::desc_f_write);  // 2.8.3: it says it wrote
      expect = errc::used_len_too_large;
    } else if (variant == 4) {
      flags = avail_flags(wrap_at(m.p_reaped, m.size));  // AVAIL != USED: not used
      expect = errc::empty;
    }
    if (expect != errc::empty && sent.empty()) expect = errc::used_unexpected;
    write_desc(s.q.ring.view(), m.p_reaped, m.size, 0, len, id, flags);
    RC_ASSERT(s.q.driver.get_used().error() == expect);
    if (expect == errc::empty) {
      RC_ASSERT(!s.q.driver.broken());
    } else {
      RC_ASSERT(s.q.driver.broken());
      RC_ASSERT(s.q.driver.error() == expect);
      RC_ASSERT(s.q.driver.get_used().error() == errc::broken);
    }
  }

  // A hostile driver writes the descriptor(s) at the device's next avail position (the device
  // has popped everything published). The device may only read the slots it does not hold: a
  // chain reaching past them is an overrun (2.8.4), checked descriptor by descriptor before
  // anything else about that descriptor; a head whose AVAIL == USED == the device's wrap
  // counter, or a continuation not available under its own slot's counter, has bad flags
  // (2.8.1); the id must be below the queue size and not in flight (2.8.4).
  void packed_corrupt_avail(const model& m, S& s) const {
    const auto& v = s.q.ring.view();
    const std::uint64_t at = m.p_popped;
    const std::uint64_t room = m.size - (m.p_popped - m.p_used());
    const std::uint64_t addr = reinterpret_cast<std::uintptr_t>(s.arena.data());
    const std::uint32_t variant = pick % 5;
    errc expect = errc::packed_bad_id;
    if (variant == 0) {
      write_desc(v, at, m.size, addr, 16, 0, used_flags(wrap_at(at, m.size)));
      expect = errc::packed_bad_flags;
    } else if (variant == 1 || (variant == 2 && m.held.empty())) {
      write_desc(v, at, m.size, addr, 16, static_cast<std::uint16_t>(m.size + pick % 7),
                 avail_flags(wrap_at(at, m.size)));
      expect = room == 0 ? errc::packed_chain_overrun : errc::packed_bad_id;
    } else if (variant == 2) {
      const std::uint16_t id = s.held_chains.at(m.held[pick % m.held.size()].token).id();
      write_desc(v, at, m.size, addr, 16, id, avail_flags(wrap_at(at, m.size)));
      expect = room == 0 ? errc::packed_chain_overrun : errc::packed_bad_id;
    } else if (variant == 3) {
      // A head with NEXT, then a slot made available for the other lap.
      write_desc(v, at + 1, m.size, addr, 16, 0, avail_flags(!wrap_at(at + 1, m.size)));
      write_desc(v, at, m.size, addr, 16, 0,
                 static_cast<std::uint16_t>(avail_flags(wrap_at(at, m.size)) | 1U));
      expect = room <= 1 ? errc::packed_chain_overrun : errc::packed_bad_flags;
    } else {
      // Every slot the device does not hold, each available and each with NEXT.
      for (std::uint64_t k = room; k-- > 0;) {
        write_desc(v, at + k, m.size, addr, 16, 0,
                   static_cast<std::uint16_t>(avail_flags(wrap_at(at + k, m.size)) | 1U));
      }
      if (room == 0) {
        write_desc(v, at, m.size, addr, 16, 0,
                   static_cast<std::uint16_t>(avail_flags(wrap_at(at, m.size)) | 1U));
      }
      expect = errc::packed_chain_overrun;
    }
    chain c;
    RC_ASSERT(s.q.device.pop(c) == expect);
    RC_ASSERT(s.q.device.broken());
    RC_ASSERT(s.q.device.error() == expect);
    RC_ASSERT(s.q.device.pop(c) == errc::broken);
  }

  // add_inbufs: `count` one-buffer device-writable chains in one call; as many as fit are
  // staged (each takes one slot, directly or as an indirect table of one).
  void do_add_batch(model& m, S* s) const {
    const std::size_t fit = std::min<std::size_t>(count, m.num_free);
    std::vector<token_t> tokens;
    std::vector<std::uint32_t> lens;
    for (std::size_t k = 0; k < count; ++k) {
      tokens.push_back(m.next_token++);
      lens.push_back(wr.empty() ? 16U : wr[k % wr.size()] * 2U);
    }
    if (s != nullptr) {
      std::vector<buffer> bufs;
      for (std::size_t k = 0; k < count; ++k) {
        const std::size_t slot = s->take_slot(tokens[k]);
        std::byte* base = s->arena.data() + slot * slot_bytes;
        std::fill(base, base + slot_bytes, std::byte{0});
        bufs.push_back(s->arena.at(slot * slot_bytes + writable_at, lens[k]));
      }
      const result<std::size_t> got = s->q.driver.add_inbufs(bufs, tokens);
      RC_ASSERT(got.has_value());
      RC_ASSERT(*got == fit);
      for (std::size_t k = fit; k < count; ++k) s->give_back(tokens[k]);
      if constexpr (Layout::is_packed) {
        for (std::size_t k = 0; k < fit; ++k) {
          const std::uint64_t at = m.p_avail + model::slots_of(m.staged) + k;
          s->id_of[tokens[k]] = get<little_endian>(s->q.ring.view().ring[off_at(at, m.size)].id);
        }
      }
    }
    for (std::size_t k = 0; k < fit; ++k) {
      m.staged.push_back(mchain{tokens[k], {}, {lens[k]}, 1, 0, lens[k]});
      --m.num_free;
    }
  }

  // The device takes one published chain (the model's half of pop and pop_batch).
  static void model_pop(model& m) {
    m.held.push_back(m.published.front());
    m.published.pop_front();
    m.last_avail = add16(m.last_avail, 1);
    if (m.event_negotiated && m.notif_on) m.avail_event = m.last_avail;
    // Packed desc mode: the device's event follows its next avail position.
    m.p_popped += m.held.back().ndesc;
    if (m.dev_area.flags == area::desc) m.dev_area.at = m.p_popped;
  }

  // pop_buffers: up to `count` chains, as long as each is one direct descriptor; a chain of
  // more, or an indirect one, stops the batch and stays for pop(chain&).
  void do_pop_batch(model& m, S* s) const {
    std::size_t k = 0;
    while (k < count && k < m.published.size()) {
      const mchain& c = m.published[k];
      const std::size_t n = c.rd.size() + c.wr.size();
      const bool indirect = n >= m.indirect_min && n <= m.indirect_max;
      if (n != 1 || indirect) break;
      ++k;
    }
    if (s != nullptr) {
      std::vector<popped_buffer> out(count);
      const result<std::size_t> got = s->q.device.pop_buffers(out);
      RC_ASSERT(got.has_value());
      RC_ASSERT(*got == k);
      for (std::size_t j = 0; j < k; ++j) {
        const mchain& want = m.published[j];
        const popped_buffer& b = out[j];
        const bool writable = !want.wr.empty();
        RC_ASSERT(b.writable == writable);
        RC_ASSERT(b.len == (writable ? want.wr[0] : want.rd[0]));
        if (!writable) {
          for (std::size_t i = 0; i < b.len; ++i) {
            RC_ASSERT(b.data[i] == virtq_test::pattern(want.token ^ read_salt, i));
          }
        }
        // The same view as pop(chain&) gives, for the complete commands.
        chain c;
        c.begin(b.id, m.size);
        RC_ASSERT(c.append(identity_memory{}, reinterpret_cast<std::uintptr_t>(b.data), b.len,
                           b.writable) == errc::ok);
        s->held_chains[want.token] = c;
      }
    }
    for (std::size_t j = 0; j < k; ++j) model_pop(m);
  }

  // complete(span): up to 4 held chains in one call (IN_ORDER: the oldest, in order).
  void do_complete_span(model& m, S* s) const {
    const std::size_t n = 1 + pick % std::min<std::size_t>(m.held.size(), 4);
    std::vector<std::size_t> picks;  // indices into m.held, in completion order
    for (std::size_t j = 0; j < n; ++j) {
      picks.push_back(m.in_order ? j : (pick / 7 + j) % m.held.size());
    }
    std::vector<used_entry> done;
    std::vector<mused> model_done;
    for (std::size_t idx : picks) {
      const mchain& c = m.held[idx];
      const auto len = static_cast<std::uint32_t>(c.wbytes * len_pct / 100);
      model_done.push_back(mused{c.token, len, c.ndesc});
      if (s != nullptr) {
        const chain& ch = s->held_chains.at(c.token);
        std::vector<std::byte> data(len);
        for (std::size_t k = 0; k < len; ++k) data[k] = virtq_test::pattern(c.token, k);
        RC_ASSERT(ch.write(data) == len);
        done.push_back(used_entry{ch.id(), len});
      }
    }
    if (s != nullptr) {
      const result<std::size_t> got = s->q.device.complete(std::span<const used_entry>(done));
      RC_ASSERT(got.has_value());
      RC_ASSERT(*got == n);
    }
    std::vector<std::size_t> sorted = picks;
    std::sort(sorted.rbegin(), sorted.rend());
    for (std::size_t idx : sorted) m.held.erase(m.held.begin() + static_cast<std::ptrdiff_t>(idx));
    for (const mused& u : model_done) m.completed.push_back(mentry{u});
  }

  // One transition: of the model alone (apply), or of the model and the system under test
  // with every answer checked against the model's prediction (run).
  void step(model& m, S* s) const {
    switch (kind) {
      case add:
        do_add(m, s, rd, wr, false);
        break;
      case add_inbuf: {
        const std::vector<std::uint32_t> one{wr.empty() ? 16U : wr[0] * 2U};
        do_add(m, s, {}, one, true);
        break;
      }
      case kick: {
        const bool expect = m.staged.empty() ? false : m.kick_decision();
        if (s != nullptr) RC_ASSERT(s->q.driver.kick_prepare() == expect);
        m.p_avail += model::slots_of(m.staged);
        m.avail_pub = add16(m.avail_pub, m.staged.size());
        for (auto& c : m.staged) m.published.push_back(c);
        m.staged.clear();
        if (s != nullptr) {
          if constexpr (Layout::is_packed) {
            // NOTIFICATION_DATA names the position after the last published slot (2.8.1 wrap).
            const notification n = decode_notification(s->q.driver.notification_data(3));
            RC_ASSERT(n.next_off == off_at(m.p_avail, m.size));
            RC_ASSERT(n.next_wrap == wrap_at(m.p_avail, m.size));
          } else {
            RC_ASSERT(split_notification_idx(s->q.driver.notification_data(3)) == m.avail_pub);
          }
        }
        break;
      }
      case pop: {
        if (s != nullptr) {
          chain c;
          const errc got = s->q.device.pop(c);
          if (m.published.empty()) {
            RC_ASSERT(got == errc::empty);
          } else {
            RC_ASSERT(got == errc::ok);
            const mchain& want = m.published.front();
            RC_ASSERT(c.readable_bytes() == want.rbytes);
            RC_ASSERT(c.writable_bytes() == want.wbytes);
            std::vector<std::byte> data(static_cast<std::size_t>(want.rbytes));
            RC_ASSERT(c.read(data) == want.rbytes);
            for (std::size_t i = 0; i < data.size(); ++i) {
              RC_ASSERT(data[i] == virtq_test::pattern(want.token ^ read_salt, i));
            }
            s->held_chains[want.token] = c;
          }
        }
        if (!m.published.empty()) model_pop(m);
        break;
      }
      case add_batch:
        do_add_batch(m, s);
        break;
      case pop_batch:
        do_pop_batch(m, s);
        break;
      case complete_span:
        do_complete_span(m, s);
        break;
      case complete: {
        const std::size_t i = m.in_order ? 0 : pick % m.held.size();
        const mchain c = m.held[i];
        const auto len = static_cast<std::uint32_t>(c.wbytes * len_pct / 100);
        if (s != nullptr) {
          const chain& ch = s->held_chains.at(c.token);
          std::vector<std::byte> data(len);
          for (std::size_t k = 0; k < len; ++k) data[k] = virtq_test::pattern(c.token, k);
          RC_ASSERT(ch.write(data) == len);
          RC_ASSERT(s->q.device.complete(ch, len) == errc::ok);
        }
        m.held.erase(m.held.begin() + static_cast<std::ptrdiff_t>(i));
        m.completed.push_back(mentry{mused{c.token, len, c.ndesc}});
        break;
      }
      case complete_batch: {
        const std::size_t n = 1 + pick % m.held.size();
        const mchain last = m.held[n - 1];
        const auto len = static_cast<std::uint32_t>(last.wbytes * len_pct / 100);
        if (s != nullptr) {
          if constexpr (requires { s->q.device.complete_in_order(std::uint16_t{1}, 0U); }) {
            const chain& ch = s->held_chains.at(last.token);
            std::vector<std::byte> data(len);
            for (std::size_t k = 0; k < len; ++k) data[k] = virtq_test::pattern(last.token, k);
            RC_ASSERT(ch.write(data) == len);
            RC_ASSERT(s->q.device.complete_in_order(static_cast<std::uint16_t>(n), len) ==
                      errc::ok);
          }
        }
        mentry e;
        for (std::size_t k = 0; k < n; ++k) {
          e.push_back(mused{m.held[k].token, k + 1 == n ? len : 0U, m.held[k].ndesc});
        }
        m.held.erase(m.held.begin(), m.held.begin() + static_cast<std::ptrdiff_t>(n));
        m.completed.push_back(e);
        break;
      }
      case irq: {
        const bool expect = m.completed.empty() ? false : m.irq_decision();
        if (s != nullptr) RC_ASSERT(s->q.device.interrupt_prepare() == expect);
        m.p_used_pub += m.completed_slots();
        m.used_pub = add16(m.used_pub, m.completed.size());
        for (auto& e : m.completed) m.used.push_back(e);
        m.completed.clear();
        break;
      }
      case reap_one:
      case reap_many: {
        const std::size_t want = kind == reap_one ? 1 : count;
        std::vector<mused> expect;
        for (mused u{}; expect.size() < want && model_reap(m, u);) expect.push_back(u);
        if (!expect.empty()) after_reap(m);
        if (s != nullptr) {
          if (kind == reap_one) {
            const auto got = s->q.driver.get_used();
            if (expect.empty()) {
              RC_ASSERT(got.error() == errc::empty);
            } else {
              RC_ASSERT(got.has_value());
              check_reaped(*s, *got, expect[0]);
            }
          } else {
            std::vector<used_buffer> out(want);
            const auto got = s->q.driver.get_used(out);
            RC_ASSERT(got.has_value());
            RC_ASSERT(*got == expect.size());
            for (std::size_t k = 0; k < expect.size(); ++k) check_reaped(*s, out[k], expect[k]);
          }
        }
        break;
      }
      case disable_irq: {
        if (s != nullptr) s->q.driver.disable_interrupts();
        if (m.mode != smode::none) m.drv_area.flags = area::disable;
        if (m.mode != smode::none && m.irq_on) {
          m.irq_on = false;
          if (m.mode == smode::flags) m.no_interrupt = true;
          if (m.mode == smode::event) m.used_event = static_cast<std::uint16_t>(m.consumed - 1);
        }
        break;
      }
      case enable_irq: {
        m.irq_on = true;
        m.delayed = false;
        if (m.mode == smode::flags) m.no_interrupt = false;
        if (m.mode == smode::event) m.used_event = m.consumed;
        m.p_delayed = false;
        if (m.mode == smode::event) m.drv_area = event_area{area::desc, m.p_reaped};
        if (m.mode == smode::flags) m.drv_area.flags = area::enable;
        // Pending iff a published used element is unread, or a batch is half reaped.
        const bool expect = m.used_pub != m.consumed || m.front_reaped > 0;
        if (s != nullptr) RC_ASSERT(s->q.driver.enable_interrupts() == expect);
        break;
      }
      case enable_irq_delayed: {
        const std::uint32_t in_device = static_cast<std::uint16_t>(m.avail_pub - m.consumed);
        const auto ahead = static_cast<std::uint16_t>((in_device * 3U) / 4U);
        m.irq_on = true;
        m.delayed = true;
        if (m.mode == smode::flags) m.no_interrupt = false;
        if (m.mode == smode::event) m.used_event = add16(m.consumed, ahead);
        // Packed: the event lies 3/4 of the way through the slots with the device.
        m.p_delayed = true;
        if (m.mode == smode::event) {
          m.drv_area = event_area{area::desc, m.p_reaped + (m.p_avail - m.p_reaped) * 3 / 4};
        }
        if (m.mode == smode::flags) m.drv_area.flags = area::enable;
        const std::uint32_t unread = static_cast<std::uint16_t>(m.used_pub - m.consumed);
        if (s != nullptr) {
          const bool got = s->q.driver.enable_interrupts_delayed();
          if constexpr (Layout::is_packed) {
            // The packed driver looks at the very next used slot: pending iff anything unread.
            RC_ASSERT(got == (m.front_reaped > 0 || unread > 0));
          } else {
            // Must report work past the requested point; must not invent work when none.
            if (m.front_reaped > 0 || unread > ahead) RC_ASSERT(got);
            if (m.front_reaped == 0 && unread == 0) RC_ASSERT(!got);
          }
        }
        break;
      }
      case disable_notif: {
        if (s != nullptr) s->q.device.disable_notifications();
        if (m.mode != smode::none) {
          m.notif_on = false;
          if (m.mode == smode::flags) m.no_notify = true;
          m.dev_area.flags = area::disable;
        }
        break;
      }
      case enable_notif: {
        m.notif_on = true;
        if (m.mode == smode::flags) m.no_notify = false;
        if (m.event_negotiated) m.avail_event = m.last_avail;
        if (m.mode == smode::event) m.dev_area = event_area{area::desc, m.p_popped};
        if (m.mode == smode::flags) m.dev_area.flags = area::enable;
        const bool expect = m.avail_pub != m.last_avail;
        if (s != nullptr) RC_ASSERT(s->q.device.enable_notifications() == expect);
        break;
      }
      case reset: {
        reset_both(m, s);
        break;
      }
      case corrupt_used: {
        // A hostile device publishes a used element with an id out of range (precondition: the
        // driver has reaped every published one, so it reads the used idx afresh). The driver
        // fails with the specific errc, stays broken and recovers by reset.
        std::size_t with_device = m.published.size() + m.held.size();
        for (const auto& e : m.completed) with_device += e.size();
        // Nothing left with the device: one more used element is more than it holds.
        const errc expect = with_device == 0 ? errc::used_idx_jump : errc::used_id_out_of_range;
        if (s != nullptr) {
          if constexpr (Layout::is_packed) {
            packed_corrupt_used(m, *s);
          } else {
            const auto& v = s->q.ring.view();
            auto& e = v.used.ring(m.used_pub & (v.size - 1));
            put<little_endian>(e.id, v.size);
            put<little_endian>(e.len, 0);
            store_release<little_endian>(v.used.idx(), add16(m.used_pub, 1));
            RC_ASSERT(s->q.driver.get_used().error() == expect);
            RC_ASSERT(s->q.driver.broken());
            RC_ASSERT(s->q.driver.get_used().error() == errc::broken);
          }
        }
        reset_both(m, s);
        break;
      }
      case corrupt_avail: {
        // A hostile driver moves avail idx by more than the queue size. The device pops at most
        // the chains it had already seen, then fails with avail_idx_jump, and recovers by reset.
        if (s != nullptr) {
          if constexpr (Layout::is_packed) {
            packed_corrupt_avail(m, *s);
          } else {
            const auto& v = s->q.ring.view();
            // Past everything published by more than the queue size, wherever the device's
            // cached idx leaves it.
            store_release<little_endian>(v.avail.idx(),
                                         add16(m.last_avail, m.published.size() + m.size + 1));
            std::size_t k = 0;
            chain c;
            errc e = errc::ok;
            while ((e = s->q.device.pop(c)) == errc::ok) {
              RC_ASSERT(k < m.published.size());
              RC_ASSERT(c.writable_bytes() == m.published[k].wbytes);
              ++k;
            }
            RC_ASSERT(e == errc::avail_idx_jump);
            RC_ASSERT(s->q.device.broken());
            // Chains popped here are outstanding like any other: reset must return them.
          }
        }
        reset_both(m, s);
        break;
      }
      default:
        break;
    }
  }
};

}  // namespace

namespace {

constexpr double seq_scale = 4.0;

// Runs per variant when RC_PARAMS leaves max_success at rapidcheck's default of 100: with 100, a
// planted wrap-counter bug in the packed interrupt check was first hit at run 63. 16 variants x
// 300 take about 3 s in Release; under AddressSanitizer (about 20x slower, there for memory
// errors rather than decisions) the default 100 keep the test near 25 s.
#if defined(__SANITIZE_ADDRESS__)
#define VIRTQ_MODEL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VIRTQ_MODEL_ASAN 1
#endif
#endif
#ifdef VIRTQ_MODEL_ASAN
constexpr int runs_per_variant = 100;
#else
constexpr int runs_per_variant = 300;
#endif

template <class F>
bool check_with_runs(F&& property) {
  rc::detail::TestParams params = rc::detail::configuration().testParams;
  if (params.maxSuccess == rc::detail::TestParams{}.maxSuccess) {
    params.maxSuccess = runs_per_variant;
  }
  const rc::detail::TestResult result =
      rc::detail::checkTestable(std::forward<F>(property), rc::detail::TestMetadata{}, params);
  rc::detail::printResultMessage(result, std::cerr);
  std::cerr << '\n';
  return result.template is<rc::detail::SuccessResult>();
}

template <class Layout, class Policy>
void run_model(bool in_order) {
  const auto mode = std::is_same_v<typename Policy::suppression, suppress_none>    ? smode::none
                    : std::is_same_v<typename Policy::suppression, suppress_flags> ? smode::flags
                                                                                   : smode::event;
  const bool ok = check_with_runs([&] {
    // Packed sizes need not be powers of 2 (2.8): odd ones exercise the compare-and-subtract wrap.
    const std::uint32_t size =
        Layout::is_packed ? *at_full_size(rc::gen::element(1U, 2U, 3U, 4U, 5U, 7U, 8U, 16U))
                          : *at_full_size(rc::gen::element(1U, 2U, 4U, 8U, 16U));
    std::uint16_t initial = 0;
    if constexpr (!Layout::is_packed) {
      initial = *at_full_size(rc::gen::oneOf(rc::gen::inRange<std::uint16_t>(65520, 65535),
                                             rc::gen::just(std::uint16_t{65535}),
                                             rc::gen::just(std::uint16_t{0})));
    }
    features f = virtq_test::features_for<Layout, Policy>();
    if (in_order) f = f.with(feature::in_order);
    driver_options o;
    o.indirect_max = std::min(4U, size);
    o.indirect_threshold = 3;
    o.initial_index = initial;
    model m0;
    m0.size = size;
    m0.in_order = in_order;
    m0.packed = Layout::is_packed;
    m0.mode = mode;
    m0.event_negotiated = f.has(feature::event_idx);
    m0.indirect_max = o.indirect_max;
    m0.indirect_min = o.indirect_threshold;
    m0.initial = initial;
    m0.reset_state();
    sut<Layout, Policy> s(size, f, o);
    // Sequences up to 4x rapidcheck's size: a chain needs ~6 commands from add to reap, and
    // the packed wrap counters only come back to their start after two laps of the ring.
    const auto cmds = *rc::gen::scale(
        seq_scale,
        rc::state::gen::commands(m0, rc::state::gen::execOneOfWithArgs<op<Layout, Policy>>()));
    rc::state::runAll(cmds, m0, s);
  });
  REQUIRE(ok);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("model: driver + device pair against the reference model", "[model]",
                        virtq_test::layout_policy_combos) {
  using L = typename TestType::layout;
  using P = typename TestType::policy;
  SECTION("any order") {
    run_model<L, P>(false);
  }
  SECTION("IN_ORDER") {
    run_model<L, P>(true);
  }
}

// 2.8.10: a delayed driver event the driver has reaped past is a position a lap back (off_wrap
// pins a slot AND a wrap parity). A device that then publishes exactly a queue size of used
// slots at once covers that offset only under the other parity, so no interrupt is due (as
// Linux vhost's packed check computes). spec.hpp's packed_need_event returns true for any
// batch of >= size slots ("moved a whole lap"): a spurious interrupt. Fixed: only more than a lap
// notifies unconditionally.
TEST_CASE(
    "model: packed device does not interrupt for a full-size batch that misses a stale "
    "delayed event",
    "[model][packed]") {
  virtq_test::queue_pair<packed_layout, default_policy> q(2);
  virtq_test::buffer_arena a(4096);
  REQUIRE(q.driver.add_inbuf(a.at(0, 64), 1) == errc::ok);
  REQUIRE(q.driver.kick_prepare());
  chain c;
  REQUIRE(q.device.pop(c) == errc::ok);
  // One slot with the device: the delayed event is 3/4 of 1 = 0 slots ahead, slot 0 of lap 0.
  REQUIRE_FALSE(q.driver.enable_interrupts_delayed());
  REQUIRE(q.device.complete(c, 8) == errc::ok);
  REQUIRE(q.device.interrupt_prepare());  // used slot 0 of lap 0: the event itself
  REQUIRE(q.driver.get_used());           // delayed: the event stays at slot 0, lap 0
  REQUIRE(q.driver.add_inbuf(a.at(64, 64), 2) == errc::ok);   // slot 1, lap 0
  REQUIRE(q.driver.add_inbuf(a.at(128, 64), 3) == errc::ok);  // slot 0, lap 1
  REQUIRE(q.driver.kick_prepare());
  chain c2, c3;
  REQUIRE(q.device.pop(c2) == errc::ok);
  REQUIRE(q.device.pop(c3) == errc::ok);
  REQUIRE(q.device.complete(c2, 8) == errc::ok);
  REQUIRE(q.device.complete(c3, 8) == errc::ok);
  // Used slots: 1 of lap 0 and 0 of lap 1; the event is slot 0 of lap 0: not among them.
  CHECK_FALSE(q.device.interrupt_prepare());
}
