// SPDX-License-Identifier: MIT
// bench/queue_bodies.hpp -- our virtqueues as a bench_pair, generic over the layout and the
// policy, and the benchmarks that run them. bench_queues.cpp registers the full policy matrix;
// bench_dpdk_compare.cpp registers the comparison subset next to the peers.
//
// A Layout (split_layout, packed_layout) names its queues as
//   typename Layout::template driver<P>
//   typename Layout::template device<P, identity_memory>
// so a new layout plugs in by adding one line to the registration lists below.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "bench_bodies.hpp"
#include "virtq/memory.hpp"
#include "virtq/virtqueue.hpp"

#include "virtq/packed.hpp"
#include "virtq/split.hpp"

namespace virtq_bench {

inline constexpr std::uint32_t queue_size = 256;
inline constexpr std::uint32_t buffer_bytes = 2048;  // a receive buffer for one MTU frame

/// The features a layout needs with a policy: VERSION_1 always, RING_PACKED for packed,
/// EVENT_IDX when the policy suppresses by event index.
template <class Layout, class P>
virtq::features features_for() {
  virtq::features f = virtq::features{}.with(virtq::feature::version_1);
  if constexpr (Layout::is_packed) f = f.with(virtq::feature::ring_packed);
  if constexpr (P::suppression::uses_event_idx) f = f.with(virtq::feature::event_idx);
  return f;
}

/// Where a guest_memory pair's buffers live in the guest: above 4 GiB, as a VMM's RAM above
/// the PCI hole is (QEMU's SET_MEM_TABLE on x86 sends a region below 4 GiB and one above).
inline constexpr std::uint64_t guest_high_ram = std::uint64_t{1} << 32;

/// A driver and a device over one ring in this process. The driver posts single
/// device-writable buffers (a receive queue); the device completes each with a full length
/// without touching the data, so what is measured is the queue, not memcpy.
/// M: the device's memory map. identity_memory (guest address == host address) by default;
/// with guest_memory, or a guest_memory_cursor over one, the buffers are a region of the
/// pair's table at guest_high_ram, after a low region, as a VMM's device sees them.
template <class Layout, class P, class M = virtq::identity_memory>
class queue_pair {
 public:
  using driver_type = typename Layout::template driver<P>;
  using device_type = typename Layout::template device<P, M>;
  static_assert(virtq::driver_queue<driver_type>);
  static_assert(virtq::device_queue<device_type>);

  /// `complete_len`: the bytes the device reports per buffer (a full buffer by default; the
  /// receive benchmarks use small frames so that a copy is cheap when the reserve engages).
  /// `in_order`: negotiate IN_ORDER (2.7.9 / 2.8.20) as well.
  explicit queue_pair(std::uint32_t size = queue_size, std::uint32_t complete_len = buffer_bytes,
                      bool in_order = false)
      : ring_(size),
        buffers_(std::size_t{size} * buffer_bytes, 4096),
        mem_(map_over(table_)),
        drv_(ring_.view(), negotiated(in_order), virtq::driver_options{}),
        dev_(ring_.view(), negotiated(in_order), mem_, virtq::device_options{}),
        complete_len_(complete_len),
        size_(size) {
    bufs_.resize(size);
    tokens_.resize(size);
    if constexpr (guest_addresses) {
      table().add_region(0, low_.size(), low_.data());
      table().add_region(guest_high_ram, buffers_.size(), buffers_.data());
    }
    const std::uint64_t base =
        guest_addresses ? guest_high_ram : reinterpret_cast<std::uintptr_t>(buffers_.data());
    for (std::uint32_t k = 0; k < size; ++k) {
      bufs_[k] = virtq::buffer{base + std::uint64_t{k} * buffer_bytes, buffer_bytes};
      tokens_[k] = k;
    }
  }

  std::size_t capacity() const noexcept { return size_; }

  /// The device's map: a cursor over the pair's table, or a map of its own.
  static M map_over(const virtq::guest_memory& table) {
    if constexpr (std::is_same_v<M, virtq::guest_memory_cursor>) {
      return M(table);
    } else {
      return M{};
    }
  }

  static virtq::features negotiated(bool in_order) {
    const virtq::features f = features_for<Layout, P>();
    return in_order ? f.with(virtq::feature::in_order) : f;
  }

  /// Use the one-chain-per-call API (add_inbuf, pop(chain&), complete(id, len)) instead of the
  /// batch calls: what a batch API saves, measured.
  void use_single_calls(bool on) noexcept { single_calls_ = on; }
  /// The device pops a batch into popped_buffers, then completes it with used_entries
  /// (pop_buffers + complete(span)) instead of serving in place (serve_buffers): what the
  /// arrays in between cost, measured.
  void use_pop_complete(bool on) noexcept { pop_complete_ = on; }

