// SPDX-License-Identifier: MIT
// tests/vhost_user_backend.hpp -- a minimal vhost-user backend (the device side, unix socket
// server) for ONE virtio-net device, so that virtq's split_device / packed_device can be driven
// by a real virtio driver in another process (DPDK's virtio-user PMD).
//
// Scope: queue 0 (receive) is set up and validated but left idle; queue 1 (transmit) is popped
// by our device and every frame handed to a sink. Protocol facts: QEMU docs/interop/vhost-user.rst.
// Declined: protocol features (so no REPLY_ACK, no MQ, no STATUS), EVENT_IDX, MRG_RXBUF, logging.
// The frontend is an untrusted peer: every message is size-checked, every fd and address
// validated, and any violation ends the session with a message naming the rule (never a crash).
#pragma once

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "virtq/memory.hpp"
#include "virtq/packed.hpp"
#include "virtq/split.hpp"

namespace vhost {

/// vhost-user request codes (frontend -> backend) this backend knows by name.
enum class request : std::uint32_t {
  get_features = 1,
  set_features = 2,
  set_owner = 3,
  reset_owner = 4,
  set_mem_table = 5,
  set_log_base = 6,
  set_log_fd = 7,
  set_vring_num = 8,
  set_vring_addr = 9,
  set_vring_base = 10,
  get_vring_base = 11,
  set_vring_kick = 12,
  set_vring_call = 13,
  set_vring_err = 14,
  get_protocol_features = 15,
  set_protocol_features = 16,
  get_queue_num = 17,
  set_vring_enable = 18,
};

inline const char* request_name(std::uint32_t r) noexcept {
  static constexpr std::array<const char*, 19> names = {"?",
                                                        "GET_FEATURES",
                                                        "SET_FEATURES",
                                                        "SET_OWNER",
                                                        "RESET_OWNER",
                                                        "SET_MEM_TABLE",
                                                        "SET_LOG_BASE",
                                                        "SET_LOG_FD",
                                                        "SET_VRING_NUM",
                                                        "SET_VRING_ADDR",
                                                        "SET_VRING_BASE",
                                                        "GET_VRING_BASE",
                                                        "SET_VRING_KICK",
                                                        "SET_VRING_CALL",
                                                        "SET_VRING_ERR",
                                                        "GET_PROTOCOL_FEATURES",
                                                        "SET_PROTOCOL_FEATURES",
                                                        "GET_QUEUE_NUM",
                                                        "SET_VRING_ENABLE"};
  return r < names.size() ? names[r] : "unknown";
}

// Wire layout (host order: vhost-user is a local protocol, both ends share the CPU's order).
inline constexpr std::uint32_t flag_version = 0x1;  // bits 0-1: protocol version 1
inline constexpr std::uint32_t flag_version_mask = 0x3;
inline constexpr std::uint32_t flag_reply = 0x4;
inline constexpr std::uint32_t flag_need_reply = 0x8;
inline constexpr std::size_t header_bytes = 12;  // request, flags, size
inline constexpr std::size_t max_regions = 8;    // the protocol's baseline memory table
inline constexpr std::size_t region_bytes = 32;  // guest_phys, size, userspace, mmap_offset
inline constexpr std::size_t max_payload = 8 + max_regions * region_bytes;
inline constexpr std::size_t max_fds = max_regions;
inline constexpr std::uint64_t vring_fd_index_mask = 0xFF;  // SET_VRING_KICK/CALL/ERR payload
inline constexpr std::uint64_t vring_no_fd = 0x100;         // "no fd: poll the ring instead"

inline constexpr unsigned feature_protocol_features = 30;  // VHOST_USER_F_PROTOCOL_FEATURES
inline constexpr unsigned net_f_mrg_rxbuf = 15;            // VIRTIO_NET_F_MRG_RXBUF

/// A broken rule of the protocol (or a resource the frontend named that cannot be used).
class protocol_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// One frame taken from the transmit queue.
struct tx_frame {
  std::span<const std::byte> bytes;  ///< the device-readable part, gathered (at most 256 KiB)
  std::uint64_t length;              ///< the device-readable bytes of the whole chain
  std::uint32_t descriptors;         ///< descriptors walked, indirect ones included
  std::uint32_t ring_slots;          ///< ring slots the chain took (an indirect table is one)
  bool has_writable;                 ///< a device-writable buffer in a TX chain (5.1.6.2: wrong)
};
using frame_sink = std::function<void(const tx_frame&)>;

struct backend_options {
  std::string socket_path;
  bool offer_packed = true;     ///< offer VIRTIO_F_RING_PACKED
  bool offer_indirect = false;  ///< offer VIRTIO_F_INDIRECT_DESC
  bool offer_in_order = false;  ///< offer VIRTIO_F_IN_ORDER
  /// With IN_ORDER negotiated: give each batch back as ONE used entry (complete_in_order,
  /// 2.7.9 / 2.8.11) instead of one per chain.
  bool batch_in_order = false;
  /// Spin on the transmit ring (throughput runs) instead of sleeping on the kick eventfd
  /// with notifications enabled (the default: exercises the suppression handshake).
  bool busy_poll = false;
  int cpu = -1;  ///< pin the serving thread to this CPU (-1: leave it)
  std::chrono::milliseconds accept_timeout{10000};
  /// The whole session, from accept to disconnect, must end within this.
  std::chrono::milliseconds session_timeout{30000};
};

/// What happened to one queue.
struct queue_report {
  bool started = false;
  bool packed = false;
  std::uint32_t size = 0;
  bool got_vring_base = false;   ///< GET_VRING_BASE arrived and was answered
  std::uint32_t vring_base = 0;  ///< what we answered
  std::uint64_t frames = 0;
  std::uint64_t via_batch = 0;   ///< chains taken by serve_buffers (pop_buffers: IN_ORDER)
  std::uint64_t via_chain = 0;   ///< chains taken by pop(chain&) (more than one descriptor)
  std::uint64_t batches = 0;     ///< batch calls that returned at least one chain
  std::uint64_t idle_polls = 0;  ///< service turns that found nothing
  std::uint64_t busy_polls = 0;  ///< service turns that found chains
  std::uint64_t kicks = 0;       ///< kick eventfd wake-ups
  std::uint64_t calls = 0;       ///< call eventfd writes
  bool broken = false;
  virtq::errc error = virtq::errc::ok;
  virtq::queue_stats stats{};
  std::chrono::steady_clock::time_point first_frame{}, last_frame{};
};

struct session_report {
  std::string error;  ///< empty: the frontend disconnected cleanly
  bool connected = false;
  bool disconnected = false;
  std::uint64_t features = 0;
  std::vector<std::uint32_t> requests;  ///< in arrival order
  std::array<queue_report, 2> queues{};
};

/// The backend. Construct (binds and listens), then serve() one frontend connection on a
/// thread of your choice. tx_frames() / tx_started() may be read from other threads.
class backend {
 public:
  using policy = virtq::flags_policy;  // EVENT_IDX is not offered: flags-based suppression
  using split_dev = virtq::split_device<policy, virtq::guest_memory>;
  using packed_dev = virtq::packed_device<policy, virtq::guest_memory>;

