import XCTest
@testable import RNN
import Margins

final class TrainingTests: XCTestCase {
    /// A tiny model memorizes one batch: the loss falls from about ln V to near zero.
    func testTinyModelOverfitsOneBatch() {
        let spec = ModelSpec(input: .tokens(vocabulary: 6), hiddenSize: 24, layers: 2, outputSize: 6, loss: .crossEntropy)
        let net = Network<Float>(spec: spec)
        net.initializeParameters(seed: 11)
        let batch = GradientCheckTests.batch(spec, T: 8, B: 4, seed: 5)
        let sgd = SGD<Float>(count: net.layout.count, momentum: 0.9)
        let first = net.loss(batch).mean
        XCTAssertEqual(first, log(6.0), accuracy: 0.3)
        var last = first
        for _ in 0..<400 {
            net.gradients.zero()
            last = net.lossAndGradient(batch).mean
            net.normalizeGradients(globalSamples: 4, steps: 8)
            clipGradientNorm(net.gradients, maxNorm: 5)
            sgd.step(parameters: net.parameters, gradients: net.gradients, learningRate: 0.5)
        }
        Margin.report("TinyOverfit", "loss after 400 steps", value: Double(net.loss(batch).mean), must: .below, bound: 0.05)
        XCTAssertLessThan(net.loss(batch).mean, 0.05, "started at \(first), last step \(last)")
    }

    /// The data-parallel identity at the level of the numerics: the gradient of a batch equals the
    /// sum of the gradients of its row shards (uneven ones included), so allreduce(sum) / B_global
    /// is the full-batch gradient for any number of ranks.
    func testSplitBatchGradientsSumToFullBatchGradient() {
        let spec = ModelSpec(activation: .tanh, input: .tokens(vocabulary: 7), hiddenSize: 6, layers: 2,
                             outputSize: 7, loss: .crossEntropy)
        let B = 7, T = 5
        let full = GradientCheckTests.batch(spec, T: T, B: B, seed: 9)
        let net = Network<Double>(spec: spec)
        net.initializeParameters(seed: 2)
        net.gradients.zero()
        let fullStats = net.lossAndGradient(full)
        let reference = net.gradients.array
        for n in [2, 3, 4, 7] {
            net.gradients.zero()
            var stats = LossStats()
            for r in 0..<n {
                let rows = (r * B / n)..<((r + 1) * B / n)
                stats += net.lossAndGradient(Self.rows(full, rows, spec: spec))
            }
            XCTAssertEqual(stats.count, fullStats.count)
            XCTAssertEqual(stats.sum, fullStats.sum, accuracy: 1e-10)
            let g = net.gradients.array
            for i in 0..<g.count { XCTAssertEqual(g[i], reference[i], accuracy: 1e-12, "n=\(n) element \(i)") }
        }
    }

