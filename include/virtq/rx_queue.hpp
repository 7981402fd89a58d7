// SPDX-License-Identifier: MIT
// virtq/rx_queue.hpp -- a receive queue: a driver-side virtqueue (split or packed, by concept)
// kept full of buffers from an rx_pool, with the safeguards the incident in rx_pool.hpp lacked.
//
//  * refill(): free buffers are posted in batches (NDIS kicks after a batch of returns; netkvm
//    #891 asks for the batch to be tunable), at once when the ring runs low (netkvm PR #1449),
//    with one kick decision per batch.
//  * poll(out): completions become packets (handle, length, flags). The clock is read once per
//    call; each packet costs a few stores into its buffer's metadata (holder, time).
//  * The reserve (on by default): the last K buffers are never lent. When free + posted falls to
//    K, a packet is delivered as a copy in a bounce buffer, flagged resources_low, and its ring
//    buffer is reposted at once (NDIS_RECEIVE_FLAGS_RESOURCES). However long consumers hold
//    their buffers, K buffers stay in the ring: starvation cannot happen by construction.
//  * The starvation detector: posted buffers at or under a low watermark for longer than a
//    window produces ONE report (queue, duration, counts, census: who holds what, how old),
//    re-armed when the condition clears. Evaluated by poll()/refill() and check_starvation().
//  * Loan deadlines: a holder whose oldest buffer is older than the deadline is asked, through a
//    callback, to copy and return.
//  * shutdown(timeout): reset the virtqueue (every posted buffer comes back exactly once), wait
//    a bounded time for held buffers, report who still holds what (netkvm #1221 waited forever).
//
// Threads: poll/refill/check_starvation/census/stats/shutdown take the queue's lock (the pool's
// lock policy; with no_lock they are single-threaded). Handles are released on any thread, per
// the pool policy. Callbacks run after the lock is dropped, so they may call back in.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "virtq/error.hpp"
#include "virtq/rx_pool.hpp"
#include "virtq/virtqueue.hpp"

namespace virtq {

// ---------------------------------------------------------------------------------------------
// Clocks: injected so that tests drive time by hand (no sleeping tests).
// ---------------------------------------------------------------------------------------------

template <class C>
concept rx_clock = requires(const C& c) {
  { c.now() } -> std::convertible_to<std::chrono::nanoseconds>;
};

struct steady_clock_source {
  std::chrono::nanoseconds now() const noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch());
  }
};

/// Time that only moves when told to (shared by the clocks made from it).
class manual_time {
 public:
  void advance(std::chrono::nanoseconds d) noexcept {
    ns_.fetch_add(d.count(), std::memory_order_relaxed);
  }
  void set(std::chrono::nanoseconds t) noexcept { ns_.store(t.count(), std::memory_order_relaxed); }
  std::chrono::nanoseconds now() const noexcept {
    return std::chrono::nanoseconds(ns_.load(std::memory_order_relaxed));
  }

 private:
  std::atomic<std::int64_t> ns_{0};
};

struct manual_clock {
  const manual_time* time;
  std::chrono::nanoseconds now() const noexcept { return time->now(); }
};

static_assert(rx_clock<steady_clock_source> && rx_clock<manual_clock>);

// ---------------------------------------------------------------------------------------------
// What the queue returns and reports
// ---------------------------------------------------------------------------------------------

/// Packet flags.
enum rx_flag : std::uint32_t {
  rx_flag_none = 0,
  /// The ring was at its reserve: this is a copy in a bounce buffer, the ring buffer was reposted
  /// (NDIS_RECEIVE_FLAGS_RESOURCES). Release it soon: bounce buffers are few.
  rx_flag_resources_low = 1u << 0,
};

template <class Pool>
struct rx_packet {
  typename Pool::handle buffer;
  std::uint32_t len = 0;
  std::uint32_t flags = rx_flag_none;

  bool resources_low() const noexcept { return (flags & rx_flag_resources_low) != 0; }
  /// The received bytes (empty if the handle is empty or stale).
  std::span<std::byte> data() const noexcept {
    auto d = buffer.data();
    return d.first(std::min<std::size_t>(len, d.size()));
  }
};

/// Up to `capacity` received packets lent as one loan: rx_queue::poll(rx_burst&) fills it, and
/// release() (or the destructor, or the next poll into it) gives them all back with one pool
/// lock, as NDIS returns a chain of NET_BUFFER_LISTs and DPDK frees mbufs in bulk. What a
/// handle costs per packet (its pool pointer and generation, the "slot still holds a
/// reference" test, the liveness test on release) is paid once per burst instead: each ring
/// buffer in a burst is held by the burst alone, so the census, the conservation check, the
/// starvation detector and loan deadlines see it like any other loan (holder "stack" until
/// pass_to()). A packet that must outlive the burst leaves it with keep(), as a handle.
/// Packets delivered at the reserve are copies (resources_low), as from poll(span).
/// Not thread-safe: one thread at a time uses a burst (release may be on another thread when
/// the pool's policy allows handles to be released there).
template <class Pool>
class rx_burst {
 public:
  static constexpr std::size_t capacity = 32;
  using packet = rx_packet<Pool>;
  using handle = typename Pool::handle;

  rx_burst() = default;
  rx_burst(const rx_burst&) = delete;
  rx_burst& operator=(const rx_burst&) = delete;
  rx_burst(rx_burst&& o) noexcept { take_from(o); }
  rx_burst& operator=(rx_burst&& o) noexcept {
    if (this != &o) {
      (void)release();
      take_from(o);
    }
    return *this;
  }
  ~rx_burst() { (void)release(); }

