// A downstream program: proves that virtq's headers are found, that virtq::virtq carries
// C++20, and that the public header is warning-clean under -Wall -Wextra -Wconversion ...
#include <virtq/spec.hpp>

#include <cstdio>

static_assert(sizeof(virtq::split::desc) == 16);
static_assert(sizeof(virtq::packed::desc) == 16);
static_assert(virtq::need_event(0, 1, 0));

int main() {
  const auto geometry = virtq::split_geometry::make(256, 4096);
  if (!geometry || geometry->total != 10246) {
    std::puts("consumer: unexpected split geometry");
    return 1;
  }
  std::printf("consumer: split ring of 256 entries needs %zu bytes\n", geometry->total);
  return 0;
}
