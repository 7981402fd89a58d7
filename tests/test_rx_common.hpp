// SPDX-License-Identifier: MIT
// tests/test_rx_common.hpp -- what the receive-queue tests share: a device that "receives"
// frames into the driver's buffers, and a driver+device+pool+rx_queue rig on a manual clock.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <tuple>
#include <vector>

#include "layouts.hpp"
#include "virtq/rx_pool.hpp"
#include "virtq/rx_queue.hpp"

namespace virtq_test {

/// A frame as the tests send it: a 12-byte virtio-net header, then the TCP destination port and a
/// sequence number where an Ethernet/IPv4/TCP frame has them (byte 12+36 = dst port), padded.
inline constexpr std::size_t rx_frame_len = 96;
inline constexpr std::size_t rx_port_offset = 12 + 14 + 20 + 2;
inline constexpr std::size_t rx_seq_offset = 12 + 14 + 20 + 20;

inline std::array<std::byte, rx_frame_len> make_frame(std::uint16_t port, std::uint64_t seq) {
  std::array<std::byte, rx_frame_len> f{};
  f[rx_port_offset] = static_cast<std::byte>(port >> 8);
  f[rx_port_offset + 1] = static_cast<std::byte>(port & 0xff);
  std::memcpy(f.data() + rx_seq_offset, &seq, sizeof seq);
  return f;
}
inline std::uint16_t frame_port(std::span<const std::byte> d) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(d[rx_port_offset]) << 8) |
                                    std::to_integer<unsigned>(d[rx_port_offset + 1]));
}
inline std::uint64_t frame_seq(std::span<const std::byte> d) {
  std::uint64_t s = 0;
  std::memcpy(&s, d.data() + rx_seq_offset, sizeof s);
  return s;
}

/// The device side of a receive queue: pops a posted buffer, writes a frame, completes it.
template <class Device>
struct fake_nic {
  Device& dev;
  virtq::chain c{};

  /// errc::empty when the driver has no buffer posted (the frame is dropped, as by a real NIC).
  virtq::errc send(std::span<const std::byte> frame) {
    const virtq::errc e = dev.pop(c);
    if (e != virtq::errc::ok) return e;
    const std::size_t n = c.write(frame);
    return dev.complete(c.id(), static_cast<std::uint32_t>(n));
  }
  bool flush() { return dev.interrupt_prepare(); }
};

/// Driver + device over one ring, a pool, and an rx_queue on a manual clock.
template <class Layout, class PoolPolicy = virtq::rx_thread_safe_policy,
          class QueuePolicy = virtq::default_policy>
struct rx_rig {
  using pool_type = virtq::rx_pool<PoolPolicy>;
  using pair_type = queue_pair<Layout, QueuePolicy>;
  using rxq_type = virtq::rx_queue<typename pair_type::driver_type, pool_type, virtq::manual_clock>;
  using packet = typename rxq_type::packet;

  rx_rig(std::uint32_t ring_size, std::uint32_t pool_size, virtq::rx_queue_options o,
         std::uint32_t buf_size = 256)
      : qp(ring_size),
        pool(pool_size, buf_size, "rx"),
        rxq(qp.driver, pool, std::move(o), virtq::manual_clock{&time}),
        nic{qp.device} {}

  /// Sends `n` frames to `port` (stops early when no buffer is posted); returns how many went.
  std::size_t send(std::size_t n, std::uint16_t port) {
    std::size_t sent = 0;
    for (; sent < n; ++sent) {
      auto f = make_frame(port, next_seq);
      if (nic.send(f) != virtq::errc::ok) break;
      ++next_seq;
    }
    nic.flush();
    return sent;
  }

  /// Polls everything available.
  std::vector<packet> poll_all() {
    std::vector<packet> got;
    std::array<packet, 16> batch;
    for (;;) {
      auto r = rxq.poll(batch);
      REQUIRE(r.has_value());
      for (std::size_t k = 0; k < r->received; ++k) got.push_back(std::move(batch[k]));
      if (r->received < batch.size()) break;
    }
    return got;
  }

  virtq::manual_time time;
  pair_type qp;
  pool_type pool;
  rxq_type rxq;
  fake_nic<typename pair_type::device_type> nic;
  std::uint64_t next_seq = 0;
};

/// Every layout with the thread-safe pool (free list under a lock) and the single-thread one
/// (the repost list): a TEMPLATE_LIST_TEST_CASE list; TestType::type is the rig.
template <class Layout, class PoolPolicy>
struct rig_of {
  using type = rx_rig<Layout, PoolPolicy>;
};
using rx_rigs = std::tuple<rig_of<virtq::split_layout, virtq::rx_thread_safe_policy>,
                           rig_of<virtq::split_layout, virtq::rx_single_thread_policy>,
                           rig_of<virtq::packed_layout, virtq::rx_thread_safe_policy>,
                           rig_of<virtq::packed_layout, virtq::rx_single_thread_policy>>;

