// libFuzzer target: a hostile DRIVER wrote the ring and the guest memory; the device side must
// answer with errc values and a broken queue, never a crash, a hang or an access outside the
// guest memory (docs/fuzzing.md). Input layout: config bytes (fuzz_common.hpp), one byte of
// operation-stream length, the operations, the ring bytes, then the guest memory bytes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "fuzz_common.hpp"
#include "virtq/chain.hpp"
#include "virtq/memory.hpp"
#include "virtq/virtqueue.hpp"

namespace {

using namespace virtq;
using virtq_fuzz::reader;

// Two adjacent regions, so a range running from one into the other must still be refused
// (crosses_region_end): guest memory is a set of ranges, not one flat space.
constexpr std::uint64_t region_a = 0x1000;
constexpr std::size_t region_a_size = 0x1000;
constexpr std::uint64_t region_b = 0x2000;
constexpr std::size_t region_b_size = 0x800;
constexpr std::uint64_t max_chain_bytes = std::uint64_t{1} << 32;

struct guest {
  guest() : a(region_a_size, 64), b(region_b_size, 64) {
    mem.add_region(region_a, region_a_size, a.data());
    mem.add_region(region_b, region_b_size, b.data());
  }
  bool contains(const chain::segment& s) const noexcept {
    const auto inside = [&](const aligned_buffer& r) {
      const auto lo = reinterpret_cast<std::uintptr_t>(r.data());
      const auto p = reinterpret_cast<std::uintptr_t>(s.data());
      return p >= lo && s.size() <= r.size() && p - lo <= r.size() - s.size();
    };
    return inside(a) || inside(b);
  }
  aligned_buffer a;
  aligned_buffer b;
  guest_memory mem;
};

/// The device's memory map: the table itself, or (config bit 6) a guest_memory_cursor over it,
/// whose every answer is checked against the table's: the cursor's copy of the last region
/// found must never let through a range the table refuses, nor name another host byte.
struct device_map {
  result<std::byte*> translate(std::uint64_t addr, std::uint64_t len) const noexcept {
    const result<std::byte*> t = table->translate(addr, len);
    if (!use_cursor) return t;
    const result<std::byte*> c = cursor.translate(addr, len);
    FUZZ_CHECK(c.has_value() == t.has_value());
    FUZZ_CHECK(t ? *c == *t : c.error() == t.error());
    return c;
  }
  const guest_memory* table;
  guest_memory_cursor cursor;
  bool use_cursor;
};

/// Every segment inside guest memory, the byte counts adding up, the 2^32 limit (2.7.5.2).
void check_chain(const guest& g, const chain& c) {
  std::uint64_t readable = 0;
  std::uint64_t writable = 0;
  for (const auto& s : c.readable()) {
    FUZZ_CHECK(g.contains(s));
    readable += s.size();
  }
  for (const auto& s : c.writable()) {
    FUZZ_CHECK(g.contains(s));
    writable += s.size();
  }
  FUZZ_CHECK(readable == c.readable_bytes());
  FUZZ_CHECK(writable == c.writable_bytes());
  FUZZ_CHECK(c.readable_bytes() + c.writable_bytes() <= max_chain_bytes);
}

/// A fatal errc: the queue is broken with that error, counted, and refuses further work.
template <class Device>
void check_fatal(Device& dev, errc e) {
  FUZZ_CHECK(e != errc::ok && e != errc::empty && e != errc::invalid_argument);
  FUZZ_CHECK(dev.broken());
  FUZZ_CHECK(dev.error() == e);
  FUZZ_CHECK(dev.stats().rejects[static_cast<std::size_t>(e)] == 1);
  chain c;
  FUZZ_CHECK(dev.pop(c) == errc::broken);
  FUZZ_CHECK(dev.complete(0, 0) == errc::broken);
  FUZZ_CHECK(!dev.interrupt_prepare());
  FUZZ_CHECK(!dev.enable_notifications());
}

struct held_chain {
  std::uint16_t id;
  std::uint64_t writable;
};

template <class Layout, class Policy>
void run(const virtq_fuzz::config& cfg, reader& ops, reader& rest) {
  using device_type = typename Layout::template device<Policy, device_map>;
  using driver_type = typename Layout::template driver<Policy>;
  ring_memory<Layout> ring(cfg.size);
  guest g;
  rest.bytes(ring.bytes());
  rest.bytes(g.a.span());
  rest.bytes(g.b.span());

  const device_map map{&g.mem, guest_memory_cursor(g.mem), cfg.cursor};
  device_type dev(ring.view(), cfg.features, map);
  const bool in_order = cfg.features.has(feature::in_order);
  std::deque<held_chain> held;  // popped, not yet completed, oldest first
  std::vector<std::byte> scratch(256);
  chain c;

  // The device completes `h`, sometimes first over-stating the length, which is a caller error
  // (2.7.8.2) that must leave the queue usable.
  const auto complete = [&](const held_chain& h, std::uint8_t op) -> errc {
    if ((op & 1U) != 0 && h.writable < max_chain_bytes - 1) {
      const auto too_long = static_cast<std::uint32_t>(h.writable + 1);
      FUZZ_CHECK(dev.complete(h.id, too_long) == errc::invalid_argument);
      FUZZ_CHECK(!dev.broken());
    }
    const auto len =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(h.writable, std::uint64_t{ops.u16()}));
    return dev.complete(h.id, len);
  };

