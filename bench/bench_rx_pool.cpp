// SPDX-License-Identifier: MIT
// bench/bench_rx_pool.cpp -- the receive pool alone: allocate/release, copying vs moving handles,
// atomic vs plain reference counts, and the pool's share of a receive (take a batch to post,
// lend each as the device returns it, release each as the stack is done).
#include <virtq/rx_pool.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>

#include "bench_util.hpp"

namespace {

namespace vb = virtq_bench;

// Poisoning is a debug aid (it touches every byte of a buffer); it is off here in every build
// type so the numbers measure bookkeeping only.
using plain_refs = virtq::rx_pool_policy<false, virtq::no_lock, false>;
using atomic_refs = virtq::rx_pool_policy<true, virtq::no_lock, false>;
using atomic_refs_spin = virtq::rx_pool_policy<true, virtq::spin_lock, false>;

constexpr std::uint32_t pool_buffers = 512;
constexpr std::uint32_t pool_buffer_bytes = 2048;
constexpr std::int64_t fixed_now_ns = 1'000'000;

template <class Policy>
void BM_pool_allocate_release(benchmark::State& state) {
  auto pool = std::make_unique<virtq::rx_pool<Policy>>(pool_buffers, pool_buffer_bytes);
  std::int64_t items = 0;
  for (auto _ : state) {
    auto h = pool->allocate(virtq::holder_stack, fixed_now_ns);
    if (!h) {
      state.SkipWithError("pool empty");
      break;
    }
    benchmark::DoNotOptimize(h.index());
    if (h.release() != virtq::errc::ok) {
      state.SkipWithError("release failed");
      break;
    }
    ++items;
  }
  vb::report_items(state, items);
}

/// A copy takes a reference and its destruction drops it: two refcount updates, the count
/// going 1 -> 2 -> 1 (never the sole-owner shortcut).
template <class Policy>
void BM_pool_handle_copy(benchmark::State& state) {
  auto pool = std::make_unique<virtq::rx_pool<Policy>>(pool_buffers, pool_buffer_bytes);
  auto h = pool->allocate(virtq::holder_stack, fixed_now_ns);
  std::int64_t items = 0;
  for (auto _ : state) {
    auto c = h;
    benchmark::DoNotOptimize(c);
    ++items;
  }
  vb::report_items(state, items);
}

/// A move transfers the reference: no refcount traffic at all.
template <class Policy>
void BM_pool_handle_move(benchmark::State& state) {
  auto pool = std::make_unique<virtq::rx_pool<Policy>>(pool_buffers, pool_buffer_bytes);
  auto h = pool->allocate(virtq::holder_stack, fixed_now_ns);
  std::int64_t items = 0;
  for (auto _ : state) {
    auto m = std::move(h);
    benchmark::DoNotOptimize(m);
    h = std::move(m);
    ++items;
  }
  vb::report_items(state, items);
}

/// The pool's part of receiving a batch: take buffers to post, lend each one (as the device
/// fills it), release each one (as the stack returns it).
template <class Policy>
void BM_pool_receive_batch(benchmark::State& state) {
  auto pool = std::make_unique<virtq::rx_pool<Policy>>(pool_buffers, pool_buffer_bytes);
  const auto batch = static_cast<std::size_t>(state.range(0));
  std::array<std::uint32_t, 256> idx{};
  std::int64_t items = 0;
  for (auto _ : state) {
    const std::size_t n = pool->take(std::span<std::uint32_t>(idx.data(), batch));
    for (std::size_t k = 0; k < n; ++k) {
      auto h = pool->lend(idx[k], virtq::holder_stack, fixed_now_ns);
      benchmark::DoNotOptimize(h.index());
    }  // each handle's destruction releases its buffer
    if (n != batch) {
      state.SkipWithError("pool short");
      break;
    }
    items += static_cast<std::int64_t>(n);
  }
  vb::report_items(state, items);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_pool_allocate_release, plain_refs);
BENCHMARK_TEMPLATE(BM_pool_allocate_release, atomic_refs);
BENCHMARK_TEMPLATE(BM_pool_allocate_release, atomic_refs_spin);
BENCHMARK_TEMPLATE(BM_pool_handle_copy, plain_refs);
BENCHMARK_TEMPLATE(BM_pool_handle_copy, atomic_refs);
BENCHMARK_TEMPLATE(BM_pool_handle_move, plain_refs);
BENCHMARK_TEMPLATE(BM_pool_handle_move, atomic_refs);
BENCHMARK_TEMPLATE(BM_pool_receive_batch, plain_refs)->Arg(1)->Arg(32);
BENCHMARK_TEMPLATE(BM_pool_receive_batch, atomic_refs)->Arg(1)->Arg(32);
BENCHMARK_TEMPLATE(BM_pool_receive_batch, atomic_refs_spin)->Arg(1)->Arg(32);
