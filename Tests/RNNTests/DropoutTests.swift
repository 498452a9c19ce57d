import XCTest
@testable import RNN
import Margins

/// Dropout: inverted scaling, masks that depend on the global row and time step only (so any
/// split of the batch over ranks, micro-batches or chunks gives the same result), off in
/// evaluation, and gradients that are checked by finite differences with the mask fixed.
final class DropoutTests: XCTestCase {
    func spec(_ cell: CellKind, p: Double, input: Double = 0, head: Double = 0, output: OutputMode = .everyStep) -> ModelSpec {
        var s = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 5, layers: 3, outputSize: 2, output: output, loss: .mse)
        s.dropout = p
        s.inputDropout = input
        s.headDropout = head
        return s
    }

    /// About p of the elements are dropped, independently per step, row and unit, and a key
    /// that differs in any field draws another mask.
    func testMasksDropAboutPAndDependOnEveryField() {
        let key = Network<Float>.DropoutKey(seed: 3, step: 7, rowOffset: 0, timeOffset: 0)
        for p in [0.1, 0.5, 0.8] {
            var dropped = 0, n = 0
            for t in 0..<20 { for row in 0..<50 { for unit in 0..<100 {
                n += 1
                if !Network<Float>.keeps(key, place: 1, step: t, row: row, unit: unit, p: p) { dropped += 1 }
            } } }
            let fraction = Double(dropped) / Double(n)
            Margin.report("Dropout", "dropped fraction at p=\(p) (|f - p|)", value: abs(fraction - p), must: .below, bound: 0.01)
            XCTAssertEqual(fraction, p, accuracy: 0.01, "p = \(p)")
        }
        func mask(_ k: Network<Float>.DropoutKey, place: Int = 1) -> [Bool] {
            (0..<400).map { Network<Float>.keeps(k, place: place, step: $0 / 20, row: $0 % 20, unit: 3, p: 0.5) }
        }
        let base = mask(key)
        XCTAssertNotEqual(base, mask(.init(seed: 4, step: 7)))
        XCTAssertNotEqual(base, mask(.init(seed: 3, step: 8)))
        XCTAssertNotEqual(base, mask(key, place: 2))
        XCTAssertEqual(base, mask(key), "a function of the key")
    }

    /// The gradient of a batch of 6 rows equals the sum of its halves computed apart, each told
    /// where its rows lie (what ranks and micro-batches do), and its losses add up; a batch
    /// split in time (truncated BPTT) sees the same masks at the same absolute steps.
    func testTheSplitOfTheBatchDoesNotChangeTheMasks() {
        for cell in [CellKind.lstm, .gru, .rnn] {
            let s = spec(cell, p: 0.5, input: 0.3, head: 0.4)
            let whole = Network<Double>(spec: s), halves = Network<Double>(spec: s)
            whole.initializeParameters(seed: 2)
            halves.parameters.copy(from: whole.parameters)
            let batch = GradientCheckTests.batch(s, T: 4, B: 6, seed: 9)
            whole.dropoutKey = .init(seed: 5, step: 3, rowOffset: 0)
            let all = whole.lossAndGradient(batch)
            var sum = 0.0
            for rows in [0..<2, 2..<6] {
                halves.dropoutKey = .init(seed: 5, step: 3, rowOffset: rows.lowerBound)
                sum += halves.lossAndGradient(batch.rows(rows, everyStep: true, inputWidth: 3, outputWidth: 2)).sum
            }
            XCTAssertEqual(sum, all.sum, accuracy: 1e-12 * abs(all.sum), "\(cell)")
            for i in 0..<whole.layout.count { XCTAssertEqual(halves.gradients[i], whole.gradients[i], accuracy: 1e-12, "\(cell) parameter \(i)") }
            // Dropout really acts: without it the loss differs.
            let plain = Network<Double>(spec: spec(cell, p: 0))
            plain.parameters.copy(from: whole.parameters)
            XCTAssertNotEqual(plain.lossAndGradient(batch).sum, all.sum, accuracy: 1e-6, "\(cell)")
        }
    }

    /// Evaluation (and `eval`, `sample`) never drops: a model with dropout evaluates exactly as
    /// the same parameters without it, and p = 0 trains exactly as no dropout.
    func testOffInEvaluationAndZeroIsNone() {
        let s = spec(.lstm, p: 0.5, input: 0.2, head: 0.3)
        let net = Network<Float>(spec: s), plain = Network<Float>(spec: spec(.lstm, p: 0))
        net.initializeParameters(seed: 1)
        plain.parameters.copy(from: net.parameters)
        let batch = GradientCheckTests.batch(s, T: 5, B: 4, seed: 3)
        XCTAssertEqual(net.loss(batch), plain.loss(batch))
        let zero = Network<Float>(spec: spec(.lstm, p: 0, input: 0, head: 0))
        zero.parameters.copy(from: net.parameters)
        XCTAssertEqual(zero.lossAndGradient(batch), plain.lossAndGradient(batch))
        XCTAssertEqual(zero.gradients.array, plain.gradients.array)
    }

    /// Variational dropout: a sample's mask is the same at every time step (and still differs
    /// between samples and units); gradients through it are checked too.
    func testVariationalMasksAreTheSameAtEveryStep() {
        var s = spec(.gru, p: 0.5)
        s.variationalDropout = true
        let net = Network<Double>(spec: s)
        net.initializeParameters(seed: 4)
        let T = 6, B = 3, H = s.hiddenSize
        net.dropoutKey = .init(seed: 8, step: 2, rowOffset: 5, timeOffset: 7)
        net.lossAndGradient(GradientCheckTests.batch(s, T: T, B: B, seed: 1))
        let f = net.dropoutFactors(place: 1)  // (T, B, H): the input of layer 1
        let step0 = Array(f[0..<(B * H)])
        for t in 1..<T { XCTAssertEqual(Array(f[(t * B * H)..<((t + 1) * B * H)]), step0, "step \(t)") }
        XCTAssertTrue(step0.contains(0) && step0.contains(2), "some units dropped, some kept (scaled by 2)")
        XCTAssertNotEqual(Array(step0[0..<H]), Array(step0[H..<(2 * H)]), "samples differ")
        var standard = s
        standard.variationalDropout = false
        let other = Network<Double>(spec: standard)
        other.parameters.copy(from: net.parameters)
        other.dropoutKey = net.dropoutKey
        other.lossAndGradient(GradientCheckTests.batch(s, T: T, B: B, seed: 1))
        let g = other.dropoutFactors(place: 1)
        XCTAssertNotEqual(Array(g[0..<(B * H)]), Array(g[(B * H)..<(2 * B * H)]), "standard dropout draws a mask per step")
        var gradSpec = spec(.lstm, p: 0.4, input: 0.3, head: 0.5)
        gradSpec.variationalDropout = true
        let (worst, name) = GradientCheckTests.check(gradSpec)
        Margin.report("GradientCheck", "variational dropout lstm", value: worst, must: .below, bound: 1e-6)
        XCTAssertLessThan(worst, 1e-6, name)
    }

    /// Finite differences with the masks fixed (the same key for every evaluation of the
    /// objective): every place of dropout, every cell, both output modes.
    func testGradientsThroughDropout() {
        for cell in [CellKind.lstm, .gru, .rnn] {
            for output in [OutputMode.everyStep, .lastStep] {
                let (worst, name) = GradientCheckTests.check(spec(cell, p: 0.4, input: 0.3, head: 0.5, output: output))
                Margin.report("GradientCheck", "dropout \(cell) \(output)", value: worst, must: .below, bound: 1e-6)
                XCTAssertLessThan(worst, 1e-6, "\(cell) \(output): \(name)")
            }
        }
    }
}

extension Batch {
    /// Samples `rows` of a time-major batch (dense input; value targets at every step).
    func rows(_ rows: Range<Int>, everyStep: Bool, inputWidth I: Int, outputWidth O: Int) -> Batch {
        var out = Batch(batchSize: rows.count, steps: steps)
        for t in 0..<steps {
            for b in rows {
                out.features += features[((t * batchSize + b) * I)..<((t * batchSize + b + 1) * I)]
                if everyStep { out.targetValues += targetValues[((t * batchSize + b) * O)..<((t * batchSize + b + 1) * O)] }
            }
        }
        if !everyStep { for b in rows { out.targetValues += targetValues[(b * O)..<((b + 1) * O)] } }
        return out
    }
}
