// SPDX-License-Identifier: MIT
// virtq/memory.hpp -- guest memory: a table of regions and checked translation.
//
// 2.7.5 / 2.8: descriptors carry guest-physical addresses. A device must translate each
// (address, length) before touching it, and a hostile driver may name any 64-bit value, so
// a translation succeeds only for a range that lies wholly inside one region, and a refusal
// names the rule: overflow of 2^64, outside every region, or across a region's end.
// guest_memory is the table; guest_memory_cursor is one device's view of a shared table that
// remembers the region it found last; identity_memory is for a trusted peer in this process.
//
// Ring fields shared by both sides are not accessed here: spec.hpp's atomic accessors
// (load_acquire/store_release) do that, so a driver and a device on two threads are race-free.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <span>
#include <utility>
#include <vector>

#include "virtq/error.hpp"

namespace virtq {

/// Anything that turns (guest address, length) into a host pointer with the checks below.
template <class M>
concept memory_map = requires(const M& m, std::uint64_t addr, std::uint64_t len) {
  { m.translate(addr, len) } -> std::same_as<result<std::byte*>>;
};

/// The overflow rule both maps share: [addr, addr+len) must not wrap past 2^64. A range that
/// ends exactly at 2^64 does not wrap.
constexpr bool range_wraps(std::uint64_t addr, std::uint64_t len) noexcept {
  return len != 0 && len - 1 > std::numeric_limits<std::uint64_t>::max() - addr;
}

/// The host rule both maps share: every byte of [start, start+len) is a host address (fits a
/// uintptr_t), so a pointer made from it cannot wrap. Only a 32-bit host has ranges that fail
/// it without wrapping 2^64.
constexpr bool in_host_space(std::uint64_t start, std::uint64_t len) noexcept {
  constexpr std::uint64_t host_max = std::numeric_limits<std::uintptr_t>::max();
  return start <= host_max && (len == 0 || len - 1 <= host_max - start);
}

/// One contiguous piece of guest memory mapped into this process.
struct memory_region {
  std::uint64_t guest_addr;
  std::uint64_t size;
  std::byte* host;
};

/// A table of non-overlapping regions (what a VMM gets from SET_MEM_TABLE, say).
class guest_memory {
 public:
  guest_memory() = default;

  /// Adds a region. Throws virtq::error(invalid_argument) for an empty region, a null host
  /// pointer, a region that wraps 2^64, one whose host bytes would run past the end of the
  /// host's address space (a region over 4 GiB, or too near the top, on a 32-bit host), or
  /// one that overlaps an existing region.
  void add_region(std::uint64_t guest_addr, std::uint64_t size, void* host) {
    if (size == 0 || host == nullptr || range_wraps(guest_addr, size)) {
      detail::throw_error(errc::invalid_argument, "guest_memory::add_region: bad region");
    }
    // translate() returns host + offset for every offset below size: each must be a host
    // address, or the pointer would wrap (on a 32-bit host, a guest region's high bytes would
    // land on unrelated host memory).
    if (!in_host_space(reinterpret_cast<std::uintptr_t>(host), size)) {
      detail::throw_error(errc::invalid_argument,
                          "guest_memory::add_region: host range past the address space");
    }
    const auto pos =
        std::lower_bound(regions_.begin(), regions_.end(), guest_addr,
                         [](const memory_region& r, std::uint64_t a) { return r.guest_addr < a; });
    const std::uint64_t last = guest_addr + (size - 1);
    if (pos != regions_.end() && pos->guest_addr <= last) {
      detail::throw_error(errc::invalid_argument, "guest_memory::add_region: overlap");
    }
    if (pos != regions_.begin()) {
      const auto& prev = *(pos - 1);
      if (prev.guest_addr + (prev.size - 1) >= guest_addr) {
        detail::throw_error(errc::invalid_argument, "guest_memory::add_region: overlap");
      }
    }
    regions_.insert(pos, memory_region{guest_addr, size, static_cast<std::byte*>(host)});
  }

