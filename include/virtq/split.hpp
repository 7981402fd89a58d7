// SPDX-License-Identifier: MIT
// virtq/split.hpp -- the split virtqueue (VIRTIO 1.2/1.3 section 2.7): driver side and device side.
//
// split_driver owns the descriptor table and the available ring and reads the used ring;
// split_device reads the descriptor table and the available ring and owns the used ring. Both
// satisfy the concepts of virtqueue.hpp, so generic code never names them.
//
// Trust. Each side treats everything the other side writes as hostile:
//  * the device validates every index, every chain (through chain::append, the one place where a
//    descriptor is checked and translated) and bounds every walk by a time-to-live;
//  * the driver never reads back what it wrote into shared memory to make a decision (free-list
//    links, chain lengths, tokens and writable sizes live in driver-private arrays), and checks
//    every used id, used len and used idx before it trusts them.
// A bad ring gives a specific errc and a broken queue (queue_common::fail); every later call
// returns errc::broken (or false / 0) until reset().
//
// Cached indices (style guide habit 2): the driver writes a private shadow of avail idx and
// reads the shared used idx only when its cached copy has been consumed; the device caches the
// avail idx the same way. Shared indices live on cache lines the other side writes, so each
// avoided load is an avoided cache-line transfer.
//
// Every ordering point carries its label from the barrier table in virtqueue.hpp (D1..D4 on the
// driver, V1..V4 on the device) with the spec rule and its partner.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "virtq/chain.hpp"
#include "virtq/detail/shadow.hpp"

// GCC (-O2 and up) distributes the IN_ORDER add loop into three (descriptors, tokens, and a
// vectorized run of avail entries): 5 instructions per buffer more than the one loop it is
// (split-inorder-event-32: 91.6 against 86.5). Clang has no such option and does not split it.
#if defined(__GNUC__) && !defined(__clang__)
#define VIRTQ_ONE_LOOP [[gnu::optimize("no-tree-loop-distribution")]]
#else
#define VIRTQ_ONE_LOOP
#endif
#include "virtq/error.hpp"
#include "virtq/memory.hpp"
#include "virtq/policy.hpp"
#include "virtq/spec.hpp"
#include "virtq/virtqueue.hpp"

namespace virtq {

namespace detail {

constexpr std::uint16_t u16(std::uint32_t v) noexcept {
  return static_cast<std::uint16_t>(v);
}

/// How one side of a split ring talks to the other about notifications, fixed at construction
/// from the policy and the negotiated features.
///  * none: never ask the peer to hold back, always notify. With EVENT_IDX negotiated the peer
///    only looks at our event index, so we keep it current to keep its notifications coming.
///  * flags: NO_NOTIFY / NO_INTERRUPT (EVENT_IDX not negotiated).
///  * event: used_event / avail_event. 2.7.7 / 2.7.10: once EVENT_IDX is negotiated the peer
///    ignores the flags, so a suppress_flags policy switches to event indices too.
enum class split_suppress : std::uint8_t { none, flags, event };

template <queue_policy_type P>
constexpr split_suppress split_mode(features f) noexcept {
  if constexpr (std::is_same_v<typename P::suppression, suppress_none>) {
    return split_suppress::none;
  } else {
    return f.has(feature::event_idx) ? split_suppress::event : split_suppress::flags;
  }
}

/// The decision both sides of a split ring make after publishing the entries [old, new) (the
/// driver's kick, the device's interrupt): does the peer want to hear of them? With event
/// indices, iff its event index lies among them (2.7.10); with flags, iff it left its NO_NOTIFY /
/// NO_INTERRUPT flag clear (2.7.7, 2.7.10). The caller issues its full barrier (D2 / V3) first:
/// these are the loads that barrier orders after the publishing store.
template <byte_order E>
bool split_peer_wants(split_suppress mode, const wire<std::uint16_t>& event,
                      const wire<std::uint16_t>& flags, std::uint16_t no_flag,
                      std::uint16_t new_idx, std::uint16_t old_idx) noexcept {
  if (mode == split_suppress::event) return need_event(load_relaxed<E>(event), new_idx, old_idx);
  return (load_relaxed<E>(flags) & no_flag) == 0;
}

/// Checked mode on the device: the ring descriptors of each held chain, privately linked, so that
/// completing a chain can move exactly those descriptors back in the shadow state without
/// re-reading the (hostile) table. Empty when not checked.
template <bool Checked>
struct held_links {
  void resize(std::uint32_t) {}
  void start() noexcept {}
  void visit(std::uint16_t) noexcept {}
  template <class Shadow>
  bool commit(Shadow&, std::uint16_t) noexcept {
    return true;
  }
  template <class Shadow>
  bool release(Shadow&, std::uint16_t) noexcept {
    return true;
  }
};

template <>
struct held_links<true> {
  std::vector<std::uint16_t> walk;   // ring descriptors of the chain being popped
  std::vector<std::uint16_t> link;   // per descriptor: next ring descriptor of its chain
  std::vector<std::uint16_t> count;  // per head: ring descriptors in its chain
  void resize(std::uint32_t n) {
    walk.reserve(n);
    link.assign(n, 0);
    count.assign(n, 0);
  }
  void start() noexcept { walk.clear(); }
  void visit(std::uint16_t d) { walk.push_back(d); }
  template <class Shadow>
  bool commit(Shadow& s, std::uint16_t head) noexcept {
    for (std::size_t i = 0; i < walk.size(); ++i) {
      if (!s.move(walk[i], desc_state::free, desc_state::device)) return false;
      if (i + 1 < walk.size()) link[walk[i]] = walk[i + 1];
    }
    count[head] = u16(static_cast<std::uint32_t>(walk.size()));
    return true;
  }
  template <class Shadow>
  bool release(Shadow& s, std::uint16_t head) noexcept {
    std::uint16_t d = head;
    for (std::uint32_t i = 0; i < count[head]; ++i, d = link[d]) {
      if (!s.move(d, desc_state::device, desc_state::free)) return false;
    }
    return true;
  }
};

}  // namespace detail

// =============================================================================================
// Driver side
// =============================================================================================

/// The driver side of a split ring. Not copyable or movable (the ring and the rx pool keep
/// references into it). One thread at a time unless P::lock is a real lock. Cache-line aligned:
/// its state is written by the driver's CPU only, so it shares no line with a device next to it.
template <queue_policy_type P = default_policy>
class alignas(64) split_driver : public detail::queue_common<P> {
  using base = detail::queue_common<P>;
  using E = typename P::endian;
  using B = typename P::barriers;
  using guard = typename base::guard;
  using mode = detail::split_suppress;
  using detail::queue_common<P>::fail;

 public:
  /// get_used() tests every used element's id and length (verifying_driver_queue).
  static constexpr bool verifies_used = true;

  /// Throws virtq::error: bad_queue_size (ring not valid), feature_missing / feature_conflict
  /// (policy vs. features, indirect_max without VIRTIO_F_INDIRECT_DESC), invalid_argument
  /// (indirect_max larger than the queue: 2.7.5.3.1 caps a chain at the queue size),
  /// address_out_of_range (to_guest failed for the indirect tables).
  split_driver(split::ring_view ring, features f, driver_options opts = {})
      : ring_(ring),
        mode_(detail::split_mode<P>(f)),
        in_order_(f.has(feature::in_order)),
        none_with_event_(mode_ == detail::split_suppress::none && f.has(feature::event_idx)),
        opts_(opts) {
    detail::check_features<P>(f, false);
    if (!valid_split_size(ring.size) || ring.table == nullptr || ring.avail.hdr == nullptr ||
        ring.used.hdr == nullptr) {
      detail::throw_error(errc::bad_queue_size, "split_driver: invalid ring view");
    }
    size_ = ring.size;
    mask_ = size_ - 1;
    if (opts.indirect_max > 0) {
      if (!f.has(feature::indirect_desc)) {
        detail::throw_error(errc::feature_missing, "indirect_max needs VIRTIO_F_INDIRECT_DESC");
      }
      if (opts.indirect_max > size_) {
        detail::throw_error(errc::invalid_argument,
                            "indirect_max larger than the queue size (2.7.5.3.1)");
      }
      indirect_ = detail::indirect_tables(size_, opts.indirect_max, opts);
      indirect_min_ = opts.indirect_threshold == 0 ? 1 : opts.indirect_threshold;
    }
    next_.resize(size_);
    free_stack_.resize(size_);
    slots_.resize(size_);
    this->shadow_.resize(size_);
    init_ring();
  }
  split_driver(const split_driver&) = delete;
  split_driver& operator=(const split_driver&) = delete;

  std::uint32_t size() const noexcept { return size_; }
  std::uint32_t num_free() const {
    guard g(this->lock_);
    return num_free_;
  }

  /// Stages a chain: `out` device-readable buffers then `in` device-writable ones. Nothing is
  /// visible to the device until kick_prepare(). no_space leaves the queue unchanged.
  errc add(std::span<const buffer> out, std::span<const buffer> in, token_t token) {
    guard g(this->lock_);
    return add_locked(out, in, token);
  }

  /// The receive hot path for a batch: stages min(n, num_free()) chains of one device-writable
  /// buffer each, token i for bufs[i], and returns how many. Fewer than n (ring full) counts
  /// once in stats().ring_full. invalid_argument if the spans differ in size (nothing staged);
  /// broken. Nothing is visible to the device until kick_prepare().
  result<std::size_t> add_inbufs(std::span<const buffer> bufs, std::span<const token_t> tokens) {
    if (bufs.size() != tokens.size()) [[unlikely]]
      return errc::invalid_argument;
    return add_ones<true>(bufs.size(), buffer_arrays{bufs.data(), tokens.data()});
  }
  /// add_inbufs with device-readable buffers (a transmit queue).
  result<std::size_t> add_outbufs(std::span<const buffer> bufs, std::span<const token_t> tokens) {
    if (bufs.size() != tokens.size()) [[unlikely]]
      return errc::invalid_argument;
    return add_ones<false>(bufs.size(), buffer_arrays{bufs.data(), tokens.data()});
  }
  /// add_inbufs with the buffers and tokens from src (read once per buffer staged, under the
  /// queue's lock): the receive queue reposts its pool's buffers by index this way.
  template <buffer_source S>
  result<std::size_t> add_inbufs_from(std::size_t n, const S& src) {
    return add_ones<true>(n, src);
  }

