#pragma once
/// Row-major matrices: `MatrixView` is a non-owning window (pointer, rows, cols, leading
/// dimension) into host or device memory; `Tensor` owns its memory through a device policy.
/// Two dimensions cover linear layers; attention works on [tokens, heads * head_dim].

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp {

template <class T>
struct MatrixView {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t ld = 0;  ///< elements between the starts of consecutive rows, >= cols

  constexpr MatrixView() = default;
  constexpr MatrixView(T* d, std::int64_t r, std::int64_t c) : MatrixView(d, r, c, c) {}
  /// Checked: a negative shape, rows that overlap (ld < cols), a shape whose extent overflows
  /// int64, or no data behind a nonzero shape would let every later op read or write garbage.
  constexpr MatrixView(T* d, std::int64_t r, std::int64_t c, std::int64_t l) : data(d), rows(r), cols(c), ld(l) {
    std::int64_t extent = 0;
    TP_CHECK(r >= 0 && c >= 0, "view shape {}x{} is negative", r, c);
    TP_CHECK(l >= c || r <= 1, "view of {}x{} has leading dimension {} < {} columns: its rows would overlap", r, c, l,
             c);
    TP_CHECK(!__builtin_mul_overflow(r, l > c ? l : c, &extent),
             "view of {}x{} with leading dimension {} spans more elements than int64 counts", r, c, l);
    TP_CHECK(d != nullptr || r == 0 || c == 0, "view of {}x{} has no data (a null pointer)", r, c);
  }
  /// A view of mutable elements converts to a view of const ones.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr MatrixView(MatrixView<U> v) : data(v.data), rows(v.rows), cols(v.cols), ld(v.ld) {}

  constexpr std::int64_t size() const { return rows * cols; }
  constexpr bool empty() const { return rows == 0 || cols == 0; }
  constexpr bool contiguous() const { return ld == cols || rows <= 1; }
  /// Host memory only.
  constexpr T& operator()(std::int64_t r, std::int64_t c) const { return data[r * ld + c]; }
  constexpr T* row(std::int64_t r) const { return data + r * ld; }

  /// The sub-matrix of `nr` x `nc` elements starting at (r0, c0).
  MatrixView block(std::int64_t r0, std::int64_t c0, std::int64_t nr, std::int64_t nc) const {
    TP_CHECK(r0 >= 0 && c0 >= 0 && nr >= 0 && nc >= 0 && r0 + nr <= rows && c0 + nc <= cols,
             "block [{}:{}, {}:{}] is outside a {}x{} matrix", r0, r0 + nr, c0, c0 + nc, rows, cols);
    return {data + r0 * ld + c0, nr, nc, ld};
  }
  MatrixView rows_range(std::int64_t r0, std::int64_t nr) const { return block(r0, 0, nr, cols); }
  MatrixView cols_range(std::int64_t c0, std::int64_t nc) const { return block(0, c0, rows, nc); }
};

template <class T>
using ConstView = MatrixView<const T>;

/// A read-only view parameter that does not take part in template argument deduction, so that
/// `f(MatrixView<float> in, MatrixView<float> out)` binds `In<T>` from `out` alone.
template <class T>
using In = ConstView<std::type_identity_t<T>>;

/// An owning row-major matrix in `Device` memory. Moves are cheap; copies are explicit
/// (`Device::copy`). Shrinking keeps the allocation, so buffers reused across steps do not churn.
template <class T, class Device>
class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Device> device, std::int64_t rows, std::int64_t cols) : device_(std::move(device)) {
    resize(rows, cols);
  }
  /// Host devices have a process-wide default instance, so host tensors need no device argument.
  Tensor(std::int64_t rows, std::int64_t cols)
    requires(Device::on_host)
      : Tensor(Device::shared(), rows, cols) {}

  Tensor(Tensor&& o) noexcept { swap(o); }
  Tensor& operator=(Tensor&& o) noexcept {
    Tensor tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor() { release(); }

  /// Sets the shape; contents are unspecified afterwards unless the element count is unchanged.
  void resize(std::int64_t rows, std::int64_t cols) {
    TP_CHECK(rows >= 0 && cols >= 0, "tensor shape {}x{} is negative", rows, cols);
    TP_CHECK(device_ != nullptr, "tensor of {}x{} has no device", rows, cols);
    std::int64_t n = 0;
    TP_CHECK(!__builtin_mul_overflow(rows, cols, &n) &&
                 static_cast<std::uint64_t>(n) <= static_cast<std::uint64_t>(INT64_MAX) / sizeof(T),
             "tensor of {}x{} elements of {} bytes is larger than memory can address", rows, cols, sizeof(T));
    if (n > capacity_) {
      release();
      data_ = device_->template allocate<T>(n);
      capacity_ = n;
    }
    rows_ = rows;
    cols_ = cols;
  }

  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  std::int64_t size() const { return rows_ * cols_; }
  /// Elements allocated. A resize within the capacity keeps the memory (views taken before still
  /// point at it, showing the new contents); one beyond it reallocates, and those views dangle.
  std::int64_t capacity() const { return capacity_; }
  bool empty() const { return size() == 0; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  Device& device() const { return *device_; }
  const std::shared_ptr<Device>& device_ptr() const { return device_; }

  MatrixView<T> view() { return {data_, rows_, cols_}; }
  ConstView<T> view() const { return {data_, rows_, cols_}; }
  operator MatrixView<T>() { return view(); }
  operator ConstView<T>() const { return view(); }

  /// Host memory only.
  T& operator()(std::int64_t r, std::int64_t c)
    requires(Device::on_host)
  {
    return data_[r * cols_ + c];
  }
  const T& operator()(std::int64_t r, std::int64_t c) const
    requires(Device::on_host)
  {
    return data_[r * cols_ + c];
  }

 private:
  void swap(Tensor& o) noexcept {
    std::swap(device_, o.device_);
    std::swap(data_, o.data_);
    std::swap(rows_, o.rows_);
    std::swap(cols_, o.cols_);
    std::swap(capacity_, o.capacity_);
  }
  void release() noexcept {
    if (data_ != nullptr) device_->deallocate(data_, capacity_);
    data_ = nullptr;
    capacity_ = 0;
  }

  std::shared_ptr<Device> device_;
  T* data_ = nullptr;
  std::int64_t rows_ = 0, cols_ = 0, capacity_ = 0;
};

}  // namespace tp
