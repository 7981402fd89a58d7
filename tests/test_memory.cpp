// tests/test_memory.cpp -- guest memory: region table, checked translation (issue 2, item 5),
// ring views and geometry rejecting bad input, and the error vocabulary.
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "property.hpp"
#include "virtq/error.hpp"
#include "virtq/memory.hpp"
#include "virtq/spec.hpp"

using virtq::errc;
using virtq::guest_memory;

namespace {
constexpr std::uint64_t u64max = std::numeric_limits<std::uint64_t>::max();

std::byte backing[3][4096];

guest_memory two_regions() {
  guest_memory m;
  m.add_region(0x1000, 4096, backing[0]);   // [0x1000, 0x2000)
  m.add_region(0x10000, 4096, backing[1]);  // [0x10000, 0x11000), a gap before it
  return m;
}
}  // namespace

TEST_CASE("translate maps inside a region and rejects everything else", "[memory]") {
  const guest_memory m = two_regions();
  SECTION("inside, up to the exact end") {
    REQUIRE(*m.translate(0x1000, 4096) == backing[0]);
    REQUIRE(*m.translate(0x1FFF, 1) == backing[0] + 4095);
    REQUIRE(*m.translate(0x10010, 16) == backing[1] + 16);
  }
  SECTION("before the first region, in the gap, after the last") {
    CHECK(m.translate(0, 1).error() == errc::address_out_of_range);
    CHECK(m.translate(0xFFF, 1).error() == errc::address_out_of_range);
    CHECK(m.translate(0xFFF, 2).error() == errc::address_out_of_range);  // starts outside
    CHECK(m.translate(0x2000, 1).error() == errc::address_out_of_range);
    CHECK(m.translate(0x8000, 16).error() == errc::address_out_of_range);
    CHECK(m.translate(0x11000, 1).error() == errc::address_out_of_range);
  }
  SECTION("a range that starts inside and runs past the end, even into the next region") {
    CHECK(m.translate(0x1FF0, 17).error() == errc::crosses_region_end);
    CHECK(m.translate(0x1000, 0x10000).error() == errc::crosses_region_end);
  }
  SECTION("address + length wrapping 2^64 is an overflow, checked before anything else") {
    CHECK(m.translate(u64max, 2).error() == errc::address_overflow);
    CHECK(m.translate(0x1000, u64max).error() == errc::address_overflow);
    CHECK(m.translate(u64max - 15, 17).error() == errc::address_overflow);
  }
  SECTION("zero length must still start inside a region") {
    CHECK(*m.translate(0x1800, 0) == backing[0] + 0x800);
    CHECK(m.translate(0x2000, 0).error() == errc::address_out_of_range);
  }
}

TEST_CASE("a region may end exactly at 2^64", "[memory]") {
  guest_memory m;
  m.add_region(u64max - 4095, 4096, backing[2]);
  CHECK(*m.translate(u64max - 4095, 4096) == backing[2]);
  CHECK(*m.translate(u64max, 1) == backing[2] + 4095);
  CHECK(m.translate(u64max, 2).error() == errc::address_overflow);
}

TEST_CASE("add_region rejects empty, null, wrapping, unaddressable and overlapping regions",
          "[memory]") {
  guest_memory m = two_regions();
  const auto rejects = [&](std::uint64_t gpa, std::uint64_t size, void* host) {
    try {
      m.add_region(gpa, size, host);
    } catch (const virtq::error& e) {
      return e.value() == errc::invalid_argument;
    }
    return false;
  };
  CHECK(rejects(0x5000, 0, backing[2]));
  CHECK(rejects(0x5000, 16, nullptr));
  CHECK(rejects(u64max - 10, 16, backing[2]));
  CHECK(rejects(0x1FFF, 16, backing[2]));     // overlaps the first region's last byte
  CHECK(rejects(0x0F00, 0x200, backing[2]));  // overlaps the first region's start
  CHECK(rejects(0x0, 0x20000, backing[2]));   // covers both
  // Host bytes past the end of the host's address space (translate would wrap the pointer):
  // a region ending one byte too far up, and, on a host with 32-bit pointers, any region over
  // 4 GiB.
  const std::uintptr_t top = std::numeric_limits<std::uintptr_t>::max();
  CHECK(rejects(0x5000, 4097, reinterpret_cast<void*>(top - 4095)));
  if constexpr (sizeof(std::uintptr_t) < sizeof(std::uint64_t)) {
    CHECK(rejects(0x100000000ULL, std::uint64_t{1} << 33, backing[2]));
  }
  CHECK(m.regions().size() == 2);        // nothing was added by the failures
  m.add_region(0x2000, 16, backing[2]);  // adjacent is fine
  CHECK(m.regions().size() == 3);
  m.add_region(0x5000, 4096, reinterpret_cast<void*>(top - 4095));  // up to the last byte
  CHECK(m.regions().size() == 4);
  CHECK(*m.translate(0x2000, 16) == backing[2]);
}