 private:
  errc add_locked(std::span<const buffer> out, std::span<const buffer> in, token_t token) {
    if (this->broken()) return errc::broken;
    const std::size_t n = out.size() + in.size();
    // 2.7.5.2: "A driver MUST NOT create a descriptor chain longer than the Queue Size".
    if (n == 0 || n > size_) return errc::invalid_argument;
    std::uint64_t total = 0;
    std::uint64_t writable = 0;
    for (const buffer& b : out) total += b.len;
    for (const buffer& b : in) writable += b.len;
    total += writable;
    // 2.7.5.2: a chain's total length is at most 2^32 bytes.
    if (total > (std::uint64_t{1} << 32)) return errc::invalid_argument;
    const bool indirect = n >= indirect_min_ && n <= opts_.indirect_max;
    const std::uint32_t needed = indirect ? 1U : static_cast<std::uint32_t>(n);
    if (needed > num_free_) {
      ++this->stats_.ring_full;
      return errc::no_space;
    }
    const std::uint16_t head = free_desc(0);
    if (indirect) {
      auto* table = reinterpret_cast<split::desc*>(indirect_.table(head));
      std::uint16_t i = 0;
      const auto fill = [&](const buffer& b, std::uint16_t flags) {
        split::desc& d = table[i];
        const bool more = std::size_t{i} + 1 < n;
        put<E>(d.addr, b.addr);
        put<E>(d.len, b.len);
        put<E>(d.flags, static_cast<std::uint16_t>(flags | (more ? split::desc_f_next : 0U)));
        put<E>(d.next, static_cast<std::uint16_t>(more ? i + 1U : 0U));
        ++i;
      };
      for (const buffer& b : out) fill(b, 0);
      for (const buffer& b : in) fill(b, split::desc_f_write);
      split::desc& d = ring_.table[head];
      put<E>(d.addr, indirect_.guest(head));
      put<E>(d.len, static_cast<std::uint32_t>(n * sizeof(split::desc)));
      put<E>(d.flags, split::desc_f_indirect);
      put<E>(d.next, 0);
    } else {
      std::uint32_t k = 0;
      const auto fill = [&](const buffer& b, std::uint16_t flags) {
        const std::uint16_t i = free_desc(k);
        split::desc& d = ring_.table[i];
        const bool more = ++k < n;
        const std::uint16_t link = more ? free_desc(k) : 0;
        put<E>(d.addr, b.addr);
        put<E>(d.len, b.len);
        put<E>(d.flags, static_cast<std::uint16_t>(flags | (more ? split::desc_f_next : 0U)));
        put<E>(d.next, link);
        next_[i] = link;  // the private copy, which reaping and checked mode follow
      };
      for (const buffer& b : out) fill(b, 0);
      for (const buffer& b : in) fill(b, split::desc_f_write);
    }
    take_descs(needed);
    if (needed != 1) ++multi_desc_chains_;
    slots_[head] = slot{writable + 1U, token, avail_shadow_, needed};
    if (!shadow_walk(head, detail::desc_state::free, detail::desc_state::avail)) {
      return fail(errc::state_violation);
    }
    stage(head);
    return errc::ok;
  }

  // add_inbufs / add_outbufs. The batch loop keeps the driver's indices in locals (stores
  // through the private arrays would otherwise force reloads) and tests nothing per buffer:
  // the room was counted once, a one-descriptor chain cannot break a length rule (2.7.5.2),
  // and broken / indirect / checked are per call.
  template <bool Writable, buffer_source S>
  result<std::size_t> add_ones(std::size_t n, const S& src) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    if (P::checked || indirect_min_ <= 1) [[unlikely]]
      return add_ones_general<Writable>(n, src);
    const std::uint32_t k = static_cast<std::uint32_t>(std::min<std::size_t>(n, num_free_));
    if (k < n) ++this->stats_.ring_full;
    if (in_order_) {
      add_ones_in_order<Writable>(src, k);
    } else {
      add_ones_any_order<Writable>(src, k);
    }
    avail_shadow_ = detail::u16(avail_shadow_ + k);
    num_free_ -= k;
    if (k != 0) {
      this->stats_.added += k;
      this->note_free(num_free_);
    }
    return std::size_t{k};
  }
  // Heads from the top of the free stack (num_free_ is updated by the caller).
  template <bool Writable, buffer_source S>
  void add_ones_any_order(S src, std::uint32_t k) noexcept {
    split::desc* const table = ring_.table;
    const split::avail_ring avail = ring_.avail;
    const std::uint16_t* top = free_stack_.data() + num_free_;
    slot* const slots = slots_.data();
    std::uint16_t seq = avail_shadow_;
    std::uint32_t pos = seq & mask_;
    // At most two runs of ring entries (before and after the end of the ring), each indexed
    // linearly: no mask per entry.
    for (std::uint32_t i = 0; i < k; pos = 0) {
      const std::uint32_t run_end = i + std::min(k - i, size_ - pos);
      wire<std::uint16_t>* entry = &avail.ring(pos);
      for (; i < run_end; ++i, ++entry) {
        const std::uint16_t head = *--top;
        // No NEXT flag, so the device never reads `next` (2.7.5): it is not written.
        split::desc& d = table[head];
        put<E>(d.addr, src.addr());
        const std::uint32_t len = src.len();
        put<E>(d.len, len);
        put<E>(d.flags, Writable ? split::desc_f_write : std::uint16_t{0});
        slot& s = slots[head];
        s.token = src.token();
        src.advance();
        s.limit = (Writable ? std::uint64_t{len} : 0U) + 1U;
        s.seq = seq;  // s.ndesc is 1 already (slot::ndesc)
        put<E>(*entry, head);
        ++seq;
      }
    }
  }
  // IN_ORDER (2.7.9): the free descriptors are one run from free_head_, so each head is the
  // previous one + 1 (no stack load), reaping in order gives descriptors back by advancing the
  // run (no stack push) and is_staged knows staged chains by their descriptors (no slot::seq).
  // Heads and ring entries advance together: runs end where either wraps.
  template <bool Writable, buffer_source S>
  VIRTQ_ONE_LOOP void add_ones_in_order(S src, std::uint32_t k) noexcept {
    const std::uint32_t size = size_;
    std::uint32_t head = free_head_;
    std::uint32_t pos = avail_shadow_ & mask_;
    for (std::uint32_t i = 0; i < k;) {
      const std::uint32_t run = std::min({k - i, size - pos, size - head});
      split::desc* d = ring_.table + head;
      slot* s = slots_.data() + head;
      wire<std::uint16_t>* entry = &ring_.avail.ring(pos);
      for (std::uint32_t j = 0; j < run; ++j) {
        // No NEXT flag: `next` is not written (2.7.5), as in add_ones_any_order.
        put<E>(d[j].addr, src.addr());
        const std::uint32_t len = src.len();
        put<E>(d[j].len, len);
        put<E>(d[j].flags, Writable ? split::desc_f_write : std::uint16_t{0});
        s[j].limit = (Writable ? std::uint64_t{len} : 0U) + 1U;  // s[j].ndesc is 1 already
        s[j].token = src.token();
        src.advance();
        put<E>(entry[j], detail::u16(head + j));
      }
      i += run;
      pos = (pos + run) & mask_;
      head = (head + run) & mask_;
    }
    free_head_ = detail::u16(head);
  }
  // Single buffers go indirect, or checked mode: one add per buffer, under the lock held.
  template <bool Writable, buffer_source S>
  [[gnu::noinline]] result<std::size_t> add_ones_general(std::size_t n, S src) {
    std::size_t k = 0;
    for (; k < n; ++k) {
      const buffer b{src.addr(), src.len()};
      const token_t t = src.token();
      src.advance();
      const std::span<const buffer> one(&b, 1);
      const errc e = Writable ? add_locked({}, one, t) : add_locked(one, {}, t);
      if (e == errc::ok) continue;
      if (e == errc::no_space || k > 0) break;  // no_space counted once, in add_locked
      return e;
    }
    return k;
  }

 public:
  /// The receive hot path: one device-writable buffer (no indirect, no loops over spans).
  errc add_inbuf(buffer b, token_t token) {
    // Single buffers go indirect too, or no room: the general path (out of line, so that
    // this one stays small enough to inline into the caller's loop).
    if (indirect_min_ <= 1) [[unlikely]]
      return add_inbuf_general(b, token);
    guard g(this->lock_);
    if (this->broken() | (num_free_ == 0)) [[unlikely]]
      return refuse();
    const std::uint16_t head = free_desc(0);
    take_descs(1);
    // No NEXT flag, so the device never reads `next` (2.7.5): it is not written.
    split::desc& d = ring_.table[head];
    put<E>(d.addr, b.addr);
    put<E>(d.len, b.len);
    put<E>(d.flags, split::desc_f_write);
    // Field by field: a whole-struct store makes the compiler assemble the small fields.
    slot& s = slots_[head];
    s.token = token;
    s.limit = std::uint64_t{b.len} + 1U;
    s.seq = avail_shadow_;  // s.ndesc is 1 already (slot::ndesc)
    if (!shadow_walk(head, detail::desc_state::free, detail::desc_state::avail)) {
      return fail(errc::state_violation);
    }
    stage(head);
    return errc::ok;
  }

