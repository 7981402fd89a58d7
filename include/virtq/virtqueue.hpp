// SPDX-License-Identifier: MIT
// virtq/virtqueue.hpp -- the interface both layouts satisfy, and what they share.
//
// split_driver / packed_driver satisfy driver_queue; split_device / packed_device satisfy
// device_queue. Generic code (the receive queue, the model tests, the benchmarks) is written
// once against these concepts; there are no virtual calls.
//
// Barrier table. Every ordering point in split.hpp and packed.hpp carries one of these labels;
// each pairs with the one named on the other side.
//
//  label | side   | what                                                   | pairs with | spec
//  ------+--------+--------------------------------------------------------+------------+---------
//  D1    | driver | release: descriptors + avail ring entries, then publish| V1         | 2.7.13.3,
//        |        | avail idx (split) / the head's flags (packed)          |            | 2.8.21.1
//  V1    | device | acquire: read avail idx / a descriptor's flags, then   | D1         | 2.7.13,
//        |        | read ring entries and descriptors                      |            | 2.8.21.1
//  D2    | driver | full: after publishing, before reading NO_NOTIFY /     | V4         | 2.7.13.4,
//        |        | avail_event / the device event area (kick decision)    |            | 2.8.21.3
//  V2    | device | release: used elements (id, len) / used desc id+len,   | D3         | 2.7.8.2,
//        |        | then publish used idx / the used desc's flags          |            | 2.8.21.2
//  D3    | driver | acquire: read used idx / a used desc's flags, then its | V2         | 2.7.14,
//        |        | id and len                                             |            | 2.8.21.2
//  V3    | device | full: after publishing used, before reading           | D4         | 2.7.7.2,
//        |        | NO_INTERRUPT / used_event / driver event area          |            | 2.8.21.3
//  D4    | driver | full: after re-enabling interrupts (flags/used_event/  | V3         | 2.7.14,
//        |        | driver event area), re-read used idx / next used desc  |            | 2.8.21.3
//  V4    | device | full: after re-enabling notifications (flags /         | D2         | 2.7.13.4,
//        |        | avail_event / device event area), re-read avail        |            | 2.8.21.3
//
// D2/V4 and D4/V3 are the store->load pairs that hung SPDK, DPDK vhost and ARM64 Windows guests
// when missing: each side writes its own field and then reads the other's; without a full
// barrier on both sides each can read the other's stale value and both go to sleep.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <span>
#include <type_traits>

#include "virtq/chain.hpp"
#include "virtq/detail/shadow.hpp"
#include "virtq/error.hpp"
#include "virtq/memory.hpp"
#include "virtq/policy.hpp"
#include "virtq/spec.hpp"

