// SPDX-License-Identifier: MIT
// virtq/packed.hpp -- the packed virtqueue (VIRTIO 1.2 2.8): driver side and device side.
//
// One ring of 16-byte descriptors is shared by both directions: the driver writes available
// descriptors at its next_avail position, the device overwrites them with used descriptors at
// its next_used position. Who owns a slot is told by the AVAIL/USED flag bits compared with the
// reader's wrap counter (2.8.1), so there are no indices in shared memory at all.
//
// Wrap counters (2.8.1): driver and device each keep one for the avail side and one for the
// used side; all start at 1 and flip whenever an index passes the last slot -- including an
// advance that lands exactly on the slot it started from (a chain as long as the queue). Every
// advance below is a compare-and-subtract (sizes need not be powers of 2; no division).
//
// Batching: add() writes every descriptor of a batch but holds back the flags of the batch's
// FIRST head; kick_prepare() publishes that one with the D1 release store. The device cannot
// look past a slot it does not own, so the other flags of the batch (later heads included) are
// stored relaxed: they become visible through the first head's release/acquire edge. The device
// does the same with used descriptors: complete() writes them in place, but the first one of a
// batch keeps its flags until interrupt_prepare() releases them (V2).
//
// Batch calls (add_inbufs / add_outbufs, pop_buffers, complete(span)) take the lock, test
// broken() and update the statistics once per call, and keep the ring position, wrap counter
// and per-id records in registers across the batch; the single-element calls are batches of one.
//
// IN_ORDER (2.8.20 / 2.8.21): chains come back in the order they were made available, so the
// driver names each chain by the slot of its head (no free-id list, no list of chains in order:
// the oldest chain in use is the one at last_used), and the device records each popped id at
// its head slot (the oldest in flight is the one at next_used). Both batch loops then test
// "is this the oldest" with one compare; a used descriptor standing for several chains (the
// last one's id, 2.8.20) leaves the driver's batch loop for the general, fully checked path.
//
// Barrier labels (table in virtqueue.hpp): D1 publish head flags; V1 acquire a head's flags;
// D2 full before reading the device event area; V2 publish used flags; D3 acquire used flags;
// V3 full before reading the driver event area; D4 full after re-enabling interrupts; V4 full
// after re-enabling notifications.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "virtq/chain.hpp"
#include "virtq/error.hpp"
#include "virtq/memory.hpp"
#include "virtq/policy.hpp"
#include "virtq/spec.hpp"
#include "virtq/virtqueue.hpp"

namespace virtq {

namespace detail {

/// Moves a ring position forward by n <= size slots, flipping the wrap counter when it passes
/// the last slot (2.8.1), also when it lands back on where it started (n == size).
constexpr void packed_advance(std::uint16_t& off, bool& wrap, std::uint32_t n,
                              std::uint32_t size) noexcept {
  std::uint32_t o = std::uint32_t{off} + n;
  if (o >= size) {
    o -= size;
    wrap = !wrap;
  }
  off = static_cast<std::uint16_t>(o);
}

// Compile-time proof against the definition (position = linear count mod size, counter = 1 on
// even laps): every advance of 1..size slots from every position of three laps, for small odd
// and even sizes, lands where division says, with the counter flipped iff a lap was crossed.
constexpr bool packed_advance_matches_division() {
  for (std::uint32_t size = 1; size <= 7; ++size) {
    for (std::uint32_t lin = 0; lin < 3 * size; ++lin) {
      for (std::uint32_t n = 1; n <= size; ++n) {
        auto off = static_cast<std::uint16_t>(lin % size);
        bool wrap = (lin / size) % 2 == 0;
        packed_advance(off, wrap, n, size);
        if (off != (lin + n) % size || wrap != (((lin + n) / size) % 2 == 0)) return false;
      }
    }
  }
  return true;
}
static_assert(packed_advance_matches_division());

/// 2.8.1 as one masked compare: the AVAIL/USED bits of a descriptor made available in lap
/// `wrap` (AVAIL == wrap, USED != wrap), and of one used in lap `wrap` (both == wrap).
inline constexpr std::uint16_t packed_wrap_bits = packed::desc_f_avail | packed::desc_f_used;
constexpr std::uint16_t packed_avail_bits(bool wrap) noexcept {
  return static_cast<std::uint16_t>(0x8000U >> (8U * static_cast<unsigned>(wrap)));
}
constexpr std::uint16_t packed_used_bits(bool wrap) noexcept {
  return static_cast<std::uint16_t>(std::uint32_t{packed_wrap_bits} * static_cast<unsigned>(wrap));
}
constexpr bool packed_bits_match_spec() {
  // Both wrap bits in every combination, under the other flag bits none, some and all set.
  for (const std::uint32_t other : {0x0000U, 0x0001U, 0x0002U, 0x0004U, 0x7F7FU}) {
    for (std::uint32_t bits = 0; bits < 4; ++bits) {
      const auto f =
          static_cast<std::uint16_t>(other | ((bits & 1U) << 7U) | ((bits >> 1U) << 15U));
      for (const bool w : {false, true}) {
        const auto m = static_cast<std::uint16_t>(f & packed_wrap_bits);
        if ((m == packed_avail_bits(w)) != packed::is_avail(f, w) ||
            (m == packed_used_bits(w)) != packed::is_used(f, w)) {
          return false;
        }
      }
    }
  }
  return packed_avail_bits(true) == packed::avail_bits(true) &&
         packed_avail_bits(false) == packed::avail_bits(false) &&
         packed_used_bits(true) == packed::used_bits(true) &&
         packed_used_bits(false) == packed::used_bits(false);
}
static_assert(packed_bits_match_spec());

/// 2.8.3 / 2.8.4: in a used descriptor WRITE says whether the device wrote anything into the
/// buffer; without it Element Length "is reserved ... and is ignored by drivers": the driver
/// reports 0 and checks nothing about it (DPDK's vhost, for one, leaves the driver's own
/// length there when it completes a transmit chain).
constexpr std::uint32_t packed_used_len(std::uint16_t flags, std::uint32_t raw) noexcept {
  return (flags & packed::desc_f_write) != 0 ? raw : 0U;
}
/// The WRITE bit a device sets in a used descriptor: it wrote `len` bytes (2.8.3).
constexpr std::uint16_t packed_written_bit(std::uint32_t len) noexcept {
  return len != 0 ? packed::desc_f_write : std::uint16_t{0};
}

/// 2.8.10, the decision both sides make after publishing: does the peer's event suppression
/// area ask to hear about the `added` slots just published up to (new_off, new_wrap)? DISABLE
/// says no; DESC (meaningful only with EVENT_IDX) says yes iff its off_wrap lies among them;
/// ENABLE, and any value this policy does not use, says yes (a spare notification is harmless,
/// a missed one is not). The caller issues its full barrier (D2 / V3) first.
template <suppression_policy S, byte_order E>
bool peer_wants_event(const packed::event_suppress& area, std::uint16_t new_off, bool new_wrap,
                      std::uint32_t added, std::uint32_t size) noexcept {
  const std::uint16_t flags = load_relaxed<E>(area.flags);
  if constexpr (S::uses_event_idx) {
    if (flags == packed::event_flags_desc) {
      return packed_need_event(load_relaxed<E>(area.off_wrap), new_off, new_wrap, added, size);
    }
  }
  return flags != packed::event_flags_disable;
}

/// The ring view a queue is built on must have come from packed::ring_view::make.
inline void check_packed_view(const packed::ring_view& v) {
  if (v.ring == nullptr || v.driver_event == nullptr || v.device_event == nullptr) {
    throw_error(errc::invalid_argument, "packed ring view has a null area");
  }
  if (!valid_packed_size(v.size)) throw_error(errc::bad_queue_size, "packed queue size 1..32768");
}

}  // namespace detail

/// Checked mode: moves the `n` ring slots from `off` on (wrapping) from one state to another.
/// Slots change hands by position in a packed ring, whichever chain the used descriptor names.
template <class Shadow>
bool packed_shadow_slots(Shadow& sh, std::uint32_t off, std::uint32_t n, std::uint32_t size,
                         detail::desc_state from, detail::desc_state to) noexcept {
  if constexpr (std::is_same_v<Shadow, detail::shadow_state<false>>) {
    return true;  // unchecked: no loop at all
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    if (!sh.move(off, from, to)) return false;
    if (++off == size) off = 0;
  }
  return true;
}

/// The policies a packed ring accepts. 2.8: packed rings exist only with VIRTIO_F_VERSION_1,
/// whose wire is little-endian (1.4), so a big-endian policy is rejected at compile time.
template <class P>
concept packed_queue_policy = queue_policy_type<P> && P::endian::order == std::endian::little;

// =============================================================================================
// Driver
// =============================================================================================

/// The driver side of a packed ring. Satisfies driver_queue.
template <packed_queue_policy P = default_policy>
class packed_driver : public detail::queue_common<P> {
  using base = detail::queue_common<P>;
  using E = typename P::endian;
  using B = typename P::barriers;
  using S = typename P::suppression;
  using guard = typename base::guard;
  using detail::queue_common<P>::fail;

 public:
  /// get_used() tests every used element's id and length (verifying_driver_queue).
  static constexpr bool verifies_used = true;

  /// Zeroes the ring (the driver owns it). Throws virtq::error: invalid_argument (a null area,
  /// indirect_max over the queue size), bad_queue_size, feature_missing / feature_conflict
  /// (check_features: RING_PACKED, VERSION_1, EVENT_IDX for suppress_event_idx,
  /// ORDER_PLATFORM; INDIRECT_DESC for indirect_max), or what to_guest returned.
  packed_driver(packed::ring_view v, features f, driver_options o = {})
      : view_(v), size_(v.size), in_order_(f.has(feature::in_order)) {
    detail::check_packed_view(v);
    detail::check_features<P>(f, true);
    if (o.indirect_max != 0) {
      if (!f.has(feature::indirect_desc)) {
        detail::throw_error(errc::feature_missing, "indirect_max needs VIRTIO_F_INDIRECT_DESC");
      }
      // 2.8.7 with 2.8.4: a chain (an indirect table included) is at most Queue Size long.
      if (o.indirect_max > size_) {
        detail::throw_error(errc::invalid_argument, "indirect_max larger than the queue size");
      }
      indirect_max_ = o.indirect_max;
      indirect_threshold_ = std::max<std::uint32_t>(o.indirect_threshold, 1);
      tables_ = detail::indirect_tables(size_, indirect_max_, o);
    }
    ids_.resize(size_);
    free_ids_.resize(size_);
    this->shadow_.resize(size_);
    init_state();
  }

  packed_driver(const packed_driver&) = delete;
  packed_driver& operator=(const packed_driver&) = delete;