  /// Publishes the staged chains and says whether the device wants a notification.
  bool kick_prepare() {
    guard g(this->lock_);
    if (this->broken()) return false;
    const std::uint16_t old_idx = avail_published_;
    const std::uint16_t new_idx = avail_shadow_;
    if (old_idx == new_idx) return false;  // nothing new: nothing to tell
    if constexpr (P::checked) {
      for (std::uint16_t i = old_idx; i != new_idx; ++i) {
        const std::uint16_t head = get<E>(ring_.avail.ring(i & mask_));
        if (head >= size_ ||
            !shadow_walk(head, detail::desc_state::avail, detail::desc_state::device)) {
          fail(errc::state_violation);
          return false;
        }
      }
    }
    // D1 (pairs with V1) 2.7.13.3: "The driver performs a suitable memory barrier to ensure the
    // device sees the updated descriptor table and available ring before the next step", then
    // publishes idx. The release store orders every descriptor and ring entry before it.
    B::before_publish();
    store_release<E>(ring_.avail.idx(), new_idx);
    avail_published_ = new_idx;
    published_free_head_ = free_head_;
    device_chains_ += detail::u16(static_cast<std::uint32_t>(new_idx - old_idx));
    // Staged chains are bounded by the queue size (< 2^16), so (u16)(new - old) never aliases
    // and the "2^16 added since the last check" rule of 2.7.10 cannot arise.
    bool notify = true;
    if (mode_ != mode::none) {
      // D2 (pairs with V4) 2.7.13.4: "the driver MUST perform a suitable memory barrier before
      // reading flags or avail_event, to avoid missing a notification": our idx store must be
      // visible before we read the device's suppression field (store->load).
      B::full();
      notify = detail::split_peer_wants<E>(mode_, ring_.used.avail_event(), ring_.used.flags(),
                                           split::used_f_no_notify, new_idx, old_idx);
    }
    ++(notify ? this->stats_.kicks : this->stats_.kicks_suppressed);
    return notify;
  }

  /// VIRTIO_F_NOTIFICATION_DATA: vqn | avail idx << 16 (the idx as published by kick_prepare).
  std::uint32_t notification_data(std::uint16_t vq) const {
    guard g(this->lock_);
    return encode_split_notification(vq, avail_published_);
  }

  /// One completion, errc::empty, or a fatal errc (the queue is then broken).
  result<used_buffer> get_used() {
    guard g(this->lock_);
    used_buffer u{};
    const errc e = reap_one(u);
    if (e != errc::ok) return e;
    after_reap();
    return u;
  }

  /// Up to out.size() completions. A fatal error after some completions were reaped returns
  /// that count (error() says why; the next call returns errc::broken).
  result<std::size_t> get_used(std::span<used_buffer> out) {
    guard g(this->lock_);
    if constexpr (!P::checked) {
      // One element goes to reap_one below: the batch loops are out of line, and their call
      // costs more than one element saves.
      if (out.size() != 1) return in_order_ ? reap_in_order(out) : reap_batch(out);
    }
    std::size_t n = 0;
    for (; n < out.size(); ++n) {
      const errc e = reap_one(out[n]);
      if (e == errc::empty) break;
      if (e != errc::ok) {
        if (n == 0) return e;
        break;
      }
    }
    if (n > 0) after_reap();
    return n;
  }

  /// Asks the device not to interrupt (a hint: it may still do so once).
  void disable_interrupts() {
    guard g(this->lock_);
    if (this->broken() || !interrupts_on_) return;
    if (mode_ == mode::none) return;  // never ask the device to hold back
    interrupts_on_ = false;
    if (mode_ == mode::flags) {
      store_relaxed<E>(ring_.avail.flags(), split::avail_f_no_interrupt);
    } else {
      // 2.7.10: with EVENT_IDX the flags are ignored; park used_event just behind the used idx
      // so the device would have to go a whole 2^16 round before it matched.
      store_relaxed<E>(ring_.avail.used_event(), detail::u16(last_used_ - 1U));
    }
  }

  /// Asks for an interrupt at the next used buffer. Returns true if used buffers are already
  /// pending (arrived before the request took effect): poll again instead of sleeping.
  bool enable_interrupts() {
    guard g(this->lock_);
    if (this->broken()) return false;
    delayed_ = false;
    return arm(0);
  }

  /// Like enable_interrupts(), but asks for the interrupt only after about 3/4 of the chains the
  /// device holds were used (2.7.10 used_event; Linux's virtqueue_enable_cb_delayed).
  bool enable_interrupts_delayed() {
    guard g(this->lock_);
    if (this->broken()) return false;
    const auto outstanding = static_cast<std::uint32_t>(detail::u16(avail_published_ - last_used_));
    delayed_ = true;
    return arm(detail::u16((outstanding * 3U) >> 2U));
  }

  /// Gives every outstanding token (staged, with the device, or used but not reaped) to
  /// on_token exactly once, then re-initializes the ring (indices at initial_index, interrupts
  /// enabled) and clears the broken state. Call after the device side was reset.
  template <class F>
  void reset(F&& on_token) {
    guard g(this->lock_);
    for (std::uint32_t i = 0; i < size_; ++i) {
      if (slots_[i].limit != 0) {
        slots_[i].limit = 0;
        on_token(slots_[i].token);
      }
    }
    this->shadow_.reset();
    this->clear_error();
    init_ring();
  }

  using base::broken;
  using base::error;
  using base::stats;

 private:
  [[gnu::noinline]] errc add_inbuf_general(buffer b, token_t token) {
    const buffer one[1] = {b};
    return add({}, one, token);
  }
  // With the lock held: why add_inbuf cannot add.
  [[gnu::cold, gnu::noinline]] errc refuse() noexcept {
    if (this->broken()) return errc::broken;
    ++this->stats_.ring_full;
    return errc::no_space;
  }

  // Per head, everything reaping reads, in one record: no array (and no base pointer in the
  // batch loops) per field.
  struct slot {
    /// 0: not outstanding; else the bytes the device may write + 1, so that one compare
    /// (used len < limit) checks both "outstanding" and 2.7.8.2.
    std::uint64_t limit = 0;
    token_t token = 0;
    std::uint16_t seq = 0;  ///< avail idx it was staged at: staged vs. published (not IN_ORDER)
    /// Ring descriptors of the chain. 1 whenever no chain of several holds the head: a chain
    /// of several sets it and its reap puts the 1 back, so one-descriptor adds store nothing.
    std::uint32_t ndesc = 1;
  };

  // The free descriptors. IN_ORDER (2.7.9): one run of ring order from free_head_. Otherwise a
  // stack, free_stack_[0, num_free_), top last: the next head's address is a counter, not the
  // previous head's link (a linked free list made every add wait for one load per buffer:
  // split cycle, batch 32, 145 -> 121 ns per batch without it).
  /// The k-th descriptor that the next take_descs() hands out (k < num_free_).
  std::uint16_t free_desc(std::uint32_t k) const noexcept {
    if (in_order_) return detail::u16((free_head_ + k) & mask_);
    return free_stack_[num_free_ - 1U - k];
  }
  void take_descs(std::uint32_t n) noexcept {
    if (in_order_) free_head_ = detail::u16((free_head_ + n) & mask_);
    num_free_ -= n;
  }
  /// reap_one: frees the descriptors of the chain at `head` (of s.ndesc > 1) after its first,
  /// and puts the record back to one descriptor. Out of line, to keep reap_one inlinable.
  [[gnu::noinline]] void free_chain_rest(std::uint16_t head, slot& s) noexcept {
    if (in_order_) {
      num_free_ += s.ndesc - 1U;
    } else {
      num_free_ = static_cast<std::uint32_t>(
          push_chain_rest(free_stack_.data() + num_free_, head, s.ndesc) - free_stack_.data());
    }
    --multi_desc_chains_;
    s.ndesc = 1;
  }
  /// Gives back the descriptors of a chain of `ndesc` (> 1) from `head`, following the private
  /// links, to the stack whose top is `top` (not IN_ORDER); returns the new top.
  [[gnu::noinline]] std::uint16_t* push_chain_rest(std::uint16_t* top, std::uint16_t head,
                                                   std::uint32_t ndesc) const noexcept {
    std::uint16_t d = head;
    for (std::uint32_t i = 1; i < ndesc; ++i) {
      d = next_[d];
      *top++ = d;
    }
    return top;
  }

  void init_ring() {
    const std::uint16_t start = opts_.initial_index;
    // 2.7.9: with IN_ORDER the free descriptors are the run from free_head_ (free_desc). The
    // stack otherwise, popped from the top: descriptors 0, 1, 2, ... first.
    for (std::uint32_t i = 0; i < size_; ++i) free_stack_[i] = detail::u16(size_ - 1U - i);
    for (slot& s : slots_) s = slot{};
    free_head_ = 0;
    num_free_ = size_;
    multi_desc_chains_ = 0;
    avail_shadow_ = avail_published_ = start;
    published_free_head_ = 0;
    last_used_ = used_cache_ = start;
    device_chains_ = 0;
    batch_active_ = false;
    interrupts_on_ = true;
    delayed_ = false;
    std::memset(static_cast<void*>(ring_.table), 0, split::desc_table_bytes(size_));
    // 2.7.6 / 2.7.8: both rings start at the agreed index with no suppression asked for.
    // 2.7.10: with EVENT_IDX negotiated the driver keeps avail flags 0.
    store_relaxed<E>(ring_.avail.flags(), 0);
    store_relaxed<E>(ring_.avail.used_event(), start);
    store_relaxed<E>(ring_.used.flags(), 0);
    store_relaxed<E>(ring_.used.avail_event(), start);
    store_relaxed<E>(ring_.used.idx(), start);
    // D1 (pairs with V1), at (re)initialization: the zeroed table and the fields above are
    // written before avail idx, so a device that acquires the idx sees the ring initialized.
    store_release<E>(ring_.avail.idx(), start);
  }

