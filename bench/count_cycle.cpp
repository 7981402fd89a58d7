// SPDX-License-Identifier: MIT
// bench/count_cycle.cpp -- runs exactly N cycles of one scenario, for instruction counting
// under valgrind (scripts/callgrind.sh). Google Benchmark picks its iteration count by time,
// which makes instruction totals incomparable between runs; here the count is fixed, so
// Ir(2N) - Ir(N) is the cost of N cycles with every setup cost cancelled.
//
//   count_cycle <scenario> <cycles>      e.g. count_cycle split-event-32 100000
//   count_cycle --list                   the scenarios
//   count_cycle --smoke                  every scenario, a few cycles (ctest)
//
// A cycle moves `batch` packets: add -> kick_prepare -> pop -> complete -> interrupt_prepare
// -> get_used (plus, for the rx-* scenarios, the receive pool's hand-over and release).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "floor_ring.hpp"
#include "queue_bodies.hpp"
#include "rx_bodies.hpp"

namespace {

using runner = std::function<bool(std::size_t cycles)>;

// One out-of-line function per phase, so that callgrind_annotate --inclusive=yes splits the
// cost of a cycle into the driver's add+kick, the device's pop+complete+interrupt decision and
// the driver's reaping (everything inside each phase is still inlined as in real use).
template <class Q>
[[gnu::noinline]] std::size_t phase_driver_add(Q& q, std::size_t n) {
  return q.send(n);
}
template <class Q>
[[gnu::noinline]] std::size_t phase_device_serve(Q& q, std::size_t n) {
  return q.serve(n);
}
template <class Q>
[[gnu::noinline]] std::size_t phase_driver_reap(Q& q, std::size_t n) {
  return q.reap(n);
}

template <class F>
[[gnu::noinline]] std::size_t phase_rx_receive(F& f, std::size_t n) {
  return f.cycle(n);
}

/// The receive path: device serve + rx_queue::poll (lend, census, repost, kick decision) +
/// release, `batch` packets per cycle.
template <class Layout, class PoolPolicy, class Clock>
runner rx_scenario(std::size_t batch, bool copy_reserve, bool bulk_release = true,
                   bool bursts = false) {
  return [batch, copy_reserve, bulk_release, bursts](std::size_t cycles) {
    auto f =
        std::make_unique<virtq_bench::rx_fixture<Layout, virtq_bench::p_event, PoolPolicy, Clock>>(
            copy_reserve, bulk_release, bursts);
    if (!f->ok()) return false;
    for (std::size_t i = 0; i < cycles; ++i) {
      if (phase_rx_receive(*f, batch) != batch) return false;
    }
    return true;
  };
}

/// How the device side of a queue scenario works.
enum class device_calls {
  serve,         ///< serve_buffers: pop and complete in one pass (the default)
  pop_complete,  ///< pop_buffers + complete(span), arrays in between
  single,        ///< pop(chain&) + complete(id, len) per chain (and add_inbuf on the driver)
};

template <class Layout, class P, class M = virtq::identity_memory>
runner queue_scenario(std::size_t batch, device_calls calls = device_calls::serve,
                      bool in_order = false) {
  return [batch, calls, in_order](std::size_t cycles) {
    auto q = std::make_unique<virtq_bench::queue_pair<Layout, P, M>>(
        virtq_bench::queue_size, virtq_bench::buffer_bytes, in_order);
    q->use_single_calls(calls == device_calls::single);
    q->use_pop_complete(calls == device_calls::pop_complete);
    for (std::size_t i = 0; i < cycles; ++i) {
      if (phase_driver_add(*q, batch) != batch || phase_device_serve(*q, batch) != batch ||
          phase_driver_reap(*q, batch) != batch) {
        return false;
      }
    }
    return true;
  };
}

/// A pair that is not one of our queues (the format floor), through the same phases.
template <class Pair>
runner pair_scenario(std::size_t batch, bool pop_complete = false) {
  return [batch, pop_complete](std::size_t cycles) {
    auto q = std::make_unique<Pair>();
    q->use_pop_complete(pop_complete);
    for (std::size_t i = 0; i < cycles; ++i) {
      if (phase_driver_add(*q, batch) != batch || phase_device_serve(*q, batch) != batch ||
          phase_driver_reap(*q, batch) != batch) {
        return false;
      }
    }
    return true;
  };
}

std::vector<std::pair<std::string, runner>> scenarios() {
  namespace vb = virtq_bench;
  std::vector<std::pair<std::string, runner>> s;
  for (std::size_t b : {1U, 32U}) {
    const std::string n = std::to_string(b);
    s.emplace_back("split-none-" + n, queue_scenario<virtq::split_layout, vb::p_none>(b));
    s.emplace_back("split-flags-" + n, queue_scenario<virtq::split_layout, vb::p_flags>(b));
    s.emplace_back("split-event-" + n, queue_scenario<virtq::split_layout, vb::p_event>(b));
    s.emplace_back("split-spin-event-" + n,
                   queue_scenario<virtq::split_layout, vb::p_spin_event>(b));
  }
  for (std::size_t b : {1U, 32U}) {
    const std::string n = std::to_string(b);
    s.emplace_back("packed-none-" + n, queue_scenario<virtq::packed_layout, vb::p_none>(b));
    s.emplace_back("packed-flags-" + n, queue_scenario<virtq::packed_layout, vb::p_flags>(b));
    s.emplace_back("packed-event-" + n, queue_scenario<virtq::packed_layout, vb::p_event>(b));
    s.emplace_back("packed-spin-event-" + n,
                   queue_scenario<virtq::packed_layout, vb::p_spin_event>(b));
  }
  // The same cycle through the one-chain-per-call API: what the batch calls save.
  s.emplace_back("split-event-single-32",
                 queue_scenario<virtq::split_layout, vb::p_event>(32, device_calls::single));
  s.emplace_back("packed-event-single-32",
                 queue_scenario<virtq::packed_layout, vb::p_event>(32, device_calls::single));
  // The device through pop_buffers + complete(span) instead of serve_buffers.
  s.emplace_back("split-event-popcomplete-32",
                 queue_scenario<virtq::split_layout, vb::p_event>(32, device_calls::pop_complete));
  s.emplace_back("packed-event-popcomplete-32",
                 queue_scenario<virtq::packed_layout, vb::p_event>(32, device_calls::pop_complete));
  // IN_ORDER negotiated (2.7.9 / 2.8.20): buffers are used in the order they were made available.
  s.emplace_back("split-inorder-event-32",
                 queue_scenario<virtq::split_layout, vb::p_event>(32, device_calls::serve, true));
  s.emplace_back("packed-inorder-event-32",
                 queue_scenario<virtq::packed_layout, vb::p_event>(32, device_calls::serve, true));
  s.emplace_back(
      "split-inorder-event-popcomplete-32",
      queue_scenario<virtq::split_layout, vb::p_event>(32, device_calls::pop_complete, true));
  s.emplace_back(
      "packed-inorder-event-popcomplete-32",
      queue_scenario<virtq::packed_layout, vb::p_event>(32, device_calls::pop_complete, true));
  // The split format with no checks, suppression or bookkeeping (bench/floor_ring.hpp): the
  // floor any split implementation starts from, next to split-none-32.
  // A VMM's device: guest memory of two regions, the buffers in the one above 4 GiB.
  s.emplace_back("split-event-guestmem-32",
                 queue_scenario<virtq::split_layout, vb::p_event, virtq::guest_memory>(32));
  s.emplace_back("packed-event-guestmem-32",
                 queue_scenario<virtq::packed_layout, vb::p_event, virtq::guest_memory>(32));
  // The same with the device translating through a guest_memory_cursor of its own.
  s.emplace_back("split-event-cursor-32",
                 queue_scenario<virtq::split_layout, vb::p_event, virtq::guest_memory_cursor>(32));
  s.emplace_back("packed-event-cursor-32",
                 queue_scenario<virtq::packed_layout, vb::p_event, virtq::guest_memory_cursor>(32));
  s.emplace_back("floor-split-32", pair_scenario<vb::floor_split_pair>(32));
  s.emplace_back("floor-split-1", pair_scenario<vb::floor_split_pair>(1));
  s.emplace_back("floor-packed-32", pair_scenario<vb::floor_packed_pair>(32));
  s.emplace_back("floor-packed-1", pair_scenario<vb::floor_packed_pair>(1));
  s.emplace_back("floor-split-popcomplete-32", pair_scenario<vb::floor_split_pair>(32, true));
  s.emplace_back("floor-packed-popcomplete-32", pair_scenario<vb::floor_packed_pair>(32, true));
  s.emplace_back(
      "rx-split-32",
      rx_scenario<virtq::split_layout, vb::rx_plain, virtq::steady_clock_source>(32, true));
  s.emplace_back("rx-split-noclock-32",
                 rx_scenario<virtq::split_layout, vb::rx_plain, vb::frozen_clock>(32, true));
  s.emplace_back(
      "rx-split-nocensus-32",
      rx_scenario<virtq::split_layout, vb::rx_plain_no_census, vb::frozen_clock>(32, true));
  s.emplace_back(
      "rx-split-noreserve-32",
      rx_scenario<virtq::split_layout, vb::rx_plain, virtq::steady_clock_source>(32, false));
  s.emplace_back(
      "rx-split-single-release-32",
      rx_scenario<virtq::split_layout, vb::rx_plain, virtq::steady_clock_source>(32, true, false));
  s.emplace_back(
      "rx-split-atomic-32",
      rx_scenario<virtq::split_layout, vb::rx_atomic, virtq::steady_clock_source>(32, true));
  s.emplace_back(
      "rx-packed-32",
      rx_scenario<virtq::packed_layout, vb::rx_plain, virtq::steady_clock_source>(32, true));
  s.emplace_back(
      "rx-packed-nocensus-32",
      rx_scenario<virtq::packed_layout, vb::rx_plain_no_census, vb::frozen_clock>(32, true));
  // The stack takes each batch as one loan (rx_queue::poll(rx_burst&), rx_burst::release()).
  s.emplace_back("rx-split-burst-32",
                 rx_scenario<virtq::split_layout, vb::rx_plain, virtq::steady_clock_source>(
                     32, true, true, true));
  s.emplace_back("rx-split-burst-nocensus-32",
                 rx_scenario<virtq::split_layout, vb::rx_plain_no_census, vb::frozen_clock>(
                     32, true, true, true));
  s.emplace_back("rx-split-burst-atomic-32",
                 rx_scenario<virtq::split_layout, vb::rx_atomic, virtq::steady_clock_source>(
                     32, true, true, true));
  s.emplace_back("rx-packed-burst-32",
                 rx_scenario<virtq::packed_layout, vb::rx_plain, virtq::steady_clock_source>(
                     32, true, true, true));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const auto all = scenarios();
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& [name, run] : all) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (argc == 2 && std::strcmp(argv[1], "--smoke") == 0) {
    for (const auto& [name, run] : all) {
      if (!run(1000)) {
        std::fprintf(stderr, "scenario %s lost packets\n", name.c_str());
        return 1;
      }
    }
    return 0;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <scenario> <cycles> | --list | --smoke\n", argv[0]);
    return 2;
  }
  const std::size_t cycles = std::strtoull(argv[2], nullptr, 10);
  for (const auto& [name, run] : all) {
    if (name == argv[1]) {
      if (!run(cycles)) {
        std::fprintf(stderr, "scenario %s lost packets\n", name.c_str());
        return 1;
      }
      return 0;
    }
  }
  std::fprintf(stderr, "unknown scenario %s (try --list)\n", argv[1]);
  return 2;
}