/// The index of the pool buffer that `d` starts, or nothing when `d` does not start one of
/// `pool`'s buffers (a burst's packet, found by its bytes).
template <class Pool>
std::optional<std::uint32_t> buffer_index(const Pool& pool, std::span<const std::byte> d) {
  const std::byte* const base = pool.host_address(0);
  if (d.data() < base) return std::nullopt;
  const auto at = static_cast<std::size_t>(d.data() - base);
  if (at % pool.buffer_size() != 0 || at / pool.buffer_size() >= pool.size()) return std::nullopt;
  return static_cast<std::uint32_t>(at / pool.buffer_size());
}

/// A driver queue that passes everything through but corrupts the completions it reports, as a
/// buggy Queue implementation would (the k-th completion's token becomes replace[k], every
/// length long_len when that is not 0): the rx_queue must count them and never index out of
/// bounds.
template <class Q>
struct corrupting_queue {
  Q& q;
  std::vector<virtq::token_t> replace;  // k-th completion's token := replace[k] (if any)
  std::uint32_t long_len = 0;           // non-zero: every completion reports this length
  std::size_t seen = 0;

  virtq::errc add(std::span<const virtq::buffer> o, std::span<const virtq::buffer> i,
                  virtq::token_t t) {
    return q.add(o, i, t);
  }
  virtq::errc add_inbuf(virtq::buffer b, virtq::token_t t) { return q.add_inbuf(b, t); }
  virtq::result<std::size_t> add_inbufs(std::span<const virtq::buffer> b,
                                        std::span<const virtq::token_t> t) {
    return q.add_inbufs(b, t);
  }
  virtq::result<std::size_t> add_outbufs(std::span<const virtq::buffer> b,
                                         std::span<const virtq::token_t> t) {
    return q.add_outbufs(b, t);
  }
  bool kick_prepare() { return q.kick_prepare(); }
  std::uint32_t notification_data(std::uint16_t vq) const { return q.notification_data(vq); }
  virtq::result<virtq::used_buffer> get_used() {
    auto r = q.get_used();
    if (r) corrupt(*r);
    return r;
  }
  virtq::result<std::size_t> get_used(std::span<virtq::used_buffer> out) {
    auto r = q.get_used(out);
    if (r) {
      for (std::size_t k = 0; k < *r; ++k) corrupt(out[k]);
    }
    return r;
  }
  void disable_interrupts() { q.disable_interrupts(); }
  bool enable_interrupts() { return q.enable_interrupts(); }
  bool enable_interrupts_delayed() { return q.enable_interrupts_delayed(); }
  void reset(void (*f)(virtq::token_t)) { q.reset(f); }
  std::uint32_t size() const { return q.size(); }
  std::uint32_t num_free() const { return q.num_free(); }
  bool broken() const { return q.broken(); }
  virtq::errc error() const { return q.error(); }
  const virtq::queue_stats& stats() const { return q.stats(); }

  void corrupt(virtq::used_buffer& u) {
    if (seen < replace.size()) u.token = replace[seen];
    if (long_len != 0) u.len = long_len;
    ++seen;
  }
};

/// A receive queue over a corrupting_queue, its ring holding six frames (0..5) the device wrote
/// and completed. With `reserve`, free + posted - K (18 - 14) is below a batch of six: the
/// packet-by-packet path (the reserve check) instead of the loop that lends everything.
template <class Layout>
struct buggy_queue_rig {
  using pair_type = queue_pair<Layout, virtq::default_policy>;
  using pool_type = virtq::rx_pool<virtq::rx_single_thread_policy>;
  using bad_type = corrupting_queue<typename pair_type::driver_type>;
  using rxq_type = virtq::rx_queue<bad_type, pool_type>;

  static virtq::rx_queue_options options(bool reserve) {
    virtq::rx_queue_options o;
    o.copy_reserve = reserve;
    o.reserve = 14;
    return o;
  }
  explicit buggy_queue_rig(bool reserve)
      : bad{qp.driver, {}, 0, 0},
        pool(reserve ? 18 : 64, 128, "rx"),
        rxq(bad, pool, options(reserve)) {
    REQUIRE(rxq.refill().has_value());
    fake_nic<typename pair_type::device_type> nic{qp.device};
    for (std::uint64_t k = 0; k < 6; ++k) REQUIRE(nic.send(make_frame(80, k)) == virtq::errc::ok);
    nic.flush();
  }

  pair_type qp{16};
  bad_type bad;
  pool_type pool;
  rxq_type rxq;
};

}  // namespace virtq_test
