// Result<T>: how the I/O layer reports errors. Either a value or a
// std::error_code; never an exception on the I/O path itself.
//
// The error convention of tideloop's I/O (sockets, AsyncFd, name resolution):
//  - a failing system call yields its errno as a std::error_code in
//    std::system_category(): `r.error().value() == ECONNREFUSED`, and
//    `r.error() == std::errc::connection_refused` both hold;
//  - an early end of stream in read_exact() is asio::error::eof (category
//    "asio.misc"), name resolution failures are Asio's netdb/addrinfo codes;
//  - an operation pending when the runtime shuts down (or started after)
//    fails with std::errc::operation_canceled (ECANCELED);
//  - value() on an error throws std::system_error carrying the same code, so
//    code that prefers exceptions writes `co_await s.read(buf)).value()`.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace tideloop {

inline std::error_code errno_code(int e) noexcept {
  return {e, std::system_category()};
}
inline std::error_code last_errno_code() noexcept {
  return errno_code(errno);
}

template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, std::error_code>,
                "Result<std::error_code> would be ambiguous");

 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(std::error_code ec) : v_(std::in_place_index<1>, ec) {}     // NOLINT
  Result(std::errc e) : Result(std::make_error_code(e)) {}           // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  // The error, or a default (success) code when ok().
  std::error_code error() const noexcept { return ok() ? std::error_code() : std::get<1>(v_); }

  // The value; throws std::system_error(error()) otherwise.
  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::move(std::get<0>(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  void check() const {
    if (!ok()) throw std::system_error(std::get<1>(v_));
  }
  std::variant<T, std::error_code> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(std::error_code ec) : ec_(ec) {}                // NOLINT
  Result(std::errc e) : ec_(std::make_error_code(e)) {}  // NOLINT
  bool ok() const noexcept { return !ec_; }
  explicit operator bool() const noexcept { return ok(); }
  std::error_code error() const noexcept { return ec_; }
  void value() const {
    if (ec_) throw std::system_error(ec_);
  }

 private:
  std::error_code ec_;
};

}  // namespace tideloop
