/// The seed notebook's example, X = [[0,1,2,3],[4,5,6,7]] times A = [[10,14],[11,15],[12,16],[13,17]],
/// through column parallelism (A split by columns, results concatenated) and row parallelism
/// (A split by rows, X by columns, results summed). Both must print [[74, 98], [258, 346]].
///
///   mpirun -np 2 seed_matmul            # one process per rank
///   seed_matmul --backend local --world 2

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/tp.hpp>

#include <array>


namespace {

std::string format_matrix(tp::ConstView<float> m) {
  std::string s = "[";
  for (std::int64_t r = 0; r < m.rows; ++r) {
    s += r ? ", [" : "[";
    for (std::int64_t c = 0; c < m.cols; ++c) s += fmt::format("{}{:g}", c ? ", " : "", m(r, c));
    s += "]";
  }
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The seed's 2x4 by 4x2 product through column and row parallelism"};
  std::string backend = "mpi";
  int world = 2;
  app.add_option("--backend", backend, "local, mpi or gloo")->check(CLI::IsMember({"local", "mpi", "gloo"}));
  app.add_option("--world", world, "ranks in this process (local, or gloo without mpirun)")->check(CLI::Range(1, 2));
  CLI11_PARSE(app, argc, argv);

  bool ok = true;
  try {
    tp::launch({.backend = backend, .world = world}, argc, argv, [&](std::shared_ptr<tp::Communicator> comm) {
      tp::Tensor<float, tp::Cpu> x(2, 4), a_t(2, 4);  // layers store the weight as A^T: [out, in]
      for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 4; ++c) {
          x(r, c) = static_cast<float>(4 * r + c);
          a_t(r, c) = static_cast<float>(10 + c + 4 * r);
        }
      tp::Context<> ctx(comm);
      tp::Tensor<float, tp::Cpu> y(2, 2);
      ctx.device->gemm(tp::Op::n, tp::Op::t, 1.f, x.view(), a_t.view(), 0.f, y.view());

      tp::ColumnParallelLinear<float> column(ctx, 4, 2, {.bias = false, .gather_output = true});
      tp::RowParallelLinear<float> row(ctx, 4, 2, {.bias = false, .input_is_parallel = false});
      column.load_full(a_t);
      row.load_full(a_t);
      const auto& y_col = column.forward(x);
      const auto& y_row = row.forward(x);
      // Every rank's slices, gathered to rank 0 so the lines print in order.
      const std::array<std::int64_t, 4> mine{column.output_range().begin, column.output_range().end,
                                             row.input_range().begin, row.input_range().end};
      std::vector<std::int64_t> all(4 * comm->size());
      comm->all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
      if (comm->rank() == 0)
        for (int r = 0; r < comm->size(); ++r)
          fmt::print("rank {}: column part A[:, {}:{}], row part A[{}:{}, :]\n", r, all[4 * r], all[4 * r + 1],
                     all[4 * r + 2], all[4 * r + 3]);
      if (comm->rank() == 0) {
        fmt::print("unsharded    X A = {}\n", format_matrix(y.view()));
        fmt::print("column-parallel  = {}   (concatenated over {} ranks)\n", format_matrix(y_col.view()), comm->size());
        fmt::print("row-parallel     = {}   (summed over {} ranks)\n", format_matrix(y_row.view()), comm->size());
      }
      const float want[2][2] = {{74, 98}, {258, 346}};
      for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c)
          if (y(r, c) != want[r][c] || y_col(r, c) != want[r][c] || y_row(r, c) != want[r][c]) ok = false;
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "seed_matmul: {}\n", e.what());
    return 1;
  }
  if (!ok) fmt::print(stderr, "seed_matmul: a product differs from [[74, 98], [258, 346]]\n");
  return ok ? 0 : 1;
}