  /// Identity region: the guest address of each byte is its host address (in-process use).
  void add_identity_region(void* host, std::uint64_t size) {
    add_region(reinterpret_cast<std::uintptr_t>(host), size, host);
  }

  /// Host pointer for [addr, addr+len), or address_overflow / address_out_of_range /
  /// crosses_region_end. A zero-length range must still start inside a region.
  result<std::byte*> translate(std::uint64_t addr, std::uint64_t len) const noexcept {
    std::size_t found = 0;
    return find(addr, len, found);
  }

  /// translate(), and a copy of the region the range lies in when it lies in one (`region` is
  /// unchanged otherwise). A copy stays right for as long as the table lives: regions are
  /// never changed or taken out. guest_memory_cursor keeps one.
  result<std::byte*> translate(std::uint64_t addr, std::uint64_t len,
                               memory_region& region) const noexcept {
    std::size_t found = 0;
    const result<std::byte*> host = find(addr, len, found);
    if (host) region = regions_[found];
    return host;
  }

  /// The guest address of a host pointer inside a region (drivers publishing their buffers),
  /// or address_out_of_range.
  result<std::uint64_t> guest_address(const void* host) const noexcept {
    const auto* p = static_cast<const std::byte*>(host);
    for (const auto& r : regions_) {
      if (p >= r.host && p < r.host + r.size) {
        return r.guest_addr + static_cast<std::uint64_t>(p - r.host);
      }
    }
    return errc::address_out_of_range;
  }

  std::span<const memory_region> regions() const noexcept { return regions_; }

 private:
  // translate(); `found` is the region's index when the range is in one (else unchanged).
  result<std::byte*> find(std::uint64_t addr, std::uint64_t len,
                          std::size_t& found) const noexcept {
    // A VMM's table has a few regions (QEMU's on x86: below and above the PCI hole): each is
    // tested in turn, with no overflow test, since a range inside a region cannot wrap (none
    // does, add_region saw to that) and regions do not overlap: the answer is the full
    // lookup's. Misses (errors, or a range in no region) and big tables take the full lookup.
    if (regions_.size() <= scan_max) [[likely]] {
      for (const memory_region& r : regions_) {
        const std::uint64_t off = addr - r.guest_addr;
        if (off < r.size && len <= r.size - off) {
          found = static_cast<std::size_t>(&r - regions_.data());
          return r.host + off;
        }
      }
    }
    return lookup(addr, len, found);
  }

  // The full lookup, which names the error: overflow first, then the region with the greatest
  // start <= addr, then the range's end.
  result<std::byte*> lookup(std::uint64_t addr, std::uint64_t len,
                            std::size_t& found) const noexcept {
    if (range_wraps(addr, len)) return errc::address_overflow;
    // The region with the greatest start <= addr.
    const auto it =
        std::upper_bound(regions_.begin(), regions_.end(), addr,
                         [](std::uint64_t a, const memory_region& r) { return a < r.guest_addr; });
    if (it == regions_.begin()) return errc::address_out_of_range;
    const memory_region& r = *(it - 1);
    const std::uint64_t off = addr - r.guest_addr;
    if (off >= r.size) return errc::address_out_of_range;
    if (len > r.size - off) return errc::crosses_region_end;
    found = static_cast<std::size_t>(it - 1 - regions_.begin());
    return r.host + off;
  }

  static constexpr std::size_t scan_max = 8;  // tables up to this size are scanned first
  std::vector<memory_region> regions_;        // sorted by guest_addr, non-overlapping
};

/// One device's way into a guest_memory table that many devices may share: translate() tries
/// the region the device's previous translation landed in first, from a copy of it the cursor
/// keeps (a one-entry TLB), so a device whose buffers lie in one region pays one range test
/// per buffer however many regions the table has; anything else asks the table. The copy is
/// plain state changed by a const call: a cursor belongs to one device, used by one thread at
/// a time (a device with a lock policy calls it under its lock). The table must outlive its
/// cursors; regions added to it later are found (the copy is never wrong: regions do not
/// change once added).
class guest_memory_cursor {
 public:
  explicit guest_memory_cursor(const guest_memory& table) noexcept : table_(&table) {}

