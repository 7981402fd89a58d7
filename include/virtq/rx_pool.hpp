// SPDX-License-Identifier: MIT
// virtq/rx_pool.hpp -- a fixed pool of receive buffers, refcounted handles, and a holder census.
//
// Why this exists: a Windows guest on a virtio NIC stopped receiving because every receive
// buffer had been indicated up the stack and never returned (an FTP server did not read its data
// connection). Nothing said who held the buffers. Here every buffer that leaves the driver
// carries a holder tag and the time it left, so census() can say at any moment who holds what and
// for how long, and checks that no buffer was lost: free + posted + held == total.
//
// Life of a buffer (its state):
//   free --take()--> posted (in the ring) --lend()--> held (a handle exists) --last release--> free
//   (or lent in place to an rx_burst, which owns the loan until its release: end_burst())
//   posted --unpost()--> free (ring reset);  free --allocate()--> held (bounce buffers)
//   With a repost list (one thread owns everything; the receive queue turns it on):
//   held --last release--> ready (laid out for the ring's add) --post_ready()--> posted
// Ownership of a held buffer is a reference count in the handle (rx_buffer): copying adds a
// reference, moving does not, and the last release gives the buffer back (NDIS's return handler).
//
// Threads: take/lend/unpost/allocate/census are the owner's calls (the receive queue's thread).
// Handles may be copied, moved and released on any thread when the policy says so (atomic
// reference counts + a locking free list). Misuse by the caller -- releasing twice, releasing into
// the wrong pool, using a handle whose buffer was reused -- is an errc and a counter, never UB.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "virtq/error.hpp"
#include "virtq/memory.hpp"
#include "virtq/policy.hpp"
#include "virtq/virtqueue.hpp"

namespace virtq {

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

namespace detail {
#ifdef NDEBUG
inline constexpr bool debug_build = false;
#else
inline constexpr bool debug_build = true;
#endif
}  // namespace detail

/// Compile-time choices of a pool.
///  AtomicRefs  reference counts are atomics (handles copied/released on several threads at once).
///              Even then a release by the sole owner is a plain store (DPDK's
///              rte_mbuf_refcnt_update: nobody else can touch a count of 1).
///  FreeLock    guards the free list: no_lock (one thread does everything), spin_lock or
///              mutex_lock (buffers are released on other threads). Non-atomic counts with a lock
///              fit handles that move between threads but are never shared by two at once.
///  Poison      fill returned buffers with a pattern and check it when they are reused, to catch
///              writes after release. On by default in debug builds.
///  Census      record holder and loan time per buffer (one relaxed store per packet). On by
///              default, release builds included: that is the point. Off only to measure its
///              cost; census() then counts by state but attributes every loan to "stack", age 0.
template <bool AtomicRefs = true, lock_policy FreeLock = spin_lock,
          bool Poison = detail::debug_build, bool Census = true>
struct rx_pool_policy {
  static constexpr bool atomic_refs = AtomicRefs;
  using lock = FreeLock;
  static constexpr bool poison = Poison;
  static constexpr bool census = Census;
};

/// One thread owns the queue and every handle: no atomics, no lock.
using rx_single_thread_policy = rx_pool_policy<false, no_lock>;
/// Handles released from any thread.
using rx_thread_safe_policy = rx_pool_policy<true, spin_lock>;

template <class P>
concept rx_pool_policy_type = requires {
  { P::atomic_refs } -> std::convertible_to<bool>;
  { P::poison } -> std::convertible_to<bool>;
  { P::census } -> std::convertible_to<bool>;
  typename P::lock;
}
&&lock_policy<typename P::lock>;

// ---------------------------------------------------------------------------------------------
// Holders and the census
// ---------------------------------------------------------------------------------------------

/// Small id of a registered holder (who has a buffer: "stack", "ftp-data:3034", ...).
using holder_id = std::uint16_t;

/// Every pool starts with this holder: whoever got the buffer from the receive queue and has not
/// said who it passed it to.
inline constexpr holder_id holder_stack = 0;

/// Names of holders. Shared by a queue's pools so one id means one holder everywhere.
/// Registration is a set-up call (mutex, may allocate); lookups by census are cold.
class holder_registry {
 public:
  static constexpr std::size_t max_holders = 4096;

  holder_registry() { names_.emplace_back("stack"); }

  /// Returns the id for `name`, registering it if new. Throws virtq::error(invalid_argument)
  /// when max_holders names exist.
  holder_id register_holder(std::string_view name) {
    std::lock_guard g(m_);
    for (std::size_t i = 0; i < names_.size(); ++i) {
      if (names_[i] == name) return static_cast<holder_id>(i);
    }
    if (names_.size() >= max_holders) {
      detail::throw_error(errc::invalid_argument, "holder_registry: too many holders");
    }
    names_.emplace_back(name);
    size_.store(static_cast<std::uint32_t>(names_.size()), std::memory_order_release);
    return static_cast<holder_id>(names_.size() - 1);
  }

  bool valid(holder_id h) const noexcept { return h < size_.load(std::memory_order_acquire); }

  std::string name(holder_id h) const {
    std::lock_guard g(m_);
    return h < names_.size() ? names_[h] : std::string("?");
  }

 private:
  mutable std::mutex m_;
  std::vector<std::string> names_;
  std::atomic<std::uint32_t> size_{1};
};

/// The census's record of one loan in one word, so that lending stamps it with one store:
/// when (the clock in microseconds, low 48 bits) and who (the holder, low 16 bits). Ages are
/// differences modulo 2^48 us, so the clock may start anywhere and wrap; a loan reads correctly
/// for 2^47 us (4.4 years), and a stamp from after `now` (a caller's older clock) reads as age 0.
struct loan_stamp {
  static constexpr int holder_bits = 16;
  static constexpr std::uint64_t holder_mask = (std::uint64_t{1} << holder_bits) - 1;
  static_assert(sizeof(holder_id) * 8 == holder_bits);

