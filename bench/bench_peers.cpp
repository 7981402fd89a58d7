// SPDX-License-Identifier: MIT
// bench/bench_peers.cpp -- boost::lockfree::spsc_queue alone, for machines without DPDK.
// The same bodies run in bench_dpdk_compare next to rte_ring and our queues.
#include "peer_rings.hpp"

VIRTQ_BENCH_REGISTER_BOOST();