  explicit backend(backend_options o) : opts_(std::move(o)) {
    sockaddr_un sa{};
    if (opts_.socket_path.empty() || opts_.socket_path.size() >= sizeof(sa.sun_path)) {
      throw protocol_error("socket path empty or too long: " + opts_.socket_path);
    }
    listen_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_) throw_errno("socket");
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, opts_.socket_path.c_str(), opts_.socket_path.size() + 1);
    ::unlink(opts_.socket_path.c_str());
    if (::bind(listen_.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
      throw_errno("bind " + opts_.socket_path);
    }
    if (::listen(listen_.get(), 1) != 0) throw_errno("listen");
  }
  backend(const backend&) = delete;
  backend& operator=(const backend&) = delete;
  ~backend() {
    drop_session();
    ::unlink(opts_.socket_path.c_str());
  }

  std::uint64_t tx_frames() const noexcept { return tx_frames_.load(std::memory_order_acquire); }
  bool tx_started() const noexcept { return tx_started_.load(std::memory_order_acquire); }

  /// Serves one frontend until it disconnects, breaks a rule, `stop` becomes true, or a
  /// timeout passes. Never throws: the report carries the error.
  session_report serve(const frame_sink& sink, const std::atomic<bool>* stop = nullptr) {
    report_ = session_report{};
    sink_ = &sink;
    try {
      if (opts_.cpu >= 0) pin(opts_.cpu);
      run(stop);
    } catch (const protocol_error& e) {
      report_.error = e.what();
    } catch (const virtq::error& e) {
      report_.error = std::string("virtq: ") + e.what();
    } catch (const std::exception& e) {
      report_.error = std::string("unexpected: ") + e.what();
    }
    for (std::size_t i = 0; i < queues_.size(); ++i) snapshot(i);
    drop_session();
    sink_ = nullptr;
    return report_;
  }

  // --- a frontend's view of the wire: for tests that play a (hostile) frontend -------------