namespace virtq {

/// A driver's buffer: a guest address and a length.
struct buffer {
  std::uint64_t addr;
  std::uint32_t len;
};

/// The opaque value a driver attaches to a chain; it comes back on completion and on reset.
using token_t = std::uint64_t;

/// Where a batch add (add_inbufs_from) finds its buffers: addr(), len() and token() describe
/// the current one, advance() moves to the next; the add reads each buffer once, from the
/// first, for each buffer it stages. A caller whose buffers are not laid out as arrays (a
/// receive pool reposting buffers by index) supplies them as the add goes, with nothing copied
/// into arrays first. The add works on its own copy. (Fields rather than a buffer by value:
/// GCC kept such a struct on the stack in the split add loop, 2.5 instructions per buffer.)
template <class S>
concept buffer_source = std::copyable<S> && requires(S& s, const S& cs) {
  { cs.addr() } -> std::same_as<std::uint64_t>;
  { cs.len() } -> std::same_as<std::uint32_t>;
  { cs.token() } -> std::same_as<token_t>;
  s.advance();
};

/// The buffer_source of add_inbufs / add_outbufs: two arrays, walked by pointer.
struct buffer_arrays {
  const buffer* bufs;
  const token_t* tokens;
  std::uint64_t addr() const noexcept { return bufs->addr; }
  std::uint32_t len() const noexcept { return bufs->len; }
  token_t token() const noexcept { return *tokens; }
  void advance() noexcept {
    ++bufs;
    ++tokens;
  }
};

/// A completion the driver reaps: the chain's token and the length the device wrote.
struct used_buffer {
  token_t token;
  std::uint32_t len;
};

/// What a device completes: the chain id (chain::id()) and the bytes it wrote.
struct used_entry {
  std::uint16_t id;
  std::uint32_t len;
};

/// A chain of exactly one direct descriptor, popped in a batch by a device (pop_buffers): the
/// receive fast path (one device-writable buffer per chain) and that of simple transmit queues.
/// 16 bytes, so a batch of them is a few cache lines.
struct popped_buffer {
  std::byte* data;    ///< host view of the buffer (translated); null when len is 0
  std::uint32_t len;  ///< the descriptor's length
  std::uint16_t id;   ///< what complete() takes (split: the head index; packed: the buffer id)
  bool writable;      ///< VIRTQ_DESC_F_WRITE: device-writable (else device-readable)
};

/// Per-queue counters. A side fills in what it does (a driver never pops).
struct queue_stats {
  std::uint64_t added = 0;                  ///< driver: chains added
  std::uint64_t popped = 0;                 ///< device: chains popped
  std::uint64_t completed = 0;              ///< device: chains completed
  std::uint64_t reaped = 0;                 ///< driver: used chains reaped
  std::uint64_t kicks = 0;                  ///< driver: kick_prepare() said notify
  std::uint64_t kicks_suppressed = 0;       ///< driver: kick_prepare() said don't
  std::uint64_t interrupts = 0;             ///< device: interrupt_prepare() said interrupt
  std::uint64_t interrupts_suppressed = 0;  ///< device: interrupt_prepare() said don't
  std::uint64_t ring_full = 0;              ///< driver: add() returned no_space
  std::uint32_t min_free = std::numeric_limits<std::uint32_t>::max();  ///< lowest free count seen
  std::array<std::uint64_t, errc_count> rejects{};                     ///< fatal errors by reason

  std::uint64_t rejected() const noexcept {
    std::uint64_t n = 0;
    for (auto r : rejects) n += r;
    return n;
  }
};

/// Construction options of a driver queue (both layouts).
struct driver_options {
  /// Entries per indirect table; 0 means never use indirect descriptors. Needs
  /// VIRTIO_F_INDIRECT_DESC. The driver allocates one table per ring slot at construction.
  std::uint32_t indirect_max = 0;
  /// Chains of at least this many buffers go through an indirect table (when enabled).
  std::uint32_t indirect_threshold = 2;
  /// Guest address of driver-owned memory (indirect tables). Called at construction only.
  /// Null means identity (guest address == host address, as with identity_memory).
  result<std::uint64_t> (*to_guest)(const void* host, void* ctx) = nullptr;
  void* to_guest_ctx = nullptr;
  /// Split only: the avail/used idx the ring starts from (0 in real use; tests start near
  /// 65535 to exercise wrap-around). Driver and device must agree.
  std::uint16_t initial_index = 0;
  /// Where the indirect tables live: at least Queue Size x indirect_max x 16 bytes, 16-byte
  /// aligned, outliving the queue. For a driver whose own heap the device cannot see (a
  /// user-space driver over vhost-user, whose guest memory is a shared region); to_guest
  /// translates it. Empty: the driver allocates the tables itself.
  std::span<std::byte> indirect_memory{};
};

namespace detail {

/// `pos + n` for a walk over the chains in use, where the next chain's position comes from the
/// current chain's record (its ring slots or descriptors). A plain `pos += n` makes every
/// step wait for the record's load, and that load waits for the previous step: two loads of
/// latency per chain bound the reap loop, whatever its work. Most chains have one descriptor;
/// advancing by one and correcting in a branch lets the processor run ahead on the prediction
/// (a packed receive cycle, batch 32: 258 -> 169 ns per batch). The empty asm keeps the
/// compiler from folding the branch back into the addition.
[[gnu::always_inline]] inline std::uint32_t step_by_chain(std::uint32_t pos,
                                                          std::uint32_t n) noexcept {
  if (n != 1) [[unlikely]] {
#if defined(__GNUC__) || defined(__clang__)
    asm("" : "+r"(pos));
#endif
    pos += n - 1;
  }
  return pos + 1;
}

/// A driver's indirect tables (2.7.5.3, 2.8.7): one table of `per_table` 16-byte descriptors
/// per ring slot, so that a chain's table lives exactly as long as its head; in the caller's
/// driver_options::indirect_memory or in memory of their own, with the guest address of the
/// first (driver_options::to_guest). One implementation for both layouts' drivers.
class indirect_tables {
 public:
  indirect_tables() = default;
  /// Throws virtq::error: invalid_argument (indirect_memory too small or not 16-byte
  /// aligned), or to_guest's errc.
  indirect_tables(std::uint32_t slots, std::uint32_t per_table, const driver_options& o) {
    const std::size_t bytes = std::size_t{slots} * per_table * 16U;
    if (o.indirect_memory.empty()) {
      own_ = aligned_buffer(bytes, 16);
      base_ = own_.data();
    } else {
      if (o.indirect_memory.size() < bytes) {
        throw_error(errc::invalid_argument,
                    "indirect_memory smaller than Queue Size x indirect_max x 16 bytes");
      }
      // 2.7.5.3 / 2.8.7: a table is an array of descriptors, 16-byte aligned like any other.
      if (reinterpret_cast<std::uintptr_t>(o.indirect_memory.data()) % 16U != 0) {
        throw_error(errc::invalid_argument, "indirect_memory not 16-byte aligned");
      }
      base_ = o.indirect_memory.data();
    }
    const result<std::uint64_t> g = o.to_guest != nullptr
                                        ? o.to_guest(base_, o.to_guest_ctx)
                                        : result<std::uint64_t>(static_cast<std::uint64_t>(
                                              reinterpret_cast<std::uintptr_t>(base_)));
    if (!g) throw_error(g.error(), "indirect tables: no guest address");
    guest_ = *g;
    per_table_bytes_ = std::size_t{per_table} * 16U;
  }
  /// Slot `i`'s table, as the driver writes it and as the device finds it.
  std::byte* table(std::uint32_t i) const noexcept { return base_ + i * per_table_bytes_; }
  std::uint64_t guest(std::uint32_t i) const noexcept { return guest_ + i * per_table_bytes_; }

