// SPDX-License-Identifier: MIT
// tests/property.hpp -- drawing values for property tests at full size.
//
// rapidcheck scales gen::inRange (and element, oneOf) by the test case's size, which starts at 0
// and grows to kNominalSize over a run: early cases would draw almost only the first step kinds
// and the smallest counts (a step mix of 8 kinds reaches its last kind only near the end of a
// run). Choices drawn through these are uniform from the first case on and still shrink toward
// the low end.
#pragma once

#include <rapidcheck.h>

#include <utility>

namespace virtq_test {

template <class G>
auto at_full_size(G g) {
  return rc::gen::resize(rc::kNominalSize, std::move(g));
}
template <class T>
auto uniform_gen(T lo, T hi) {
  return at_full_size(rc::gen::inRange<T>(lo, hi));
}
/// A value in [lo, hi), uniform whatever the case's size.
template <class T>
T uniform(T lo, T hi) {
  return *uniform_gen<T>(lo, hi);
}

}  // namespace virtq_test
