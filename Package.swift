// swift-tools-version:5.9
// rnn-dp: data-parallel recurrent network training on MPI.
// Dependency direction: rnn-dp -> RNNTrain -> {RNNDistributed, RNNData, RNN}; RNN and RNNData know
// nothing of MPI. See docs/ARCHITECTURE.md.
import PackageDescription

// Generic numerics (Network<S>, the optimizers) are specialized for Float in the modules that use
// them only with cross-module optimization; without it their loops run through generic witnesses.
let optimized: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]
#if arch(x86_64)
// The elementwise kernels vectorize 8 floats wide with AVX2 and FMA (any x86-64 since Haswell, 2013;
// the x86-64-v3 level), and FastMath's polynomials use fused multiply-adds (RNN_DP_FMA). Set
// RNN_DP_PORTABLE=1 when building for older CPUs (separate multiplies and adds: other bits).
let vector: [SwiftSetting] = Context.environment["RNN_DP_PORTABLE"] == nil
    ? [.unsafeFlags(["-target-cpu", "haswell"], .when(configuration: .release)),
       .define("RNN_DP_FMA", .when(configuration: .release))] : []
#else
let vector: [SwiftSetting] = []
#endif

let package = Package(
    name: "rnn-dp",
    products: [
        .executable(name: "rnn-dp", targets: ["rnn-dp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        // System libraries, found through pkg-config (Debian: libopenmpi-dev, libopenblas-dev).
        .systemLibrary(name: "COpenMPI", path: "Sources/COpenMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // Thin C shim: plain C functions over MPI; mpi.h never reaches Swift.
        .target(name: "CMPI", dependencies: ["COpenMPI"], path: "Sources/CMPI"),
        // Our packed sgemm kernel for the per-step recurrent products (issue 17): plain C, AVX-512
        // and AVX2+FMA chosen at run time, so the binary runs on any x86-64.
        .target(name: "CRecurrent", path: "Sources/CRecurrent",
                cSettings: [.unsafeFlags(["-O2"], .when(configuration: .release))]),
        // Numerics: buffers, BLAS, cells, head, losses, BPTT, optimizers. No MPI.
        .target(name: "RNN", dependencies: ["COpenBLAS", "CRecurrent"], swiftSettings: optimized + vector),
        // Datasets and deterministic global sampling. No MPI.
        .target(name: "RNNData", dependencies: ["RNN"]),
        // Communicator protocol, MPI and single-process implementations, gradient reduction.
        .target(name: "RNNDistributed", dependencies: ["CMPI"], swiftSettings: optimized + vector),
        // Config, training loop, checkpoints/safetensors, metrics.
        .target(name: "RNNTrain", dependencies: [
            "RNN", "RNNData", "RNNDistributed",
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: optimized + vector),
        .executableTarget(name: "rnn-dp", dependencies: [
            "RNNTrain", "RNNDistributed", "RNNData", "RNN",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Test support: counts heap allocations (overrides malloc in the test executable only).
        .target(name: "CAllocCount", path: "Tests/Support/CAllocCount"),
        // Test support: prints the margin of a learning or tolerance test (scripts/test.sh lists them).
        .target(name: "Margins", path: "Tests/Support/Margins"),
        .testTarget(name: "RNNTests", dependencies: ["RNN", "CAllocCount", "Margins"], exclude: ["Fixtures"]),
        .testTarget(name: "RNNDataTests", dependencies: ["RNNData"]),
        .testTarget(name: "RNNDistributedTests", dependencies: ["RNNDistributed", "RNN"]),
        .testTarget(name: "RNNTrainTests", dependencies: ["RNNTrain", "RNNData", "RNNDistributed", "RNN", "CAllocCount", "Margins"], exclude: ["Fixtures"]),
        // Launches `mpirun -np N rnn-dp ...` on the built executable.
        .testTarget(name: "MultiRankTests", dependencies: ["RNNTrain", "rnn-dp", "Margins"]),
    ]
)