  std::size_t send(std::size_t n) {
    // One packet: the single call, as a driver would make it (a batch call's set-up is paid
    // per call and buys nothing for one). Out of line, so that it does not change how the
    // compiler lays out the batch loop below.
    if (single_calls_ || n == 1) return send_each(n);
    // The batch call: one lock, one broken test, one statistics update per batch. The buffers
    // and tokens of each slot are laid out once, so the harness adds nothing per packet but
    // the call.
    std::size_t i = 0;
    while (i < n) {
      const std::size_t k = std::min<std::size_t>(n - i, size_ - next_);
      const auto got =
          drv_.add_inbufs(std::span(bufs_.data() + next_, k), std::span(tokens_.data() + next_, k));
      if (!got || *got == 0) break;
      i += *got;
      next_ += static_cast<std::uint32_t>(*got);
      if (next_ == size_) next_ = 0;
      if (*got != k) break;
    }
    kicks_ += drv_.kick_prepare() ? 1U : 0U;
    return i;
  }

  std::size_t serve(std::size_t n) {
    if (single_calls_ || n == 1) return serve_each(n);
    if (pop_complete_) return serve_pop_complete(n);
    // The batch call a device that finishes each buffer at once makes: pop and complete in
    // one pass, the same length for every buffer. A chain of more than one descriptor (never
    // posted here) would take the pop(chain&) path.
    const std::uint32_t len = complete_len_;
    const auto got =
        dev_.serve_buffers(n, [len](const virtq::popped_buffer&) noexcept { return len; });
    const std::size_t i = got ? *got : 0;
    if (i != 0) interrupts_ += dev_.interrupt_prepare() ? 1U : 0U;
    return i;
  }

  /// serve() with the device writing `frame` into each buffer (as much as fits) and completing
  /// it with that length: what a NIC emulator does, for comparison with one (vhost-user).
  [[gnu::noinline]] std::size_t serve_frames(std::size_t n, std::span<const std::byte> frame) {
    const auto got = dev_.serve_buffers(n, [frame](const virtq::popped_buffer& b) noexcept {
      const auto len = static_cast<std::uint32_t>(std::min<std::size_t>(frame.size(), b.len));
      std::memcpy(b.data, frame.data(), len);
      return len;
    });
    const std::size_t i = got ? *got : 0;
    if (i != 0) interrupts_ += dev_.interrupt_prepare() ? 1U : 0U;
    return i;
  }
  /// The two batch calls: pop single-descriptor chains, complete them together.
  [[gnu::noinline]] std::size_t serve_pop_complete(std::size_t n) {
    std::size_t i = 0;
    while (i < n) {
      const std::size_t want = std::min<std::size_t>(n - i, max_batch);
      const auto got = dev_.pop_buffers(std::span(popped_, want));
      if (!got || *got == 0) break;
      for (std::size_t k = 0; k < *got; ++k) {
        done_[k] = virtq::used_entry{popped_[k].id, complete_len_};
      }
      const auto c = dev_.complete(std::span<const virtq::used_entry>(done_, *got));
      if (!c || *c != *got) break;
      i += *got;
    }
    if (i != 0) interrupts_ += dev_.interrupt_prepare() ? 1U : 0U;
    return i;
  }

  std::size_t reap(std::size_t n) {
    const auto got = drv_.get_used(
        std::span<virtq::used_buffer>(used_, std::min<std::size_t>(n, std::size(used_))));
    return got ? *got : 0;
  }

  /// The one-chain-per-call API: add_inbuf, pop(chain&), complete(id, len).
  [[gnu::noinline]] std::size_t send_each(std::size_t n) {
    std::size_t i = 0;
    for (; i < n; ++i) {
      if (drv_.add_inbuf(bufs_[next_], next_) != virtq::errc::ok) break;
      if (++next_ == size_) next_ = 0;
    }
    kicks_ += drv_.kick_prepare() ? 1U : 0U;
    return i;
  }
  [[gnu::noinline]] std::size_t serve_each(std::size_t n) {
    std::size_t i = 0;
    for (; i < n; ++i) {
      if (dev_.pop(chain_) != virtq::errc::ok) break;
      dev_.complete(chain_.id(), complete_len_);
    }
    if (i != 0) interrupts_ += dev_.interrupt_prepare() ? 1U : 0U;
    return i;
  }

  /// Polling on both sides: no notifications, no interrupts wanted (2.7.7 / 2.7.10 / 2.8.10).
  void begin_polling() {
    drv_.disable_interrupts();
    dev_.disable_notifications();
  }