  /// Stages a chain: device-readable `out` buffers, then device-writable `in` buffers. It stays
  /// invisible to the device until kick_prepare().
  errc add(std::span<const buffer> out, std::span<const buffer> in, token_t token) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    const std::size_t n = out.size() + in.size();
    if (n == 0) return errc::invalid_argument;
    const bool indirect = indirect_max_ != 0 && n >= indirect_threshold_ && n <= indirect_max_;
    // 2.8.4: "A driver MUST NOT create a descriptor chain longer than the Queue Size".
    if (!indirect && n > size_) return errc::invalid_argument;
    std::uint64_t total = 0;
    std::uint64_t writable = 0;
    for (const buffer& b : out) total += b.len;
    for (const buffer& b : in) writable += b.len;
    total += writable;
    // 2.7.5.2 (applies to packed chains through 2.8.4): at most 2^32 bytes in total.
    if (total > (std::uint64_t{1} << 32)) return errc::invalid_argument;
    const auto slots = static_cast<std::uint32_t>(indirect ? 1 : n);
    if (slots > num_free_) {
      ++this->stats_.ring_full;
      return errc::no_space;
    }

    const std::uint16_t id = take_id();
    if (indirect) {
      // 2.8.7: one ring descriptor with INDIRECT points at a table of packed descriptors whose
      // flags carry nothing but WRITE; the table is sequential, so no NEXT and no id.
      packed::desc* t = table(id);
      std::size_t i = 0;
      for (const buffer& b : out) fill_table_entry(t[i++], b, 0);
      for (const buffer& b : in) fill_table_entry(t[i++], b, packed::desc_f_write);
      write_slot(table_guest(id), static_cast<std::uint32_t>(n * sizeof(packed::desc)), id,
                 packed::desc_f_indirect);
    } else {
      std::size_t left = n;
      for (const buffer& b : out) {
        write_slot(b.addr, b.len, id, --left != 0 ? packed::desc_f_next : std::uint16_t{0});
      }
      for (const buffer& b : in) {
        write_slot(b.addr, b.len, id,
                   static_cast<std::uint16_t>(packed::desc_f_write |
                                              (--left != 0 ? packed::desc_f_next : 0)));
      }
    }
    commit(id, token, slots, writable);
    return errc::ok;
  }

