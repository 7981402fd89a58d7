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
// The exact kick/interrupt decisions are the split ring's (2.7.10); for a packed layout only the
// layout-independent facts are checked (nothing published: no kick; suppress_none: always).
#include <algorithm>
#include <cstdint>
#include <deque>
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
  }
  std::size_t outstanding() const {
    std::size_t n = staged.size() + published.size() + held.size();
    for (const auto& e : completed) n += e.size();
    for (const auto& e : used) n += e.size();
    return n - front_reaped;
  }
  bool kick_decision() const {
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
  }
  virtq_test::queue_pair<Layout, Policy> q;
  virtq_test::buffer_arena arena;
  std::vector<std::size_t> free_slots;
  std::map<token_t, std::size_t> slot_of;
  std::map<token_t, chain> held_chains;
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
    corrupt_avail
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
    if (!m.packed) {  // hand-made corruption speaks the split ring's wire format
      w.push_back({1, corrupt_used});
      w.push_back({1, corrupt_avail});
    }
    std::size_t total = 0;
    for (const auto& [weight, k] : w) total += weight;
    std::size_t r = *rc::gen::inRange<std::size_t>(0, total);
    for (const auto& [weight, k] : w) {
      if (r < weight) {
        kind = k;
        break;
      }
      r -= weight;
    }
    rd = *rc::gen::container<std::vector<std::uint32_t>>(*rc::gen::inRange<std::size_t>(0, 4),
                                                         rc::gen::inRange<std::uint32_t>(1, 33));
    wr = *rc::gen::container<std::vector<std::uint32_t>>(*rc::gen::inRange<std::size_t>(0, 4),
                                                         rc::gen::inRange<std::uint32_t>(1, 33));
    pick = *rc::gen::inRange<std::uint32_t>(0, 1000);
    len_pct = *rc::gen::inRange<std::uint32_t>(0, 101);
    count = *rc::gen::inRange<std::uint32_t>(1, 5);
  }

  void checkPreconditions(const model& m) const override {
    if (kind == complete || kind == complete_batch) RC_PRE(!m.held.empty());
    if (kind == corrupt_used) RC_PRE(m.used.empty());
  }
  void apply(model& m) const override { step(m, nullptr); }
  void run(const model& m0, S& s) const override {
    model m = m0;
    step(m, &s);
    RC_ASSERT(!s.q.driver.broken());
    RC_ASSERT(!s.q.device.broken());
    RC_ASSERT(s.q.driver.num_free() == m.num_free);
  }
  void show(std::ostream& os) const override {
    static const char* names[] = {"add",           "add_inbuf",    "kick",
                                  "pop",           "complete",     "complete_batch",
                                  "irq",           "reap_one",     "reap_many",
                                  "disable_irq",   "enable_irq",   "enable_irq_delayed",
                                  "disable_notif", "enable_notif", "reset",
                                  "corrupt_used",  "corrupt_avail"};
    os << names[kind] << " rd=" << rd.size() << " wr=" << wr.size() << " pick=" << pick
       << " len%=" << len_pct << " count=" << count;
  }

 private:
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
        if (s != nullptr) {
          const bool got = s->q.driver.kick_prepare();
          if constexpr (!Layout::is_packed) {
            RC_ASSERT(got == expect);
          } else {
            if (m.staged.empty()) RC_ASSERT(!got);
            if (!m.staged.empty() && m.mode == smode::none) RC_ASSERT(got);
          }
        }
        m.avail_pub = add16(m.avail_pub, m.staged.size());
        for (auto& c : m.staged) m.published.push_back(c);
        m.staged.clear();
        if (s != nullptr && !Layout::is_packed) {
          RC_ASSERT(split_notification_idx(s->q.driver.notification_data(3)) == m.avail_pub);
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
            std::vector<std::byte> data(want.rbytes);
            RC_ASSERT(c.read(data) == want.rbytes);
            for (std::size_t i = 0; i < data.size(); ++i) {
              RC_ASSERT(data[i] == virtq_test::pattern(want.token ^ read_salt, i));
            }
            s->held_chains[want.token] = c;
          }
        }
        if (!m.published.empty()) {
          m.held.push_back(m.published.front());
          m.published.pop_front();
          m.last_avail = add16(m.last_avail, 1);
          if (m.event_negotiated && m.notif_on) m.avail_event = m.last_avail;
        }
        break;
      }
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
        if (s != nullptr) {
          const bool got = s->q.device.interrupt_prepare();
          if constexpr (!Layout::is_packed) {
            RC_ASSERT(got == expect);
          } else {
            if (m.completed.empty()) RC_ASSERT(!got);
            if (!m.completed.empty() && m.mode == smode::none) RC_ASSERT(got);
          }
        }
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
        const std::uint32_t unread = static_cast<std::uint16_t>(m.used_pub - m.consumed);
        if (s != nullptr) {
          const bool got = s->q.driver.enable_interrupts_delayed();
          // Must report work past the requested point; must not invent work when there is none.
          if (m.front_reaped > 0 || unread > ahead) RC_ASSERT(got);
          if (m.front_reaped == 0 && unread == 0) RC_ASSERT(!got);
        }
        break;
      }
      case disable_notif: {
        if (s != nullptr) s->q.device.disable_notifications();
        if (m.mode != smode::none) {
          m.notif_on = false;
          if (m.mode == smode::flags) m.no_notify = true;
        }
        break;
      }
      case enable_notif: {
        m.notif_on = true;
        if (m.mode == smode::flags) m.no_notify = false;
        if (m.event_negotiated) m.avail_event = m.last_avail;
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
          if constexpr (!Layout::is_packed) {
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
          if constexpr (!Layout::is_packed) {
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

template <class Layout, class Policy>
void run_model(bool in_order) {
  const auto mode = std::is_same_v<typename Policy::suppression, suppress_none>    ? smode::none
                    : std::is_same_v<typename Policy::suppression, suppress_flags> ? smode::flags
                                                                                   : smode::event;
  const bool ok = rc::check([&] {
    const std::uint32_t size = *rc::gen::element(1U, 2U, 4U, 8U, 16U);
    std::uint16_t initial = 0;
    if constexpr (!Layout::is_packed) {
      initial =
          *rc::gen::oneOf(rc::gen::inRange<std::uint16_t>(65520, 65535),
                          rc::gen::just(std::uint16_t{65535}), rc::gen::just(std::uint16_t{0}));
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
    rc::state::check(m0, s, rc::state::gen::execOneOfWithArgs<op<Layout, Policy>>());
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
