// SPDX-License-Identifier: MIT
// bench/bench_bodies.hpp -- benchmark bodies written once against a "pair": anything with a
// driver side (send / reap) and a device side (serve). A virtqueue driver+device is a pair; so
// are two SPSC rings (requests out, completions back), which is the same work a virtqueue does:
// every item goes to the device and comes back. Our queues and the peers run through the same
// bodies, so their numbers compare like with like.
//
//   send(n)   driver: post up to n items and publish them; returns how many were posted.
//   reap(n)   driver: take up to n completions; returns how many.
//   serve(n)  device: take up to n requests, complete each, publish; returns how many.
//   capacity  the most items that may be outstanding (queue size).
//
// The driver side is only ever called from the benchmark thread, the device side only from the
// peer thread (two-thread bodies) or the same thread (single-thread bodies).
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>

#include "bench_util.hpp"

namespace virtq_bench {

template <class P>
concept bench_pair = requires(P& p, std::size_t n) {
  { p.send(n) } -> std::convertible_to<std::size_t>;
  { p.reap(n) } -> std::convertible_to<std::size_t>;
  { p.serve(n) } -> std::convertible_to<std::size_t>;
  { p.capacity() } -> std::convertible_to<std::size_t>;
};

/// Single thread, one full cycle per iteration: the driver posts `batch` items, the device
/// serves them, the driver reaps them.
template <bench_pair P>
void cycle_single(benchmark::State& state, P& p, std::size_t batch) {
  std::int64_t items = 0;
  for (auto _ : state) {
    const std::size_t sent = p.send(batch);
    const std::size_t served = p.serve(batch);
    const std::size_t reaped = p.reap(batch);
    if (sent != batch || served != batch || reaped != batch) {
      state.SkipWithError("cycle lost items");
      break;
    }
    items += static_cast<std::int64_t>(batch);
  }
  report_items(state, items);
}

/// The two-thread benchmarks poll: a pair that can be told so (a virtqueue: the device disables
/// notifications, the driver disables interrupts) is told before the threads start, so that
/// neither side keeps publishing event indices nobody waits for.
template <bench_pair P>
void begin_polling(P& p) {
  if constexpr (requires { p.begin_polling(); }) p.begin_polling();
}

/// Device thread body for the two-thread benchmarks: poll and serve until told to stop.
template <bench_pair P>
void serve_until_stopped(P& p, std::size_t batch, const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_relaxed)) {
    if (p.serve(batch) == 0) cpu_relax();
  }
}

/// Counter "device_cpu": the share of a CPU the polling device thread got while the benchmark
/// ran (near 1 on an idle machine; well under 1 when another tenant shared its CPU).
inline void report_device_share(benchmark::State& state, const peer_thread& device,
                                std::chrono::steady_clock::time_point wall0) {
  const auto wall = std::chrono::steady_clock::now() - wall0;
  if (wall.count() > 0) {
    state.counters["device_cpu"] =
        static_cast<double>(device.cpu_time().count()) /
        static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(wall).count());
  }
}

/// Waits (bounded) until every outstanding item has come back; false on timeout.
template <bench_pair P>
bool drain(P& p, std::size_t& outstanding) {
  spin_budget budget;
  while (outstanding != 0) {
    const std::size_t r = p.reap(outstanding);
    outstanding -= r;
    if (r == 0 && !budget.spin()) return false;
  }
  return true;
}

/// Two threads, streaming: the driver (benchmark thread, CPU 0) keeps posting `batch` items per
/// iteration and reaps whatever has come back; the device (CPU 1) polls. Items are counted when
/// reaped, after a final drain. Register with UseRealTime().
template <bench_pair P>
void stream_two(benchmark::State& state, P& p, std::size_t batch) {
  scoped_pin pin(0);
  begin_polling(p);
  std::size_t outstanding = 0;
  std::int64_t reaped_total = 0;
  bool ok = true;
  const auto wall0 = std::chrono::steady_clock::now();
  {
    peer_thread device(1,
                       [&](const std::atomic<bool>& stop) { serve_until_stopped(p, batch, stop); });
    const std::size_t cap = p.capacity();
    for (auto _ : state) {
      std::size_t to_send = batch;
      spin_budget budget;
      while (to_send != 0) {
        // Whole batches only, as a driver refilling a ring does: sending the few slots that
        // are free when the ring is nearly full would cost a publish (and a fence) for each.
        const std::size_t s = cap - outstanding >= to_send ? p.send(to_send) : 0;
        outstanding += s;
        to_send -= s;
        const std::size_t r = p.reap(cap);
        outstanding -= r;
        reaped_total += static_cast<std::int64_t>(r);
        if (s == 0 && r == 0 && !budget.spin()) {
          ok = false;
          break;
        }
      }
      if (!ok) break;
    }
    const std::size_t before = outstanding;
    if (ok) ok = drain(p, outstanding);
    reaped_total += static_cast<std::int64_t>(before - outstanding);
    device.stop();
    report_device_share(state, device, wall0);
  }
  if (!ok) state.SkipWithError("device thread stalled (spin bound reached)");
  report_items(state, reaped_total);
}