  /// The receive hot path: one device-writable buffer in one slot. The slot is written by the
  /// helpers add() uses (take_id, write_slot, commit): a batch's set-up buys nothing for one.
  errc add_inbuf(buffer b, token_t token) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    if (num_free_ == 0) [[unlikely]] {
      ++this->stats_.ring_full;
      return errc::no_space;
    }
    const std::uint16_t id = take_id();
    write_slot(b.addr, b.len, id, packed::desc_f_write);
    commit(id, token, 1, b.len);
    return errc::ok;
  }

  /// Stages one-descriptor chains of device-writable buffers, token i for buffer i, as many as
  /// there are free slots (min(n, num_free())); returns that count. Not all-or-nothing: if fewer
  /// than n fit, stats().ring_full counts the call once. Nothing is visible to the device until
  /// kick_prepare(). invalid_argument (nothing staged) if the spans differ in size; broken.
  result<std::size_t> add_inbufs(std::span<const buffer> bufs, std::span<const token_t> tokens) {
    if (bufs.size() != tokens.size()) [[unlikely]]
      return errc::invalid_argument;  // the caller's mistake: nothing staged
    return add_bufs<true>(bufs.size(), buffer_arrays{bufs.data(), tokens.data()});
  }

  /// add_inbufs for device-readable buffers (a transmit queue).
  result<std::size_t> add_outbufs(std::span<const buffer> bufs, std::span<const token_t> tokens) {
    if (bufs.size() != tokens.size()) [[unlikely]]
      return errc::invalid_argument;
    return add_bufs<false>(bufs.size(), buffer_arrays{bufs.data(), tokens.data()});
  }

  /// add_inbufs with the buffers and tokens from src (read once per buffer staged, under the
  /// queue's lock): the receive queue reposts its pool's buffers by index this way.
  template <buffer_source S>
  result<std::size_t> add_inbufs_from(std::size_t n, const S& src) {
    return add_bufs<true>(n, src);
  }

  /// Publishes the staged batch (D1) and says whether the device wants a notification (D2).
  bool kick_prepare() {
    guard g(this->lock_);
    if (this->broken() || staged_chains_ == 0) return false;  // nothing new for the device
    if (head_pending_) {
      B::before_publish();
      // D1 (2.8.21.1, partner V1): every descriptor of the batch, and each indirect table, was
      // written before this release of the first head's flags; the device acquires them.
      store_release<E>(view_.ring[head_slot_].flags, head_flags_);
      head_pending_ = false;
    }
    if constexpr (P::checked) {
      if (!packed_shadow_slots(this->shadow_, pub_off_, staged_slots_, size_,
                               detail::desc_state::avail, detail::desc_state::device)) {
        fail(errc::state_violation);
        return false;
      }
    }
    outstanding_ += staged_chains_;
    staged_chains_ = 0;
    ++batch_;
    const std::uint32_t added = staged_slots_;
    staged_slots_ = 0;
    pub_off_ = next_avail_;
    pub_wrap_ = avail_wrap_;

    bool notify = true;
    if constexpr (S::uses_flags || S::uses_event_idx) {
      // D2 (2.8.21.3, partner V4): the store of the head flags must be ordered before the load
      // of the device's event area, or both sides may sleep.
      B::full();
      notify = detail::peer_wants_event<S, E>(*view_.device_event, next_avail_, avail_wrap_, added,
                                              size_);
    }
    if (notify) {
      ++this->stats_.kicks;
    } else {
      ++this->stats_.kicks_suppressed;
    }
    return notify;
  }

  /// VIRTIO_F_NOTIFICATION_DATA: vqn | next_off << 16 | next_wrap << 31, naming the position
  /// after the last published descriptor.
  std::uint32_t notification_data(std::uint16_t vqn) const noexcept {
    guard g(this->lock_);
    return encode_notification({vqn, pub_off_, pub_wrap_});
  }

  result<used_buffer> get_used() {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    used_buffer u{};
    const errc e = reap_one(u);
    if (e != errc::ok) return e;
    after_reap();
    return u;
  }

  /// Up to out.size() completions. If the device breaks a rule after some were reaped, those
  /// are returned (their tokens are the caller's now) and the next call reports errc::broken;
  /// error() names the rule.
  result<std::size_t> get_used(std::span<used_buffer> out) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    if (out.size() == 1) {
      // One completion: the single reap, without a batch loop's set-up (a driver polling one
      // at a time calls this).
      const errc e = reap_one(out[0]);
      if (e != errc::ok) return e == errc::empty ? result<std::size_t>{std::size_t{0}} : e;
      after_reap();
      return std::size_t{1};
    }
    if constexpr (!P::checked) {
      if (in_order_left_ == 0) {
        if (multi_slot_chains_ == 0) {
          return in_order_ ? reap_batch<true, true>(out) : reap_batch<false, true>(out);
        }
        return in_order_ ? reap_batch<true, false>(out) : reap_batch<false, false>(out);
      }
    }
    return reap_each(out, 0);
  }

  void disable_interrupts() {
    guard g(this->lock_);
    if (this->broken()) return;
    if constexpr (S::uses_flags || S::uses_event_idx) {
      set_driver_flags(packed::event_flags_disable);
    }
  }

  /// Re-enables interrupts; true if used descriptors arrived meanwhile (poll again).
  bool enable_interrupts() {
    guard g(this->lock_);
    if (this->broken()) return false;
    delayed_ = false;
    return enable_at(last_used_, used_wrap_);
  }

  /// Asks for an interrupt only once ~3/4 of the outstanding slots were used (2.8.10 desc
  /// mode); without EVENT_IDX the same as enable_interrupts().
  bool enable_interrupts_delayed() {
    guard g(this->lock_);
    if (this->broken()) return false;
    std::uint16_t off = last_used_;
    bool wrap = used_wrap_;
    if constexpr (S::uses_event_idx) {
      const std::uint32_t busy = size_ - num_free_ - staged_slots_;
      detail::packed_advance(off, wrap, (busy * 3U) >> 2U, size_);
    }
    delayed_ = true;
    return enable_at(off, wrap);
  }

  /// Hands every outstanding token (staged, published, used but not reaped) to on_token exactly
  /// once, then returns the ring to its initial state. The device must be reset as well.
  template <class F>
  void reset(F&& on_token) {
    guard g(this->lock_);
    if (in_order_) {
      // The chains in use follow each other from last_used_ (take_id), published ones first.
      std::uint32_t at = last_used_;
      for (std::uint32_t k = 0; k < outstanding_ + staged_chains_; ++k) {
        on_token(ids_[at].token);
        at += ids_[at].slots;
        if (at >= size_) at -= size_;
      }
    } else {
      for (std::uint32_t i = 0; i < size_; ++i) {
        if (ids_[i].batch != free_batch) on_token(ids_[i].token);
      }
    }
    init_state();
  }

  std::uint32_t size() const noexcept { return size_; }
  /// Free ring slots (a chain takes one per descriptor, or one for an indirect table).
  std::uint32_t num_free() const noexcept {
    guard g(this->lock_);
    return num_free_;
  }
  const packed::ring_view& view() const noexcept { return view_; }

 private:
  /// id_info::batch of an id not in use: above every kick generation, so that one compare,
  /// batch < batch_, says "in use and published".
  static constexpr std::uint64_t free_batch = ~std::uint64_t{0};
  struct id_info {
    token_t token = 0;
    /// Kick generation it was staged in, or free_batch. Not kept with IN_ORDER, where the
    /// chains in use are known by position (in_order_outstanding): one store less per chain.
    std::uint64_t batch = free_batch;
    std::uint32_t writable = 0;  ///< device-writable bytes, saturated at 2^32-1
    /// Ring slots taken. 1 whenever no chain of several slots holds the id: such a chain sets
    /// it (commit) and its reap puts the 1 back, so one-slot adds store nothing.
    std::uint32_t slots = 1;
  };

  void init_state() {
    // The driver owns the ring memory; a zeroed ring holds no available descriptor for wrap 1
    // and asks for every event (flags 0 = RING_EVENT_FLAGS_ENABLE).
    std::memset(static_cast<void*>(view_.ring), 0, std::size_t{size_} * sizeof(packed::desc));
    std::memset(static_cast<void*>(view_.driver_event), 0, sizeof(packed::event_suppress));
    std::memset(static_cast<void*>(view_.device_event), 0, sizeof(packed::event_suppress));
    for (std::uint32_t i = 0; i < size_; ++i) {
      ids_[i] = id_info{};
      free_ids_[i] = static_cast<std::uint16_t>(size_ - 1 - i);  // hands out 0, 1, 2, ...
    }
    free_top_ = size_;
    num_free_ = size_;
    next_avail_ = last_used_ = pub_off_ = 0;
    avail_wrap_ = used_wrap_ = pub_wrap_ = true;  // 2.8.1: wrap counters start at 1
    head_pending_ = false;
    staged_chains_ = staged_slots_ = 0;
    outstanding_ = 0;
    multi_slot_chains_ = 0;
    batch_ = 1;
    driver_flags_ = packed::event_flags_enable;
    delayed_ = false;
    in_order_left_ = 0;
    this->shadow_.reset();
    this->clear_error();
  }

  std::uint16_t take_id() noexcept {
    // IN_ORDER: a chain's id is the slot of its head. Chains come back in ring order (2.8.20),
    // so that slot is free again only after the chain that last started there was reaped: the
    // id is never in use, the oldest chain in use is the one at last_used_, and reaping needs
    // neither a free list nor a list of chains in order.
    if (in_order_) return next_avail_;
    // Never empty here: each chain holds at least one slot and there are as many ids as slots.
    // A stack, not a linked list: the next id's address does not wait for the previous load.
    return free_ids_[--free_top_];
  }

  packed::desc* table(std::uint16_t id) const noexcept {
    return reinterpret_cast<packed::desc*>(tables_.table(id));
  }
  std::uint64_t table_guest(std::uint16_t id) const noexcept { return tables_.guest(id); }
  static void fill_table_entry(packed::desc& d, const buffer& b, std::uint16_t flags) noexcept {
    put<E>(d.addr, b.addr);
    put<E>(d.len, b.len);
    put<E>(d.id, 0);
    put<E>(d.flags, flags);
  }

  /// 2.8.6: the device reads the id from a chain's last descriptor; every one carries it.
  static void write_desc(packed::desc& d, std::uint64_t addr, std::uint32_t len,
                         std::uint16_t id) noexcept {
    put<E>(d.addr, addr);
    put<E>(d.len, len);
    put<E>(d.id, id);
  }

  /// The first head of a batch: its flags are stored by kick_prepare() (D1).
  void hold_head(std::uint16_t slot, std::uint16_t flags) noexcept {
    head_pending_ = true;
    head_slot_ = slot;
    head_flags_ = flags;
  }

  /// Writes one descriptor at next_avail and advances. The first head of a batch keeps its
  /// flags back for kick_prepare(); every other flags store is relaxed (see the file comment).
  void write_slot(std::uint64_t addr, std::uint32_t len, std::uint16_t id,
                  std::uint16_t flags) noexcept {
    packed::desc& d = view_.ring[next_avail_];
    write_desc(d, addr, len, id);
    const auto f = static_cast<std::uint16_t>(flags | detail::packed_avail_bits(avail_wrap_));
    if (staged_slots_ == 0) {
      hold_head(next_avail_, f);
    } else {
      store_relaxed<E>(d.flags, f);
    }
    ++staged_slots_;
    detail::packed_advance(next_avail_, avail_wrap_, 1, size_);
  }

  void commit(std::uint16_t id, token_t token, std::uint32_t slots,
              std::uint64_t writable) noexcept {
    id_info& s = ids_[id];
    s.token = token;
    s.batch = batch_;  // never read with IN_ORDER (in_order_outstanding): no test here
    s.writable = static_cast<std::uint32_t>(std::min<std::uint64_t>(writable, 0xFFFFFFFFU));
    s.slots = slots;
    if (slots != 1) ++multi_slot_chains_;
    ++staged_chains_;
    num_free_ -= slots;
    this->note_free(num_free_);
    ++this->stats_.added;
    if constexpr (P::checked) {
      // The chain's slots end at next_avail: each must have been ours (free) to write.
      std::uint32_t start = next_avail_ + size_ - slots;
      if (start >= size_) start -= size_;
      if (!packed_shadow_slots(this->shadow_, start, slots, size_, detail::desc_state::free,
                               detail::desc_state::avail)) {
        fail(errc::state_violation);
      }
    }
  }

  /// add_inbufs / add_outbufs: one lock, one broken() test, one statistics update per call.
  template <bool Writable, buffer_source S>
  result<std::size_t> add_bufs(std::size_t count, S src) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    auto n = static_cast<std::uint32_t>(std::min<std::size_t>(count, num_free_));
    if (n != count) [[unlikely]]
      ++this->stats_.ring_full;
    if (n == 0) [[unlikely]]
      return std::size_t{0};
    constexpr std::uint16_t kind = Writable ? packed::desc_f_write : std::uint16_t{0};
    if constexpr (P::checked) {
      // Checked mode: descriptor by descriptor, through the shadow state.
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::uint16_t id = take_id();
        const std::uint32_t len = src.len();
        write_slot(src.addr(), len, id, kind);
        commit(id, src.token(), 1, Writable ? len : 0U);
        src.advance();
      }
      return std::size_t{n};
    }
    if (in_order_) {
      stage_bufs<true, Writable>(src, n);
    } else {
      stage_bufs<false, Writable>(src, n);
    }
    staged_chains_ += n;
    staged_slots_ += n;
    num_free_ -= n;
    this->note_free(num_free_);
    this->stats_.added += n;
    return std::size_t{n};
  }

  /// n <= num_free one-descriptor chains from next_avail on, with the ring position, the id
  /// stack and the batch number in registers: stores through the ring or the id records could
  /// alias the members, which would otherwise be reloaded per descriptor.
  template <bool InOrder, bool Writable, buffer_source S>
  [[gnu::always_inline]] inline void stage_bufs(S& src, std::uint32_t n) noexcept {
    constexpr std::uint16_t kind = Writable ? packed::desc_f_write : std::uint16_t{0};
    packed::desc* const ring = view_.ring;
    id_info* const ids = ids_.data();
    const std::uint16_t* free_top = free_ids_.data() + free_top_;
    const std::uint64_t batch = batch_;
    const std::uint32_t size = size_;
    std::uint32_t pos = next_avail_;
    bool wrap = avail_wrap_;
    // One buffer into slot `d` (at `pos`); the first head of a batch keeps its flags until
    // kick_prepare (D1). IN_ORDER: the id is the slot (take_id).
    const auto stage = [&](packed::desc & d, std::uint32_t slot, std::uint16_t f, bool hold)
        __attribute__((always_inline)) {
      const auto id = InOrder ? static_cast<std::uint16_t>(slot) : std::uint16_t{*--free_top};
      // Read before the ring stores, which could alias the caller's arrays.
      const std::uint32_t len = src.len();
      const std::uint64_t addr = src.addr();
      const token_t token = src.token();
      src.advance();
      write_desc(d, addr, len, id);
      if (hold) {
        hold_head(static_cast<std::uint16_t>(pos), f);
      } else {
        store_relaxed<E>(d.flags, f);
      }
      id_info& s = ids[id];
      s.token = token;
      if constexpr (!InOrder) s.batch = batch;  // IN_ORDER: in use by position
      s.writable = Writable ? len : 0U;         // s.slots is 1 already (id_info::slots)
    };
    std::uint32_t i = 0;
    while (i < n) {
      // Up to the ring's end: the wrap counter is tested once per run, not per descriptor
      // (2.8.1: it flips when the position passes the last slot).
      const std::uint32_t end = i + std::min(n - i, size - pos);
      const auto f = static_cast<std::uint16_t>(kind | detail::packed_avail_bits(wrap));
      if (i == 0 && staged_slots_ == 0) {
        stage(ring[pos], pos, f, true);
        i = 1;
        ++pos;
      }
      packed::desc* d = ring + pos;
      std::uint32_t slot = pos;  // InOrder: the id, counted beside d rather than derived from it
      for (std::uint32_t k = i; k != end; ++k, ++d, ++slot) {
        stage(*d, slot, f, false);
      }
      pos += end - i;
      i = end;
      if (pos == size) {
        pos = 0;
        wrap = !wrap;
      }
    }
    free_top_ = static_cast<std::uint32_t>(free_top - free_ids_.data());
    next_avail_ = static_cast<std::uint16_t>(pos);
    avail_wrap_ = wrap;
  }

  /// One used descriptor into `out`, or empty, or a fatal error (queue broken).
  [[gnu::always_inline]] inline errc reap_one(used_buffer& out) {
    if (in_order_) [[unlikely]]
      return reap_one_in_order(out);
    return reap_one_as<false>(out);
  }

  /// Out of line: inlined twice, the single reap made GCC lay out the common one worse.
  [[gnu::noinline]] errc reap_one_in_order(used_buffer& out) { return reap_one_as<true>(out); }

  template <bool InOrder>
  [[gnu::always_inline]] inline errc reap_one_as(used_buffer& out) {
    if constexpr (InOrder) {
      if (in_order_left_ != 0) return reap_in_order(out);
    }
    const packed::desc& d = view_.ring[last_used_];
    // D3 (2.8.21.2, partner V2): the device wrote id and len before it released these flags.
    const std::uint16_t flags = load_acquire<E>(d.flags);
    if (!packed::is_used(flags, used_wrap_)) return errc::empty;
    B::after_observe();
    // 2.8.1: the device only writes used descriptors over chains it was given; with none
    // outstanding this slot cannot hold one.
    if (outstanding_ == 0) return fail(errc::used_unexpected);
    const std::uint16_t id = get<E>(d.id);
    const std::uint32_t len = detail::packed_used_len(flags, get<E>(d.len));
    if (id >= size_) return fail(errc::used_id_out_of_range);
    const id_info& s = ids_[id];
    // A used id must name a chain the device was given: in use and already published. IN_ORDER
    // keeps no kick generation per chain (reap_batch<true, ...> leaves it): there the chains in use
    // are known by position.
    if (InOrder ? !in_order_outstanding(id) : s.batch >= batch_) {
      return fail(errc::used_id_not_outstanding);
    }
    // 2.8.4 / 2.7.8.2: the used length may not exceed the buffer's device-writable space.
    if (len > s.writable) return fail(errc::used_len_too_large);
    // IN_ORDER: the oldest chain in use has its head at last_used_ (take_id); any other id
    // is the last of several chains the device used at once (2.8.20).
    if (InOrder && id != last_used_) [[unlikely]]
      return start_in_order_batch(id, len, out);
    return reclaim(id, len, out);
  }

  /// get_used(span) one reap_one at a time from out[n] on (checked mode, an IN_ORDER batch
  /// being handed out, or what reap_batch<true, ...> leaves).
  [[gnu::noinline]] result<std::size_t> reap_each(std::span<used_buffer> out, std::size_t n) {
    for (; n < out.size(); ++n) {
      // Written in place: a used_buffer returned through result<> and copied costs a
      // store-forwarding stall per completion.
      const errc e = reap_one(out[n]);
      if (e != errc::ok) {
        if (e == errc::empty || n != 0) break;
        return e;
      }
    }
    if (n != 0) after_reap();
    return n;
  }

  /// get_used(span) without checked mode: reap_one's rules, in the same order, with the ring
  /// position, the id stack and the counters in registers for the whole batch. InOrder: every
  /// used descriptor names one chain, the oldest; at the first that does not (the last of a
  /// batch the device used at once, 2.8.20, or a rule broken) reap_each takes over. Out of
  /// line: inlined into get_used, GCC kept fewer of the loop's values in registers.
  /// OneSlot: every chain in use takes one ring slot (multi_slot_chains_ == 0), so a used id
  /// that passes the checks names a one-slot chain and the next used descriptor is at pos + 1
  /// without reading the chain's record (see detail::step_by_chain for why that matters).
  template <bool InOrder, bool OneSlot>
  [[gnu::noinline]] result<std::size_t> reap_batch(std::span<used_buffer> out) {
    const std::uint32_t start = last_used_;
    std::uint32_t pos = start;
    // 2.8.1: used in lap `wrap` means AVAIL == USED == wrap. The counter lives in `want` only
    // (both bits flip together), one register less in the loop.
    const std::uint16_t want0 = detail::packed_used_bits(used_wrap_);
    std::uint16_t want = want0;
    // A used descriptor in this lap with WRITE set: the two flip together on a wrap.
    constexpr std::uint16_t written_bits = detail::packed_wrap_bits | packed::desc_f_write;
    std::uint16_t want_written = want0 | packed::desc_f_write;
    const std::uint32_t size = size_;
    const std::uint64_t batch = batch_;
    const packed::desc* const ring = view_.ring;
    id_info* const ids = ids_.data();
    // The id stack through a pointer: one store and one increment per id.
    std::uint16_t* free_top = free_ids_.data() + free_top_;
    errc e = errc::ok;
    bool other = false;              // InOrder: a used descriptor for reap_one
    std::uint32_t multi_reaped = 0;  // !OneSlot: chains of more than one slot reaped
    // 2.8.1: the device writes used descriptors only over chains it was given, so there are at
    // most `outstanding_` of them; a used descriptor beyond that is checked after the loop.
    const std::size_t bound = std::min<std::size_t>(out.size(), outstanding_);
    used_buffer* o = out.data();
    used_buffer* const end = o + bound;
    // The descriptor at pos through a pointer (one increment per step, not an index scaled
    // each time); pos itself is kept in step only where it is compared (IN_ORDER) or stepped
    // by a count (chains of several slots).
    constexpr bool by_pointer = OneSlot && !InOrder;
    const packed::desc* dp = ring + pos;
    const packed::desc* const ring_end = ring + size;
    // OneSlot: the batch in runs that end at the ring's end or the batch's, whichever comes
    // first, so that a step tests one end, not two. (Chains of several slots step by their
    // own count: there each step tests the ring's end.)
    const auto run_stop = [&] {
      if constexpr (by_pointer) return o + std::min(end - o, ring_end - dp);
      if constexpr (OneSlot && !by_pointer) {
        return o + std::min<std::size_t>(static_cast<std::size_t>(end - o), size - pos);
      }
      return end;
    };
    for (used_buffer* stop = run_stop();; ++o) {
      if (o == stop) {
        if constexpr (OneSlot) {
          if (by_pointer ? dp == ring_end : pos == size) {
            dp = ring;
            pos = 0;
            want ^= detail::packed_wrap_bits;
            want_written ^= detail::packed_wrap_bits;
          }
          stop = run_stop();
        }
        if (o == end) break;
      }
      const packed::desc& d = by_pointer ? *dp : ring[pos];
      // D3 (2.8.21.2, partner V2): the device wrote id and len before it released these flags;
      // each read of them below is an acquire, and id and len are read after the one that decides.
      std::uint32_t len = 0;
      // One test for a receive completion (used in this lap, WRITE set). Anything else is
      // decided on a second read of the flags, whole: keeping the first read alive for it
      // costs a register copy per completion, and the device may have completed the
      // descriptor in between (then the second read is the one that says used, and whether
      // with WRITE). A used descriptor without WRITE has its len ignored (2.8.4).
      if ((load_acquire<E>(d.flags) & written_bits) == want_written) [[likely]] {
        B::after_observe();
        len = get<E>(d.len);
      } else {
        const std::uint16_t flags = load_acquire<E>(d.flags);
        if ((flags & detail::packed_wrap_bits) != want) break;
        B::after_observe();
        len = detail::packed_used_len(flags, get<E>(d.len));
      }
      const std::uint32_t id = get<E>(d.id);
      if constexpr (InOrder) {
        // The oldest chain in use, whose id is its head slot (take_id), is in range and, with
        // fewer than outstanding_ reaped, published: for this id reap_one's range and
        // outstanding tests cannot fail. Any other id gets all of them in reap_one.
        if (id != pos) [[unlikely]] {
          other = true;
          break;
        }
      } else {
        if (id >= size) [[unlikely]] {
          e = errc::used_id_out_of_range;
          break;
        }
      }
      id_info& s = ids[id];
      if constexpr (!InOrder) {
        // A used id must name a chain the device was given: in use and already published.
        if (s.batch >= batch) [[unlikely]] {
          e = errc::used_id_not_outstanding;
          break;
        }
      }
      // 2.8.4 / 2.7.8.2: the used length may not exceed the buffer's device-writable space.
      if (len > s.writable) [[unlikely]] {
        e = errc::used_len_too_large;
        break;
      }
      o->token = s.token;
      o->len = len;
      // The next s.slots slots from pos come back, whichever chain took them.
      if constexpr (by_pointer) {
        ++dp;  // the ring's end is the run's (run_stop)
      } else {
        if constexpr (OneSlot) {
          ++pos;  // the ring's end is the run's (run_stop)
        } else {
          multi_reaped += s.slots != 1;
          pos = detail::step_by_chain(pos, s.slots);
          s.slots = 1;
          if (pos >= size) {
            pos -= size;
            want ^= detail::packed_wrap_bits;
            want_written ^= detail::packed_wrap_bits;
          }
        }
      }
      if constexpr (!InOrder) s.batch = free_batch;
      // IN_ORDER ids are slots, not a free list.
      if constexpr (!InOrder) *free_top++ = static_cast<std::uint16_t>(id);
    }
    if constexpr (by_pointer) pos = static_cast<std::uint32_t>(dp - ring);
    const auto n = static_cast<std::size_t>(o - out.data());
    if (n == outstanding_ && n < out.size() && e == errc::ok) [[unlikely]] {
      // 2.8.1: with no chain outstanding the next slot cannot hold a used descriptor. D3
      // (2.8.21.2, partner V2): only its flags are read.
      if ((load_acquire<E>(ring[pos].flags) & detail::packed_wrap_bits) == want) {
        e = errc::used_unexpected;
      }
    }
    // The slots that came back, from the positions: they are at most the size_ - num_free_
    // slots that were in use, so the counter flipped at most once.
    const bool flipped = want != want0;
    const std::uint32_t freed = pos - start + (flipped ? size : 0U);
    last_used_ = static_cast<std::uint16_t>(pos);
    used_wrap_ = used_wrap_ != flipped;
    outstanding_ -= static_cast<std::uint32_t>(n);
    multi_slot_chains_ -= multi_reaped;
    free_top_ = static_cast<std::uint32_t>(free_top - free_ids_.data());
    num_free_ += freed;
    this->stats_.reaped += n;
    if (InOrder && other) [[unlikely]]
      return reap_each(out, n);
    if (e != errc::ok) [[unlikely]] {
      fail(e);
      if (n == 0) return e;
    }
    if (n != 0) after_reap();
    return n;
  }

  /// IN_ORDER: is `id` one of the outstanding_ chains (published, not reaped)? They follow each
  /// other from last_used_, each id its head slot (take_id); the oldest is the common case.
  bool in_order_outstanding(std::uint16_t id) const noexcept {
    std::uint32_t at = last_used_;
    for (std::uint32_t k = 0; k < outstanding_; ++k) {
      if (at == id) return true;
      at += ids_[at].slots;
      if (at >= size_) at -= size_;
    }
    return false;
  }

  [[gnu::noinline]] errc start_in_order_batch(std::uint16_t id, std::uint32_t len,
                                              used_buffer& out) {
    // 2.8.11: one used descriptor stands for every chain up to and including `id`.
    // The chains in use follow each other from last_used_, each id its head slot (take_id), and
    // `id` is one of them (outstanding), so the walk ends at it.
    std::uint32_t n = 1;
    for (std::uint32_t i = last_used_; i != id; ++n) {
      i += ids_[i].slots;
      if (i >= size_) i -= size_;
    }
    in_order_left_ = n;
    in_order_last_len_ = len;
    return reap_in_order(out);
  }

  [[gnu::noinline]] errc reap_in_order(used_buffer& out) {
    // Earlier chains of an IN_ORDER batch carry no length of their own (2.8.11): report 0.
    const std::uint32_t len = --in_order_left_ == 0 ? in_order_last_len_ : 0;
    return reclaim(last_used_, len, out);
  }

  errc reclaim(std::uint16_t id, std::uint32_t len, used_buffer& out) {
    id_info& s = ids_[id];
    // The slots that come back are the next s.slots from last_used, whichever chain took them:
    // every one of them must have been published.
    if (!packed_shadow_slots(this->shadow_, last_used_, s.slots, size_, detail::desc_state::device,
                             detail::desc_state::free)) {
      return fail(errc::state_violation);
    }
    out.token = s.token;
    out.len = len;
    num_free_ += s.slots;
    detail::packed_advance(last_used_, used_wrap_, s.slots, size_);
    if (s.slots != 1) {
      --multi_slot_chains_;
      s.slots = 1;
    }
    s.batch = free_batch;
    if (!in_order_) free_ids_[free_top_++] = id;  // IN_ORDER ids are slots (take_id)
    --outstanding_;
    ++this->stats_.reaped;
    return errc::ok;
  }

  void set_driver_flags(std::uint16_t f) noexcept {
    if (driver_flags_ != f) {  // each store dirties a line the device polls
      store_relaxed<E>(view_.driver_event->flags, f);
      driver_flags_ = f;
    }
  }

  /// While interrupts are enabled in desc mode (not delayed), the event follows the reaped
  /// position, so the next used descriptor interrupts again without a new enable call (as the
  /// split ring's used_event does).
  void after_reap() noexcept {
    if constexpr (S::uses_event_idx) {
      if (driver_flags_ == packed::event_flags_desc && !delayed_) {
        store_relaxed<E>(view_.driver_event->off_wrap,
                         packed::make_off_wrap(last_used_, used_wrap_));
      }
    }
  }

  bool enable_at(std::uint16_t off, bool wrap) {
    if constexpr (S::uses_event_idx) {
      // 2.8.10: off_wrap first, then flags: the device reads flags, then off_wrap.
      store_relaxed<E>(view_.driver_event->off_wrap, packed::make_off_wrap(off, wrap));
      driver_flags_ = packed::event_flags_desc;
      store_relaxed<E>(view_.driver_event->flags, packed::event_flags_desc);
    } else if constexpr (S::uses_flags) {
      set_driver_flags(packed::event_flags_enable);
    }
    // D4 (2.8.21.3, partner V3): the re-enable must be visible before we look for used
    // descriptors again, else a completion between the two is never signalled nor seen.
    B::full();
    if (in_order_left_ != 0) return true;
    return packed::is_used(load_acquire<E>(view_.ring[last_used_].flags), used_wrap_);
  }

  packed::ring_view view_;
  std::uint32_t size_;
  bool in_order_;
  std::uint32_t indirect_max_ = 0;
  std::uint32_t indirect_threshold_ = 0;
  detail::indirect_tables tables_;  ///< one table per buffer id (indirect_max_ entries)
  std::vector<id_info> ids_;

  // Avail side (driver-private).
  std::uint32_t num_free_ = 0;
  std::vector<std::uint16_t> free_ids_;  ///< stack of free buffer ids
  std::uint32_t free_top_ = 0;
  std::uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  bool head_pending_ = false;
  std::uint16_t head_slot_ = 0;
  std::uint16_t head_flags_ = 0;
  std::uint32_t staged_chains_ = 0;
  std::uint32_t staged_slots_ = 0;
  std::uint64_t batch_ = 1;
  std::uint16_t pub_off_ = 0;
  bool pub_wrap_ = true;
  std::uint16_t driver_flags_ = 0;
  bool delayed_ = false;  ///< the desc-mode event is a delayed one: it does not follow reaps

  // Used side (driver-private).
  std::uint16_t last_used_ = 0;
  bool used_wrap_ = true;
  std::uint32_t outstanding_ = 0;  ///< chains published and not reaped
  /// Chains in use (staged or outstanding) taking more than one ring slot: while there are
  /// none, the batch reap steps one slot per used descriptor (reap_batch<..., true>).
  std::uint32_t multi_slot_chains_ = 0;
  std::uint32_t in_order_left_ = 0;
  std::uint32_t in_order_last_len_ = 0;
};

