// SPDX-License-Identifier: MIT
// bench/rx_bodies.hpp -- the hot receive path: a device fills buffers, rx_queue::poll() reaps
// them into packets (the pool lends each buffer, the census stamps holder and time), the stack
// releases them, and the next poll reposts them with one kick decision per batch.
// bench_rx_queue.cpp registers the benchmarks; count_cycle.cpp counts their instructions.
//
// Knobs:
//  * census on vs off (rx_pool_policy's Census switch: off, no holder tag and no time per lent
//    buffer), and the clock read once per poll: steady_clock_source vs frozen_clock below. The
//    bare queue cycle (BM_queue_cycle) is the "no pool at all" baseline.
//  * reserve: rx_queue_options::copy_reserve on vs off (on costs a comparison per packet while
//    the pool is healthy), and the reserve engaged (consumers hold everything else, so every
//    packet is copied into a bounce buffer and its ring buffer reposted).
//  * pool policy: plain refcounts + no lock vs atomic refcounts + spin lock.
#pragma once

#include <virtq/rx_pool.hpp>
#include <virtq/rx_queue.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "queue_bodies.hpp"

namespace virtq_bench {

/// A clock that is never read from the OS: isolates the census's clock read.
struct frozen_clock {
  std::chrono::nanoseconds now() const noexcept { return std::chrono::nanoseconds(1'000'000); }
};

using rx_plain = virtq::rx_pool_policy<false, virtq::no_lock, false, true>;
using rx_plain_no_census = virtq::rx_pool_policy<false, virtq::no_lock, false, false>;
using rx_atomic = virtq::rx_pool_policy<true, virtq::spin_lock, false, true>;

inline constexpr std::uint32_t rx_pool_buffers = 512;  // twice the ring: refills never run dry
inline constexpr std::uint32_t rx_frame_bytes = 64;    // what the device reports per packet

/// Where a guest_memory fixture's pool lies in the guest: a region of its own above the
/// pair's buffers, the third of the device's table (low RAM, the pair's buffers, the pool).
inline constexpr std::uint64_t guest_pool_ram = guest_high_ram + (std::uint64_t{1} << 30);

/// CopyFrames: the device writes a 12-byte virtio-net header and a 64-byte frame into each
/// buffer, as a vhost-user device does (count_dpdk_virtio's side-by-side cycle), instead of
/// leaving it untouched. A template argument: instantiated, that device path changes how GCC
/// compiles the others in the same program, so only the comparison program has it.
/// M: the device's memory map. With guest_memory (or a guest_memory_cursor) the pool's buffers
/// are a region of a three-region table at guest_pool_ram, and the device translates through
/// that table, as vhost-user's device walks the table SET_MEM_TABLE gave it.
template <class Layout, class P, class PoolPolicy, class Clock, bool CopyFrames = false,
          class M = virtq::identity_memory>
class rx_fixture {
 public:
  using pair_type = queue_pair<Layout, P, M>;
  using pool_type = virtq::rx_pool<PoolPolicy>;
  using queue_type = virtq::rx_queue<typename pair_type::driver_type, pool_type, Clock>;
  using packet = typename queue_type::packet;
  using burst = virtq::rx_burst<pool_type>;

  /// `bulk_release`: the stack gives each batch back with one rx_queue::release(span) call
  /// (else packet by packet, handle.release()). `bursts`: poll(rx_burst&) and
  /// rx_burst::release() instead (batches of at most rx_burst::capacity).
  explicit rx_fixture(bool copy_reserve, bool bulk_release = true, bool bursts = false)
      : bulk_release_(bulk_release),
        bursts_(bursts),
        qp_(queue_size, rx_frame_bytes),
        pool_(rx_pool_buffers, buffer_bytes, pool_region(qp_, pool_memory_), pool_map(qp_)),
        rx_(qp_.driver(), pool_, options(copy_reserve)) {
    ok_ = rx_.refill().has_value();
  }
  ~rx_fixture() { release_held(); }
  rx_fixture(const rx_fixture&) = delete;
  rx_fixture& operator=(const rx_fixture&) = delete;

  bool ok() const noexcept { return ok_; }

  /// One receive batch: the device completes `batch` buffers, poll() delivers them (and reposts
  /// what the previous batch released), the stack releases each packet.
  std::size_t cycle(std::size_t batch) {
    if (bursts_ || CopyFrames) return cycle_other(batch);
    qp_.serve(batch);
    return receive_packets(batch);
  }

  /// cycle() through bursts (the stack takes the batch as one loan and gives it back as one)
  /// or with the device copying frames in. Out of line, and the packet path in it only where
  /// frames are copied, so that the packet cycle is compiled as it was before these existed.
  [[gnu::noinline]] std::size_t cycle_other(std::size_t batch) {
    if constexpr (CopyFrames) {
      qp_.serve_frames(batch, frame_);
      if (!bursts_) return receive_packets(batch);
    } else {
      serve_outlined(batch);
    }
    const auto r = rx_.poll(burst_);
    if (!r) return 0;
    kicks_ += r->notify ? 1U : 0U;
    if (burst_.release() != virtq::errc::ok) return 0;
    return r->received;
  }