TEST_CASE("guest_address inverts translate for host pointers inside a region", "[memory]") {
  const guest_memory m = two_regions();
  CHECK(*m.guest_address(backing[1] + 100) == 0x10000 + 100);
  CHECK(m.guest_address(backing[2]).error() == errc::address_out_of_range);
}

TEST_CASE("identity memory checks overflow and the null page", "[memory]") {
  const virtq::identity_memory id;
  std::byte b[16];
  const auto a = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(b));
  CHECK(*id.translate(a, 16) == b);
  CHECK(id.translate(0, 8).error() == errc::address_out_of_range);
  CHECK(id.translate(u64max, 2).error() == errc::address_overflow);
  // A host with 32-bit pointers has nothing past 2^32: such a range is out of range, not the
  // host byte its low 32 bits name.
  if constexpr (sizeof(std::uintptr_t) < sizeof(std::uint64_t)) {
    constexpr std::uint64_t host_end =
        std::uint64_t{std::numeric_limits<std::uintptr_t>::max()} + 1;
    CHECK(id.translate(host_end + a, 16).error() == errc::address_out_of_range);
    CHECK(id.translate(host_end - 8, 16).error() == errc::address_out_of_range);
    CHECK(id.translate(host_end - 8, 8));
  }
}

// identity_memory tests the null page and the wrap in one add ((addr - 1) + len carries): the
// edges of both rules, and every combination of them, against the two rules written apart.
TEST_CASE("identity memory's one-add test agrees with the null and wrap rules at their edges",
          "[memory]") {
  const virtq::identity_memory id;
  CHECK(id.translate(0, 0).error() == errc::address_out_of_range);
  CHECK(id.translate(0, u64max).error() == errc::address_out_of_range);
  // [1, 2^64) ends exactly at 2^64: no wrap (a 32-bit host has no such addresses).
  if constexpr (sizeof(std::uintptr_t) == sizeof(std::uint64_t)) {
    CHECK(id.translate(1, u64max).has_value());
  } else {
    CHECK(id.translate(1, u64max).error() == errc::address_out_of_range);
  }
  CHECK(id.translate(2, u64max).error() == errc::address_overflow);
  CHECK(id.translate(u64max, 2).error() == errc::address_overflow);
  rc::prop("edge-biased addresses and lengths", [] {
    const auto edge = [] {
      const auto off = virtq_test::uniform<std::uint64_t>(0, 3);
      return *rc::gen::arbitrary<bool>() ? off : u64max - off;
    };
    const std::uint64_t addr =
        *rc::gen::arbitrary<bool>() ? edge() : *rc::gen::arbitrary<std::uint64_t>();
    const std::uint64_t len =
        *rc::gen::arbitrary<bool>() ? edge() : *rc::gen::arbitrary<std::uint64_t>();
    const auto got = virtq::identity_memory{}.translate(addr, len);
    if (addr == 0) {
      RC_ASSERT(got.error() == errc::address_out_of_range);
    } else if (virtq::range_wraps(addr, len)) {
      RC_ASSERT(got.error() == errc::address_overflow);
    } else if (!virtq::in_host_space(addr, len)) {
      RC_ASSERT(got.error() == errc::address_out_of_range);
    } else {
      RC_ASSERT(got.has_value());
      RC_ASSERT(reinterpret_cast<std::uintptr_t>(*got) == addr);
    }
  });
}