// =============================================================================================
// Device
// =============================================================================================

/// The device side of a packed ring. Satisfies device_queue. Treats the whole ring as hostile.
/// `mem` translates the driver's addresses and must outlive the queue (a pointer is kept).
template <packed_queue_policy P = default_policy, memory_map M = identity_memory>
class packed_device : public detail::queue_common<P> {
  using base = detail::queue_common<P>;
  using E = typename P::endian;
  using B = typename P::barriers;
  using S = typename P::suppression;
  using guard = typename base::guard;
  using detail::queue_common<P>::fail;

 public:
  /// Touches no ring memory. Throws virtq::error: invalid_argument (a null area),
  /// bad_queue_size, feature_missing / feature_conflict (as check_features).
  /// invalid_argument also for a device_options::packed_start offset not below the size.
  packed_device(packed::ring_view v, features f, const M& mem, device_options o = {})
      : view_(v),
        size_(v.size),
        mem_(&mem),
        in_order_(f.has(feature::in_order)),
        indirect_(f.has(feature::indirect_desc)),
        start_off_(static_cast<std::uint16_t>(o.packed_start & 0x7FFFU)),
        start_wrap_((o.packed_start & 0x8000U) != 0) {
    detail::check_packed_view(v);
    detail::check_features<P>(f, true);
    // 2.8.1: a position is an offset into the ring of Queue Size descriptors.
    if (start_off_ >= size_) {
      detail::throw_error(errc::invalid_argument, "packed_start: offset not below the queue size");
    }
    held_.assign(size_, held{});
    if (in_order_) id_at_.assign(size_, 0);
    this->shadow_.resize(size_);
    init_state();
  }