  static constexpr std::uint64_t make(holder_id h, std::int64_t now_ns) noexcept {
    // Dividing by a constant: a multiply, once per poll (the loop reuses the word).
    return static_cast<std::uint64_t>(now_ns / 1000) << holder_bits | h;
  }
  static constexpr holder_id holder(std::uint64_t stamp) noexcept {
    return static_cast<holder_id>(stamp & holder_mask);
  }
  static constexpr std::uint64_t with_holder(std::uint64_t stamp, holder_id h) noexcept {
    return (stamp & ~holder_mask) | h;
  }
  static constexpr std::chrono::nanoseconds age(std::uint64_t stamp, std::int64_t now_ns) noexcept {
    const std::uint64_t us = (make(0, now_ns) - (stamp & ~holder_mask)) >> holder_bits;
    if (us >= std::uint64_t{1} << 47) return std::chrono::nanoseconds(0);
    return std::chrono::microseconds(static_cast<std::int64_t>(us));
  }
};

/// Log2 age buckets: [0] under 1 ms, [i] in [2^(i-1), 2^i) ms, the last one everything older.
inline constexpr std::size_t age_buckets = 22;

constexpr std::size_t age_bucket(std::chrono::nanoseconds age) noexcept {
  const auto ms = age.count() < 0 ? 0 : static_cast<std::uint64_t>(age.count()) / 1'000'000u;
  const auto b = static_cast<std::size_t>(std::bit_width(ms));
  return b < age_buckets ? b : age_buckets - 1;
}

/// What one holder has.
struct holder_census {
  holder_id id = 0;
  std::string name;
  std::uint32_t count = 0;
  std::chrono::nanoseconds oldest{0};
  std::array<std::uint32_t, age_buckets> ages{};
};

/// A snapshot of a pool: counts by state, per-holder loans, and the conservation check.
struct pool_census {
  std::string pool;
  std::uint32_t total = 0, free = 0, posted = 0, held = 0;
  /// free + posted + held == total, and the per-buffer states agree with the counters.
  bool conserved = true;
  std::string violation;               ///< what disagreed, when !conserved
  std::vector<holder_census> holders;  ///< holders with at least one buffer, most first

  const holder_census* find(std::string_view name) const noexcept {
    for (const auto& h : holders) {
      if (h.name == name) return &h;
    }
    return nullptr;
  }
};

/// "1.5 s", "230 ms", "12 us".
inline std::string format_duration(std::chrono::nanoseconds d) {
  char buf[32];
  const double ns = static_cast<double>(d.count());
  if (ns >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2f s", ns / 1e9);
  } else if (ns >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.1f ms", ns / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f us", ns / 1e3);
  }
  return buf;
}

/// Multi-line text of a census (the starvation report and the demo print this).
inline std::string to_string(const pool_census& c) {
  std::string s;
  char line[256];
  std::snprintf(line, sizeof line, "pool %s: total %u = free %u + posted %u + held %u (%s)\n",
                c.pool.c_str(), c.total, c.free, c.posted, c.held,
                c.conserved ? "conserved" : "VIOLATION");
  s += line;
  if (!c.conserved) s += "  violation: " + c.violation + "\n";
  for (const auto& h : c.holders) {
    std::snprintf(line, sizeof line, "  holder %-16s %5u buffers, oldest %s, ages:", h.name.c_str(),
                  h.count, format_duration(h.oldest).c_str());
    s += line;
    for (std::size_t b = 0; b < age_buckets; ++b) {
      if (h.ages[b] == 0) continue;
      if (b == 0) {
        std::snprintf(line, sizeof line, " <1ms:%u", h.ages[b]);
      } else {
        std::snprintf(line, sizeof line, " <%llums:%u", 1ull << b, h.ages[b]);
      }
      s += line;
    }
    s += "\n";
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------

/// A reference detached from its handle, for APIs that pass buffers as plain values (an NDIS
/// NET_BUFFER_LIST, a C callback). It owns one reference; give it back with rx_pool::release()
/// or turn it into a handle again with rx_pool::adopt().
struct rx_ref {
  const void* pool = nullptr;
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
};

template <rx_pool_policy_type Policy>
class rx_pool;
template <class Pool>
class rx_burst;

/// A refcounted handle to one held buffer. Copy: one more reference. Move: none. Destruction or
/// release(): one less; the last one gives the buffer back to its pool. The pool must outlive its
/// handles (shutdown() on the receive queue tells you who still holds them).
template <class Pool>
class rx_buffer {
 public:
  rx_buffer() = default;
  rx_buffer(const rx_buffer& o) : pool_(o.pool_), index_(o.index_), gen_(o.gen_) {
    if (pool_ != nullptr && pool_->add_ref(index_, gen_) != errc::ok) pool_ = nullptr;
  }
  rx_buffer(rx_buffer&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)), index_(o.index_), gen_(o.gen_) {}
  rx_buffer& operator=(const rx_buffer& o) {
    if (this != &o) *this = rx_buffer(o);
    return *this;
  }
  rx_buffer& operator=(rx_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      pool_ = std::exchange(o.pool_, nullptr);
      index_ = o.index_;
      gen_ = o.gen_;
    }
    return *this;
  }
  ~rx_buffer() { reset(); }

  explicit operator bool() const noexcept { return pool_ != nullptr; }

  /// Gives this reference back. invalid_argument for an empty handle; stale_handle /
  /// double_release when the pool no longer lends this buffer under this handle's generation.
  errc release() noexcept {
    if (pool_ == nullptr) return errc::invalid_argument;
    return std::exchange(pool_, nullptr)->release_ref(index_, gen_);
  }

  /// The whole buffer; empty (and counted as misuse) when the handle is stale.
  std::span<std::byte> data() const noexcept {
    return pool_ == nullptr ? std::span<std::byte>{} : pool_->checked_data(index_, gen_);
  }
  std::uint64_t guest_address() const noexcept {
    return pool_ == nullptr ? 0 : pool_->guest_address(index_);
  }

  /// Hands the buffer on: the census now counts it for `h` (NDIS: the stack passed the NBL to a
  /// protocol/socket). invalid_argument for an unregistered holder or an empty handle.
  errc pass_to(holder_id h) const noexcept {
    return pool_ == nullptr ? errc::invalid_argument : pool_->set_holder(index_, gen_, h);
  }

  /// Turns this handle into a plain reference (the handle becomes empty).
  rx_ref detach() noexcept {
    if (pool_ == nullptr) return {};
    return rx_ref{std::exchange(pool_, nullptr), index_, gen_};
  }

  std::uint32_t index() const noexcept { return index_; }
  /// The loan's stamp (the buffer's generation and state when it was lent): differs between
  /// two loans of the same buffer. Opaque otherwise.
  std::uint32_t generation() const noexcept { return gen_; }
  Pool* pool() const noexcept { return pool_; }

 private:
  template <rx_pool_policy_type>
  friend class rx_pool;
  rx_buffer(Pool* p, std::uint32_t i, std::uint32_t g) noexcept : pool_(p), index_(i), gen_(g) {}
  void reset() noexcept {
    if (pool_ != nullptr) (void)std::exchange(pool_, nullptr)->release_ref(index_, gen_);
  }
  /// reset() kept out of a caller's loop that rarely finds a reference to drop.
  [[gnu::noinline]] void reset_outlined() noexcept { reset(); }

  Pool* pool_ = nullptr;
  std::uint32_t index_ = 0;
  std::uint32_t gen_ = 0;
};