  // serve_buffers: pop and complete in one pass. Every buffer handed to f lies inside guest
  // memory; f over-states one of them now and then (the caller's error: that chain stays held,
  // the batch ends there, the queue stays usable). With IN_ORDER and chains held it refuses.
  const auto serve = [&](std::uint8_t op) -> errc {
    const std::size_t max = 1U + (op & 7U);
    const std::size_t over_at = ops.u8() % 8U;
    const std::uint16_t want = ops.u16();
    std::size_t calls = 0;
    std::optional<held_chain> over;
    const result<std::size_t> got = dev.serve_buffers(max, [&](const popped_buffer& b) noexcept {
      if (b.len != 0) {
        const chain::segment seg(b.data, b.len);
        FUZZ_CHECK(g.contains(seg));
        if (b.writable) std::memset(seg.data(), 0x3C, std::min<std::size_t>(seg.size(), 64));
      } else {
        FUZZ_CHECK(b.data == nullptr);
      }
      const std::uint32_t cap = b.writable ? b.len : 0U;
      if (calls++ == over_at && cap < max_chain_bytes - 1) {
        over = held_chain{b.id, cap};
        return cap + 1U;
      }
      return std::min<std::uint32_t>(cap, want);
    });
    FUZZ_CHECK(calls <= max);
    if (over) {
      // The batch ended at the over-stated chain, which is held now.
      FUZZ_CHECK(!dev.broken());
      if (calls == 1) {
        FUZZ_CHECK(!got.has_value() && got.error() == errc::invalid_argument);
      } else {
        FUZZ_CHECK(got.has_value() && *got == calls - 1);
      }
      held.push_back(*over);
      return errc::ok;
    }
    if (!got.has_value()) {
      if (got.error() == errc::invalid_argument) {
        FUZZ_CHECK(in_order && !held.empty() && calls == 0 && !dev.broken());
        return errc::ok;
      }
      FUZZ_CHECK(calls == 0);
      return got.error();  // empty, or fatal (checked below)
    }
    FUZZ_CHECK(*got == calls);
    return dev.broken() ? dev.error() : errc::ok;
  };