// Both of translate's paths (a scan of small tables, a search of big ones) at every region's
// edges: tables of 1 to 12 regions with gaps between them.
TEST_CASE("small tables are scanned and big ones searched with the same answers", "[memory]") {
  static std::byte host[12][0x800];
  for (std::size_t n = 1; n <= 12; ++n) {
    guest_memory m;
    // Added from the highest down: the table sorts itself.
    for (std::size_t k = n; k-- > 0;) m.add_region(0x1000 * (k + 1), 0x800, host[k]);
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t g = 0x1000 * (k + 1);
      CAPTURE(n, k);
      CHECK(*m.translate(g, 0x800) == host[k]);
      CHECK(*m.translate(g + 0x7ff, 1) == host[k] + 0x7ff);
      CHECK(m.translate(g + 0x800, 0).error() == errc::address_out_of_range);
      CHECK(m.translate(g + 0x7ff, 2).error() == errc::crosses_region_end);
      CHECK(m.translate(g - 1, 1).error() == errc::address_out_of_range);
    }
    CHECK(m.translate(u64max, 2).error() == errc::address_overflow);
  }
}

// A cursor keeps a copy of the last region it found: whatever the sequence of ranges, and
// with regions added to the table between them, it must answer exactly as the table does.
TEST_CASE("a guest_memory_cursor answers as its table does", "[memory][property]") {
  rc::prop("random tables, ranges and additions", [] {
    static std::byte host[6][512];
    guest_memory table;
    const virtq::guest_memory_cursor cursor(table);
    std::size_t added = 0;
    const auto add = [&] {
      if (added == std::size(host)) return;
      const auto gpa = virtq_test::uniform<std::uint64_t>(0, 8) * 0x400;
      const auto size = virtq_test::uniform<std::uint64_t>(1, 512);
      try {
        table.add_region(gpa, size, host[added]);
        ++added;
      } catch (const virtq::error&) {
        // Overlap: the table is unchanged, and so must the answers be.
      }
    };
    add();
    const auto steps = virtq_test::uniform<int>(1, 60);
    for (int k = 0; k < steps; ++k) {
      if (virtq_test::uniform<int>(0, 9) == 0) add();
      // Ranges near the regions (starts in 0..9 KiB) and, now and then, near 2^64.
      const bool high = virtq_test::uniform<int>(0, 7) == 0;
      const auto off = virtq_test::uniform<std::uint64_t>(0, 0x2400);
      const std::uint64_t addr = high ? u64max - off : off;
      const auto len = virtq_test::uniform<std::uint64_t>(0, 600);
      const auto want = table.translate(addr, len);
      const auto got = cursor.translate(addr, len);
      RC_ASSERT(got.has_value() == want.has_value());
      if (want) {
        RC_ASSERT(*got == *want);
      } else {
        RC_ASSERT(got.error() == want.error());
      }
    }
  });
}

// The property: for random region tables and random (addr, len), translate agrees with a
// brute-force model that looks at every region. Tables of up to 12 regions: translate scans
// tables of up to 8 and searches bigger ones; both must give the model's answer.
TEST_CASE("translate agrees with a brute-force model", "[memory][property]") {
  rc::prop("random regions and ranges", [] {
    static std::byte host[12][256];
    guest_memory m;
    struct reg {
      std::uint64_t gpa, size;
      std::byte* host;
    };
    std::vector<reg> regs;
    const auto n = virtq_test::uniform<std::size_t>(0, 12);
    for (std::size_t i = 0; i < n; ++i) {
      // Small addresses near 0 or near 2^64 so that edges are hit often.
      const bool high = *rc::gen::arbitrary<bool>();
      const auto off = virtq_test::uniform<std::uint64_t>(0, 2048);
      const std::uint64_t gpa = high ? u64max - off : off;
      const auto size = virtq_test::uniform<std::uint64_t>(1, 257);
      try {
        m.add_region(gpa, size, host[i]);
        regs.push_back({gpa, size, host[i]});
      } catch (const virtq::error&) {
        // Overlap or wrap: the model must agree that it was invalid.
        const bool wraps = size - 1 > u64max - gpa;
        bool overlaps = false;
        for (const reg& r : regs) {
          overlaps = overlaps || (gpa <= r.gpa + (r.size - 1) && r.gpa <= gpa + (size - 1));
        }
        RC_ASSERT(wraps || overlaps);
      }
    }
    for (int k = 0; k < 20; ++k) {
      const bool high = *rc::gen::arbitrary<bool>();
      const auto off = virtq_test::uniform<std::uint64_t>(0, 2100);
      const std::uint64_t addr = high ? u64max - off : off;
      const auto len = virtq_test::uniform<std::uint64_t>(0, 300);
      const auto got = m.translate(addr, len);
      std::optional<errc> expect_err;
      std::byte* expect_ptr = nullptr;
      if (len != 0 && len - 1 > u64max - addr) {
        expect_err = errc::address_overflow;
      } else {
        const reg* in = nullptr;
        for (const reg& r : regs) {
          if (addr >= r.gpa && addr - r.gpa < r.size) in = &r;
        }
        if (in == nullptr) {
          expect_err = errc::address_out_of_range;
        } else if (len > in->size - (addr - in->gpa)) {
          expect_err = errc::crosses_region_end;
        } else {
          expect_ptr = in->host + (addr - in->gpa);
        }
      }
      if (expect_err) {
        RC_ASSERT(got.error() == *expect_err);
      } else {
        RC_ASSERT(got.has_value());
        RC_ASSERT(*got == expect_ptr);
      }
    }
  });
}