/// The state of one buffer.
/// `posted` is 0 so that the receive path's "is this token a posted buffer?" is one test of the
/// tag's low bits. `ready`: free, on the repost list (see rx_pool::keep_repost_list); the census
/// counts it as free.
enum class rx_state : std::uint8_t { posted, free, held, ready };

namespace detail {
/// A field another thread may read while its owner writes it: a relaxed atomic when the pool is
/// shared between threads, a plain value otherwise (so the compiler may keep it in a register
/// and merge stores on the single-threaded hot path).
template <class T, bool Shared>
struct rx_cell {
  std::atomic<T> v;
  T load() const noexcept { return v.load(std::memory_order_relaxed); }
  void store(T x) noexcept { v.store(x, std::memory_order_relaxed); }
};
template <class T>
struct rx_cell<T, false> {
  T v;
  T load() const noexcept { return v; }
  void store(T x) noexcept { v = x; }
};
}  // namespace detail

template <rx_pool_policy_type Policy = rx_thread_safe_policy>
class rx_pool {
  struct slot;
  /// Other threads touch the pool (atomic counts or a real lock): its per-buffer fields are
  /// relaxed atomics so that census() on the owner thread may read them while a holder thread
  /// passes a buffer on (plain moves on x86). With one thread they are plain fields.
  static constexpr bool shared = Policy::atomic_refs || Policy::lock::is_locking;
  template <class T>
  using cell = detail::rx_cell<T, shared>;
  /// loan_stamp of the current loan (holder and time), by buffer index.
  using loan_word = cell<std::uint64_t>;

 public:
  using policy = Policy;
  using handle = rx_buffer<rx_pool>;
  static constexpr std::byte poison_byte{0xA5};

  /// `count` buffers of `buffer_size` bytes in an owned, page-aligned region; guest address ==
  /// host address (identity_memory). Throws virtq::error(invalid_argument) for a zero size.
  rx_pool(std::uint32_t count, std::uint32_t buffer_size, std::string name = "rx",
          holder_registry* holders = nullptr)
      : rx_pool(count, buffer_size, std::move(name), holders,
                aligned_buffer(bytes(count, buffer_size))) {
    init_addresses(identity_memory{});
  }

  /// Buffers carved from a region the caller mapped (e.g. a guest_memory region), each buffer's
  /// guest address computed once through `mem`. The region must hold count * buffer_size bytes.
  template <class Memory>
  requires requires(const Memory& m, const void* p) {
    { m.guest_address(p) } -> std::same_as<result<std::uint64_t>>;
  }
  rx_pool(std::uint32_t count, std::uint32_t buffer_size, std::span<std::byte> region,
          const Memory& mem, std::string name = "rx", holder_registry* holders = nullptr)
      : rx_pool(count, buffer_size, std::move(name), holders, aligned_buffer()) {
    if (region.size() < bytes(count, buffer_size)) {
      detail::throw_error(errc::invalid_argument, "rx_pool: region too small");
    }
    base_ = region.data();
    init_addresses(mem);
  }

  rx_pool(const rx_pool&) = delete;
  rx_pool& operator=(const rx_pool&) = delete;

  ~rx_pool() {
    if (held_count() != 0) {
      // A handle outlives its pool: it would write into freed memory later. Say who holds it.
      std::fprintf(stderr, "virtq: rx_pool '%s' destroyed with %u buffers still held:\n%s",
                   name_.c_str(), held_count(), to_string(census(0)).c_str());
      std::abort();
    }
  }

  // --- the owner's calls (the receive queue) ------------------------------------------------

  /// Moves up to out.size() free buffers to the posted state (one lock for the batch); returns
  /// how many. With poisoning, a buffer written after its release is counted as use_after_release
  /// (and re-poisoned: the damage is reported, the buffer stays usable).
  std::size_t take(std::span<std::uint32_t> out) noexcept {
    return take(out.size(), [out](std::size_t k, std::uint32_t i, std::uint64_t) { out[k] = i; });
  }

  /// The same for posting straight into a ring: up to `n` buffers, put(k, index, guest_address)
  /// for the k-th, so the caller can lay out what its add call takes without a second pass.
  template <class Put>
  std::size_t take(std::size_t n, Put&& put) noexcept {
    {
      std::lock_guard g(lock_);
      // Locals: the caller's stores could otherwise alias the pool's fields.
      const std::uint32_t top = free_top_;
      const std::uint32_t* p = free_stack_.get() + top;  // popped downwards
      const std::uint64_t* const addr = guest_addr_.get();
      slot* const slots = slots_.get();
      n = std::min<std::size_t>(n, top);
      for (std::size_t k = 0; k < n; ++k) {
        const std::uint32_t i = *--p;
        (void)move_state<rx_state::free, rx_state::posted>(slots[i]);
        if constexpr (Policy::poison) check_poison(i);
        put(k, i, addr[i]);
      }
      free_top_ = top - static_cast<std::uint32_t>(n);
      note_free_count();
    }
    posted_ += static_cast<std::uint32_t>(n);
    return n;
  }

  /// A posted buffer came back from the device: lend it to `holder` (refcount 1).
  /// invalid_argument (and an empty handle) if it was not posted.
  handle lend(std::uint32_t i, holder_id holder, std::int64_t now_ns) noexcept {
    lender l = lend_batch();
    handle h;
    if (!l.is_posted(i)) {
      note(errc::invalid_argument);
      return h;
    }
    l.lend(i, holder, now_ns, h);
    l.finish(1);
    return h;
  }

  class lender;
  /// The receive queue's hot path: lends the completions of one poll() (see lender).
  lender lend_batch() noexcept { return lender(this); }

