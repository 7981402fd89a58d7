// examples/rx_burst.cpp -- the receive fast path in bursts, both sides, as a starting point for a
// NIC emulator (vhost-net's job) and a NIC driver (virtio-net's receive queue).
//
// Device: serve_buffers() takes up to a burst of posted receive buffers in one call (each a
// chain of one device-writable descriptor, translated and checked), hands each to a callback
// that copies a frame in and returns its length, and stages the used entry at once: no array
// of popped buffers or used entries in between. interrupt_prepare() publishes the burst and
// says whether the driver wants an interrupt. A chain that is not one descriptor stops the
// burst and is taken with pop(chain&), so a device stays correct with any driver.
// (pop_buffers() + complete(span) are the same in two steps, for a device that fills buffers
// later, out of order.)
// Driver: rx_queue::poll(rx_burst&) reaps a burst of packets lent from the pool as one loan
// (census: holder and time per buffer), the "stack" reads them and gives the whole burst back
// with one rx_burst::release(), and the next poll() reposts the buffers with one add_inbufs()
// and one kick decision. (poll(span<packet>) hands out a refcounted handle per packet instead,
// for a stack that lets packets go one by one.)
//
//   rx_burst [--smoke]
//
// Prints, per layout: frames delivered, frames the device dropped for want of a posted buffer,
// kicks and interrupts per frame, and the pool's conservation check.

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>

#include "virtq/memory.hpp"
#include "virtq/packed.hpp"
#include "virtq/rx_pool.hpp"
#include "virtq/rx_queue.hpp"
#include "virtq/split.hpp"
#include "virtq/virtqueue.hpp"

namespace {

constexpr std::uint32_t queue_size = 256;
constexpr std::uint32_t pool_buffers = 512;
constexpr std::uint32_t buffer_bytes = 2048;
constexpr std::size_t burst = 32;

/// A frame of `len` bytes whose content says which frame it is.
void make_frame(std::uint64_t seq, std::span<std::byte> out) {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>((seq + i) & 0xFF);
}
bool frame_ok(std::uint64_t seq, std::span<const std::byte> in) {
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != static_cast<std::byte>((seq + i) & 0xFF)) return false;
  }
  return true;
}
std::uint32_t frame_len(std::uint64_t seq) {
  return 60 + static_cast<std::uint32_t>(seq % 1400);
}

/// The NIC emulator's receive side: frames from the wire into the guest's posted buffers.
template <class Device>
class nic_rx {
 public:
  explicit nic_rx(Device& dev) : dev_(dev) {}

  /// Delivers up to `n` frames starting at sequence `seq`; returns how many went in. A frame
  /// with no posted buffer is dropped, as a real NIC drops it.
  std::size_t receive(std::uint64_t seq, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
      const std::size_t want = std::min(n - done, burst);
      // The callback runs under the queue's lock, once per buffer, in ring order; it must not
      // throw, and its length must fit the buffer (else that buffer stays held, the burst ends
      // with invalid_argument or the count before it: a bug of ours, not of the driver).
      const std::uint64_t first = seq + done;
      std::uint64_t k = 0;
      const virtq::result<std::size_t> got =
          dev_.serve_buffers(want, [&](const virtq::popped_buffer& b) noexcept {
            const std::uint32_t len = std::min(frame_len(first + k), b.len);
            ++k;
            if (!b.writable) return 0U;  // not a receive buffer: nothing written
            if (b.data != nullptr) make_frame(first + k - 1, {b.data, len});
            return len;
          });
      if (!got) return done;  // the driver broke a rule: the queue says which (error())
      done += *got;
      if (*got == 0) {
        // Empty, or a chain of several descriptors (another driver's layout): the general pop.
        if (dev_.pop(chain_) != virtq::errc::ok) break;
        std::array<std::byte, buffer_bytes> frame{};
        const std::uint32_t len = frame_len(seq + done);
        make_frame(seq + done, std::span(frame).first(len));
        const std::size_t wrote = chain_.write(std::span(frame).first(len));
        if (dev_.complete(chain_, static_cast<std::uint32_t>(wrote)) != virtq::errc::ok) break;
        ++done;
      }
    }
    if (done != 0) interrupts_ += dev_.interrupt_prepare() ? 1U : 0U;
    return done;
  }
  std::uint64_t interrupts() const noexcept { return interrupts_; }

 private:
  Device& dev_;
  virtq::chain chain_;
  std::uint64_t interrupts_ = 0;
};