  packed_device(const packed_device&) = delete;
  packed_device& operator=(const packed_device&) = delete;

  /// The next available chain, validated descriptor by descriptor; errc::empty; or a fatal
  /// errc (queue broken, chain left empty).
  [[gnu::flatten]] errc pop(chain& c) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]] {
      c.begin(0, 0);
      return errc::broken;
    }
    const packed::desc& d = view_.ring[next_avail_];
    // V1 (2.8.21.1, partner D1): the head's flags are acquired before any other field of the
    // chain is read; the continuation descriptors were published by the same release.
    const std::uint16_t f0 = load_acquire<E>(d.flags);
    if ((f0 & detail::packed_wrap_bits) != detail::packed_avail_bits(avail_wrap_)) [[unlikely]]
      return not_available(c, f0);
    B::after_observe();
    // The receive case: one descriptor, direct. Anything else (NEXT, INDIRECT), or a head slot
    // the device still holds (a chain overrun, 2.8.4), takes the general walk.
    if (((f0 & (packed::desc_f_next | packed::desc_f_indirect)) != 0) | (held_slots_ == size_))
        [[unlikely]]
      return pop_walk(c, f0);
    const std::uint64_t addr = get<E>(d.addr);
    const std::uint32_t len = get<E>(d.len);
    // 2.8.6: the buffer id sits in the chain's last descriptor, here the only one.
    const std::uint16_t id = get<E>(d.id);
    const bool writable = (f0 & packed::desc_f_write) != 0;
    if (const errc e = c.begin_one(*mem_, id, size_, addr, len, writable); e != errc::ok)
        [[unlikely]]
      return bad(c, e);
    // 2.8.4: the driver picks ids below the queue size and never reuses one still in flight.
    if ((id >= size_) || held_[id].in_use()) [[unlikely]]
      return bad(c, errc::packed_bad_id);
    std::uint16_t slot = next_avail_;
    bool wrap = avail_wrap_;
    detail::packed_advance(slot, wrap, 1, size_);
    return accept(c, id, writable ? len : 0U, 1, slot, wrap);
  }

  /// Pops up to out.size() available chains AS LONG AS each is one direct descriptor (no NEXT,
  /// no INDIRECT): the receive fast path, validated as pop() validates (V1 per descriptor; buffer
  /// id in range and not in flight, 2.8.4; translation through the memory map; a zero-length
  /// buffer gives data == nullptr and is not translated, as chain::append). It stops BEFORE the
  /// first chain that is not one direct descriptor and leaves it for pop(chain&): 0 means "none
  /// available" or "the next one needs pop(chain&)". A fatal error with nothing popped returns
  /// the errc (queue broken); after k > 0 were popped it returns k (their buffers were validated
  /// and are the caller's until reset), the queue is broken, error() names the rule and the next
  /// call, complete() included, says broken.
  result<std::size_t> pop_buffers(std::span<popped_buffer> out) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    return pop_locked(out);
  }

  /// Stages a used descriptor for chain `id` with `len` bytes written. invalid_argument (a
  /// caller error; the queue stays usable) if `id` is not a popped chain, `len` exceeds its
  /// writable bytes (2.8.4 / 2.7.8.2: the device MUST NOT over-state), or, with IN_ORDER, `id`
  /// is not the oldest popped chain (2.8.11).
  errc complete(std::uint16_t id, std::uint32_t len) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    if (in_order_ ? refused<true>(held_.data(), id_at_.data(), size_, next_used_, id, len)
                  : refused<false>(held_.data(), nullptr, size_, next_used_, id, len)) [[unlikely]]
      return errc::invalid_argument;
    const errc e = write_used(id, len, release_id(id));
    if (e != errc::ok) return e;
    ++this->stats_.completed;
    return errc::ok;
  }

  /// complete(id, len) for each entry in order, one used descriptor each, in completion order.
  /// Stops at the first entry complete(id, len) would refuse: invalid_argument if that is the
  /// first, else the count completed before it (the queue stays usable; the rest is not staged).
  result<std::size_t> complete(std::span<const used_entry> done) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    return complete_locked(done);
  }

  errc complete(const chain& c, std::uint32_t len) { return complete(c.id(), len); }

  /// pop_buffers and complete in one pass (the contract: device_queue in virtqueue.hpp). Packed
  /// specifics: with no chain in flight the used position is the avail position, so each used
  /// descriptor is written over the descriptor just read and no id record is kept; an id the
  /// driver offers twice within one batch is then served twice, and the driver's reaping
  /// refuses the second (2.8.4). With chains in flight, pop_buffers + complete one chain at a
  /// time; with IN_ORDER they must be used first (2.8.20).
  template <buffer_server F>
  result<std::size_t> serve_buffers(std::size_t max, F&& f) {
    guard g(this->lock_);
    if (this->broken()) [[unlikely]]
      return errc::broken;
    if (in_flight_ != 0) {
      if (in_order_) return errc::invalid_argument;
      return serve_each(max, f);
    }
    return serve_in_place(max, f);
  }

 private:
  // pop_buffers, the lock held and the queue not broken.
  result<std::size_t> pop_locked(std::span<popped_buffer> out) {
    // 2.8.4: the driver can only make available slots the device gave back, so a batch ends
    // where the slots the device still holds begin.
    const std::uint32_t room = size_ - held_slots_;
    const std::size_t want = std::min<std::size_t>(out.size(), room);
    errc e = errc::ok;
    const std::size_t n = in_order_ ? take_buffers<true>(out.data(), want, e)
                                    : take_buffers<false>(out.data(), want, e);
    if (n < out.size() && e == errc::ok) [[unlikely]]
      e = stop_reason(n == room);
    if (n != 0) after_pop(static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(n));
    if (e != errc::ok) [[unlikely]] {
      fail(e);
      if (n == 0) return e;
    }
    return n;
  }

  // complete(span), the lock held and the queue not broken.
  result<std::size_t> complete_locked(std::span<const used_entry> done) {
    errc e = errc::ok;
    const std::size_t n = in_order_ ? use_entries<true>(done, e) : use_entries<false>(done, e);
    if (e != errc::ok) [[unlikely]]
      return fail(e);  // checked mode's shadow state: a used descriptor over slots not popped
    this->stats_.completed += n;
    if (n == 0 && !done.empty()) return errc::invalid_argument;
    return n;
  }

 public:
  /// VIRTIO_F_IN_ORDER (2.8.11): completes the `count` oldest popped chains with ONE used
  /// descriptor carrying the last one's id and `len_of_last`; it skips all their slots.
  errc complete_in_order(std::uint16_t count, std::uint32_t len_of_last) {
    guard g(this->lock_);
    if (this->broken()) return errc::broken;
    if (!in_order_ || count == 0 || count > in_flight_) return errc::invalid_argument;
    // The popped chains follow each other from next_used_ (id_at_: id by head slot).
    std::uint32_t at = next_used_;
    std::uint16_t id = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      id = id_at_[at];
      at += held_[id].slots();
      if (at >= size_) at -= size_;
    }
    if (!held_[id].takes(len_of_last)) return errc::invalid_argument;
    std::uint32_t slots = 0;
    at = next_used_;
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::uint32_t k = release_id(id_at_[at]);
      slots += k;
      at += k;
      if (at >= size_) at -= size_;
    }
    if (const errc e = write_used(id, len_of_last, slots); e != errc::ok) return e;
    this->stats_.completed += count;
    return errc::ok;
  }

  /// Publishes the staged used descriptors (V2) and says whether the driver wants an
  /// interrupt (V3).
  bool interrupt_prepare() {
    guard g(this->lock_);
    if (this->broken() || staged_slots_ == 0) return false;
    // 2.8.9: id and len, then flags. The driver reads used descriptors in ring order and
    // cannot pass the first one before its flags change, so only that one needs the release;
    // it goes last.
    B::before_publish();
    // V2 (2.8.21.2, partner D3): ids, lens and the other flags of the whole batch were written
    // (put_used) before this release of the first used descriptor's flags.
    store_release<E>(view_.ring[pending_slot_].flags, pending_flags_);
    const std::uint32_t added = staged_slots_;
    staged_slots_ = 0;
    bool notify = true;
    if constexpr (S::uses_flags || S::uses_event_idx) {
      // V3 (2.8.21.3, partner D4): store of used flags before the load of the driver's area.
      B::full();
      notify =
          detail::peer_wants_event<S, E>(*view_.driver_event, next_used_, used_wrap_, added, size_);
    }
    if (notify) {
      ++this->stats_.interrupts;
    } else {
      ++this->stats_.interrupts_suppressed;
    }
    return notify;
  }

  void disable_notifications() {
    guard g(this->lock_);
    if (this->broken()) return;
    if constexpr (S::uses_flags || S::uses_event_idx) {
      set_device_flags(packed::event_flags_disable);
    }
  }

  /// Re-enables notifications; true if chains were made available meanwhile (pop again).
  bool enable_notifications() {
    guard g(this->lock_);
    if (this->broken()) return false;
    if constexpr (S::uses_event_idx) {
      // 2.8.10: desc mode naming the next slot we will look at.
      store_relaxed<E>(view_.device_event->off_wrap,
                       packed::make_off_wrap(next_avail_, avail_wrap_));
      device_flags_ = packed::event_flags_desc;
      store_relaxed<E>(view_.device_event->flags, packed::event_flags_desc);
    } else if constexpr (S::uses_flags) {
      set_device_flags(packed::event_flags_enable);
    }
    // V4 (2.8.21.3, partner D2): the re-enable must be visible before we look at the ring
    // again, else a chain published in between is neither notified nor seen.
    B::full();
    return packed::is_avail(load_acquire<E>(view_.ring[next_avail_].flags), avail_wrap_);
  }

  /// Forgets every chain and returns to the initial state (the driver re-initialises the ring).
  void reset() {
    guard g(this->lock_);
    init_state();
  }

  std::uint32_t size() const noexcept { return size_; }
  /// The next descriptor the device reads, offset | wrap counter << 15 (vhost-user's
  /// GET_VRING_BASE; feed it back as device_options::packed_start to resume there).
  std::uint16_t avail_position() const {
    guard g(this->lock_);
    return static_cast<std::uint16_t>(next_avail_ | (avail_wrap_ ? 0x8000U : 0U));
  }
  /// Chains popped and not yet completed.
  std::uint32_t in_flight() const noexcept { return in_flight_; }
  const packed::ring_view& view() const noexcept { return view_; }

 private:
  void init_state() {
    std::fill(held_.begin(), held_.end(), held{});
    // 2.8.1: a fresh ring starts at offset 0 with wrap counters 1 (the default start); a ring
    // resumed elsewhere (vhost-user SET_VRING_BASE) starts with nothing in flight, so the used
    // position is the avail one.
    next_avail_ = next_used_ = start_off_;
    avail_wrap_ = used_wrap_ = start_wrap_;
    staged_slots_ = 0;
    in_flight_ = 0;
    held_slots_ = 0;
    // Ring memory is not touched (after a reset the device neither uses buffers nor notifies;
    // the driver re-initialises the ring): the area's content is unknown, so the next
    // disable/enable writes it.
    device_flags_ = 0xFFFF;
    this->shadow_.reset();
    this->clear_error();
  }

  /// The head's flags do not say "available in our lap": empty, or a rule broken.
  [[gnu::noinline]] errc not_available(chain& c, std::uint16_t f0) {
    // 2.8.1: AVAIL == USED == our wrap is neither available nor anything this device wrote
    // (its used descriptors at this slot carry the previous lap's counter).
    if (packed::is_used(f0, avail_wrap_)) return bad(c, errc::packed_bad_flags);
    return errc::empty;
  }

  /// The general walk: a chain linked by NEXT, or an indirect table, validated descriptor by
  /// descriptor. `f0` is the head's flags, already acquired (V1).
  [[gnu::noinline]] errc pop_walk(chain& c, std::uint16_t f0) {
    c.begin(0, size_);
    std::uint16_t slot = next_avail_;
    bool wrap = avail_wrap_;
    std::uint16_t flags = f0;
    std::uint32_t n = 0;
    const packed::desc* last = &view_.ring[slot];
    // 2.8.4: a chain is at most Queue Size descriptors, and the driver can only reuse slots the
    // device gave back with used descriptors: the chain must end before the slots still held.
    const std::uint32_t room = size_ - held_slots_;
    for (;;) {
      if (n == room) return bad(c, errc::packed_chain_overrun);
      const packed::desc& d = view_.ring[slot];
      if (n != 0) {
        flags = load_relaxed<E>(d.flags);
        // 2.8.6 / 2.8.1: every descriptor of a chain is made available under the wrap counter
        // of its own slot before the head is.
        if (!packed::is_avail(flags, wrap)) return bad(c, errc::packed_bad_flags);
      }
      ++n;
      last = &d;
      const std::uint64_t addr = get<E>(d.addr);
      const std::uint32_t len = get<E>(d.len);
      if ((flags & packed::desc_f_indirect) != 0) {
        // 2.8.7: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the
        // VIRTIO_F_INDIRECT_DESC feature was negotiated."
        if (!indirect_) return bad(c, errc::indirect_not_negotiated);
        // 2.8.7: "A driver MUST NOT write direct descriptors with VIRTQ_DESC_F_INDIRECT set in
        // a scatter-gather list linked by VIRTQ_DESC_F_NEXT": in a packed ring an indirect
        // descriptor is a chain on its own (unlike split 2.7.5.3.2, no direct prefix).
        if (n != 1 || (flags & packed::desc_f_next) != 0) {
          return bad(c, errc::indirect_with_next);
        }
        // 2.8.7: the device ignores WRITE on the descriptor that points at the table.
        if (const errc e = walk_indirect(c, addr, len); e != errc::ok) return bad(c, e);
      } else {
        const errc e = c.append(*mem_, addr, len, (flags & packed::desc_f_write) != 0);
        if (e != errc::ok) return bad(c, e);
      }
      detail::packed_advance(slot, wrap, 1, size_);
      if ((flags & packed::desc_f_next) == 0) break;
    }
    // 2.8.6: the buffer id sits in the chain's last descriptor. 2.8.4: the driver picks ids
    // below the queue size and never reuses one still in flight.
    const std::uint16_t id = get<E>(last->id);
    if (id >= size_ || held_[id].in_use()) return bad(c, errc::packed_bad_id);
    c.set_id(id);
    return accept(c, id, c.writable_bytes(), n, slot, wrap);
  }

  /// A validated chain of `n` slots ending before (`slot`, `wrap`) becomes ours.
  errc accept(chain& c, std::uint16_t id, std::uint64_t writable, std::uint32_t n,
              std::uint16_t slot, bool wrap) {
    // Checked mode: the device never reads a slot it has not given back (as a used skip).
    if (!packed_shadow_slots(this->shadow_, next_avail_, n, size_, detail::desc_state::free,
                             detail::desc_state::device)) {
      return bad(c, errc::state_violation);
    }
    c.set_ring_slots(static_cast<std::uint16_t>(n));
    // A used len is a u32, so a bound saturated at 2^32 - 1 rejects exactly the same lens.
    held_[id] = held{writable, n};
    if (in_order_) id_at_[next_avail_] = id;  // next_avail_ is still the head's slot
    next_avail_ = slot;
    avail_wrap_ = wrap;
    after_pop(1, n);
    return errc::ok;
  }

  /// `chains` chains of `slots` ring slots in all were popped; next_avail is past them.
  void after_pop(std::uint32_t chains, std::uint32_t slots) noexcept {
    held_slots_ += slots;
    in_flight_ += chains;
    this->stats_.popped += chains;
    follow_event();
  }

  /// next_avail moved.
  void follow_event() noexcept {
    if constexpr (S::uses_event_idx) {
      // While notifications are enabled in desc mode the event follows the popped position,
      // so the driver's next publish notifies again (as the split ring's avail_event does).
      if (device_flags_ == packed::event_flags_desc) {
        store_relaxed<E>(view_.device_event->off_wrap,
                         packed::make_off_wrap(next_avail_, avail_wrap_));
      }
    }
  }

  /// serve_buffers with chains in flight (not IN_ORDER): pop_buffers and complete(span) one
  /// chain at a time, so every rule and every result is theirs.
  template <class F>
  result<std::size_t> serve_each(std::size_t max, F& f) {
    std::size_t n = 0;
    for (; n < max; ++n) {
      popped_buffer b;
      const result<std::size_t> got = pop_locked(std::span(&b, 1));
      if (!got) return n == 0 ? got : result<std::size_t>(n);  // fatal: the queue is broken
      if (*got == 0) break;
      const used_entry u{b.id, f(static_cast<const popped_buffer&>(b))};
      const result<std::size_t> done = complete_locked(std::span(&u, 1));
      if (!done) {
        // invalid_argument: f over-stated, the chain stays in flight; else fatal (broken).
        return n == 0 ? done : result<std::size_t>(n);
      }
    }
    return n;
  }

  /// serve_buffers with nothing in flight: next_used is next_avail (every slot popped was
  /// given back), so each used descriptor is written over the descriptor just read, and no id
  /// record is needed for a chain that never waits.
  template <class F>
  result<std::size_t> serve_in_place(std::size_t max, F& f) {
    std::size_t n = 0;
    errc e = errc::ok;
    bool over = false;
    popped_buffer kept{};  // the chain f over-stated, as validated
    // The first used descriptor of a publish keeps its flags for interrupt_prepare (V2).
    bool hold = staged_slots_ == 0;
    while (n < max) {
      // Up to the ring's end: the wrap counter is tested once per run (2.8.1).
      const auto run =
          static_cast<std::uint32_t>(std::min<std::size_t>(max - n, size_ - next_avail_));
      const std::uint32_t got = serve_run(f, run, hold, e, over, kept);
      if (got != 0) {
        hold = false;
        n += got;
        detail::packed_advance(next_avail_, avail_wrap_, got, size_);
        next_used_ = next_avail_;
        used_wrap_ = avail_wrap_;
      }
      if (got != run) break;
    }
    staged_slots_ += static_cast<std::uint32_t>(n);
    this->stats_.popped += n;
    this->stats_.completed += n;
    if (over) [[unlikely]] {
      keep_in_flight(kept);
    } else if (n < max && e == errc::ok) [[unlikely]] {
      e = stop_reason(false);  // nothing held: an overrun is impossible
    }
    if (n != 0 || over) follow_event();
    if (e != errc::ok) [[unlikely]] {
      fail(e);
      if (n == 0) return e;
    }
    if (over && n == 0) return errc::invalid_argument;
    return n;
  }

  /// serve_in_place within one lap: `run` slots from next_avail at most. Stops at the first
  /// descriptor that is not available, has NEXT or INDIRECT, breaks a rule (`e`, without
  /// failing), or that f over-states (`over`, `kept`: the slot is left for keep_in_flight).
  template <class F>
  [[gnu::always_inline]] inline std::uint32_t serve_run(F& f, std::uint32_t run, bool hold, errc& e,
                                                        bool& over, popped_buffer& kept) {
    packed::desc* d = view_.ring + next_avail_;
    const M& mem = *mem_;
    const std::uint32_t size = size_;
    const std::uint16_t expect = detail::packed_avail_bits(avail_wrap_);
    // In place, the used descriptor is in the lap it was available in (2.8.1: AVAIL == USED ==
    // the device's used wrap counter, here equal to the avail one).
    const std::uint16_t used_bits = detail::packed_used_bits(avail_wrap_);
    packed::desc* const first = d;
    // One descriptor; false: stop here.
    const auto one = [&](packed::desc & x, bool keep_flags) __attribute__((always_inline)) {
      const auto slot = next_avail_ + static_cast<std::uint32_t>(&x - first);
      // Nothing is in flight: no id can be, and the in-flight test is compiled out.
      popped_buffer b;
      if (!take_desc<false>(x, expect, slot, held_.data(), mem, size, b, e)) return false;
      const std::uint32_t wrote = f(static_cast<const popped_buffer&>(b));
      // 2.7.8.2: at most the writable bytes; a device-readable buffer bounds it at 0.
      if (wrote > (b.writable ? b.len : 0U)) [[unlikely]] {
        over = true;
        kept = b;
        return false;
      }
      // Checked mode: device -> free, as complete() moves it (cannot fail: set just above).
      static_cast<void>(packed_shadow_slots(this->shadow_, slot, 1, size,
                                            detail::desc_state::device, detail::desc_state::free));
      put_used(x, slot, b.id, wrote, used_bits, keep_flags);
      return true;
    };
    packed::desc* const end = d + run;
    if (hold && d != end) {
      if (!one(*d, true)) return 0;
      ++d;
    }
    for (; d != end; ++d) {
      if (!one(*d, false)) break;
    }
    return static_cast<std::uint32_t>(d - first);
  }

  /// serve_in_place: f over-stated `b`, the chain at next_avail, as validated (the ring is not
  /// read again: the driver may have rewritten it). It stays in flight as pop_buffers would
  /// have left it (its id, its writable bytes, its one slot); the used position stays there.
  [[gnu::cold, gnu::noinline]] void keep_in_flight(const popped_buffer& b) noexcept {
    held_[b.id] = held{b.writable ? b.len : 0U, 1U};
    if (in_order_) id_at_[next_avail_] = b.id;
    detail::packed_advance(next_avail_, avail_wrap_, 1, size_);
    held_slots_ += 1;
    in_flight_ += 1;
    this->stats_.popped += 1;
  }

  /// pop_buffers' loop: one-descriptor chains from next_avail on, at most `want`, with the ring
  /// position, the wrap counter and the id records in registers. Stops at the first descriptor
  /// that is not available, has NEXT or INDIRECT, or breaks a rule (`e`, without failing).
  template <bool InOrder>
  std::size_t take_buffers(popped_buffer* out, std::size_t want, errc& e) {
    std::size_t n = 0;
    while (n < want) {
      // Up to the ring's end: the wrap counter is tested once per run (2.8.1).
      const auto run =
          static_cast<std::uint32_t>(std::min<std::size_t>(want - n, size_ - next_avail_));
      const std::uint32_t got = take_run<InOrder>(out + n, run, e);
      n += got;
      detail::packed_advance(next_avail_, avail_wrap_, got, size_);
      if (got != run) break;
    }
    return n;
  }

  /// One descriptor of a batch (pop_buffers, serve_buffers) at ring position `slot`, validated
  /// as pop() validates: its flags acquired before its other fields (V1, 2.8.21.1, partner D1;
  /// a later head of the batch may have been released by a later kick); available in this lap
  /// and one direct descriptor, in one masked compare against `expect` (2.8.1); its id below
  /// the queue size and, if any chain may be in flight (AnyHeld), not in flight (2.8.4); the
  /// buffer translated (2.8.6 with 2.7.5; a zero-length buffer is not, as chain::append);
  /// checked mode's shadow. False: stop here, `e` set if a rule was broken.
  template <bool AnyHeld, class Held>  // Held: the per-id record, declared below
  [[gnu::always_inline]] inline bool take_desc(const packed::desc& d, std::uint16_t expect,
                                               std::uint32_t slot, const Held* rec, const M& mem,
                                               std::uint32_t size, popped_buffer& b, errc& e) {
    constexpr std::uint16_t mask =
        detail::packed_wrap_bits | packed::desc_f_next | packed::desc_f_indirect;
    const std::uint16_t f = load_acquire<E>(d.flags);
    if ((f & mask) != expect) return false;
    B::after_observe();
    const std::uint64_t addr = get<E>(d.addr);
    const std::uint32_t len = get<E>(d.len);
    // 2.8.6: the buffer id sits in the chain's last descriptor, here the only one.
    const std::uint16_t id = get<E>(d.id);
    const bool writable = (f & packed::desc_f_write) != 0;
    bool odd = (id >= size) | (len == 0);
    result<std::byte*> host = nullptr;
    if (!odd) [[likely]] {
      host = mem.translate(addr, len);
      odd = !host;
      if constexpr (AnyHeld) odd |= rec[id].in_use();
    }
    std::byte* data = nullptr;
    if (odd) [[unlikely]] {
      // Its own popped_buffer: one whose address escapes would keep the caller's in memory.
      popped_buffer o;
      e = odd_buffer(addr, len, id, o);
      if (e != errc::ok) return false;
      data = o.data;
    } else {
      data = *host;
    }
    // Checked mode: the device never reads a slot it has not given back.
    if (!packed_shadow_slots(this->shadow_, slot, 1, size, detail::desc_state::free,
                             detail::desc_state::device)) {
      e = errc::state_violation;
      return false;
    }
    b = popped_buffer{data, len, id, writable};
    return true;
  }

  /// take_buffers within one lap: `run` slots from next_avail at most, none past the last.
  template <bool InOrder>
  [[gnu::always_inline]] inline std::uint32_t take_run(popped_buffer* out, std::uint32_t run,
                                                       errc& e) {
    const packed::desc* d = view_.ring + next_avail_;
    held* const rec = held_.data();
    const M& mem = *mem_;
    const std::uint32_t size = size_;
    const std::uint16_t expect = detail::packed_avail_bits(avail_wrap_);
    const packed::desc* const first = d;
    const packed::desc* const end = d + run;
    // InOrder: each id at its slot (id_at_), side by side with the ring position.
    std::uint16_t* at = InOrder ? id_at_.data() + next_avail_ : nullptr;
    popped_buffer* o = out;
    for (; d != end; ++d, ++o) {
      const auto slot = next_avail_ + static_cast<std::uint32_t>(d - first);
      popped_buffer b;
      if (!take_desc<true>(*d, expect, slot, rec, mem, size, b, e)) break;
      *o = b;
      // 2.7.8.2: a device-readable buffer bounds its used len at 0.
      rec[b.id] = held{b.writable ? b.len : 0U, 1U};
      if constexpr (InOrder) *at++ = b.id;
    }
    return static_cast<std::uint32_t>(o - out);
  }

  /// A one-descriptor chain off the fast path, checked in pop()'s order (chain::begin_one, then
  /// the id): a zero-length buffer (accepted, not translated), or the rule it breaks.
  [[gnu::cold, gnu::noinline]] errc odd_buffer(std::uint64_t addr, std::uint32_t len,
                                               std::uint16_t id, popped_buffer& out) const {
    std::byte* data = nullptr;
    if (len != 0) {
      // 2.8.6 with 2.7.5: a buffer must lie inside guest memory.
      const result<std::byte*> host = mem_->translate(addr, len);
      if (!host) return host.error();
      data = *host;
    }
    // 2.8.4: the driver picks ids below the queue size and never reuses one still in flight.
    if (id >= size_ || held_[id].in_use()) return errc::packed_bad_id;
    out.data = data;
    out.len = len;
    out.id = id;
    return errc::ok;
  }

  /// Why take_buffers stopped short with no error: the slot at next_avail is not available
  /// (empty, or flags no driver writes: 2.8.1), is the head of a chain pop(chain&) must walk,
  /// or is available although every slot is still held by the device (2.8.4: overrun).
  [[gnu::cold, gnu::noinline]] errc stop_reason(bool room_exhausted) const noexcept {
    // V1 (2.8.21.1, partner D1): only the flags are read here.
    const std::uint16_t f = load_acquire<E>(view_.ring[next_avail_].flags);
    if ((f & detail::packed_wrap_bits) != detail::packed_avail_bits(avail_wrap_)) {
      // 2.8.1: AVAIL == USED == our wrap is neither available nor anything this device wrote.
      return packed::is_used(f, avail_wrap_) ? errc::packed_bad_flags : errc::ok;
    }
    // 2.8.4: "A driver MUST NOT create a descriptor chain longer than the Queue Size": with
    // every slot held, an available head could only overrun them.
    if (room_exhausted) return errc::packed_chain_overrun;
    return errc::ok;  // NEXT or INDIRECT: pop(chain&) walks it
  }

  /// What complete(id, len) and complete(span) refuse (invalid_argument): an id that is not a
  /// chain the device holds (2.8.4), a len over its writable bytes (2.7.8.2: "the device MUST
  /// NOT" over-state it), and with IN_ORDER any chain but the oldest popped one (2.8.11).
  /// `used_pos`: where the next used descriptor goes, the head slot of the oldest chain in
  /// flight (id_at: id_at_.data(), read only InOrder).
  template <bool InOrder, class Held>  // Held: the per-id record, declared below
  [[gnu::always_inline]] static inline bool refused(const Held* rec, const std::uint16_t* id_at,
                                                    std::uint32_t size, std::uint32_t used_pos,
                                                    std::uint16_t id, std::uint32_t len) noexcept {
    if (id >= size) [[unlikely]]
      return true;
    // With none in flight id_at[used_pos] is stale, but then takes() refuses already.
    const bool bad_len = !rec[id].takes(len);
    return bad_len | (InOrder && id_at[used_pos] != id);
  }

  /// complete(span)'s loop: complete(id, len)'s checks per entry, used descriptors written in
  /// place with the position, wrap counter and id records in registers. `e` is set only for
  /// a fatal (checked-mode) error.
  template <bool InOrder>
  std::size_t use_entries(std::span<const used_entry> done, errc& e) {
    packed::desc* const ring = view_.ring;
    held* const rec = held_.data();
    const std::uint16_t* const id_at = id_at_.data();
    const std::uint32_t size = size_;
    const std::uint32_t start = next_used_;
    std::uint32_t pos = start;
    // The wrap counter lives in `f` only (both bits flip together): one register less.
    const std::uint16_t f0 = detail::packed_used_bits(used_wrap_);
    std::uint16_t f = f0;
    // One entry; false: complete(id, len) would refuse it (or checked mode's `e`).
    const auto use = [&](const used_entry& u, bool hold) __attribute__((always_inline)) {
      const std::uint16_t id = u.id;
      const std::uint32_t len = u.len;
      if constexpr (InOrder) {
        // refused<true> with the oldest chain first: id_at only ever holds ids below the size,
        // so "is it the one at next_used" covers the range test, and takes() the held
        // (2.8.4) and len (2.7.8.2) tests -- also when nothing is in flight and id_at[pos]
        // is stale.
        if ((id_at[pos] != id) || !rec[id].takes(len)) [[unlikely]]
          return false;
      } else {
        if (refused<false>(rec, id_at, size, pos, id, len)) [[unlikely]]
          return false;
      }
      const held h = rec[id];
      // Checked mode: a used descriptor only ever covers slots this device popped.
      if (!packed_shadow_slots(this->shadow_, pos, h.slots(), size, detail::desc_state::device,
                               detail::desc_state::free)) {
        e = errc::state_violation;
        return false;
      }
      rec[id] = held{};
      put_used(ring[pos], pos, id, len, f, hold);
      pos += h.slots();
      if (pos >= size) {
        pos -= size;
        f ^= detail::packed_wrap_bits;
      }
      return true;
    };
    std::size_t n = 0;
    if (staged_slots_ == 0) {
      // The first used descriptor of a batch keeps its flags for interrupt_prepare (V2).
      if (done.empty() || !use(done[0], true)) {
        done = {};  // refused: nothing more either
      } else {
        n = 1;
      }
    }
    const used_entry* u = done.data() + n;
    for (const used_entry* const last = done.data() + done.size(); u != last; ++u) {
      if (!use(*u, false)) break;
    }
    n = static_cast<std::size_t>(u - done.data());
    // The slots used, from the positions: at most the held_slots_ <= size_ held, so the
    // counter flipped at most once.
    const bool flipped = f != f0;
    const std::uint32_t slots = pos - start + (flipped ? size : 0U);
    next_used_ = static_cast<std::uint16_t>(pos);
    used_wrap_ = used_wrap_ != flipped;
    staged_slots_ += slots;
    held_slots_ -= slots;
    in_flight_ -= static_cast<std::uint32_t>(n);
    return n;
  }

  errc bad(chain& c, errc e) {
    c.begin(0, 0);
    return fail(e);
  }

  /// 2.8.7 Indirect descriptors in a packed ring: a table of packed descriptors, read in order.
  errc walk_indirect(chain& c, std::uint64_t addr, std::uint32_t len) {
    // 2.8.7: the table is len / 16 descriptors; a chain is at most Queue Size long (2.8.4).
    if (len == 0 || (len & 15U) != 0 || (len >> 4U) > size_) return errc::indirect_bad_length;
    const result<std::byte*> t = mem_->translate(addr, len);
    if (!t) return t.error();
    const std::uint32_t n = len >> 4U;
    for (std::uint32_t i = 0; i < n; ++i) {
      packed::desc e;  // copied out: the table need not be aligned, and the driver owns it
      std::memcpy(static_cast<void*>(&e), *t + std::size_t{i} * sizeof(packed::desc), sizeof e);
      const std::uint16_t f = get<E>(e.flags);
      // 2.8.7: "The device MUST ignore ... indirect ... nested"; no INDIRECT inside a table.
      if ((f & packed::desc_f_indirect) != 0) return errc::indirect_nested;
      // 2.8.7: "The driver MUST NOT set any flags except DESC_F_WRITE within an indirect
      // descriptor."
      if ((f & static_cast<std::uint16_t>(~packed::desc_f_write)) != 0) {
        return errc::indirect_bad_flags;
      }
      const errc r = c.append(*mem_, get<E>(e.addr), get<E>(e.len), f != 0);
      if (r != errc::ok) return r;
    }
    return errc::ok;
  }

  std::uint32_t release_id(std::uint16_t id) noexcept {
    const std::uint32_t slots = held_[id].slots();
    held_[id] = held{};
    --in_flight_;
    return slots;
  }

  /// 2.8.9: a used descriptor is written at its slot, id and len first, then flags. The first
  /// of a batch (`hold`) keeps its flags for interrupt_prepare() (V2); the driver cannot pass
  /// it, so the others' flags are stored relaxed now. Written in place, the batch's lines move
  /// to the driver once, when it follows the published first one.
  [[gnu::always_inline]] inline void put_used(packed::desc& d, std::uint32_t slot, std::uint16_t id,
                                              std::uint32_t len, std::uint16_t flags,
                                              bool hold) noexcept {
    put<E>(d.id, id);
    put<E>(d.len, len);
    // 2.8.3: WRITE tells the driver whether len means anything.
    const auto f = static_cast<std::uint16_t>(flags | detail::packed_written_bit(len));
    if (hold) {
      pending_slot_ = static_cast<std::uint16_t>(slot);
      pending_flags_ = f;
    } else {
      store_relaxed<E>(d.flags, f);
    }
  }

  errc write_used(std::uint16_t id, std::uint32_t len, std::uint32_t slots) noexcept {
    // Checked mode: a used descriptor only ever covers slots this device popped.
    if (!packed_shadow_slots(this->shadow_, next_used_, slots, size_, detail::desc_state::device,
                             detail::desc_state::free)) {
      return fail(errc::state_violation);
    }
    bool hold = staged_slots_ == 0;
    put_used(view_.ring[next_used_], next_used_, id, len, detail::packed_used_bits(used_wrap_),
             hold);
    staged_slots_ += slots;
    held_slots_ -= slots;
    detail::packed_advance(next_used_, used_wrap_, slots, size_);
    return errc::ok;
  }

  void set_device_flags(std::uint16_t f) noexcept {
    if (device_flags_ != f) {
      store_relaxed<E>(view_.device_event->flags, f);
      device_flags_ = f;
    }
  }

  packed::ring_view view_;
  std::uint32_t size_;
  const M* mem_;  ///< the caller's map; must outlive the queue (as with split_device)
  bool in_order_;
  bool indirect_;
  std::uint16_t start_off_;  ///< device_options::packed_start: where init_state() begins
  bool start_wrap_;
  /// Per buffer id, one word: taking and clearing it is one store, and one compare tells
  /// complete() "held, and len within its writable bytes" (2.7.8.2).
  class held {
   public:
    constexpr held() noexcept = default;
    /// `writable` is saturated at 2^32 - 1: a used len is a u32, so the same lens are refused.
    constexpr held(std::uint64_t writable, std::uint32_t slots) noexcept
        : word_((std::min<std::uint64_t>(writable, 0xFFFFFFFFU) << 16U) | slots) {}
    constexpr bool in_use() const noexcept { return word_ != 0; }
    /// Ring slots it took (the used skip, 2.8.9).
    constexpr std::uint32_t slots() const noexcept {
      return static_cast<std::uint32_t>(word_ & 0xFFFFU);
    }
    /// Held, and `len` no more than its writable bytes: with 1 <= slots < 2^16 in the low
    /// bits, len << 16 is below the word iff len <= writable; a word of 0 takes nothing.
    constexpr bool takes(std::uint32_t len) const noexcept {
      return (std::uint64_t{len} << 16U) < word_;
    }

   private:
    std::uint64_t word_ = 0;  ///< writable << 16 | slots (1..32768); 0 = not held
  };
  static_assert(sizeof(held) == 8);
  std::vector<held> held_;  ///< per buffer id
  /// IN_ORDER: the id of each popped chain at its head's slot. Chains are used in ring order
  /// (2.8.20), so the oldest one in flight starts at next_used_: no separate queue of ids.
  std::vector<std::uint16_t> id_at_;
  std::uint32_t in_flight_ = 0;
  std::uint32_t held_slots_ = 0;  ///< ring slots popped and not yet covered by a used descriptor

  std::uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  std::uint16_t next_used_ = 0;
  bool used_wrap_ = true;
  std::uint32_t staged_slots_ = 0;  ///< slots of used descriptors not yet published
  std::uint16_t pending_slot_ = 0;  ///< the first of them: its flags wait for V2
  std::uint16_t pending_flags_ = 0;
  std::uint16_t device_flags_ = 0xFFFF;
};

// =============================================================================================
// Layout tag
// =============================================================================================

/// The packed layout, for code written once against driver_queue / device_queue.
struct packed_layout {
  static constexpr bool is_packed = true;
  using geometry = packed_geometry;
  using view = packed::ring_view;
  template <class P>
  using driver = packed_driver<P>;
  template <class P, class M>
  using device = packed_device<P, M>;
  static constexpr bool valid_size(std::uint32_t n) noexcept { return valid_packed_size(n); }
  static constexpr result<geometry> geometry_for(std::uint32_t size) {
    return packed_geometry::make(size);
  }
  static result<view> view_at(void* base, const geometry& g) noexcept {
    return packed_view_at(base, g);
  }
};

static_assert(driver_queue<packed_driver<>>);
static_assert(
    !packed_queue_policy<queue_policy<no_lock, suppress_event_idx, smp_barriers, big_endian>>);
static_assert(device_queue<packed_device<>>);
static_assert(device_queue<packed_device<default_policy, guest_memory>>);

}  // namespace virtq