  /// Lends a batch of posted buffers. A small value holding the pool's hot fields, so that they
  /// stay in registers (a store into a packet cannot make the compiler reload them); the
  /// counters are booked once, by finish(). The owner's other calls (take, census...) must
  /// wait for finish(); handles may be released meanwhile.
  class lender {
   public:
    /// Is buffer `i` (any value, e.g. a token from the device) one of ours and posted?
    bool is_posted(std::uint64_t i) const noexcept {
      return i < count_ && state_of(slots_[i].tag.load()) == rx_state::posted;
    }
    /// Lends buffer `i`, just checked with is_posted(), to `holder` into `out`; the reference
    /// `out` had before, if any, is released first.
    void lend(std::uint32_t i, holder_id holder, std::int64_t now_ns, handle& out) const noexcept {
      lend(i, loan_stamp::make(holder, now_ns), out);
    }
    /// The same with the census's word made once for a batch (loan_stamp::make).
    void lend(std::uint32_t i, std::uint64_t stamp, handle& out) const noexcept {
      if (out.pool_ != nullptr) [[unlikely]]
        out.reset_outlined();
      out.pool_ = pool_;
      out.index_ = i;
      out.gen_ = lend_in_place(i, stamp);
    }
    /// Lends buffer `i`, just checked with is_posted(), with no handle: the loan is the
    /// caller's to end (an rx_burst, through end_burst()). Returns the loan's tag.
    std::uint32_t lend_in_place(std::uint32_t i, std::uint64_t stamp) const noexcept {
      if constexpr (Policy::census) stamps_[i].store(stamp);
      // s.refs is 0 already: the last release of the previous loan left it so.
      return move_state<rx_state::posted, rx_state::held>(slots_[i]);
    }
    std::uint32_t buffer_size() const noexcept { return buffer_size_; }
    /// Books `lent` loans made by lend(): posted falls and held rises by that much.
    void finish(std::uint32_t lent) noexcept {
      pool_->posted_ -= lent;
      pool_->posted_exits_ += lent;
      pool_->loans_ += lent;
    }

   private:
    friend class rx_pool;
    explicit lender(rx_pool* p) noexcept
        : pool_(p),
          slots_(p->slots_.get()),
          stamps_(p->stamps_.get()),
          count_(p->count_),
          buffer_size_(p->buffer_size_) {}
    rx_pool* pool_;
    slot* slots_;
    loan_word* stamps_;
    std::uint32_t count_;
    std::uint32_t buffer_size_;
  };

  /// A posted buffer came back without being used (ring reset): it goes back to the free list.
  errc unpost(std::uint32_t i) noexcept {
    if (i >= count_) return note(errc::foreign_buffer);
    if (state_of(slots_[i].tag.load()) != rx_state::posted) {
      return note(errc::double_release);
    }
    --posted_;
    ++posted_exits_;
    if constexpr (Policy::poison) poison(i);
    std::lock_guard g(lock_);
    (void)move_state<rx_state::posted, rx_state::free>(slots_[i]);
    push_free(i);
    return errc::ok;
  }

  // --- the repost list (pools with nothing shared) -------------------------------------------
  //
  // When one thread owns the queue and every handle, a buffer whose last reference goes can be
  // written straight into the arrays a ring's batch add takes (buffer, token) rather than onto
  // the free stack: posting it then costs no take() and no laying out. It is in the `ready`
  // state meanwhile, which the receive path refuses as "not posted" like `free`, so a
  // completion naming it (a buggy Queue) is still counted and never lent; post_ready() moves
  // what the ring accepted to `posted` with one add per buffer.

  /// Pools whose handles never cross threads (plain counts, no lock) can keep a repost list.
  static constexpr bool can_repost = !shared;

  /// Turns the repost list on or off (a receive queue's set-up call; it may allocate). Off
  /// moves what is on it to the free list. take() and allocate() see only the free list.
  void keep_repost_list(bool on) {
    if constexpr (can_repost) {
      if (on && !ready_tokens_) ready_tokens_ = std::make_unique<token_t[]>(count_);
      if (!on) drop_ready();
      repost_list_ = on;
    } else {
      (void)on;
    }
  }
  /// Buffers on the repost list (free_count() includes them).
  std::uint32_t ready_count() const noexcept { return ready_n_; }

  /// The repost list as a buffer_source (a ring's add_inbufs_from): entry k is the whole of
  /// pool buffer token k, its address read from the pool's table as the add goes, so that a
  /// release writes only the index.
  class repost_source {
   public:
    std::uint64_t addr() const noexcept { return addr_of_[*t_]; }
    std::uint32_t len() const noexcept { return len_; }
    token_t token() const noexcept { return *t_; }
    void advance() noexcept { ++t_; }

   private:
    friend class rx_pool;
    repost_source(const token_t* t, const std::uint64_t* addr_of, std::uint32_t len) noexcept
        : t_(t), addr_of_(addr_of), len_(len) {}
    const token_t* t_;
    const std::uint64_t* addr_of_;
    std::uint32_t len_;
  };

  /// Offers the repost list, in release order, to `add(std::size_t n, const repost_source&)
  /// -> accepted` (a ring's add_inbufs_from of n buffers); the first `accepted` become posted,
  /// the others go to the free list. Returns how many were accepted. With poisoning, each is
  /// checked first, as take() does.
  template <class Add>
  std::size_t post_ready(Add&& add) {
    if constexpr (can_repost) {
      const std::uint32_t n = ready_n_;
      if (n == 0) return 0;
      if constexpr (Policy::poison) {
        for (std::uint32_t k = 0; k < n; ++k) {
          check_poison(static_cast<std::uint32_t>(ready_tokens_[k]));
        }
      }
      const std::size_t got =
          add(std::size_t{n}, repost_source(ready_tokens_.get(), guest_addr_.get(), buffer_size_));
      const auto j = static_cast<std::uint32_t>(std::min<std::size_t>(got, n));
      slot* const slots = slots_.get();
      const token_t* const t = ready_tokens_.get();
      // Unrolled: the loop's own instructions were half of it.
#pragma GCC unroll 8
      for (std::uint32_t k = 0; k < j; ++k) {
        (void)move_state<rx_state::ready, rx_state::posted>(slots[t[k]]);
      }
      posted_ += j;
      unready(j, n);  // cannot happen when the caller offers no more than the ring's room
      ready_n_ = 0;
      note_free_count();
      return j;
    } else {
      (void)add;
      return 0;
    }
  }
  /// Moves the repost list to the free list.
  void drop_ready() noexcept {
    unready(0, ready_n_);
    ready_n_ = 0;
    note_free_count();
  }

  /// A free buffer straight to `holder` (bounce buffers). Empty handle when none is free.
  handle allocate(holder_id holder, std::int64_t now_ns) noexcept {
    std::uint32_t i = 0;
    {
      std::lock_guard g(lock_);
      if (free_top_ == 0) return {};
      i = free_stack_[--free_top_];
      note_free_count();
    }
    if constexpr (Policy::poison) check_poison(i);
    (void)move_state<rx_state::free, rx_state::posted>(slots_[i]);  // lend() starts from posted
    handle h;
    lend_batch().lend(i, holder, now_ns, h);
    ++loans_;  // not posted before: only the loan is booked
    return h;
  }

