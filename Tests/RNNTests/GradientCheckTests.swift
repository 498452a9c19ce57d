import XCTest
@testable import RNN
import Margins

/// Finite-difference checks of backpropagation through time, in Double: the analytic gradient of
/// every parameter against central differences of the objective (Network's documentation).
final class GradientCheckTests: XCTestCase {
    /// A deterministic batch for `spec` with T steps and B samples.
    static func batch(_ spec: ModelSpec, T: Int, B: Int, seed: UInt64) -> Batch {
        var rng = Xoshiro256(seed: seed)
        var b = Batch(batchSize: B, steps: T)
        switch spec.input {
        case .tokens(let V): b.tokens = (0..<(T * B)).map { _ in Int32(rng.nextInt(below: V)) }
        case .dense(let I): b.features = (0..<(T * B * I)).map { _ in rng.nextUniform() * 2 - 1 }
        }
        let rows = spec.output == .everyStep ? T * B : B
        switch spec.loss {
        case .crossEntropy: b.targetClasses = (0..<rows).map { _ in Int32(rng.nextInt(below: spec.outputSize)) }
        case .mse: b.targetValues = (0..<(rows * spec.outputSize)).map { _ in rng.nextUniform() * 2 - 1 }
        }
        return b
    }

    /// The objective whose gradient `lossAndGradient` + `normalizeGradients` computes (up to the
    /// documented extra 1/T on recurrent parameters for last_step with average_over_time).
    static func objective(_ net: Network<Double>, _ batch: Batch, h0: [Double]?) -> Double {
        let s: LossStats = h0.map { h in h.withUnsafeBufferPointer { net.loss(batch, initialState: $0.baseAddress, batchStatistics: true) } }
            ?? net.loss(batch, batchStatistics: true)
        if net.spec.averageOverTime && net.spec.output == .everyStep { return s.sum / Double(batch.validSteps) }
        return s.sum / Double(batch.batchSize)
    }

    /// Returns the worst relative error over all parameters.
    /// - corrupt: alters the analytic gradient before the comparison (to prove the check can fail).
    static func check(_ spec: ModelSpec, T: Int = 4, B: Int = 3, seed: UInt64 = 1, initialState: Bool = false,
                      scaleInit: Double = 1, settings: InitSettings = InitSettings(), perturbInitialState: Bool = false,
                      perturbNormalization: Bool = false, lengths: [Int]? = nil,
                      corrupt: ((inout [Double], ParameterLayout) -> Void)? = nil) -> (worst: Double, name: String) {
        let net = Network<Double>(spec: spec)
        net.initializeParameters(seed: seed, settings: settings)
        if scaleInit != 1 { for i in 0..<net.layout.count { net.parameters[i] *= scaleInit } }
        if perturbNormalization {  // away from gamma = 1, beta = 0, so every term of the gradient matters
            var r = Xoshiro256(seed: seed + 5)
            for l in net.layout.layers {
                for v in [l.lnWeight, l.lnBias, l.bnWeight, l.bnBias].compactMap({ $0 }) {
                    for i in v.range { net.parameters[i] += r.nextDouble() - 0.5 }
                }
            }
        }
        if perturbInitialState {
            var r = Xoshiro256(seed: seed + 3)
            for l in net.layout.layers { for v in [l.h0, l.c0].compactMap({ $0 }) { for i in v.range { net.parameters[i] = r.nextDouble() - 0.5 } } }
        }
        var batch = batch(spec, T: T, B: B, seed: seed + 100)
        if let lengths {  // sequences of these lengths, packed (the padded values are never read)
            precondition(lengths.count == B && lengths.max() == T)
            batch = Batch.packing(lengths: lengths, steps: T, tokens: batch.tokens, features: batch.features, featureWidth: spec.input.width,
                                  targetClasses: batch.targetClasses, targetValues: batch.targetValues, targetWidth: spec.outputSize,
                                  everyStep: spec.output == .everyStep).batch
        }
        var rng = Xoshiro256(seed: seed + 7)
        let h0: [Double]? = initialState ? (0..<(spec.layers * spec.cell.stateTensors * B * spec.hiddenSize)).map { _ in rng.nextDouble() - 0.5 } : nil
        net.gradients.zero()
        if let h0 { h0.withUnsafeBufferPointer { _ = net.lossAndGradient(batch, initialState: $0.baseAddress) } } else { net.lossAndGradient(batch) }
        net.normalizeGradients(globalSamples: B, globalSteps: batch.validSteps)
        var analytic = net.gradients.array
        corrupt?(&analytic, net.layout)
        let eps = 1e-5
        var worst = 0.0
        var worstName = ""
        for v in net.layout.views {
            for i in v.range {
                let old = net.parameters[i]
                net.parameters[i] = old + eps
                let plus = objective(net, batch, h0: h0)
                net.parameters[i] = old - eps
                let minus = objective(net, batch, h0: h0)
                net.parameters[i] = old
                var numeric = (plus - minus) / (2 * eps)
                if spec.output == .lastStep && spec.averageOverTime && i < net.layout.recurrentCount { numeric /= Double(batch.validSteps) / Double(B) }
                // Relative error, with a floor so that gradients near zero are judged by an
                // absolute error of 1e-9 (central differences in Double carry about 1e-10 of noise).
                let err = abs(analytic[i] - numeric) / max(abs(analytic[i]) + abs(numeric), 1e-3)
                if err > worst { worst = err; worstName = "\(v.name)[\(i - v.offset)] analytic \(analytic[i]) numeric \(numeric)" }
            }
        }
        return (worst, worstName)
    }

