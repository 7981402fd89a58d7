// SPDX-License-Identifier: MIT
// virtq/policy.hpp -- compile-time policies of a virtqueue: locking, event suppression,
// barrier strength, byte order, and the checked (shadow-state) mode.
//
// Each policy is a small tag type. The defaults cost nothing: no_lock's lock() is empty and is
// stored with [[no_unique_address]]; the checked mode's state is an empty type when off.
#pragma once

#include <atomic>
#include <concepts>
#include <mutex>
#include <type_traits>

#include "virtq/error.hpp"
#include "virtq/spec.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace virtq {

// ---------------------------------------------------------------------------------------------
// Locking
// ---------------------------------------------------------------------------------------------

/// Single owner: the caller guarantees one thread per side at a time. Compiles to nothing.
struct no_lock {
  static constexpr bool is_locking = false;
  void lock() noexcept {}
  void unlock() noexcept {}
};

/// Test-and-test-and-set spin lock, for short critical sections from several threads.
class spin_lock {
 public:
  static constexpr bool is_locking = true;
  void lock() noexcept {
    while (flag_.exchange(true, std::memory_order_acquire)) {
      while (flag_.load(std::memory_order_relaxed)) cpu_relax();
    }
  }
  void unlock() noexcept { flag_.store(false, std::memory_order_release); }

  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }

 private:
  std::atomic<bool> flag_{false};
};

/// A std::mutex, for callers that may sleep while holding the queue.
class mutex_lock {
 public:
  static constexpr bool is_locking = true;
  void lock() { m_.lock(); }
  void unlock() { m_.unlock(); }

 private:
  std::mutex m_;
};

template <class L>
concept lock_policy = requires(L& l) {
  l.lock();
  l.unlock();
  { L::is_locking } -> std::convertible_to<bool>;
};

// ---------------------------------------------------------------------------------------------
// Event suppression: how a driver decides to kick and a device decides to interrupt
// ---------------------------------------------------------------------------------------------

/// Ignore the peer's hints: always kick, always interrupt; never ask the peer to hold back.
struct suppress_none {
  static constexpr bool uses_event_idx = false;
  static constexpr bool uses_flags = false;
};
/// NO_NOTIFY / NO_INTERRUPT flags (split) or enable/disable event flags (packed).
struct suppress_flags {
  static constexpr bool uses_event_idx = false;
  static constexpr bool uses_flags = true;
};
/// avail_event / used_event (split) or desc-mode off_wrap (packed). Needs VIRTIO_F_EVENT_IDX.
struct suppress_event_idx {
  static constexpr bool uses_event_idx = true;
  static constexpr bool uses_flags = false;
};

template <class S>
concept suppression_policy = std::same_as<S, suppress_none> || std::same_as<S, suppress_flags> ||
    std::same_as<S, suppress_event_idx>;

// ---------------------------------------------------------------------------------------------
// Barriers
// ---------------------------------------------------------------------------------------------
// Publishing and observing use release stores and acquire loads of the index/flags themselves
// (see the barrier table in virtqueue.hpp); a policy adds what those cannot express:
//  * full(): the store->load barrier between publishing our index and reading the peer's
//    suppression field (2.7.13.4 / 2.8.21.3). Acquire/release never orders a store before a
//    later load; only a sequentially consistent fence does.
//  * before_publish()/after_observe(): extra fences for VIRTIO_F_ORDER_PLATFORM, where the peer
//    is real hardware and SMP ordering is not enough (6 "Reserved Feature Bits").

/// SMP barriers: both sides are CPUs of one coherent system.
struct smp_barriers {
  static constexpr bool is_platform = false;
  static void full() noexcept { std::atomic_thread_fence(std::memory_order_seq_cst); }
  static void before_publish() noexcept {}
  static void after_observe() noexcept {}
};

/// Platform (I/O) barriers: required when VIRTIO_F_ORDER_PLATFORM was negotiated.
struct platform_barriers {
  static constexpr bool is_platform = true;
  static void full() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("mfence" ::: "memory");
#elif defined(__aarch64__)
    asm volatile("dmb osh" ::: "memory");
#endif
  }
  static void before_publish() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("sfence" ::: "memory");
#elif defined(__aarch64__)
    asm volatile("dmb oshst" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  }
  static void after_observe() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("lfence" ::: "memory");
#elif defined(__aarch64__)
    asm volatile("dmb oshld" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  }
};

/// What a barrier policy provides. smp_barriers and platform_barriers are the two the spec
/// asks for; a user may bring another (an architecture's own I/O fences, or instrumented ones:
/// tests/test_barrier_order.cpp checks with such a policy where each barrier sits). is_platform
/// says whether it is fit for VIRTIO_F_ORDER_PLATFORM (check_features refuses it otherwise).
template <class B>
concept barrier_policy = requires {
  { B::is_platform } -> std::convertible_to<bool>;
  B::full();
  B::before_publish();
  B::after_observe();
};

// ---------------------------------------------------------------------------------------------
// The bundle
// ---------------------------------------------------------------------------------------------

/// All compile-time choices of one queue. Invalid types are rejected here by concepts; choices
/// that depend on negotiated features are checked at construction (check_features below).
template <lock_policy Lock = no_lock, suppression_policy Suppression = suppress_event_idx,
          barrier_policy Barriers = smp_barriers, byte_order Endian = little_endian,
          bool Checked = false>
struct queue_policy {
  using lock = Lock;
  using suppression = Suppression;
  using barriers = Barriers;
  using endian = Endian;
  static constexpr bool checked = Checked;
};

template <class P>
concept queue_policy_type = requires {
  typename P::lock;
  typename P::suppression;
  typename P::barriers;
  typename P::endian;
  { P::checked } -> std::convertible_to<bool>;
}
&&lock_policy<typename P::lock>&& suppression_policy<typename P::suppression>&&
    barrier_policy<typename P::barriers>&& byte_order<typename P::endian>;

/// Common presets.
using default_policy = queue_policy<>;
using flags_policy = queue_policy<no_lock, suppress_flags>;
using checked_policy = queue_policy<no_lock, suppress_event_idx, smp_barriers, little_endian, true>;

namespace detail {
/// Construction-time check that negotiated features fit the layout and the policies.
template <queue_policy_type P>
void check_features(features f, bool packed_layout) {
  if (packed_layout != f.has(feature::ring_packed)) {
    throw_error(errc::feature_conflict,
                packed_layout ? "packed ring needs VIRTIO_F_RING_PACKED"
                              : "split ring used although VIRTIO_F_RING_PACKED was negotiated");
  }
  if constexpr (P::suppression::uses_event_idx) {
    if (!f.has(feature::event_idx)) {
      throw_error(errc::feature_missing, "suppress_event_idx needs VIRTIO_F_EVENT_IDX");
    }
  }
  // 6: "If VIRTIO_F_ORDER_PLATFORM has been negotiated, the driver MUST use the barriers
  // suitable for hardware devices."
  if (f.has(feature::order_platform) && !P::barriers::is_platform) {
    throw_error(errc::feature_conflict, "VIRTIO_F_ORDER_PLATFORM needs platform_barriers");
  }
  // 1.4 / 2.8: with VERSION_1 the wire is little-endian; packed rings exist only for VERSION_1.
  if (f.has(feature::version_1) && P::endian::order != std::endian::little) {
    throw_error(errc::feature_conflict, "VIRTIO_F_VERSION_1 means a little-endian ring");
  }
  if (packed_layout && !f.has(feature::version_1)) {
    throw_error(errc::feature_missing, "packed ring needs VIRTIO_F_VERSION_1");
  }
}
}  // namespace detail

}  // namespace virtq