  driver_type& driver() noexcept { return drv_; }
  device_type& device() noexcept { return dev_; }
  /// Guest addresses (guest_memory and cursor pairs) rather than host addresses.
  static constexpr bool guest_addresses = !std::is_same_v<M, virtq::identity_memory>;
  /// The region table the device translates through (guest_addresses pairs): add the regions
  /// of other buffers to it before traffic starts, as a VMM's SET_MEM_TABLE would.
  virtq::guest_memory& table() noexcept {
    if constexpr (std::is_same_v<M, virtq::guest_memory>) {
      return mem_;
    } else {
      return table_;
    }
  }
  std::uint64_t kicks() const noexcept { return kicks_; }
  std::uint64_t interrupts() const noexcept { return interrupts_; }

 private:
  virtq::ring_memory<Layout> ring_;
  virtq::aligned_buffer buffers_;
  virtq::aligned_buffer low_{guest_addresses ? 1U << 20 : 0U};
  virtq::guest_memory table_;  // cursor pairs: the table the cursor walks
  M mem_;                      // the device keeps a pointer to it
  // Driver state and device state live on different cache lines: in the two-thread
  // benchmarks each is written by its own CPU.
  alignas(64) driver_type drv_;
  std::uint32_t next_ = 0;
  bool single_calls_ = false;
  bool pop_complete_ = false;
  std::uint64_t kicks_ = 0;
  virtq::used_buffer used_[max_batch];
  std::vector<virtq::buffer> bufs_;     // slot k's buffer, laid out once
  std::vector<virtq::token_t> tokens_;  // slot k's token (k)
  alignas(64) device_type dev_;
  virtq::chain chain_;
  virtq::popped_buffer popped_[max_batch];
  virtq::used_entry done_[max_batch];
  std::uint64_t interrupts_ = 0;
  std::uint32_t complete_len_;
  alignas(64) std::uint32_t size_;
};

template <class Layout, class P>
void report_events(benchmark::State& state, const queue_pair<Layout, P>& q, std::int64_t items) {
  if (items <= 0) return;
  state.counters["kicks/item"] = static_cast<double>(q.kicks()) / static_cast<double>(items);
  state.counters["irqs/item"] = static_cast<double>(q.interrupts()) / static_cast<double>(items);
}

template <class Layout, class P>
void BM_queue_cycle(benchmark::State& state) {
  auto q = std::make_unique<queue_pair<Layout, P>>();
  const auto batch = static_cast<std::size_t>(state.range(0));
  cycle_single(state, *q, batch);
  report_events(state, *q, state.items_processed());
}

template <class Layout, class P>
void BM_queue_stream(benchmark::State& state) {
  auto q = std::make_unique<queue_pair<Layout, P>>();
  stream_two(state, *q, static_cast<std::size_t>(state.range(0)));
}

template <class Layout, class P>
void BM_queue_round_trip(benchmark::State& state) {
  auto q = std::make_unique<queue_pair<Layout, P>>();
  round_trip(state, *q);
}

// Policy shorthands for the registration lists.
using p_none = virtq::queue_policy<virtq::no_lock, virtq::suppress_none>;
using p_flags = virtq::queue_policy<virtq::no_lock, virtq::suppress_flags>;
using p_event = virtq::queue_policy<virtq::no_lock, virtq::suppress_event_idx>;
using p_spin_event = virtq::queue_policy<virtq::spin_lock, virtq::suppress_event_idx>;
using p_spin_none = virtq::queue_policy<virtq::spin_lock, virtq::suppress_none>;
using p_spin_flags = virtq::queue_policy<virtq::spin_lock, virtq::suppress_flags>;

}  // namespace virtq_bench

/// The comparison subset (default policy: no lock, event index), run next to the peers. Use at
/// global scope after `using namespace virtq_bench;` (BENCHMARK_TEMPLATE pastes the function
/// name into an identifier, so it must be unqualified).
#define VIRTQ_BENCH_REGISTER_LAYOUT_COMPARE(layout)                                  \
  BENCHMARK_TEMPLATE(BM_queue_cycle, layout, virtq_bench::p_event)->Arg(1)->Arg(32); \
  BENCHMARK_TEMPLATE(BM_queue_stream, layout, virtq_bench::p_event)                  \
      ->Arg(1)                                                                       \
      ->Arg(32)                                                                      \
      ->UseRealTime();                                                               \
  BENCHMARK_TEMPLATE(BM_queue_round_trip, layout, virtq_bench::p_event)->UseRealTime()

#define VIRTQ_BENCH_REGISTER_COMPARE()                      \
  VIRTQ_BENCH_REGISTER_LAYOUT_COMPARE(virtq::split_layout); \
  VIRTQ_BENCH_REGISTER_LAYOUT_COMPARE(virtq::packed_layout)