TEST_CASE("ring views reject bad sizes and misaligned areas", "[memory][spec]") {
  alignas(64) static std::byte area[3][4096];
  using virtq::split::ring_view;
  CHECK(ring_view::make(area[0], area[1], area[2], 256).has_value());
  CHECK(ring_view::make(area[0], area[1], area[2], 3).error() == errc::bad_queue_size);
  CHECK(ring_view::make(area[0], area[1], area[2], 65536).error() == errc::bad_queue_size);
  CHECK(ring_view::make(area[0] + 8, area[1], area[2], 8).error() == errc::bad_alignment);
  CHECK(ring_view::make(area[0], area[1] + 1, area[2], 8).error() == errc::bad_alignment);
  CHECK(ring_view::make(area[0], area[1], area[2] + 2, 8).error() == errc::bad_alignment);
  CHECK(ring_view::make(nullptr, area[1], area[2], 8).error() == errc::bad_alignment);
  using pv = virtq::packed::ring_view;
  CHECK(pv::make(area[0], area[1], area[2], 3).has_value());  // any size 1..32768
  CHECK(pv::make(area[0], area[1], area[2], 0).error() == errc::bad_queue_size);
  CHECK(pv::make(area[0], area[1], area[2], 32769).error() == errc::bad_queue_size);
  CHECK(pv::make(area[0], area[1] + 2, area[2], 8).error() == errc::bad_alignment);
  // 2.8.10.1: descriptor ring 16-byte aligned, each event area 4-byte aligned.
  CHECK(pv::make(area[0] + 8, area[1], area[2], 8).error() == errc::bad_alignment);
  CHECK(pv::make(area[0], area[1], area[2] + 2, 8).error() == errc::bad_alignment);
  CHECK(pv::make(nullptr, area[1], area[2], 8).error() == errc::bad_alignment);
  CHECK(pv::make(area[0], nullptr, area[2], 8).error() == errc::bad_alignment);
  CHECK(pv::make(area[0], area[1], nullptr, 8).error() == errc::bad_alignment);
  CHECK(pv::make(area[0] + 16, area[1] + 4, area[2] + 4, 8).has_value());  // exactly aligned
}

TEST_CASE("geometry rejects every invalid queue size", "[spec][geometry]") {
  for (std::uint32_t n = 0; n <= 70000; ++n) {
    const bool pow2 = n != 0 && (n & (n - 1)) == 0;
    CHECK(virtq::split_geometry::make(n).has_value() == (pow2 && n <= 32768));
    CHECK(virtq::packed_geometry::make(n).has_value() == (n >= 1 && n <= 32768));
  }
}

TEST_CASE("every errc has a message and a category", "[error]") {
  for (std::size_t i = 0; i < virtq::errc_count; ++i) {
    const auto e = static_cast<errc>(i);
    const std::error_code ec = e;  // is_error_code_enum
    CHECK(ec.category().name() == std::string("virtq"));
    CHECK(ec.message() != "unknown virtq error");
  }
  CHECK_FALSE(virtq::is_fatal(errc::empty));
  CHECK_FALSE(virtq::is_fatal(errc::no_space));
  CHECK(virtq::is_fatal(errc::chain_loop));
}
