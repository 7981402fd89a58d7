// SPDX-License-Identifier: MIT
// tests/vhost_user_frontend.hpp -- a minimal vhost-user FRONTEND (the driver side, unix socket
// client), so that virtq's split_driver / packed_driver can drive a real vhost-user device in
// another process (DPDK's net_vhost PMD inside dpdk-testpmd).
//
// The frontend owns one memfd that holds the rings and every buffer; it is shared with the
// device in SET_MEM_TABLE as ONE region. Guest addresses (what descriptors carry) are chosen
// apart from this process's virtual addresses (what SET_VRING_ADDR carries), so a device that
// mixed the two up would read the wrong memory and the byte-exact checks would fail.
// Protocol facts: QEMU docs/interop/vhost-user.rst; the wire constants and message framing are
// those of vhost_user_backend.hpp (one implementation: this file only adds the frontend's
// direction and the replies it reads).
// Declined: protocol features (no REPLY_ACK, no SET_VRING_ENABLE: without them a ring is enabled
// by SET_VRING_KICK), multiqueue, logging, every offload.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "vhost_user_backend.hpp"

namespace vhost {

/// One memfd mapped into this process: the "guest memory" a frontend shares with its device.
/// Guest address g corresponds to host pointer base() + (g - guest_base()).
class shared_memory {
 public:
  shared_memory(std::size_t bytes, std::uint64_t guest_base) : size_(bytes), guest_(guest_base) {
    fd_.reset(::memfd_create("virtq-frontend", MFD_CLOEXEC));
    if (!fd_) throw protocol_error(std::string("memfd_create: ") + std::strerror(errno));
    if (::ftruncate(fd_.get(), static_cast<off_t>(bytes)) != 0) {
      throw protocol_error(std::string("ftruncate: ") + std::strerror(errno));
    }
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (p == MAP_FAILED) throw protocol_error(std::string("mmap: ") + std::strerror(errno));
    base_ = static_cast<std::byte*>(p);
  }
  shared_memory(const shared_memory&) = delete;
  shared_memory& operator=(const shared_memory&) = delete;
  ~shared_memory() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }

  int fd() const noexcept { return fd_.get(); }
  std::byte* base() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }
  std::uint64_t guest_base() const noexcept { return guest_; }
  /// This process's virtual address of the region (what SET_MEM_TABLE's userspace_addr and
  /// SET_VRING_ADDR carry).
  std::uint64_t user_base() const noexcept { return reinterpret_cast<std::uintptr_t>(base_); }
  std::uint64_t user_address(const void* host) const noexcept {
    return reinterpret_cast<std::uintptr_t>(host);
  }
  std::uint64_t guest_address(const void* host) const noexcept {
    return guest_ + static_cast<std::uint64_t>(static_cast<const std::byte*>(host) - base_);
  }
  std::byte* at(std::size_t offset) const noexcept { return base_ + offset; }

 private:
  unique_fd fd_;
  std::byte* base_ = nullptr;
  std::size_t size_;
  std::uint64_t guest_;
};

/// A non-blocking eventfd (kick or call).
inline unique_fd make_eventfd() {
  unique_fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) throw protocol_error(std::string("eventfd: ") + std::strerror(errno));
  return fd;
}

/// Writes 1 to an eventfd (a kick). False if it could not (the counter cannot overflow here).
inline bool signal_eventfd(int fd) noexcept {
  const std::uint64_t one = 1;
  return ::write(fd, &one, sizeof(one)) == static_cast<ssize_t>(sizeof(one));
}

/// Reads (and so clears) an eventfd's counter: the number of signals since the last read.
inline std::uint64_t drain_eventfd(int fd) noexcept {
  std::uint64_t v = 0;
  return ::read(fd, &v, sizeof(v)) == static_cast<ssize_t>(sizeof(v)) ? v : 0;
}

/// The frontend's session with one vhost-user device. Every call sends one message; those with
/// a reply wait for it within the reply timeout and check its header (request, reply flag,
/// size). Any failure throws protocol_error naming the message.
class frontend {
 public:
  using clock = std::chrono::steady_clock;

