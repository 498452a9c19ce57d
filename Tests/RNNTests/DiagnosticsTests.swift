import XCTest
@testable import RNN
import Margins

final class DiagnosticsTests: XCTestCase {
    func run(_ spec: ModelSpec, scale: Double = 1, T: Int = 6, B: Int = 4, edit: ((Network<Double>) -> Void)? = nil) -> (Network<Double>, Batch, Diagnostics) {
        let net = Network<Double>(spec: spec)
        net.initializeParameters(seed: 5)
        for i in 0..<net.layout.count { net.parameters[i] *= scale }
        edit?(net)
        let batch = GradientCheckTests.batch(spec, T: T, B: B, seed: 8)
        net.collectDiagnostics = true
        net.gradients.zero()
        net.lossAndGradient(batch)
        return (net, batch, Diagnostics(sums: net.diagnosticSums(), spec: spec, steps: T))
    }

    func testSaturationGrowsWithWeightScale() {
        for cell in CellKind.allCases {
            let spec = ModelSpec(cell: cell, input: .dense(features: 3), hiddenSize: 8, outputSize: 2, loss: .mse)
            let small = run(spec, scale: 0.1).2.saturated[0]!
            let large = run(spec, scale: 30).2.saturated[0]!
            Margin.report("Saturation", "\(cell) at weight scale 0.1", value: small, must: .below, bound: 0.05)
            Margin.report("Saturation", "\(cell) at weight scale 30", value: large, must: .above, bound: 0.6)
            XCTAssertLessThan(small, 0.05, "\(cell)")
            XCTAssertGreaterThan(large, 0.6, "\(cell)")
        }
    }

    /// The sums are exactly additive over samples: a batch split in shards gives the same
    /// diagnostics as the whole batch (what makes np=N report what np=1 reports).
    func testSumsAreAdditiveOverShards() {
        for cell in CellKind.allCases {
            let spec = ModelSpec(cell: cell, activation: .relu, input: .dense(features: 3), hiddenSize: 6, layers: 2, outputSize: 2, loss: .mse)
            let (net, batch, _) = run(spec, B: 5)
            let whole = net.diagnosticSums()
            var parts = [Double](repeating: 0, count: whole.count)
            for rows in [0..<2, 2..<3, 3..<5] {
                net.lossAndGradient(TrainingTests.rows(batch, rows, spec: spec))
                for (i, v) in net.diagnosticSums().enumerated() { parts[i] += v }
            }
            for i in 0..<whole.count { XCTAssertEqual(parts[i], whole[i], accuracy: 1e-9 * max(1, abs(whole[i])), "\(cell) [\(i)]") }
        }
    }

    func testDeadReluUnitsAreCounted() {
        let spec = ModelSpec(activation: .relu, input: .dense(features: 3), hiddenSize: 8, outputSize: 2, loss: .mse)
        let (net, _, d) = run(spec) { net in
            // Units 0..2 get a bias so negative that they can never fire.
            let l = net.layout.layer(0)
            for j in 0..<3 { net.parameters[l.bih.offset + j] = -100 }
        }
        XCTAssertNil(d.saturated[0])
        let h = net.hiddenStates(layer: 0)
        let dead = (0..<8).filter { j in stride(from: j, to: h.count, by: 8).allSatisfy { h[$0] <= 0 } }
        XCTAssertTrue(Set([0, 1, 2]).isSubset(of: dead), "\(dead)")
        XCTAssertLessThan(dead.count, 8)
        XCTAssertEqual(d.deadUnits[0]!, Double(dead.count) / 8, accuracy: 1e-12)
    }

    /// ||dL/dh_t|| per step: with last_step output only the last step receives the loss gradient
    /// directly, and with small recurrent weights it shrinks going back in time (vanishing).
    func testGradientNormsPerStepShowVanishing() {
        let spec = ModelSpec(input: .dense(features: 3), hiddenSize: 8, outputSize: 1, output: .lastStep, loss: .mse)
        let (net, _, d) = run(spec, scale: 0.3, T: 8)
        XCTAssertEqual(d.dhNorms[0].count, 8)
        for t in 1..<8 { XCTAssertLessThan(d.dhNorms[0][t - 1], d.dhNorms[0][t]) }
        XCTAssertLessThan(d.dhRatio[0], 0.01)
        // The last step's norm is that of the head's gradient pushed through head.weight.
        XCTAssertGreaterThan(d.dhNorms[0][7], 0)
        _ = net
    }

    /// Unequal lengths: diagnostics over more steps than a batch's longest sequence (so batches of
    /// any lengths add up) have zeros after it, and the ratio uses the last step reached.
    func testDiagnosticsOfShorterBatchesPadWithZeros() {
        let spec = ModelSpec(input: .dense(features: 3), hiddenSize: 8, outputSize: 1, output: .lastStep, loss: .mse)
        let net = Network<Double>(spec: spec)
        net.initializeParameters(seed: 2)
        let padded = GradientCheckTests.batch(spec, T: 6, B: 3, seed: 4)
        let batch = Batch.packing(lengths: [6, 2, 4], steps: 6, features: padded.features, featureWidth: 3,
                                  targetValues: padded.targetValues, targetWidth: 1, everyStep: false).batch
        net.collectDiagnostics = true
        net.gradients.zero()
        net.lossAndGradient(batch)
        let sums = net.diagnosticSums(steps: 9)
        XCTAssertEqual(sums.count, net.diagnosticSumCount(steps: 9))
        let d = Diagnostics(sums: sums, spec: spec, steps: 9)
        XCTAssertEqual(Array(d.dhNorms[0][6...]), [0, 0, 0])
        XCTAssertTrue(d.dhNorms[0][..<6].allSatisfy { $0 > 0 })
        XCTAssertEqual(d.dhRatio[0], d.dhNorms[0][0] / d.dhNorms[0][5], accuracy: 1e-15)
    }

    func testTensorNormsMatchTheFlatNorm() {
        let spec = ModelSpec(cell: .gru, input: .tokens(vocabulary: 5), hiddenSize: 4, layers: 2, outputSize: 5, loss: .crossEntropy)
        let (net, _, _) = run(spec)
        let norms = tensorNorms(net.gradients, layout: net.layout)
        XCTAssertEqual(norms.map(\.name), net.layout.views.map(\.name))
        let total = norms.map { $0.norm * $0.norm }.reduce(0, +).squareRoot()
        XCTAssertEqual(total, Double.sumOfSquares(net.gradients.pointer, net.gradients.count).squareRoot(), accuracy: 1e-12)
    }
}
