// SPDX-License-Identifier: MIT
// tests/testpmd_child.hpp -- dpdk-testpmd as a child process for the interop tests
// (dpdk_vhost_user.cpp: our device, dpdk_vhost_device.cpp: our driver): found on PATH, spawned
// with its stdin a pipe (interactive commands) and its output in a log file, stopped by its pid
// only. Every wait is bounded.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "vhost_user_backend.hpp"  // vhost::unique_fd

extern char** environ;

namespace testpmd {

/// The dpdk-testpmd on PATH, or "" (the interop cases then skip).
inline std::string find() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/usr/local/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string p = dir + "/dpdk-testpmd";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

/// testpmd's command line up to its own options: both lcores on CPU 0 (the test thread takes
/// CPU 1), no hugepages (EAL backs its memory with one memfd, which vhost-user can share), its
/// own runtime directory `prefix`, one virtual device, then interactive mode and a pool small
/// enough for 128-256 MB. Callers append forward mode, burst and the rest.
inline std::vector<std::string> command_line(const std::string& testpmd, const std::string& prefix,
                                             const std::string& vdev) {
  return {testpmd,
          "--lcores",
          "0@0,1@0",
          "--no-huge",
          "-m",
          "256",
          "--no-pci",
          "--file-prefix",
          prefix,
          "--vdev",
          vdev,
          "--",
          "-i",
          "--no-mlockall",
          "--total-num-mbufs=16384"};
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A spawned child with its stdin a pipe and stdout + stderr in `log`; killed (SIGTERM, then
/// SIGKILL) by its pid when still running at destruction.
class child {
 public:
  child(const std::vector<std::string>& argv, const std::string& log) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    stdin_.reset(fds[1]);
    vhost::unique_fd rd(fds[0]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, rd.get(), 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("posix_spawn: " + std::string(std::strerror(rc)));
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  ~child() {
    if (pid_ > 0 && !wait_exit(std::chrono::milliseconds(0))) kill_now();
  }

  bool write(const std::string& s) {
    return stdin_ && ::write(stdin_.get(), s.data(), s.size()) == static_cast<ssize_t>(s.size());
  }
  void close_stdin() { stdin_.reset(); }
  bool running() { return pid_ > 0 && !wait_exit(std::chrono::milliseconds(0)); }

  /// True once the child has exited (reaped), within `timeout`.
  bool wait_exit(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return true;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) {
        pid_ = -1;
        return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  /// SIGTERM, then SIGKILL: only this child, by its pid.
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (wait_exit(std::chrono::milliseconds(2000))) return;
    ::kill(pid_, SIGKILL);
    (void)wait_exit(std::chrono::milliseconds(2000));
  }

 private:
  pid_t pid_ = -1;
  vhost::unique_fd stdin_;
};

}  // namespace testpmd
