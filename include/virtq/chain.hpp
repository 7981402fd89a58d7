// SPDX-License-Identifier: MIT
// virtq/chain.hpp -- a descriptor chain as the device sees it, and the one place where every
// descriptor of a chain is validated and translated, for split and packed rings alike.
//
// The walkers in split.hpp and packed.hpp follow the ring's own linking (next fields, sequential
// slots, indirect tables) and bound their walk; each descriptor they reach goes through
// chain::append, which enforces the rules common to both layouts:
//  * 2.7.4.2 / 2.8.4: device-readable descriptors come before device-writable ones;
//  * 2.7.5.2 / 2.8.4: at most `max_descriptors` (the queue size) descriptors in one chain;
//  * 2.7.5.2: the total length of a chain fits in 32 bits;
//  * 2.7.5 / 2.8: every buffer is translated through guest memory with overflow-safe bounds.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "virtq/error.hpp"
#include "virtq/memory.hpp"

namespace virtq {

/// A popped chain: host views of its device-readable and device-writable buffers, and the id
/// the device completes it with. Reuse one chain object across pops: its storage is kept, so
/// the hot path does not allocate once it has seen the longest chain.
class chain {
 public:
  using segment = std::span<std::byte>;

  /// The id to hand back to complete(): the head index (split) or the buffer id (packed).
  std::uint16_t id() const noexcept { return id_; }
  std::span<const segment> readable() const noexcept { return {segs_.data(), n_readable_}; }
  std::span<const segment> writable() const noexcept {
    return {segs_.data() + n_readable_, std::size_t{n_segs_} - n_readable_};
  }
  std::uint64_t readable_bytes() const noexcept { return readable_bytes_; }
  std::uint64_t writable_bytes() const noexcept { return total_bytes_ - readable_bytes_; }
  /// Descriptors the chain took in the ring (an indirect table counts as one): the packed
  /// ring's used descriptor skips ahead by this much (2.8.6).
  std::uint16_t ring_slots() const noexcept { return ring_slots_; }
  /// Descriptors walked, direct and indirect.
  std::uint32_t descriptors() const noexcept { return descriptors_; }

  /// Gathers up to out.size() readable bytes starting at `offset`; returns the count copied.
  std::size_t read(std::span<std::byte> out, std::uint64_t offset = 0) const noexcept {
    return copy_segments(readable(), offset, out.size(),
                         [&](std::byte* p, std::size_t n, std::size_t done) {
                           std::memcpy(out.data() + done, p, n);
                         });
  }
  /// Scatters `in` into the writable buffers starting at `offset`; returns the count written
  /// (less than in.size() if the writable space runs out). Report it as the used length.
  std::size_t write(std::span<const std::byte> in, std::uint64_t offset = 0) const noexcept {
    return copy_segments(writable(), offset, in.size(),
                         [&](std::byte* p, std::size_t n, std::size_t done) {
                           std::memcpy(p, in.data() + done, n);
                         });
  }

  // --- for the ring walkers ----------------------------------------------------------------

  /// Starts a new chain. `max_descriptors` is the queue size (2.7.5.2 / 2.8.4).
  void begin(std::uint16_t id, std::uint32_t max_descriptors) noexcept {
    n_segs_ = n_readable_ = 0;
    readable_bytes_ = total_bytes_ = 0;
    descriptors_ = 0;
    max_descriptors_ = max_descriptors;
    ring_slots_ = 0;
    id_ = id;
  }
  void set_ring_slots(std::uint16_t n) noexcept { ring_slots_ = n; }
  /// Packed rings name the buffer id in the chain's LAST descriptor (2.8.6), so the walker
  /// learns it only after the walk.
  void set_id(std::uint16_t id) noexcept { id_ = id; }