 private:
  aligned_buffer own_;
  std::byte* base_ = nullptr;
  std::uint64_t guest_ = 0;
  std::size_t per_table_bytes_ = 0;
};

}  // namespace detail

/// Construction options of a device queue (both layouts).
struct device_options {
  /// Split only: must equal driver_options::initial_index.
  std::uint16_t initial_index = 0;
  /// Packed only: where the device starts (and returns to on reset), in the form vhost-user's
  /// SET_VRING_BASE carries it and avail_position() reports it: the next descriptor offset in
  /// bits 0-14, the wrap counter in bit 15 (used position and wrap start at the same place:
  /// nothing is in flight). Default: offset 0, wrap counter 1 (2.8.1). An offset not below the
  /// queue size throws invalid_argument.
  std::uint16_t packed_start = 0x8000;
};

/// Owning, zeroed, aligned memory for one ring of a layout, laid out by its geometry: for a
/// driver allocating its own rings, for tests and benchmarks. Throws virtq::error for a bad size.
template <class Layout>
class ring_memory {
 public:
  explicit ring_memory(std::uint32_t size, std::size_t align = 4096)
      : geometry_(checked(Layout::geometry_for(size))),
        mem_(geometry_.total, align),
        view_(*Layout::view_at(mem_.data(), geometry_)) {}
  const typename Layout::view& view() const noexcept { return view_; }
  const typename Layout::geometry& geometry() const noexcept { return geometry_; }
  std::span<std::byte> bytes() const noexcept { return mem_.span(); }
  std::uint32_t size() const noexcept { return geometry_.size; }