  /// Packets received (kept ones included: their positions stay).
  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  /// Bytes received in packet k (0 when k >= size()).
  std::uint32_t len(std::size_t k) const noexcept { return k < n_ ? e_[k].len : 0; }
  /// Packet k's bytes; empty when k >= size() or it was kept.
  std::span<std::byte> data(std::size_t k) const noexcept {
    if (k >= n_) return {};
    if (special(k)) [[unlikely]]
      return copies_[k].data();
    return {pool_->host_address(static_cast<std::uint32_t>(e_[k].token)), e_[k].len};
  }
  /// Packet k is a copy in a bounce buffer (the ring was at its reserve): release soon.
  bool resources_low(std::size_t k) const noexcept {
    return k < n_ && special(k) && copies_[k].buffer;  // kept: the handle went
  }
  /// Packet k left the burst through keep().
  bool kept(std::size_t k) const noexcept { return k < n_ && special(k) && !copies_[k].buffer; }

  /// Takes packet k out of the burst as a handle of its own (the sole reference: the burst
  /// gives its loan to it), so that it outlives release(). Empty handle when k >= size() or
  /// packet k was kept already (counted by neither pool: the caller's index is wrong).
  handle keep(std::size_t k) noexcept {
    if (k >= n_ || kept(k)) return {};
    if (special(k)) return std::move(copies_[k].buffer);
    special_ |= 1U << k;
    return pool_->adopt_lent(static_cast<std::uint32_t>(e_[k].token));
  }

  /// Hands every packet still in the burst on: the census counts them for `h`.
  /// invalid_argument for an unregistered holder.
  errc pass_to(holder_id h) noexcept {
    errc first = errc::ok;
    for (std::uint32_t k = 0; k < n_; ++k) {
      errc e = errc::ok;
      if (!special(k)) {
        e = pool_->set_holder_lent(static_cast<std::uint32_t>(e_[k].token), h);
      } else if (copies_[k].buffer) {
        e = copies_[k].buffer.pass_to(h);
      }
      if (e != errc::ok && first == errc::ok) first = e;
    }
    return first;
  }

  /// Gives back every packet still in the burst (kept ones are their handles' now); the
  /// burst is empty afterwards. ok, or what the pool found wrong first.
  errc release() noexcept {
    if (n_ == 0) return errc::ok;  // inline: poll() releases its burst first, empty as a rule
    return release_packets();
  }

 private:
  template <driver_queue, class, rx_clock>
  friend class rx_queue;

  [[gnu::noinline]] errc release_packets() noexcept {
    const std::uint32_t n = std::exchange(n_, 0U);
    const std::uint32_t skip = std::exchange(special_, 0U);
    pool_->end_burst(e_.data(), n, skip);
    errc first = errc::ok;
    for (std::uint32_t rest = skip; rest != 0; rest &= rest - 1) {
      packet& c = copies_[static_cast<std::size_t>(std::countr_zero(rest))];
      if (!c.buffer) continue;
      const errc e = c.buffer.release();
      if (e != errc::ok && first == errc::ok) first = e;
    }
    return first;
  }

  bool special(std::size_t k) const noexcept { return (special_ >> k & 1U) != 0; }
  void take_from(rx_burst& o) noexcept {
    pool_ = o.pool_;
    n_ = std::exchange(o.n_, 0U);
    special_ = std::exchange(o.special_, 0U);
    e_ = o.e_;
    for (std::size_t k = 0; k < capacity; ++k) copies_[k] = std::move(o.copies_[k]);
  }

  Pool* pool_ = nullptr;
  std::uint32_t n_ = 0;
  /// Bit k: packet k is not the burst's own loan: a copy in copies_[k], or kept (copies_[k]
  /// empty).
  std::uint32_t special_ = 0;
  std::array<used_buffer, capacity> e_{};  ///< token: the pool's buffer index; len
  std::array<packet, capacity> copies_{};
  static_assert(capacity <= 32, "special_ has a bit per packet");
};

/// In the spirit of page_pool's and netkvm's counters.
struct rx_stats {
  std::uint64_t polls = 0;
  std::uint64_t packets = 0;           ///< delivered, both kinds
  std::uint64_t packets_lent = 0;      ///< delivered in their ring buffer
  std::uint64_t packets_copied = 0;    ///< delivered as a copy, flagged resources_low
  std::uint64_t copy_failures = 0;     ///< reserve reached and no bounce buffer: dropped, reposted
  std::uint64_t allocations = 0;       ///< buffers taken from the free list and posted
  std::uint64_t reposts = 0;           ///< ring buffers reposted at once after a copy
  std::uint64_t refills = 0;           ///< refill batches that posted something
  std::uint64_t kicks = 0;             ///< kick_prepare() said notify
  std::uint64_t kicks_suppressed = 0;  ///< kick_prepare() said don't
  std::uint64_t bad_tokens = 0;        ///< completions naming a buffer that was not posted
  std::uint64_t queue_errors = 0;      ///< fatal errors from the virtqueue (peer misbehaved)
  std::uint32_t min_posted = std::numeric_limits<std::uint32_t>::max();  ///< after each refill
  std::uint32_t min_free = std::numeric_limits<std::uint32_t>::max();    ///< free list low mark
  std::chrono::nanoseconds time_starved{0};        ///< total, episodes ended so far + current
  std::chrono::nanoseconds longest_starvation{0};  ///< longest episode (ended or current)
  std::uint64_t starvation_episodes = 0;
  std::uint64_t starvation_reports = 0;
  std::uint64_t deadline_callbacks = 0;
};

struct rx_poll_result {
  std::size_t received = 0;  ///< packets written to the front of the span
  bool notify = false;       ///< buffers were posted and the device wants a notification
};

/// The detector's one report per episode.
struct starvation_report {
  std::string queue;
  std::chrono::nanoseconds starved_for{0};  ///< how long posted has been <= low_watermark
  std::uint32_t low_watermark = 0;
  std::uint32_t posted = 0, free = 0, held = 0;
  pool_census census;  ///< the receive pool: who holds what, how old
  pool_census bounce;  ///< the bounce pool (copies) -- empty when there is none
};