  /// Counts by state and per-holder loans at `now_ns` (the cold path: walks every buffer).
  /// Exact when called by the owner; releases on other threads are excluded by the free lock.
  pool_census census(std::int64_t now_ns) const {
    pool_census c;
    c.pool = name_;
    c.total = count_;
    std::vector<holder_census> by_id;
    std::array<std::uint32_t, 4> tally{};
    std::uint32_t free_n = 0, returns = 0, ready_n = 0;
    {
      std::lock_guard g(lock_);
      free_n = free_top_ + ready_n_;
      ready_n = ready_n_;
      returns = returns_;
      for (std::uint32_t i = 0; i < count_; ++i) {
        const slot& s = slots_[i];
        const rx_state st = state_of(s.tag.load());
        ++tally[static_cast<std::size_t>(st)];
        if (st != rx_state::held) continue;
        const std::uint64_t loan = Policy::census ? stamps_[i].load() : loan_stamp::make(0, now_ns);
        const holder_id h = loan_stamp::holder(loan);
        if (h >= by_id.size()) by_id.resize(std::size_t{h} + 1);
        holder_census& hc = by_id[h];
        const std::chrono::nanoseconds age = loan_stamp::age(loan, now_ns);
        ++hc.count;
        hc.oldest = std::max(hc.oldest, age);
        ++hc.ages[age_bucket(age)];
      }
    }
    c.free = free_n;
    c.posted = posted_;
    c.held = loans_ - returns;
    const auto held_tally = tally[static_cast<std::size_t>(rx_state::held)];
    if (std::uint64_t{c.free} + c.posted + c.held != c.total) {
      c.conserved = false;
      c.violation = "free " + std::to_string(c.free) + " + posted " + std::to_string(c.posted) +
                    " + held " + std::to_string(c.held) + " != total " + std::to_string(c.total);
    } else if (const auto ready_tally = tally[static_cast<std::size_t>(rx_state::ready)],
               free_tally = tally[static_cast<std::size_t>(rx_state::free)] + ready_tally,
               posted_tally = tally[static_cast<std::size_t>(rx_state::posted)];
               free_tally != c.free || posted_tally != c.posted || held_tally != c.held ||
               ready_tally != ready_n) {
      c.conserved = false;
      c.violation = "buffer states (free " + std::to_string(free_tally) + " of which ready " +
                    std::to_string(ready_tally) + ", posted " + std::to_string(posted_tally) +
                    ", held " + std::to_string(held_tally) +
                    ") disagree with the counters (repost list " + std::to_string(ready_n) + ")";
    }
    for (std::size_t h = 0; h < by_id.size(); ++h) {
      if (by_id[h].count == 0) continue;
      by_id[h].id = static_cast<holder_id>(h);
      by_id[h].name = holders_->name(static_cast<holder_id>(h));
      c.holders.push_back(std::move(by_id[h]));
    }
    std::stable_sort(
        c.holders.begin(), c.holders.end(),
        [](const holder_census& a, const holder_census& b) { return a.count > b.count; });
    return c;
  }

  // --- anyone's calls -------------------------------------------------------------------------

  holder_id register_holder(std::string_view name) {
    return holders_->register_holder(name);
  }
  holder_registry& holders() const noexcept {
    return *holders_;
  }

  /// Gives back a detached reference. foreign_buffer, double_release or stale_handle on misuse.
  errc release(rx_ref r) noexcept {
    if (r.pool != this || r.index >= count_) return note(errc::foreign_buffer);
    return release_ref(r.index, r.generation);
  }
  /// Gives back a handle's reference (the handle becomes empty); foreign_buffer if the handle is
  /// another pool's (it is left untouched).
  errc release(handle&& h) noexcept {
    if (h.pool_ != this)
      return h.pool_ == nullptr ? errc::invalid_argument : note(errc::foreign_buffer);
    return h.release();
  }
  /// Gives back every handle in `hs` (each becomes empty) under one lock, as NDIS returns
  /// NET_BUFFER_LISTs in chains: the receive path's release. Handles of another pool (a bounce
  /// pool's copies) are released into theirs after this pool's lock is dropped. Returns ok or
  /// the first misuse met; every handle is processed either way and misuse() counts each.
  errc release(std::span<handle> hs) noexcept {
    return release(hs, [](handle& h) -> handle& { return h; });
  }
  /// The same over any span of items holding a handle (`proj(item)` names it), e.g. packets.
  template <class T, class Proj>
  requires std::is_invocable_r_v<handle&, Proj, T&> errc release(std::span<T> items, Proj proj)
  noexcept {
    errc first = errc::ok;
    bool foreign = false;
    {
      std::lock_guard g(lock_);
      // Locals: the stores into the handles could otherwise alias the pool's fields.
      slot* const slots = slots_.get();
      std::uint32_t* const stack = free_stack_.get();
      const std::size_t top0 = free_top_;
      std::size_t top = top0;
      T* it = items.data();
      T* const end = it + items.size();
      const std::uint32_t ready0 = ready_n_;
      bool free_loop = !shared;
      if constexpr (can_repost) {
        if (repost_list_) {
          free_loop = false;
          // The same loop, writing each buffer into the repost list instead of onto the free
          // stack (its loan ends: a new generation, state ready).
          token_t* rt = ready_tokens_.get() + ready_n_;
          // Unrolled once: three pointer steps per buffer otherwise.
#pragma GCC unroll 2
          for (; it != end; ++it) {
            handle& h = proj(*it);
            if (h.pool_ != this) break;
            const std::uint32_t i = h.index_;
            const std::uint32_t tag = h.gen_;
            // The new tag computed before the test: GCC then makes it with one lea instead
            // of a copy and an add after it (-1 per buffer).
            const std::uint32_t next = tag + step<rx_state::held, rx_state::ready>;
            if (!live_alone(slots[i], tag)) break;
            h.pool_ = nullptr;
            slots[i].tag.store(next);
            if constexpr (Policy::poison) poison(i);
            *rt++ = i;
          }
          // Counted from the handles (this loop starts at the first): the list's pointers are
          // then dead where the loop ends, and GCC steps them once per unrolled pair.
          ready_n_ += static_cast<std::uint32_t>(it - items.data());
          if (it == end) {  // the receive path's whole burst: nothing else to book
            returns_ += ready_n_ - ready0;
            return errc::ok;
          }
        }
      }
      if (free_loop) {
        // The receive path's case first, in a loop of its own (nothing but it is live in
        // registers): every handle ours, live and the sole reference. The new tag is the
        // handle's plus one step, known without reading the slot back. The first handle that
        // is anything else ends it; the general loop below takes it from there.
        for (; it != end; ++it) {
          handle& h = proj(*it);
          if (h.pool_ != this) break;
          const std::uint32_t i = h.index_;
          const std::uint32_t tag = h.gen_;
          const std::uint32_t next = tag + step<rx_state::held, rx_state::free>;  // as above
          if (!live_alone(slots[i], tag)) break;
          h.pool_ = nullptr;
          slots[i].tag.store(next);
          if constexpr (Policy::poison) poison(i);
          stack[top++] = i;
        }
      }
      for (; it != end; ++it) {
        handle& h = proj(*it);
        if (h.pool_ != this) [[unlikely]] {
          foreign |= h.pool_ != nullptr;
          continue;
        }
        h.pool_ = nullptr;
        const std::uint32_t i = h.index_;
        const std::uint32_t tag = h.gen_;
        slot& s = slots[i];
        if (live_alone(s, tag)) {
          if constexpr (can_repost) {
            if (repost_list_) {
              s.tag.store(tag + step<rx_state::held, rx_state::ready>);
              if constexpr (Policy::poison) poison(i);
              ready_tokens_[ready_n_++] = i;
              continue;
            }
          }
          s.tag.store(tag + step<rx_state::held, rx_state::free>);
        } else {                                   // no hint: always taken when the pool is shared
          if (s.tag.load() != tag) [[unlikely]] {  // check(), with the slot at hand
            const errc e = not_live(i, tag);
            if (first == errc::ok) first = e;
            continue;
          }
          if (!s.refs.drop()) continue;
          if constexpr (Policy::atomic_refs) {
            // As in release_ref: two racing "last" releases (a misuse) must not free it twice.
            if (state_of(s.tag.load()) != rx_state::held) {
              if (first == errc::ok) first = note(errc::double_release);
              continue;
            }
          }
          to_free(s);
        }
        if constexpr (Policy::poison) poison(i);
        stack[top++] = i;
      }
      free_top_ = static_cast<std::uint32_t>(top);
      note_free_count();
      returns_ += static_cast<std::uint32_t>(top - top0) + (ready_n_ - ready0);
    }
    if (foreign) [[unlikely]] {
      for (T& item : items) {
        handle& h = proj(item);
        if (h.pool_ == nullptr) continue;
        const errc e = h.release();
        if (e != errc::ok && first == errc::ok) first = e;
      }
    }
    return first;
  }