  result<std::byte*> translate(std::uint64_t addr, std::uint64_t len) const noexcept {
    // The table's own test (guest_memory::find): a range inside a region is the answer, with
    // no overflow test, since no region wraps. The copy starts empty (size 0: no range fits).
    const std::uint64_t off = addr - last_.guest_addr;
    if (off < last_.size && len <= last_.size - off) [[likely]]
      return last_.host + off;
    return table_->translate(addr, len, last_);
  }
  result<std::uint64_t> guest_address(const void* host) const noexcept {
    return table_->guest_address(host);
  }
  const guest_memory& table() const noexcept { return *table_; }

 private:
  const guest_memory* table_;
  mutable memory_region last_{0, 0, nullptr};  // the region of the last range found
};

/// The whole address space, guest address == host address. Only for a peer you trust (both
/// sides in one process, tests, benchmarks): it checks overflow but cannot check bounds.
struct identity_memory {
  result<std::byte*> translate(std::uint64_t addr, std::uint64_t len) const noexcept {
    // Both rules in one add: (addr - 1) + len carries past 2^64 exactly when addr is 0 (the
    // null page) or, for len != 0, when [addr, addr+len) wraps (range_wraps). A zero-length
    // range only has the null rule. The sorting out of which rule is on the cold path; on a
    // device's hot path (len != 0 known) the two tests are one lea, one add and one branch.
    std::uint64_t last = 0;
    if (__builtin_add_overflow(addr - 1, len, &last) || (len == 0 && addr == 0)) [[unlikely]]
      // After a carry, last == len - 1 exactly when addr is 0 (any other addr leaves
      // addr + len - 1 - 2^64, and addr < 2^64): the cold path tells the rules apart from what
      // it has in registers, so a caller that does not use the address keeps none alive for it.
      return len == 0 || last == len - 1 ? errc::address_out_of_range : errc::address_overflow;
    // A 32-bit host has no address past 2^32: the range must lie in the host's address space,
    // or the cast below would drop the high bits and name some other host byte. (A 64-bit
    // host passes every range that does not wrap: no test there.)
    if constexpr (sizeof(std::uintptr_t) < sizeof(std::uint64_t)) {
      if (!in_host_space(addr, len)) return errc::address_out_of_range;
    }
    return reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(addr));
  }
  result<std::uint64_t> guest_address(const void* host) const noexcept {
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(host));
  }
};

/// Zeroed, aligned host memory that owns itself: ring areas and buffer pools for in-process use.
class aligned_buffer {
 public:
  aligned_buffer() = default;
  /// Throws std::bad_alloc; alignment must be a power of 2 (rounded up to alignof(void*)).
  explicit aligned_buffer(std::size_t bytes, std::size_t alignment = 4096)
      : size_(bytes), align_(std::max(alignment, alignof(void*))) {
    if (bytes == 0) return;
    const std::size_t rounded = (bytes + align_ - 1) & ~(align_ - 1);
    data_ = static_cast<std::byte*>(::operator new (rounded, std::align_val_t{align_}));
    std::memset(data_, 0, rounded);
  }
  aligned_buffer(aligned_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        align_(o.align_) {}
  aligned_buffer& operator=(aligned_buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      align_ = o.align_;
    }
    return *this;
  }
  aligned_buffer(const aligned_buffer&) = delete;
  aligned_buffer& operator=(const aligned_buffer&) = delete;
  ~aligned_buffer() { release(); }

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> span() const noexcept { return {data_, size_}; }

 private:
  void release() noexcept {
    if (data_ != nullptr) ::operator delete (data_, std::align_val_t{align_});
    data_ = nullptr;
  }
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t align_ = alignof(void*);
};

static_assert(memory_map<guest_memory>);
static_assert(memory_map<identity_memory>);

}  // namespace virtq
