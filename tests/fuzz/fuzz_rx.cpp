// libFuzzer target: a hostile DEVICE behind the receive path. A real device pops the posted
// buffers, writes into them and completes them, in any order; between its steps the input may
// rewrite any byte a device may write (split: the used ring and avail_event; packed: the
// descriptor slots and the device event area). The receive queue and its pool, driven by a
// stack that polls into packets and bursts, keeps, passes on and releases them, must keep the
// census exact and the ring in step with it whatever the device does (docs/fuzzing.md).
// Input layout: config bytes (fuzz_common.hpp), two bytes of receive settings, then a stream
// of operations and their operands.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "fuzz_common.hpp"
#include "virtq/memory.hpp"
#include "virtq/rx_pool.hpp"
#include "virtq/rx_queue.hpp"
#include "virtq/virtqueue.hpp"

namespace {

using namespace virtq;
using virtq_fuzz::reader;

constexpr std::uint32_t buffer_bytes = 128;

template <class Layout, class QueuePolicy, class PoolPolicy>
void run(const virtq_fuzz::config& cfg, reader& in) {
  using driver_type = typename Layout::template driver<QueuePolicy>;
  // The device sees guest memory as a VMM does, the pool's buffers and nothing else: the input
  // may rewrite the addresses it reads (packed descriptors are device-writable slots), and
  // identity_memory would let those land anywhere in this process.
  using device_type = typename Layout::template device<QueuePolicy, guest_memory>;
  using pool_type = rx_pool<PoolPolicy>;
  using rxq_type = rx_queue<driver_type, pool_type, manual_clock>;
  using packet = typename rxq_type::packet;
  using burst = rx_burst<pool_type>;

  // byte 0: the pool's size; byte 1: bit 0 the reserve, bits 1-3 bounce buffers, bits 4-7 the
  // repost batch.
  const std::uint32_t pool_size_in = 1U + in.u8() % 80U;
  const std::uint8_t b1 = in.u8();
  rx_queue_options o;
  o.copy_reserve = (b1 & 1U) != 0;
  o.bounce_buffers = (b1 >> 1) & 7U;
  o.repost_batch = 1U + (b1 >> 4);
  // The automatic reserve is at least 2 and must stay below the pool's size (the constructor
  // throws otherwise: a caller's error, tested in test_rx_queue.cpp).
  const std::uint32_t pool_size = o.copy_reserve ? std::max(pool_size_in, 3U) : pool_size_in;
  o.starvation_after = std::chrono::milliseconds(2);
  o.loan_deadline = std::chrono::milliseconds(8);

  ring_memory<Layout> ring(cfg.size);
  manual_time time;
  pool_type pool(pool_size, buffer_bytes, "rx");
  guest_memory mem;
  mem.add_identity_region(pool.host_address(0), std::uint64_t{pool_size} * buffer_bytes);
  driver_type drv(ring.view(), cfg.features, driver_options{});
  device_type dev(ring.view(), cfg.features, mem, device_options{});
  rxq_type rxq(drv, pool, o, manual_clock{&time});
  const holder_id other = rxq.register_holder("app");
  const auto areas = virtq_fuzz::device_areas(ring);
  const std::byte* const pool_base = pool.host_address(0);
  const std::byte* const pool_end = pool_base + std::size_t{pool_size} * buffer_bytes;

  std::vector<packet> live;
  std::vector<burst> bursts;
  std::vector<std::uint16_t> popped;  // ids the device popped and has not completed
  bool failed = false;                // a poll returned an error
  chain c;

  // The ring buffer a packet or burst entry lies in, or none (a bounce buffer's copy).
  const auto ring_buffer = [&](std::span<const std::byte> d) -> std::int64_t {
    if (d.data() < pool_base || d.data() >= pool_end) return -1;
    const auto at = static_cast<std::size_t>(d.data() - pool_base);
    FUZZ_CHECK(at % buffer_bytes == 0);
    return static_cast<std::int64_t>(at / buffer_bytes);
  };
  const auto check = [&] {
    const pool_census census = rxq.census();
    FUZZ_CHECK(census.conserved);
    FUZZ_CHECK(rxq.bounce_census().conserved);
    // The stack misuses nothing. A hostile device can write into a buffer it was not given
    // (packed: it rewrites a descriptor's address; split: it completes a buffer it has yet to
    // pop, which is then released and its stale descriptor popped): the poisoning of free
    // buffers notices that, and nothing else.
    FUZZ_CHECK(pool.misuse_total() == pool.misuse(errc::use_after_release));
    // The driver hands back only its own tokens, each a buffer of this pool.
    FUZZ_CHECK(rxq.stats().bad_tokens == 0);
    // The ring holds exactly the buffers the census calls posted, healthy or broken.
    FUZZ_CHECK(drv.size() - drv.num_free() == pool.posted_count());
    // Each ring buffer is lent once: to one packet or one burst entry, never two.
    std::set<std::int64_t> lent;
    for (const packet& p : live) {
      FUZZ_CHECK(p.len <= buffer_bytes);
      FUZZ_CHECK(p.data().size() == p.len);
      const std::int64_t i = p.resources_low() ? -1 : ring_buffer(p.buffer.data());
      FUZZ_CHECK(p.resources_low() == (i < 0));
      if (i >= 0) FUZZ_CHECK(lent.insert(i).second);
    }
    for (const burst& b : bursts) {
      for (std::size_t k = 0; k < b.size(); ++k) {
        if (b.kept(k)) continue;
        FUZZ_CHECK(b.len(k) <= buffer_bytes);
        const std::int64_t i = ring_buffer(b.data(k));
        FUZZ_CHECK(b.resources_low(k) == (i < 0));
        if (i >= 0) FUZZ_CHECK(lent.insert(i).second);
      }
    }
    FUZZ_CHECK(lent.size() == pool.held_count());
  };
  // A poll's error: only from a broken ring, named once; every poll after it fails too.
  const auto poll_failed = [&](errc e) {
    FUZZ_CHECK(drv.broken());
    FUZZ_CHECK(failed ? e == errc::broken : e == drv.error());
    failed = true;
  };

  (void)rxq.refill();
  check();
  const std::uint32_t rounds = 8 * cfg.size + 32;
  for (std::uint32_t r = 0; r < rounds && in.left() != 0; ++r) {
    const std::uint8_t op = in.u8();
    switch (op % 10U) {
      case 0: {  // the device rewrites bytes where it may
        const auto& area = areas[(op >> 4) % areas.size()];
        const std::uint16_t at = in.u16();
        const std::size_t n = 1U + ((op >> 5) & 7U);
        for (std::size_t k = 0; k < n; ++k) area[(at + k) % area.size()] = std::byte{in.u8()};
        break;
      }
      case 1:
      case 2: {  // the device pops buffers and writes a frame into each
        const std::size_t n = 1U + ((op >> 4) & 7U);
        for (std::size_t k = 0; k < n && !dev.broken(); ++k) {
          if (dev.pop(c) != errc::ok) break;
          std::array<std::byte, buffer_bytes + 8> frame{};
          frame.fill(std::byte{op});
          (void)c.write(std::span(frame).first(in.u8() % frame.size()));
          popped.push_back(c.id());
        }
        break;
      }
      case 3: {  // the device completes some of them, in an order the input picks
        const std::size_t n = 1U + ((op >> 4) & 7U);
        for (std::size_t k = 0; k < n && !popped.empty(); ++k) {
          const std::size_t i = in.u8() % popped.size();
          const std::uint32_t len = in.u8();  // over the buffer: refused, the chain stays held
          if (dev.complete(popped[i], len) == errc::ok) {
            popped.erase(popped.begin() + static_cast<std::ptrdiff_t>(i));
          }
        }
        (void)dev.interrupt_prepare();
        break;
      }
      case 4:
      case 5: {  // the stack polls into packets
        std::vector<packet> out(1U + in.u8() % 40U);
        const auto got = rxq.poll(out);
        if (!got) {
          poll_failed(got.error());
          break;
        }
        FUZZ_CHECK(!failed);
        FUZZ_CHECK(got->received <= out.size());
        for (std::size_t k = 0; k < got->received; ++k) live.push_back(std::move(out[k]));
        break;
      }
      case 6: {  // the stack polls into a burst
        burst b;
        const auto got = rxq.poll(b);
        if (!got) {
          FUZZ_CHECK(b.empty());
          poll_failed(got.error());
          break;
        }
        FUZZ_CHECK(!failed);
        FUZZ_CHECK(got->received == b.size());
        if (!b.empty() && bursts.size() < 4) bursts.push_back(std::move(b));
        break;
      }
      case 7: {  // the stack gives packets back: one, a run, or passes one on
        if (live.empty()) break;
        const std::size_t i = in.u8() % live.size();
        if ((op & 0x10U) != 0) {
          FUZZ_CHECK(live[i].buffer.pass_to(other) == errc::ok);
        } else if ((op & 0x20U) != 0) {
          const std::size_t n = std::min<std::size_t>(1U + (op >> 6), live.size() - i);
          auto run = std::span(live).subspan(i, n);
          FUZZ_CHECK(rxq.release(run) == errc::ok);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i),
                     live.begin() + static_cast<std::ptrdiff_t>(i + n));
        } else {
          FUZZ_CHECK(live[i].buffer.release() == errc::ok);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      }
      case 8: {  // a burst: one packet kept as a handle, or the whole burst given back
        if (bursts.empty()) break;
        const std::size_t i = in.u8() % bursts.size();
        burst& b = bursts[i];
        if ((op & 0x10U) != 0) {
          const std::size_t k = in.u8() % b.size();
          const std::uint32_t len = b.len(k);
          const std::uint32_t flags = b.resources_low(k) ? rx_flag_resources_low : rx_flag_none;
          auto h = b.keep(k);
          if (h) live.push_back(packet{std::move(h), len, flags});
        } else {
          FUZZ_CHECK(b.release() == errc::ok);
          bursts.erase(bursts.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      }
      default: {  // time passes; the stack refills; the detector looks
        time.advance(std::chrono::microseconds(250U * (op >> 4)));
        const auto f = rxq.refill();
        FUZZ_CHECK(f.has_value() != drv.broken());
        (void)rxq.check_starvation();
        break;
      }
    }
    check();
  }

  // Shutdown: the device stops, every posted buffer comes back from the ring exactly once,
  // and once the stack has given back what it holds, the pools are whole.
  const std::uint32_t posted = pool.posted_count();
  dev.reset();
  live.clear();
  bursts.clear();
  const shutdown_report rep = rxq.shutdown(std::chrono::nanoseconds(0));
  FUZZ_CHECK(rep.returned_from_ring == posted);
  FUZZ_CHECK(rep.bad_tokens == 0);
  FUZZ_CHECK(rep.drained);
  FUZZ_CHECK(rep.census.conserved && rep.census.free == pool_size);
  FUZZ_CHECK(rep.bounce.conserved && rep.bounce.held == 0);
  FUZZ_CHECK(!drv.broken());
  std::array<packet, 4> after{};
  FUZZ_CHECK(rxq.poll(after).error() == errc::broken);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in(data, size);
  const virtq_fuzz::config cfg = virtq_fuzz::read_config(in);
  const bool single_owner = (in.u8() & 1U) != 0;
  virtq_fuzz::dispatch(cfg, [&]<class L, class P>() {
    if (single_owner) {
      // One thread owns everything: released buffers go to the repost list.
      run<L, P, rx_pool_policy<false, no_lock, true>>(cfg, in);
    } else {
      run<L, P, rx_thread_safe_policy>(cfg, in);
    }
  });
  return 0;
}