  /// Connects to a backend's socket as a frontend would.
  static unique_fd connect_to(const std::string& path) {
    sockaddr_un sa{};
    if (path.size() >= sizeof(sa.sun_path)) throw protocol_error("path too long");
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("socket");
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
      throw_errno("connect " + path);
    }
    return fd;
  }
  /// Sends raw bytes (a header and payload, possibly malformed) with optional fds.
  static void send_raw(int fd, std::span<const std::byte> bytes, std::span<const int> fds = {}) {
    send_with_fds(fd, bytes, fds);
  }
  /// Sends a well-formed message.
  static void send_message(int fd, std::uint32_t req, std::span<const std::byte> payload,
                           std::span<const int> fds = {}, std::uint32_t flags = flag_version) {
    std::vector<std::byte> buf(header_bytes + payload.size());
    const std::uint32_t hdr[3] = {req, flags, static_cast<std::uint32_t>(payload.size())};
    std::memcpy(buf.data(), hdr, header_bytes);
    if (!payload.empty()) std::memcpy(buf.data() + header_bytes, payload.data(), payload.size());
    send_with_fds(fd, buf, fds);
  }

 private:
  struct mapping {
    void* base = nullptr;
    std::size_t len = 0;
  };

  struct vring {
    std::uint32_t num = 0;
    std::uint32_t base = 0;
    bool have_num = false, have_base = false, have_addr = false, have_kick = false;
    std::uint64_t desc_user = 0, used_user = 0, avail_user = 0;
    unique_fd kick, call;
    std::unique_ptr<split_dev> split;
    std::unique_ptr<packed_dev> packed;
    // Where the device will read next, followed chain by chain (ring_slots of each pop) for
    // the error messages; GET_VRING_BASE asks the device itself (avail_position()).
    std::uint16_t next = 0;
    bool wrap = true;
    queue_report rep{};
    bool running() const noexcept { return split != nullptr || packed != nullptr; }
  };

  [[noreturn]] static void throw_errno(const std::string& what) {
    throw protocol_error(what + ": " + std::strerror(errno));
  }

  static void pin(int cpu_index) {
    const auto cpu = static_cast<std::size_t>(cpu_index);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    // Best effort: a machine with fewer CPUs still runs the test, unpinned.
    (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }

  using clock = std::chrono::steady_clock;

  static bool wait_readable(int fd, clock::time_point deadline) {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
      if (left.count() < 0) return false;
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) throw_errno("poll");
    }
  }

  static void send_with_fds(int fd, std::span<const std::byte> bytes, std::span<const int> fds) {
    iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * max_fds)] = {};
    if (!fds.empty()) {
      if (fds.size() > max_fds) throw protocol_error("too many fds");
      mh.msg_control = ctl;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n < 0 || static_cast<std::size_t>(n) != bytes.size()) throw_errno("sendmsg");
  }

  // --- the session ---------------------------------------------------------------------------

  void run(const std::atomic<bool>* stop) {
    const auto accept_deadline = clock::now() + opts_.accept_timeout;
    if (!wait_readable(listen_.get(), accept_deadline)) {
      throw protocol_error("no frontend connected within the accept timeout");
    }
    conn_.reset(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn_) throw_errno("accept");
    report_.connected = true;
    const auto deadline = clock::now() + opts_.session_timeout;
    std::uint32_t spins = 0;
    bool more = false;  // the last service_tx stopped with chains left: come back at once
    for (;;) {
      if (stop != nullptr && stop->load(std::memory_order_acquire)) {
        throw protocol_error("stopped by the test before the frontend disconnected");
      }
      vring& tx = queues_[1];
      const bool spin = opts_.busy_poll && tx.running();
      // Spinning: look at the socket and the clock only every 256 turns (a syscall or a clock
      // read per turn would dominate an idle turn); sleeping: wait on the socket and the
      // transmit kick together.
      if (spin && (++spins & 255U) != 0) {
        more = service_tx(tx);
        continue;
      }
      if (clock::now() > deadline) throw protocol_error("session timeout");
      std::array<pollfd, 2> p{pollfd{conn_.get(), POLLIN, 0}, pollfd{-1, POLLIN, 0}};
      if (tx.running() && tx.kick) p[1].fd = tx.kick.get();
      const int timeout = (spin || more) ? 0 : (tx.running() && !tx.kick ? 1 : 50);
      const int r = ::poll(p.data(), 2, timeout);
      if (r < 0 && errno != EINTR) throw_errno("poll");
      if (r > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        if (!handle_message()) {
          report_.disconnected = true;
          return;
        }
      }
      if (r > 0 && p[1].fd >= 0 && (p[1].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
        // Not an eventfd (a pipe whose writer left, say): it would wake us forever.
        throw protocol_error("queue 1: the kick fd hung up or is invalid");
      }
      if (r > 0 && p[1].fd >= 0 && (p[1].revents & POLLIN) != 0) {
        std::uint64_t v = 0;
        if (::read(tx.kick.get(), &v, sizeof(v)) == static_cast<ssize_t>(sizeof(v))) {
          ++tx.rep.kicks;
        }
      }
      more = tx.running() && service_tx(tx);
    }
  }

  /// Reads and handles one message; false when the frontend closed the connection.
  bool handle_message() {
    std::array<std::byte, header_bytes> hdr_bytes{};
    std::vector<unique_fd> fds;
    const std::size_t got = read_header(hdr_bytes, fds);
    if (got == 0) return false;
    std::uint32_t hdr[3];
    std::memcpy(hdr, hdr_bytes.data(), header_bytes);
    const std::uint32_t req = hdr[0], flags = hdr[1], size = hdr[2];
    report_.requests.push_back(req);
    if ((flags & flag_version_mask) != flag_version) {
      throw protocol_error(std::string(request_name(req)) + ": header version " +
                           std::to_string(flags & flag_version_mask) + ", expected 1");
    }
    if (size > max_payload) {
      throw protocol_error(std::string(request_name(req)) + ": payload of " + std::to_string(size) +
                           " bytes exceeds the largest message (" + std::to_string(max_payload) +
                           ")");
    }
    std::vector<std::byte> payload(size);
    read_exact(payload, req);
    dispatch(req, flags, payload, fds);
    return true;
  }

  std::size_t read_header(std::array<std::byte, header_bytes>& hdr, std::vector<unique_fd>& fds) {
    iovec iov{hdr.data(), hdr.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * max_fds)] = {};
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof(ctl);
    ssize_t n;
    do {
      n = ::recvmsg(conn_.get(), &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == ECONNRESET) return 0;
      throw_errno("recvmsg");
    }
    // Take ownership of every fd first, so none leaks whatever goes wrong below.
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < k; ++i) {
          int f;
          std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.emplace_back(f);
        }
      }
    }
    if ((mh.msg_flags & MSG_CTRUNC) != 0) {
      throw protocol_error("more than " + std::to_string(max_fds) + " fds with one message");
    }
    if (n == 0) return 0;
    std::size_t have = static_cast<std::size_t>(n);
    if (have < header_bytes) {
      // A stream may split the header; the rest must follow promptly.
      read_exact(std::span<std::byte>(hdr).subspan(have), 0, true);
    }
    return header_bytes;
  }

  void read_exact(std::span<std::byte> out, std::uint32_t req, bool in_header = false) {
    const auto deadline = clock::now() + std::chrono::seconds(2);
    std::size_t done = 0;
    while (done < out.size()) {
      if (!wait_readable(conn_.get(), deadline)) {
        throw protocol_error(in_header ? std::string("short message: header incomplete")
                                       : std::string(request_name(req)) +
                                             ": short message, payload incomplete");
      }
      const ssize_t n = ::recv(conn_.get(), out.data() + done, out.size() - done, 0);
      if (n == 0) {
        throw protocol_error(in_header ? std::string("short message: connection closed in header")
                                       : std::string(request_name(req)) +
                                             ": short message, connection closed in payload");
      }
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        throw_errno("recv");
      }
      done += static_cast<std::size_t>(n);
    }
  }

  template <class T>
  static T field(std::span<const std::byte> p, std::size_t off) {
    T v;
    std::memcpy(&v, p.data() + off, sizeof(T));
    return v;
  }

  static void expect_size(std::uint32_t req, std::span<const std::byte> p, std::size_t want) {
    if (p.size() != want) {
      throw protocol_error(std::string(request_name(req)) + ": payload of " +
                           std::to_string(p.size()) + " bytes, expected " + std::to_string(want));
    }
  }
  static void expect_fds(std::uint32_t req, const std::vector<unique_fd>& fds, std::size_t want) {
    if (fds.size() != want) {
      throw protocol_error(std::string(request_name(req)) + ": " + std::to_string(fds.size()) +
                           " fds attached, expected " + std::to_string(want));
    }
  }

  vring& queue_at(std::uint32_t req, std::uint64_t index) {
    if (index >= queues_.size()) {
      throw protocol_error(std::string(request_name(req)) + ": queue " + std::to_string(index) +
                           " does not exist (this net device has 2: rx 0, tx 1)");
    }
    return queues_[static_cast<std::size_t>(index)];
  }

  void reply(std::uint32_t req, std::span<const std::byte> payload) {
    send_message(conn_.get(), req, payload, {}, flag_version | flag_reply);
  }
  void reply_u64(std::uint32_t req, std::uint64_t v) {
    std::array<std::byte, 8> b;
    std::memcpy(b.data(), &v, 8);
    reply(req, b);
  }

  std::uint64_t offered() const noexcept {
    std::uint64_t f = std::uint64_t{1} << virtq::feature::version_1;
    if (opts_.offer_packed) f |= std::uint64_t{1} << virtq::feature::ring_packed;
    if (opts_.offer_indirect) f |= std::uint64_t{1} << virtq::feature::indirect_desc;
    if (opts_.offer_in_order) f |= std::uint64_t{1} << virtq::feature::in_order;
    return f;
  }

  void dispatch(std::uint32_t req, std::uint32_t flags, std::span<const std::byte> p,
                std::vector<unique_fd>& fds) {
    // need_reply (flag_need_reply) only means something once REPLY_ACK was negotiated (never
    // here: no protocol features are offered), so it is ignored rather than answered: an
    // unexpected reply would desynchronise a frontend that did not ask for one.
    (void)flags;
    switch (static_cast<request>(req)) {
      case request::set_owner:
      case request::reset_owner:
        expect_size(req, p, p.size() == 8 ? 8 : 0);  // some frontends send an unused u64
        expect_fds(req, fds, 0);
        if (static_cast<request>(req) == request::reset_owner) stop_all();
        return;
      case request::get_features:
        expect_fds(req, fds, 0);
        if (!p.empty()) expect_size(req, p, 8);
        reply_u64(req, offered());
        return;
      case request::set_features: {
        expect_size(req, p, 8);
        expect_fds(req, fds, 0);
        const auto f = field<std::uint64_t>(p, 0);
        if ((f & ~offered()) != 0) {
          throw protocol_error("SET_FEATURES: bits 0x" + hex(f & ~offered()) + " were not offered");
        }
        if (queues_[0].running() || queues_[1].running()) {
          throw protocol_error("SET_FEATURES while a ring runs");
        }
        features_ = f;
        report_.features = f;
        return;
      }
      case request::set_mem_table:
        set_mem_table(req, p, fds);
        return;
      case request::set_vring_num: {
        expect_size(req, p, 8);
        expect_fds(req, fds, 0);
        vring& q = queue_at(req, field<std::uint32_t>(p, 0));
        not_running(req, q);
        q.num = field<std::uint32_t>(p, 4);
        q.have_num = true;
        return;
      }
      case request::set_vring_base: {
        expect_size(req, p, 8);
        expect_fds(req, fds, 0);
        vring& q = queue_at(req, field<std::uint32_t>(p, 0));
        not_running(req, q);
        q.base = field<std::uint32_t>(p, 4);
        q.have_base = true;
        return;
      }
      case request::set_vring_addr: {
        expect_size(req, p, 40);
        expect_fds(req, fds, 0);
        vring& q = queue_at(req, field<std::uint32_t>(p, 0));
        not_running(req, q);
        // index, flags (bit 0: log used writes; no log is kept), desc, used, avail, log.
        q.desc_user = field<std::uint64_t>(p, 8);
        q.used_user = field<std::uint64_t>(p, 16);
        q.avail_user = field<std::uint64_t>(p, 24);
        q.have_addr = true;
        maybe_start(q);
        return;
      }
      case request::set_vring_kick:
      case request::set_vring_call:
      case request::set_vring_err: {
        expect_size(req, p, 8);
        const auto v = field<std::uint64_t>(p, 0);
        if ((v & ~(vring_fd_index_mask | vring_no_fd)) != 0) {
          throw protocol_error(std::string(request_name(req)) + ": reserved bits set in 0x" +
                               hex(v));
        }
        vring& q = queue_at(req, v & vring_fd_index_mask);
        const bool no_fd = (v & vring_no_fd) != 0;
        expect_fds(req, fds, no_fd ? 0 : 1);
        unique_fd fd = no_fd ? unique_fd{} : std::move(fds[0]);
        if (static_cast<request>(req) == request::set_vring_kick) {
          q.kick = std::move(fd);  // none: the ring is polled
          q.have_kick = true;
          maybe_start(q);
        } else if (static_cast<request>(req) == request::set_vring_call) {
          q.call = std::move(fd);
        }  // SET_VRING_ERR: nothing is ever reported through it
        return;
      }
      case request::get_vring_base: {
        expect_size(req, p, 8);
        expect_fds(req, fds, 0);
        const auto index = field<std::uint32_t>(p, 0);
        vring& q = queue_at(req, index);
        // Stop the ring: everything popped was completed and published by service_tx, so the
        // driver owns every chain again except those it made available and we never took.
        const bool packed = (features_ >> virtq::feature::ring_packed & 1U) != 0;
        std::uint32_t num;
        if (q.running()) {
          // Packed: bits 0-14 the ring offset, bit 15 the wrap counter; split: avail index.
          num = packed ? q.packed->avail_position() : q.split->avail_position();
        } else {
          num = q.have_base ? q.base : (packed ? 0x8000U : 0U);
        }
        stop(index);
        q.rep.got_vring_base = true;
        q.rep.vring_base = num;
        std::array<std::byte, 8> b;
        std::memcpy(b.data(), &index, 4);
        std::memcpy(b.data() + 4, &num, 4);
        reply(req, b);
        return;
      }
      case request::set_vring_enable: {
        // Without protocol features a ring is enabled when it starts; DPDK sends this anyway.
        expect_size(req, p, 8);
        expect_fds(req, fds, 0);
        (void)queue_at(req, field<std::uint32_t>(p, 0));
        return;
      }
      case request::get_protocol_features:
      case request::set_protocol_features:
      case request::get_queue_num:
      case request::set_log_base:
      case request::set_log_fd:
        throw protocol_error(std::string(request_name(req)) +
                             ": needs a feature this backend did not offer");
    }
    throw protocol_error("unknown request " + std::to_string(req));
  }

  static std::string hex(std::uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof(b), "%llx", static_cast<unsigned long long>(v));
    return b;
  }

  static void not_running(std::uint32_t req, const vring& q) {
    if (q.running()) {
      throw protocol_error(std::string(request_name(req)) +
                           " for a running ring (stop it with "
                           "GET_VRING_BASE first)");
    }
  }

  void set_mem_table(std::uint32_t req, std::span<const std::byte> p, std::vector<unique_fd>& fds) {
    if (p.size() < 8) expect_size(req, p, 8);
    const auto n = field<std::uint32_t>(p, 0);
    if (n == 0 || n > max_regions) {
      throw protocol_error("SET_MEM_TABLE: " + std::to_string(n) + " regions (1.." +
                           std::to_string(max_regions) + " allowed)");
    }
    expect_size(req, p, 8 + n * region_bytes);
    expect_fds(req, fds, n);
    if (queues_[0].running() || queues_[1].running()) {
      throw protocol_error("SET_MEM_TABLE while a ring runs (not supported)");
    }
    unmap_all();
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::size_t off = 8 + std::size_t{i} * region_bytes;
      const auto gpa = field<std::uint64_t>(p, off);
      const auto size = field<std::uint64_t>(p, off + 8);
      const auto uva = field<std::uint64_t>(p, off + 16);
      const auto mmap_off = field<std::uint64_t>(p, off + 24);
      const std::string what = "SET_MEM_TABLE region " + std::to_string(i) + " (guest 0x" +
                               hex(gpa) + ", size 0x" + hex(size) + ", offset 0x" + hex(mmap_off) +
                               ")";
      if (size == 0 || virtq::range_wraps(gpa, size) || virtq::range_wraps(uva, size) ||
          virtq::range_wraps(mmap_off, size)) {
        throw protocol_error(what + ": empty or wraps 2^64");
      }
      // A mapping past the end of the file would fault (SIGBUS) on first touch: the frontend
      // must give a file at least offset + size long.
      struct stat st {};
      if (::fstat(fds[i].get(), &st) != 0) throw_errno(what + ": fstat");
      if (!S_ISREG(st.st_mode)) throw protocol_error(what + ": fd is not a memory file");
      if (static_cast<std::uint64_t>(st.st_size) < mmap_off + size) {
        throw protocol_error(what + ": file is only 0x" +
                             hex(static_cast<std::uint64_t>(st.st_size)) + " bytes");
      }
      const std::uint64_t len = mmap_off + size;
      if (len > SIZE_MAX) throw protocol_error(what + ": too large to map");
      void* base = ::mmap(nullptr, static_cast<std::size_t>(len), PROT_READ | PROT_WRITE,
                          MAP_SHARED, fds[i].get(), 0);
      if (base == MAP_FAILED) throw_errno(what + ": mmap");
      maps_.push_back(mapping{base, static_cast<std::size_t>(len)});
      auto* host = static_cast<std::byte*>(base) + mmap_off;
      try {
        mem_.add_region(gpa, size, host);
        user_.add_region(uva, size, host);
      } catch (const virtq::error& e) {
        throw protocol_error(what + ": " + e.what());
      }
    }
    have_mem_ = true;
  }

  /// A ring starts once its size, addresses and kick are known (no protocol features: "the
  /// ring starts when it receives a kick"). Its areas are translated and checked here.
  void maybe_start(vring& q) {
    if (q.running() || !q.have_kick || !q.have_addr) return;
    const std::size_t index = static_cast<std::size_t>(&q - queues_.data());
    const std::string what = "queue " + std::to_string(index);
    if (!q.have_num) throw protocol_error(what + ": started without SET_VRING_NUM");
    if (!have_mem_) throw protocol_error(what + ": started before SET_MEM_TABLE");
    const bool packed = ((features_ >> virtq::feature::ring_packed) & 1U) != 0;
    if (q.num == 0 || q.num > virtq::max_queue_size) {
      throw protocol_error(what + ": queue size " + std::to_string(q.num));
    }
    const auto area = [&](const char* name, std::uint64_t uva, std::size_t bytes) {
      const virtq::result<std::byte*> h = user_.translate(uva, bytes);
      if (!h) {
        throw protocol_error(what + ": " + name + " at user address 0x" + hex(uva) + " (+" +
                             std::to_string(bytes) + "): " + virtq::to_string(h.error()));
      }
      return static_cast<void*>(*h);
    };
    const virtq::features f(features_);
    try {
      if (packed) {
        // vhost-user names the packed areas by their split counterparts: avail -> driver
        // event suppression, used -> device event suppression.
        const auto v = virtq::packed::ring_view::make(
            area("descriptor ring", q.desc_user, 16U * std::size_t{q.num}),
            area("driver event area", q.avail_user, sizeof(virtq::packed::event_suppress)),
            area("device event area", q.used_user, sizeof(virtq::packed::event_suppress)), q.num);
        if (!v) throw protocol_error(what + ": " + virtq::to_string(v.error()));
        // SET_VRING_BASE: offset in bits 0-14, wrap counter in bit 15 (0x8000, offset 0 and
        // wrap 1, is a fresh ring, 2.8.1); the device resumes there (an offset outside the
        // ring is refused by the device's constructor).
        const std::uint32_t start = q.have_base ? q.base : 0x8000U;
        if (start > 0xFFFFU) throw protocol_error(what + ": SET_VRING_BASE over 16 bits");
        virtq::device_options o;
        o.packed_start = static_cast<std::uint16_t>(start);
        q.packed = std::make_unique<packed_dev>(*v, f, mem_, o);
        q.next = static_cast<std::uint16_t>(start & 0x7FFFU);
        q.wrap = (start & 0x8000U) != 0;
      } else {
        const auto v = virtq::split::ring_view::make(
            area("descriptor table", q.desc_user, virtq::split::desc_table_bytes(q.num)),
            area("available ring", q.avail_user, virtq::split::avail_bytes(q.num)),
            area("used ring", q.used_user, virtq::split::used_bytes(q.num)), q.num);
        if (!v) throw protocol_error(what + ": " + virtq::to_string(v.error()));
        if (q.base > 0xFFFFU) throw protocol_error(what + ": SET_VRING_BASE over 16 bits");
        const auto start = static_cast<std::uint16_t>(q.base);
        // The device resumes at the base; chains before it must all have come back, so the
        // used idx the driver left must equal it (a backend with chains in flight from an
        // earlier session would need inflight tracking, which is not offered).
        const std::uint16_t used = virtq::load_acquire<policy::endian>(v->used.idx());
        if (used != start) {
          throw protocol_error(what + ": used idx " + std::to_string(used) +
                               " differs from SET_VRING_BASE " + std::to_string(start));
        }
        q.split = std::make_unique<split_dev>(*v, f, mem_, virtq::device_options{start});
        q.next = start;
      }
    } catch (const virtq::error& e) {
      throw protocol_error(what + ": " + e.what());
    }
    q.rep = queue_report{};
    q.rep.started = true;
    q.rep.packed = packed;
    q.rep.size = q.num;
    if (index == 1) {
      // Sleeping on the kick: ask for notifications. Spinning: ask the driver not to bother.
      if (opts_.busy_poll) {
        disable(q);
      } else {
        enable(q);
      }
      tx_started_.store(true, std::memory_order_release);
    }
  }

  void disable(vring& q) {
    if (q.split) q.split->disable_notifications();
    if (q.packed) q.packed->disable_notifications();
  }
  bool enable(vring& q) {
    if (q.split) return q.split->enable_notifications();
    return q.packed->enable_notifications();
  }

  /// Pops what is available on the transmit ring (a bounded amount, so the socket is not
  /// starved), hands each frame to the sink, completes it (0 bytes written: a transmit buffer
  /// is device-readable) and interrupts if asked. True if chains are left to pop.
  bool service_tx(vring& q) { return q.split ? drain(q, *q.split) : drain(q, *q.packed); }

  template <class Dev>
  bool drain(vring& q, Dev& d) {
    std::uint64_t total = 0;
    const bool sleeping = !opts_.busy_poll;
    bool more = true;
    if (sleeping) d.disable_notifications();
    for (int round = 0; round < 64 && !d.broken(); ++round) {
      const std::uint64_t n = take(q, d);
      total += n;
      if (n != 0) {
        // Give each batch back at once: the driver can only refill slots it got back, so
        // holding completions until the ring runs dry would make the two sides take turns.
        publish(q, d);
        continue;
      }
      if (!sleeping) {
        more = false;
        break;
      }
      // 2.7.10 / 2.8.10: re-enable, then look once more: chains published before the request
      // took effect come with no kick, so they are popped now rather than slept on.
      if (!d.enable_notifications()) {
        more = false;
        break;
      }
      d.disable_notifications();
    }
    ++(total != 0 ? q.rep.busy_polls : q.rep.idle_polls);
    if (total != 0) {
      const auto now = clock::now();
      if (q.rep.frames == total) q.rep.first_frame = now;
      q.rep.last_frame = now;
      tx_frames_.store(q.rep.frames, std::memory_order_release);
    }
    if (d.broken()) {
      throw protocol_error(
          "transmit queue broken by the driver: " + std::string(virtq::to_string(d.error())) +
          " [" + describe_position(q) + "]");
    }
    return more;
  }

  /// For an error message: the descriptor at the device's position (and the first entries of
  /// its indirect table), read through the same checked translation. Diagnostics only.
  std::string describe_position(const vring& q) const {
    struct raw_desc {
      std::uint64_t addr;
      std::uint32_t len;
      std::uint16_t a, b;  // split: flags, next; packed: id, flags
    };
    const bool packed = q.packed != nullptr;
    std::uint32_t slot = q.next;
    if (!packed) {
      const auto ring = user_.translate(q.avail_user + 4 + 2U * (q.next & (q.num - 1U)), 2);
      if (!ring) return "avail ring unreadable";
      std::uint16_t head;
      std::memcpy(&head, *ring, 2);
      if (head >= q.num) return "avail entry names descriptor " + std::to_string(head);
      slot = head;
    }
    const auto at = user_.translate(q.desc_user + 16U * std::uint64_t{slot}, 16);
    if (!at) return "descriptor unreadable";
    raw_desc d;
    std::memcpy(&d, *at, sizeof d);
    const std::uint16_t flags = packed ? d.b : d.a;
    std::string s = std::string(packed ? "ring slot " : "descriptor ") + std::to_string(slot) +
                    ": addr 0x" + hex(d.addr) + " len " + std::to_string(d.len) + " flags 0x" +
                    hex(flags);
    if ((flags & virtq::split::desc_f_indirect) != 0 && d.len % 16 == 0) {
      const auto table = mem_.translate(d.addr, d.len);
      if (!table) return s + "; indirect table unreadable";
      s += "; indirect entries' flags:";
      for (std::uint32_t i = 0; i < d.len / 16 && i < 8; ++i) {
        raw_desc e;
        std::memcpy(&e, *table + 16U * i, sizeof e);
        s += " 0x" + hex(packed ? e.b : e.a);
      }
    }
    return s;
  }

  /// One batch of one-descriptor chains, then one pop(chain&) if the batch stopped short at a
  /// longer chain. The batch is served in place (serve_buffers: each frame is copied out and
  /// its chain completed with 0 bytes written in one pass); with IN_ORDER batches it is popped
  /// (pop_buffers) and completed with one used entry (complete_in_order).
  template <class Dev>
  std::uint64_t take(vring& q, Dev& d) {
    constexpr std::size_t batch_max = 32;
    std::size_t n = 0;
    if (in_order_batches()) {
      std::array<virtq::popped_buffer, batch_max> batch;
      const virtq::result<std::size_t> r = d.pop_buffers(batch);
      if (!r) return 0;  // broken: drain() reports it
      n = *r;
      for (std::size_t i = 0; i < n; ++i) {
        const auto& b = batch[i];
        deliver(q, tx_frame{{b.data, b.len}, b.len, 1, 1, b.writable});
        advance(q, 1);
      }
      if (n != 0 && d.complete_in_order(static_cast<std::uint16_t>(n), 0) != virtq::errc::ok) {
        throw protocol_error("complete_in_order refused our own popped chains");
      }
    } else {
      // The callback may not throw: a sink's exception waits until the batch is served.
      std::exception_ptr failed;
      const virtq::result<std::size_t> r =
          d.serve_buffers(batch_max, [&](const virtq::popped_buffer& b) noexcept {
            try {
              deliver(q, tx_frame{{b.data, b.len}, b.len, 1, 1, b.writable});
            } catch (...) {
              if (!failed) failed = std::current_exception();
            }
            advance(q, 1);
            return 0U;  // a transmit buffer is read, not written
          });
      if (failed) std::rethrow_exception(failed);
      if (!r) {
        // Broken (drain() reports it), or ours: a length over what a buffer holds.
        if (r.error() == virtq::errc::invalid_argument) {
          throw protocol_error("serve_buffers refused our own length");
        }
        return 0;
      }
      n = *r;
    }
    q.rep.via_batch += n;
    if (n != 0) ++q.rep.batches;
    if (n == batch_max || d.broken()) return n;
    const virtq::errc e = d.pop(chain_);
    if (e != virtq::errc::ok) return n;  // empty, or broken (drain() reports it)
    // A chain may claim up to 4 GiB (2.7.5.2): the sink sees a bounded prefix.
    scratch_.resize(static_cast<std::size_t>(
        std::min<std::uint64_t>(chain_.readable_bytes(), std::uint64_t{256} << 10)));
    const std::size_t got = chain_.read(scratch_);
    deliver(q, tx_frame{{scratch_.data(), got},
                        chain_.readable_bytes(),
                        chain_.descriptors(),
                        chain_.ring_slots(),
                        chain_.writable_bytes() != 0});
    advance(q, q.packed ? chain_.ring_slots() : 1U);
    ++q.rep.via_chain;
    if (d.complete(chain_.id(), 0) != virtq::errc::ok) {
      throw protocol_error("complete() refused our own popped chain");
    }
    return n + 1;
  }

  /// Publishes staged used entries; interrupts the driver if it asked (2.7.7 / 2.8.10).
  template <class Dev>
  void publish(vring& q, Dev& d) {
    if (d.interrupt_prepare() && q.call) {
      const std::uint64_t one = 1;
      if (::write(q.call.get(), &one, sizeof(one)) == static_cast<ssize_t>(sizeof(one))) {
        ++q.rep.calls;
      }
    }
  }

  bool in_order_batches() const noexcept {
    return opts_.batch_in_order && ((features_ >> virtq::feature::in_order) & 1U) != 0;
  }

  void deliver(vring& q, const tx_frame& f) {
    ++q.rep.frames;
    (*sink_)(f);
  }

  void advance(vring& q, std::uint32_t slots) {
    if (q.split) {
      q.next = static_cast<std::uint16_t>(q.next + 1U);
      return;
    }
    std::uint32_t next = q.next + slots;
    if (next >= q.num) {
      next -= q.num;
      q.wrap = !q.wrap;
    }
    q.next = static_cast<std::uint16_t>(next);
  }

  void snapshot(std::size_t i) {
    vring& q = queues_[i];
    if (q.split) {
      q.rep.stats = q.split->stats();
      q.rep.broken = q.split->broken();
      q.rep.error = q.split->error();
    } else if (q.packed) {
      q.rep.stats = q.packed->stats();
      q.rep.broken = q.packed->broken();
      q.rep.error = q.packed->error();
    }
    report_.queues[i] = q.rep;
  }

  void stop(std::size_t i) {
    snapshot(i);
    vring& q = queues_[i];
    q.split.reset();
    q.packed.reset();
    q.kick.reset();
    q.call.reset();
    q.have_kick = false;
  }
  void stop_all() {
    for (std::size_t i = 0; i < queues_.size(); ++i) {
      stop(i);
      queues_[i] = vring{};
    }
  }

  void unmap_all() {
    for (const mapping& m : maps_) ::munmap(m.base, m.len);
    maps_.clear();
    mem_ = virtq::guest_memory{};
    user_ = virtq::guest_memory{};
    have_mem_ = false;
  }

  void drop_session() {
    for (vring& q : queues_) q = vring{};  // devices go before the memory they point into
    unmap_all();
    conn_.reset();
    features_ = 0;
    tx_started_.store(false, std::memory_order_release);
  }

  backend_options opts_;
  unique_fd listen_, conn_;
  std::uint64_t features_ = 0;
  virtq::guest_memory mem_;   ///< guest physical -> host (descriptor addresses)
  virtq::guest_memory user_;  ///< frontend virtual -> host (SET_VRING_ADDR)
  std::vector<mapping> maps_;
  bool have_mem_ = false;
  std::array<vring, 2> queues_{};
  virtq::chain chain_;
  std::vector<std::byte> scratch_;
  const frame_sink* sink_ = nullptr;
  session_report report_;
  std::atomic<std::uint64_t> tx_frames_{0};
  std::atomic<bool> tx_started_{false};
};

}  // namespace vhost