inline std::string to_string(const starvation_report& r) {
  std::string s = "STARVATION on receive queue '" + r.queue +
                  "': posted buffers <= " + std::to_string(r.low_watermark) + " for " +
                  format_duration(r.starved_for) + " (posted " + std::to_string(r.posted) +
                  ", free " + std::to_string(r.free) + ", held " + std::to_string(r.held) + ")\n";
  s += to_string(r.census);
  if (r.bounce.total != 0) s += to_string(r.bounce);
  if (!r.census.holders.empty()) {
    const holder_census& top = r.census.holders.front();
    s += "most buffers are held by '" + top.name + "' (" + std::to_string(top.count) + ", oldest " +
         format_duration(top.oldest) + "): that consumer is not returning them\n";
  }
  return s;
}

/// A holder past its loan deadline: copy what you need and release.
struct loan_overdue {
  std::string queue;
  holder_census holder;  ///< id, name, count, oldest age, age histogram
  std::chrono::nanoseconds deadline{0};
};

/// What shutdown() found.
struct shutdown_report {
  std::string queue;
  std::uint32_t returned_from_ring = 0;  ///< posted buffers given back by the virtqueue reset
  std::uint32_t bad_tokens = 0;          ///< reset tokens that were not posted buffers
  bool drained = false;                  ///< every held buffer came back before the deadline
  std::chrono::nanoseconds waited{0};
  pool_census census;
  pool_census bounce;
};

inline std::string to_string(const shutdown_report& r) {
  std::string s = "shutdown of receive queue '" + r.queue +
                  "': " + std::to_string(r.returned_from_ring) + " buffers back from the ring, " +
                  (r.drained ? "all loans returned" : "loans still out") + " after " +
                  format_duration(r.waited) + "\n";
  s += to_string(r.census);
  if (r.bounce.total != 0) s += to_string(r.bounce);
  return s;
}

struct rx_queue_options {
  std::string name = "rx";
  /// The reserve with copy fallback (on by default; netkvm's equivalent defaults to off).
  bool copy_reserve = true;
  /// K: buffers never lent. 0 = automatic: an eighth of min(ring size, pool size), at least 2.
  std::uint32_t reserve = 0;
  /// Bounce buffers for copies (same size as the pool's; allocated only with the reserve on).
  /// 0: copies are impossible, a packet at the reserve is dropped (counted), its buffer reposted.
  std::uint32_t bounce_buffers = 32;
  /// Free buffers are posted once this many have come back (or at once when the ring is low).
  std::uint32_t repost_batch = 16;
  /// Starving means posted <= low_watermark.
  std::uint32_t low_watermark = 0;
  /// ...for at least this long.
  std::chrono::nanoseconds starvation_after = std::chrono::milliseconds(500);
  std::function<void(const starvation_report&)> on_starvation;
  /// 0: no deadlines. Otherwise a holder whose oldest buffer is older than this is asked to
  /// return them (checked every deadline/4).
  std::chrono::nanoseconds loan_deadline{0};
  std::function<void(const loan_overdue&)> on_loan_overdue;
};

// ---------------------------------------------------------------------------------------------
// The receive queue
// ---------------------------------------------------------------------------------------------

template <driver_queue Queue, class Pool = rx_pool<>, rx_clock Clock = steady_clock_source>
class rx_queue {
 public:
  using pool_type = Pool;
  using packet = rx_packet<Pool>;
  using lock_type = typename Pool::policy::lock;

  /// The queue and the pool must outlive this object, and this object its resources_low packets
  /// (their bounce buffers are its own). Posts nothing yet: call refill().
  rx_queue(Queue& q, Pool& pool, rx_queue_options opts = {}, Clock clock = {})
      : q_(q),
        pool_(pool),
        opts_(std::move(opts)),
        clock_(clock),
        bufs_(std::make_unique<buffer[]>(q.size())),
        tokens_(std::make_unique<token_t[]>(q.size())),
        repost_(std::make_unique<std::uint32_t[]>(q.size())) {
    const std::uint32_t cap = std::min(q.size(), pool.size());
    reserve_ = opts_.reserve != 0 ? opts_.reserve : std::max<std::uint32_t>(2, cap / 8);
    if (opts_.copy_reserve && reserve_ >= pool.size()) {
      detail::throw_error(errc::invalid_argument, "rx_queue: reserve must be below the pool size");
    }
    if (opts_.repost_batch == 0) opts_.repost_batch = 1;
    // The baselines of trusted(): chains already in the queue are not ours.
    added_ = q.stats().added;
    exits_ = pool.posted_exits();
    inherited_ = q.num_free() != q.size();
    post_when_under_ = std::max(opts_.repost_batch, opts_.low_watermark + 1);
    if (opts_.loan_deadline.count() <= 0) {
      next_deadline_check_ = std::numeric_limits<std::int64_t>::max();
    }
    // Every buffer has the pool's size: post_free() writes only the addresses.
    for (std::uint32_t k = 0; k < q.size(); ++k) bufs_[k].len = pool.buffer_size();
    // One thread owns everything: released buffers go straight into the arrays add_inbufs()
    // takes (the pool's repost list), and posting them is one call with no take().
    if constexpr (Pool::can_repost) pool_.keep_repost_list(true);
    if (opts_.copy_reserve && opts_.bounce_buffers != 0) {
      bounce_ = std::make_unique<Pool>(opts_.bounce_buffers, pool.buffer_size(),
                                       pool.name() + "-bounce", &pool.holders());
    }
  }
  rx_queue(const rx_queue&) = delete;
  rx_queue& operator=(const rx_queue&) = delete;
  ~rx_queue() {
    if constexpr (Pool::can_repost) pool_.keep_repost_list(false);
  }