  /// A detached reference as a handle again (no new reference). Empty handle on misuse.
  handle adopt(rx_ref r) noexcept {
    if (r.pool != this || r.index >= count_) {
      note(errc::foreign_buffer);
      return {};
    }
    if (check(r.index, r.generation) != errc::ok) return {};
    return handle(this, r.index, r.generation);
  }

  std::uint32_t size() const noexcept {
    return count_;
  }
  std::uint32_t buffer_size() const noexcept {
    return buffer_size_;
  }
  const std::string& name() const noexcept {
    return name_;
  }
  /// Free buffers, the repost list's included (any thread; a relaxed snapshot).
  std::uint32_t free_count() const noexcept {
    if constexpr (shared) {
      return free_count_.load();
    } else {
      return free_top_ + ready_n_;
    }
  }
  /// Posted buffers (owner thread).
  std::uint32_t posted_count() const noexcept {
    return posted_;
  }
  /// Buffers that have left the posted state since the pool was made, by a loan (booked by
  /// lender::finish()) or unpost() (owner thread). A receive queue compares it with its own
  /// count: equal, nothing else has taken a buffer it posted off the ring's list.
  std::uint64_t posted_exits() const noexcept {
    return posted_exits_;
  }
  /// Held buffers (owner thread).
  std::uint32_t held_count() const noexcept {
    std::lock_guard g(lock_);
    return loans_ - returns_;
  }
  std::uint64_t guest_address(std::uint32_t i) const noexcept {
    return guest_addr_[i];
  }
  /// Every buffer's guest address, by index (computed once at construction).
  std::span<const std::uint64_t> guest_addresses() const noexcept {
    return {guest_addr_.get(), count_};
  }
  std::byte* host_address(std::uint32_t i) const noexcept {
    return base_ + std::size_t{i} * buffer_size_;
  }
  rx_state state(std::uint32_t i) const noexcept {
    return state_of(slots_[i].tag.load());
  }
  /// Caller misuse seen so far, by errc (double_release, foreign_buffer, stale_handle, ...).
  std::uint64_t misuse(errc e) const noexcept {
    return misuse_[static_cast<std::size_t>(e)].load(std::memory_order_relaxed);
  }
  std::uint64_t misuse_total() const noexcept {
    std::uint64_t n = 0;
    for (const auto& m : misuse_) n += m.load(std::memory_order_relaxed);
    return n;
  }

 private:
  template <class>
  friend class rx_buffer;
  template <class>
  friend class rx_burst;

  /// Ends the loans of an rx_burst: buffer e[k].token for each k < n whose bit in `skip` is
  /// clear, each lent by lender::lend_in_place() and referenced by nothing else (the burst is
  /// their only owner, so no reference count or handle tag is consulted). One lock; with a
  /// repost list the buffers go onto it, as the bulk release puts them.
  /// No state test: every such buffer is held, and no sequence of public calls can make one
  /// that is not (its tokens entered the burst only as posted buffers the lend made held, and
  /// leave it only through keep(), which sets its skip bit). The mutation runs confirmed no
  /// test could fail it; it cost 9 instructions per packet (a load, a test, a branch and a
  /// store around what is now one add to memory). A damaged record would show as a census
  /// violation (states that disagree with the counters).
  void end_burst(const used_buffer* e, std::uint32_t n, std::uint32_t skip) noexcept {
    std::lock_guard g(lock_);
    slot* const slots = slots_.get();
    // The loan of buffer `i` ends in state To (ready or free).
    const auto end_loan = [&]<rx_state To>(std::uint32_t i) {
      (void)move_state<rx_state::held, To>(slots[i]);
      if constexpr (Policy::poison) poison(i);
    };
    std::uint32_t ended = 0;
    // Calls put(i) for each buffer whose loan ends: the receive path's case (nothing kept)
    // without the skip test.
    const auto each = [&](auto put) {
      if (skip == 0) {
#pragma GCC unroll 2
        for (const used_buffer* it = e; it != e + n; ++it)
          put(static_cast<std::uint32_t>(it->token));
        ended = n;
        return;
      }
      for (std::uint32_t k = 0; k < n; ++k) {
        if ((skip >> k & 1U) != 0) continue;
        put(static_cast<std::uint32_t>(e[k].token));
        ++ended;
      }
    };
    bool listed = false;
    if constexpr (can_repost) {
      if (repost_list_) {
        listed = true;
        token_t* rt = ready_tokens_.get() + ready_n_;
        each([&](std::uint32_t i) {
          end_loan.template operator()<rx_state::ready>(i);
          *rt++ = i;
        });
        ready_n_ += ended;
      }
    }
    if (!listed) {
      std::uint32_t* const stack = free_stack_.get();
      std::uint32_t top = free_top_;
      each([&](std::uint32_t i) {
        end_loan.template operator()<rx_state::free>(i);
        stack[top++] = i;
      });
      free_top_ = top;
    }
    returns_ += ended;
    note_free_count();
  }

