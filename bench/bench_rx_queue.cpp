// SPDX-License-Identifier: MIT
// bench/bench_rx_queue.cpp -- the hot receive path (rx_queue + rx_pool over split and packed),
// single thread, per batch size: census on/off, census clock on/off, reserve on/off/engaged,
// pool policy.
// Arguments of each benchmark: batch / copy_reserve / reserve engaged [/ bursts: poll(rx_burst&)
// and rx_burst::release() instead of packets and a bulk release]. With the reserve engaged
// only K - (repost_batch - 1) buffers are in the ring (K = 32 of 256 by default, freed buffers
// are posted 16 at a time), so that case runs at batch 16, next to a batch-16 healthy run.
#include "rx_bodies.hpp"

namespace vb = virtq_bench;
using vb::BM_rx_receive;  // BENCHMARK_TEMPLATE needs an unqualified name

#define VIRTQ_BENCH_REGISTER_RX(layout)                                                            \
  BENCHMARK_TEMPLATE(BM_rx_receive, layout, vb::p_event, vb::rx_plain, virtq::steady_clock_source) \
      ->Args({1, 1, 0, 0})                                                                         \
      ->Args({32, 1, 0, 0})                                                                        \
      ->Args({32, 1, 0, 1})                                                                        \
      ->Args({32, 0, 0, 0})                                                                        \
      ->Args({16, 1, 0, 0})                                                                        \
      ->Args({16, 1, 1, 0});                                                                       \
  BENCHMARK_TEMPLATE(BM_rx_receive, layout, vb::p_event, vb::rx_plain, vb::frozen_clock)           \
      ->Args({1, 1, 0, 0})                                                                         \
      ->Args({32, 1, 0, 0});                                                                       \
  BENCHMARK_TEMPLATE(BM_rx_receive, layout, vb::p_event, vb::rx_plain_no_census, vb::frozen_clock) \
      ->Args({1, 1, 0, 0})                                                                         \
      ->Args({32, 1, 0, 0});                                                                       \
  BENCHMARK_TEMPLATE(BM_rx_receive, layout, vb::p_event, vb::rx_atomic,                            \
                     virtq::steady_clock_source)                                                   \
      ->Args({32, 1, 0, 0})                                                                        \
      ->Args({32, 1, 0, 1})

VIRTQ_BENCH_REGISTER_RX(virtq::split_layout);
VIRTQ_BENCH_REGISTER_RX(virtq::packed_layout);