    func testEveryActivationOutputLossDepthAndAveraging() {
        var cases = 0
        for act in Activation.allCases {
            for output in OutputMode.allCases {
                for loss in LossKind.allCases {
                    for layers in [1, 2] {
                        for avg in [true, false] {
                            let input: InputKind = loss == .crossEntropy ? .tokens(vocabulary: 5) : .dense(features: 3)
                            let spec = ModelSpec(activation: act, input: input, hiddenSize: 4, layers: layers,
                                                 outputSize: loss == .crossEntropy ? 5 : 2, output: output, loss: loss,
                                                 averageOverTime: avg)
                            let r = Self.check(spec, seed: UInt64(cases + 1))
                            XCTAssertLessThan(r.worst, 1e-6, "\(act) \(output) \(loss) L=\(layers) avg=\(avg): \(r.name)")
                            cases += 1
                        }
                    }
                }
            }
        }
        XCTAssertEqual(cases, 64)
    }

    func testTokenInputWithMSEAndDenseInputWithCrossEntropy() {
        for (input, loss) in [(InputKind.tokens(vocabulary: 6), LossKind.mse), (.dense(features: 2), .crossEntropy)] {
            let spec = ModelSpec(input: input, hiddenSize: 5, layers: 2, outputSize: 3, loss: loss)
            let r = Self.check(spec, T: 5, B: 2)
            XCTAssertLessThan(r.worst, 1e-6, "\(input) \(loss): \(r.name)")
        }
    }

    func testLSTMAndGRUEveryOutputLossDepthAndAveraging() {
        var cases = 0
        for cell in [CellKind.lstm, .gru] {
            for output in OutputMode.allCases {
                for loss in LossKind.allCases {
                    for layers in [1, 2] {
                        for avg in [true, false] {
                            let input: InputKind = loss == .crossEntropy ? .tokens(vocabulary: 5) : .dense(features: 3)
                            let spec = ModelSpec(cell: cell, input: input, hiddenSize: 4, layers: layers,
                                                 outputSize: loss == .crossEntropy ? 5 : 2, output: output, loss: loss,
                                                 averageOverTime: avg)
                            let r = Self.check(spec, seed: UInt64(cases + 101))
                            XCTAssertLessThan(r.worst, 1e-6, "\(cell) \(output) \(loss) L=\(layers) avg=\(avg): \(r.name)")
                            cases += 1
                        }
                    }
                }
            }
        }
        XCTAssertEqual(cases, 32)
    }