 private:
  static typename Layout::geometry checked(result<typename Layout::geometry> g) {
    if (!g) detail::throw_error(g.error(), "ring_memory: invalid queue size");
    return *g;
  }
  typename Layout::geometry geometry_;
  aligned_buffer mem_;
  typename Layout::view view_;
};

// ---------------------------------------------------------------------------------------------
// Concepts
// ---------------------------------------------------------------------------------------------

/// The driver side of a virtqueue.
///  add(out, in, token)    stage a chain of device-readable `out` then device-writable `in`
///                         buffers; errc::ok, errc::no_space (nothing changed), invalid_argument,
///                         or broken. Staged chains are invisible to the device until
///                         kick_prepare(), so a batch costs one publish.
///  add_inbuf(b, token)    add() of one device-writable buffer (the receive case).
///  add_inbufs(bufs, tokens) / add_outbufs(bufs, tokens)
///                         the batch form: one-buffer chains, token i for buffer i, device-
///                         writable / device-readable; stages as many as fit and returns that
///                         count (fewer than asked: the ring is full, stats().ring_full counts
///                         it once); invalid_argument if the spans differ in size, or broken.
///                         One lock, one broken test, one statistics update per call.
///  add_inbufs_from(n, src) (split_driver, packed_driver; not required) add_inbufs with the
///                         buffers read from a buffer_source as they are staged (nothing laid
///                         out in arrays first); rx_queue uses it when the queue has it.
///  kick_prepare()         publish staged chains (D1), then decide by the suppression policy
///                         whether the device wants a notification (D2). true: notify it.
///  notification_data(vq)  the 32-bit value to write with VIRTIO_F_NOTIFICATION_DATA.
///  get_used()             one completion, errc::empty, or a fatal errc (queue broken).
///  get_used(span)         up to span.size() completions; count or a fatal errc.
///  disable_interrupts() / enable_interrupts() -> bool pending (true: used buffers arrived
///                         before re-enabling took effect; poll again) /
///                         enable_interrupts_delayed() -> bool pending (ask for an interrupt
///                         only after ~3/4 of the outstanding buffers are used).
///  reset(f)               f(token) once for every chain still outstanding (staged, with the
///                         device, or used but not reaped); the ring is back to its initial state.
template <class Q>
concept driver_queue = requires(Q& q, const Q& cq, std::span<const buffer> bufs, buffer b,
                                token_t t, std::span<const token_t> tokens,
                                std::span<used_buffer> out, void (*on_token)(token_t)) {
  { q.add(bufs, bufs, t) } -> std::same_as<errc>;
  { q.add_inbuf(b, t) } -> std::same_as<errc>;
  { q.add_inbufs(bufs, tokens) } -> std::same_as<result<std::size_t>>;
  { q.add_outbufs(bufs, tokens) } -> std::same_as<result<std::size_t>>;
  { q.kick_prepare() } -> std::same_as<bool>;
  { cq.notification_data(std::uint16_t{}) } -> std::same_as<std::uint32_t>;
  { q.get_used() } -> std::same_as<result<used_buffer>>;
  { q.get_used(out) } -> std::same_as<result<std::size_t>>;
  q.disable_interrupts();
  { q.enable_interrupts() } -> std::same_as<bool>;
  { q.enable_interrupts_delayed() } -> std::same_as<bool>;
  q.reset(on_token);
  { cq.size() } -> std::same_as<std::uint32_t>;
  { cq.num_free() } -> std::same_as<std::uint32_t>;
  { cq.broken() } -> std::same_as<bool>;
  { cq.error() } -> std::same_as<errc>;
  { cq.stats() } -> std::same_as<const queue_stats&>;
};

/// A driver_queue that vouches for what get_used() returns, declared by a member
/// `static constexpr bool verifies_used = true`: every used_buffer it returns is that of a chain
/// added and not yet returned, returned once, and its len is no more than the writable bytes
/// added with that chain; a used element that is not (an id out of range or not outstanding,
/// a length past the buffer: 2.7.8.2, 2.8.4) breaks the queue instead. split_driver and
/// packed_driver declare it. rx_queue over such a queue, while nothing else adds to it, lends
/// what it returns without testing the tokens and lengths again (rx_queue.hpp, "trusted").
template <class Q>
concept verifying_driver_queue = driver_queue<Q> && requires {
  requires Q::verifies_used;
};

/// The device side of a virtqueue.
///  pop(chain&)              the next available chain, walked and validated; errc::ok,
///                           errc::empty, or a fatal errc (queue broken; the chain is left empty).
///  pop_buffers(span<popped_buffer>)
///                           the batch form of pop for chains of one direct descriptor: pops
///                           up to span.size() of them and returns the count; it stops before
///                           the first chain that is not one direct descriptor (NEXT or
///                           INDIRECT), which pop(chain&) then takes, so 0 means "empty, or
///                           call pop(chain&)". Same checks as pop; a fatal errc after k > 0
///                           popped returns k (the queue is broken, error() says why).
///  complete(id, len)        stage a used entry; invisible to the driver until
///                           interrupt_prepare(). invalid_argument for an id not popped.
///  complete(span<const used_entry>)
///                           the batch form: completes in order, stops at the first invalid
///                           entry (invalid_argument if it is the first, else the count done).
///  serve_buffers(max, f)    pop_buffers and complete in one pass, for a device that finishes
///                           each buffer at once: up to `max` chains of one direct descriptor,
///                           each validated and stopped at as pop_buffers does, handed to
///                           f (a buffer_server), whose result, the bytes written, is staged as
///                           the used entry right away. No popped or used array in between.
///                           Fatal peer errors as pop_buffers (k > 0 served are returned, the
///                           queue is broken). f reporting more than the buffer's writable bytes
///                           (2.7.8.2; 0 for a device-readable buffer) is the caller's error:
///                           that chain stays held as if popped (complete(id, len) takes it),
///                           the batch ends: invalid_argument if it was the first, else the
///                           count served before it; the queue stays usable. With IN_ORDER,
///                           chains held from pop / pop_buffers must be completed first
///                           (invalid_argument, nothing served).
///  interrupt_prepare()      publish staged used entries (V2), decide by the suppression
///                           policy whether the driver wants an interrupt (V3).
///  disable_notifications() / enable_notifications() -> bool pending (true: chains arrived
///                           before re-enabling took effect; pop again).
///  reset()                  forget everything; the ring is back to its initial state.
///  avail_position()         where the device reads next, as vhost-user's GET_VRING_BASE
///                           reports it (split: the next avail idx; packed: offset | wrap << 15).
/// What serve_buffers calls for each buffer: the bytes it wrote into it. It runs under the
/// queue's lock and must not call the queue; it must not throw (a chain in its hands would be
/// neither held nor used).
template <class F>
concept buffer_server = std::is_nothrow_invocable_r_v<std::uint32_t, F&, const popped_buffer&>;

namespace detail {
/// What the device_queue concept passes to serve_buffers: a buffer handler of the required
/// shape (never called).
struct serve_probe {
  std::uint32_t operator()(const popped_buffer& b) const noexcept { return b.len; }
};
}  // namespace detail

template <class Q>
concept device_queue = requires(Q& q, const Q& cq, chain& c, std::uint16_t id, std::uint32_t len,
                                std::span<popped_buffer> popped, std::span<const used_entry> done,
                                std::size_t max, detail::serve_probe f) {
  { q.pop(c) } -> std::same_as<errc>;
  { q.pop_buffers(popped) } -> std::same_as<result<std::size_t>>;
  { q.serve_buffers(max, f) } -> std::same_as<result<std::size_t>>;
  { q.complete(id, len) } -> std::same_as<errc>;
  { q.complete(done) } -> std::same_as<result<std::size_t>>;
  { q.interrupt_prepare() } -> std::same_as<bool>;
  q.disable_notifications();
  { q.enable_notifications() } -> std::same_as<bool>;
  q.reset();
  { cq.size() } -> std::same_as<std::uint32_t>;
  { cq.avail_position() } -> std::same_as<std::uint16_t>;
  { cq.broken() } -> std::same_as<bool>;
  { cq.error() } -> std::same_as<errc>;
  { cq.stats() } -> std::same_as<const queue_stats&>;
};

namespace detail {

/// What every queue of either side and layout keeps: its lock, its broken state, its counters
/// and (in checked mode) its shadow state. One implementation for all four queue types.
template <queue_policy_type P>
class queue_common {
 public:
  using policy = P;
  using endian = typename P::endian;
  using barriers = typename P::barriers;

  bool broken() const noexcept { return error_ != errc::ok; }
  errc error() const noexcept { return error_; }
  const queue_stats& stats() const noexcept { return stats_; }

 protected:
  using guard = std::lock_guard<typename P::lock>;

  /// A peer broke a rule: remember the first reason, count it, refuse further work.
  [[gnu::cold, gnu::noinline]] errc fail(errc e) noexcept {
    if (error_ == errc::ok) error_ = e;
    ++stats_.rejects[static_cast<std::size_t>(e)];
    return e;
  }
  void clear_error() noexcept { error_ = errc::ok; }
  void note_free(std::uint32_t n) noexcept {
    if (n < stats_.min_free) stats_.min_free = n;
  }

  [[no_unique_address]] mutable typename P::lock lock_;
  [[no_unique_address]] shadow_state<P::checked> shadow_;
  queue_stats stats_;
  errc error_ = errc::ok;
};

}  // namespace detail
}  // namespace virtq