  void stage(std::uint16_t head) noexcept {
    put<E>(ring_.avail.ring(avail_shadow_ & mask_), head);
    ++avail_shadow_;
    ++this->stats_.added;
    this->note_free(num_free_);
  }

  // Checked mode: move every ring descriptor of a chain from one state to another, following
  // the private links.
  bool shadow_walk(std::uint16_t head, detail::desc_state from, detail::desc_state to) noexcept {
    if constexpr (P::checked) {
      std::uint16_t d = head;
      for (std::uint32_t i = 0; i < slots_[head].ndesc; ++i, d = next_[d]) {
        if (!this->shadow_.move(d, from, to)) return false;
      }
    }
    return true;
  }

  // Whether the outstanding chain at `head` is staged (added, not yet published by a kick).
  bool is_staged(std::uint32_t head, const slot& s) const noexcept {
    if (avail_shadow_ == avail_published_) return false;
    if (in_order_) {
      // 2.7.9: chains take descriptors in ring order, so the staged ones hold the descriptors
      // from published_free_head_ up to free_head_ (all of them when the two meet with
      // something staged), and the IN_ORDER adds need not record a seq.
      std::uint32_t staged = (free_head_ - published_free_head_) & mask_;
      if (staged == 0) staged = size_;
      return ((free_head_ - 1U - head) & mask_) < staged;
    }
    return detail::u16(s.seq - avail_published_) < detail::u16(avail_shadow_ - avail_published_);
  }

  // Why a used element (id, len) cannot be accepted, or ok. The hot paths test the same with
  // one branch and come here only to name the rule.
  [[gnu::cold, gnu::noinline]] errc used_reason(std::uint32_t id,
                                                std::uint32_t len) const noexcept {
    // 2.7.8: id is a descriptor-chain head, an index into the table of Queue Size entries.
    if (id >= size_) return errc::used_id_out_of_range;
    // Only chains the driver published and has not reaped can be used.
    const slot& s = slots_[id];
    if (s.limit == 0 || is_staged(id, s)) return errc::used_id_not_outstanding;
    // 2.7.8.2: the device MUST NOT report more than it could have written.
    if (len >= s.limit) return errc::used_len_too_large;
    return errc::ok;
  }

  // Reads and checks the next used element. The device is untrusted: its id indexes our arrays
  // only after the range check, and only outstanding, published heads are accepted.
  errc read_used(std::uint16_t& id, std::uint32_t& len) {
    if (last_used_ == used_cache_) {
      // D3 (pairs with V2) 2.7.14: the acquire load of used idx orders our reads of the used
      // elements after the device's writes of them.
      const std::uint16_t idx = load_acquire<E>(ring_.used.idx());
      B::after_observe();
      // The device cannot have used more chains than it holds.
      if (detail::u16(idx - last_used_) > device_chains_) return fail(errc::used_idx_jump);
      used_cache_ = idx;
      if (idx == last_used_) return errc::empty;
    }
    const split::used_elem& e = ring_.used.ring(last_used_ & mask_);
    const std::uint32_t raw_id = get<E>(e.id);
    len = get<E>(e.len);
    const errc why = used_reason(raw_id, len);
    if (why != errc::ok) return fail(why);
    id = detail::u16(raw_id);
    ++last_used_;
    return errc::ok;
  }

  // get_used(span) without IN_ORDER batches or checked mode: the same checks as read_used and
  // reap_one, with the driver's indices in locals for the whole batch (stores through the
  // private arrays would otherwise force reloads) and one branch per element for the usual case.
  result<std::size_t> reap_batch(std::span<used_buffer> out) {
    if (this->broken()) [[unlikely]] {
      if (out.empty()) return std::size_t{0};
      return errc::broken;
    }
    // Nothing staged since the last kick (the usual case when reaping): then no outstanding
    // chain can be staged, and the outstanding test is the limit compare alone.
    if (multi_desc_chains_ == 0) {
      if (avail_shadow_ == avail_published_) return reap_batch_as<false, true>(out);
      return reap_batch_as<true, true>(out);
    }
    if (avail_shadow_ == avail_published_) return reap_batch_as<false, false>(out);
    return reap_batch_as<true, false>(out);
  }

  // Out of line (one call per batch): inlined into get_used, GCC kept the caller's values in
  // registers and reloaded the loop's base pointers from the stack per element (2 more
  // instructions per chain). The same for reap_in_order_run.
  // OneDesc: every chain in use has one ring descriptor (multi_desc_chains_ == 0), so an id
  // that passes the checks names one: no descriptor count to read per chain.
  template <bool AnyStaged, bool OneDesc>
  [[gnu::noinline]] result<std::size_t> reap_batch_as(std::span<used_buffer> out) {
    std::size_t n = 0;
    errc bad = errc::ok;
    std::uint16_t last = last_used_;
    std::uint16_t cache = used_cache_;
    // The free stack through a pointer: one store and one increment per chain.
    std::uint16_t* top = free_stack_.data() + num_free_;
    std::uint32_t multi_reaped = 0;  // !OneDesc: chains of several descriptors reaped
    const std::uint32_t size = size_;
    const std::uint32_t mask = mask_;
    const split::used_ring used = ring_.used;
    slot* const slots = slots_.data();
    const std::uint16_t published = avail_published_;
    const std::uint16_t staged = detail::u16(avail_shadow_ - avail_published_);
    while (n < out.size()) {
      if (last == cache) {
        // D3 (pairs with V2) 2.7.14: the acquire load of used idx orders our reads of the used
        // elements after the device's writes of them.
        const std::uint16_t idx = load_acquire<E>(ring_.used.idx());
        B::after_observe();
        // The device cannot have used more chains than it holds.
        if (detail::u16(idx - last) > device_chains_ - n) {
          bad = errc::used_idx_jump;
          break;
        }
        cache = idx;
        if (idx == last) break;
      }
      const std::size_t end = n + std::min<std::size_t>(detail::u16(cache - last), out.size() - n);
      // At most two runs of used elements (before and after the end of the ring), each read
      // linearly.
      for (std::uint32_t pos = last & mask; n < end && bad == errc::ok; pos = 0) {
        const std::size_t start = n;
        const std::size_t run_end = n + std::min<std::size_t>(end - n, size - pos);
        const split::used_elem* e = &used.ring(pos);
        // The output through a pointer as well: one increment, not an index scaled each time.
        used_buffer* o = out.data() + n;
        used_buffer* const o_end = out.data() + run_end;
        for (; o != o_end; ++o, ++e) {
          const std::uint32_t id = get<E>(e->id);
          const std::uint32_t len = get<E>(e->len);
          // In range (tested first: the slot is read at a checked index), outstanding
          // (limit != 0), within its writable bytes (2.7.8.2: len < limit) and published:
          // used_reason names which.
          if (id >= size) [[unlikely]] {
            bad = used_reason(id, len);
            break;
          }
          slot& s = slots[id];
          bool refused = len >= s.limit;
          if constexpr (AnyStaged) refused |= detail::u16(s.seq - published) < staged;
          if (refused) [[unlikely]] {
            bad = used_reason(id, len);
            break;
          }
          *o = used_buffer{s.token, len};
          *top++ = detail::u16(id);
          if constexpr (!OneDesc) {
            if (s.ndesc != 1) [[unlikely]] {
              top = push_chain_rest(top, detail::u16(id), s.ndesc);
              ++multi_reaped;
              s.ndesc = 1;
            }
          }
          s.limit = 0;
        }
        n = static_cast<std::size_t>(o - out.data());
        last = detail::u16(last + static_cast<std::uint32_t>(n - start));
      }
      if (bad != errc::ok) break;
    }
    last_used_ = last;
    used_cache_ = cache;
    num_free_ = static_cast<std::uint32_t>(top - free_stack_.data());
    multi_desc_chains_ -= multi_reaped;
    device_chains_ -= static_cast<std::uint32_t>(n);
    this->stats_.reaped += n;
    if (bad != errc::ok) {
      fail(bad);
      if (n == 0) return bad;
    }
    if (n > 0) after_reap();
    return n;
  }

  // get_used(span) with IN_ORDER (2.7.9), not checked. A device may write one used element per
  // chain (the rule for receive queues, whose lengths matter) or one standing for several.
  // The first kind names the oldest outstanding chain: reap_in_order_run takes runs of those.
  // Anything else (an element standing for a batch, or a bad one) goes to reap_one, which takes
  // the batch chain by chain or names the rule the element breaks.
  result<std::size_t> reap_in_order(std::span<used_buffer> out) {
    if (this->broken()) [[unlikely]] {
      if (out.empty()) return std::size_t{0};
      return errc::broken;
    }
    std::size_t n = 0;
    errc e = errc::ok;
    while (n < out.size()) {
      if (!batch_active_) {
        n = multi_desc_chains_ == 0 ? reap_in_order_run<true>(out, n, e)
                                    : reap_in_order_run<false>(out, n, e);
        if (e != errc::ok || n == out.size()) break;
      }
      e = reap_one(out[n]);
      if (e != errc::ok) break;
      ++n;
    }
    if (e != errc::ok && e != errc::empty && n == 0) return e;
    if (n > 0) after_reap();
    return n;
  }

