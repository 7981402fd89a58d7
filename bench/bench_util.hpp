// SPDX-License-Identifier: MIT
// bench/bench_util.hpp -- what every virtq benchmark shares: CPU pinning, bounded spinning, the
// 16-byte item the peer rings move, and a helper thread that is always joined.
//
// Benchmarks are smoke-run by ctest on shared CI machines, so no wait may be unbounded: every
// spin goes through spin_budget, which gives up after a wall-clock limit, and a benchmark that
// gives up reports SkipWithError instead of hanging.
#pragma once

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace virtq_bench {

/// What the peers move per item: the size of a virtq::buffer on the wire (address + length +
/// flags/next), so every contender moves the same number of bytes per packet.
struct item16 {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint32_t id;
};
static_assert(sizeof(item16) == 16);

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// Pins the calling thread to `cpu`. Returns false when the affinity call fails (a machine
/// with one CPU, a container that forbids it); the benchmark still runs, unpinned. The CPU is
/// not taken modulo hardware_concurrency(): glibc counts only the CPUs of the caller's affinity
/// mask, and EAL has already pinned the main thread to one CPU in bench_dpdk_compare.
inline bool pin_to_cpu(unsigned cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

/// Restores the benchmark thread's affinity when a two-thread benchmark ends.
class scoped_pin {
 public:
  explicit scoped_pin(unsigned cpu) noexcept {
    saved_ok_ = pthread_getaffinity_np(pthread_self(), sizeof(saved_), &saved_) == 0;
    pin_to_cpu(cpu);
  }
  ~scoped_pin() {
    if (saved_ok_) pthread_setaffinity_np(pthread_self(), sizeof(saved_), &saved_);
  }
  scoped_pin(const scoped_pin&) = delete;
  scoped_pin& operator=(const scoped_pin&) = delete;

 private:
  cpu_set_t saved_{};
  bool saved_ok_ = false;
};

/// A bound on one wait: the clock is read only every 1024 spins so the bound costs nothing on
/// the fast path. `spin()` returns false once the limit has passed.
class spin_budget {
 public:
  explicit spin_budget(std::chrono::milliseconds limit = std::chrono::milliseconds(2000)) noexcept
      : deadline_(std::chrono::steady_clock::now() + limit) {}
  bool spin() noexcept {
    cpu_relax();
    if ((++n_ & 1023U) != 0) return true;
    if (std::chrono::steady_clock::now() < deadline_) {
      // On 2 shared cores the peer may be descheduled: let it run.
      if ((n_ & 0xFFFFU) == 0) std::this_thread::yield();
      return true;
    }
    return false;
  }

 private:
  std::chrono::steady_clock::time_point deadline_;
  std::uint32_t n_ = 0;
};

/// CPU time the calling thread has consumed.
inline std::chrono::nanoseconds thread_cpu_time() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

/// A peer thread pinned to `cpu` that runs `body(stop)` until stop is set; joined on
/// destruction, so a benchmark that bails out early never leaks a spinning thread. It records
/// the CPU time it got: a polling peer that got much less than its wall time was descheduled
/// (another tenant on its CPU), and the benchmark's figure says more about the machine than
/// about the queue.
class peer_thread {
 public:
  template <class F>
  peer_thread(unsigned cpu, F&& body)
      : thread_([this, cpu, b = std::forward<F>(body)]() mutable {
          pin_to_cpu(cpu);
          const auto t0 = thread_cpu_time();
          b(stop_);
          cpu_ns_.store((thread_cpu_time() - t0).count(), std::memory_order_relaxed);
        }) {}
  ~peer_thread() { stop(); }
  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }
  /// After stop(): the CPU time the peer consumed.
  std::chrono::nanoseconds cpu_time() const noexcept {
    return std::chrono::nanoseconds(cpu_ns_.load(std::memory_order_relaxed));
  }
  peer_thread(const peer_thread&) = delete;
  peer_thread& operator=(const peer_thread&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> cpu_ns_{0};
  std::thread thread_;
};

/// Sets items/s and a "ns/item" style counter the plots and tables read.
inline void report_items(benchmark::State& state, std::int64_t items) {
  state.SetItemsProcessed(items);
  state.counters["items"] = benchmark::Counter(static_cast<double>(items));
}

}  // namespace virtq_bench
