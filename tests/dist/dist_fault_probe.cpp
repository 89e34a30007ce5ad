// A data-parallel job in which rank 1 fails, for the fault tests (tests/CMakeLists.txt runs it under
// mpirun and checks the job's output):
//   dist_fault_probe hang   rank 1 stops answering at step 3: rank 0 must stop with a DistError
//                           naming rank 1 within the timeout (2 s), and the job ends
//   dist_fault_probe kill   rank 1 dies (SIGKILL) at step 3: the job must end, not hang
//   dist_fault_probe throw  rank 1 throws at step 3: the job ends with rank 1's error
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include <shiftq/shiftq.hpp>

int main(int argc, char** argv) {
  using namespace shiftq;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "hang" && mode != "kill" && mode != "throw") {
    std::fprintf(stderr, "usage: dist_fault_probe hang|kill|throw\n");
    return 2;
  }
  dist::init();
  dist::set_timeout(2.0);
  try {
    Generator gen(1);
    nn::Linear model(nn::LinearOptions(8, 4), gen);
    dist::broadcast_parameters(model);
    dist::DataParallel dp(model);
    optim::SGD opt(model.named_parameters(), optim::SGDOptions(0.1));
    for (int step = 0; step < 10; ++step) {
      if (dist::rank() == 1 && step == 3) {
        if (mode == "hang") std::this_thread::sleep_for(std::chrono::seconds(120));
        if (mode == "kill") std::raise(SIGKILL);
        if (mode == "throw") throw IOError("rank 1 could not read its data");
      }
      opt.zero_grad();
      dp.backward(sum(model.forward(Tensor::randn({4, 8}, gen))));
      opt.step();
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error on rank %d: %s\n", dist::rank(), e.what());
    std::fflush(stderr);
    dist::abort(1);
  }
  dist::finalize();
  std::printf("finished without a fault\n");
  return 0;
}
