// The incident as a test (shared/guide/rx-pool.md): a device keeps sending to two consumers; the
// FTP passive-data consumer (port 3034) stops reading and keeps its buffers. Its sender keeps
// sending until its TCP window (more frames than the ring has buffers) is full.
//  * Without the reserve, every buffer ends up with the FTP consumer, the ring empties, the
//    healthy consumer starves too, and the detector fires within its window naming the holder.
//  * With the reserve, reception goes on: the healthy consumer gets every frame (copies once the
//    reserve is reached), nothing is lost, no starvation.
#include <catch2/catch.hpp>

#include <chrono>
#include <deque>

#include "test_rx_common.hpp"

using namespace virtq;
using namespace virtq_test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint16_t http_port = 80;
constexpr std::uint16_t ftp_port = 3034;
constexpr std::uint32_t ring_size = 64;
constexpr std::size_t ftp_window = 80;  // unread FTP frames its sender allows
constexpr int steps = 600;              // 1 ms each
constexpr int ftp_stops_at = 100;       // the FTP server stops reading here
constexpr auto window = 100ms;          // starvation_after

struct outcome {
  std::size_t http_sent = 0, http_received = 0, ftp_sent = 0, ftp_received = 0;
  std::size_t nic_drops = 0;  // frames the device had no buffer for
  std::size_t copies = 0;
  std::vector<starvation_report> reports;
  std::vector<int> report_steps;
  int starving_from = -1;  // first step with nothing posted
  rx_stats stats;
  bool conserved_every_step = true;
};

template <class Layout>
outcome run(bool reserve) {
  outcome out;
  rx_queue_options o;
  o.name = "eth1-rx0";
  o.copy_reserve = reserve;
  o.reserve = 8;
  o.bounce_buffers = 32;
  o.repost_batch = 8;
  o.starvation_after = window;
  int step = 0;
  o.on_starvation = [&](const starvation_report& r) {
    out.reports.push_back(r);
    out.report_steps.push_back(step);
  };
  rx_rig<Layout> rig(ring_size, ring_size, o, 1514);
  const holder_id http = rig.rxq.register_holder("http:80");
  const holder_id ftp = rig.rxq.register_holder("ftp-data:3034");
  REQUIRE(rig.rxq.refill().has_value());

  std::deque<typename rx_rig<Layout>::packet> ftp_unread;
  std::uint64_t seq = 0;
  for (step = 0; step < steps; ++step) {
    // The device: two frames per flow per millisecond; the FTP sender respects its window.
    // The upload is the busy flow: its frames come first.
    for (int k = 0; k < 2; ++k) {
      if (ftp_unread.size() + 1 <= ftp_window || step < ftp_stops_at) {
        const auto ff = make_frame(ftp_port, seq++);
        ++out.ftp_sent;
        if (rig.nic.send(ff) != errc::ok) ++out.nic_drops;
      }
      const auto hf = make_frame(http_port, seq++);
      ++out.http_sent;
      if (rig.nic.send(hf) != errc::ok) ++out.nic_drops;
    }
    rig.nic.flush();
    // The driver and the two consumers.
    for (auto& p : rig.poll_all()) {
      if (p.resources_low()) ++out.copies;
      if (frame_port(p.data()) == http_port) {
        CHECK(p.buffer.pass_to(http) == errc::ok);
        ++out.http_received;  // read and released at once (p goes out of scope)
      } else {
        REQUIRE(frame_port(p.data()) == ftp_port);
        CHECK(p.buffer.pass_to(ftp) == errc::ok);
        ++out.ftp_received;
        if (step >= ftp_stops_at) ftp_unread.push_back(std::move(p));  // never read again
      }
    }
    REQUIRE(rig.rxq.refill().has_value());
    rig.rxq.check_starvation();  // the watchdog: with an empty ring no poll would come
    if (out.starving_from < 0 && rig.rxq.posted() == 0) out.starving_from = step;
    if (!rig.rxq.census().conserved) out.conserved_every_step = false;
    rig.time.advance(1ms);
  }
  out.stats = rig.rxq.stats();
  return out;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("incident: without the reserve the detector names the FTP consumer",
                        "[rx_incident]", all_layouts) {
  const outcome r = run<TestType>(false);
  CHECK(r.conserved_every_step);
  REQUIRE(r.starving_from >= ftp_stops_at);
  // One report, within the window (+1 step of granularity) after the ring emptied.
  REQUIRE(r.reports.size() == 1);
  CHECK(r.report_steps[0] >= r.starving_from + 100);
  CHECK(r.report_steps[0] <= r.starving_from + 101);
  const starvation_report& rep = r.reports[0];
  CHECK(rep.queue == "eth1-rx0");
  CHECK(rep.posted == 0);
  CHECK(rep.held == ring_size);
  REQUIRE_FALSE(rep.census.holders.empty());
  CHECK(rep.census.holders[0].name == "ftp-data:3034");
  CHECK(rep.census.holders[0].count == ring_size);  // every buffer of the pool
  CHECK(rep.census.holders[0].oldest >= window);
  CHECK(rep.census.conserved);
  // The healthy consumer starved with it: frames were lost at the device.
  CHECK(r.nic_drops > 0);
  CHECK(r.http_received < r.http_sent);
  CHECK(r.stats.starvation_reports == 1);
  CHECK(r.stats.time_starved >= window);
}

TEMPLATE_LIST_TEST_CASE("incident: with the reserve reception goes on and nothing is lost",
                        "[rx_incident]", all_layouts) {
  const outcome r = run<TestType>(true);
  CHECK(r.conserved_every_step);
  CHECK(r.reports.empty());
  CHECK(r.starving_from < 0);
  CHECK(r.nic_drops == 0);
  CHECK(r.http_received == r.http_sent);  // every healthy frame arrived
  CHECK(r.ftp_received == r.ftp_sent);    // and every FTP frame (the stuck ones as copies)
  CHECK(r.http_sent == steps * 2);
  CHECK(r.copies > 0);
  CHECK(r.stats.packets_copied == r.copies);
  CHECK(r.stats.packets_lent + r.stats.packets_copied == r.http_sent + r.ftp_sent);
  CHECK(r.stats.copy_failures == 0);
  CHECK(r.stats.min_posted >= 8);
  CHECK(r.stats.starvation_reports == 0);
  CHECK(r.stats.time_starved == 0ns);
}
