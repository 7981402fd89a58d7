// SPDX-License-Identifier: MIT
// bench/bench_dpdk_compare.cpp -- the comparison set in one process, so every ratio in
// docs/performance.md comes from one run on one machine state: DPDK's rte_ring (SP/SC, 16-byte
// elements, bursts), boost::lockfree::spsc_queue, and our split and packed queues, all through
// the bodies of bench_bodies.hpp.
//
// EAL must be up before rte_ring_create, so this file has its own main: EAL first (no
// hugepages, no PCI, a private file prefix whose runtime directory is removed at exit), then
// Google Benchmark with the remaining arguments.
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ring.h>
#include <rte_ring_elem.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "peer_rings.hpp"
#include "queue_bodies.hpp"

namespace virtq_bench {
namespace {

/// rte_ring in single-producer / single-consumer mode with 16-byte elements. Like boost, a ring
/// of 256 slots holds 255 items (RING_F_EXACT_SZ not set).
class dpdk_ring {
 public:
  explicit dpdk_ring(const char* name) {
    r_ = rte_ring_create_elem(name, sizeof(item16), ring_slots, SOCKET_ID_ANY,
                              RING_F_SP_ENQ | RING_F_SC_DEQ);
  }
  ~dpdk_ring() { rte_ring_free(r_); }
  dpdk_ring(const dpdk_ring&) = delete;
  dpdk_ring& operator=(const dpdk_ring&) = delete;
  bool ok() const noexcept { return r_ != nullptr; }
  std::size_t push(const item16* in, std::size_t n) {
    return rte_ring_sp_enqueue_burst_elem(r_, in, sizeof(item16), static_cast<unsigned>(n),
                                          nullptr);
  }
  std::size_t pop(item16* out, std::size_t n) {
    return rte_ring_sc_dequeue_burst_elem(r_, out, sizeof(item16), static_cast<unsigned>(n),
                                          nullptr);
  }
  static constexpr std::size_t usable = ring_slots - 1;

 private:
  rte_ring* r_ = nullptr;
};

struct dpdk_pair_fixture {
  dpdk_ring req{"vq_req"}, done{"vq_done"};
  ring_pair<dpdk_ring> pair{req, done, dpdk_ring::usable};
};

template <class Body>
void with_dpdk_pair(benchmark::State& state, Body body) {
  auto f = std::make_unique<dpdk_pair_fixture>();
  if (!f->req.ok() || !f->done.ok()) {
    state.SkipWithError("rte_ring_create_elem failed");
    for (auto _ : state) {
    }
    return;
  }
  body(f->pair);
}

void BM_dpdk_ring_cycle(benchmark::State& state) {
  with_dpdk_pair(
      state, [&](auto& p) { cycle_single(state, p, static_cast<std::size_t>(state.range(0))); });
}
void BM_dpdk_ring_stream(benchmark::State& state) {
  with_dpdk_pair(state,
                 [&](auto& p) { stream_two(state, p, static_cast<std::size_t>(state.range(0))); });
}
void BM_dpdk_ring_round_trip(benchmark::State& state) {
  with_dpdk_pair(state, [&](auto& p) { round_trip(state, p); });
}
void BM_dpdk_ring_oneway_stream(benchmark::State& state) {
  dpdk_ring ring("vq_oneway");
  if (!ring.ok()) {
    state.SkipWithError("rte_ring_create_elem failed");
    for (auto _ : state) {
    }
    return;
  }
  auto one = std::make_unique<ring_oneway<dpdk_ring>>(ring, dpdk_ring::usable);
  stream_two(state, *one, static_cast<std::size_t>(state.range(0)));
}

}  // namespace
}  // namespace virtq_bench

BENCHMARK(virtq_bench::BM_dpdk_ring_cycle)->Arg(1)->Arg(32);
BENCHMARK(virtq_bench::BM_dpdk_ring_stream)->Arg(1)->Arg(32)->UseRealTime();
BENCHMARK(virtq_bench::BM_dpdk_ring_round_trip)->UseRealTime();
BENCHMARK(virtq_bench::BM_dpdk_ring_oneway_stream)->Arg(1)->Arg(32)->UseRealTime();
VIRTQ_BENCH_REGISTER_BOOST();
using namespace virtq_bench;  // NOLINT: the registration macros need unqualified names
VIRTQ_BENCH_REGISTER_COMPARE();

int main(int argc, char** argv) {
  // EAL gets its own fixed arguments; argv goes to Google Benchmark untouched.
  const std::string prefix = "virtq_bench_" + std::to_string(::getpid());
  std::vector<std::string> eal_args = {"bench_dpdk_compare",
                                       "-l",
                                       "0",
                                       "--no-huge",
                                       "-m",
                                       "128",
                                       "--no-pci",
                                       "--no-telemetry",
                                       "--log-level=error",
                                       "--file-prefix",
                                       prefix};
  std::vector<char*> eal_argv;
  for (auto& a : eal_args) eal_argv.push_back(a.data());
  if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
    std::fprintf(stderr, "rte_eal_init failed: %s\n", rte_strerror(rte_errno));
    return 1;
  }
  const std::filesystem::path runtime_dir = rte_eal_get_runtime_dir();

  benchmark::Initialize(&argc, argv);
  int rc = 0;
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    rc = 1;
  } else {
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  }
  rte_eal_cleanup();
  std::error_code ec;
  if (runtime_dir.filename().string().find(prefix) != std::string::npos) {
    std::filesystem::remove_all(runtime_dir, ec);
  }
  return rc;
}