  // Reaps used elements into out[n..] while each names the oldest outstanding chain: returns
  // the new n. Stops at the end of `out`, at an empty ring (e = empty), at an element it does
  // not take (e = ok: for reap_one), or at a used idx jump (e set, the queue broken). The
  // checks are read_used's: the id is the oldest outstanding head (so in range, 2.7.8, and
  // outstanding: limit != 0), its len within its writable bytes (2.7.8.2: len < limit), and it
  // was published: the published chains are the oldest device_chains_ outstanding ones, so
  // the run takes at most that many. The driver's indices stay in locals for the run.
  // OneDesc as in reap_batch_as: the next chain starts one descriptor on.
  template <bool OneDesc>
  [[gnu::noinline]] std::size_t reap_in_order_run(std::span<used_buffer> out, std::size_t n,
                                                  errc& e) {
    const std::size_t first = n;
    std::uint16_t last = last_used_;
    std::uint16_t cache = used_cache_;
    // 2.7.9: the free descriptors are one run from free_head_; the oldest outstanding chain
    // starts right after it.
    const std::uint32_t from = (free_head_ + num_free_) & mask_;
    std::uint32_t oldest = from;
    const std::uint32_t size = size_;
    const std::uint32_t mask = mask_;
    const split::used_ring used = ring_.used;
    slot* const slots = slots_.data();
    std::uint32_t multi_reaped = 0;  // !OneDesc: chains of several descriptors reaped
    bool stop = false;
    while (n < out.size() && !stop) {
      if (last == cache) {
        // D3 (pairs with V2) 2.7.14: the acquire load of used idx orders our reads of the used
        // elements after the device's writes of them.
        const std::uint16_t idx = load_acquire<E>(ring_.used.idx());
        B::after_observe();
        // The device cannot have used more chains than it holds.
        if (detail::u16(idx - last) > device_chains_ - (n - first)) {
          e = errc::used_idx_jump;
          break;
        }
        cache = idx;
        if (idx == last) {
          e = errc::empty;
          break;
        }
      }
      // An element beyond the published chains (possible after one that stood for several,
      // read by reap_one under an earlier idx check) is reap_one's to refuse.
      const std::size_t published = device_chains_ - (n - first);
      if (published == 0) break;
      const std::size_t end =
          n + std::min({std::size_t{detail::u16(cache - last)}, out.size() - n, published});
      // At most two runs of used elements (before and after the end of the ring), each read
      // linearly.
      for (std::uint32_t pos = last & mask; n < end && !stop; pos = 0) {
        const std::size_t start = n;
        const std::size_t run_end = n + std::min<std::size_t>(end - n, size - pos);
        const split::used_elem* u = &used.ring(pos);
        for (; n < run_end; ++n, ++u) {
          const std::uint32_t id = get<E>(u->id);
          const std::uint32_t len = get<E>(u->len);
          slot& s = slots[oldest];
          if ((id != oldest) | (len >= s.limit)) [[unlikely]] {
            stop = true;
            break;
          }
          out[n] = used_buffer{s.token, len};
          if constexpr (OneDesc) {
            oldest = (oldest + 1U) & mask;
          } else {
            multi_reaped += s.ndesc != 1;
            oldest = detail::step_by_chain(oldest, s.ndesc) & mask;
            s.ndesc = 1;
          }
          s.limit = 0;
        }
        last = detail::u16(last + static_cast<std::uint32_t>(n - start));
      }
    }
    // The descriptors freed are those from `from` to `oldest`, no count kept per chain: at
    // least one per chain taken and at most the whole ring, so equal ends after taking any
    // mean the whole ring.
    std::uint32_t freed = (oldest - from) & mask;
    if (freed == 0 && n != first) freed = size;
    last_used_ = last;
    used_cache_ = cache;
    num_free_ += freed;
    multi_desc_chains_ -= multi_reaped;
    device_chains_ -= static_cast<std::uint32_t>(n - first);
    this->stats_.reaped += n - first;
    if (e == errc::used_idx_jump) fail(e);
    return n;
  }

  errc reap_one(used_buffer& out) {
    if (this->broken()) return errc::broken;
    std::uint16_t head = 0;
    std::uint32_t len = 0;
    if (!in_order_) {
      const errc e = read_used(head, len);
      if (e != errc::ok) return e;
    } else {
      // 2.7.9: one used element may stand for a batch: it names the last chain, the chains
      // before it (in ring order) are used too. Their lengths are not reported (0).
      if (!batch_active_) {
        const errc e = read_used(batch_id_, batch_len_);
        if (e != errc::ok) return e;
        batch_active_ = true;
      }
      head = detail::u16((free_head_ + num_free_) & mask_);  // the oldest outstanding chain
      if (head == batch_id_) {
        len = batch_len_;
        batch_active_ = false;
      }
    }
    slot& s = slots_[head];
    if (!shadow_walk(head, detail::desc_state::device, detail::desc_state::used) ||
        !shadow_walk(head, detail::desc_state::used, detail::desc_state::free)) {
      return fail(errc::state_violation);
    }
    out = used_buffer{s.token, len};
    // The head first, then the rest: the order of reap_batch_as, so that both reaps leave the
    // same free stack.
    if (in_order_) {
      ++num_free_;
    } else {
      free_stack_[num_free_++] = head;
    }
    if (s.ndesc != 1) [[unlikely]]
      free_chain_rest(head, s);
    s.limit = 0;
    --device_chains_;
    ++this->stats_.reaped;
    return errc::ok;
  }

  // 2.7.10: with EVENT_IDX the device reads only used_event. While interrupts are enabled (and
  // always with suppress_none) keep it at the next used element we will read, so "enabled"
  // means an interrupt for every new used buffer, as with the flags. A delayed request stays put.
  void after_reap() noexcept {
    if (none_with_event_ || (mode_ == mode::event && interrupts_on_ && !delayed_)) {
      store_relaxed<E>(ring_.avail.used_event(), last_used_);
    }
  }

  bool arm(std::uint16_t ahead) {
    interrupts_on_ = true;
    if (mode_ == mode::flags) {
      store_relaxed<E>(ring_.avail.flags(), 0);
    } else if (mode_ == mode::event) {
      // 2.7.10: the device interrupts once used idx passes used_event.
      store_relaxed<E>(ring_.avail.used_event(), detail::u16(last_used_ + ahead));
    }
    // D4 (pairs with V3) 2.7.14 / 2.7.7.2: our request must be visible before we re-read used
    // idx, or the device may complete in between, read the old request and stay silent while
    // we go to sleep.
    if (used_cache_ != last_used_ || batch_active_) return true;  // seen, not yet reaped
    B::full();
    const std::uint16_t idx = load_acquire<E>(ring_.used.idx());
    return detail::u16(idx - last_used_) > ahead;
  }

  split::ring_view ring_;
  mode mode_;
  bool in_order_;
  bool none_with_event_;
  bool interrupts_on_ = true;
  bool delayed_ = false;
  bool batch_active_ = false;
  driver_options opts_;
  std::uint32_t size_ = 0;
  std::uint32_t mask_ = 0;
  std::uint32_t num_free_ = 0;
  std::uint32_t indirect_min_ = std::numeric_limits<std::uint32_t>::max();
  std::uint16_t free_head_ = 0;
  std::uint16_t avail_shadow_ = 0;         ///< next avail idx to stage at (private)
  std::uint16_t avail_published_ = 0;      ///< avail idx at the last kick_prepare
  std::uint16_t published_free_head_ = 0;  ///< free_head_ at the last kick_prepare (IN_ORDER)
  std::uint16_t last_used_ = 0;            ///< next used element to read
  std::uint16_t used_cache_ = 0;           ///< last used idx read from the ring
  std::uint32_t device_chains_ = 0;        ///< published chains not yet reaped
  /// Chains in use (staged or outstanding) of more than one ring descriptor: while there are
  /// none, the batch reaps read no descriptor count (reap_batch_as / reap_in_order_run OneDesc).
  std::uint32_t multi_desc_chains_ = 0;
  std::uint16_t batch_id_ = 0;  ///< IN_ORDER: head named by the current used element
  std::uint32_t batch_len_ = 0;
  std::vector<std::uint16_t> next_;        ///< private links of chains of several descriptors
  std::vector<std::uint16_t> free_stack_;  ///< free descriptors, not IN_ORDER (free_desc)
  std::vector<slot> slots_;                ///< per head
  detail::indirect_tables indirect_;       ///< one table per head (opts_.indirect_max entries)
};

// =============================================================================================
// Device side
// =============================================================================================

/// The device side of a split ring. `mem` translates the driver's addresses and must outlive
/// the queue (a pointer to it is kept). Cache-line aligned, like split_driver.
template <queue_policy_type P = default_policy, memory_map M = identity_memory>
class alignas(64) split_device : public detail::queue_common<P> {
  using base = detail::queue_common<P>;
  using E = typename P::endian;
  using B = typename P::barriers;
  using guard = typename base::guard;
  using mode = detail::split_suppress;
  using detail::queue_common<P>::fail;

 public:
  /// Throws virtq::error: bad_queue_size (invalid ring view), feature_missing /
  /// feature_conflict (policy vs. features).
  split_device(split::ring_view ring, features f, const M& mem, device_options opts = {})
      : ring_(ring),
        mem_(&mem),
        mode_(detail::split_mode<P>(f)),
        event_negotiated_(f.has(feature::event_idx)),
        indirect_ok_(f.has(feature::indirect_desc)),
        in_order_(f.has(feature::in_order)),
        opts_(opts) {
    detail::check_features<P>(f, false);
    if (!valid_split_size(ring.size) || ring.table == nullptr || ring.avail.hdr == nullptr ||
        ring.used.hdr == nullptr) {
      detail::throw_error(errc::bad_queue_size, "split_device: invalid ring view");
    }
    size_ = ring.size;
    mask_ = size_ - 1;
    held_.resize(size_);
    if (in_order_) order_.resize(size_);
    this->shadow_.resize(size_);
    links_.resize(size_);
    init();
  }
  split_device(const split_device&) = delete;
  split_device& operator=(const split_device&) = delete;