  // The parts of the ring only the driver writes (split: the descriptor table and the avail
  // ring, 2.7; packed: the driver event area, 2.8.10): no device call may change them. Taken
  // again after each of the driver's rewrites.
  const auto driver_part = [&ring]() -> std::span<const std::byte> {
    const auto& geo = ring.geometry();
    if constexpr (Layout::is_packed) {
      return ring.bytes().subspan(geo.driver_event_offset, sizeof(packed::event_suppress));
    } else {
      return ring.bytes().subspan(geo.desc_offset,
                                  geo.avail_offset + geo.avail_bytes - geo.desc_offset);
    }
  };
  std::vector<std::byte> driver_bytes(driver_part().begin(), driver_part().end());

  const std::uint32_t rounds = 4 * cfg.size + 8;
  for (std::uint32_t i = 0; i < rounds; ++i) {
    const std::uint8_t op = ops.u8();
    errc e = errc::ok;
    switch (op >> 5) {
      case 0:
      case 1:
      case 2: {  // pop, touch the buffers, complete now or later
        if ((op & 4U) != 0) {
          // The batch pop: one-descriptor chains until one that is not. A fatal error after
          // some were popped returns them and leaves the queue broken (the pop_buffers
          // contract): what came out must still be inside guest memory.
          popped_buffer pb[4];
          const result<std::size_t> got = dev.pop_buffers(std::span(pb, 1U + (op & 3U)));
          if (!got) {
            e = got.error();
            break;
          }
          for (std::size_t k = 0; k < *got; ++k) {
            if (pb[k].len != 0) {
              const chain::segment seg(pb[k].data, pb[k].len);
              FUZZ_CHECK(g.contains(seg));
              if (pb[k].writable) {
                std::memset(seg.data(), 0x5A, std::min<std::size_t>(seg.size(), 64));
              } else {
                std::memcpy(scratch.data(), seg.data(), std::min(seg.size(), scratch.size()));
              }
            } else {
              FUZZ_CHECK(pb[k].data == nullptr);
            }
            held.push_back({pb[k].id, pb[k].writable ? pb[k].len : 0U});
          }
          if (dev.broken()) {
            e = dev.error();
          } else if (*got == 0) {
            e = dev.pop(c);  // empty, or a chain that is not one direct descriptor
            if (e == errc::ok) {
              check_chain(g, c);
              held.push_back({c.id(), c.writable_bytes()});
            }
          }
          break;
        }
        e = dev.pop(c);
        if (e == errc::empty) break;
        if (e != errc::ok) break;
        check_chain(g, c);
        const std::uint16_t off = ops.u8();
        const std::size_t n = ops.u8();
        c.read(std::span(scratch).first(std::min(n, scratch.size())), off);
        c.write(std::span(scratch).first(std::min(n, scratch.size())), off);
        held.push_back({c.id(), c.writable_bytes()});
        if ((op & 2U) == 0) {
          // Not in order when allowed: the newest first.
          const held_chain h = in_order ? held.front() : held.back();
          if (in_order) {
            held.pop_front();
          } else {
            held.pop_back();
          }
          e = complete(h, op);
        }
        break;
      }
      case 3:  // complete the oldest held chain, or (batch form) all of them in one call
        if (!held.empty() && (op & 4U) != 0) {
          std::vector<used_entry> done;
          for (const held_chain& h : held) {
            done.push_back(
                {h.id, static_cast<std::uint32_t>(std::min<std::uint64_t>(h.writable, ops.u16()))});
          }
          // Over-stating one length is the caller's error: the entries before it complete, the
          // queue stays usable (2.7.8.2).
          const std::size_t bad = ops.u8() % (done.size() + 1);
          std::size_t want = done.size();
          bool refused = false;
          if (bad < done.size()) {
            want = bad;
            if (held[bad].writable < max_chain_bytes - 1) {
              done[bad].len = static_cast<std::uint32_t>(held[bad].writable + 1);
              refused = bad == 0;
            } else {
              done.resize(bad);  // a 4 GiB chain cannot be over-stated: stop there instead
            }
          }
          const result<std::size_t> got = dev.complete(std::span<const used_entry>(done));
          if (refused) {
            FUZZ_CHECK(!got.has_value() && got.error() == errc::invalid_argument);
          } else {
            FUZZ_CHECK(got.has_value() && *got == want);
          }
          FUZZ_CHECK(!dev.broken());
          held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(want));
        } else if (!held.empty()) {
          const held_chain h = held.front();
          held.pop_front();
          e = complete(h, op);
        }
        break;
      case 4:  // IN_ORDER batch: every held chain in one used element (2.7.9 / 2.8.11)
        if (in_order && !held.empty() && (op & 8U) != 0) {
          const auto count = static_cast<std::uint16_t>(held.size());
          const auto len =
              static_cast<std::uint32_t>(std::min<std::uint64_t>(held.back().writable, ops.u16()));
          held.clear();
          e = dev.complete_in_order(count, len);
        } else {
          e = serve(op);
        }
        break;
      case 5:
        (void)dev.interrupt_prepare();
        break;
      case 6:
        if ((op & 1U) != 0) {
          (void)dev.enable_notifications();
        } else {
          dev.disable_notifications();
        }
        break;
      default: {  // the driver rewrites a few ring bytes behind the device's back
        const std::uint16_t at = ops.u16();
        const std::size_t n = op & 7U;
        auto bytes = ring.bytes();
        for (std::size_t k = 0; k < n; ++k) bytes[(at + k) % bytes.size()] = std::byte{ops.u8()};
        driver_bytes.assign(driver_part().begin(), driver_part().end());
        break;
      }
    }
    FUZZ_CHECK(std::equal(driver_bytes.begin(), driver_bytes.end(), driver_part().begin()));
    if (e == errc::empty) break;
    if (e != errc::ok) {
      check_fatal(dev, e);
      break;
    }
    FUZZ_CHECK(!dev.broken());
    FUZZ_CHECK(dev.stats().rejected() == 0);
  }
  FUZZ_CHECK(dev.broken() == (dev.stats().rejected() > 0));

  // Queue reset (2.7 / 2.8): the driver re-initializes the ring, the device forgets everything;
  // well-formed traffic must then flow, round after round, across every ring wrap.
  dev.reset();
  FUZZ_CHECK(!dev.broken());
  std::memset(ring.bytes().data(), 0, ring.bytes().size());
  driver_type drv(ring.view(), cfg.features);
  const buffer out{region_a, 16};
  const buffer in{region_b, 32};
  for (std::uint32_t r = 0; r < 2 * cfg.size + 3; ++r) {
    // A one-entry queue holds a one-descriptor chain only (2.7.5.2).
    const std::size_t n_out = cfg.size > 1 ? 1 : 0;
    FUZZ_CHECK(drv.add(std::span(&out, n_out), std::span(&in, 1), token_t{r}) == errc::ok);
    (void)drv.kick_prepare();
    FUZZ_CHECK(dev.pop(c) == errc::ok);
    check_chain(g, c);
    FUZZ_CHECK(c.readable_bytes() == 16 * n_out && c.writable_bytes() == 32);
    FUZZ_CHECK(dev.complete(c, 32) == errc::ok);
    (void)dev.interrupt_prepare();
    const result<used_buffer> u = drv.get_used();
    FUZZ_CHECK(u.has_value() && u->token == r && u->len == 32);
  }
  FUZZ_CHECK(!dev.broken() && !drv.broken());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader head(data, size);
  const virtq_fuzz::config cfg = virtq_fuzz::read_config(head);
  const std::size_t n_ops = std::min<std::size_t>(head.u8(), head.left());
  const std::size_t used = size - head.left();
  reader ops(data + used, n_ops);
  reader rest(data + used + n_ops, size - used - n_ops);
  virtq_fuzz::dispatch(cfg, [&]<class L, class P>() { run<L, P>(cfg, ops, rest); });
  return 0;
}