template <class Layout>
bool run(const char* name, std::uint64_t frames) {
  using policy = virtq::default_policy;
  using driver_t = typename Layout::template driver<policy>;
  using device_t = typename Layout::template device<policy, virtq::identity_memory>;
  using pool_t = virtq::rx_pool<virtq::rx_single_thread_policy>;
  using rxq_t = virtq::rx_queue<driver_t, pool_t>;

  virtq::features f =
      virtq::features{}.with(virtq::feature::version_1).with(virtq::feature::event_idx);
  if constexpr (Layout::is_packed) f = f.with(virtq::feature::ring_packed);

  virtq::ring_memory<Layout> ring(queue_size);
  virtq::identity_memory mem;  // the pool's buffers: guest address == host address here
  driver_t driver(ring.view(), f);
  device_t device(ring.view(), f, mem);
  pool_t pool(pool_buffers, buffer_bytes, std::string(name) + "-rx");
  virtq::rx_queue_options opts;
  opts.name = std::string(name) + "-rx";
  rxq_t rxq(driver, pool, opts);
  nic_rx<device_t> nic(device);

  // The device asks to be notified only when it runs out of posted buffers: with EVENT_IDX
  // that is an event index (split: avail_event, 2.7.10; packed: a descriptor event, 2.8.10)
  // that follows the device's position, so a driver refilling ahead of it stays silent.
  (void)device.enable_notifications();
  if (!rxq.refill()) return false;
  virtq::rx_burst<pool_t> got;  // after the pool: released before it goes
  static_assert(burst <= decltype(got)::capacity, "one poll takes what one burst brought");
  std::uint64_t sent = 0, delivered = 0, dropped = 0, kicks = 0, bad = 0;
  while (sent < frames) {
    // The wire brings a burst of varying size; the NIC takes what it has buffers for.
    const std::size_t offered = 1 + (sent * 7) % burst;
    const std::size_t in = nic.receive(sent, offered);
    dropped += offered - in;
    // Frames the NIC dropped never reach the driver: their sequence numbers are skipped.
    std::uint64_t seq = sent;
    sent += offered;
    const virtq::result<virtq::rx_poll_result> r = rxq.poll(got);
    if (!r) return false;
    kicks += r->notify ? 1U : 0U;
    for (std::size_t k = 0; k < r->received; ++k) {
      if (!frame_ok(seq + k, got.data(k))) ++bad;
    }
    delivered += r->received;
    if (got.release() != virtq::errc::ok) return false;
  }
  const virtq::pool_census census = rxq.census();
  std::printf("%-7s %8llu frames delivered, %llu dropped (no buffer posted), %llu corrupt\n", name,
              static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(dropped),
              static_cast<unsigned long long>(bad));
  std::printf(
      "        %.4f kicks/frame, %.4f interrupts/frame, pool %s (free %u posted %u held %u)\n",
      static_cast<double>(kicks) / static_cast<double>(delivered),
      static_cast<double>(nic.interrupts()) / static_cast<double>(delivered),
      census.conserved ? "conserved" : census.violation.c_str(), census.free, census.posted,
      census.held);
  return bad == 0 && census.conserved && census.held == 0 && delivered + dropped == sent &&
         !driver.broken() && !device.broken();
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
  const std::uint64_t frames = smoke ? 20'000 : 2'000'000;
  const bool ok =
      run<virtq::split_layout>("split", frames) && run<virtq::packed_layout>("packed", frames);
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