    /// Larger weights drive the gates into saturation, where mistakes in the derivatives of
    /// sigmoid and tanh at their tails would show.
    func testSaturatedGates() {
        for cell in CellKind.allCases {
            let spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 5, layers: 2, outputSize: 2, loss: .mse)
            let r = Self.check(spec, T: 6, scaleInit: 6)
            XCTAssertLessThan(r.worst, 1e-6, "\(cell): \(r.name)")
        }
    }

    func testGivenInitialState() {
        for cell in CellKind.allCases {
            for output in OutputMode.allCases {
                let spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2, output: output, loss: .mse)
                let r = Self.check(spec, initialState: true)
                XCTAssertLessThan(r.worst, 1e-6, "\(cell) \(output): \(r.name)")
            }
        }
    }

    /// Learned initial state (rnn.h0_l{k}, rnn.c0_l{k}): the check covers those parameters too.
    /// They start at zero, so they are perturbed first to make the check meaningful.
    func testLearnedInitialState() {
        for cell in CellKind.allCases {
            for output in OutputMode.allCases {
                var spec = ModelSpec(cell: cell, input: .tokens(vocabulary: 4), hiddenSize: 4, layers: 2, outputSize: 3,
                                     output: output, loss: .crossEntropy)
                spec.learnedInitialState = true
                let layout = ParameterLayout(spec: spec)
                XCTAssertNotNil(layout.view("rnn.h0_l1"))
                XCTAssertEqual(layout.view("rnn.c0_l1") != nil, cell == .lstm)
                let r = Self.check(spec, perturbInitialState: true)
                XCTAssertLessThan(r.worst, 1e-6, "\(cell) \(output): \(r.name)")
            }
        }
    }

    func testLayerNormInEveryCell() {
        for cell in CellKind.allCases {
            for output in OutputMode.allCases {
                var spec = ModelSpec(cell: cell, input: .tokens(vocabulary: 5), hiddenSize: 4, layers: 2, outputSize: 3,
                                     output: output, loss: .crossEntropy)
                spec.layerNorm = true
                let r = Self.check(spec, perturbNormalization: true)
                XCTAssertLessThan(r.worst, 1e-6, "\(cell) \(output): \(r.name)")
            }
        }
    }

    /// Batch norm's gradient includes the paths through the batch mean and variance.
    func testBatchNormInEveryCell() {
        for cell in CellKind.allCases {
            for output in OutputMode.allCases {
                var spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2,
                                     output: output, loss: .mse)
                spec.batchNorm = true
                let r = Self.check(spec, T: 3, B: 4, perturbNormalization: true)
                XCTAssertLessThan(r.worst, 1e-6, "\(cell) \(output): \(r.name)")
            }
        }
    }

    func testLayerNormAndBatchNormTogetherWithTokens() {
        for cell in CellKind.allCases {
            var spec = ModelSpec(cell: cell, input: .tokens(vocabulary: 4), hiddenSize: 3, layers: 2, outputSize: 4, loss: .crossEntropy)
            spec.layerNorm = true
            spec.batchNorm = true
            spec.learnedInitialState = true
            let r = Self.check(spec, B: 4, perturbInitialState: true, perturbNormalization: true)
            XCTAssertLessThan(r.worst, 1e-6, "\(cell): \(r.name)")
        }
    }

    func testLeakyReluSlopes() {
        for slope in [0.01, 0.3] {
            var spec = ModelSpec(activation: .leakyRelu, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2, loss: .mse)
            spec.leakySlope = slope
            let r = Self.check(spec)
            XCTAssertLessThan(r.worst, 1e-6, "slope \(slope): \(r.name)")
        }
    }

    /// Token input through an embedding (its gradient scattered into the rows of the tokens seen),
    /// with dropout on its output, every cell and output mode.
    func testEmbedding() {
        for cell in [CellKind.rnn, .lstm, .gru] {
            for output in [OutputMode.everyStep, .lastStep] {
                var spec = ModelSpec(cell: cell, input: .tokens(vocabulary: 6), hiddenSize: 4, layers: 2, outputSize: 3,
                                     output: output, loss: .crossEntropy)
                spec.embeddingSize = 5
                spec.inputDropout = 0.3
                let (worst, name) = Self.check(spec)
                Margin.report("GradientCheck", "embedding \(cell) \(output)", value: worst, must: .below, bound: 1e-6)
                XCTAssertLessThan(worst, 1e-6, "\(cell) \(output): \(name)")
            }
        }
    }

    /// Bidirectional layers: every cell and output mode (last_step: PyTorch's h_n), with dropout
    /// between the layers and on the head, through an embedding, and with layer norm, batch norm
    /// and learned initial states in both directions.
    func testBidirectional() {
        for cell in [CellKind.rnn, .lstm, .gru] {
            for output in [OutputMode.everyStep, .lastStep] {
                var spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2,
                                     output: output, loss: .mse)
                spec.bidirectional = true
                spec.dropout = 0.3
                spec.headDropout = 0.2
                var (worst, name) = Self.check(spec)
                var tokens = ModelSpec(cell: cell, input: .tokens(vocabulary: 6), hiddenSize: 4, layers: 2, outputSize: 3,
                                       output: output, loss: .crossEntropy)
                tokens.bidirectional = true
                let one = Self.check(tokens)  // one-hot columns of W_ih, reversed tokens
                tokens.embeddingSize = 5
                let embedded = Self.check(tokens)
                var normed = spec
                normed.layerNorm = true
                normed.batchNorm = true
                normed.learnedInitialState = true
                let norms = Self.check(normed, perturbInitialState: true, perturbNormalization: true)
                for r in [one, embedded, norms] where r.worst > worst { (worst, name) = r }
                Margin.report("GradientCheck", "bidirectional \(cell) \(output)", value: worst, must: .below, bound: 1e-6)
                XCTAssertLessThan(worst, 1e-6, "\(cell) \(output): \(name)")
            }
        }
    }

    /// Sequences of different lengths in one packed batch (lengths 5, 2, 4, 1 out of order):
    /// every cell and output mode, uni- and bidirectional, with averaging over valid terms, dropout
    /// (a fixed mask), tokens through an embedding, layer norm, batch norm over valid rows, and
    /// learned initial states.
    func testVariableLengths() {
        let lengths = [5, 2, 4, 1]
        for cell in [CellKind.rnn, .lstm, .gru] {
            for output in [OutputMode.everyStep, .lastStep] {
                var worst = 0.0, name = ""
                for bidirectional in [false, true] {
                    var spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2,
                                         output: output, loss: .mse, averageOverTime: true)
                    spec.bidirectional = bidirectional
                    spec.dropout = 0.3
                    spec.headDropout = 0.2
                    var tokens = ModelSpec(cell: cell, input: .tokens(vocabulary: 6), hiddenSize: 4, layers: 2, outputSize: 3,
                                           output: output, loss: .crossEntropy)
                    tokens.bidirectional = bidirectional
                    tokens.embeddingSize = 5
                    tokens.inputDropout = 0.2
                    var normed = spec
                    normed.layerNorm = true
                    normed.batchNorm = true
                    normed.learnedInitialState = true
                    let results = [Self.check(spec, T: 5, B: 4, lengths: lengths), Self.check(tokens, T: 5, B: 4, lengths: lengths),
                                   Self.check(normed, T: 5, B: 4, perturbInitialState: true, perturbNormalization: true, lengths: lengths)]
                    for r in results where r.worst > worst { (worst, name) = (r.worst, "bidirectional \(bidirectional): \(r.name)") }
                }
                Margin.report("GradientCheck", "variable lengths \(cell) \(output)", value: worst, must: .below, bound: 1e-6)
                XCTAssertLessThan(worst, 1e-6, "\(cell) \(output): \(name)")
            }
        }
    }

    /// Padding is not computed: a batch of lengths {3, 20} costs the sum of its lengths in
    /// sample-steps of each recurrent sweep, not twice the longest.
    func testPaddingIsNotComputed() {
        for bidirectional in [false, true] {
            var spec = ModelSpec(cell: .lstm, input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2, output: .lastStep, loss: .mse)
            spec.bidirectional = bidirectional
            let net = Network<Float>(spec: spec)
            net.initializeParameters(seed: 3)
            var padded = Self.batch(spec, T: 20, B: 2, seed: 9)
            let packed = Batch.packing(lengths: [3, 20], steps: 20, features: padded.features, featureWidth: 3,
                                       targetValues: padded.targetValues, targetWidth: 2, everyStep: false).batch
            XCTAssertEqual(packed.features.count, 23 * 3, "only valid steps are stored")
            let before = net.stepsComputed
            net.lossAndGradient(packed)
            // Forward and backward sweep of each of the L*D units.
            XCTAssertEqual(net.stepsComputed - before, 2 * spec.units * 23, "bidirectional \(bidirectional)")
            padded.batchSize = 2
            let full = net.stepsComputed
            net.lossAndGradient(padded)  // the same two samples padded to 20 steps each
            XCTAssertEqual(net.stepsComputed - full, 2 * spec.units * 40)
        }
    }

    func testSingleStepSequence() {
        let spec = ModelSpec(input: .tokens(vocabulary: 4), hiddenSize: 3, layers: 2, outputSize: 4, loss: .crossEntropy)
        let r = Self.check(spec, T: 1, B: 2)
        XCTAssertLessThan(r.worst, 1e-6, r.name)
    }

    /// The check itself must be able to fail: a 1% error in any one kind of tensor is caught.
    func testCheckDetectsAWrongGradient() {
        for output in OutputMode.allCases {
            let spec = ModelSpec(input: .dense(features: 3), hiddenSize: 4, layers: 2, outputSize: 2, output: output, loss: .mse)
            for name in ParameterLayout(spec: spec).views.map(\.name) {
                let r = Self.check(spec) { g, layout in
                    let v = layout.view(name)!
                    let i = v.range.max { abs(g[$0]) < abs(g[$1]) }!
                    g[i] *= 1.01
                }
                XCTAssertGreaterThan(r.worst, 1e-3, "\(output) \(name)")
            }
        }
    }
}