  holder_id register_holder(std::string_view name) { return pool_.register_holder(name); }

  /// Posts free buffers (see repost_batch) and publishes them; true: notify the device.
  /// errc::broken after shutdown() or when the virtqueue is broken.
  result<bool> refill() {
    pending_callbacks cb;
    bool notify = false;
    {
      std::lock_guard g(lock_);
      if (stopped_ || q_.broken()) return errc::broken;
      const std::int64_t now = clock_.now().count();
      notify = post_locked();
      evaluate_locked(now, cb);
    }
    cb.fire(opts_);
    return notify;
  }

  /// Reaps up to out.size() completions into out[0..received) and reposts/refills. The packets'
  /// handles start with holder "stack"; pass them on with handle.pass_to(holder). Handles left
  /// in the overwritten slots of `out` are released by the assignment. A virtqueue error (a
  /// hostile device: the queue is broken) is returned, naming the rule the device broke; if
  /// it struck after packets were delivered into `out`, this poll returns them and the next
  /// poll the error. Polls after that return errc::broken.
  result<rx_poll_result> poll(std::span<packet> out) {
    return poll_with([&](std::int64_t now, std::uint64_t stamp, batch& b) -> errc {
      std::array<used_buffer, 32> used;
      const bool trust = trusted();
      while (b.received < out.size()) {
        const std::size_t want = std::min(used.size(), out.size() - b.received);
        const result<std::size_t> got = q_.get_used(std::span(used.data(), want));
        if (!got) {
          // The virtqueue failed after this poll had delivered packets into `out`: they are
          // the caller's, so this poll reports them and the next one the error.
          if (b.received == 0) return got.error();
          deferred_error_ = got.error();
          break;
        }
        const std::size_t n = *got;
        packet* const dst = out.data() + b.received;
        if (static_cast<std::int64_t>(n) <= b.lendable) [[likely]] {
          // The reserve cannot be reached in this run (every packet lent): the loop without
          // its test, called straight from here (a call level fewer per batch).
          const std::size_t w = trust ? lend_all<true>(used.data(), n, dst, pool_, stamp)
                                      : lend_all<false>(used.data(), n, dst, pool_, stamp);
          stats_.bad_tokens += n - w;
          b.lendable -= static_cast<std::int64_t>(w);
          b.received += w;
        } else {
          packet_sink sink{dst};
          b.received += deliver(used.data(), n, sink, now, stamp, b);
        }
        if (n < want) {
          note_short_reap();
          break;
        }
      }
      return errc::ok;
    });
  }

  /// Reaps up to rx_burst::capacity completions into `burst`, lent to it as one loan (see
  /// rx_burst), and reposts/refills as poll(span) does. What `burst` held before is released
  /// first. The cheapest way to receive: per packet, the pool's work is its buffer's two state
  /// changes, the census stamp and the repost.
  result<rx_poll_result> poll(rx_burst<Pool>& burst) {
    (void)burst.release();
    burst.pool_ = &pool_;
    return poll_with([&](std::int64_t now, std::uint64_t stamp, batch& b) -> errc {
      used_buffer* const e = burst.e_.data();
      const result<std::size_t> got = q_.get_used(std::span(e, burst.capacity));
      if (!got) return got.error();
      const auto n = static_cast<std::uint32_t>(*got);
      if (n < burst.capacity) note_short_reap();
      // Lent where get_used wrote them: the burst's entries are the used buffers themselves.
      std::uint32_t k = 0;
      if (static_cast<std::int64_t>(n) <= b.lendable) [[likely]] {
        k = trusted() ? lend_all_in_place<true>(e, n, pool_, stamp)
                      : lend_all_in_place<false>(e, n, pool_, stamp);
        b.lendable -= k;
      }
      b.received = k;
      if (k != n) [[unlikely]] {
        // A bad token, or the reserve within reach: from k on, packet by packet (entries are
        // moved down over the ones that deliver no packet).
        burst_sink sink{burst, k};
        b.received += deliver(e + k, n - k, sink, now, stamp, b);
      }
      burst.n_ = static_cast<std::uint32_t>(b.received);
      return errc::ok;
    });
  }

  /// Gives back the buffers of `pkts` (their handles become empty), with one pool lock per
  /// call: the stack returning a batch of packets (NDIS returns NET_BUFFER_LISTs in chains).
  /// Equivalent to pkt.buffer.release() on each; ok or the first misuse met. Any thread (per
  /// the pool policy); the buffers are reposted by the next poll() or refill().
  errc release(std::span<packet> pkts) noexcept {
    return pool_.release(pkts, [](packet& p) -> typename Pool::handle& { return p.buffer; });
  }

  /// Runs the starvation detector and the loan deadlines at `now` (a watchdog's call: when the
  /// ring is empty no packet arrives, so poll() may never run). Returns true when a report fired.
  bool check_starvation(std::chrono::nanoseconds now) {
    pending_callbacks cb;
    {
      std::lock_guard g(lock_);
      if (stopped_) return false;
      evaluate_locked(now.count(), cb);
    }
    const bool fired = cb.has_report();
    cb.fire(opts_);
    return fired;
  }
  bool check_starvation() { return check_starvation(clock_.now()); }

  /// Do polls lend what the virtqueue returns without testing each token and length again?
  /// True over a queue that vouches for its used elements (split_driver, packed_driver: see
  /// verifying_driver_queue) while nothing but this receive queue adds to the queue or takes
  /// posted buffers off the pool. False otherwise, for good: each completion is then tested
  /// (a bad one counted in rx_stats::bad_tokens, never lent), 9 instructions more per packet.
  bool trusts_queue() const {
    std::lock_guard g(lock_);
    return trusted();
  }

