import XCTest
import CAllocCount
@testable import RNN

/// "No allocation inside the step": after a first step has sized the workspaces, a training step
/// of the numerics (forward, loss, backpropagation through time, clipping, the optimizer) makes no
/// heap allocation at all. CAllocCount counts every malloc-family call of this thread.
final class AllocationTests: XCTestCase {
    /// Heap allocations made by `body` on this thread.
    static func allocations(_ body: () -> Void) -> Int {
        alloc_count_start()
        body()
        return alloc_count_stop()
    }

    func testTheCounterSeesAllocations() {
        var kept: [[Float]] = []
        let n = Self.allocations { for i in 0..<5 { kept.append([Float](repeating: Float(i), count: 100 + i)) } }
        XCTAssertGreaterThanOrEqual(n, 5)
        XCTAssertEqual(kept.count, 5)
        XCTAssertEqual(Self.allocations {}, 0)
    }

    func stepAllocations(_ spec: ModelSpec, diagnostics: Bool = false, lengths: [Int]? = nil) -> [Int] {
        let net = Network<Float>(spec: spec)
        net.initializeParameters(seed: 3)
        net.collectDiagnostics = diagnostics
        var batch = GradientCheckTests.batch(spec, T: 9, B: 5, seed: 4)
        if let lengths {
            batch = Batch.packing(lengths: lengths, steps: 9, tokens: batch.tokens, features: batch.features, featureWidth: spec.input.width,
                                  targetClasses: batch.targetClasses, targetValues: batch.targetValues, targetWidth: spec.outputSize,
                                  everyStep: spec.output == .everyStep).batch
        }
        let adam = Adam<Float>(count: net.layout.count)
        var counts: [Int] = []
        for _ in 0..<3 {
            counts.append(Self.allocations {
                net.gradients.zero()
                net.lossAndGradient(batch)
                net.normalizeGradients(globalSamples: 5, globalSteps: batch.validSteps)
                clipGradientNorm(net.gradients, maxNorm: 1)
                adam.step(parameters: net.parameters, gradients: net.gradients, learningRate: 1e-3)
            })
        }
        return counts
    }

    func testNetworkStepAllocatesNothing() {
        for cell in [CellKind.rnn, .lstm, .gru] {
            for variant in 0..<4 {
                var spec = ModelSpec(cell: cell, input: .tokens(vocabulary: 7), hiddenSize: 10, layers: 2,
                                     outputSize: 7, loss: .crossEntropy)
                spec.layerNorm = variant == 1
                spec.batchNorm = variant == 2
                spec.learnedInitialState = variant == 3
                let counts = stepAllocations(spec, diagnostics: variant == 3)
                XCTAssertEqual(Array(counts.dropFirst()), [0, 0], "\(cell) variant \(variant): \(counts)")
            }
        }
    }

    /// The same for packed batches of unequal lengths, uni- and bidirectional, every and last step.
    func testPackedStepAllocatesNothing() {
        for cell in [CellKind.lstm, .gru] {
            for output in [OutputMode.everyStep, .lastStep] {
                for bidirectional in [false, true] {
                    var spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 6, layers: 2, outputSize: 2,
                                         output: output, loss: .mse)
                    spec.bidirectional = bidirectional
                    spec.dropout = 0.2
                    let counts = stepAllocations(spec, lengths: [3, 9, 1, 6, 6])
                    XCTAssertEqual(Array(counts.dropFirst()), [0, 0], "\(cell) \(output) bidirectional \(bidirectional): \(counts)")
                }
            }
        }
    }
}
