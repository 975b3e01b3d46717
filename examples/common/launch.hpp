#pragma once
/// Runs an example's body on every rank of the backend named on the command line:
/// "local" starts `world` threads in this process; "mpi" runs on the MPI world, and "gloo" on Gloo
/// over TCP with the ranks meeting through MPI (start either with `mpirun -np N`).

#include <functional>
#include <memory>
#include <string>

#include "tp/comm/local_communicator.hpp"
#ifdef TP_HAS_MPI
#include "tp/comm/mpi_communicator.hpp"
#endif
#if defined(TP_HAS_MPI) && defined(TP_HAS_GLOO)
#include "tp/comm/gloo_communicator.hpp"
#endif

namespace tp::examples {

inline void launch(const std::string& backend, int world, int& argc, char**& argv,
                   const std::function<void(std::shared_ptr<Communicator>)>& body) {
  if (backend == "local") return run_local(world, body);
#ifdef TP_HAS_MPI
  if (backend == "mpi") {
    MpiEnvironment env(argc, argv);
    body(std::make_shared<MpiCommunicator>());
    return;
  }
#endif
#if defined(TP_HAS_MPI) && defined(TP_HAS_GLOO)
  if (backend == "gloo") {
    MpiEnvironment env(argc, argv);
    MpiCommunicator bootstrap;
    body(std::make_shared<GlooCommunicator>(bootstrap));
    return;
  }
#endif
  (void)argc;
  (void)argv;
  TP_THROW(InvalidArgument, "unknown or unavailable backend '{}' (this build has: local{})", backend,
#ifdef TP_HAS_MPI
           ", mpi"
#else
           ""
#endif
#if defined(TP_HAS_MPI) && defined(TP_HAS_GLOO)
           ", gloo"
#else
           ""
#endif
  );
}

}  // namespace tp::examples