/// Two threads, round-trip latency: one item outstanding; each iteration posts it and waits for
/// it to come back. Register with UseRealTime(); time per iteration is the round trip.
template <bench_pair P>
void round_trip(benchmark::State& state, P& p) {
  scoped_pin pin(0);
  begin_polling(p);
  bool ok = true;
  std::int64_t items = 0;
  const auto wall0 = std::chrono::steady_clock::now();
  {
    peer_thread device(1, [&](const std::atomic<bool>& stop) { serve_until_stopped(p, 1, stop); });
    for (auto _ : state) {
      if (p.send(1) != 1) {
        ok = false;
        break;
      }
      spin_budget budget;
      while (p.reap(1) == 0) {
        if (!budget.spin()) {
          ok = false;
          break;
        }
      }
      if (!ok) break;
      ++items;
    }
    std::size_t outstanding = ok ? 0 : 1;
    if (!ok) drain(p, outstanding);
    device.stop();
    report_device_share(state, device, wall0);
  }
  if (!ok) state.SkipWithError("device thread stalled (spin bound reached)");
  report_items(state, items);
}

// ---------------------------------------------------------------------------------------------
// Peer pairs built from two SPSC rings of 16-byte items
// ---------------------------------------------------------------------------------------------

/// An SPSC ring of item16 with bulk push/pop (each returns how many it moved).
template <class R>
concept spsc_ring = requires(R& r, const item16* in, item16* out, std::size_t n) {
  { r.push(in, n) } -> std::convertible_to<std::size_t>;
  { r.pop(out, n) } -> std::convertible_to<std::size_t>;
};

inline constexpr std::size_t max_batch = 256;

/// Requests go out on one ring and come back on another: the same round trip a virtqueue makes
/// (avail ring out, used ring back).
template <spsc_ring R>
class ring_pair {
 public:
  ring_pair(R& requests, R& completions, std::size_t capacity)
      : req_(requests), done_(completions), capacity_(capacity) {
    for (std::size_t i = 0; i < max_batch; ++i) {
      send_buf_[i] = item16{0x1000U + 64U * i, 64, static_cast<std::uint32_t>(i)};
    }
  }
  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t send(std::size_t n) { return req_.push(send_buf_, std::min(n, max_batch)); }
  std::size_t reap(std::size_t n) {
    const std::size_t got = done_.pop(reap_buf_, std::min(n, max_batch));
    if (got != 0) benchmark::DoNotOptimize(reap_buf_[got - 1]);
    return got;
  }
  std::size_t serve(std::size_t n) {
    const std::size_t got = req_.pop(serve_buf_, std::min(n, max_batch));
    if (got == 0) return 0;
    // The completion ring has room for everything outstanding: the driver never has more than
    // `capacity` items in flight, so this push cannot come up short.
    std::size_t pushed = 0;
    spin_budget budget;
    while (pushed < got) {
      const std::size_t p = done_.push(serve_buf_ + pushed, got - pushed);
      pushed += p;
      if (p == 0 && !budget.spin()) break;
    }
    return pushed;
  }

 private:
  R& req_;
  R& done_;
  std::size_t capacity_;
  item16 send_buf_[max_batch];
  item16 serve_buf_[max_batch];
  item16 reap_buf_[max_batch];
};

/// One ring, producer to consumer, no way back: the "trivial index ring" scale figure. The
/// device side consumes; "reap" counts what the device consumed since the last call.
template <spsc_ring R>
class ring_oneway {
 public:
  ring_oneway(R& ring, std::size_t capacity) : ring_(ring), capacity_(capacity) {
    for (std::size_t i = 0; i < max_batch; ++i) {
      buf_[i] = item16{0x1000U + 64U * i, 64, static_cast<std::uint32_t>(i)};
    }
  }
  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t send(std::size_t n) { return ring_.push(buf_, std::min(n, max_batch)); }
  std::size_t reap(std::size_t n) {
    const std::uint64_t c = consumed_.load(std::memory_order_acquire);
    const std::size_t r = static_cast<std::size_t>(std::min<std::uint64_t>(c - seen_, n));
    seen_ += r;
    return r;
  }
  std::size_t serve(std::size_t n) {
    const std::size_t got = ring_.pop(out_, std::min(n, max_batch));
    if (got != 0) {
      benchmark::DoNotOptimize(out_[got - 1]);
      consumed_.store(consumed_.load(std::memory_order_relaxed) + got, std::memory_order_release);
    }
    return got;
  }

 private:
  R& ring_;
  std::size_t capacity_;
  item16 buf_[max_batch];
  alignas(64) item16 out_[max_batch];
  alignas(64) std::atomic<std::uint64_t> consumed_{0};
  alignas(64) std::uint64_t seen_ = 0;
};

}  // namespace virtq_bench
