// SPDX-License-Identifier: MIT
// bench/bench_queues.cpp -- split and packed queues over the policy matrix, without DPDK:
//  * single thread, full cycle (add -> kick_prepare -> pop -> complete -> interrupt_prepare ->
//    get_used), batch 1 and 32, suppression none / flags / event_idx, no_lock vs spin_lock;
//  * two threads (driver on CPU 0, device on CPU 1), polling, queue 256: streaming per batch
//    size and round-trip latency with one buffer outstanding.
#include "queue_bodies.hpp"

namespace vb = virtq_bench;
// BENCHMARK_TEMPLATE pastes the function name into an identifier: it must be unqualified.
using vb::BM_queue_cycle;
using vb::BM_queue_round_trip;
using vb::BM_queue_stream;

#define VIRTQ_BENCH_REGISTER_MATRIX(layout)                                              \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_none)->Arg(1)->Arg(32);               \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_flags)->Arg(1)->Arg(32);              \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_event)->Arg(1)->Arg(32);              \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_spin_none)->Arg(1)->Arg(32);          \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_spin_flags)->Arg(1)->Arg(32);         \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, vb::p_spin_event)->Arg(1)->Arg(32);         \
  BENCHMARK_TEMPLATE(BM_queue_stream, layout, vb::p_event)                               \
      ->Arg(1)                                                                           \
      ->Arg(8)                                                                           \
      ->Arg(32)                                                                          \
      ->Arg(128)                                                                         \
      ->UseRealTime();                                                                   \
  BENCHMARK_TEMPLATE(BM_queue_stream, layout, vb::p_spin_event)->Arg(32)->UseRealTime(); \
  BENCHMARK_TEMPLATE(BM_queue_round_trip, layout, vb::p_event)->UseRealTime()

VIRTQ_BENCH_REGISTER_MATRIX(virtq::split_layout);
VIRTQ_BENCH_REGISTER_MATRIX(virtq::packed_layout);
