// File helpers shared by the tests that read and write files: a fresh directory per test, and raw
// byte I/O.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include <shiftq/core/error.hpp>

namespace shiftq::testing {

using Bytes = std::vector<unsigned char>;

// A fixture with a fresh directory per test, <TempDir>/shiftq_<suite>_<test>_<pid>, removed
// afterwards (made writable first, for tests that take permissions away).
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           (std::string("shiftq_") + info->test_suite_name() + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

inline void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

inline Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Expects load() to throw IOError whose message names `path` and contains `what` (when given);
// `call` names the loader in failure messages.
template <class Load>
void expect_file_io_error(const char* call, Load&& load, const std::string& path, const std::string& what = "") {
  try {
    load();
    ADD_FAILURE() << call << "(" << path << ") did not throw";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    if (!what.empty()) {
      EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << call << "(" << path << ") threw a non-IOError: " << e.what();
  }
}

}  // namespace shiftq::testing
