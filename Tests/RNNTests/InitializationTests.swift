import XCTest
@testable import RNN

final class InitializationTests: XCTestCase {
    func testOrthogonalRecurrentBlocks() {
        for cell in CellKind.allCases {
            let spec = ModelSpec(cell: cell, input: .dense(features: 5), hiddenSize: 6, outputSize: 2, loss: .mse)
            let net = Network<Double>(spec: spec)
            net.initializeParameters(seed: 3, settings: InitSettings(recurrentWeights: .orthogonal))
            let whh = net.layout.layer(0).whh
            let H = 6
            for g in 0..<cell.gates {  // each (H, H) gate block is orthogonal: W W^T = I
                let base = whh.offset + g * H * H
                for i in 0..<H {
                    for j in 0..<H {
                        var dot = 0.0
                        for c in 0..<H { dot += net.parameters[base + i * H + c] * net.parameters[base + j * H + c] }
                        XCTAssertEqual(dot, i == j ? 1 : 0, accuracy: 1e-12, "\(cell) gate \(g) (\(i), \(j))")
                    }
                }
            }
        }
    }

    func testSemiOrthogonalInputBlocks() {
        // (H, I) = (3, 5): orthonormal rows; (5, 2): orthonormal columns.
        var rng = Xoshiro256(seed: 1)
        for (r, c) in [(3, 5), (5, 2)] {
            let m = Initializer.matrix(.orthogonal, rows: r, cols: c, defaultBound: 0, rng: &rng)
            let (n, k) = r <= c ? (r, c) : (c, r)
            for i in 0..<n {
                for j in 0..<n {
                    var dot = 0.0
                    for x in 0..<k { dot += r <= c ? m[i * c + x] * m[j * c + x] : m[x * c + i] * m[x * c + j] }
                    XCTAssertEqual(dot, i == j ? 1 : 0, accuracy: 1e-12)
                }
            }
        }
    }

    func testIdentityXavierKaimingAndForgetBias() {
        let rnn = Network<Double>(spec: ModelSpec(activation: .relu, input: .dense(features: 40), hiddenSize: 50, outputSize: 2, loss: .mse))
        rnn.initializeParameters(seed: 1, settings: InitSettings(inputWeights: .xavierUniform, recurrentWeights: .identity, zeroBiases: true))
        let l = rnn.layout.layer(0)
        for i in 0..<50 { for j in 0..<50 { XCTAssertEqual(rnn.parameters[l.whh.offset + i * 50 + j], i == j ? 1 : 0) } }
        let a = (6.0 / 90).squareRoot()
        let wih = Array(rnn.parameters.array[l.wih.range])
        XCTAssertTrue(wih.allSatisfy { abs($0) <= a })
        XCTAssertGreaterThan(wih.map(abs).max()!, 0.95 * a)
        XCTAssertTrue(rnn.parameters.array[l.bih.range].allSatisfy { $0 == 0 })

        let lstm = Network<Double>(spec: ModelSpec(cell: .lstm, input: .dense(features: 400), hiddenSize: 8, outputSize: 2, loss: .mse))
        lstm.initializeParameters(seed: 2, settings: InitSettings(inputWeights: .kaimingNormal, forgetBias: 1.5))
        let ll = lstm.layout.layer(0)
        let w = Array(lstm.parameters.array[ll.wih.range])
        let variance = w.map { $0 * $0 }.reduce(0, +) / Double(w.count)
        XCTAssertEqual(variance, 2.0 / 400, accuracy: 0.1 * 2.0 / 400)  // He: Var = 2 / fan_in
        for j in 0..<8 {
            XCTAssertEqual(lstm.parameters[ll.bih.offset + 8 + j], 1.5)  // forget gate is the second block
            XCTAssertEqual(lstm.parameters[ll.bhh.offset + 8 + j], 0)
        }
        XCTAssertNotEqual(lstm.parameters[ll.bih.offset], 1.5)
    }

    func testNormalizationParametersStartAsIdentity() {
        var spec = ModelSpec(cell: .gru, input: .dense(features: 3), hiddenSize: 4, outputSize: 2, loss: .mse)
        spec.layerNorm = true
        spec.batchNorm = true
        let net = Network<Float>(spec: spec)
        net.initializeParameters(seed: 1)
        let l = net.layout.layer(0)
        XCTAssertTrue(net.parameters.array[l.lnWeight!.range].allSatisfy { $0 == 1 })
        XCTAssertTrue(net.parameters.array[l.bnBias!.range].allSatisfy { $0 == 0 })
        XCTAssertEqual(net.runningStatistics.array, [Float](repeating: 0, count: 12) + [Float](repeating: 1, count: 12))
    }
}
