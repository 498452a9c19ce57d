import Foundation
import XCTest
import CAllocCount
import RNNDistributed
@testable import RNNTrain

/// A whole training step of `rnn-dp train` (batch, forward, BPTT, the exchange, clipping, the
/// optimizer) allocates nothing once the first steps have sized the workspaces. Logging,
/// evaluation and checkpoint steps are excluded (they format text and write files); so is the
/// final step, which logs.
final class StepAllocationTests: XCTestCase {
    /// Heap allocations of this thread in each step (index: step number).
    func allocationsPerStep(_ training: String, model: String) throws -> [Int: Int] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-alloc-\(UUID().uuidString)").path
        let text = "\(dir).txt"
        _ = FileManager.default.createFile(atPath: text, contents: Data(String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 60).utf8))
        let yaml = "data: {kind: text, path: \(text)}\nmodel: {\(model)}\ntraining: {steps: 9, global_batch_size: 4, sequence_length: 12, \(training)}\noutput: {log_every: 1000}\n"
        let config = try ConfigLoader.parse(yaml: yaml, name: "alloc.yaml", overrides: ["output.directory=\(dir)"])
        let trainer = Trainer(config: config, comm: SingleProcessCommunicator(), console: Console(rank: 1, size: 1))
        var counts: [Int: Int] = [:]
        var current = 0
        trainer.stepObserver = { step in
            if current > 0 { counts[current] = alloc_count_stop() }
            current = step
            alloc_count_start()
        }
        try trainer.run()
        _ = alloc_count_stop()
        return counts
    }

    func assertNoAllocations(_ training: String, model: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let counts = try allocationsPerStep(training, model: model)
        XCTAssertEqual(counts.count, 8, "steps 1-8 observed", file: file, line: line)
        for step in 3...8 {
            XCTAssertEqual(counts[step], 0, "step \(step) allocated (\(training) / \(model)); all steps: \(counts.sorted { $0.key < $1.key })", file: file, line: line)
        }
    }

    func testAStepAllocatesNothing() throws {
        try assertNoAllocations("optimizer: {name: adam}", model: "cell: lstm, hidden_size: 16, layers: 2")
        try assertNoAllocations("optimizer: {name: sgd, momentum: 0.9}, clip_norm: 1.0", model: "cell: gru, hidden_size: 12, batch_norm: true")
        try assertNoAllocations("accumulate_steps: 2, clip_value: 0.5", model: "cell: rnn, hidden_size: 10, layer_norm: true")
        // H = 16, not 8: OpenBLAS 0.3.21's AVX-512 small-matrix kernel (sgemm_small_kernel_nn)
        // mallocs a 1 KiB scratch per call for some tiny shapes, e.g. (4 x 32) x (32 x 8); that is
        // inside the library and does not happen at the benchmark's sizes.
        try assertNoAllocations("stateful: true, optimizer: {name: rmsprop}", model: "cell: lstm, hidden_size: 16")
        // Dropout's factors and dropped copies, and the embedding's rows, live in workspaces too.
        try assertNoAllocations("optimizer: {name: adamw}", model: "cell: gru, hidden_size: 16, layers: 2, embedding_size: 16, tie_weights: true, dropout: 0.3, input_dropout: 0.1, head_dropout: 0.2")
    }

    /// The counter itself: a step that does allocate is seen (truncated BPTT slices the batch).
    func testTheCounterSeesAnAllocatingStep() throws {
        let counts = try allocationsPerStep("bptt_length: 4", model: "cell: lstm, hidden_size: 8")
        XCTAssertGreaterThan(counts[5] ?? 0, 0)
    }
}
