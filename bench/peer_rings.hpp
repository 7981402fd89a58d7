// SPDX-License-Identifier: MIT
// bench/peer_rings.hpp -- the peers that need no DPDK: boost::lockfree::spsc_queue of 16-byte
// items behind the spsc_ring interface of bench_bodies.hpp, and the benchmarks that run it.
// bench_peers.cpp registers them alone; bench_dpdk_compare.cpp registers them next to rte_ring
// and our queues so that every ratio comes from one run.
#pragma once

#include <boost/lockfree/spsc_queue.hpp>

#include <cstddef>
#include <memory>

#include "bench_bodies.hpp"

namespace virtq_bench {

/// Ring slots of every contender (the "queue 256").
inline constexpr std::size_t ring_slots = 256;

/// boost's ring keeps one slot empty to tell full from empty, so 256 slots hold 255 items.
class boost_spsc {
 public:
  std::size_t push(const item16* in, std::size_t n) { return q_.push(in, n); }
  std::size_t pop(item16* out, std::size_t n) { return q_.pop(out, n); }
  static constexpr std::size_t usable = ring_slots - 1;

 private:
  boost::lockfree::spsc_queue<item16, boost::lockfree::capacity<ring_slots>> q_;
};

struct boost_pair_fixture {
  boost_spsc req, done;
  ring_pair<boost_spsc> pair{req, done, boost_spsc::usable};
};

inline void BM_boost_spsc_cycle(benchmark::State& state) {
  auto f = std::make_unique<boost_pair_fixture>();
  cycle_single(state, f->pair, static_cast<std::size_t>(state.range(0)));
}
inline void BM_boost_spsc_stream(benchmark::State& state) {
  auto f = std::make_unique<boost_pair_fixture>();
  stream_two(state, f->pair, static_cast<std::size_t>(state.range(0)));
}
inline void BM_boost_spsc_round_trip(benchmark::State& state) {
  auto f = std::make_unique<boost_pair_fixture>();
  round_trip(state, f->pair);
}
inline void BM_boost_spsc_oneway_stream(benchmark::State& state) {
  auto ring = std::make_unique<boost_spsc>();
  auto one = std::make_unique<ring_oneway<boost_spsc>>(*ring, boost_spsc::usable);
  stream_two(state, *one, static_cast<std::size_t>(state.range(0)));
}

/// Registers the boost peer benchmarks (called from each binary's registration list).
#define VIRTQ_BENCH_REGISTER_BOOST()                                            \
  BENCHMARK(virtq_bench::BM_boost_spsc_cycle)->Arg(1)->Arg(32);                 \
  BENCHMARK(virtq_bench::BM_boost_spsc_stream)->Arg(1)->Arg(32)->UseRealTime(); \
  BENCHMARK(virtq_bench::BM_boost_spsc_round_trip)->UseRealTime();              \
  BENCHMARK(virtq_bench::BM_boost_spsc_oneway_stream)->Arg(1)->Arg(32)->UseRealTime()

}  // namespace virtq_bench