  /// Validates and translates one descriptor's buffer and adds it to the chain.
  ///
  /// Every rule is tested on every call, but the common case (in order, in bounds, non-empty,
  /// room in the storage) costs one branch; anything else takes append_slow, which checks the
  /// rules one by one to name the one broken (and grows the storage).
  /// begin() and append() of a chain's only descriptor, in one step (the common receive
  /// case). For one descriptor the order and total-length rules hold by construction; the
  /// rest is append's, which this falls back to for anything unusual.
  template <memory_map M>
  errc begin_one(const M& mem, std::uint16_t id, std::uint32_t max_descriptors, std::uint64_t addr,
                 std::uint32_t len, bool device_writable) {
    if ((max_descriptors == 0) | (len == 0) | (capacity_ == 0)) [[unlikely]] {
      begin(id, max_descriptors);
      return append(mem, addr, len, device_writable);
    }
    const result<std::byte*> host = mem.translate(addr, len);
    if (!host) [[unlikely]] {
      begin(id, max_descriptors);
      descriptors_ = 1;
      return host.error();
    }
    // The segment first: it is stored through a pointer the fields below may not alias.
    segs_[0] = segment(*host, len);
    n_segs_ = 1;
    n_readable_ = device_writable ? 0U : 1U;
    readable_bytes_ = device_writable ? 0U : len;
    total_bytes_ = len;
    descriptors_ = 1;
    max_descriptors_ = max_descriptors;
    ring_slots_ = 0;
    id_ = id;
    return errc::ok;
  }

  template <memory_map M>
  errc append(const M& mem, std::uint64_t addr, std::uint32_t len, bool device_writable) {
    const std::uint64_t total = total_bytes_ + len;
    const bool unusual = (descriptors_ >= max_descriptors_) |
                         (!device_writable & (n_segs_ != n_readable_)) | (total > max_total) |
                         (len == 0) | (n_segs_ == capacity_);
    if (unusual) [[unlikely]]
      return append_slow(mem, addr, len, device_writable);
    ++descriptors_;
    const result<std::byte*> host = mem.translate(addr, len);
    if (!host) [[unlikely]]
      return host.error();
    push(*host, len, device_writable);
    return errc::ok;
  }

 private:
  // 2.7.5.2: total chain length at most 2^32 (each len is 32 bits, so 64-bit sums are exact).
  static constexpr std::uint64_t max_total = std::uint64_t{1} << 32;

  template <memory_map M>
  [[gnu::noinline]] errc append_slow(const M& mem, std::uint64_t addr, std::uint32_t len,
                                     bool device_writable) {
    // 2.7.5.2: "A driver MUST NOT create a descriptor chain longer than the Queue Size".
    if (++descriptors_ > max_descriptors_) return errc::chain_too_long;
    // 2.7.4.2: "The driver MUST place any device-writable descriptor elements after any
    // device-readable descriptor elements."
    if (!device_writable && n_segs_ != n_readable_) return errc::write_before_read;
    // 2.7.5.2: at most 2^32 bytes in one chain.
    if (total_bytes_ + len > max_total) return errc::chain_too_large;
    if (len == 0) return errc::ok;  // nothing to touch; not even the address is used
    const result<std::byte*> host = mem.translate(addr, len);
    if (!host) return host.error();
    if (n_segs_ == capacity_) {
      // Grows once per new longest chain; a reused chain object stops allocating.
      segs_.resize(std::max<std::size_t>(std::size_t{capacity_} * 2, 8));
      capacity_ = static_cast<std::uint32_t>(segs_.size());
    }
    push(*host, len, device_writable);
    return errc::ok;
  }

  void push(std::byte* host, std::uint32_t len, bool device_writable) noexcept {
    segs_[n_segs_++] = segment(host, len);
    total_bytes_ += len;
    if (!device_writable) {
      ++n_readable_;
      readable_bytes_ += len;
    }
  }

  template <class F>
  static std::size_t copy_segments(std::span<const segment> segs, std::uint64_t offset,
                                   std::size_t want, F&& f) noexcept {
    std::size_t done = 0;
    for (const segment& s : segs) {
      if (done == want) break;
      if (offset >= s.size()) {
        offset -= s.size();
        continue;
      }
      // offset < s.size() here, so it fits in size_t (32 bits on a 32-bit host).
      const auto at = static_cast<std::size_t>(offset);
      const std::size_t n = std::min<std::size_t>(s.size() - at, want - done);
      f(s.data() + at, n, done);
      done += n;
      offset = 0;
    }
    return done;
  }

  // Storage: segs_ is sized (not just reserved) to capacity_, and n_segs_ of it are in use, so
  // appending is a plain store with no growth bookkeeping.
  std::vector<segment> segs_;
  std::uint64_t readable_bytes_ = 0;
  std::uint64_t total_bytes_ = 0;
  std::uint32_t n_segs_ = 0;
  std::uint32_t n_readable_ = 0;
  std::uint32_t capacity_ = 0;
  std::uint32_t descriptors_ = 0;
  std::uint32_t max_descriptors_ = 0;
  std::uint16_t ring_slots_ = 0;
  std::uint16_t id_ = 0;
};

}  // namespace virtq