  std::uint32_t size() const noexcept { return size_; }
  /// The next avail entry the device reads (vhost-user's GET_VRING_BASE; device_options::
  /// initial_index resumes there).
  std::uint16_t avail_position() const {
    guard g(this->lock_);
    return last_avail_;
  }

  /// The next available chain, walked and validated into `c`; errc::empty; or a fatal errc
  /// (the queue is then broken).
  errc pop(chain& c) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    if (last_avail_ == avail_cache_) {
      const errc e = refresh_avail();
      if (e != errc::ok) return e;
    }
    const std::uint16_t head = get<E>(ring_.avail.ring(last_avail_ & mask_));
    if ((head >= size_) | (held_[head & mask_] != 0)) [[unlikely]]
      return fail(bad_head(head));
    // The driver may rewrite the descriptor under us: copy it out once, decide on the copy.
    const split::desc d = ring_.table[head];
    const std::uint16_t flags = get<E>(d.flags);
    errc e;
    if ((flags & (split::desc_f_next | split::desc_f_indirect)) == 0) [[likely]] {
      // One descriptor, no linking to follow: the walk below would do the same in one turn.
      links_.start();
      links_.visit(head);
      e = c.begin_one(*mem_, head, size_, get<E>(d.addr), get<E>(d.len),
                      (flags & split::desc_f_write) != 0);
      c.set_ring_slots(1);
    } else {
      e = walk(c, head, d);
    }
    if (e != errc::ok) [[unlikely]]
      return fail(e);
    if (!links_.commit(this->shadow_, head)) return fail(errc::state_violation);
    held_[head] = c.writable_bytes() + 1;
    if (in_order_) {
      order_[(order_head_ + held_count_) & mask_] = head;
    }
    ++held_count_;
    ++last_avail_;
    ++this->stats_.popped;
    if (follow_avail_) {
      // 2.7.10: with EVENT_IDX the driver reads only avail_event. While notifications are
      // enabled (always with suppress_none) keep it at the next entry we will read.
      store_relaxed<E>(ring_.used.avail_event(), last_avail_);
    }
    return errc::ok;
  }

  /// The batch pop for chains of exactly one direct descriptor (the receive fast path, and
  /// that of simple transmit queues): up to out.size() of them, validated as pop() validates
  /// (avail idx, head range, re-offered head, address translation; a zero-length buffer has
  /// data == nullptr and is not translated). It stops BEFORE the first chain that is not a
  /// single direct descriptor (NEXT or INDIRECT set) and leaves it for pop(chain&): so 0 means
  /// either "nothing available" or "the next chain needs pop(chain&)"; a caller that can see
  /// longer chains calls pop(chain&) when this returns fewer than it asked for.
  /// A fatal error with nothing popped returns that errc (the queue is broken); after k > 0
  /// pops it returns k (the queue is broken, error() says why, the next call returns
  /// errc::broken), as get_used(span) does. Complete each buffer with its `id`.
  result<std::size_t> pop_buffers(std::span<popped_buffer> out) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    // The mode is tested once per batch: the loop is compiled once for each.
    return in_order_ ? pop_ones<true>(out) : pop_ones<false>(out);
  }

  /// complete(id, len) for each entry in order, one lock and one statistics update for all.
  /// Stops at the first entry complete(id, len) would refuse: returns invalid_argument if that
  /// is the first, else the count completed before it (the queue stays usable: the error is
  /// the caller's). errc::broken on a broken queue.
  result<std::size_t> complete(std::span<const used_entry> done) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    errc why;
    const std::size_t n = in_order_ ? complete_n<true>(done.data(), done.size(), why)
                                    : complete_n<false>(done.data(), done.size(), why);
    if (why != errc::ok && n == 0) return why;
    return n;
  }

  /// Stages a used element for chain `id` with `len` bytes written. invalid_argument (a caller
  /// error, the queue stays usable) if `id` is not a held chain, len exceeds its writable space
  /// (2.7.8.2: the device MUST NOT over-state), or, with IN_ORDER, `id` is not the oldest held.
  errc complete(std::uint16_t id, std::uint32_t len) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    if (refused(id, len, held_.data(), size_)) [[unlikely]]
      return errc::invalid_argument;
    if (in_order_) {
      if (!oldest(order_.data(), order_head_, id)) return errc::invalid_argument;
      order_head_ = (order_head_ + 1) & mask_;
    }
    --held_count_;
    if (!release(id)) return fail(errc::state_violation);
    write_used(id, len);
    return errc::ok;
  }
  errc complete(const chain& c, std::uint32_t len) { return complete(c.id(), len); }

  /// pop_buffers and complete in one pass (the contract: device_queue in virtqueue.hpp). Split
  /// specifics: no held record for a chain that never waits, and with nothing held the held
  /// test is compiled out of the loop; a head the driver offers twice within one batch is then
  /// served twice, and the driver's reaping refuses the second used element (2.7.8). With
  /// IN_ORDER, held chains must be used first (2.7.9).
  template <buffer_server F>
  result<std::size_t> serve_buffers(std::size_t max, F&& f) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    if (in_order_ && held_count_ != 0) return errc::invalid_argument;
    // With nothing held no avail entry can name a held head: the test is compiled out.
    return held_count_ == 0 ? serve_ones<false>(max, f) : serve_ones<true>(max, f);
  }

 private:
  // pop_buffers for one IN_ORDER mode, the lock held and the queue not broken.
  template <bool InOrder>
  result<std::size_t> pop_ones(std::span<popped_buffer> out) {
    std::uint32_t avail = detail::u16(avail_cache_ - last_avail_);
    if (avail < out.size()) {
      // Fewer cached than wanted: one look at avail idx per batch.
      const errc e = refresh_avail();
      if (e == errc::empty) return std::size_t{0};
      if (e != errc::ok) return e;
      avail = detail::u16(avail_cache_ - last_avail_);
    }
    const std::uint32_t todo = static_cast<std::uint32_t>(std::min<std::size_t>(avail, out.size()));
    // The batch in locals: stores through held_ / out would otherwise force reloads.
    const split::desc* const table = ring_.table;
    const split::avail_ring ring = ring_.avail;
    std::uint64_t* const held = held_.data();
    std::uint16_t* const order = order_.data();
    const M& mem = *mem_;
    const std::uint32_t size = size_;
    const std::uint32_t mask = mask_;
    std::uint16_t last = last_avail_;
    errc bad = errc::ok;
    std::uint32_t n = 0;
    // At most two runs of avail entries (before and after the end of the ring), each read
    // linearly; a run left early (an error, or a chain for pop(chain&)) ends the batch.
    for (std::uint32_t pos = last & mask; n < todo; pos = 0) {
      const std::uint32_t run_end = n + std::min(todo - n, size - pos);
      const wire<std::uint16_t>* entry = &ring.ring(pos);
      // IN_ORDER: order_ is indexed like the avail ring (see init), so the pop order is recorded
      // at the entry's own position, with no index of its own.
      [[maybe_unused]] std::uint16_t* ord = nullptr;
      if constexpr (InOrder) ord = order + pos;
      for (; n < run_end; ++n, ++entry) {
        popped_buffer b;
        if (!take_entry<true>(get<E>(*entry), table, held, mem, size, b, bad)) break;
        held[b.id] = held_bound(b);
        if constexpr (InOrder) *ord++ = b.id;
        out[n] = b;
      }
      if (n != run_end) break;
    }
    last = detail::u16(last + n);
    last_avail_ = last;
    held_count_ += n;
    this->stats_.popped += n;
    // 2.7.10: avail_event is written once per batch, with the value per-pop updates would end
    // at. The driver notifies only when avail_event lies in [its old idx, its new idx); its old
    // idx is at least the avail idx we read (avail_cache_), and every intermediate value would
    // have been below that, so none of them could have asked for a notification the final one
    // does not.
    if (follow_avail_ && n != 0) store_relaxed<E>(ring_.used.avail_event(), last);
    if (bad != errc::ok) [[unlikely]] {
      fail(bad);
      if (n == 0) return bad;
    }
    return std::size_t{n};
  }

 public:
  /// IN_ORDER batch (2.7.9): completes the next `count` held chains (in the order they were
  /// popped) with one used element carrying the id of the last of them and `len_of_last`.
  errc complete_in_order(std::uint16_t count, std::uint32_t len_of_last) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    if (!in_order_ || count == 0 || count > held_count_) return errc::invalid_argument;
    const std::uint16_t last = order_[(order_head_ + count - 1U) & mask_];
    if (len_of_last >= held_[last]) return errc::invalid_argument;
    for (std::uint32_t i = 0; i < count; ++i) {
      if (!release(order_[order_head_])) return fail(errc::state_violation);
      order_head_ = (order_head_ + 1) & mask_;
    }
    held_count_ -= count;
    write_used(last, len_of_last);
    // queue_stats::completed counts chains (as packed does), not used elements.
    this->stats_.completed += count - 1U;
    return errc::ok;
  }

  /// Publishes the staged used elements and says whether the driver wants an interrupt.
  bool interrupt_prepare() {
    guard g(this->lock_);
    if (this->broken()) return false;
    const std::uint16_t old_idx = used_published_;
    const std::uint16_t new_idx = used_shadow_;
    if (old_idx == new_idx) return false;
    // V2 (pairs with D3) 2.7.8.2 / 2.7.14: the used elements (id, len) are written before
    // used idx; the release store orders them.
    B::before_publish();
    store_release<E>(ring_.used.idx(), new_idx);
    used_published_ = new_idx;
    bool irq = true;
    if (mode_ != mode::none) {
      // V3 (pairs with D4) 2.7.7.2: "the device MUST ... perform a suitable memory barrier
      // before reading flags / used_event": store->load, so a full barrier.
      B::full();
      irq = detail::split_peer_wants<E>(mode_, ring_.avail.used_event(), ring_.avail.flags(),
                                        split::avail_f_no_interrupt, new_idx, old_idx);
    }
    ++(irq ? this->stats_.interrupts : this->stats_.interrupts_suppressed);
    return irq;
  }

  /// Asks the driver not to notify (a hint). With EVENT_IDX avail_event simply stays where it
  /// is: the driver ignores NO_NOTIFY then (2.7.10), and at most one more notification comes.
  void disable_notifications() {
    guard g(this->lock_);
    if (this->broken() || mode_ == mode::none) return;  // none: never hold the driver back
    follow_avail_ = false;
    if (mode_ == mode::flags) store_relaxed<E>(ring_.used.flags(), split::used_f_no_notify);
  }

  /// Asks for a notification at the next available chain. Returns true if chains are already
  /// available (arrived before the request took effect): pop again instead of sleeping.
  bool enable_notifications() {
    guard g(this->lock_);
    if (this->broken()) return false;
    follow_avail_ = event_negotiated_;
    if (mode_ == mode::flags) {
      store_relaxed<E>(ring_.used.flags(), 0);
    } else if (event_negotiated_) {
      // 2.7.10: the driver notifies once avail idx passes avail_event.
      store_relaxed<E>(ring_.used.avail_event(), last_avail_);
    }
    // V4 (pairs with D2) 2.7.13.4 / 2.7.10: our request must be visible before we re-read avail
    // idx, or the driver may publish in between, read the old request and not notify.
    if (avail_cache_ != last_avail_) return true;  // seen, not yet popped
    B::full();
    return load_acquire<E>(ring_.avail.idx()) != last_avail_;
  }

  /// Forgets every held chain and staged used element; indices back to initial_index. Touches
  /// no ring memory (2.7 queue reset: after it the device neither uses buffers nor notifies);
  /// the driver re-initializes the ring.
  void reset() {
    guard g(this->lock_);
    this->shadow_.reset();
    this->clear_error();
    init();
  }

  using base::broken;
  using base::error;
  using base::stats;

 private:
  void init() {
    for (std::uint64_t& h : held_) h = 0;
    last_avail_ = avail_cache_ = opts_.initial_index;
    used_shadow_ = used_published_ = opts_.initial_index;
    // IN_ORDER: held chains sit in order_ at the avail ring position they were popped from
    // (order_head_ + held_count_ == last_avail_ mod size), so pop_buffers writes order_ at the
    // entry it reads.
    order_head_ = opts_.initial_index & mask_;
    held_count_ = 0;
    follow_avail_ = event_negotiated_;
  }

  // V1 (pairs with D1) 2.7.13: acquire avail idx before reading the ring entries and the
  // descriptors they name. errc::empty if nothing new, or a fatal errc.
  errc refresh_avail() noexcept {
    const std::uint16_t idx = load_acquire<E>(ring_.avail.idx());
    B::after_observe();
    // 2.7.6: the driver cannot have more than Queue Size chains available at once.
    if (detail::u16(idx - last_avail_) > size_) return fail(errc::avail_idx_jump);
    avail_cache_ = idx;
    return idx == last_avail_ ? errc::empty : errc::ok;
  }

  // Why an avail ring entry cannot be a new chain's head (its test is the caller's one branch).
  [[gnu::cold, gnu::noinline]] errc bad_head(std::uint16_t head) const noexcept {
    // 2.7.6: ring[] holds descriptor-chain heads, indices into a table of Queue Size entries.
    if (head >= size_) return errc::desc_index_out_of_range;
    // A chain the device still holds cannot be made available again (2.7.13.1: the driver
    // gives buffers, the device gives them back; a re-offered head would be completed twice).
    return errc::state_violation;
  }

  // What complete() refuses, one implementation for both forms: an id out of range, not held
  // (held 0), or len beyond the chain's writable bytes (2.7.8.2: the device MUST NOT
  // over-state); the last two fail the one comparison, held being writable bytes + 1.
  static bool refused(std::uint32_t id, std::uint32_t len, const std::uint64_t* held,
                      std::uint32_t size) noexcept {
    if (id >= size) [[unlikely]]
      return true;  // first: held_ is then read at a checked index
    return len >= held[id];
  }
  // IN_ORDER, 2.7.9: "the device MUST use buffers in the same order in which they have been
  // available": `id` must be the oldest held chain.
  static bool oldest(const std::uint16_t* order, std::uint32_t order_head,
                     std::uint16_t id) noexcept {
    return order[order_head] == id;
  }

  // One avail entry of a batch (pop_buffers, serve_buffers), validated as pop() validates:
  // the head's range (2.7.6) and, if any chain may be held (AnyHeld), that it is not held
  // (2.7.13.1: a re-offered head would be completed twice); the descriptor read once (the
  // driver may rewrite it under us: every decision is made on that copy); a chain with NEXT or
  // INDIRECT ends the batch (pop(chain&) takes it); translation (2.7.5: the buffer is guest
  // memory, as chain::append translates it; a zero-length buffer is not translated and has
  // data == nullptr); checked mode's shadow. False: stop here, `bad` set if a rule was broken.
  template <bool AnyHeld>
  [[gnu::always_inline]] inline bool take_entry(std::uint16_t head, const split::desc* table,
                                                const std::uint64_t* held, const M& mem,
                                                std::uint32_t size, popped_buffer& b, errc& bad) {
    // The range test first, then the held test reads held_ at a checked index: two branches,
    // as GCC compiles the combined test anyway, and no mask kept live for it.
    const std::uint32_t h = head;
    if (h >= size || (AnyHeld && held[h] != 0)) [[unlikely]] {
      bad = bad_head(head);
      return false;
    }
    const split::desc& d = table[h];
    const std::uint16_t flags = get<E>(d.flags);
    if ((flags & (split::desc_f_next | split::desc_f_indirect)) != 0) return false;
    const std::uint32_t len = get<E>(d.len);
    std::byte* data = nullptr;
    if (len != 0) [[likely]] {
      const result<std::byte*> host = mem.translate(get<E>(d.addr), len);
      if (!host) [[unlikely]] {
        bad = host.error();
        return false;
      }
      data = *host;
    }
    if constexpr (P::checked) {
      links_.start();
      links_.visit(head);
      if (!links_.commit(this->shadow_, head)) {
        bad = errc::state_violation;
        return false;
      }
    }
    b = popped_buffer{data, len, head, (flags & split::desc_f_write) != 0};
    return true;
  }

  // serve_buffers' loop, the lock held and the queue not broken. AnyHeld: some chain is held
  // (from pop / pop_buffers), so each head is tested against held_.
  template <bool AnyHeld, class F>
  result<std::size_t> serve_ones(std::size_t max, F& f) {
    std::uint32_t avail = detail::u16(avail_cache_ - last_avail_);
    if (avail < max) {
      // Fewer cached than wanted: one look at avail idx per batch.
      const errc e = refresh_avail();
      if (e == errc::empty) return std::size_t{0};
      if (e != errc::ok) return e;
      avail = detail::u16(avail_cache_ - last_avail_);
    }
    const auto todo = static_cast<std::uint32_t>(std::min<std::size_t>(avail, max));
    const split::desc* const table = ring_.table;
    const split::avail_ring avail_ring = ring_.avail;
    const split::used_ring used_ring = ring_.used;
    std::uint64_t* const held = held_.data();
    const M& mem = *mem_;
    const std::uint32_t size = size_;
    const std::uint32_t mask = mask_;
    errc bad = errc::ok;
    std::uint32_t n = 0;
    // Runs that end where the avail ring or the used ring wraps (at most three), each read and
    // written linearly: no mask per entry. A run left early ends the batch.
    std::uint32_t pos_a = last_avail_ & mask;
    std::uint32_t pos_u = used_shadow_ & mask;
    while (n < todo) {
      const std::uint32_t run = std::min({todo - n, size - pos_a, size - pos_u});
      const wire<std::uint16_t>* const entry = &avail_ring.ring(pos_a);
      split::used_elem* const ue = &used_ring.ring(pos_u);
      std::uint32_t i = 0;
      for (; i < run; ++i) {
        popped_buffer b;
        if (!take_entry<AnyHeld>(get<E>(entry[i]), table, held, mem, size, b, bad)) break;
        const std::uint32_t wrote = f(static_cast<const popped_buffer&>(b));
        const std::uint16_t head = b.id;
        // 2.7.8.2: at most the writable bytes; a device-readable buffer bounds it at 0.
        if (wrote > (b.writable ? b.len : 0U)) [[unlikely]] {
          keep_held(head, held_bound(b), detail::u16(last_avail_ + n + i));
          finish_serve(n + i + 1U, n + i);
          return n + i == 0 ? result<std::size_t>(errc::invalid_argument)
                            : result<std::size_t>(std::size_t{n + i});
        }
        if constexpr (P::checked) {
          if (!links_.release(this->shadow_, head)) {
            bad = errc::state_violation;
            break;
          }
        }
        put<E>(ue[i].id, head);
        put<E>(ue[i].len, wrote);
      }
      n += i;
      if (i != run) break;
      pos_a = (pos_a + run) & mask;
      pos_u = (pos_u + run) & mask;
    }
    finish_serve(n, n);
    if (bad != errc::ok) [[unlikely]] {
      fail(bad);
      if (n == 0) return bad;
    }
    return std::size_t{n};
  }

  // serve_buffers' bookkeeping: `popped` chains left the avail ring and `used` of them were
  // completed (one fewer when f over-stated the last, which stays held).
  void finish_serve(std::uint32_t popped, std::uint32_t used) noexcept {
    last_avail_ = detail::u16(last_avail_ + popped);
    used_shadow_ = detail::u16(used_shadow_ + used);
    // With IN_ORDER nothing was held, so order_'s (empty) run starts past the served chains.
    order_head_ = (order_head_ + used) & mask_;
    this->stats_.popped += popped;
    this->stats_.completed += used;
    // 2.7.10: avail_event once per batch, as pop_buffers writes it.
    if (follow_avail_ && popped != 0) store_relaxed<E>(ring_.used.avail_event(), last_avail_);
  }

  // held_'s record of a popped one-descriptor chain: its writable bytes + 1 (2.7.8.2: a used
  // len must stay below it; a device-readable buffer bounds it at 0).
  static std::uint64_t held_bound(const popped_buffer& b) noexcept {
    return (b.writable ? std::uint64_t{b.len} : 0U) + 1U;
  }

  // serve_buffers: f over-stated the chain at avail position `pos`; it stays held, as if
  // popped (finish_serve counts it off the avail ring with the chains served before it).
  [[gnu::cold, gnu::noinline]] void keep_held(std::uint16_t head, std::uint64_t bound,
                                              std::uint16_t pos) noexcept {
    held_[head] = bound;
    if (in_order_) order_[pos & mask_] = head;
    ++held_count_;
  }

  // complete(id, len) for `count` entries; the count done, `why` the reason it stopped (ok:
  // all done). The used ring and (IN_ORDER) the order record are walked linearly.
  template <bool InOrder>
  std::size_t complete_n(const used_entry* done, std::size_t count, errc& why) noexcept {
    std::uint64_t* const held = held_.data();
    const std::uint16_t* const order = order_.data();
    const split::used_ring used = ring_.used;
    const std::uint32_t size = size_;
    const std::uint32_t mask = mask_;
    why = errc::ok;
    std::size_t n = 0;
    // Runs of used elements written linearly, ending where the used ring wraps (and with
    // IN_ORDER where the order record wraps): a run left early (a refused entry) ends the batch.
    for (std::uint32_t pos = used_shadow_ & mask; n < count;) {
      std::size_t run = std::min<std::size_t>(count - n, size - pos);
      [[maybe_unused]] const std::uint16_t* ord = nullptr;
      if constexpr (InOrder) {
        const std::uint32_t at = (order_head_ + static_cast<std::uint32_t>(n)) & mask;
        run = std::min<std::size_t>(run, size - at);
        ord = order + at;
      }
      const std::size_t run_end = n + run;
      split::used_elem* e = &used.ring(pos);
      for (; n < run_end; ++n, ++e) {
        const std::uint16_t id = done[n].id;
        const std::uint32_t len = done[n].len;
        if constexpr (InOrder) {
          // 2.7.9: `id` must be the oldest held chain; then it is in range, and one compare
          // (len < held) checks it is held and 2.7.8.2. With nothing held order_[order_head]
          // is stale, but every held_ is 0 then: refused as well.
          const std::uint16_t h = *ord++;
          if ((id != h) | (len >= held[h])) [[unlikely]] {
            why = errc::invalid_argument;
            break;
          }
          held[h] = 0;
        } else {
          if (refused(id, len, held, size)) [[unlikely]] {
            why = errc::invalid_argument;
            break;
          }
          held[id] = 0;
        }
        if (!links_.release(this->shadow_, id)) [[unlikely]] {
          why = fail(errc::state_violation);
          break;
        }
        put<E>(e->id, id);
        put<E>(e->len, len);
      }
      if (n != run_end) break;
      pos = (pos + static_cast<std::uint32_t>(run)) & mask;
    }
    used_shadow_ = detail::u16(used_shadow_ + static_cast<std::uint32_t>(n));
    if constexpr (InOrder) {
      order_head_ = (order_head_ + static_cast<std::uint32_t>(n)) & mask;
    }
    held_count_ -= static_cast<std::uint32_t>(n);
    this->stats_.completed += n;
    return n;
  }

  bool release(std::uint16_t id) noexcept {
    held_[id] = 0;
    return links_.release(this->shadow_, id);
  }

  void write_used(std::uint16_t id, std::uint32_t len) noexcept {
    split::used_elem& e = ring_.used.ring(used_shadow_ & mask_);
    put<E>(e.id, id);
    put<E>(e.len, len);
    ++used_shadow_;
    ++this->stats_.completed;
  }

  // The bounded walk of one chain (2.7.5.2, 2.7.5.3). Every buffer goes through chain::append;
  // this function checks only what is about the linking.
  // `first` is the head descriptor, already copied out of the table by pop.
  errc walk(chain& c, std::uint16_t head, const split::desc& first) {
    c.begin(head, size_);
    links_.start();
    const split::desc* table = ring_.table;
    std::uint32_t table_len = size_;
    std::uint32_t ttl = size_;  // 2.7.5.2: more hops than entries means a loop
    std::uint16_t ring_slots = 0;
    bool indirect = false;
    std::uint16_t i = head;
    for (;;) {
      split::desc d;
      if (indirect) {
        // The table is driver memory at any alignment: copy each entry out, once.
        std::memcpy(static_cast<void*>(&d), table + i, sizeof d);
      } else {
        d = i == head && ring_slots == 0 ? first : table[i];
        links_.visit(i);
        ++ring_slots;
      }
      const std::uint64_t addr = get<E>(d.addr);
      const std::uint32_t len = get<E>(d.len);
      const std::uint16_t flags = get<E>(d.flags);
      const std::uint16_t next = get<E>(d.next);
      if ((flags & split::desc_f_indirect) != 0) {
        // 2.7.5.3.1: "The device MUST ignore the write-only flag (flags&VIRTQ_DESC_F_WRITE) in
        // the descriptor that refers to an indirect table."
        if (!indirect_ok_) return errc::indirect_not_negotiated;
        // 2.7.5.3.1: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect
        // descriptor (ie. only one table per descriptor)."
        if (indirect) return errc::indirect_nested;
        // 2.7.5.3.1: "A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT".
        if ((flags & split::desc_f_next) != 0) return errc::indirect_with_next;
        // 2.7.5.3.1: a table of len/16 descriptors; the chain it holds is bounded by the queue
        // size like any other (2.7.5.2).
        if (len == 0 || len % sizeof(split::desc) != 0 || len / sizeof(split::desc) > size_) {
          return errc::indirect_bad_length;
        }
        const result<std::byte*> host = mem_->translate(addr, len);
        if (!host) return host.error();
        table = reinterpret_cast<const split::desc*>(*host);
        table_len = len / static_cast<std::uint32_t>(sizeof(split::desc));
        ttl = table_len;
        indirect = true;
        i = 0;
        continue;
      }
      const errc e = c.append(*mem_, addr, len, (flags & split::desc_f_write) != 0);
      if (e != errc::ok) return e;
      if ((flags & split::desc_f_next) == 0) break;
      // 2.7.5: next indexes the descriptor table (or the indirect table).
      if (next >= table_len) return errc::next_out_of_range;
      if (--ttl == 0) return errc::chain_loop;
      i = next;
    }
    c.set_ring_slots(ring_slots);
    return errc::ok;
  }

  split::ring_view ring_;
  const M* mem_;
  mode mode_;
  bool event_negotiated_;
  bool indirect_ok_;
  bool in_order_;
  /// 2.7.10: with EVENT_IDX and notifications enabled, avail_event follows every pop.
  bool follow_avail_ = false;
  device_options opts_;
  std::uint32_t size_ = 0;
  std::uint32_t mask_ = 0;
  std::uint16_t last_avail_ = 0;      ///< next avail entry to pop
  std::uint16_t avail_cache_ = 0;     ///< last avail idx read from the ring
  std::uint16_t used_shadow_ = 0;     ///< next used element to write (private)
  std::uint16_t used_published_ = 0;  ///< used idx at the last interrupt_prepare
  /// Per head: 0 if the device does not hold it, else its writable bytes + 1 (the used len
  /// must be below this, 2.7.8.2). One compare checks both in complete().
  std::vector<std::uint64_t> held_;
  std::vector<std::uint16_t> order_;  ///< IN_ORDER: held heads in pop order (a ring)
  std::uint32_t order_head_ = 0;
  std::uint32_t held_count_ = 0;  ///< chains held (with IN_ORDER: the length of order_'s run)
  [[no_unique_address]] detail::held_links<P::checked> links_;
};

// =============================================================================================
// Layout traits
// =============================================================================================

/// What generic code (tests, benchmarks, the rx pool) needs to know about the split layout.
struct split_layout {
  static constexpr bool is_packed = false;
  using geometry = split_geometry;
  using view = split::ring_view;
  template <class P>
  using driver = split_driver<P>;
  template <class P, class M>
  using device = split_device<P, M>;

  /// Used-ring alignment of geometry_for: a cache line, so the device-written used ring never
  /// shares a line with the driver-written available ring (any power of 2 >= 4 is legal, 2.7).
  static constexpr std::size_t used_ring_align = 64;

  static constexpr bool valid_size(std::uint32_t n) noexcept { return valid_split_size(n); }
  static constexpr result<geometry> geometry_for(std::uint32_t size) {
    return split_geometry::make(size, used_ring_align);
  }
  static result<view> view_at(void* base, const geometry& g) noexcept {
    return split_view_at(base, g);
  }
};

static_assert(driver_queue<split_driver<>>);
static_assert(device_queue<split_device<>>);
static_assert(device_queue<split_device<default_policy, guest_memory>>);

}  // namespace virtq

#undef VIRTQ_ONE_LOOP