    func testSplitBatchIdentityForLastStepDenseInput() {
        for cell in CellKind.allCases {
            let spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 5, layers: 2, outputSize: 2,
                                 output: .lastStep, loss: .mse)
            let B = 5
            let full = GradientCheckTests.batch(spec, T: 4, B: B, seed: 3)
            let net = Network<Double>(spec: spec)
            net.initializeParameters(seed: 4)
            net.gradients.zero()
            net.lossAndGradient(full)
            let reference = net.gradients.array
            net.gradients.zero()
            for rows in [0..<2, 2..<5] { net.lossAndGradient(Self.rows(full, rows, spec: spec)) }
            let g = net.gradients.array
            for i in 0..<g.count { XCTAssertEqual(g[i], reference[i], accuracy: 1e-12, "\(cell) element \(i)") }
        }
    }

    /// Rows `rows` of a time-major batch (inputs and targets of either kind).
    static func rows(_ b: Batch, _ rows: Range<Int>, spec: ModelSpec) -> Batch {
        var out = Batch(batchSize: rows.count, steps: b.steps)
        let I = spec.input.width, O = spec.outputSize
        let targetRows = spec.output == .everyStep ? b.steps : 1
        for t in 0..<b.steps {
            for r in rows {
                if !b.tokens.isEmpty { out.tokens.append(b.tokens[t * b.batchSize + r]) }
                if !b.features.isEmpty { out.features += b.features[((t * b.batchSize + r) * I)..<((t * b.batchSize + r + 1) * I)] }
            }
        }
        for t in 0..<targetRows {
            for r in rows {
                if !b.targetClasses.isEmpty { out.targetClasses.append(b.targetClasses[t * b.batchSize + r]) }
                if !b.targetValues.isEmpty { out.targetValues += b.targetValues[((t * b.batchSize + r) * O)..<((t * b.batchSize + r + 1) * O)] }
            }
        }
        return out
    }

    func testSGDMomentumMatchesTheDocumentedRule() {
        let p = Buffer<Double>([1, 2]), g = Buffer<Double>([0.5, -1])
        let sgd = SGD<Double>(count: 2, momentum: 0.9)
        sgd.step(parameters: p, gradients: g, learningRate: 0.1)  // v = g
        XCTAssertEqual(p.array, [1 - 0.05, 2 + 0.1])
        sgd.step(parameters: p, gradients: g, learningRate: 0.1)  // v = 0.9 g + g = 1.9 g
        XCTAssertEqual(p[0], 1 - 0.05 - 0.1 * 0.95, accuracy: 1e-15)
        XCTAssertEqual(p[1], 2 + 0.1 + 0.1 * 1.9, accuracy: 1e-15)
    }

    func testClipByGlobalNorm() {
        let g = Buffer<Float>([3, 4])
        XCTAssertEqual(clipGradientNorm(g, maxNorm: 1), 5, accuracy: 1e-6)
        XCTAssertEqual(g[0], 0.6, accuracy: 1e-5)
        XCTAssertEqual(g[1], 0.8, accuracy: 1e-5)
        let h = Buffer<Float>([0.3, 0.4])
        clipGradientNorm(h, maxNorm: 1)
        XCTAssertEqual(h.array, [0.3, 0.4])  // below the bound: untouched
    }

    func testLayoutUsesPyTorchNamesAndShapes() {
        let spec = ModelSpec(input: .tokens(vocabulary: 65), hiddenSize: 128, layers: 2, outputSize: 65, loss: .crossEntropy)
        let l = ParameterLayout(spec: spec)
        XCTAssertEqual(l.views.map(\.name), ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
                                             "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1", "rnn.bias_hh_l1",
                                             "head.weight", "head.bias"])
        XCTAssertEqual(l.view("rnn.weight_ih_l0")?.shape, [128, 65])
        XCTAssertEqual(l.view("rnn.weight_ih_l1")?.shape, [128, 128])
        XCTAssertEqual(l.view("head.weight")?.shape, [65, 128])
        XCTAssertEqual(l.count, 128 * 65 + 128 * 128 + 256 + 128 * 128 * 2 + 256 + 65 * 128 + 65)
        // Contiguous, in order.
        for (a, b) in zip(l.views, l.views.dropFirst()) { XCTAssertEqual(a.offset + a.count, b.offset) }
    }

    func testInitializationIsPyTorchsUniformBoundAndSeeded() {
        let spec = ModelSpec(input: .dense(features: 3), hiddenSize: 16, outputSize: 2, loss: .mse)
        let a = Network<Float>(spec: spec), b = Network<Float>(spec: spec), c = Network<Float>(spec: spec)
        a.initializeParameters(seed: 1); b.initializeParameters(seed: 1); c.initializeParameters(seed: 2)
        XCTAssertEqual(a.parameters.array, b.parameters.array)
        XCTAssertNotEqual(a.parameters.array, c.parameters.array)
        let bound: Float = 1 / 4
        XCTAssertTrue(a.parameters.array.allSatisfy { abs($0) <= bound })
        XCTAssertGreaterThan(a.parameters.array.map { abs($0) }.max()!, bound * 0.9)
    }
}
