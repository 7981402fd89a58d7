// examples/echo_device.cpp -- a starting point for a VMM / emulator author and a driver author.
//
// A "guest" owns 4 MiB of RAM at guest-physical 0x8000'0000. Its driver lays out a virtqueue in
// that RAM and sends requests: a device-readable message and a device-writable reply buffer.
// The "VMM" knows the guest only through a guest_memory region table: it translates the ring
// addresses the driver gave it, pops chains (every descriptor checked and translated, through
// the device's own guest_memory_cursor over the table), writes the message back upper-cased,
// and completes. The same code runs over the split and the packed ring. At the end a hostile
// driver hands the device a descriptor pointing outside guest RAM: the device refuses it with a
// specific error and a broken queue, and a queue reset recovers.
//
//   echo_device [--smoke]

#include <cctype>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "virtq/memory.hpp"
#include "virtq/packed.hpp"
#include "virtq/split.hpp"
#include "virtq/virtqueue.hpp"

namespace {

constexpr std::uint64_t guest_base = 0x8000'0000;
constexpr std::size_t guest_ram_bytes = 4 << 20;
constexpr std::uint32_t queue_size = 64;
constexpr std::size_t msg_bytes = 64;

/// The guest's physical memory, and a bump allocator the "guest driver" carves it with.
struct guest {
  virtq::aligned_buffer ram{guest_ram_bytes};
  std::size_t used = 0;
  std::byte* alloc(std::size_t n, std::size_t align) {
    used = virtq::align_up(used, align);
    std::byte* p = ram.data() + used;
    used += n;
    return p;
  }
  std::uint64_t gpa(const void* p) const {
    return guest_base + static_cast<std::uint64_t>(static_cast<const std::byte*>(p) - ram.data());
  }
};

/// What the driver tells the device at queue set-up (the transport's queue_desc/driver/device
/// registers), for either layout.
struct ring_addresses {
  std::uint64_t area[3];
  std::size_t bytes[3];
};

template <class Layout>
int run(const char* name, int requests) {
  guest g;
  virtq::features f =
      virtq::features{}.with(virtq::feature::version_1).with(virtq::feature::event_idx);
  if constexpr (Layout::is_packed) f = f.with(virtq::feature::ring_packed);

  // --- guest driver: lay the ring out in guest RAM -----------------------------------------
  const auto geo = *Layout::geometry_for(queue_size);
  std::byte* ring_mem = g.alloc(geo.total, 4096);
  const typename Layout::view driver_view = *Layout::view_at(ring_mem, geo);
  using driver_t = typename Layout::template driver<virtq::default_policy>;
  driver_t driver(driver_view, f);

  ring_addresses ra{};
  if constexpr (Layout::is_packed) {
    ra = {{g.gpa(ring_mem + geo.desc_offset), g.gpa(ring_mem + geo.driver_event_offset),
           g.gpa(ring_mem + geo.device_event_offset)},
          {geo.desc_bytes, sizeof(virtq::packed::event_suppress),
           sizeof(virtq::packed::event_suppress)}};
  } else {
    ra = {{g.gpa(ring_mem + geo.desc_offset), g.gpa(ring_mem + geo.avail_offset),
           g.gpa(ring_mem + geo.used_offset)},
          {geo.desc_bytes, geo.avail_bytes, geo.used_bytes}};
  }

  // --- VMM: the guest's RAM as a region table; translate the ring areas --------------------
  virtq::guest_memory mem;
  mem.add_region(guest_base, guest_ram_bytes, g.ram.data());
  void* area[3];
  for (int i = 0; i < 3; ++i) {
    const auto host = mem.translate(ra.area[i], ra.bytes[i]);
    if (!host) {
      std::printf("%s: ring area %d: %s\n", name, i, virtq::to_string(host.error()));
      return 1;
    }
    area[i] = *host;
  }
  const auto device_view = Layout::view::make(area[0], area[1], area[2], queue_size);
  if (!device_view) {
    std::printf("%s: ring: %s\n", name, virtq::to_string(device_view.error()));
    return 1;
  }
  // The device translates through a cursor of its own over the shared table: it remembers the
  // region of its last buffer (one range test per buffer). A VMM with several queues gives
  // each device a cursor; `mem` itself would do too, searching the table every time.
  const virtq::guest_memory_cursor cursor(mem);
  using device_t =
      typename Layout::template device<virtq::default_policy, virtq::guest_memory_cursor>;
  device_t device(*device_view, f, cursor);
  virtq::chain c;

  // --- request buffers, in guest RAM ---------------------------------------------------------
  std::byte* msgs = g.alloc(queue_size * msg_bytes, 64);
  std::byte* replies = g.alloc(queue_size * msg_bytes, 64);

  int done = 0, sent = 0, kicks = 0, interrupts = 0;
  while (done < requests) {
    // Driver: fill as many requests as fit, one kick decision for the batch.
    while (sent < requests && driver.num_free() >= 2) {
      const auto slot = static_cast<std::uint32_t>(sent) % queue_size;
      char* m = reinterpret_cast<char*>(msgs + slot * msg_bytes);
      const int n = std::snprintf(m, msg_bytes, "hello device, request %d", sent);
      const virtq::buffer out{g.gpa(m), static_cast<std::uint32_t>(n)};
      const virtq::buffer in{g.gpa(replies + slot * msg_bytes), msg_bytes};
      if (driver.add({&out, 1}, {&in, 1}, static_cast<virtq::token_t>(sent)) != virtq::errc::ok)
        break;
      ++sent;
    }
    if (driver.kick_prepare()) ++kicks;  // a real driver writes notification_data() here

    // Device (on a notification): pop everything available, echo upper-cased, complete.
    for (;;) {
      const virtq::errc e = device.pop(c);
      if (e == virtq::errc::empty) break;
      if (e != virtq::errc::ok) {
        std::printf("%s: device: %s\n", name, virtq::to_string(e));
        return 1;
      }
      char text[msg_bytes];
      const std::size_t n = c.read(std::as_writable_bytes(std::span(text)));
      for (std::size_t i = 0; i < n; ++i)
        text[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
      const std::size_t w = c.write(std::as_bytes(std::span(text, n)));
      (void)device.complete(c, static_cast<std::uint32_t>(w));
    }
    if (device.interrupt_prepare()) ++interrupts;

    // Driver (on the interrupt): reap and check.
    virtq::used_buffer ub[queue_size];
    const auto got = driver.get_used(ub);
    if (!got) {
      std::printf("%s: driver: %s\n", name, virtq::to_string(got.error()));
      return 1;
    }
    for (std::size_t i = 0; i < *got; ++i) {
      const auto slot = static_cast<std::uint32_t>(ub[i].token) % queue_size;
      std::string expect = "HELLO DEVICE, REQUEST " + std::to_string(ub[i].token);
      std::string_view reply(reinterpret_cast<const char*>(replies + slot * msg_bytes), ub[i].len);
      if (reply != expect) {
        std::printf("%s: bad reply %.*s\n", name, static_cast<int>(reply.size()), reply.data());
        return 1;
      }
      ++done;
    }
  }
  std::printf("%-6s %d requests echoed, %d kicks, %d interrupts (event index suppression)\n", name,
              done, kicks, interrupts);

  // --- a hostile driver: a buffer outside guest RAM ------------------------------------------
  const virtq::buffer evil{guest_base + guest_ram_bytes - 8, 64};  // runs past the end of RAM
  (void)driver.add({&evil, 1}, {}, 999);
  (void)driver.kick_prepare();
  const virtq::errc e = device.pop(c);
  std::printf("%-6s hostile descriptor -> device.pop: \"%s\", broken=%d\n", name,
              virtq::to_string(e), device.broken() ? 1 : 0);
  if (e != virtq::errc::crosses_region_end || !device.broken()) return 1;
  // Recovery is a queue reset on both sides (VIRTIO_F_RING_RESET or a device reset): the driver
  // gets back every outstanding token exactly once.
  int returned = 0;
  driver.reset([&](virtq::token_t) { ++returned; });
  device.reset();
  std::printf("%-6s after reset: %d outstanding token(s) returned, device broken=%d\n", name,
              returned, device.broken() ? 1 : 0);
  return (returned == 1 && !device.broken()) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
  const int requests = smoke ? 500 : 100000;
  int rc = run<virtq::split_layout>("split", requests);
  rc |= run<virtq::packed_layout>("packed", requests);
  std::printf(rc == 0 ? "ok\n" : "FAILED\n");
  return rc;
}