  /// The receive pool's census now.
  pool_census census() const {
    std::lock_guard g(lock_);
    return pool_.census(clock_.now().count());
  }
  /// The bounce pool's census (total 0 when there is none).
  pool_census bounce_census() const {
    std::lock_guard g(lock_);
    return bounce_ ? bounce_->census(clock_.now().count()) : pool_census{};
  }

  rx_stats stats() const {
    std::lock_guard g(lock_);
    rx_stats s = stats_;
    s.packets_lent = s.packets - s.packets_copied;
    if (starving_) {
      const std::chrono::nanoseconds cur{last_eval_ - starving_since_};
      s.time_starved += cur;
      s.longest_starvation = std::max(s.longest_starvation, cur);
    }
    return s;
  }

  /// Buffers in the ring (or about to be reposted).
  std::uint32_t posted() const {
    std::lock_guard g(lock_);
    return pool_.posted_count();
  }
  std::uint32_t reserve() const noexcept { return opts_.copy_reserve ? reserve_ : 0; }
  const rx_queue_options& options() const noexcept { return opts_; }
  bool stopped() const {
    std::lock_guard g(lock_);
    return stopped_;
  }

  /// Stops the queue: resets the virtqueue (call it after the device stopped using the ring:
  /// device or queue reset), which gives back every posted buffer exactly once, then waits up
  /// to `timeout` (real time) for held buffers to be released, and reports who still holds
  /// what. Never waits longer. Later poll()/refill() return errc::broken.
  shutdown_report shutdown(std::chrono::nanoseconds timeout) {
    std::lock_guard g(lock_);
    shutdown_report rep;
    rep.queue = opts_.name;
    if (!stopped_) {
      stopped_ = true;
      rep.returned_from_ring = unpost_repost_list();
      resetting_ = this;
      reset_returned_ = 0;
      reset_bad_ = 0;
      q_.reset(&on_reset_token);
      resetting_ = nullptr;
      rep.returned_from_ring += reset_returned_;
      rep.bad_tokens = reset_bad_;
      stats_.bad_tokens += reset_bad_;
      close_episode(clock_.now().count());
    }
    const auto start = std::chrono::steady_clock::now();
    const auto limit = start + timeout;
    while (held_total() != 0 && std::chrono::steady_clock::now() < limit) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    rep.waited = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - start);
    rep.drained = held_total() == 0;
    const std::int64_t now = clock_.now().count();
    rep.census = pool_.census(now);
    if (bounce_) rep.bounce = bounce_->census(now);
    return rep;
  }

 private:
  /// Callbacks decided under the lock, run after it is dropped. Allocated only when something
  /// fires (then a report is being built anyway): every poll makes one, and an empty one is a
  /// null pointer to set and test rather than a report and a vector to construct and destroy.
  class pending_callbacks {
   public:
    struct fired {
      std::optional<starvation_report> report;
      std::vector<loan_overdue> overdue;
    };
    fired& get() {
      if (!f_) f_ = std::make_unique<fired>();
      return *f_;
    }
    bool has_report() const noexcept { return f_ && f_->report.has_value(); }
    void fire(const rx_queue_options& o) {
      if (!f_) [[likely]]
        return;
      if (f_->report && o.on_starvation) o.on_starvation(*f_->report);
      if (o.on_loan_overdue) {
        for (const auto& d : f_->overdue) o.on_loan_overdue(d);
      }
    }

   private:
    std::unique_ptr<fired> f_;
  };

  std::uint32_t held_total() const noexcept {
    return pool_.held_count() + (bounce_ ? bounce_->held_count() : 0);
  }

  /// A poll()'s running tallies (counters are updated once per poll, not per packet).
  struct batch {
    /// Buffers that may still be lent before the reserve is reached: free + posted - K, minus
    /// those lent since it was computed. Posted falls by one per loan and free never falls
    /// during a poll (only this thread takes), so it is recomputed only when it reaches 0.
    std::int64_t lendable;
    std::size_t copied = 0;    // packets delivered as copies so far
    std::size_t received = 0;  // packets delivered so far, both kinds
  };

  /// Both polls: the lock, one clock read, `receive(now, stamp, batch&)` (reaps and delivers,
  /// returns the virtqueue's error or ok), the counters, the repost and refill with one kick
  /// decision, the detector; callbacks run after the lock is dropped.
  template <class Receive>
  result<rx_poll_result> poll_with(Receive&& receive) {
    pending_callbacks cb;
    rx_poll_result r;
    errc failure = errc::ok;
    {
      std::lock_guard g(lock_);
      if (stopped_) return errc::broken;
      const std::int64_t now = clock_.now().count();  // once per batch: ages are coarse
      ++stats_.polls;
      const std::uint64_t stamp = loan_stamp::make(holder_stack, now);
      batch b{lendable()};
      failure = deferred_error_ == errc::ok ? receive(now, stamp, b)
                                            : std::exchange(deferred_error_, errc::ok);
      if (failure != errc::ok) ++stats_.queue_errors;
      r.received = b.received;
      const auto lent = static_cast<std::uint32_t>(b.received - b.copied);
      pool_.lend_batch().finish(lent);
      exits_ += lent;
      stats_.packets += b.received;  // packets_lent: packets - packets_copied, made by stats()
      stats_.packets_copied += b.copied;
      // After a failure the ring is broken: post_locked then only frees the repost list.
      r.notify = post_locked();
      evaluate_locked(now, cb);
    }
    cb.fire(opts_);
    if (failure != errc::ok) return failure;
    return r;
  }

  /// free + posted - K with the lends not yet booked by lender::finish() (none at the start).
  std::int64_t lendable() const noexcept {
    if (!opts_.copy_reserve) return std::numeric_limits<std::int64_t>::max();
    return std::int64_t{pool_.free_count()} + pool_.posted_count() - reserve_;
  }

  /// Where deliver() writes poll(span)'s packets: the next one, each a handle.
  struct packet_sink {
    packet* next;
    std::size_t written = 0;
    void lend(const typename Pool::lender& l, std::uint32_t i, std::uint32_t len,
              std::uint64_t stamp) noexcept {
      lend_one(l, i, len, stamp, next[written++]);
    }
    packet& copy_slot() noexcept { return next[written]; }
    void copied() noexcept { ++written; }
  };
  /// Where deliver() writes a burst's packets: entry `written` of the burst, which the reads
  /// of the used buffers (the same array) have passed already.
  struct burst_sink {
    rx_burst<Pool>& b;
    std::size_t start;
    std::size_t written = 0;
    void lend(const typename Pool::lender& l, std::uint32_t i, std::uint32_t len,
              std::uint64_t stamp) noexcept {
      (void)l.lend_in_place(i, stamp);
      b.e_[start + written++] = used_buffer{i, len};
    }
    packet& copy_slot() noexcept { return b.copies_[start + written]; }
    void copied() noexcept {
      const std::size_t k = start + written++;
      b.e_[k].len = b.copies_[k].len;
      b.special_ |= 1U << k;
    }
  };

  /// Completions used[0..n) into `out` near the reserve (some may be copies) or past a bad
  /// token. Returns how many packets were written (dropped copies and bad tokens write none).
  /// Out of line: the common cases are lend_all() and lend_all_in_place().
  template <class Sink>
  [[gnu::noinline]] std::size_t deliver(const used_buffer* used, std::size_t n, Sink& out,
                                        std::int64_t now, std::uint64_t stamp, batch& b) noexcept {
    const typename Pool::lender l = pool_.lend_batch();
    std::int64_t lendable = b.lendable;
    std::size_t delivered = 0;
    for (const used_buffer* ub = used; ub != used + n; ++ub) {
      if (!l.is_posted(ub->token)) [[unlikely]] {
        ++stats_.bad_tokens;  // cannot come from a virtqueue that checks its used ids
        continue;
      }
      const auto i = static_cast<std::uint32_t>(ub->token);
      const std::uint32_t len = std::min(ub->len, l.buffer_size());
      // free + posted counts the buffer in hand: lending it would leave fewer than K.
      if (lendable <= 0) [[unlikely]] {
        const std::size_t lent = b.received + delivered - b.copied;
        lendable = this->lendable() - static_cast<std::int64_t>(lent);
        if (lendable <= 0) {
          if (deliver_copy(i, len, out.copy_slot(), now)) {
            out.copied();
            ++b.copied;
            ++delivered;
          }
          continue;
        }
      }
      out.lend(l, i, len, stamp);
      --lendable;
      ++delivered;
    }
    b.lendable = lendable;
    return delivered;
  }

  /// Completions away from the reserve: every one with a posted token is lent. Returns how
  /// many packets were written (a bad token writes none; the caller counts it).
  /// Trusted (see trusted()): every token is a posted buffer and every length fits it, so
  /// neither is tested.
  /// Out of line: inlined, the caller's state kept live across the loop costs a spill.
  /// The lender is made here from the pool (its fields loaded into registers) rather than
  /// passed: a lender argument is a struct the caller must lay out in memory.
  template <bool Trusted>
  [[gnu::noinline]] static std::size_t lend_all(const used_buffer* used, std::size_t n, packet* out,
                                                Pool& pool, std::uint64_t stamp) noexcept {
    const typename Pool::lender l = pool.lend_batch();
    packet* pkt = out;
    std::size_t bad = 0;  // counted rather than derived from pkt - out (a division by 24)
    for (const used_buffer* ub = used; ub != used + n; ++ub) {
      if constexpr (Trusted) {
        lend_one(l, static_cast<std::uint32_t>(ub->token), ub->len, stamp, *pkt);
      } else {
        // A Queue that does not vouch for its used elements (or one others add to) may
        // return a token that is not a posted buffer: counted, never lent.
        if (!l.is_posted(ub->token)) [[unlikely]] {
          ++bad;
          continue;
        }
        lend_one(l, static_cast<std::uint32_t>(ub->token), std::min(ub->len, l.buffer_size()),
                 stamp, *pkt);
      }
      ++pkt;
    }
    return n - bad;
  }

  /// A burst's completions away from the reserve, lent where they lie (the entry is the
  /// packet); stops at the first token that is not a posted buffer and returns its position.
  /// Trusted: no token or length is tested (see lend_all). Out of line, as lend_all.
  template <bool Trusted>
  [[gnu::noinline]] static std::uint32_t lend_all_in_place(used_buffer* e, std::uint32_t n,
                                                           Pool& pool,
                                                           std::uint64_t stamp) noexcept {
    const typename Pool::lender l = pool.lend_batch();
    const std::uint32_t size = l.buffer_size();
    used_buffer* p = e;
#pragma GCC unroll 2
    for (used_buffer* const end = e + n; p != end; ++p) {
      if constexpr (!Trusted) {
        if (!l.is_posted(p->token)) [[unlikely]]
          break;
        // 2.7.8.2: a length past the buffer from a Queue that does not test them.
        if (p->len > size) [[unlikely]]
          p->len = size;
      }
      (void)l.lend_in_place(static_cast<std::uint32_t>(p->token), stamp);
    }
    return static_cast<std::uint32_t>(p - e);
  }

  /// May this poll lend what the queue returns without testing the tokens and lengths again?
  /// Only when the queue vouches for its used elements (verifying_driver_queue: every one is a
  /// chain added and not yet returned, within the bytes added) and every chain in it is a
  /// buffer this receive queue posted that the pool still has as posted: nothing else has
  /// added to the queue (its count of added chains is ours), nothing else has taken a buffer
  /// off the pool's posted list (its posted_exits() is ours), and the queue held no chain
  /// when this receive queue was made. Otherwise (a test's corrupting wrapper; the ring or
  /// the pool shared against the rules) each token is tested, as before: a load and two
  /// compares per poll buy back 9 instructions per packet (docs/performance.md).
  bool trusted() const noexcept {
    if constexpr (verifying_driver_queue<Queue>) {
      return q_.stats().added == added_ && pool_.posted_exits() == exits_ && !inherited_;
    } else {
      return false;
    }
  }

  static void lend_one(const typename Pool::lender& l, std::uint32_t i, std::uint32_t len,
                       std::uint64_t stamp, packet& pkt) noexcept {
    l.lend(i, stamp, pkt.buffer);
    pkt.len = len;
    pkt.flags = rx_flag_none;
  }

  /// At the reserve: the packet goes up as a copy and its ring buffer back to the ring.
  [[gnu::noinline]] bool deliver_copy(std::uint32_t i, std::uint32_t len, packet& pkt,
                                      std::int64_t now) noexcept {
    repost_[n_repost_++] = i;
    auto c = bounce_ ? bounce_->allocate(holder_stack, now) : typename Pool::handle{};
    if (!c) {
      ++stats_.copy_failures;
      return false;
    }
    std::memcpy(c.data().data(), pool_.host_address(i), len);
    pkt = packet{std::move(c), len, rx_flag_resources_low};
    return true;
  }

  /// Reposts copied-from buffers, then posts free ones when a batch has gathered or the ring is
  /// low; one kick decision for all of it.
  [[gnu::always_inline]] bool post_locked() {
    if (q_.broken()) [[unlikely]] {
      // A broken ring takes nothing back: buffers waiting to be reposted are free, not posted
      // (the census must not count them as on the ring).
      if (n_repost_ != 0) (void)unpost_repost_list();
      return false;
    }
    std::uint32_t added = 0;
    if (n_repost_ != 0) [[unlikely]]
      added = repost_copied();
    const std::uint32_t free_n = pool_.free_count();
    stats_.min_free = std::min(stats_.min_free, free_n);
    const std::uint32_t in_ring = pool_.posted_count() - n_repost_;
    const bool low = in_ring < post_when_under_;
    if (free_n != 0 && (free_n >= opts_.repost_batch || low)) {
      const std::uint32_t room = q_.num_free();
      std::size_t j = post_ready(room);  // the repost list first: the warmest buffers
      if (room > j) j += post_free(static_cast<std::uint32_t>(room - j));
      added += static_cast<std::uint32_t>(j);
      stats_.allocations += j;
    }
    stats_.min_posted = std::min(stats_.min_posted, pool_.posted_count());
    added_ += added;
    if (added == 0) return false;
    ++stats_.refills;
    const bool notify = q_.kick_prepare();
    ++(notify ? stats_.kicks : stats_.kicks_suppressed);
    return notify;
  }

  /// After a reap that returned fewer than asked: if that is because the virtqueue met a bad
  /// used entry after good ones (it returns those and breaks), the next poll names the rule
  /// the device broke (the virtqueue itself would say only errc::broken from then on).
  void note_short_reap() noexcept {
    if (q_.broken()) [[unlikely]]
      deferred_error_ = q_.error();
  }

  /// The repost list's buffers (their packets went up as copies) back to the free list, when
  /// the ring will not take them again (broken, or shut down); how many.
  [[gnu::cold, gnu::noinline]] std::uint32_t unpost_repost_list() noexcept {
    std::uint32_t n = 0;
    for (std::uint32_t k = 0; k < n_repost_; ++k) n += pool_.unpost(repost_[k]) == errc::ok;
    exits_ += n;
    n_repost_ = 0;
    return n;
  }

  /// Reposts the ring buffers whose packets went up as copies; how many.
  [[gnu::noinline]] std::uint32_t repost_copied() {
    std::uint32_t k = 0;
    for (; k < n_repost_; ++k) {
      if (q_.add_inbuf(buffer_of(repost_[k]), repost_[k]) != errc::ok) break;
      ++stats_.reposts;
    }
    if (k != 0) {  // keep what did not fit (cannot happen: each came out of this ring)
      std::copy(repost_.get() + k, repost_.get() + n_repost_, repost_.get());
      n_repost_ -= k;
    }
    return k;
  }

  /// Adds the pool's repost list (buffers released since the last post, by index) to the
  /// ring, at most `room` of them; the rest go to the free list.
  std::size_t post_ready(std::uint32_t room) {
    if constexpr (Pool::can_repost) {
      if (pool_.ready_count() == 0 || room == 0) return 0;
      return pool_.post_ready([this, room](std::size_t n, const typename Pool::repost_source& src) {
        const result<std::size_t> got = add_from(std::min<std::size_t>(n, room), src);
        return got ? *got : std::size_t{0};
      });
    } else {
      (void)room;
      return 0;
    }
  }

  /// Adds n buffers from `src`: through the queue's add_inbufs_from when it has one
  /// (split_driver, packed_driver: nothing laid out first), else laid out in bufs_ / tokens_
  /// for add_inbufs (n is at most the ring's room, so they fit).
  template <buffer_source S>
  result<std::size_t> add_from(std::size_t n, S src) {
    if constexpr (requires { q_.add_inbufs_from(n, src); }) {
      return q_.add_inbufs_from(n, src);
    } else {
      for (std::size_t k = 0; k < n; ++k, src.advance()) {
        bufs_[k] = buffer{src.addr(), src.len()};
        tokens_[k] = src.token();
      }
      return q_.add_inbufs(std::span<const buffer>(bufs_.get(), n),
                           std::span<const token_t>(tokens_.get(), n));
    }
  }

  /// Takes up to `want` free buffers from the pool and adds them to the ring; how many went
  /// in (any the ring refused go back to the free list: cannot happen, `want` fits the room).
  std::size_t post_free(std::uint32_t want) {
    if (want == 0) return 0;
    buffer* const bufs = bufs_.get();
    token_t* const tokens = tokens_.get();
    const std::size_t n = pool_.take(want, [&](std::size_t k, std::uint32_t i, std::uint64_t a) {
      bufs[k].addr = a;  // .len: the pool's buffer size, set once by the constructor
      tokens[k] = i;
    });
    // The queue's batch add: one lock, one broken test, one statistics update for all of them.
    const result<std::size_t> got =
        q_.add_inbufs(std::span<const buffer>(bufs, n), std::span<const token_t>(tokens, n));
    const std::size_t j = got ? *got : 0;
    for (std::size_t u = j; u < n; ++u) {
      exits_ += pool_.unpost(static_cast<std::uint32_t>(tokens[u])) == errc::ok;
    }
    return j;
  }

  buffer buffer_of(std::uint32_t i) const noexcept {
    return buffer{pool_.guest_address(i), pool_.buffer_size()};
  }

  /// The detector and the deadlines: three compares while the ring has buffers, no episode is
  /// open and no deadline check is due (next_deadline_check_ is never reached without one).
  void evaluate_locked(std::int64_t now, pending_callbacks& cb) {
    last_eval_ = std::max(last_eval_, now);
    if (pool_.posted_count() > opts_.low_watermark && !starving_ && now < next_deadline_check_)
        [[likely]]
      return;
    evaluate_slow(now, cb);
  }
  [[gnu::noinline]] void evaluate_slow(std::int64_t now, pending_callbacks& cb) {
    const bool starving = pool_.posted_count() <= opts_.low_watermark;
    if (starving) {
      if (!starving_) {
        starving_ = true;
        starving_since_ = now;
        ++stats_.starvation_episodes;
      } else if (!reported_ && now - starving_since_ >= opts_.starvation_after.count()) {
        reported_ = true;
        ++stats_.starvation_reports;
        starvation_report r;
        r.queue = opts_.name;
        r.starved_for = std::chrono::nanoseconds(now - starving_since_);
        r.low_watermark = opts_.low_watermark;
        r.census = pool_.census(now);
        if (bounce_) r.bounce = bounce_->census(now);
        r.posted = r.census.posted;
        r.free = r.census.free;
        r.held = r.census.held;
        cb.get().report = std::move(r);
      }
    } else {
      close_episode(now);
    }
    if (opts_.loan_deadline.count() > 0 && now >= next_deadline_check_) {
      next_deadline_check_ = now + std::max<std::int64_t>(1, opts_.loan_deadline.count() / 4);
      check_deadlines(pool_.census(now), cb);
      if (bounce_) check_deadlines(bounce_->census(now), cb);
    }
  }

  void check_deadlines(const pool_census& c, pending_callbacks& cb) {
    for (const auto& h : c.holders) {
      if (h.oldest <= opts_.loan_deadline) continue;
      ++stats_.deadline_callbacks;
      cb.get().overdue.push_back(loan_overdue{opts_.name, h, opts_.loan_deadline});
    }
  }

  void close_episode(std::int64_t now) noexcept {
    if (!starving_) return;
    const std::chrono::nanoseconds d{now - starving_since_};
    stats_.time_starved += d;
    stats_.longest_starvation = std::max(stats_.longest_starvation, d);
    starving_ = false;
    reported_ = false;
  }

  // reset() gives tokens to a plain function (the driver_queue concept's on_token); the queue
  // being reset is found through this, set only for the duration of the call.
  static inline thread_local rx_queue* resetting_ = nullptr;
  static void on_reset_token(token_t t) {
    rx_queue* self = resetting_;
    // A token that is not a posted buffer is the Queue's (a chain added behind us, or a second
    // chain of a buffer unposted behind us): counted here as a bad token, as a poll counts it,
    // and not handed to unpost(), which would book it as the caller's misuse of the pool.
    if (t < self->pool_.size() &&
        self->pool_.state(static_cast<std::uint32_t>(t)) == rx_state::posted &&
        self->pool_.unpost(static_cast<std::uint32_t>(t)) == errc::ok) {
      ++self->exits_;
      ++self->reset_returned_;
    } else {
      ++self->reset_bad_;
    }
  }

  Queue& q_;
  Pool& pool_;
  rx_queue_options opts_;
  Clock clock_;
  std::unique_ptr<Pool> bounce_;
  std::unique_ptr<buffer[]> bufs_;           // what post_free() adds: buffers...
  std::unique_ptr<token_t[]> tokens_;        // ...and their tokens (pool indices)
  std::unique_ptr<std::uint32_t[]> repost_;  // ring buffers to repost after a copy
  std::uint32_t n_repost_ = 0;
  std::uint32_t reserve_ = 0;
  std::uint32_t post_when_under_ = 0;  // "the ring is low": max(repost_batch, low_watermark + 1)
  rx_stats stats_;
  errc deferred_error_ = errc::ok;  // the virtqueue's error, for the poll after the one it hit
  bool stopped_ = false;
  bool starving_ = false;
  bool reported_ = false;
  std::int64_t starving_since_ = 0;
  std::int64_t last_eval_ = 0;
  std::int64_t next_deadline_check_ = 0;
  std::uint32_t reset_returned_ = 0;
  std::uint32_t reset_bad_ = 0;
  // trusted(): the chains this receive queue added to the queue (counted as the queue's
  // stats().added counts them), the buffers it took off the pool's posted list (as the pool's
  // posted_exits() counts them), and whether the queue held chains when it was made.
  std::uint64_t added_ = 0;
  std::uint64_t exits_ = 0;
  bool inherited_ = false;
  [[no_unique_address]] mutable lock_type lock_;
};

}  // namespace virtq