  /// A handle for buffer `i` of an rx_burst (held, no reference but the burst's, which passes
  /// to the handle).
  handle adopt_lent(std::uint32_t i) noexcept {
    return handle(this, i, slots_[i].tag.load());
  }

  /// set_holder for buffer `i` of an rx_burst.
  errc set_holder_lent(std::uint32_t i, holder_id h) noexcept {
    return set_holder(i, slots_[i].tag.load(), h);
  }

  /// Reference count, atomic or plain by policy, kept as the references beyond the first: a
  /// buffer that is not lent has 0, and so has one lent to a single handle, so neither a loan
  /// nor the release of a sole reference (the receive path's case) stores anything.
  struct refcount {
    std::conditional_t<Policy::atomic_refs, std::atomic<std::uint32_t>, std::uint32_t> others{0};
    void add() noexcept {
      if constexpr (Policy::atomic_refs) {
        others.fetch_add(1, std::memory_order_relaxed);
      } else {
        ++others;
      }
    }
    /// Drops one reference; true when it was the last. No others: nobody can add one (that
    /// takes a live reference), so it is ours alone and nothing is written (DPDK's trick for a
    /// count of 1); otherwise acq_rel so the last owner sees every write.
    bool drop() noexcept {
      if constexpr (Policy::atomic_refs) {
        if (others.load(std::memory_order_acquire) == 0) return true;
        if (others.fetch_sub(1, std::memory_order_acq_rel) != 0) return false;
        // The others let go between the load and the sub: ours was the last after all, and
        // the count went below zero. Nobody else can touch it now; the next loan needs 0.
        others.store(0, std::memory_order_relaxed);
        return true;
      } else {
        if (others == 0) return true;
        --others;
        return false;
      }
    }
  };

  /// Per-buffer metadata touched on every loan and release: 8 bytes, so that indexing it is
  /// part of an x86 address (base + 8 * index) rather than a shift and an add per access. The
  /// census's loan word and the guest address (read only when posting) live in arrays of their
  /// own, indexed the same way.
  ///  tag   generation << 2 | state. One word, so that a handle's liveness check is one compare
  ///        (handles keep the tag their loan started with) and a change of state one add. The
  ///        generation moves on each time a loan ends: every handle of the old loan is then
  ///        stale.
  ///  refs  the references beyond the first.
  /// With nothing shared the tag comes first and the count right after it (live_alone() reads
  /// both as one word); an atomic count comes first, where GCC addresses it without an extra lea.
  struct slot_tag_first {
    cell<std::uint32_t> tag{static_cast<std::uint32_t>(rx_state::free)};
    refcount refs;
  };
  struct slot_refs_first {
    refcount refs;
    cell<std::uint32_t> tag{static_cast<std::uint32_t>(rx_state::free)};
  };
  struct slot : std::conditional_t<shared, slot_refs_first, slot_tag_first> {};
  static_assert(sizeof(slot) == 8, "a slot index is an x86 scaled index");
  static_assert(sizeof(loan_word) == 8);

  /// Is the slot live under `tag` with no reference but the caller's? With nothing shared, both
  /// words are read as one (on little-endian machines: equal to `tag` zero-extended), so the
  /// receive path's release tests liveness and "last reference" in one compare. Otherwise false,
  /// and the caller takes the general path (an atomic count is read by itself).
  static bool live_alone(const slot& s, std::uint32_t tag) noexcept {
    if constexpr (shared) {
      return false;
    } else {
      static_assert(offsetof(slot, refs) == 4 && sizeof(refcount) == 4);
      constexpr int shift = std::endian::native == std::endian::little ? 0 : 32;
      std::uint64_t both;
      std::memcpy(&both, &s, sizeof both);
      return both == std::uint64_t{tag} << shift;
    }
  }

  static std::size_t bytes(std::uint32_t count, std::uint32_t size) {
    if (count == 0 || size == 0) detail::throw_error(errc::invalid_argument, "rx_pool: zero size");
    return std::size_t{count} * size;
  }

  rx_pool(std::uint32_t count, std::uint32_t buffer_size, std::string name,
          holder_registry* holders, aligned_buffer owned)
      : count_(count),
        buffer_size_(buffer_size),
        name_(std::move(name)),
        own_holders_(holders == nullptr ? std::make_unique<holder_registry>() : nullptr),
        holders_(holders == nullptr ? own_holders_.get() : holders),
        owned_(std::move(owned)),
        base_(owned_.data()),
        slots_(std::make_unique<slot[]>(count)),
        stamps_(std::make_unique<loan_word[]>(count)),
        guest_addr_(std::make_unique<std::uint64_t[]>(count)),
        free_stack_(std::make_unique<std::uint32_t[]>(count)) {
    (void)bytes(count, buffer_size);
    // Stack order: the lowest index is taken first.
    for (std::uint32_t i = 0; i < count; ++i) free_stack_[i] = count - 1 - i;
    free_top_ = count;
    free_count_.store(count);
  }

  template <class Memory>
  void init_addresses(const Memory& mem) {
    for (std::uint32_t i = 0; i < count_; ++i) {
      const result<std::uint64_t> a = mem.guest_address(host_address(i));
      if (!a) detail::throw_error(a.error(), "rx_pool: buffer outside guest memory");
      guest_addr_[i] = *a;
      if constexpr (Policy::poison) poison(i);
    }
  }

  /// Is (i, tag) a live loan? The error says how it is not. `i` is in range: handles are made
  /// by the pool, and rx_refs (plain values from outside) are range-checked on the way in.
  /// `tag` is the slot's tag when the loan began (generation and `held`): one compare.
  errc check(std::uint32_t i, std::uint32_t tag) noexcept {
    if (slots_[i].tag.load() == tag) [[likely]]
      return errc::ok;
    return not_live(i, tag);
  }
  [[gnu::cold]] errc not_live(std::uint32_t i, std::uint32_t tag) noexcept {
    // The buffer came back since this reference was made: free in the very next generation
    // means this is a second release of the same loan; otherwise it was lent again (or the
    // value never was a loan of this buffer) and the handle is stale.
    // (With a repost list the loan may have ended in the ready state instead.)
    const std::uint32_t now = slots_[i].tag.load();
    const bool ended = now == tag + step<rx_state::held, rx_state::free> ||
                       now == tag + step<rx_state::held, rx_state::ready>;
    return note(state_of(tag) == rx_state::held && ended ? errc::double_release
                                                         : errc::stale_handle);
  }