  /// Connects to `path`, retrying while the device has not created its socket yet.
  frontend(const std::string& path, std::chrono::milliseconds connect_timeout,
           std::chrono::milliseconds reply_timeout = std::chrono::milliseconds(5000))
      : reply_timeout_(reply_timeout) {
    const auto deadline = clock::now() + connect_timeout;
    std::string last;
    for (;;) {
      try {
        conn_ = backend::connect_to(path);
        return;
      } catch (const protocol_error& e) {
        last = e.what();
      }
      if (clock::now() >= deadline) {
        throw protocol_error("no vhost-user device accepted on " + path + " in time (" + last +
                             ")");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  int fd() const noexcept { return conn_.get(); }
  /// Closing the connection is how a frontend goes away; the device then drops the session.
  void close() noexcept { conn_.reset(); }

  void set_owner() { send(request::set_owner, {}); }

  std::uint64_t get_features() {
    send(request::get_features, {});
    return u64_reply(request::get_features);
  }
  void set_features(std::uint64_t f) { send(request::set_features, bytes_of(f)); }

  /// The whole memfd as one region (guest address, size, user address, mmap offset 0).
  void set_mem_table(const shared_memory& m) {
    std::array<std::byte, 8 + region_bytes> p{};
    const std::uint32_t regions = 1;
    std::memcpy(p.data(), &regions, 4);  // then 4 bytes of padding
    const std::uint64_t region[4] = {m.guest_base(), m.size(), m.user_base(), 0};
    std::memcpy(p.data() + 8, region, sizeof(region));
    const int fds[1] = {m.fd()};
    send(request::set_mem_table, p, fds);
  }

  void set_vring_num(std::uint32_t index, std::uint32_t num) {
    send(request::set_vring_num, state(index, num));
  }
  /// Split: the next avail index; packed: offset in bits 0-14, wrap counter in bit 15.
  void set_vring_base(std::uint32_t index, std::uint32_t base) {
    send(request::set_vring_base, state(index, base));
  }
  /// User (frontend virtual) addresses. For a packed ring "avail" is the driver event
  /// suppression area and "used" the device's.
  void set_vring_addr(std::uint32_t index, std::uint64_t desc, std::uint64_t used,
                      std::uint64_t avail) {
    std::array<std::byte, 40> p{};
    const std::uint32_t head[2] = {index, 0};  // flags 0: no used-ring logging
    const std::uint64_t addrs[4] = {desc, used, avail, 0};
    std::memcpy(p.data(), head, sizeof(head));
    std::memcpy(p.data() + 8, addrs, sizeof(addrs));
    send(request::set_vring_addr, p);
  }
  void set_vring_kick(std::uint32_t index, int fd) {
    send_vring_fd(request::set_vring_kick, index, fd);
  }
  void set_vring_call(std::uint32_t index, int fd) {
    send_vring_fd(request::set_vring_call, index, fd);
  }

  /// Stops the ring; the device answers where it would have read next.
  std::uint32_t get_vring_base(std::uint32_t index) {
    send(request::get_vring_base, state(index, 0));
    std::array<std::byte, 8> r{};
    read_reply(request::get_vring_base, r);
    std::uint32_t got[2];
    std::memcpy(got, r.data(), 8);
    if (got[0] != index) {
      throw protocol_error("GET_VRING_BASE: reply names queue " + std::to_string(got[0]) +
                           ", asked for " + std::to_string(index));
    }
    return got[1];
  }

  /// Every request sent, in order (for failure messages).
  const std::vector<std::uint32_t>& sent() const noexcept { return sent_; }

 private:
  template <class T>
  static std::array<std::byte, sizeof(T)> bytes_of(T v) {
    std::array<std::byte, sizeof(T)> b;
    std::memcpy(b.data(), &v, sizeof(T));
    return b;
  }
  static std::array<std::byte, 8> state(std::uint32_t index, std::uint32_t num) {
    std::array<std::byte, 8> b;
    std::memcpy(b.data(), &index, 4);
    std::memcpy(b.data() + 4, &num, 4);
    return b;
  }

  void send(request r, std::span<const std::byte> payload, std::span<const int> fds = {}) {
    if (!conn_)
      throw protocol_error(std::string(request_name(static_cast<std::uint32_t>(r))) +
                           ": connection already closed");
    sent_.push_back(static_cast<std::uint32_t>(r));
    try {
      backend::send_message(conn_.get(), static_cast<std::uint32_t>(r), payload, fds);
    } catch (const protocol_error& e) {
      throw protocol_error(std::string(request_name(static_cast<std::uint32_t>(r))) + ": " +
                           e.what());
    }
  }

  void send_vring_fd(request r, std::uint32_t index, int fd) {
    // Bits 0-7: the queue; bit 8 (no fd, poll instead) stays clear: an eventfd is attached.
    const std::uint64_t v = index & vring_fd_index_mask;
    const int fds[1] = {fd};
    send(r, bytes_of(v), fds);
  }

  std::uint64_t u64_reply(request r) {
    std::array<std::byte, 8> b{};
    read_reply(r, b);
    std::uint64_t v;
    std::memcpy(&v, b.data(), 8);
    return v;
  }

  /// Reads one reply: header (request r, version 1 with the reply flag, size = out.size()),
  /// then its payload, all within the reply timeout.
  void read_reply(request r, std::span<std::byte> out) {
    const char* name = request_name(static_cast<std::uint32_t>(r));
    std::array<std::byte, header_bytes> hdr{};
    const auto deadline = clock::now() + reply_timeout_;
    read_exact(hdr, deadline, name);
    std::uint32_t h[3];
    std::memcpy(h, hdr.data(), header_bytes);
    if (h[0] != static_cast<std::uint32_t>(r)) {
      throw protocol_error(std::string(name) + ": the reply is for request " +
                           std::to_string(h[0]) + " (" + request_name(h[0]) + ")");
    }
    if ((h[1] & flag_version_mask) != flag_version || (h[1] & flag_reply) == 0) {
      throw protocol_error(std::string(name) + ": reply flags " + std::to_string(h[1]) +
                           " (want version 1 with the reply bit)");
    }
    if (h[2] != out.size()) {
      throw protocol_error(std::string(name) + ": reply of " + std::to_string(h[2]) +
                           " bytes, expected " + std::to_string(out.size()));
    }
    read_exact(out, deadline, name);
  }

  void read_exact(std::span<std::byte> out, clock::time_point deadline, const char* name) {
    std::size_t done = 0;
    while (done < out.size()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
      if (left.count() <= 0) {
        throw protocol_error(std::string(name) + ": no reply within " +
                             std::to_string(reply_timeout_.count()) + " ms");
      }
      pollfd p{conn_.get(), POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
      if (pr < 0 && errno != EINTR) {
        throw protocol_error(std::string(name) + ": poll: " + std::strerror(errno));
      }
      if (pr <= 0) continue;
      const ssize_t n = ::recv(conn_.get(), out.data() + done, out.size() - done, 0);
      if (n == 0) throw protocol_error(std::string(name) + ": the device closed the connection");
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        throw protocol_error(std::string(name) + ": recv: " + std::strerror(errno));
      }
      done += static_cast<std::size_t>(n);
    }
  }

  unique_fd conn_;
  std::chrono::milliseconds reply_timeout_;
  std::vector<std::uint32_t> sent_;
};

}  // namespace vhost