  /// The device's half out of line, compiled as in the bare cycle's phase_device_serve: inlined
  /// here, GCC allocated its registers differently with each change to the receive path (3
  /// instructions per packet in the packed device loop for a 2-instruction change per poll),
  /// and "the receive path over the bare cycle" measured the compiler, not the pool.
  [[gnu::noinline]] std::size_t serve_outlined(std::size_t batch) { return qp_.serve(batch); }

  /// Consumers stop returning buffers: keep every lent packet until poll() starts delivering
  /// copies (the reserve engaged). False if that never happens.
  bool engage_reserve() {
    for (std::uint32_t round = 0; round < 4 * rx_pool_buffers; ++round) {
      qp_.serve(1);
      auto r = rx_.poll(std::span<packet>(packets_.data(), 1));
      if (!r || r->received == 0) continue;
      if (packets_[0].resources_low()) {
        packets_[0].buffer.release();
        return true;
      }
      held_.push_back(std::move(packets_[0]));
    }
    return false;
  }
  void release_held() {
    for (auto& p : held_) p.buffer.release();
    held_.clear();
  }

  std::uint64_t kicks() const noexcept { return kicks_; }
  std::uint64_t copies() const { return rx_.stats().packets_copied; }

 private:
  /// poll() into packets and the stack's release of them.
  [[gnu::always_inline]] inline std::size_t receive_packets(std::size_t batch) {
    const auto r = rx_.poll(std::span<packet>(packets_.data(), batch));
    if (!r) return 0;
    kicks_ += r->notify ? 1U : 0U;
    if (bulk_release_) {
      // The stack returns the batch at once (NDIS returns NET_BUFFER_LIST chains).
      if (rx_.release(std::span<packet>(packets_.data(), r->received)) != virtq::errc::ok) return 0;
    } else {
      for (std::size_t k = 0; k < r->received; ++k) packets_[k].buffer.release();
    }
    return r->received;
  }

  static virtq::rx_queue_options options(bool copy_reserve) {
    virtq::rx_queue_options o;
    o.name = "bench";
    o.copy_reserve = copy_reserve;
    return o;
  }

  // The pool's buffers: `area`, which a guest_memory pair maps at guest_pool_ram (the pool
  // takes each buffer's guest address from the pair's memory map).
  static std::span<std::byte> pool_region(pair_type& qp, virtq::aligned_buffer& area) {
    area = virtq::aligned_buffer(std::size_t{rx_pool_buffers} * buffer_bytes);
    if constexpr (pair_type::guest_addresses) {
      qp.table().add_region(guest_pool_ram, area.size(), area.data());
    }
    return {area.data(), area.size()};
  }
  // Where the pool learns its buffers' guest addresses.
  static const auto& pool_map(pair_type& qp) {
    if constexpr (pair_type::guest_addresses) {
      return qp.table();
    } else {
      static const virtq::identity_memory identity;
      return identity;
    }
  }

  bool bulk_release_;
  bool bursts_;
  pair_type qp_;
  virtq::aligned_buffer pool_memory_;
  pool_type pool_;
  queue_type rx_;
  std::array<packet, max_batch> packets_{};
  burst burst_;  // after the queue and the pool: released before they go
  std::vector<packet> held_;
  std::uint64_t kicks_ = 0;
  bool ok_ = false;
  std::array<std::byte, 12 + 64> frame_{};  // what CopyFrames writes: header and frame
};

/// Arguments: batch, copy_reserve (0/1), reserve engaged (0/1), bursts (0/1:
/// rx_queue::poll(rx_burst&) and rx_burst::release() instead of packets and a bulk release).
template <class Layout, class P, class PoolPolicy, class Clock>
void BM_rx_receive(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const bool reserve = state.range(1) != 0;
  const bool engaged = state.range(2) != 0;
  const bool bursts = state.range(3) != 0;
  auto f = std::make_unique<rx_fixture<Layout, P, PoolPolicy, Clock>>(reserve, true, bursts);
  if (!f->ok() || (engaged && !f->engage_reserve())) {
    state.SkipWithError("rx set-up failed");
    for (auto _ : state) {
    }
    return;
  }
  std::int64_t items = 0;
  for (auto _ : state) {
    const std::size_t got = f->cycle(batch);
    if (got != batch) {
      state.SkipWithError("receive lost packets");
      break;
    }
    items += static_cast<std::int64_t>(got);
  }
  report_items(state, items);
  if (items > 0) {
    state.counters["copies/item"] = static_cast<double>(f->copies()) / static_cast<double>(items);
    state.counters["kicks/item"] = static_cast<double>(f->kicks()) / static_cast<double>(items);
  }
}

}  // namespace virtq_bench