  errc add_ref(std::uint32_t i, std::uint32_t gen) noexcept {
    if (const errc e = check(i, gen); e != errc::ok) return e;
    slots_[i].refs.add();
    return errc::ok;
  }

  errc release_ref(std::uint32_t i, std::uint32_t gen) noexcept {
    slot& s = slots_[i];
    const bool alone = live_alone(s, gen);
    if (!alone) {
      if (const errc e = check(i, gen); e != errc::ok) return e;
      if (!s.refs.drop()) return errc::ok;
    }
    if constexpr (Policy::poison) poison(i);
    if constexpr (can_repost) {
      if (repost_list_ && alone) {
        s.tag.store(gen + step<rx_state::held, rx_state::ready>);  // the tag is the handle's
        ready_tokens_[ready_n_] = i;
        ++ready_n_;
        ++returns_;
        note_free_count();
        return errc::ok;
      }
    }
    std::lock_guard g(lock_);
    // Re-checked under the lock: two racing "last" releases (a misuse) must not free it twice.
    // Only atomic counts can race; with plain counts check() above was the last word.
    if constexpr (Policy::atomic_refs) {
      if (state_of(s.tag.load()) != rx_state::held) return note(errc::double_release);
    }
    ++returns_;
    if (alone) {
      s.tag.store(gen + step<rx_state::held, rx_state::free>);  // the tag is the handle's
    } else {
      to_free(s);
    }
    push_free(i);
    return errc::ok;
  }

  std::span<std::byte> checked_data(std::uint32_t i, std::uint32_t gen) noexcept {
    if (check(i, gen) != errc::ok) return {};
    return {host_address(i), buffer_size_};
  }

  errc set_holder(std::uint32_t i, std::uint32_t gen, holder_id h) noexcept {
    if (!holders_->valid(h)) return note(errc::invalid_argument);
    if (const errc e = check(i, gen); e != errc::ok) return e;
    // A holder thread's read-modify-write: only the owner's lend() writes the time, and it
    // cannot run while this loan is live.
    if constexpr (Policy::census) {
      loan_word& w = stamps_[i];
      w.store(loan_stamp::with_holder(w.load(), h));
    }
    return errc::ok;
  }

  /// Repost-list entries [from, to) to the free list (the caller empties the list).
  void unready(std::uint32_t from, std::uint32_t to) noexcept {
    if (from == to) return;
    std::lock_guard g(lock_);
    for (std::uint32_t k = from; k < to; ++k) {
      const auto i = static_cast<std::uint32_t>(ready_tokens_[k]);
      (void)move_state<rx_state::ready, rx_state::free>(slots_[i]);
      free_stack_[free_top_++] = i;
    }
  }

  /// free_count() for other threads: kept only where there are any.
  void note_free_count() noexcept {
    if constexpr (shared) free_count_.store(free_top_ + ready_n_);
  }

  /// Under lock_.
  void push_free(std::uint32_t i) noexcept {
    free_stack_[free_top_++] = i;
    note_free_count();
  }

  static constexpr std::uint32_t state_mask = 3;
  static constexpr std::uint32_t one_generation = 4;
  static rx_state state_of(std::uint32_t tag) noexcept {
    return static_cast<rx_state>(tag & state_mask);
  }
  /// A slot from state `From` to `To` (one add); leaving `held` starts a new generation.
  template <rx_state From, rx_state To>
  static constexpr std::uint32_t step = static_cast<std::uint32_t>(To) -
                                        static_cast<std::uint32_t>(From) +
                                        (From == rx_state::held ? one_generation : 0U);
  template <rx_state From, rx_state To>
  static std::uint32_t move_state(slot& s) noexcept {
    const std::uint32_t t = s.tag.load() + step<From, To>;  // unsigned: wraps like the generation
    s.tag.store(t);
    return t;
  }
  /// A buffer's last reference is gone.
  static void to_free(slot& s) noexcept {
    (void)move_state<rx_state::held, rx_state::free>(s);
  }

  void poison(std::uint32_t i) noexcept {
    std::memset(host_address(i), static_cast<int>(poison_byte), buffer_size_);
  }
  void check_poison(std::uint32_t i) noexcept {
    const std::byte* p = host_address(i);
    const bool intact =
        std::all_of(p, p + buffer_size_, [](std::byte b) { return b == poison_byte; });
    if (!intact) {
      note(errc::use_after_release);
      poison(i);
    }
  }

  [[gnu::cold]] errc note(errc e) const noexcept {
    misuse_[static_cast<std::size_t>(e)].fetch_add(1, std::memory_order_relaxed);
    return e;
  }

  std::uint32_t count_;
  std::uint32_t buffer_size_;
  std::string name_;
  std::unique_ptr<holder_registry> own_holders_;
  holder_registry* holders_;
  aligned_buffer owned_;
  std::byte* base_;
  std::unique_ptr<slot[]> slots_;
  std::unique_ptr<loan_word[]> stamps_;
  std::unique_ptr<std::uint64_t[]> guest_addr_;
  // Free list: a stack of indices (LIFO keeps recently used buffers warm in the cache).
  std::unique_ptr<std::uint32_t[]> free_stack_;
  std::uint32_t free_top_ = 0;         // under lock_
  std::uint32_t returns_ = 0;          // under lock_: loans that came back
  cell<std::uint32_t> free_count_{0};  // free_top_ (+ ready_n_), readable without the lock
  std::uint32_t posted_ = 0;           // owner only
  std::uint64_t posted_exits_ = 0;     // owner only
  std::uint32_t loans_ = 0;            // owner only (wraps together with returns_)
  // The repost list (can_repost pools only): the indices of buffers whose last reference
  // went, in release order, in the ready state (repost_source reads their addresses).
  std::unique_ptr<token_t[]> ready_tokens_;
  std::uint32_t ready_n_ = 0;
  bool repost_list_ = false;
  [[no_unique_address]] mutable typename Policy::lock lock_;
  mutable std::array<std::atomic<std::uint64_t>, errc_count> misuse_{};
};

}  // namespace virtq
